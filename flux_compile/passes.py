"""Graph passes: algebraic simplification, powers as products, CSE, shape classes, slices to
concatenate, liveness, memory planning (which results reuse a dead operand's buffer).

Each pass rewrites the graph in place and keeps SSA order. (The split of the joint graph
into training forward, saved values and backward is autodiff's: :func:`autodiff.split`.)
"""
from __future__ import annotations

import numpy as np

from . import rules
from .ir import (ACCUM, CALL, COND, COND_BACK, CONST, GETATTR, INPUT, ITEM, LOOP, LOOP_BACK, MODEL_BACK,
                 PACK, PARAM, PURE_OPS, Node, is_leaf)
from .tracecore import Static, _static, shape_of

IMPURE_FN_MODULES = ("numpy.random",)


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
    if n.op == CALL:
        mod = getattr(n.fn, "__module__", "") or ""
        if mod.startswith(IMPURE_FN_MODULES) or getattr(n.fn, "__flux_impure__", False):
            return False
        if n.meta.get("effect"):
            return False
    return True


def _is_const(n, value=None):
    if n.op != CONST:
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
        if n.op == ITEM and n.args[0].op == PACK:
            new = n.args[0].args[n.index]
        elif n.op == CALL and not n.kwargs and len(n.args) == 2:
            a, b = n.args
            if n.fn is np.multiply:
                new = a if _is_const(b, 1) and a.op != CONST else b if _is_const(a, 1) and b.op != CONST \
                    else None
            elif n.fn is np.add:
                new = a if _is_const(b, 0) and a.op != CONST else b if _is_const(a, 0) and b.op != CONST \
                    else None
            elif n.fn in (np.subtract, np.divide, np.power) and a.op != CONST \
                    and _is_const(b, 0 if n.fn is np.subtract else 1):
                new = a
        elif n.op == CALL and n.fn is helpers.identity and len(n.args) == 1:
            new = n.args[0]
        elif n.op == CALL and not n.kwargs and len(n.args) == 1 and n.fn in _SELF_INVERSE:
            inner = n.args[0]      # -(-x) and x.T.T are x
            if inner.op == CALL and inner.fn is n.fn and len(inner.args) == 1 and not inner.kwargs \
                    and inner.args[0].op != CONST:
                new = inner.args[0]
        _keep_name(n, new)
        return new
    return rewrite(graph, visit)


_SELF_INVERSE = (np.negative, np.transpose)


def _keep_name(old, new):
    """A value replaced by an unnamed one lends it the user's name (``dprobs`` stays ``dprobs``)."""
    if new is None or not old.name or is_leaf(new):
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
               _const_key(n.value) if n.op == CONST else None, n.attr, n.index, n.base, n.path)
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
        if n.op == MODEL_BACK:
            stack.append(n.meta["model"])
        elif n.op == LOOP_BACK:
            stack.append(n.meta["loop"])
        elif n.op == COND_BACK:
            stack.append(n.meta["cond"])
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
        if n.op == MODEL_BACK and len(n.meta["model"].args) == 1:
            return self.of(n.meta["model"].args[0])
        if n.op == ITEM and n.args[0].op == MODEL_BACK:
            model = n.args[0].meta["model"]
            return self.of(model.args[n.index]) if n.index < len(model.args) else ("node", n.id)
        if n.op != CALL:
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
    if n.op == CONST:
        return isinstance(n.value, (bool, int, float, complex, np.generic))
    return n.meta.get("shape") == ()


def _shape_source(n):
    """``x`` when ``n`` is ``x.shape``, else None."""
    return n.args[0] if n.op == GETATTR and n.attr == "shape" else None


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
        if n.op == CALL and n.fn is helpers.unbroadcast and len(n.args) == 2 and not n.kwargs:
            x = _shape_source(n.args[1])
            if x is not None and classes.of(n.args[0]) == classes.of(x):
                _keep_name(n, n.args[0])
                return n.args[0]
        if _shape_source(n) is not None:
            return first_shape.setdefault(classes.of(n.args[0]), n)
        return None
    return rewrite(graph, visit)


def slices_to_concatenate(graph):
    """A sum of ``getitem_grad(g_i, shape, index_i)`` whose slices tile one axis of ``shape``
    exactly (the adjoint of ``z[:, :n]``, ``z[:, n:2n]``, ...) is one ``np.concatenate`` of the
    ``g_i``, not zero-filled arrays added up."""
    inserts = []

    def visit(n):
        if not (n.op == CALL and n.fn is np.add and len(n.args) == 2 and not n.kwargs):
            return None
        joined = _concatenate_tiles(_summands(n))
        if joined is None:
            return None
        for node in joined:
            node.loc = n.loc
        inserts.append((n, joined))
        _keep_name(n, joined[-1])
        return joined[-1]
    resolve = rewrite(graph, visit)
    _insert(graph, inserts)
    return resolve


def _insert(graph, inserts):
    """Put each list of new nodes into the graph just before the node ``before``. A new
    node's ``meta["origin"]`` is the id of that node, so it belongs to the same phase
    (forward or backward: see ``autodiff.split``)."""
    for before, new in inserts:
        at = graph.nodes.index(before)
        for node in new:
            node.id = max(m.id for m in graph.nodes) + 1
            node.meta["origin"] = before.meta.get("origin", before.id)
            graph.nodes.insert(at, node)
            at += 1


def powers_to_products(graph):
    """``x ** k`` for a constant integer ``k`` (2 to 4) is a product of ``x`` (``x * x * x``:
    libm's ``pow`` is far slower than multiplying), for ``-k`` (-1 to -4) the reciprocal of
    one, written ``1.0 / (x * x)``, when ``x`` is certainly a float; ``x ** 0.5`` is
    ``np.sqrt(x)`` and ``x ** -0.5`` is ``1.0 / np.sqrt(x)`` (what NumPy's own ``**`` does
    for 0.5). The derivative rules' ``x ** (p - 1)`` is rewritten the same way. The power
    node itself becomes the last step (it keeps its id and name); the steps before it are
    inserted. Returns the identity resolver (no node is replaced)."""
    inserts = []
    for n in graph.nodes:
        form = _power_form(n)
        if form is None:
            continue
        *before, (fn, args) = form
        for node in before:
            node.loc, node.diff = n.loc, n.diff and node.op == CALL
        n.fn, n.args = fn, tuple(args)
        if before:
            inserts.append((n, before))
    _insert(graph, inserts)
    return lambda n: n


def _power_form(n):
    """How to compute ``np.power(x, p)`` without ``pow``: new nodes to insert, then the
    ``(fn, args)`` the power node becomes; None to keep it."""
    if not (n.op == CALL and n.fn is np.power and len(n.args) == 2 and not n.kwargs):
        return None
    x, p = n.args
    if p.op != CONST or x.op == CONST or isinstance(p.value, bool) \
            or not isinstance(p.value, (int, float)):
        return None
    k = p.value
    if isinstance(k, float) and abs(k) in (0.5, 1.5) and _known_inexact(x):
        if k == 0.5:
            return [(np.sqrt, (x,))]
        root = Node(CALL, (x,), fn=np.sqrt)
        if abs(k) == 0.5:
            return [root] + _reciprocal(root)
        if k > 0:
            return [root, (np.multiply, (x, root))]
        product = Node(CALL, (x, root), fn=np.multiply)
        return [root, product] + _reciprocal(product)
    if not (isinstance(k, int) and (2 <= abs(k) <= 4 or k == -1)):
        return None        # x ** 2.0 of an integer x is a float: kept, like every other power
    if k < 0 and not _known_inexact(x):
        return None        # an integer array to a negative power is an error in NumPy: kept
    if k > 0:
        return _product(x, k)
    if k == -1:
        return _reciprocal(x)
    *steps, (fn, args) = _product(x, -k)
    product = Node(CALL, args, fn=fn)
    return steps + [product] + _reciprocal(product)


def _product(x, k):
    """``x * x`` (k = 2), ``x * x * x`` (3), ``x2 * x2`` with ``x2 = x * x`` (4): the nodes
    before the last step, then the last step's ``(fn, args)``."""
    if k == 2:
        return [(np.multiply, (x, x))]
    square = Node(CALL, (x, x), fn=np.multiply)
    return [square, (np.multiply, (square, x) if k == 3 else (square, square))]


def _reciprocal(d):
    """``1.0 / d``: the constant node, then the last step."""
    one = Node(CONST, value=1.0)
    return [one, (np.true_divide, (one, d))]


INEXACT_UFUNCS = {np.tanh, np.exp, np.log, np.sqrt, np.sin, np.cos, np.true_divide, np.expm1,
                  np.log1p, np.arctan, np.sinh, np.cosh, np.reciprocal}
ARITHMETIC = {np.add, np.subtract, np.multiply, np.negative, np.matmul, np.power, np.square}


def _known_inexact(n, depth=0):
    """Is ``n`` certainly a float or complex value (never an integer array)? A differentiable
    input or a Param; a float constant; a ufunc that returns floats (``np.tanh``, division);
    arithmetic on at least one such value and otherwise numbers."""
    if depth > 16:
        return False
    if n.op == PARAM or n.op == INPUT and n.diff:
        return True
    if n.op == CONST:
        return isinstance(n.value, (float, complex)) or \
            isinstance(n.value, (np.ndarray, np.generic)) and n.value.dtype.kind in "fc"
    if n.op != CALL or n.kwargs:
        return False
    if n.fn in INEXACT_UFUNCS:
        return True
    if n.fn in ARITHMETIC:
        return any(_known_inexact(a, depth + 1) for a in n.args)
    return False


def _summands(n):
    """The terms of a tree of ``np.add`` calls, left to right (walked without recursion: an
    unrolled loop's adjoint is a chain of thousands)."""
    terms, todo = [], [n]
    while todo:
        x = todo.pop()
        if x.op == CALL and x.fn is np.add and len(x.args) == 2 and not x.kwargs:
            todo += [x.args[1], x.args[0]]
        else:
            terms.append(x)
    return terms


def _concatenate_tiles(parts):
    """``[pack, axis, concatenate]`` nodes joining ``parts`` when they tile one axis, else None."""
    from .rules.helpers import getitem_grad
    pieces = []
    for p in parts:
        if p.op != CALL or p.fn is not getitem_grad or len(p.args) != 3 or p.kwargs \
                or p.args[2].op != CONST:
            return None
        index = p.args[2].value
        index = index if isinstance(index, tuple) else (index,)
        axes = [i for i, s in enumerate(index) if s != slice(None)]
        if len(axes) != 1 or not isinstance(index[axes[0]], slice) or index[axes[0]].step not in (None, 1):
            return None
        pieces.append((axes[0], index[axes[0]], p))
    axis = pieces[0][0]
    n = _static_dim(parts[0].args[1], axis)
    if any(a != axis for a, _, _ in pieces) or not isinstance(n, int) \
            or any(_static_dim(p.args[1], axis) != n for p in parts) \
            or len({_rank(p.args[1]) for p in parts}) != 1:
        return None
    spans = sorted(((range(n)[s].start if len(range(n)[s]) else 0, len(range(n)[s]), p) for _, s, p in pieces),
                   key=lambda span: (span[0], span[1], span[2].id))   # Nodes have no order: tie by id
    at = 0
    for start, length, _ in spans:
        if start != at or length == 0:
            return None
        at += length
    if at != n:
        return None
    items = [p.args[0] for _, _, p in spans]
    pack = Node(PACK, items, diff=True, arity=len(items))
    axis_node = Node(CONST, value=axis)
    return [pack, axis_node, Node(CALL, (pack,), {"axis": axis_node}, fn=np.concatenate, diff=True)]


def _rank(shape):
    """Length of a shape given as a constant tuple or a pack of dims, else None."""
    if shape.op == CONST and isinstance(shape.value, tuple):
        return len(shape.value)
    return len(shape.args) if shape.op == PACK else None


def _static_dim(shape, axis):
    """The size along ``axis`` when it is a compile-time int, else None."""
    if shape.op == CONST and isinstance(shape.value, tuple) and axis < len(shape.value):
        return shape.value[axis]
    if shape.op == PACK and axis < len(shape.args) and shape.args[axis].op == CONST:
        return shape.args[axis].value
    return None


def optimize(graph):
    """The standard pipeline: simplify, powers as products, then CSE (which may expose more),
    slices to concatenate, shape classes, then simplify again; loop bodies first (each a closed
    graph of its own). Returns the resolver old -> new node."""
    for n in graph.nodes:
        if n.op == LOOP and not n.meta.get("optimized"):
            optimize(n.meta["body"])
            n.meta["optimized"] = True
        elif n.op == COND and not n.meta.get("optimized"):
            for body in n.meta["branches"]:
                optimize(body)
            n.meta["optimized"] = True
    steps = [simplify(graph), powers_to_products(graph), cse(graph), slices_to_concatenate(graph),
             same_shapes(graph), simplify(graph)]

    def resolve(n):
        for step in steps:
            n = step(n) if n is not None else None
        return n
    return resolve


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


class TracingPasses:
    """Folding and unbroadcast specialisation as tracer hooks: mixed into a
    :class:`~flux_compile.trace.Tracer` (the frontend's ``Builder``, autodiff's
    ``RuleTracer``), they run on each call as it is traced."""

    def folded(self, fn, nodes, kw):
        r = fold_constant_call(fn, [n.value for n in nodes], {k: v.value for k, v in kw.items()})
        if r is NOT_FOLDED:
            return None
        return Static(r) if isinstance(r, np.ndarray) else _static(r)

    def specialised_call(self, fn, args, kwargs, e):
        """``unbroadcast(g, shape)`` (in derivative rules) as ``g`` itself or one ``np.sum``
        when the shapes are known at compile time."""
        from .rules.helpers import unbroadcast
        if fn is not unbroadcast or len(args) != 2 or kwargs or not isinstance(args[0], Node):
            return None
        target = args[1]
        want = target.value if isinstance(target, Static) else getattr(target, "sym", None)
        plan = unbroadcast_plan(shape_of(args[0]), want)
        if plan is KEEP_AS_IS:
            return args[0]
        if plan is None:
            return None
        return self.call_primitive(np.sum, [args[0]], {k: Static(v) for k, v in plan.items()}, e)
