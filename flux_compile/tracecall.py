"""The evaluator's calls: argument evaluation, dispatch on what is called (a method, an
inlined function, a builtin, a primitive with a derivative rule) and ``call`` nodes."""
from __future__ import annotations

import ast

import numpy as np

from . import builtins as builtin_table
from . import guards, rules, shapeinfer
from .ir import CALL, CONST, GETATTR, ITEM, PACK, Node
from .params import is_model
from .tracecore import (ARRAY_ATTRS, LIST_PARAMS, METHODS, MULTI_OUTPUT, VARARG_SHAPE_METHODS, _NOT_CONST,
                        BoundMethod, LocalFunction, Seq, Static, SymDict, UserMethod, _casts_to_non_float,
                        _inlinable, shape_of)


class Calls:
    """Calls of every kind, down to :meth:`call_primitive`, which adds a ``call`` node."""

    def eval_Call(self, e):
        f = self.eval(e.func)
        args = []
        for a in e.args:
            if isinstance(a, ast.Starred):
                v = self.eval(a.value)
                if isinstance(v, Seq):
                    args.extend(v.items)
                elif isinstance(v, Static) and isinstance(v.value, (tuple, list)):
                    args.extend(self.items_of(v))
                elif isinstance(v, Node) and v.arity is not None:
                    args.extend(self.unpack(v, v.arity, a))
                else:
                    self.error("*args needs a tuple known at compile time", a)
            else:
                args.append(self.eval(a))
        kwargs = {}
        for k in e.keywords:
            if k.arg is None:
                v = self.eval(k.value)
                if isinstance(v, Static) and isinstance(v.value, dict):
                    self.structure(v)
                    kwargs.update({kk: self.outside(vv, None if v.src is None else v.src + (("item", kk),), kk)
                                   for kk, vv in v.value.items()})
                elif isinstance(v, SymDict) and all(isinstance(kk, str) for kk in v.items):
                    kwargs.update(v.items)
                else:
                    self.error("**kwargs needs a dict known at compile time", k)
            else:
                kwargs[k.arg] = self.eval(k.value)
        return self.call(f, args, kwargs, e)

    def call(self, f, args, kwargs, e):
        if args and type(args[0]).__name__ == "Stacked":
            return self.stacked_call(f, args, kwargs, e)
        if isinstance(f, BoundMethod):
            return self.call_method(f, args, kwargs, e)
        if isinstance(f, UserMethod):
            return self.call_function(f.fn, args, kwargs, selfval=f.selfval, node=e, path=f.path)
        if isinstance(f, LocalFunction):
            return self.call_local(f, args, kwargs, e)
        if isinstance(f, Seq):
            self.error("a tuple is not callable", e)
        self.reject_array_attribute_call(f, e)
        if isinstance(f, Node):
            self.error("calling a run-time value is not supported", e,
                       hint="store functions and sub-models as attributes set in __init__")
        fn = f.value
        return self.call_static(fn, args, kwargs, e, f.src)

    def reject_array_attribute_call(self, f, e):
        """``x.size(0)`` / ``x.shape()`` (PyTorch habits): in NumPy these are attributes."""
        func = getattr(e, "func", None)
        if not isinstance(func, ast.Attribute) or func.attr not in ARRAY_ATTRS:
            return
        if isinstance(f, Node) or isinstance(f, (Static, Seq)) and not callable(getattr(f, "value", None)):
            what = {"size": "the number of elements", "shape": "a tuple", "ndim": "an int",
                    "dtype": "a dtype"}[func.attr]
            self.error(f"x.{func.attr} is an attribute in NumPy ({what}), not a method", e,
                       hint="use x.shape[0] for the size of one dimension (PyTorch's x.size(0)), "
                            "x.size for the number of elements")

    def call_static(self, fn, args, kwargs, e, path=None):
        """Call a function known at compile time: a builtin (see builtins.py), a primitive with
        a derivative rule, an inlined user function, or an opaque primitive."""
        fn = builtin_table.alias(fn)
        done = builtin_table.dispatch(builtin_table.BEFORE_RULES, self, fn, args, kwargs, e)
        if done is not builtin_table.NOT_HANDLED:
            return done
        args = builtin_table.keys_of_dicts(fn, args, kwargs)
        if getattr(fn, "__flux_inference_identity__", False) and not self.ctx.training:
            return args[0]
        if is_model(fn):
            self.error("this model is not an attribute of self", e,
                       hint="set sub-models as attributes in __init__ and call self.name(x)")
        if isinstance(fn, type) and getattr(fn, "__flux_net__", False):
            self.error(f"cannot construct {fn.__name__} inside forward", e,
                       hint="construct sub-models in __init__ and call them from forward")
        special = self.specialised_call(fn, args, kwargs, e)
        if special is not None:
            return special
        if rules.get_rule(fn) is not None or rules.is_nondiff(fn) or self.ctx.mode == "rule" \
                and not getattr(fn, "__flux_inline__", False):      # rule-time helpers: inlined
            self.baked_callee(fn, path)
            return self.call_primitive(fn, args, kwargs, e)
        done = builtin_table.dispatch(builtin_table.WITHOUT_RULES, self, fn, args, kwargs, e)
        if done is not builtin_table.NOT_HANDLED:
            return done
        if _inlinable(fn):
            return self.call_function(fn, args, kwargs, node=e, path=path)
        if isinstance(fn, type) and issubclass(fn, BaseException):
            if all(isinstance(a, Static) for a in args) and not kwargs:
                return Static(fn(*[a.value for a in args]))
            self.error("exceptions can only be built from constants inside forward", e)
        if not callable(fn):
            self.reject_array_attribute_call(Static(fn), e)
            self.error(f"{type(fn).__name__} object is not callable", e)
        # any other callable (NumPy without a rule, math, ...) is an opaque primitive;
        # autodiff complains only if a gradient has to flow through it.
        self.baked_callee(fn, path)
        return self.call_primitive(fn, args, kwargs, e)

    def specialised_call(self, fn, args, kwargs, e):
        """A stage's rewrite of this call (the frontend: unbroadcast with known shapes), or None."""
        return None

    def folded(self, fn, nodes, kw):
        """The constant that ``fn`` gives on constant ``nodes``, or None (the frontend folds)."""
        return None

    def call_method(self, m, args, kwargs, e):
        x, name = m.node, m.name
        if isinstance(x, SymDict):
            return self.dict_method(x, name, args, kwargs, e)
        if name == "astype":
            from .rules.helpers import astype
            return self.call_primitive(astype, [x] + args, kwargs, e)
        fn = METHODS[name]
        if name in VARARG_SHAPE_METHODS and len(args) > 1:
            args = [Seq(args) if not all(isinstance(a, Static) for a in args)
                    else Static(tuple(a.value for a in args))]
        if name in VARARG_SHAPE_METHODS and name == "transpose" and not args:
            return self.call_primitive(np.transpose, [x], {}, e)
        if name == "repeat" and len(args) >= 1:
            pass
        return self.call_primitive(fn, [x] + list(args), kwargs, e)

    def dict_method(self, d, name, args, kwargs, e):
        """``d.items()``, ``d.keys()``, ``d.values()``, ``d.get(key, default)`` on a SymDict."""
        if kwargs or (name != "get" and args) or (name == "get" and len(args) not in (1, 2)):
            self.error(f"unsupported call of dict.{name}", e)
        if name == "items":
            return Seq([Seq([Static(k), v]) for k, v in d.items.items()])
        if name == "keys":
            return Static(tuple(d.items))
        if name == "values":
            return Seq(list(d.items.values()))
        if not isinstance(args[0], Static):
            self.error("dict.get needs a key known at compile time", e)
        return d.items.get(args[0].value, args[1] if len(args) == 2 else Static(None))

    def call_primitive(self, fn, args, kwargs, e):
        if self.ctx.mode == "forward" and any(isinstance(a, Seq) for a in args):
            args = self._lists_as_arrays(fn, args, e)
        nodes = [self.as_node(a, e) for a in args]
        kw = {k: self.as_node(v, e) for k, v in kwargs.items()}
        if all(n.op == CONST for n in nodes + list(kw.values())):
            folded = self.folded(fn, nodes, kw)
            if folded is not None:
                return folded
        diff = (not rules.is_nondiff(fn)) and any(n.diff for n in nodes + list(kw.values())) \
            and not _casts_to_non_float(fn, nodes, kw)
        node = Node(CALL, nodes, kw, fn=fn, diff=diff)
        try:
            node.meta["shape"] = shapeinfer.infer(
                fn, [shape_of(a) for a in nodes],
                [_shape_const(a) if _is_getitem(fn) else a.value if a.op == CONST else _NOT_CONST
                 for a in nodes],
                {k: v.value for k, v in kw.items() if v.op == CONST} if all(v.op == CONST for v in kw.values())
                else {"<dynamic>": True})
        except Exception:       # shape inference is best effort
            node.meta["shape"] = None
        if node.meta["shape"] is None and fn in FILLED:
            node.meta["shape"] = _filled_shape(nodes)
        arity = MULTI_OUTPUT.get(fn)
        if callable(arity):
            arity = arity(nodes, kw)    # False: one array after all (svd without compute_uv)
        node.arity = arity or None
        node = self.ctx.add(node)
        if fn in MULTI_OUTPUT and arity is None and self.ctx.concrete is not None:
            # how many pieces depends on a run-time size: compiled for this count, with a guard
            node.arity = self.concrete_int(self.call_primitive(len, [node], {}, e), e, "the number of pieces")
        return node

    def _lists_as_arrays(self, fn, args, e):
        """A list literal of arrays passed where NumPy wants one array becomes a stack of them
        (``np.sum([a, b])``); list parameters (``np.concatenate([a, b])``) keep their list."""
        rule = rules.get_rule(fn)
        names = rules.rule_signature(rule)[0] if rule is not None else []
        out = []
        for i, a in enumerate(args):
            name = names[i] if i < len(names) else ""
            if isinstance(a, Seq) and any(isinstance(x, Node) and x.diff for x in a.items) \
                    and name not in LIST_PARAMS and not name.startswith("*") and rule is not None:
                from .rules.helpers import stack_items
                a = self.call_primitive(stack_items, a.items, {}, e) if len(a.items) > 1 else \
                    self.call_primitive(np.expand_dims, [a.items[0], Static(0)], {}, e)
            out.append(a)
        return out

    def as_node(self, v, e=None):
        if isinstance(v, Node):
            return v
        if isinstance(v, Static):
            if v.src is not None and guards.value_token(v.value) is None:
                self.ctx.guard(v.src, "is", guards._ref(v.value))   # this very object is baked in
            return self.ctx.add(Node(CONST, value=v.value))
        if isinstance(v, Seq):
            items = [self.as_node(x, e) for x in v.items]
            return self.ctx.add(Node(PACK, items, diff=any(i.diff for i in items), arity=len(items)))
        if isinstance(v, SymDict):
            self.error("a dict cannot be used as an array value", e,
                       hint="take its entries: d[key], d.values()")
        if isinstance(v, (BoundMethod, UserMethod)):
            self.error("methods must be called", e)
        self.error(f"unsupported value {v!r}", e)


def _is_getitem(fn):
    from .rules.helpers import getitem
    return fn is getitem


def _shape_const(n):
    """What shape inference of ``x[n]`` may take as the index ``n``: a constant's value; a
    loop index (an int that changes from trip to trip) as 0, and an index tuple of those and
    constants, since any int picks one item alike; else the marker of a value not known."""
    if n.op == CONST:
        return n.value
    if n.meta.get("loop_index"):
        return 0
    if n.op == PACK and n.args and all(a.op == CONST or a.meta.get("loop_index") for a in n.args):
        return tuple(0 if a.op != CONST else a.value for a in n.args)
    return _NOT_CONST


FILLED = (np.zeros, np.ones, np.empty, np.full)


def _filled_shape(args):
    """The shape ``np.zeros((x.shape[0], 4))`` and the like spell out in their first argument
    (ints and ``x.shape[i]`` of a value of known shape), or None."""
    if not args:
        return None
    spec = args[0]
    if spec.op == CONST:
        v = spec.value
        return (v,) if isinstance(v, int) else v if isinstance(v, tuple) else None
    dims = []
    for item in spec.args if spec.op == PACK else (spec,):
        if item.op == CONST and isinstance(item.value, int) and not isinstance(item.value, bool):
            dims.append(item.value)
            continue
        source = item.args[0] if item.op == ITEM and item.args else None
        shape = shape_of(source.args[0]) if source is not None and source.op == GETATTR \
            and source.attr == "shape" and source.args else None
        if not isinstance(shape, tuple) or not isinstance(item.index, int) or not -len(shape) <= item.index < len(shape):
            return None
        dims.append(shape[item.index])
    return tuple(dims)
