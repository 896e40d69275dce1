"""Reverse mode over the IR: inline each primitive's rule, sum adjoints, split the result.

``split(joint, resolve)`` (after the passes) says what the training forward computes
and saves and what the backward computes.

``differentiate(graph)`` appends the backward nodes to the forward graph (one
*joint* graph) and returns a :class:`Joint` that says which nodes the training
forward computes, which it saves, and which the backward computes.

Adjoints are summed when a value is used more than once; a Param used twice
gets one ``self.W.grad += dW`` with both contributions. Sub-model calls are
differentiated through the sub-model's own compiled backward (``model_back``).
"""
from __future__ import annotations

import numpy as np

from . import naming, rules
from .errors import CompileError
from .ir import (
    ACCUM, ATTR, CALL, CONST, GETATTR, GUARD, INPUT, ITEM, MODEL, MODEL_BACK, PACK, PARAM, SEED,
    STATE, LOOP, LOOP_BACK, COND, COND_BACK, BACK_EFFECT_OPS, Node, describe_fn, is_leaf, is_reread,
    path_expr)
from .passes import TracingPasses, live, optimize
from .trace import Tracer
from .tracecore import Context, Seq, Static

class Joint:
    """The joint graph, split: ``forward`` nodes, ``saved`` values, ``backward`` nodes."""

    def __init__(self, graph, seeds, input_grads, n_forward):
        self.graph = graph
        self.seeds = seeds              # one 'seed' node per output
        self.input_grads = input_grads  # one node (or None) per input
        self.n_forward = n_forward      # nodes[:n_forward] came from the user's forward


def _err(node, msg, hint=None):
    loc = node.loc
    if loc is None:
        raise CompileError(msg, hint=hint)
    import linecache
    text = linecache.getline(loc.filename, loc.lineno).rstrip("\n") or loc.text
    raise CompileError(msg, loc.filename, loc.lineno, loc.col, text, hint=hint)


class Adjoints:
    """Contributions per node (per item for tuple-valued nodes)."""

    def __init__(self, n_forward=None, fed=None):
        self.parts = {}        # node id -> [node]
        self.items = {}        # node id -> {index: [node]}
        self.complex_in_play = False   # complex values may reach real Params' gradients
        self.n_forward = n_forward     # nodes from here on are the backward's
        self.fed = fed or {}           # unnamed forward node id -> the user variable it feeds

    def name_of(self, node):
        """The adjoint's hint for ``node``: ``dh``; ``dfc1_out``, ``dt_h`` for unnamed values."""
        return naming.adjoint(value_hint(node, self.fed))

    def _name_partial(self, node, grad):
        """An unnamed backward value added to ``node``'s adjoint is a part of it: ``dh_part``."""
        if isinstance(grad, Node) and not grad.name and self.n_forward is not None \
                and grad.id >= self.n_forward and not is_leaf(grad):
            grad.name = naming.partial(self.name_of(node))
            grad.meta["anon"] = True

    def add(self, node, grad, builder):
        if grad is None or (isinstance(grad, Static) and grad.value is None):
            return
        if not node.diff:
            return
        if node.op in (CONST, ATTR):
            return
        if node.arity is not None and node.op in (PACK, MODEL, CALL, ITEM, INPUT):
            items = grad.items if isinstance(grad, Seq) else None
            if items is None:
                g = builder.as_node(grad)
                if g.op == PACK:
                    items = list(g.args)
                else:
                    items = [builder.ctx.add(Node(ITEM, (g,), index=i, diff=True)) for i in range(node.arity)]
            for i, gi in enumerate(items):
                if gi is None or (isinstance(gi, Static) and gi.value is None):
                    continue
                self.items.setdefault(node.id, {}).setdefault(i, []).append(builder.as_node(gi))
            return
        if isinstance(grad, Seq):
            grad = builder.as_node(grad)
        elif isinstance(grad, Static):
            grad = builder.as_node(grad)
        self._name_partial(node, grad)
        self.parts.setdefault(node.id, []).append(grad)

    def add_item(self, node, index, grad):
        self.items.setdefault(node.id, {}).setdefault(index, []).append(grad)


def _sum(parts, builder, name, adjoint=True, weak=False):
    """The adjoint ``name`` as the sum of its ``parts`` (``adjoint=False``: one item of a
    tuple's adjoint, whose name yields to the adjoint of the value it is passed on to;
    ``weak``: the name is not made from a user's variable, so a pass may give a better one)."""
    total = parts[0]
    for p in parts[1:]:
        total = builder.ctx.add(Node(CALL, (total, p), fn=np.add, diff=True))
    if total.name is None or len(parts) > 1 or (total.meta.get("anon") and not total.meta.get("adjoint")) \
            or (total.meta.get("adjoint") and total.meta.get("weak") and not weak):
        # an adjoint passed on unchanged (``z = a + b``: ``da`` is ``dz``) keeps its first name,
        # unless that name came from an unnamed value and this one from the user's variable
        total.name = name
        total.meta["anon"] = True
        total.meta["adjoint"] = adjoint
        total.meta["weak"] = weak
    return total


def _is_complex(node):
    """A complex constant (``1j``, ``np.complex128``), input, Param or attribute."""
    if node.op == CONST:
        v = node.value
        if isinstance(v, (complex, np.complexfloating)) or isinstance(v, np.ndarray) and v.dtype.kind == "c":
            return True
        if isinstance(v, (type, np.dtype)):
            try:
                return np.dtype(v).kind == "c"
            except TypeError:
                return False
        return v in ("complex", "complex64", "complex128") if isinstance(v, str) else False
    if node.op == CALL and rules.makes_complex(node.fn):     # np.fft.fft(x) of a real x
        return True
    return bool(node.meta.get("complex"))


def value_hint(node, fed):
    """What a forward value is called, for naming its adjoint: the user's name; a sub-model's
    output from its attribute (``fc1_out``); an unnamed value from the variable it feeds."""
    if node.name:
        return node.name
    if node.op == MODEL:
        return naming.model_output(node.path[-1] if node.path else node.base)
    return naming.temporary(fed[node.id]) if node.id in fed else None


class RuleTracer(TracingPasses, Tracer):
    """What inlines derivative rules into a graph: the trace layer with folding and
    unbroadcast specialisation; nothing of models (rules never see one)."""


def differentiate(graph, n_inputs_diff=None, traced=None):
    """Append the backward of ``graph`` to it; returns a :class:`Joint`. ``traced``: the
    context that built ``graph`` (its arrays read at run time are shared with the rules)."""
    n_forward = len(graph.nodes)
    ctx = Context(graph, mode="rule")
    if traced is not None:
        ctx.free, ctx.free_names = dict(traced.free), dict(traced.free_names)
    b = RuleTracer(ctx)
    adj = Adjoints(n_forward, naming.fed_variables(graph.nodes[:n_forward]))
    adj.complex_in_play = any(_is_complex(n) for n in graph.nodes[:n_forward])
    seeds = []
    for i, out in enumerate(graph.outputs):
        name = naming.seed(i, len(graph.outputs))
        s = graph.add(Node(SEED, name=name, index=i, diff=True))
        s.name = name
        s.meta["shape"] = out.meta.get("shape") if out.op != CONST else None
        seeds.append(s)
        adj.add(out, s, b)

    for node in reversed(graph.nodes[:n_forward]):
        if node.arity is not None and node.id in adj.items:
            per = adj.items.pop(node.id)
            ctx.loc = node.loc
            elems = []
            for i in range(node.arity if node.arity is not None else max(per) + 1):
                parts = per.get(i)
                elems.append(_sum(parts, b, naming.part(adj.name_of(node), i), adjoint=False) if parts else None)
            g = _pack_with_none(elems, b)
            adj.parts.setdefault(node.id, []).insert(0, g)
        parts = adj.parts.get(node.id)
        if not parts or not node.diff:
            continue
        ctx.loc = node.loc
        g = _sum(parts, b, adj.name_of(node), weak=not node.name) if node.arity is None else parts[0]
        if g.meta.get("shape") is None and node.meta.get("shape") is not None:
            g.meta["shape"] = node.meta["shape"]
        adj.parts[node.id] = [g]
        _backprop(node, g, b, adj)

    input_grads = []
    for inp in graph.inputs:
        parts = adj.parts.get(inp.id)
        input_grads.append(parts[0] if parts else None)
    joint = Joint(graph, seeds, input_grads, n_forward)
    joint.ctx = ctx             # what the rules baked in (ctx.baked) and read at run time (ctx.free)
    return joint


def _pack_with_none(elems, b):
    nodes = [e if e is not None else b.ctx.add(Node(CONST, value=None)) for e in elems]
    return b.ctx.add(Node(PACK, nodes, diff=True, arity=len(nodes)))


def _backprop(node, g, b, adj):
    op = node.op
    if is_leaf(node) and op != PARAM:
        return
    if op == PARAM:
        if adj.complex_in_play and not node.meta.get("complex"):
            # autograd's convention: a real value's gradient is the real part
            g = b.ctx.add(Node(CALL, (g,), fn=np.real, diff=True), loc=g.loc)
        b.ctx.add(Node(ACCUM, (g,), base=node.base, path=node.path,
                       target=path_expr(node.base, node.path)), loc=g.loc)
        return
    if op == PACK:
        items = list(g.args) if g.op == PACK else \
            [b.ctx.add(Node(ITEM, (g,), index=i, diff=True)) for i in range(len(node.args))]
        for x, gi in zip(node.args, items):
            if not (gi.op == CONST and gi.value is None):
                adj.add(x, gi, b)
        return
    if op == ITEM:
        src = node.args[0]
        if src.arity is None:
            # unknown arity (an opaque call): grow as needed
            src.arity = max(node.index + 1, src.meta.get("max_item", 0))
        adj.add_item(src, node.index, g)
        return
    if op == GETATTR:
        return
    if op == MODEL:
        back = b.ctx.add(Node(MODEL_BACK, (g,), target=node.target, diff=True))
        back.meta["model"] = node
        node.meta["needs_back"] = True
        diff_args = [a for a in node.args]
        if len(diff_args) == 1:
            adj.add(diff_args[0], back, b)
        else:
            for i, a in enumerate(diff_args):
                if a.diff:
                    adj.add(a, b.ctx.add(Node(ITEM, (back,), index=i, diff=True)), b)
        return
    if op == CALL:
        _backprop_call(node, g, b, adj)
        return
    if op == LOOP:
        _backprop_loop(node, g, b, adj)
        return
    if op == COND:
        _backprop_cond(node, g, b, adj)
        return
    if op in (STATE,):
        return
    _err(node, f"no adjoint for node kind {op!r}")


def _backprop_loop(node, g, b, adj):
    """A loop region: its body differentiated on its own (forward, saved per trip, backward);
    one ``loop_back`` node runs that backward over the trips in reverse and gives the
    adjoints of the carried initial values and of the captured values."""
    body = node.meta["body"]
    joint = differentiate(body)
    resolve = optimize(body)
    node.meta["optimized"] = True
    joint.resolved_grads = [resolve(x) if x is not None else None for x in joint.input_grads]
    node.meta["train"] = (joint, split(joint, resolve))
    node.meta["needs_back"] = True
    nb, nc = node.meta["n_bounds"], len(node.meta["carried"])
    seeds = list(g.args) if g.op == PACK else \
        [b.ctx.add(Node(ITEM, (g,), index=i, diff=True)) for i in range(len(body.outputs))]
    zero_like = []          # carried values without an adjoint start from zeros of their final value
    for i, s in enumerate(seeds):
        if s.op == CONST and s.value is None and body.outputs[i].diff:
            zero_like.append(b.ctx.add(Node(ITEM, (node,), index=i)))
        else:
            zero_like.append(None)
    captured = list(node.args[nb + nc:])
    cap_inputs = body.inputs[1 + nc:]
    saved_ids = {n.id for n, _ in node.meta["train"][1].saved}
    needed = [j for j, (c, ci) in enumerate(zip(captured, cap_inputs))
              if ci.id in saved_ids or c.diff and joint.input_grads[1 + nc + j] is not None]
    args = [g] + [captured[j] for j in needed] + [z for z in zero_like if z is not None]
    back = b.ctx.add(Node(LOOP_BACK, args, diff=True, arity=nc + len(captured)))
    back.meta.update(loop=node, captured=needed, zero_like=[z is not None for z in zero_like])
    for i, init in enumerate(node.args[nb:nb + nc]):
        if init.diff and body.outputs[i].diff:      # not a while's flag, nor a counter
            adj.add(init, b.ctx.add(Node(ITEM, (back,), index=i, diff=True)), b)
    for j, c in enumerate(captured):
        if c.diff and joint.input_grads[1 + nc + j] is not None:
            adj.add(c, b.ctx.add(Node(ITEM, (back,), index=nc + j, diff=True)), b)


def _backprop_cond(node, g, b, adj):
    """A cond region: each branch differentiated on its own (forward, saved, backward); one
    ``cond_back`` node runs the taken branch's backward alone (the test is saved) and gives
    the adjoints of the captured values (zeros from the branch that did not read one)."""
    trains = []
    for body in node.meta["branches"]:
        joint = differentiate(body)
        resolve = optimize(body)
        joint.resolved_grads = [resolve(x) if x is not None else None for x in joint.input_grads]
        trains.append((joint, split(joint, resolve)))
    node.meta["train"] = trains
    node.meta["optimized"] = True
    node.meta["needs_back"] = True
    n_out = len(node.meta["names"])
    seeds = list(g.args) if g.op == PACK else \
        [b.ctx.add(Node(ITEM, (g,), index=i, diff=True)) for i in range(n_out)]
    zero_like = [b.ctx.add(Node(ITEM, (node,), index=i)) if s.op == CONST and s.value is None and
                 any(body.outputs[i].diff for body in node.meta["branches"]) else None
                 for i, s in enumerate(seeds)]
    captured = list(node.args[1:])
    given = []          # per branch: the captured positions it gives a gradient
    read = set()        # captured positions a branch's backward reads
    for (joint, sp), positions, body in zip(trains, node.meta["captures"], node.meta["branches"]):
        saved_ids = {n.id for n, _ in sp.saved}
        read |= {j for inp, j in zip(body.inputs, positions) if inp.id in saved_ids}
        given.append({j for j, grad in zip(positions, joint.input_grads) if grad is not None and captured[j].diff})
    grads = given[0] | given[1]
    needed = sorted(read | (grads - (given[0] & given[1])))    # zeros_like(x) where one branch gives none
    args = [g, node.args[0]] + [captured[j] for j in needed] + [z for z in zero_like if z is not None]
    back = b.ctx.add(Node(COND_BACK, args, diff=True, arity=len(captured)))
    back.meta.update(cond=node, captured=needed, grads=sorted(grads),
                     zero_like=[z is not None for z in zero_like])
    for j in sorted(grads):
        adj.add(captured[j], b.ctx.add(Node(ITEM, (back,), index=j, diff=True)), b)


def bind_rule_args(node, rule):
    """Match a call node's arguments to a rule's parameters: (positional, keyword)."""
    import inspect
    pos_names, kw_defaults = rules.rule_signature(rule)
    fn = node.fn
    args, kwargs = list(node.args), dict(node.kwargs)
    bound = None
    try:
        sig = inspect.signature(fn)
        bound = sig.bind(*args, **kwargs).arguments
        flat = {}
        for name, value in bound.items():
            p = sig.parameters[name]
            if p.kind is p.VAR_KEYWORD:
                flat.update(value)
            else:
                flat[name] = value
        bound = flat
    except (TypeError, ValueError):
        bound = None
    if pos_names and pos_names[0].startswith("*"):
        return args, kwargs
    if bound is None or not set(pos_names) <= set(bound) | set(kw_defaults) | {n for n in pos_names}:
        bound = {}
        names = [n for n in pos_names] + [n for n in kw_defaults]
        for name, value in zip(names, args):
            bound[name] = value
        if len(args) > len(names):
            _err(node, f"too many arguments for the derivative rule of {describe_fn(fn)}")
        bound.update(kwargs)
    pos = []
    for name in pos_names:
        if name in bound:
            pos.append(bound.pop(name))
        elif name.startswith("*"):      # f, *varargs (np.gradient's spacings): each an input
            pos.extend(bound.pop(name[1:], ()))
        else:
            pos.append(None)
    kw = {}
    for name, value in bound.items():
        if name not in kw_defaults:
            if value.op == CONST and value.value is None:
                continue
            _err(node, f"the derivative rule of {describe_fn(fn)} does not support the argument {name!r}",
                 hint="drop the argument, or register your own rule with @fc.diffrule")
        kw[name] = value
    return pos, kw


def _as_rule_value(n):
    if n is None:
        return Static(None)
    if n.op == CONST:
        return Static(n.value)
    return n


def rule_path(rule):
    """Guards path of a user's derivative rule (its globals and cells are guarded or read at
    run time like forward's); None for the library's own rules."""
    if (getattr(rule, "__module__", "") or "").startswith("flux_compile"):
        return None
    import weakref
    try:
        return (("obj", weakref.ref(rule)),)
    except TypeError:
        return None


def _backprop_call(node, g, b, adj):
    fn = node.fn
    if rules.is_nondiff(fn):
        return
    rule = rules.get_rule(fn)
    if rule is None:
        _err(node, f"no derivative rule for {describe_fn(fn)}",
             hint=f"register one with @fc.diffrule({getattr(fn, '__name__', 'fn')}), or stop the gradient "
                  "with fc.nodiff(...) if none is needed")
    pos, kw = bind_rule_args(node, rule)
    start = len(b.ctx.graph.nodes)
    rargs = [g, node] + [_as_rule_value(p) for p in pos]
    rkw = {k: _as_rule_value(v) for k, v in kw.items()}
    saved_loc = b.ctx.loc
    try:
        result = b.call_function(rule, rargs, rkw, path=rule_path(rule))
    except CompileError as e:
        _err(node, f"while inlining the derivative rule of {describe_fn(fn)}: {e.msg} "
                   f"(rule at {e.filename}:{e.lineno})")
    for n in b.ctx.graph.nodes[start:]:
        n.loc = node.loc            # rule lines are commented with the user's statement
    b.ctx.loc = saved_loc
    variadic = rules.rule_signature(rule)[0][:1] and rules.rule_signature(rule)[0][0].startswith("*")
    if variadic and isinstance(result, Node) and len(pos) > 1:
        grads = [b.ctx.add(Node(ITEM, (result,), index=i, diff=True)) for i in range(len(pos))]
    elif len(pos) == 1:
        grads = [result]
        if isinstance(result, Seq) and len(result.items) == 1 and not (pos[0] is not None and pos[0].op == PACK
                                                                       and len(pos[0].args) != 1):
            grads = [result.items[0]]
    else:
        if isinstance(result, Seq):
            grads = result.items
        elif isinstance(result, Static) and isinstance(result.value, tuple):
            grads = [Static(v) for v in result.value]
        elif isinstance(result, Node):
            # a helper returned the gradients as one run-time tuple
            grads = [b.ctx.add(Node(ITEM, (result,), index=i, diff=True)) if p is not None and p.diff
                     else Static(None) for i, p in enumerate(pos)]
        else:
            _err(node, f"the derivative rule of {describe_fn(fn)} must return one gradient per input "
                       f"({len(pos)})")
        if len(grads) != len(pos):
            _err(node, f"the derivative rule of {describe_fn(fn)} returned {len(grads)} gradients "
                       f"for {len(pos)} inputs")
    for x, gx in zip(pos, grads):
        if x is None or gx is None:
            continue
        if isinstance(gx, Static) and gx.value is None:
            continue
        if x.op == PACK and x.arity is None:
            x.arity = len(x.args)
        adj.add(x, gx, b)


METADATA_ATTRS = {"shape", "ndim", "dtype", "size"}


class Split:
    """Which joint-graph nodes each generated function computes."""

    def __init__(self, forward, saved, backward):
        self.forward = forward      # nodes of the training forward, in order
        self.saved = saved          # (node, "value" | "back") pairs the forward hands to the backward
        self.backward = backward    # nodes of the backward, in order




def _phase(n):
    """The id that says whether ``n`` is a forward node (below ``n_forward``): its own, or for
    a node a pass put in place of another, that one's (``meta["origin"]``)."""
    return n.meta.get("origin", n.id)


def split(joint, resolve):
    """Partition the joint graph (after the passes; ``resolve`` maps its nodes to what they
    became) into training forward, saved values and backward.

    Backward-phase nodes that depend only on forward values run in the backward
    (recomputed from what is saved) except metadata (``x.shape``), which the
    forward computes and saves so ``x`` itself need not be kept.
    """
    g = joint.graph
    nf = joint.n_forward
    outs = [resolve(o) for o in g.outputs]
    grads = [resolve(x) if x is not None else None for x in joint.input_grads]
    effects = [n for n in g.nodes if _phase(n) >= nf and n.op in BACK_EFFECT_OPS]
    bwd_live = live([x for x in grads if x is not None] + effects)
    dep_seed = set()
    for n in g.nodes:
        if n.op == SEED or any(a.id in dep_seed for a in n.inputs()):
            dep_seed.add(n.id)
    in_forward = set()
    for n in g.nodes:
        if n.op == INPUT:         # an array a derivative rule reads at run time is an input too
            in_forward.add(n.id)
        elif _phase(n) >= nf:
            if n.id not in dep_seed and n.op == GETATTR and n.attr in METADATA_ATTRS \
                    and not is_leaf(n.args[0]):
                in_forward.add(n.id)
            elif n.id not in dep_seed and n.op == ITEM and n.args[0].id in in_forward:
                in_forward.add(n.id)
        elif n.op not in (SEED,):
            in_forward.add(n.id)
    states = [n for n in g.nodes if _phase(n) < nf and n.op in (STATE, GUARD)]
    # values the backward reads from the forward
    bwd_nodes = [n for n in g.nodes if n.id in bwd_live and n.id not in in_forward and n.op != SEED]
    saved, seen = [], set()

    def save(a, kind):
        if a.id in in_forward and not is_reread(a) and (a.id, kind) not in seen:
            seen.add((a.id, kind))
            saved.append((a, kind))

    for n in bwd_nodes:
        for a in n.inputs():
            save(a, "value")
        if n.op == MODEL_BACK:
            save(n.meta["model"], "back")
        elif n.op == LOOP_BACK:
            save(n.meta["loop"], "back")
        elif n.op == COND_BACK:
            save(n.meta["cond"], "back")
    for x in grads:
        if x is not None:
            save(x, "value")
    fwd_live = live(outs + [a for a, _ in saved] + states)
    forward = [n for n in g.nodes if n.id in in_forward and n.id in fwd_live]
    saved.sort(key=lambda p: (p[0].id, p[1] == "back"))
    return Split(forward, saved, bwd_nodes)
