"""Cond regions as real ``if``/``else`` statements in generated code.

Forward: the test, then each branch's statements, each ending by assigning the merged
variables. Training forward: each branch also packs the values its own backward reads into
one tuple (``y_taken``), saved with the test. Backward: the same ``if`` on the saved test
runs only the taken branch's backward, so the untaken branch's derivatives (a ``log`` of a
negative number, a division by zero) are never evaluated::

    if x_sum > 0:
        y = np.log(x)
        y_taken = (x,)
    else:
        y = x
        y_taken = ()
    ...
    if x_sum > 0:
        x, = y_taken
        dx = dy / x
    else:
        dx = dy
"""
from __future__ import annotations

import ast

from . import naming
from .emitloops import _assign_all, _bind_outer, _call, _name, _np, _store, _sub_emitter, number_after_region
from .ir import BACK_EFFECT_OPS, COND, COND_BACK, CONST, GUARD, INPUT, LEAF_OPS, PACK, STATE
from .passes import live


def _branch_emitter(em, names, mode, back_names):
    sub = _sub_emitter(em, names, mode, back_names)
    sub.on_accum = em.on_accum          # fc.train_step's fused update, inside the branch too
    return sub


def _bind(em, sub, inner, outer):
    """The branch's input ``inner`` reads the outside value ``outer`` (a Python number
    there, such as a loop's ``acc = 0.0``, may be one here too)."""
    _bind_outer(em, sub, inner, outer)
    if outer.id in em.loose or number_after_region(outer):
        sub.loose.add(inner.id)


def _branch_forward(em, n, k, variables, taken):
    """The statements of branch ``k`` (0: then, 1: else) of the cond ``n``."""
    body = n.meta["branches"][k]
    sub = _branch_emitter(em, {}, em.mode, {})
    for inner, j in zip(body.inputs, n.meta["captures"][k]):
        _bind(em, sub, inner, n.args[1 + j])
    if taken is not None:
        joint, sp = n.meta["train"][k]
        nodes = sp.forward
        saved = [(a, kind) for a, kind in sp.saved if a.op != INPUT]   # captured: read outside
    else:
        alive = live(list(body.outputs) + [x for x in body.nodes if x.op in (STATE, GUARD)])
        nodes = [x for x in body.nodes if x.id in alive]
        saved = []
    keep = {o.id for o in body.outputs} | {a.id for a, _ in saved}
    _name_directly(sub, body.outputs, variables)
    stmts = sub.statements(nodes, keep)
    if taken is not None:
        values = [sub.back_names[a.id] if kind == "back" else sub.names[a.id] for a, kind in saved]
        stmts.append(ast.Assign(targets=[_store(taken)],
                                value=ast.Tuple(elts=[_name(v) for v in values], ctx=ast.Load())))
        n.meta.setdefault("emit", {})[k] = dict(names=dict(sub.names), back_names=dict(sub.back_names),
                                                aliases=dict(sub.aliases), loose=set(sub.loose), saved=values)
    stmts += _assign_all([(v, sub.expr(o)) for v, o in zip(variables, body.outputs)])
    return stmts


def _name_directly(sub, values, variables):
    """A value the branch computes for one merged variable is named as that variable (no
    ``y_1 = ...; y = y_1``); inputs, constants and values given twice keep an assignment."""
    for v, var in zip(values, variables):
        if v is not None and var is not None and v.op not in LEAF_OPS and v.id not in sub.names \
                and v.id not in sub.aliases and sum(w is v for w in values) == 1:
            sub.names[v.id] = var


def emit_cond(em, n):
    """A ``cond`` node as an ``if``/``else`` statement of the function ``em`` is emitting."""
    out = em.markers(n.loc)
    names = n.meta["names"]
    variables = [em.scope.fresh(name.strip("<>")) for name in names]
    train = em.mode == "train" and n.meta.get("needs_back") and "train" in n.meta
    taken = None
    if train:
        taken = em.scope.fresh(naming.taken(names[0].strip("<>") if names else "branch"))
        em.back_names[n.id] = taken
    test = em.expr(n.args[0])
    then, other = (_branch_forward(em, n, k, variables, taken) for k in (0, 1))
    out.append(ast.If(test=test, body=then or [ast.Pass()], orelse=other))
    em.region_vars[n.id] = variables
    return out


def _seeds(em, m, names):
    """The adjoint of each merged value as the branches read it (``None`` where none flows):
    (statements before the ``if``, one expression or None per merged value)."""
    cond = m.meta["cond"]
    g = m.args[0]
    needed = m.meta["captured"]
    zeros = iter(m.args[2 + len(needed):])
    pre, exprs = [], []
    for k, name in enumerate(names):
        if not any(body.outputs[k].diff for body in cond.meta["branches"]):
            exprs.append(None)
            continue
        if m.meta["zero_like"][k]:
            value = _call(_np(em, "zeros_like"), em.expr(next(zeros)))
        elif g.op == PACK:
            item = g.args[k]
            value = None if item.op == CONST and item.value is None else em.expr(item)
        else:
            value = ast.Subscript(value=em.expr(g), slice=ast.Constant(k), ctx=ast.Load())
        if value is not None and not isinstance(value, ast.Name):
            d = em.scope.fresh(naming.adjoint(name.strip("<>")))
            pre.append((d, value))
            value = _name(d)
        exprs.append(value)
    return _assign_all(pre), exprs


def _branch_backward(em, m, k, seeds, grads):
    """The backward of branch ``k`` of the cond ``m`` differentiates; ends by setting each
    captured value's adjoint variable in ``grads`` (zeros where this branch gives none)."""
    cond = m.meta["cond"]
    body = cond.meta["branches"][k]
    joint, sp = cond.meta["train"][k]
    info = cond.meta["emit"][k]
    sub = _branch_emitter(em, dict(info["names"]), "backward", dict(info["back_names"]))
    sub.aliases.update(info["aliases"])
    sub.loose |= info["loose"]
    outer = dict(zip(m.meta["captured"], m.args[2:2 + len(m.meta["captured"])]))
    inner = {}
    for node, j, grad in zip(body.inputs, cond.meta["captures"][k], joint.resolved_grads):
        inner[j] = grad
        if j in outer:
            _bind(em, sub, node, outer[j])
    for seed, value in zip(joint.seeds, seeds):
        sub.aliases[seed.id] = ast.Constant(None) if value is None else value
    stmts = []
    if info["saved"] and em.mode != "train":       # fc.train_step: one function, already in scope
        stmts.append(ast.Assign(targets=[ast.Tuple(elts=[_store(v) for v in info["saved"]], ctx=ast.Store())],
                                value=_name(em.back_names[cond.id])))
    wanted = [inner[j] for j in grads if inner.get(j) is not None]
    alive = live(wanted + [x for x in sp.backward if x.op in BACK_EFFECT_OPS])
    _name_directly(sub, [inner.get(j) for j in grads], list(grads.values()))
    stmts += sub.statements([x for x in sp.backward if x.id in alive], {x.id for x in wanted})
    stmts += _assign_all([(d, sub.expr(inner[j]) if inner.get(j) is not None
                           else _call(_np(em, "zeros_like"), em.expr(outer[j]))) for j, d in grads.items()])
    return stmts


def emit_cond_back(em, m):
    """A ``cond_back`` node: the backward of the branch the forward took."""
    out = em.markers(m.loc)
    cond = m.meta["cond"]
    names = cond.meta["names"]
    pre, seeds = _seeds(em, m, names)
    out += pre
    captured = cond.args[1:]
    read = getattr(em, "items_read", {}).get(m.id, set())     # the adjoints used after it
    grads = {j: em.scope.fresh(naming.adjoint(captured[j].name or "")) for j in m.meta["grads"] if j in read}
    then, other = (_branch_backward(em, m, k, seeds, grads) for k in (0, 1))
    out.append(ast.If(test=em.expr(m.args[1]), body=then or [ast.Pass()], orelse=other))
    em.region_vars[m.id] = [grads.get(j) for j in range(len(captured))]
    return out


EMITTERS = {COND: emit_cond, COND_BACK: emit_cond_back}
