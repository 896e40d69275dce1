"""Python builtins inside compiled code, as a handler table: one small function per builtin,
registered for the builtins it serves, and one dispatch point (:func:`dispatch`).

Two tables, because the evaluator asks at two moments:

* ``BEFORE_RULES``: tried first (``print``, ``isinstance``, ``dict`` / ``sorted`` on a
  structured argument, ``fc.rules.known``);
* ``WITHOUT_RULES``: tried for a function that has no derivative rule and is not
  non-differentiable (``len``, ``range``, ``zip``, ``min``, ...): evaluated at compile time
  on constants, unrolled on tuples of values.

A handler is ``handler(tracer, fn, args, kwargs, e)`` and returns a value, or
``NOT_HANDLED`` to let the evaluator carry on. ``ALIASES`` maps a builtin to the NumPy
function that serves it (``abs`` is ``np.abs``).
"""
from __future__ import annotations

import ast

import numpy as np

from . import rules
from .ir import Node
from .tracecore import Seq, Static, SymDict, _container_types, _static

NOT_HANDLED = object()
BEFORE_RULES = {}
WITHOUT_RULES = {}
ALIASES = {abs: np.abs}
# builtins that, given a dict argument, see its keys (as Python does)
TAKE_KEYS = (len, zip, enumerate, reversed, tuple, list, sorted)


def register(table, *fns):
    """Decorator: ``handler`` serves ``fns`` in ``table``."""
    def add(handler):
        for fn in fns:
            table[fn] = handler
        return handler
    return add


def _lookup(table, fn):
    try:
        return table.get(fn)
    except TypeError:           # an unhashable callable is no builtin
        return None


def alias(fn):
    """The function that serves ``fn`` (itself unless it is an alias)."""
    return _lookup(ALIASES, fn) or fn


def dispatch(table, tracer, fn, args, kwargs, e):
    """The one dispatch point: ``fn``'s handler in ``table`` applied, or ``NOT_HANDLED``."""
    handler = _lookup(table, fn)
    return NOT_HANDLED if handler is None else handler(tracer, fn, args, kwargs, e)


def keys_of_dicts(fn, args, kwargs):
    """``len(d)``, ``zip(d, ...)``, ``sorted(d)`` on a structured dict argument see its keys."""
    if not kwargs and fn in TAKE_KEYS and any(isinstance(a, SymDict) for a in args):
        return [Static(tuple(a.items)) if isinstance(a, SymDict) else a for a in args]
    return args


def _on_structure(args, kwargs):
    return not kwargs and any(isinstance(a, (Seq, SymDict)) for a in args)


# --------------------------------------------------------------------------
# before derivative rules


@register(BEFORE_RULES, print)
def _print(t, fn, args, kwargs, e):
    t.error("print is not supported inside forward", e,
            hint="use fc.shapes(model, x) to see every value's shape")


@register(BEFORE_RULES, dict)
def _dict(t, fn, args, kwargs, e):
    if _on_structure(args, kwargs) and len(args) == 1 and isinstance(args[0], SymDict):
        return SymDict(args[0].items)
    return NOT_HANDLED


@register(BEFORE_RULES, isinstance)
def _isinstance(t, fn, args, kwargs, e):
    if len(args) != 2 or not isinstance(args[1], Static):
        return NOT_HANDLED
    x, classes = args
    if _on_structure(args, kwargs) and (isinstance(x, SymDict) or isinstance(x, Seq) and x.kind is not None):
        return Static(issubclass(dict if isinstance(x, SymDict) else x.kind, classes.value))
    if isinstance(x, Node) and x.arity is None and _container_types(classes.value):
        return Static(False)        # an array value is never a tuple, list or dict
    return NOT_HANDLED


@register(BEFORE_RULES, sorted)
def _sorted_items(t, fn, args, kwargs, e):
    """``sorted(d.items())`` on a structured dict: its (unique) keys order the pairs."""
    x = args[0] if args else None
    if _on_structure(args, kwargs) and len(args) == 1 and isinstance(x, Seq) and x.items and all(
            isinstance(p, Seq) and p.items and isinstance(p.items[0], Static) for p in x.items) \
            and len({repr(p.items[0].value) for p in x.items}) == len(x.items):
        return Seq(sorted(x.items, key=lambda p: p.items[0].value))
    return NOT_HANDLED


@register(BEFORE_RULES, super)
def _super(t, fn, args, kwargs, e):
    """``super().forward(x)``: not traced; say how to call the parent's method instead."""
    cls = _defining_class(t.frame)
    parent = next((c.__name__ for c in cls.__mro__[1:] if "forward" in vars(c)), None) if cls else None
    call = f"{parent}.forward(self, x)" if parent else "ParentClass.forward(self, x)"
    t.error("super() is not supported inside a compiled function", e,
            hint=f"call the parent's method by its class instead: {call}")


def _defining_class(frame):
    """The class whose method ``frame`` runs (the ``__class__`` cell of a method using super)."""
    fn = getattr(frame, "fn", None)
    code = getattr(fn, "__code__", None)
    if code is None or "__class__" not in code.co_freevars or not fn.__closure__:
        return None
    try:
        return fn.__closure__[code.co_freevars.index("__class__")].cell_contents
    except ValueError:
        return None


@register(BEFORE_RULES, rules.known)
def _known(t, fn, args, kwargs, e):
    return Static(len(args) == 1 and isinstance(args[0], Static) and bool(args[0].value))


# --------------------------------------------------------------------------
# functions without a derivative rule


def fold(t, fn, args, kwargs, e):
    """``fn`` evaluated at compile time on constant arguments (their structure guarded)."""
    for a in list(args) + list(kwargs.values()):
        t.structure(a)
    if all(isinstance(a, Static) for a in args) and all(isinstance(v, Static) for v in kwargs.values()):
        try:
            return _static(fn(*[a.value for a in args], **{k: v.value for k, v in kwargs.items()}))
        except Exception as err:
            t.error(f"{getattr(fn, '__name__', fn)}(...) failed at compile time: {err}", e)
    return NOT_HANDLED


def _needs_constants(t, fn, e):
    t.error(f"{fn.__name__}() needs arguments known at compile time here", e)


@register(WITHOUT_RULES, len, bool, str, min, max, isinstance, round, sorted, type, dict, slice, np.shape)
def _constant_only(t, fn, args, kwargs, e):
    done = fold(t, fn, args, kwargs, e)
    return _needs_constants(t, fn, e) if done is NOT_HANDLED else done


@register(WITHOUT_RULES, int, float)
def _number(t, fn, args, kwargs, e):
    done = fold(t, fn, args, kwargs, e)
    if done is NOT_HANDLED and len(args) == 1:
        return t.call_primitive(fn, args, {}, e)
    return _needs_constants(t, fn, e) if done is NOT_HANDLED else done


def _sequences(t, args):
    return [t.seq_items(a) for a in args] if all(isinstance(a, (Seq, Static)) for a in args) else None


@register(WITHOUT_RULES, zip)
def _zip(t, fn, args, kwargs, e):
    done = fold(t, fn, args, kwargs, e)
    lists = _sequences(t, args) if done is NOT_HANDLED else None
    if lists is not None:
        return Seq([Seq(list(items)) for items in zip(*lists)])
    return _needs_constants(t, fn, e) if done is NOT_HANDLED else done


@register(WITHOUT_RULES, enumerate)
def _enumerate(t, fn, args, kwargs, e):
    done = fold(t, fn, args, kwargs, e)
    lists = _sequences(t, args) if done is NOT_HANDLED else None
    if lists is not None:
        return Seq([Seq([Static(i), v]) for i, v in enumerate(lists[0])])
    return _needs_constants(t, fn, e) if done is NOT_HANDLED else done


@register(WITHOUT_RULES, reversed)
def _reversed(t, fn, args, kwargs, e):
    done = fold(t, fn, args, kwargs, e)
    lists = _sequences(t, args) if done is NOT_HANDLED else None
    if lists is not None:
        return Seq(list(reversed(lists[0])))
    return _needs_constants(t, fn, e) if done is NOT_HANDLED else done


@register(WITHOUT_RULES, tuple, list)
def _tuple(t, fn, args, kwargs, e):
    done = fold(t, fn, args, kwargs, e)
    lists = _sequences(t, args) if done is NOT_HANDLED else None
    if lists is not None:
        return Seq(lists[0])
    return _needs_constants(t, fn, e) if done is NOT_HANDLED else done


@register(WITHOUT_RULES, sum)
def _sum(t, fn, args, kwargs, e):
    """``sum(values)`` over a tuple of values: unrolled into additions."""
    if len(args) in (1, 2) and isinstance(args[0], Seq) and not kwargs:
        total = args[1] if len(args) == 2 else Static(0)
        for item in args[0].items:
            total = t.binop(ast.Add(), total, item, e)
        return total
    return _constant_only(t, fn, args, kwargs, e)


@register(WITHOUT_RULES, range)
def _range(t, fn, args, kwargs, e):
    """``range(n)`` with a run-time ``n``: compiled for this ``n``, with a guard."""
    if any(isinstance(a, Node) for a in args):
        args = [Static(t.concrete_int(a, e, "range(...)")) for a in args]
    return _constant_only(t, fn, args, kwargs, e)


@register(WITHOUT_RULES, hasattr, getattr)
def _look_up(t, fn, args, kwargs, e):
    """``hasattr`` / ``getattr`` on an object read from outside: the answer is guarded."""
    if 2 <= len(args) <= 3 and not kwargs and isinstance(args[0], Static) and args[0].src is not None \
            and isinstance(args[1], Static) and isinstance(args[1].value, str):
        return t.look_up(fn, args, e)
    done = fold(t, fn, args, kwargs, e)
    if done is NOT_HANDLED and fn is getattr and isinstance(args[1], Static):
        return t.attribute(args[0], args[1].value, e)
    return _needs_constants(t, fn, e) if done is NOT_HANDLED else done


@register(WITHOUT_RULES, np.array, np.asarray, np.asanyarray)
def _array(t, fn, args, kwargs, e):
    """``np.array((a, b))``: a stack of the values; ``np.asarray(x)``: ``x`` itself."""
    if len(args) != 1 or kwargs.keys() - {"dtype"}:
        return NOT_HANDLED
    x = args[0]
    if isinstance(x, Seq) and not kwargs:
        if len(x.items) == 1:
            return t.call_primitive(np.expand_dims, [x.items[0], Static(0)], {}, e)
        from .rules.helpers import stack_items
        return t.call_primitive(stack_items, x.items, {}, e)
    if isinstance(x, Node) and not kwargs:
        return x if fn is not np.array else t.call_primitive(np.copy, [x], {}, e)
    if isinstance(x, Node):
        from .rules.helpers import astype
        return t.call_primitive(astype, [x, kwargs["dtype"]], {}, e)
    return NOT_HANDLED
