"""Frontend: a model's Python source (``ast``) → IR graph (layer 2 of the package).

The symbolic evaluator of the supported subset lives in trace.py (statements, expressions,
calls, builtins, inlining). This module adds what is about models: ``self.attr`` reads
(parameters, constants, arrays read at run time), sub-models (:class:`ModelRef`, called
opaquely), recurrent state (``self.h = ...``), the guards of what the code was built from,
and the compile-side state of one trace (:class:`Context`).

>>> import numpy as np
>>> def f(x, W):
...     return np.tanh(x @ W)
>>> print(trace_function(f, ["x", "W"]))          # doctest: +ELLIPSIS
graph f(x, W):
  # line ...: return np.tanh(x @ W)
  %2 = np.matmul(%0 x, %1 W)
  %3 = np.tanh(%2)
  return %3
"""
from __future__ import annotations

import ast
import inspect
import linecache
import os
import sys
import types

import numpy as np

from . import guards, naming, rules, tracecore
from .errors import CompileError
from .ir import ATTR, INPUT, MODEL, PARAM, Graph, Node, is_leaf, path_expr
from .params import Param, is_model
from .passes import TracingPasses
from .parsing import IdentityTable, get_source  # noqa: F401  (re-exported for compiler, recurrent)
from .trace import Tracer
from .tracecore import Seq, Static, SymDict, UserMethod, _MISSING, _static, shape_of, structured  # noqa: F401


class ModelRef:
    """A sub-model: ``base`` ('self' or an input name) plus a field ``path``; ``obj`` when known."""
    __slots__ = ("base", "path", "obj")

    def __init__(self, base, path, obj):
        self.base, self.path, self.obj = base, tuple(path), obj

    @property
    def expr(self):
        return path_expr(self.base, self.path)


class Context(tracecore.Context):
    """State shared while building one graph of a model (or of a plain function)."""

    def __init__(self, graph, mode="forward"):
        super().__init__(graph, mode)
        self.param_nodes = {}          # graph -> {(base, path): its Param read node}
        self.state = None              # recurrent state hooks (see recurrent.py), or None
        self.generic_cls = None        # the class, when compiling without an instance
        self.arity_of = None           # sub-model -> number of outputs (None: one)
        self.arg_index = {}            # input name -> position, for paths through a model argument
        self.flatten = None            # sub-model -> inline its forward? (whole-model flattening)

    def field_path(self, base, fields):
        """The guards path of ``base.<fields>`` (``self.cfg``, ``m.layers[0]``), or None."""
        if base == "self":
            head = ()
        elif base in self.arg_index:
            head = (("arg", self.arg_index[base]),)
        else:
            return None
        return head + tuple(("item", f) if isinstance(f, int) else ("attr", f) for f in fields)



class Builder(TracingPasses, Tracer):
    """The tracer of a model's code: ``self.attr`` reads, sub-model calls, recurrent state,
    with folding and unbroadcast specialisation applied as calls are traced (passes.py)."""

    # -- self.attr -----------------------------------------------------------
    def attribute(self, base, name, e):
        if isinstance(base, ModelRef):
            return self.model_attr(base, name, e)
        return super().attribute(base, name, e)

    def model_attr(self, ref, name, e):
        obj = ref.obj
        if obj is not None:
            cls = type(obj)
        elif ref.base == "self" and not ref.path:
            cls = self.ctx.generic_cls
        else:
            cls = None
        if ref.base == "self" and not ref.path and self.ctx.state is not None \
                and self.frame.selfval is ref:
            v = self.ctx.state.read(self, name, e)
            if v is not None:
                return v
        if self._sub_state(ref, name):      # an inlined sub-model's recurrent state (fc.unroll)
            return self.ctx.state.read_sub(ref.path, name)
        if obj is not None and name in vars(obj):
            value = vars(obj)[name]
            if ref.base == "self" and not ref.path and isinstance(value, KEYED_ATTRS) \
                    and self.ctx.generic_cls is None:
                return Static(value)    # in the cache key (model_signature); reassigning recompiles
            return self.classify(ref, name, value, e)
        raw = inspect.getattr_static(cls, name, _MISSING) if cls is not None else _MISSING
        if raw is not _MISSING:
            base = self.ctx.field_path(ref.base, ref.path)
            if isinstance(raw, staticmethod):
                return self.outside(raw.__func__, None if base is None else base + (("attr", name),), name)
            if isinstance(raw, classmethod):
                self.error("classmethods are not supported inside forward", e)
            if isinstance(raw, types.FunctionType):
                path = None
                if base is not None:
                    on_class = obj is None and ref.base == "self" and not ref.path
                    path = base + ((("attr", name),) if on_class else (("cls",), ("attr", name)))
                    self.ctx.guard(path, "code", raw.__code__)
                return UserMethod(ref, raw, path)
            if isinstance(raw, property):
                self.error(f"property {name!r} is not supported inside forward", e,
                           hint="compute the value in forward or store it in __init__")
            return self.classify(ref, name, getattr(cls, name), e)
        if obj is None:
            # no instance (fc.source on a class): assume a parameter
            return self.param_node(ref.base, ref.path + (name,), True)
        self.error(f"{type(obj).__name__} has no attribute {name!r}", e,
                   hint="set it in __init__ (self.%s = ...)" % name)

    def classify(self, ref, name, value, e, from_class=False):
        path = ref.path + (name,)
        return classify_value(self, ref.base, path, value, e)

    def param_node(self, base, path, trainable):
        """The node reading Param ``base.<path>`` in the graph being traced: one per graph, so
        a Param first read inside a loop body or a branch is read again after the region
        (a region's nodes are not the outer graph's)."""
        memo = self.ctx.param_nodes.setdefault(self.ctx.graph, {})
        n = memo.get((base, path))
        if n is None:
            n = self.ctx.graph.add(Node(PARAM, base=base, path=path, diff=trainable, name=str(path[-1])))
            n.loc = None
            memo[(base, path)] = n
        return n

    def assign_attribute(self, base, target, value):
        if isinstance(base, ModelRef) and base.base == "self" and not base.path \
                and self.ctx.state is not None and self.frame.selfval is base:
            self.ctx.state.write(self, target.attr, value, target)
        elif isinstance(base, ModelRef) and self.frame.selfval is base and self._sub_state(base, target.attr):
            self.ctx.state.write_sub(self, base.path, target.attr, value, target)
        elif isinstance(base, ModelRef):
            self.error(f"cannot assign to attribute {target.attr!r} here", target,
                       hint="only assignments self.name = ... in forward (recurrent state) are supported")
        else:
            super().assign_attribute(base, target, value)

    def _sub_state(self, ref, name):
        """Is ``ref.name`` the state of a sub-model inlined with its state carried?"""
        hooks = self.ctx.state
        return ref.base == "self" and bool(ref.path) and getattr(hooks, "inline_stateful", False) \
            and hooks.has_sub(ref.path, name)

    # -- sub-models ------------------------------------------------------------
    def call(self, f, args, kwargs, e):
        if isinstance(f, ModelRef):
            return self.call_model(f, args, kwargs, e)
        if isinstance(f, Node) and f.op == PARAM and self.ctx.generic_cls is not None:
            # no instance (fc.source on a class): an attribute that is called is a sub-model
            f.meta["submodel"] = True
            return self.call_model(ModelRef(f.base, f.path, None), args, kwargs, e)
        if isinstance(f, Static):
            self.reject_unmarked_model(f.value, args, e)
        return super().call(f, args, kwargs, e)

    def reject_unmarked_model(self, value, args, e):
        """``self.inner(x)`` where ``inner``'s class has a ``forward`` (or a Python ``__call__``
        that a gradient would have to go through) but no ``@fc.net``."""
        obj = value.__self__ if inspect.ismethod(value) and value.__name__ in ("forward", "__call__") \
            else value
        if isinstance(obj, (type, types.FunctionType, types.MethodType)) or is_model(obj) or _has_rule(obj):
            return
        has_forward = callable(getattr(type(obj), "forward", None))
        python_call = isinstance(getattr(type(obj), "__call__", None), types.FunctionType) and any(
            isinstance(a, Node) and a.diff for a in args)
        if not (has_forward or python_call):
            return
        cls = type(obj).__name__
        if hasattr(obj, "__fc_source__"):       # fc.gradient(f) and the other transforms
            self.error(f"{ast.unparse(e.func)} is a transformed function ({obj!r}), which compiled code "
                       "cannot call yet", e,
                       hint="apply the transforms to whole functions instead: fc.jvp / fc.vjp / fc.hvp / "
                            "fc.jacobian / fc.gradient of fc.gradient(f) compose (see docs/derivatives.md)")
        self.error(f"{ast.unparse(e.func)} is a {cls}, which is not an @fc.net model", e,
                   hint=f"decorate class {cls} ({type(obj).__module__}) with @fc.net, its computation in "
                        "a method named forward, so it is compiled as a sub-model; or register a "
                        "derivative for it with @fc.diffrule")

    def call_function(self, fn, args, kwargs, selfval=None, node=None, path=None):
        if self.frame is None and isinstance(selfval, ModelRef):
            code = fn.__code__
            for name, value in zip(code.co_varnames[1:code.co_argcount], args):
                if _holds_python_floats(value):
                    _reject_list_input(fn, name)
        return super().call_function(fn, args, kwargs, selfval, node, path)

    def call_model(self, ref, args, kwargs, e):
        if any(isinstance(a, SymDict) for a in args):
            self.error("a dict cannot be passed to a sub-model inside forward", e,
                       hint="pass its entries as separate inputs: self.layer(d['x'], d['h'])")
        if kwargs:
            self.error("keyword arguments to sub-models are not supported", e,
                       hint="pass inputs positionally: self.layer(x, h)")
        if self.ctx.flatten is not None and ref.obj is not None and self.ctx.flatten(ref.obj):
            return self.inline_model(ref, args)
        nodes = [self.as_node(a, e) for a in args]
        arity = None
        if ref.obj is not None and self.ctx.arity_of is not None:
            arity = self.ctx.arity_of(ref.obj, len(nodes), self._concrete_values(nodes))
        n = Node(MODEL, nodes, base=ref.base, path=ref.path, target=ref.expr, diff=True, arity=arity)
        n.meta["obj"] = ref.obj
        return self.ctx.add(n)

    def inline_model(self, ref, args):
        """``self.fc1(x)`` traced as the body of ``fc1``'s ``forward`` (whole-model flattening):
        its Params become this graph's, read at ``self.fc1.W``; its code is guarded."""
        fn = type(ref.obj).forward
        base = self.ctx.field_path(ref.base, ref.path)
        path = None
        if base is not None:
            self.ctx.guard(base, "type", guards._ref(type(ref.obj)))     # its class, its fields
            path = base + (("cls",), ("attr", "forward"))
            self.ctx.guard(path, "code", fn.__code__)
        self.ctx.next_owner = f"{ref.expr}: {fn.__qualname__}"
        self.ctx.next_prefix = _name_prefix(ref.path)
        self.ctx.next_via = (ref.expr, self.ctx.loc) if self.ctx.loc is not None else ()
        out = self.call_function(fn, list(args), {}, selfval=ref, path=path)
        if isinstance(out, Node) and not is_leaf(out):
            if out.name is None:
                out.name = naming.model_output(ref.path[-1] if ref.path else ref.base)   # fc1_out
            out.meta["inlined_out"] = True      # the caller's variable, if any, names it instead
        return out

    def _concrete_values(self, nodes):
        """The real values of ``nodes`` when the compiler has the actual arguments, else None."""
        conc = self.ctx.concrete
        if conc is None:
            return None
        from .concrete import UNKNOWN
        values = [conc.value(n) for n in nodes]
        return None if any(v is UNKNOWN for v in values) else values

    def as_node(self, v, e=None):
        if isinstance(v, ModelRef):
            self.error("a model cannot be used as an array value", e,
                       hint="call it: self.layer(x)")
        return super().as_node(v, e)


def _name_prefix(path):
    """The prefix of the names an inlined sub-model's values get, from its last field as its
    output's name (``naming.model_output``): ``fc1_`` for ``self.fc1``, ``layer0_`` for
    ``self.layers[0]``."""
    if not path:
        return ""
    prefix = naming.model_output(path[-1]).removesuffix("out")
    return prefix if prefix.isidentifier() else ""


def _has_rule(obj):
    try:
        return rules.get_rule(obj) is not None or rules.is_nondiff(obj)
    except TypeError:           # unhashable: no rule can be registered for it
        return False


def _holds_python_floats(v):
    """Is ``v`` a list (nested lists or tuples) of Python numbers, some of them floats?"""
    def leaves(x):
        if isinstance(x, Seq):
            for item in x.items:
                yield from leaves(item)
        elif isinstance(x, Static) and isinstance(x.value, (list, tuple)):
            for item in x.value:
                yield from leaves(Static(item))
        else:
            yield x
    if not (isinstance(v, Seq) and v.kind is list or isinstance(v, Static) and type(v.value) is list):
        return False
    found = list(leaves(v))
    scalar = [x for x in found if isinstance(x, Node) and x.op == INPUT and x.meta.get("shape") == ()
              or isinstance(x, Static) and isinstance(x.value, (int, float)) and not isinstance(x.value, bool)]
    return bool(found) and len(scalar) == len(found) and any(
        isinstance(x, Node) or type(x.value) is float for x in found)


def _reject_list_input(fn, name):
    """A model called with a Python list of numbers: say so at the caller's line."""
    filename, lineno, text = _caller_outside_package()
    raise CompileError(f"input {name!r} of {fn.__qualname__} is a Python list of numbers, not an array",
                       filename, lineno, None, text,
                       hint=f"pass a NumPy array: np.asarray({name}) (a model's inputs are batch-first arrays)")


def _caller_outside_package():
    """file, line and text of the innermost frame outside flux_compile (the user's call)."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame = frame.f_back
    if frame is None:
        return None, None, None
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).rstrip("\n") or None
    return frame.f_code.co_filename, frame.f_lineno, line


KEYED_ATTRS = (bool, int, str, type(None), np.dtype)    # attr_token keeps their value


def classify_value(b, base, path, value, e):
    """What ``self.<path>`` is, for the compiler: a Param node, a sub-model, a constant, ..."""
    if isinstance(value, Param):
        src = b.ctx.field_path(base, path)
        if src is not None and len(src) > 1:    # inside a sub-model or a list: not in the key
            b.ctx.guard(src, "param", (value.trainable, tuple(value.shape)))
        n = b.param_node(base, path, value.trainable)
        n.meta["shape"] = tuple(value.shape)
        n.meta["complex"] = np.iscomplexobj(value.value)
        return n
    if is_model(value):
        return ModelRef(base, path, value)
    src = b.ctx.field_path(base, path)
    if isinstance(value, (list, tuple)):
        items = [classify_value(b, base, path + (i,), v, e) for i, v in enumerate(value)]
        if src is not None:
            b.ctx.guard(src, *guards.structure_guard(value))
        if all(isinstance(i, Static) for i in items):
            return Static(type(value)(i.value for i in items), src)
        return Seq(items)
    if isinstance(value, (np.ndarray, float)) and not isinstance(value, bool):
        n = b.ctx.graph.add(Node(ATTR, base=base, path=path, name=str(path[-1])))
        n.meta["shape"] = tuple(np.shape(value))
        n.meta["complex"] = np.iscomplexobj(value)
        return n
    return b.outside(value, src, str(path[-1]) if path else None)


def attr_token(value):
    """The part of a model's structure a compiled forward depends on (the cache key)."""
    if isinstance(value, Param):
        return ("param", value.trainable, value.shape)
    if is_model(value):
        return ("model", type(value).__module__, type(value).__qualname__)
    if isinstance(value, (list, tuple)):
        return (type(value).__name__,) + tuple(attr_token(v) for v in value)
    if isinstance(value, np.ndarray):
        return ("array", value.shape)
    if isinstance(value, float) and not isinstance(value, bool):
        return ("float",)
    if isinstance(value, (int, bool, str, type(None), np.dtype)):
        return ("value", value)
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, np.ufunc, type)):
        return ("fn", getattr(value, "__module__", None), getattr(value, "__qualname__", repr(value)))
    token = guards.value_token(value)
    if token is not None:
        return ("object", token)
    # dicts and other objects: what forward reads of them is guarded field by field (guards.py)
    return ("object", type(value).__module__, type(value).__qualname__)


# --------------------------------------------------------------------------
# convenience for tests and the docs


def trace_function(fn, arg_names, mode="forward"):
    """Build the graph of a plain function whose arguments are all arrays."""
    g = Graph(getattr(fn, "__name__", "f"))
    ctx = Context(g, mode)
    ctx.arity_of = None
    b = Builder(ctx)
    ins = [g.add(Node(INPUT, name=n, diff=True)) for n in arg_names]
    out = b.call_function(fn, ins, {})
    g.outputs = [b.as_node(v) for v in (out.items if isinstance(out, Seq) else [out])]
    return g
