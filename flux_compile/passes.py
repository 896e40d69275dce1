"""Graph passes: algebraic simplification, constant folding, CSE, DCE and the forward/backward split.

Each pass rewrites the graph in place and keeps SSA order.
"""
from __future__ import annotations

import numpy as np

from . import rules
from .ir import Node

PURE_OPS = {"call", "getattr", "item", "pack", "const", "param", "attr"}
IMPURE_FN_MODULES = ("numpy.random",)
METADATA_ATTRS = {"shape", "ndim", "dtype", "size"}


def rewrite(graph, visit):
    """Walk the graph in order; ``visit(node)`` may return a node to use in its place.
    Inputs are rewired as we go (SSA order makes one pass enough). Returns the resolver
    ``old node -> node now standing for it``."""
    replace = {}

    def resolve(n):
        while n.id in replace:
            n = replace[n.id]
        return n

    for n in graph.nodes:
        n.args = tuple(resolve(a) for a in n.args)
        n.kwargs = {k: resolve(v) for k, v in n.kwargs.items()}
        new = visit(n)
        if new is not None and new is not n:
            replace[n.id] = new
    graph.outputs = [resolve(o) for o in graph.outputs]
    return resolve


def is_pure(n):
    if n.op not in PURE_OPS:
        return False
    if n.op == "call":
        mod = getattr(n.fn, "__module__", "") or ""
        if mod.startswith(IMPURE_FN_MODULES) or getattr(n.fn, "__flux_impure__", False):
            return False
        if n.meta.get("effect"):
            return False
    return True


def _is_const(n, value=None):
    if n.op != "const":
        return False
    if value is None:
        return True
    v = n.value
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == value


def simplify(graph):
    """item(pack) → element; x*1, 1*x, x+0, x-0, x/1, x**1 → x; identity shims removed."""
    from .rules import helpers

    def visit(n):
        new = None
        if n.op == "item" and n.args[0].op == "pack":
            new = n.args[0].args[n.index]
        elif n.op == "call" and not n.kwargs and len(n.args) == 2:
            a, b = n.args
            if n.fn is np.multiply:
                new = a if _is_const(b, 1) and a.op != "const" else b if _is_const(a, 1) and b.op != "const" \
                    else None
            elif n.fn is np.add:
                new = a if _is_const(b, 0) and a.op != "const" else b if _is_const(a, 0) and b.op != "const" \
                    else None
            elif n.fn in (np.subtract, np.divide, np.power) and a.op != "const" \
                    and _is_const(b, 0 if n.fn is np.subtract else 1):
                new = a
        elif n.op == "call" and n.fn is helpers.identity and len(n.args) == 1:
            new = n.args[0]
        _keep_name(n, new)
        return new
    return rewrite(graph, visit)


def _keep_name(old, new):
    """A value replaced by an unnamed one lends it the user's name (``dprobs`` stays ``dprobs``)."""
    if new is None or not old.name or new.op in ("input", "param", "const", "attr", "seed"):
        return
    if not new.name or (new.meta.get("weak") and not old.meta.get("weak")):
        new.name = old.name
        for flag in ("anon", "adjoint", "weak"):
            new.meta[flag] = old.meta.get(flag, False)


def _const_key(v):
    try:
        hash(v)
    except TypeError:
        return ("id", id(v))
    return (type(v).__name__, repr(v))


def cse(graph):
    """Common-subexpression elimination over pure nodes."""
    seen = {}

    def visit(n):
        if not is_pure(n):
            return None
        key = (n.op, id(n.fn) if n.fn is not None else None, tuple(a.id for a in n.args),
               tuple(sorted((k, v.id) for k, v in n.kwargs.items())),
               _const_key(n.value) if n.op == "const" else None, n.attr, n.index, n.base, n.path)
        old = seen.setdefault(key, n)
        if old is not n and n.name and not old.name:
            old.name = n.name
        return old
    return rewrite(graph, visit)


def live(nodes_roots):
    """Ids of every node reachable from the roots through inputs."""
    out, stack = set(), list(nodes_roots)
    while stack:
        n = stack.pop()
        if n is None or n.id in out:
            continue
        out.add(n.id)
        stack.extend(n.inputs())
        if n.op == "model_back":
            stack.append(n.meta["model"])
    return out


class ShapeClasses:
    """Which values certainly share one run-time shape, without knowing it.

    A value's class is its inferred shape when every dimension is known (an int or a
    symbolic size), else derived from how it was made: an elementwise ufunc of values of
    one class (and Python scalars) is of that class; a shape-keeping function of its first
    argument; a kernel that builds an array of ``x.shape`` (``sum_grad``, ``unbroadcast``...)
    of ``x``'s class; a sub-model's input gradient of its input's class. Anything else is
    a class of its own."""

    def __init__(self):
        self.key = {}

    def of(self, n):
        return self.key.get(n.id, ("node", n.id))

    def visit(self, n):
        self.key[n.id] = self._derive(n)

    def _derive(self, n):
        static = _static_key(n.meta.get("shape"))
        if static is not None:
            return static
        if n.op == "model_back" and len(n.meta["model"].args) == 1:
            return self.of(n.meta["model"].args[0])
        if n.op == "item" and n.args[0].op == "model_back":
            model = n.args[0].meta["model"]
            return self.of(model.args[n.index]) if n.index < len(model.args) else ("node", n.id)
        if n.op != "call":
            return ("node", n.id)
        from .rules import helpers
        if n.fn in _SHAPED_BY and len(n.args) > _SHAPED_BY[n.fn] \
                and _shape_source(n.args[_SHAPED_BY[n.fn]]) is not None:
            return self.of(_shape_source(n.args[_SHAPED_BY[n.fn]]))
        if not n.args or n.kwargs.keys() - {"dtype"}:
            return ("node", n.id)
        if n.fn in (np.real, np.imag, helpers.identity) and len(n.args) == 1:
            return self.of(n.args[0])
        if isinstance(n.fn, np.ufunc) and n.fn.nout == 1 and n.fn.nin == len(n.args):
            arrays = {self.of(a) for a in n.args if not _is_scalar(a)}
            if len(arrays) == 1:
                return arrays.pop()
        return ("node", n.id)


def _static_key(shape):
    """A hashable key for a shape whose every dimension is known (int or symbolic)."""
    from .shapeinfer import Sym, find
    if not isinstance(shape, tuple):
        return None
    dims = [find(d) for d in shape]
    if not all(isinstance(d, int) or isinstance(d, Sym) for d in dims):
        return None
    return ("shape",) + tuple(d if isinstance(d, int) else ("sym", id(d)) for d in dims)


def _is_scalar(n):
    """A Python number or NumPy scalar constant, or a value inferred 0-d."""
    if n.op == "const":
        return isinstance(n.value, (bool, int, float, complex, np.generic))
    return n.meta.get("shape") == ()


def _shape_source(n):
    """``x`` when ``n`` is ``x.shape``, else None."""
    return n.args[0] if n.op == "getattr" and n.attr == "shape" else None


def _shaped_by():
    """Kernels whose result has the shape passed as argument ``i``: {kernel: i}."""
    from .rules import helpers
    return {helpers.sum_grad: 1, helpers.unbroadcast: 1, helpers.getitem_grad: 1,
            helpers.matmul_grad_a: 1, helpers.matmul_grad_b: 2}


_SHAPED_BY = _shaped_by()


def same_shapes(graph):
    """Drop what shape equality makes redundant: ``unbroadcast(g, x.shape)`` when ``g`` is of
    ``x``'s shape class is ``g``; ``y.shape`` when an earlier ``x.shape`` has the same class
    is that one (so the training forward saves one shape per class, not one per value)."""
    from .rules import helpers
    classes, first_shape = ShapeClasses(), {}

    def visit(n):
        classes.visit(n)
        if n.op == "call" and n.fn is helpers.unbroadcast and len(n.args) == 2 and not n.kwargs:
            x = _shape_source(n.args[1])
            if x is not None and classes.of(n.args[0]) == classes.of(x):
                _keep_name(n, n.args[0])
                return n.args[0]
        if _shape_source(n) is not None:
            return first_shape.setdefault(classes.of(n.args[0]), n)
        return None
    return rewrite(graph, visit)


def optimize(graph):
    """The standard pipeline: simplify, then CSE (which may expose more), shape classes,
    then simplify again."""
    r1 = simplify(graph)
    r2 = cse(graph)
    r3 = same_shapes(graph)
    r4 = simplify(graph)
    return lambda n: r4(r3(r2(r1(n)))) if n is not None else None


class Split:
    """Which joint-graph nodes each generated function computes."""

    def __init__(self, forward, saved, backward):
        self.forward = forward      # nodes of the training forward, in order
        self.saved = saved          # (node, "value" | "back") pairs the forward hands to the backward
        self.backward = backward    # nodes of the backward, in order


FREE_OPS = {"const", "param", "attr", "input", "seed"}


def split(joint, resolve):
    """Partition the joint graph into training forward, saved values and backward.

    Backward-phase nodes that depend only on forward values run in the backward
    (recomputed from what is saved) except metadata (``x.shape``), which the
    forward computes and saves so ``x`` itself need not be kept.
    """
    g = joint.graph
    nf = joint.n_forward
    outs = [resolve(o) for o in g.outputs]
    grads = [resolve(x) if x is not None else None for x in joint.input_grads]
    effects = [n for n in g.nodes[nf:] if n.op in ("accum", "model_back")]
    bwd_live = live([x for x in grads if x is not None] + effects)
    dep_seed = set()
    for n in g.nodes:
        if n.op == "seed" or any(a.id in dep_seed for a in n.inputs()):
            dep_seed.add(n.id)
    in_forward = set()
    for n in g.nodes:
        if n.op == "input":         # an array a derivative rule reads at run time is an input too
            in_forward.add(n.id)
        elif n.id >= nf:
            if n.id not in dep_seed and n.op == "getattr" and n.attr in METADATA_ATTRS \
                    and n.args[0].op not in FREE_OPS:
                in_forward.add(n.id)
            elif n.id not in dep_seed and n.op == "item" and n.args[0].id in in_forward:
                in_forward.add(n.id)
        elif n.op not in ("seed",):
            in_forward.add(n.id)
    states = [n for n in g.nodes[:nf] if n.op in ("state", "guard")]
    # values the backward reads from the forward
    bwd_nodes = [n for n in g.nodes if n.id in bwd_live and n.id not in in_forward and n.op != "seed"]
    saved, seen = [], set()

    def save(a, kind):
        if a.id in in_forward and a.op not in ("const", "param", "attr") and (a.id, kind) not in seen:
            seen.add((a.id, kind))
            saved.append((a, kind))

    for n in bwd_nodes:
        for a in n.inputs():
            save(a, "value")
        if n.op == "model_back":
            save(n.meta["model"], "back")
    for x in grads:
        if x is not None:
            save(x, "value")
    fwd_live = live(outs + [a for a, _ in saved] + states)
    forward = [n for n in g.nodes if n.id in in_forward and n.id in fwd_live]
    saved.sort(key=lambda p: (p[0].id, p[1] == "back"))
    return Split(forward, saved, bwd_nodes)
