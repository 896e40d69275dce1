"""Forward mode over the IR: the tangent graph, primal and tangent computed together.

``tangent_graph(graph, wrt)`` appends to ``graph`` one tangent input per input listed in
``wrt`` (``x`` -> ``x_dot``, :func:`naming.tangent`) and, after every node whose tangent
is not zero, the nodes of its forward rule (:func:`rules.jvprule`), inlined like the
reverse rules are into the backward. A node none of whose inputs carries a tangent gets
none (zero tangents are pruned at compile time, never computed). The graph's outputs
become the primal outputs followed by their tangents.

It works on any graph built by the frontend, also on a joint forward + backward graph
(``autodiff.differentiate``), which is what forward-over-reverse (Hessian-vector
products) needs: :func:`tangent_graph` takes the graph and the inputs to perturb, and
knows nothing of where the graph came from.

>>> import numpy as np
>>> from flux_compile.ir import Graph, Node
>>> g = Graph("f")
>>> x = g.add(Node("input", name="x", diff=True))
>>> y = g.add(Node("call", (x,), fn=np.tanh, name="y", diff=True))
>>> g.outputs = [y]
>>> t = tangent_graph(g, [x])
>>> [n.name for n in g.inputs], len(t.tangents)
(['x', 'x_dot'], 1)
"""
from __future__ import annotations

import ast
import inspect

import numpy as np

from . import codegen, naming, passes, rules
from .autodiff import RuleTracer, _as_rule_value, _err, bind_rule_args, rule_path
from .errors import CompileError
from .ir import (ACCUM, ATTR, CALL, COND, CONST, GETATTR, GUARD, INPUT, ITEM, LOOP, MODEL, MODEL_BACK, PACK,
                 STATE, Node, describe_fn, is_leaf)
from .rules import jvp_elementwise, jvp_helpers, jvp_linalg, jvp_more, jvp_nn, jvp_reductions, jvp_shape  # noqa: F401
from .tracecore import Context, Seq, Static
from .rules.helpers import setitem, stack_items


JVP = "jvp"         # the generated function's name


class Tangents:
    """The result: the tangent input per perturbed input, the tangent per output (None: zero)."""

    def __init__(self, graph, inputs, tangents, n_primal):
        self.graph = graph
        self.inputs = inputs            # tangent input nodes, in the order of ``wrt``
        self.tangents = tangents        # one per primal output: a node, or None (zero)
        self.n_primal = n_primal        # nodes[:n_primal] are the primal computation
        self.ctx = None


def tangent_graph(graph, wrt=None, traced=None, model_jvp=None):
    """Append the tangent computation of ``graph`` for perturbations of ``wrt`` (input nodes;
    default: every differentiable input). Returns :class:`Tangents`; ``graph.outputs`` is left
    to the caller (primal outputs, then :attr:`Tangents.tangents`). ``model_jvp(model, inputs,
    tangents) -> (value, tangent)``: the run-time function a sub-model call's tangent is
    computed by (the sub-model's own compiled jvp); without it, sub-model calls are an error."""
    n_primal = len(graph.nodes)
    wrt = [n for n in graph.inputs if n.diff] if wrt is None else list(wrt)
    ctx = Context(graph, mode="rule")
    if traced is not None:
        ctx.free, ctx.free_names = dict(traced.free), dict(traced.free_names)
    b = RuleTracer(ctx)
    b.model_jvp = model_jvp
    tan = {}                            # node id -> tangent node
    tangent_inputs = []
    for x in wrt:
        t = graph.add(Node(INPUT, name=naming.tangent(x.name), diff=True))
        t.meta["shape"] = x.meta.get("shape")
        t.meta["complex"] = x.meta.get("complex")
        t.meta["tangent_of"] = x.id
        t.meta["after"] = x.id
        tangent_inputs.append(t)
        tan[x.id] = t
    _propagate(graph.nodes[:n_primal], tan, b)
    result = Tangents(graph, tangent_inputs, [tan.get(o.id) for o in graph.outputs], n_primal)
    result.ctx = ctx
    return result


def _propagate(nodes, tan, b):
    """Give each of ``nodes`` (in SSA order) its tangent in ``tan`` where an input has one."""
    graph = b.ctx.graph
    for node in nodes:
        if node.id in tan or is_leaf(node) or node.op == GETATTR:
            continue
        if not any(a.id in tan for a in node.inputs()):
            continue
        b.ctx.loc = node.loc
        start = len(graph.nodes)
        t = _tangent_of(node, tan, b)
        for n in graph.nodes[start:]:
            if not n.meta.pop("own_loc", False):
                n.loc = node.loc        # commented with the user's statement, as the backward
            n.meta.setdefault("after", node.id)   # emitted right after its primal: together
        if t is not None:
            if t.name is None or t.meta.get("anon"):
                t.name = naming.tangent(node.name)
                # a user's variable gets its tangent as a statement of its own, as it has
                t.meta["anon"] = not node.name or bool(node.meta.get("anon")) or t.op not in (CALL, ITEM)
            tan[node.id] = t


def _tangent_of(node, tan, b):
    op = node.op
    if op == PACK:
        items = [tan.get(a.id) for a in node.args]
        return _pack(node.args, items, b)
    if op == ITEM:
        src = tan.get(node.args[0].id)
        if src.op == PACK:
            return _none_if_zero(src.args[node.index])
        return b.ctx.add(Node(ITEM, (src,), index=node.index, diff=True))
    if op == CALL:
        return _tangent_of_call(node, tan, b)
    if op in (STATE, ACCUM, GUARD):
        return None
    if op == MODEL:
        return _tangent_of_model(node, tan, b)
    if op == COND:
        return _tangent_of_cond(node, tan, b)
    if op == LOOP:
        return _tangent_of_loop(node, tan, b)
    if op == MODEL_BACK:
        _err(node, "forward mode over a sub-model's backward (a second derivative through a model "
                   "call) is not supported: the sub-model's backward is its own compiled code",
             hint="write the model's computation as a function of its weights (pass them as "
                  "arguments), or use first-order fc.gradient / fc.vjp / fc.jvp with the model")
    _err(node, f"no tangent for node kind {op!r}")


def _tangent_of_model(node, tan, b):
    """A sub-model call: ``model_jvp(self.first, (x,), (x_dot,))[1]``, the sub-model's own
    compiled tangent code (its Params held fixed)."""
    if b.model_jvp is None:
        _err(node, "forward mode does not go through sub-model calls here",
             hint="use fc.jvp, which compiles each sub-model's own tangent code")
    model = b.ctx.add(Node(ATTR, base=node.base, path=node.path))
    inputs = b.ctx.add(Node(PACK, node.args, arity=len(node.args)))
    tangents = _pack(node.args, [tan.get(a.id) for a in node.args], b, fill=True)
    call = b.ctx.add(Node(CALL, (model, inputs, tangents), fn=b.model_jvp, diff=True, arity=2))
    call.meta["effect"] = True          # runs the sub-model: never merged or moved by the passes
    call.name = f"{node.name or 'out'}_jvp"
    return b.ctx.add(Node(ITEM, (call,), index=1, diff=True, arity=node.arity))


def _tangent_of_cond(node, tan, b):
    """A cond region: each branch gets its own tangent code (the tangents of the captured
    values become more captured values, the merged values' tangents more outputs), so the
    tangent branches as the primal does. Returns a pack of the new outputs."""
    captured = list(node.args[1:])
    moving = [j for j, c in enumerate(captured) if c.id in tan]
    slot = {j: len(captured) + k for k, j in enumerate(moving)}
    n_out = len(node.meta["names"])
    branches = []
    for body, positions in zip(node.meta["branches"], node.meta["captures"]):
        wrt = [inp for inp, j in zip(body.inputs, positions) if j in slot]
        branches.append(tangent_graph(body, wrt, model_jvp=b.model_jvp))
    # only the merged values with a tangent in some branch get one (not a loop's break flag)
    with_tangent = [i for i in range(n_out) if any(t.tangents[i] is not None for t in branches)]
    for body, positions, t in zip(node.meta["branches"], node.meta["captures"], branches):
        inner = RuleTracer(t.ctx)
        inner.model_jvp = b.model_jvp
        outs = body.outputs[:n_out]
        body.outputs = outs + [t.tangents[i] if t.tangents[i] is not None else _zeros_like(outs[i], inner)
                               for i in with_tangent]
        positions.extend(slot[j] for inp, j in zip(body.inputs, positions) if j in slot)
        _in_emission_order(body)
    node.args = node.args + tuple(tan[captured[j].id] for j in moving)
    names = node.meta["names"]
    node.meta["names"] = names + [naming.tangent(names[i].strip("<>")) for i in with_tangent]
    node.arity = n_out + len(with_tangent)
    items = [_zero_tangent(b)] * n_out
    for k, i in enumerate(with_tangent):
        items[i] = b.ctx.add(Node(ITEM, (node,), index=n_out + k, diff=True))
    return b.ctx.add(Node(PACK, items, diff=True, arity=n_out))


def _zero_tangent(b):
    """A placeholder in a region's pack of tangents: this output's tangent is zero."""
    z = b.ctx.add(Node(CONST, value=None))
    z.meta["zero_tangent"] = True
    return z


def _moving_carried(body, nc, carried_moving, captured_moving):
    """Which carried values of a loop body get a tangent: those whose initial value has one,
    or whose new value depends on one that has (until it settles; an over-estimate is safe:
    a tangent that stays zero is carried as zeros)."""
    carried_in, cap_in = body.inputs[1:1 + nc], body.inputs[1 + nc:]
    moving = set(carried_moving)
    while True:
        ids = {carried_in[i].id for i in moving} | {cap_in[j].id for j in captured_moving}
        for n in body.nodes:
            if n.id not in ids and not is_leaf(n) and any(a.id in ids for a in n.inputs()):
                ids.add(n.id)
        now = moving | {i for i, o in enumerate(body.outputs[:nc])
                        if o.id in ids and o.diff and carried_in[i].diff}
        if now == moving:
            return sorted(moving)
        moving = now


def _tangent_of_loop(node, tan, b):
    """A loop region: the body's tangent code inside the same loop, each carried value's
    tangent carried beside it (``h_dot``, zeros when its initial value has none), the captured
    values' tangents read inside, each per-trip list's tangent stacked after the loop. Returns
    a pack of the loop's outputs' tangents (in the loop's new output order)."""
    body, nb, carried = node.meta["body"], node.meta["n_bounds"], list(node.meta["carried"])
    nc, lists = len(carried), list(node.meta.get("lists", ()))
    inits, captured = list(node.args[nb:nb + nc]), list(node.args[nb + nc:])
    cap_in = body.inputs[1 + nc:]
    moving_cap = [j for j, c in enumerate(captured) if c.id in tan]
    moving = _moving_carried(body, nc, [i for i, x in enumerate(inits) if x.id in tan and body.inputs[1 + i].diff],
                             moving_cap)
    t_in, carried_in = body.inputs[0], body.inputs[1:1 + nc]
    wrt = [carried_in[i] for i in moving] + [cap_in[j] for j in moving_cap]
    t = tangent_graph(body, wrt, model_jvp=b.model_jvp)
    inner = RuleTracer(t.ctx)
    inner.model_jvp = b.model_jvp
    outs, list_outs = body.outputs[:nc], body.outputs[nc:]
    carried_t = [t.tangents[i] if t.tangents[i] is not None else _zeros_like(outs[i], inner) for i in moving]
    list_moving = [j for j in range(len(lists)) if t.tangents[nc + j] is not None]
    tan_in = t.inputs[:len(moving)]
    tan_cap = t.inputs[len(moving):]
    _in_emission_order(body)
    # the while loop's test flag stays the last carried value
    pos = nc - 1 if node.meta.get("kind") == "while" else nc
    k = len(moving)
    body.inputs = [t_in] + carried_in[:pos] + tan_in + carried_in[pos:] + cap_in + tan_cap
    body.outputs = outs[:pos] + carried_t + outs[pos:] + list_outs + [t.tangents[nc + j] for j in list_moving]
    tan_inits = [tan.get(inits[i].id) or _zeros_before(inits[i], b) for i in moving]
    node.args = tuple(node.args[:nb]) + tuple(inits[:pos] + tan_inits + inits[pos:]) \
        + tuple(captured) + tuple(tan[captured[j].id] for j in moving_cap)
    node.meta["carried"] = carried[:pos] + [naming.tangent(carried[i].strip("<>")) for i in moving] + carried[pos:]
    node.meta["lists"] = lists + [naming.tangent(lists[j]) for j in list_moving]
    node.arity = nc + k + len(lists) + len(list_moving)

    def new_index(i):
        return i if i < pos else i + k
    old_items = [n for n in b.ctx.graph.nodes if n.op == ITEM and n.args and n.args[0] is node]
    for n in old_items:
        n.index = new_index(n.index)
    by_index = {n.index: n for n in old_items}
    pack = [None] * node.arity
    for slot, i in enumerate(moving):
        pack[new_index(i)] = _loop_item(node, pos + slot, by_index.get(new_index(i)), b)
    for slot, j in enumerate(list_moving):
        pack[nc + k + j] = _loop_item(node, nc + k + len(lists) + slot, by_index.get(nc + k + j), b)
    for i, p in enumerate(pack):
        if p is None:
            pack[i] = _zero_tangent(b)
    return b.ctx.add(Node(PACK, pack, diff=True, arity=node.arity))


def _zeros_before(x, b):
    """Zeros like ``x``, emitted right after ``x`` (a loop's initial tangent: before the loop)."""
    start = len(b.ctx.graph.nodes)
    z = _zeros_like(x, b)
    for n in b.ctx.graph.nodes[start:]:
        n.meta.update(after=x.id, own_loc=True)
        n.loc = x.loc
    if x.name and not x.meta.get("anon"):
        z.name = naming.tangent(x.name)
    return z


def _loop_item(loop, index, primal, b):
    """Output ``index`` of ``loop`` (a tangent), shaped as its primal output ``primal``."""
    item = b.ctx.add(Node(ITEM, (loop,), index=index, diff=True))
    if primal is not None:
        item.meta["shape"] = primal.meta.get("shape")
    return item


def _in_emission_order(body):
    """Renumber a branch's nodes with each tangent just after its primal (as the top level
    is emitted), so a nested region never reads a tangent computed after it; inputs keep
    their order (the cond's captures index them)."""
    inputs = list(body.inputs)
    nodes = _interleaved(body.nodes)
    for n in nodes:
        n.meta.pop("after", None)
    body.renumber(nodes)
    body.inputs = inputs


def _none_if_zero(n):
    return None if n.meta.get("zero_tangent") else n


def _zeros_like(x, b):
    if x.op == CONST and x.value is None:      # "no adjoint" in a reverse rule's list: zero already
        return x
    if x.op == CONST and isinstance(x.value, (bool, int, float, complex)):
        # a Python number stays one (0 and 0.0 are what the reverse rules' kernels expect
        # for an unused piece's adjoint; a 0-d array is not)
        z = b.as_node(Static(type(x.value)(0)))
        z.meta["zero_tangent"] = True
        return z
    z = b.as_node(b.call_primitive(np.zeros_like, [x], {}, None))     # a constant's folds
    z.meta["zero_tangent"] = True
    return z


def _filled(x, t, b, values=False):
    """``t``, or zeros like ``x`` where ``x``'s tangent is zero (the argument of a linear map)."""
    if isinstance(t, Node):
        return t
    if x.op == PACK:
        return _pack(x.args, [None] * len(x.args), b, fill=True, values=values)
    return _zeros_like(x, b)


def _pack(args, items, b, fill=False, values=False):
    """The tangent of a tuple: None when every item's is zero, else a pack with zeros filled in
    for the differentiable items (for every item when all are values: a list operand of a
    linear map) and the items themselves for the others."""
    if not fill and all(t is None for t in items):
        return None
    elems = [t if t is not None else _zeros_like(a, b) if a.diff or values else a for a, t in zip(args, items)]
    return b.ctx.add(Node(PACK, elems, diff=True, arity=len(elems)))


def _tangent_of_call(node, tan, b):
    fn = node.fn
    if rules.is_nondiff(fn) or not node.diff:
        return None
    rule = rules.get_jvp_rule(fn)
    if rule is None and _inlinable(fn):
        return _tangent_by_inlining(node, tan, b)
    if rule is None:
        _err(node, f"no forward-mode (jvp) rule for {describe_fn(fn)}",
             hint=f"register one with @fc.jvprule({getattr(fn, '__name__', 'fn')}), or stop the "
                  "tangent with fc.nodiff(...)")
    if rule == "linear":
        return _linear(node, tan, b)
    if rule == "multilinear":
        return _multilinear(node, tan, b)
    return _inline_rule(node, rule, tan, b)


def _inlinable(fn):
    """A run-time helper of the reverse rules (plain Python in the package), whose source the
    tracer can inline when it has no forward rule of its own."""
    return inspect.isfunction(fn) and (fn.__module__ or "").startswith("flux_compile.") \
        and not rules.is_nondiff(fn)


def _tangent_by_inlining(node, tan, b):
    """The tangent of a helper call with no forward rule: the helper's body inlined (the
    primitives it calls have rules) and differentiated statement by statement."""
    graph = b.ctx.graph
    start = len(graph.nodes)
    args = [_as_rule_value(a) for a in node.args]
    kwargs = {k: _as_rule_value(v) if isinstance(v, Node) else Static(v) for k, v in node.kwargs.items()}
    try:
        out = b.call_function(node.fn, args, kwargs)
    except CompileError as e:
        _err(node, f"no forward-mode (jvp) rule for {describe_fn(node.fn)}, and its source cannot "
                   f"be inlined: {e.msg}", hint=f"register one with @fc.jvprule({node.fn.__name__})")
    if isinstance(out, Seq):
        out = b.ctx.add(Node(PACK, [b.as_node(v) for v in out.items], diff=True, arity=len(out.items)))
    else:
        out = b.as_node(out)
    for n in graph.nodes[start:]:
        n.meta["after"] = node.id
    _propagate(graph.nodes[start:], tan, b)
    if out.id in tan:
        return tan[out.id]
    return None


def _tangent_arg(a, tan, b, values=False):
    """The tangent of argument node ``a`` (a pack's is built from its items'), or None. With
    ``values`` (a list operand of a linear map) an item without a tangent gets zeros."""
    t = tan.get(a.id)
    if (t is None or values) and a.op == PACK and any(x.id in tan for x in a.args):
        t = _pack(a.args, [tan.get(x.id) for x in a.args], b, values=values)
    return t


def _call_like(node, args, b, kwargs=None):
    """``node``'s primitive called on ``args`` with its keyword arguments (or ``kwargs``)."""
    kwargs = dict(node.kwargs) if kwargs is None else kwargs
    n = b.ctx.add(Node(CALL, args, kwargs, fn=node.fn, diff=True, arity=node.arity))
    n.meta["shape"] = node.meta.get("shape")
    return n


# Linear primitives with more than one value operand (their positions; ALL: every one). Every
# other linear primitive is linear in its first operand alone; the rest (shapes, axes, indices,
# np.where's condition, np.select's conditions) stay themselves in the tangent's call.
ALL = "all"
VALUE_OPERANDS = {np.where: (1, 2), np.select: (1, 2), np.append: (0, 1), setitem: (0, 2), np.diff: (0, 3, 4),
                  stack_items: ALL}
VALUE_KEYWORDS = {np.diff: ("prepend", "append"), np.select: ("default",)}   # keyword operands that are values too


def _value_operand(node, i):
    try:
        positions = VALUE_OPERANDS.get(node.fn, (0,))
    except TypeError:                   # an unhashable primitive
        positions = (0,)
    return positions == ALL or i in positions


def _linear(node, tan, b):
    """A linear primitive: the same primitive of the tangents, zeros filled in for a value
    operand without one (a constant, a global, a literal: its tangent is zero, not its
    value; in a list operand item by item); the other operands stay themselves."""
    args = []
    for i, a in enumerate(node.args):
        value = _value_operand(node, i)
        t = _tangent_arg(a, tan, b, values=value)
        args.append(t if t is not None else _filled(a, None, b, values=True) if value else a)
    return _call_like(node, args, b, _value_keywords_tangents(node, tan, b))


def _value_keywords_tangents(node, tan, b):
    """``node``'s keyword arguments with each value keyword (np.diff's prepend / append) replaced
    by its tangent: zeros for a literal or a value without one."""
    kwargs = dict(node.kwargs)
    try:
        names = VALUE_KEYWORDS.get(node.fn, ())
    except TypeError:
        names = ()
    for name in names:
        v = kwargs.get(name)
        if isinstance(v, Node):
            t = _tangent_arg(v, tan, b, values=True)
            kwargs[name] = t if t is not None else _zeros_like(v, b)
        elif v is not None and v is not np._NoValue:
            kwargs[name] = np.zeros_like(v)[()]
    return kwargs


def _is_array(a):
    return a.op != CONST


def _multilinear(node, tan, b):
    """A product: one term per operand with a tangent, that operand replaced by it; inside a
    list operand (``multi_dot([a, b, c])``) one term per item with a tangent."""
    terms = []
    for i, a in enumerate(node.args):
        if a.op == PACK:
            for j, x in enumerate(a.args):
                t = tan.get(x.id)
                if t is not None:
                    items = list(a.args)
                    items[j] = t
                    pack = b.ctx.add(Node(PACK, items, diff=True, arity=len(items)))
                    terms.append(_call_like(node, _replace(node.args, i, pack), b))
            continue
        t = tan.get(a.id)
        if t is not None:
            terms.append(_call_like(node, _replace(node.args, i, t), b))
    total = terms[0]
    for t in terms[1:]:
        total = b.ctx.add(Node(CALL, (total, t), fn=np.add, diff=True))
    return total


def _replace(args, i, value):
    args = list(args)
    args[i] = value
    return args


def _jvp_shim(rule):
    """A stand-in with a reverse rule's signature (``dy, y, inputs..., *, keywords``), so the
    call's arguments bind to the forward rule's parameters as they would to a reverse rule."""
    pos, kw = rules.jvp_rule_signature(rule)
    P = inspect.Parameter
    # (named so as not to clash with an input of a helper named dy or y, as maxpool2d_grad's)
    params = [P("_shim_dy", P.POSITIONAL_OR_KEYWORD), P("_shim_y", P.POSITIONAL_OR_KEYWORD)]
    params += [P(n, P.POSITIONAL_OR_KEYWORD) for n in pos]
    params += [P(k, P.KEYWORD_ONLY, default=v) for k, v in kw.items()]

    def shim():
        pass
    shim.__signature__ = inspect.Signature(params)
    return shim


def _inline_rule(node, rule, tan, b):
    pos, kw = bind_rule_args(node, _jvp_shim(rule))
    tangents = [Static(None) if p is None else _tangent_arg(p, tan, b) or Static(None) for p in pos]
    rargs = tangents + [node] + [_as_rule_value(p) for p in pos]
    rkw = {k: _as_rule_value(v) for k, v in kw.items()}
    try:
        result = b.call_function(rule, rargs, rkw, path=rule_path(rule))
    except CompileError as e:
        _err(node, f"while inlining the forward-mode rule of {describe_fn(node.fn)}: {e.msg} "
                   f"(rule at {e.filename}:{e.lineno})")
    if isinstance(result, Static) and result.value is None:
        return None
    if isinstance(result, Seq):
        items = [b.as_node(v) for v in result.items]
        return b.ctx.add(Node(PACK, items, diff=True, arity=len(items)))
    return b.as_node(result)


# ------------------------------------------------------------------------------
# the generated function: def jvp(x, ..., x_dot, ..., <arrays read at run time>)

def jvp_module(label, graph, tangents, free=(), n_outputs=None):
    """Generate and compile ``jvp(inputs..., tangents..., free...) -> (value, tangent)`` from a
    graph :func:`tangent_graph` has extended (the passes already run, outputs resolved).
    ``free``: (path, name) of the arrays read at run time. Returns what
    :func:`codegen.build_module` returns."""
    module = naming.ModuleNames()
    function_name = module.module_name(JVP)       # reserved: no local or helper takes it
    ns = codegen.Namespace(module)
    fs = codegen.FuncSet()
    scope = module.scope()
    primal = [n for n in graph.inputs if "free" not in n.meta and "tangent_of" not in n.meta]
    sig = scope.params([n.name for n in primal] + [n.name for n in tangents.inputs] + [nm for _, nm in free])
    names = {n.id: p for n, p in zip(primal + list(tangents.inputs), sig)}
    slot = {path: len(names) + i for i, (path, _) in enumerate(free)}
    names.update({n.id: sig[slot[n.meta["free"]]] for n in graph.inputs if "free" in n.meta})
    bases = {n.name: names[n.id] for n in graph.inputs}
    b = RuleTracer(Context(graph, mode="rule"))
    outs = list(graph.outputs)
    touts = [t if t is not None else _zeros_like(o, b) for o, t in zip(outs, tangents.tangents)]
    for o, t in zip(outs, touts):
        if t.name is None or t.meta.get("anon"):
            t.name = naming.tangent(o.name)
    em = codegen.FunctionEmitter(ns, names, fs.locs, "infer", scope, bases=bases)
    alive = passes.live(outs + touts + [n for n in graph.nodes if n.op == GUARD])
    body = em.statements(_interleaved([n for n in graph.nodes if n.id in alive]), {o.id for o in outs + touts})
    value = _value_expr([em.expr(o) for o in outs], n_outputs)
    tangent = _value_expr([em.expr(t) for t in touts], n_outputs)
    ret = ast.Tuple(elts=[value, tangent], ctx=ast.Load())
    fs.defs.append(codegen.make_function(function_name, sig, body, ret))
    return codegen.build_module(label, fs, ns) + (dict(ns.objects),)


def _interleaved(nodes):
    """``nodes`` (SSA order) with each tangent computation moved up to just after its primal
    node, never before one of its inputs. (A node a pass inserted for another goes where that
    one goes: ``meta["origin"]``, in SSA order among them.)"""
    at, position = {}, {}
    for i, n in enumerate(nodes):
        position[n.id] = i
        at[n.id] = max([n.meta.get("after", n.meta.get("origin", n.id))] + [at.get(a.id, -1) for a in n.inputs()])
    return sorted(nodes, key=lambda n: (at[n.id], n.meta.get("origin", n.id), position[n.id]))


def _value_expr(exprs, n_outputs):
    if n_outputs is None:
        return exprs[0]
    return ast.Tuple(elts=list(exprs), ctx=ast.Load())


# ------------------------------------------------------------------------------
# any derived function: def name(inputs..., tangents..., <arrays read at run time>)

def function_module(label, function_name, graph, params, outputs, free=(), single=False):
    """Generate and compile ``function_name(params..., free...) -> outputs`` from a graph the
    transforms have built (the passes already run, ``outputs`` resolved): ``params`` are input
    nodes in the order of the signature, ``free`` the (path, name) of the arrays read at run
    time. One output is returned alone when ``single``, else a tuple. Returns what
    :func:`codegen.build_module` returns, and the namespace's objects."""
    module = naming.ModuleNames()
    function_name = module.module_name(function_name)
    ns = codegen.Namespace(module)
    fs = codegen.FuncSet()
    scope = module.scope()
    sig = scope.params([n.name for n in params] + [nm for _, nm in free])
    names = {n.id: p for n, p in zip(params, sig)}
    slot = {path: len(params) + i for i, (path, _) in enumerate(free)}
    names.update({n.id: sig[slot[n.meta["free"]]] for n in graph.inputs if "free" in n.meta})
    bases = {n.name: names[n.id] for n in graph.inputs if n.id in names}
    # "train": a sub-model call whose backward is needed binds its pullback
    em = codegen.FunctionEmitter(ns, names, fs.locs, "train", scope, bases=bases)
    alive = passes.live(list(outputs) + [n for n in graph.nodes if n.op == GUARD])
    body = em.statements(_interleaved([n for n in graph.nodes if n.id in alive]), {o.id for o in outputs})
    ret = _value_expr([em.expr(o) for o in outputs], None if single else len(outputs))
    fs.defs.append(codegen.make_function(function_name, sig, body, ret))
    return codegen.build_module(label, fs, ns) + (dict(ns.objects),)
