"""Graph passes: algebraic simplification, constant folding, CSE, DCE and the forward/backward split.

Each pass rewrites the graph in place and keeps SSA order.
"""
from __future__ import annotations

import numpy as np

from . import rules
from .ir import LEAF_OPS, Node, is_leaf, is_reread

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
        if new is not None and n.name and not new.name and not is_leaf(new):
            new.name = n.name
        return new
    return rewrite(graph, visit)


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


def optimize(graph):
    """The standard pipeline: simplify, then CSE (which may expose more), then simplify again."""
    r1 = simplify(graph)
    r2 = cse(graph)
    r3 = simplify(graph)
    return lambda n: r3(r2(r1(n))) if n is not None else None


class Split:
    """Which joint-graph nodes each generated function computes."""

    def __init__(self, forward, saved, backward):
        self.forward = forward      # nodes of the training forward, in order
        self.saved = saved          # (node, "value" | "back") pairs the forward hands to the backward
        self.backward = backward    # nodes of the backward, in order


FREE_OPS = LEAF_OPS


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
        if a.id in in_forward and not is_reread(a) and (a.id, kind) not in seen:
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


# --------------------------------------------------------------------------
# Folding and unbroadcast specialisation. The frontend applies them to each call as it is
# traced (a folded value is a compile-time constant the rest of the trace can branch on).

NOT_FOLDED = object()
KEEP_AS_IS = "keep"
MAX_FOLDED_ARRAY = 8        # a folded array this small or smaller is written as a literal


def foldable(fn):
    """May ``fn`` run at compile time on constants? NumPy (not its random module), ``float``,
    ``int`` and ``len``."""
    mod = getattr(fn, "__module__", "") or ""
    return (type(fn).__name__ == "ufunc" or mod.startswith("numpy") or fn in (float, int, len)) \
        and not mod.startswith("numpy.random")


def fold_constant_call(fn, args, kwargs):
    """``fn(*args, **kwargs)`` computed now, for constant arguments: a scalar, or a 0-d or 1-d
    array of at most ``MAX_FOLDED_ARRAY`` items; ``NOT_FOLDED`` when the call must stay."""
    if not foldable(fn):
        return NOT_FOLDED
    try:
        r = fn(*args, **kwargs)
    except Exception:
        return NOT_FOLDED
    if isinstance(r, (int, float, bool, np.generic)) and not isinstance(r, np.ndarray):
        return r
    if isinstance(r, np.ndarray) and r.ndim <= 1 and r.size <= MAX_FOLDED_ARRAY:
        return r
    return NOT_FOLDED


def unbroadcast_plan(have, want):
    """How ``unbroadcast(g, want)`` reduces a ``g`` of symbolic shape ``have``: ``KEEP_AS_IS``
    when the shapes are the same, the keywords of one ``np.sum`` when the ranks are known and
    ``want`` is a tuple of ints, None when only the generic ``unbroadcast`` can tell."""
    from . import shapeinfer
    if isinstance(want, tuple) and shapeinfer.same(have, want):
        return KEEP_AS_IS
    if have is None or not isinstance(want, tuple) or not all(isinstance(d, int) for d in want):
        return None
    lead = len(have) - len(want)
    if lead < 0:
        return None
    keep = tuple(lead + i for i, d in enumerate(want) if d == 1 and not
                 (isinstance(have[lead + i], int) and have[lead + i] == 1))
    if lead and keep:
        return None
    if lead:
        return {"axis": 0 if lead == 1 else tuple(range(lead))}
    if keep:
        return {"axis": keep[0] if len(keep) == 1 else keep, "keepdims": True}
    return None
