"""Loop regions as real ``for`` loops in generated code.

Forward (inference): the carried variables are set before the loop, the body's statements
run inside it, the carried values are reassigned at its end. Training forward: the same, and
each trip appends what the body's backward reads to a list named from the first carried
variable (``h_steps``). Backward: the list walked in reverse, the body's backward inside,
the carried adjoints passed from trip to trip and the captured values' adjoints summed::

    h_steps = []
    for t in range(n):
        h_1 = np.tanh(x[:, t] @ self.Wx.value + h @ self.Wh.value)
        h_steps.append((t, h, h_1))
        h = h_1
    ...
    for t, h, h_1 in reversed(h_steps):
        ...
        dh = ...
"""
from __future__ import annotations

import ast
import copy

from . import naming
from .ir import CALL, CONST, GUARD, INPUT, ITEM, LOOP, LOOP_BACK, PACK, PURE_OPS, REGION_OPS, STATE
from .passes import live


def _name(n):
    return ast.Name(id=n, ctx=ast.Load())


def _store(n):
    return ast.Name(id=n, ctx=ast.Store())


def _call(fn_expr, *args):
    return ast.Call(func=fn_expr, args=list(args), keywords=[])


def _attr(value, attr):
    return ast.Attribute(value=value, attr=attr, ctx=ast.Load())


def _assign_all(pairs):
    """``a = x`` for one pair; ``a, b = x, y`` for several (a swap stays a swap)."""
    pairs = [(t, e) for t, e in pairs if not (isinstance(e, ast.Name) and e.id == t)]
    if not pairs:
        return []
    if len(pairs) == 1:
        return [ast.Assign(targets=[_store(pairs[0][0])], value=pairs[0][1])]
    return [ast.Assign(targets=[ast.Tuple(elts=[_store(t) for t, _ in pairs], ctx=ast.Store())],
                       value=ast.Tuple(elts=[e for _, e in pairs], ctx=ast.Load()))]


def _tuple_or_one(elts, store=False):
    ctx = ast.Store() if store else ast.Load()
    if len(elts) == 1:
        return elts[0]
    return ast.Tuple(elts=elts, ctx=ctx)


def _np(em, name):
    import numpy as np
    return _attr(em.ns.name_ast(np), name)


def _sub_emitter(em, names, mode, back_names):
    cls = type(em)
    sub = cls(em.ns, names, em.locs, mode, em.scope, back_names, em.bases)
    sub._last_loc = None
    sub.region_vars = {}
    sub.aliases = {}        # a body is a closed graph: the outer graph's node ids mean nothing in it
    return sub


def _bind_outer(em, sub, inner, outer):
    """The body's input ``inner`` stands for the outside value ``outer``."""
    e = em.expr(outer)
    if isinstance(e, ast.Name):
        sub.names[inner.id] = e.id
    else:
        sub.aliases[inner.id] = e


def number_after_region(v):
    """Is ``v`` a loop's carried value that starts as a Python number (``acc = 0.0``), so
    may still be one after the loop (no trip, or a ``break`` on the first)?"""
    if v.op == ITEM and "branches" in v.args[0].meta:      # a cond's value set to a number
        return any(b.outputs[v.index].op == CONST for b in v.args[0].meta["branches"])
    if v.op != ITEM or v.args[0].op not in REGION_OPS or "carried" not in v.args[0].meta:
        return False
    loop = v.args[0]
    nb, nc = loop.meta["n_bounds"], len(loop.meta["carried"])
    return v.index < nc and loop.args[nb + v.index].op == CONST


def _take_over(em, init):
    """The variable of a carried value's initial value when nothing else reads it (the loop
    may then update it in place of a copy): ``h = np.zeros(...)`` / ``for ...: h = ...``."""
    name = em.names.get(init.id)
    if name is None or not init.name or init.meta.get("anon") or init.op == INPUT or init.id in em.inline or init.id in em.kept \
            or em.uses.get(init.id, 0) != 1 or list(em.names.values()).count(name) != 1:
        return None
    return name


def _name_outputs_as_carried(sub, body, carried_in, variables):
    """A trip's new value of a carried variable is written to that variable directly when the
    old value is not read after it (``h = np.tanh(... h ...)``)."""
    position = {node.id: i for i, node in enumerate(body.nodes)}
    outs, keep = body.outputs, set()
    for k, (node, out) in enumerate(zip(carried_in, outs)):
        if out.op == INPUT or out.id in sub.names or outs.count(out) != 1 or node in outs:
            continue
        readers = [position[x.id] for x in body.nodes if any(a is node for a in x.inputs())]
        if all(r <= position[out.id] for r in readers):
            sub.names[out.id] = variables[k]
            keep |= _read_late(body, node, out, position)
    return keep


def _read_late(body, node, out, position):
    """Values computed from the old ``node`` before ``out`` overwrites it but read after it:
    they must be statements of their own (an inlined one would read the new value)."""
    depends, late = {node.id}, set()
    for x in body.nodes[:position[out.id]]:
        if any(a.id in depends for a in x.inputs()):
            depends.add(x.id)
    for x in body.nodes[position[out.id] + 1:]:
        late |= {a.id for a in x.inputs() if a.id in depends and a is not node}
    return late


def emit_loop(em, n):
    """A ``loop`` node as statements of the function ``em`` is emitting."""
    out = em.markers(n.loc)
    body = n.meta["body"]
    nb, carried = n.meta["n_bounds"], n.meta["carried"]
    nc = len(carried)
    train = em.mode == "train" and n.meta.get("needs_back") and "train" in n.meta
    t_in, carried_in, cap_in = body.inputs[0], body.inputs[1:1 + nc], body.inputs[1 + nc:]
    sub = _sub_emitter(em, {}, em.mode, {})
    index = em.scope.fresh(n.meta["target"].strip("<>"))
    sub.names[t_in.id] = index
    inits = n.args[nb:nb + nc]
    variables = [_take_over(em, init) or em.scope.fresh(_plain(name)) for name, init in zip(carried, inits)]
    out += _assign_all([(v, em.expr(init)) for v, init in zip(variables, inits)])
    for v, node, init in zip(variables, carried_in, n.args[nb:nb + nc]):
        sub.names[node.id] = v
        if init.op == CONST:          # ``acc = 0.0``: a Python number on the first trip
            sub.loose.add(node.id)
    for inner, outer in zip(cap_in, n.args[nb + nc:]):
        _bind_outer(em, sub, inner, outer)
    if train:
        joint, sp = n.meta["train"]
        nodes = sp.forward
        saved = [(a, kind) for a, kind in sp.saved if not (a.op == INPUT and a in cap_in)]
    else:
        roots = list(body.outputs) + [x for x in body.nodes if x.op in (STATE, GUARD)]
        alive = live(roots)
        nodes = [x for x in body.nodes if x.id in alive]
        saved = []
    outs = body.outputs
    keep = {o.id for o in outs} | {a.id for a, _ in saved}
    if not train:
        keep |= _name_outputs_as_carried(sub, body, carried_in, variables)
    stmts = sub.statements(nodes, keep)
    if train:
        stack = em.scope.fresh(naming.steps(_plain(carried[0] if carried else n.meta["target"])))
        em.back_names[n.id] = stack
        out.append(ast.Assign(targets=[_store(stack)], value=ast.List(elts=[], ctx=ast.Load())))
        names = [sub.back_names[a.id] if kind == "back" else sub.names[a.id] for a, kind in saved] \
            or [index if n.meta.get("kind") != "while" else "_"]      # one entry per trip
        stmts.append(ast.Expr(value=_call(_attr(_name(stack), "append"), _tuple_or_one(
            [_name(x) if x != "_" else ast.Constant(None) for x in names]))))
        n.meta["emit"] = dict(names=dict(sub.names), back_names=dict(sub.back_names),
                              aliases=dict(sub.aliases), loose=set(sub.loose), saved=names, stack=stack)
    lists = n.meta.get("lists", ())
    list_vars = [em.scope.fresh(name) for name in lists]
    out += [ast.Assign(targets=[_store(v)], value=ast.List(elts=[], ctx=ast.Load())) for v in list_vars]
    stmts += [ast.Expr(value=_call(_attr(_name(v), "append"), sub.expr(o)))
              for v, o in zip(list_vars, outs[nc:])]
    stmts += _assign_all([(v, sub.expr(o)) for v, o in zip(variables, outs)])
    if n.meta.get("kind") == "while":          # the flag is the last carried value
        out.append(ast.While(test=_name(variables[-1]), body=stmts or [ast.Pass()], orelse=[]))
    else:
        bounds = [em.expr(b) for b in n.args[:nb]]
        out.append(ast.For(target=_store(index), iter=_call(_name("range"), *bounds),
                           body=stmts or [ast.Pass()], orelse=[]))
    stacked = [em.scope.fresh(name) for name in lists]
    out += [ast.Assign(targets=[_store(v)], value=_call(_np(em, "stack"), _name(lv)))
            for v, lv in zip(stacked, list_vars)]
    em.region_vars[n.id] = variables + stacked
    return out


def emit_loop_back(em, m):
    """A ``loop_back`` node: the loop's body backward, over the saved trips in reverse."""
    out = em.markers(m.loc)
    loop = m.meta["loop"]
    info = loop.meta["emit"]
    joint, sp = loop.meta["train"]
    body = loop.meta["body"]
    carried = loop.meta["carried"]
    nc = len(carried)
    cap_in = body.inputs[1 + nc:]
    sub = _sub_emitter(em, dict(info["names"]), "backward", dict(info["back_names"]))
    sub.aliases.update(info["aliases"])
    sub.loose |= info["loose"]
    g = m.args[0]
    needed = m.meta["captured"]
    for j, outer in zip(needed, m.args[1:1 + len(needed)]):
        _bind_outer(em, sub, cap_in[j], outer)
    zeros = iter(m.args[1 + len(needed):])
    pre, adjoints = [], []
    for k, name in enumerate(carried):
        if not body.outputs[k].diff:         # no adjoint flows through it (a flag, a counter)
            adjoints.append(None)
            sub.aliases[joint.seeds[k].id] = ast.Constant(None)
            continue
        d = em.scope.fresh(naming.adjoint(_plain(name)))
        adjoints.append(d)
        sub.names[joint.seeds[k].id] = d
        if m.meta["zero_like"][k]:
            value = _call(_np(em, "zeros_like"), em.expr(next(zeros)))
        elif g.op == PACK:
            item = g.args[k]
            value = ast.Constant(None) if item.op == CONST and item.value is None else em.expr(item)
        else:
            value = ast.Subscript(value=em.expr(g), slice=ast.Constant(k), ctx=ast.Load())
        pre.append((d, value))
    rows = []           # each filled list's adjoint, one row per trip (walked backwards)
    for j, name in enumerate(loop.meta.get("lists", ())):
        seed = joint.seeds[nc + j]
        if not body.outputs[nc + j].diff:
            sub.aliases[seed.id] = ast.Constant(None)
            continue
        if m.meta["zero_like"][nc + j]:
            value = _call(_np(em, "zeros_like"), em.expr(next(zeros)))
        elif g.op == PACK:
            value = em.expr(g.args[nc + j])
        else:
            value = ast.Subscript(value=em.expr(g), slice=ast.Constant(nc + j), ctx=ast.Load())
        whole, row = em.scope.fresh(naming.adjoint(name)), em.scope.fresh(naming.adjoint(name) + "_t")
        pre.append((whole, value))
        sub.names[seed.id] = row
        rows.append((row, whole))
    cap_grads, accumulated = {}, {}
    for j in range(len(cap_in)):
        grad = joint.resolved_grads[1 + nc + j]
        if grad is None or j not in needed:
            continue
        d = em.scope.fresh(naming.adjoint(cap_in[j].name))
        cap_grads[j] = (d, grad)
        accumulated[j] = d
        pre.append((d, _call(_np(em, "zeros_like"), copy.deepcopy(sub.expr(cap_in[j])))))
    out += _assign_all(pre)
    keep = {x.id for x in joint.resolved_grads if x is not None}
    scattered = {j: _scattered_row(grad) for j, (d, grad) in cap_grads.items()}
    scattered = {j: parts for j, parts in scattered.items() if parts is not None}
    keep = (keep - {cap_grads[j][1].id for j in scattered}) | {a.id for parts in scattered.values()
                                                                for a in parts}
    nodes = _without_scatters(sp.backward, keep, [cap_grads[j][1] for j in scattered])
    stmts = sub.statements(nodes, keep)
    for j, (g_row, index) in scattered.items():      # dx[t] += dx_t: in place, once per trip
        d = cap_grads.pop(j)[0]
        stmts.append(ast.AugAssign(target=ast.Subscript(value=_name(d), slice=sub.expr(index), ctx=ast.Store()),
                                   op=ast.Add(), value=sub.expr(g_row)))
    after = []
    for k, d in enumerate(adjoints):
        grad = joint.resolved_grads[1 + k]
        if d is None:
            continue
        if grad is not None:
            after.append((d, sub.expr(grad)))
        elif body.outputs[k].diff:          # this trip's carried value did not depend on the last
            after.append((d, _call(_np(em, "zeros_like"), _name(d))))
    for j, (d, grad) in cap_grads.items():
        after.append((d, ast.BinOp(left=_name(d), op=ast.Add(), right=sub.expr(grad))))
    stmts += _assign_all(after)
    target = _tuple_or_one([_store(x) for x in info["saved"]], store=True)
    trips = _call(_name("reversed"), _name(info["stack"]))
    if rows:        # for saved, dhs_t in zip(reversed(h_steps), dhs[::-1])
        backwards = [ast.Subscript(value=_name(whole), slice=ast.Slice(lower=None, upper=None, step=ast.UnaryOp(
            op=ast.USub(), operand=ast.Constant(1))), ctx=ast.Load()) for _, whole in rows]
        target = ast.Tuple(elts=[target] + [_store(row) for row, _ in rows], ctx=ast.Store())
        trips = _call(_name("zip"), trips, *backwards)
    out.append(ast.For(target=target, iter=trips, body=stmts or [ast.Pass()], orelse=[]))
    em.region_vars[m.id] = adjoints + [accumulated[j] if j in accumulated else None
                                       for j in range(len(cap_in))]
    return out


def _scattered_row(grad):
    """``(g, index)`` when a captured value's adjoint this trip is ``getitem_grad(g, shape,
    index)`` with a basic index (slices and scalars): it is added into the summed adjoint in
    place (``dx[t] += g``), not as a zero-filled array of the whole shape per trip."""
    from .rules.helpers import getitem_grad
    if grad.op != CALL or grad.fn is not getitem_grad or len(grad.args) != 3 \
            or set(grad.kwargs) - {"dtype"}:
        return None
    g, _, index = grad.args
    items = index.args if index.op == PACK else (index,)
    if all(_basic_item(i) for i in items):
        return g, index
    return None


def _basic_item(n):
    if n.op == CONST:
        return n.value is None or n.value is Ellipsis or isinstance(n.value, slice) \
            or isinstance(n.value, int) and not isinstance(n.value, bool)
    return n.op == CALL and n.fn is slice or n.meta.get("shape") == () and n.op != PACK


def _without_scatters(nodes, keep, scatters):
    """``nodes`` less the zero-filled adjoints now added in place and the pure work only
    they read (``x.shape``)."""
    gone = {n.id for n in scatters}
    readers = {}
    for n in nodes:
        for a in n.inputs():
            readers.setdefault(a.id, set()).add(n.id)
    for n in reversed(nodes):
        r = readers.get(n.id)
        if r and r <= gone and n.id not in keep and n.op in PURE_OPS and not n.meta.get("effect"):
            gone.add(n.id)
    return [n for n in nodes if n.id not in gone]


EMITTERS = {LOOP: emit_loop, LOOP_BACK: emit_loop_back}


def _plain(name):
    """A carried value's name in the code: ``<sub.h>`` (an inlined sub-model's state in
    ``fc.unroll``, traceloop.py) is ``h``; ``<t>`` is ``t``."""
    name = name.strip("<>")
    return name[len("sub."):] if name.startswith("sub.") else name
