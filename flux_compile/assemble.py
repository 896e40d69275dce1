"""The generated modules: the functions of one compiled graph pair assembled into one module
(``emit_module``: forward, forward_train, backward, backward_params; ``emit_step``: the one
function of ``fc.train_step``), and the binding of a call's inputs to their signatures."""
from __future__ import annotations

import ast

import numpy as np

from . import naming
from .buffers import Buffers
from .codegen import (FuncSet, FunctionEmitter, Namespace, _parse_expr, build_module, make_function,
                      tuple_or_single)
from .ir import BACK_EFFECT_OPS, GUARD, STATE


def emit_module(label, owner, infer_g, joint, split, has_self, free=()):
    """Generate the module: forward, forward_train, backward, backward_params. Every name
    comes from one :class:`naming.ModuleNames`: the inference forward is one scope, the
    training forward and both backwards another (saved values keep their names)."""
    from .passes import live
    module = naming.ModuleNames()
    ns = Namespace(module)
    fs = FuncSet()
    kept = module.module_name("buffers") if KEEP_BUFFERS else None
    hints = [naming.SELF] if has_self else []
    hints += [n.name for n in infer_g.inputs if "free" not in n.meta]
    hints += [name for _, name in free]       # arrays read at run time: last, in read_free's order
    # inference forward
    scope = module.scope()
    sig = scope.params(hints)
    names, bases = bind_inputs(infer_g.inputs, sig, has_self, free)
    em = FunctionEmitter(ns, names, fs.locs, "infer", scope, bases=bases)
    em.kept_buffers = kept
    outs = infer_g.outputs
    roots = list(outs) + [n for n in infer_g.nodes if n.op in (STATE, GUARD)]
    alive = live(roots)
    nodes = [n for n in infer_g.nodes if n.id in alive]
    keep = {o.id for o in outs}
    body = em.statements(nodes, keep)
    ret = tuple_or_single([em.expr(o) for o in outs])
    fs.defs.append(make_function("forward", sig, body, ret))
    # training forward; its scope also holds the backward's parameters and seeds
    g = joint.graph
    scope = module.scope()
    sig = scope.params(hints)
    bsig = sig[:1] if has_self else []          # the backward's self is the forward's
    bsig = bsig + scope.params([naming.SAVED, naming.SEEDS])
    saved_param, seeds_param = bsig[-2], bsig[-1]
    names, bases = bind_inputs(g.inputs, sig, has_self, free)
    if len(joint.seeds) == 1:
        names[joint.seeds[0].id] = seeds_param
    else:
        names.update(zip((s.id for s in joint.seeds), scope.params([s.name for s in joint.seeds])))
    back_names = {}
    em = FunctionEmitter(ns, names, fs.locs, "train", scope, back_names, bases)
    em.kept_buffers = kept
    em._last_loc = None
    touts = g.outputs
    keep = {o.id for o in touts} | {a.id for a, _ in split.saved}
    body = em.statements(split.forward, keep)
    saved_exprs = []
    for node, kind in split.saved:
        saved_exprs.append(ast.Name(id=back_names[node.id] if kind == "back" else names[node.id], ctx=ast.Load()))
    out_expr = tuple_or_single([em.expr(o) for o in touts])
    ret = ast.Tuple(elts=[out_expr, ast.Tuple(elts=saved_exprs, ctx=ast.Load())], ctx=ast.Load())
    fs.defs.append(make_function("forward_train", sig, body, ret))
    # backward
    em2 = FunctionEmitter(ns, names, fs.locs, "backward", scope, back_names, bases)
    em2.kept_buffers = kept
    em2._last_loc = None
    head = []
    if split.saved:
        targets = [ast.Name(id=e.id, ctx=ast.Store()) for e in saved_exprs]
        if len(targets) == 1:
            head.append(ast.Assign(targets=targets, value=ast.Subscript(
                value=ast.Name(id=saved_param, ctx=ast.Load()), slice=ast.Constant(0), ctx=ast.Load())))
        else:
            head.append(ast.Assign(targets=[ast.Tuple(elts=targets, ctx=ast.Store())],
                                   value=ast.Name(id=saved_param, ctx=ast.Load())))
    if len(joint.seeds) > 1:
        head.append(ast.Assign(targets=[ast.Tuple(elts=[ast.Name(id=names[s.id], ctx=ast.Store())
                                                        for s in joint.seeds], ctx=ast.Store())],
                               value=ast.Name(id=seeds_param, ctx=ast.Load())))
    pairs = [(inp, x) for inp, x in zip(joint.graph.inputs, joint.resolved_grads) if "free" not in inp.meta]
    grads = [x for _, x in pairs]         # one per user input and state (arrays read at run time get none)
    keep = {x.id for x in grads if x is not None}
    body = em2.statements(split.backward, keep)
    rets = [em2.expr(x) if x is not None else ast.Constant(None) for x in grads]
    ret = tuple_or_single(rets) if rets else ast.Constant(None)
    fs.defs.append(make_function("backward", bsig, head + body, ret))
    # the same backward when the caller needs no input gradients (only Params, and recurrent
    # state, which carries gradients between steps): the input-gradient work is dead code
    state_grads = [x if inp.meta.get("state") else None for inp, x in pairs]
    alive = live([x for x in state_grads if x is not None] +
                        [n for n in split.backward if n.op in BACK_EFFECT_OPS])
    em3 = FunctionEmitter(ns, names, fs.locs, "backward", scope, back_names, bases)
    em3.kept_buffers = kept
    em3._last_loc = None
    body = em3.statements([n for n in split.backward if n.id in alive],
                          {x.id for x in state_grads if x is not None})
    rets = [em3.expr(x) if x is not None else ast.Constant(None) for x in state_grads]
    ret = tuple_or_single(rets) if rets else ast.Constant(None)
    fs.defs.append(make_function("backward_params", bsig, head + body, ret))
    if kept is not None and any(isinstance(n, ast.Attribute) and n.attr == "matmul" and
                                isinstance(n.value, ast.Name) and n.value.id == kept
                                for d in fs.defs for n in ast.walk(d)):
        fs.defs.insert(0, kept_buffers(ns, kept))
    source, namespace, linemap, filename = build_module(label, fs, ns)
    return source, namespace, linemap, filename, dict(ns.objects)


def emit_step(label, joint, split, free, extra_params, helper, on_accum, tail):
    """Generate fc.train_step's module: the optimiser's per-Param ``helper`` (source text
    whose function is named ``update``) and one function ``step(*inputs, *extra_params)``
    that runs the training forward and the backward in one body. ``on_accum(node, value,
    env)`` gives the statements that replace ``target.grad += value`` (the fused update;
    ``env``: ``update`` the helper's name, ``scope``, ``path(base, path)`` an ast of a field
    path, ``params`` the extra parameters' names); ``tail(env)`` the statements and the returned expression
    that end the function. Returns (source, namespace, linemap, filename)."""
    from .passes import live
    module = naming.ModuleNames()
    ns = Namespace(module)
    fs = FuncSet()
    kept = module.module_name("buffers")      # arrays kept across calls: the helper names it so
    assert kept == "buffers"
    fs.defs.append(kept_buffers(ns, kept))
    update_name = module.module_name("update")
    helper_def = ast.parse(helper).body[0]
    helper_def.name = update_name
    fs.defs.append(helper_def)
    g = joint.graph
    scope = module.scope()
    hints = [n.name for n in g.inputs if "free" not in n.meta] + [name for _, name in free]
    sig = scope.params(hints + list(extra_params))
    names, bases = bind_inputs(g.inputs, sig[:len(hints)], False, free)
    seed_name = scope.fresh(naming.SEEDS)
    names[joint.seeds[0].id] = seed_name
    em = FunctionEmitter(ns, names, fs.locs, "train", scope, {}, bases)
    em._last_loc = None
    em.kept_buffers = kept
    import types
    env = types.SimpleNamespace(update=update_name, scope=scope, path=em.path,
                                params=dict(zip(extra_params, sig[len(hints):])))
    em.on_accum = lambda n, value: on_accum(n, value, env)
    out = g.outputs[0]
    keep = {out.id} | {a.id for a, _ in split.saved}
    body = em.statements(split.forward, keep)
    body.append(ast.Assign(targets=[ast.Name(id=seed_name, ctx=ast.Store())],
                           value=_parse_expr(f"{ns.name_of(np)}.ones_like({ast.unparse(em.expr(out))})")))
    alive = live([n for n in split.backward if n.op in BACK_EFFECT_OPS])
    body += em.statements([n for n in split.backward if n.id in alive], set())
    stmts, ret = tail(env)
    body += stmts
    fs.defs.append(make_function("step", sig, body, ast.Tuple(elts=[em.expr(out), ret], ctx=ast.Load())))
    return build_module(label, fs, ns)


KEEP_BUFFERS = False
"""Do a model's NumPy modules (forward, backward) write large matmul results into arrays kept
across calls (``buffers.matmul``, buffers.py)? ``fc.train_step`` always does. Off by default:
on this machine glibc's adaptive mmap threshold already made those allocations fault-free in
steady state (benchmarks/README.md), and ``x.T @ dz`` reads better than
``buffers.matmul(25, x.T, dz)``. Set it before the first call of a model to turn it on."""


def kept_buffers(ns, name):
    """``buffers = Buffers()``: the module-level pool of the variant this module compiles."""
    return ast.Assign(targets=[ast.Name(id=name, ctx=ast.Store())],
                      value=ast.Call(func=ns.name_ast(Buffers), args=[], keywords=[]), lineno=0)


def bind_inputs(inputs, sig, has_self, free=()):
    """(node id -> parameter name, field-path base -> parameter name) for one signature: the
    user's inputs first, in order, then the arrays read at run time (``free``: their paths in
    signature order)."""
    params = sig[1:] if has_self else sig
    user = [n for n in inputs if "free" not in n.meta]
    pairs = list(zip(user, params))
    slot = {path: len(user) + i for i, (path, _) in enumerate(free)}
    pairs += [(n, params[slot[n.meta["free"]]]) for n in inputs if "free" in n.meta]
    names = {n.id: p for n, p in pairs}
    bases = {n.name: p for n, p in pairs}
    if has_self:
        bases[naming.SELF] = sig[0]
    return names, bases
