"""Compiling and running one derivative plan (the engine behind ``fc.gradient``, ``fc.hvp``,
``fc.jacobian``...): what a generated derivative computes (:class:`Plan`), its module made from
the plain function's traced graph, and the argument checks the transforms share."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import passes, pytree
from .ir import CALL, CONST
from .api import _GradCapture, _models_in, as_numpy_scalars
from .autodiff import differentiate
from .cache import compile_transform, run_guarded
from .compiled import Compiled
from .errors import CompileError, Retrace
from .forward import _zeros_like, function_module, tangent_graph
from .frontend import Builder, Context
from .params import is_model
from .richtext import SourceText
from .transforms import model_jvp




class Plan(NamedTuple):
    """What one generated derivative computes, from the plain function's graph.

    ``reverse``: argument numbers differentiated in reverse mode (the outputs are their
    gradients); ``basis``: scalar argument numbers differentiated in forward mode along 1, in
    turn; ``runtime``: argument numbers whose tangents are inputs of the generated function
    (None: none); ``keep_value``: return the value before the run-time tangent too."""
    kind: str
    reverse: tuple
    basis: tuple = ()
    runtime: tuple | None = None
    keep_value: bool = False


# ------------------------------------------------------------------------------
# compiling and running one plan


def run(fn, args, plan, tangents=None):
    """The flat outputs of ``plan``'s generated function for ``fn`` at ``args``."""
    args = as_numpy_scalars(tuple(args))
    flat, trees = pytree.split_args(args)
    extra = _tangent_leaves(args, trees, flat, plan, tangents)
    c = compile_plan(fn, args, plan)

    def call(variant):
        try:
            out = variant.forward(*flat, *extra, *variant.read_free(fn, args))
        except Retrace:
            raise
        except Exception as e:
            new = variant.translate(e, plan.kind)
            if new is None or new is e:
                raise
            raise new from e
        return out if isinstance(out, tuple) else (out,)
    with _GradCapture(_models_in(args)):    # sub-models' backward adds to Param.grad: undone
        _, outs = run_guarded(c, call, lambda: compile_plan(fn, args, plan, fresh=True), fn, args)
    return list(outs)


def compile_plan(fn, args, plan, fresh=False):
    """The compiled derivative ``plan`` of ``fn`` for arguments like ``args`` (cached per
    argument signature and plan, guarded like ``fc.grad``'s code)."""
    layout = _layout(args)
    return compile_transform(fn, args, plan.kind, lambda *a: _make(plan, layout, *a),
                             fresh=fresh, variant=plan, cond_regions=not plan.basis and plan.runtime is None)


def _layout(args):
    """Per argument, the indices of its leaves among the flat inputs."""
    _, trees = pytree.split_args(args)
    out, i = [], 0
    for tree in trees:
        n = 1 if tree is None else tree.n_leaves
        out.append(list(range(i, i + n)))
        i += n
    return out


def _tangent_leaves(args, trees, flat, plan, tangents):
    if plan.runtime is None:
        return []
    tangents = list(tangents)
    if len(tangents) != len(plan.runtime):
        raise ValueError(f"fc.{plan.kind}: {len(plan.runtime)} tangents expected, got {len(tangents)}")
    out = []
    for a, t in zip(plan.runtime, tangents):
        p = args[a]
        if t is None:                        # no tangent: zeros
            t = pytree.tree_map(lambda x: np.zeros_like(x) if _is_float(x) else x, p)
        if trees[a] is None:
            leaves, tleaves = [p], [t]
        else:
            leaves = pytree.flatten(p)[0]
            tleaves = pytree.flatten(pytree.in_order_of(p, t) if isinstance(t, dict) else t)[0]
            if len(tleaves) != len(leaves):
                raise ValueError(f"fc.{plan.kind}: a tangent must have the structure of its primal")
        for x, tx in zip(leaves, tleaves):
            if _is_float(x):
                tx = np.asarray(tx, dtype=np.asarray(x).dtype)
                if tx.shape != np.shape(x):
                    raise ValueError(f"fc.{plan.kind}: a tangent of shape {tx.shape} for an "
                                     f"argument of shape {np.shape(x)}")
                out.append(tx)
    return out


def _is_float(x):
    return isinstance(x, (np.ndarray, np.floating, float)) and np.asarray(x).dtype.kind in "fc"


def _make(plan, layout, label, graph, arity, ctx, specs):
    """Build the plan's graph from the traced one and compile it (see the module's doc)."""
    prim = [n for n in graph.inputs if "free" not in n.meta]
    b = Builder(Context(graph, mode="rule"))
    contexts = [ctx]
    _check_scalar(graph, arity, label)
    joint = differentiate(graph, traced=ctx)
    contexts.append(joint.ctx)
    for s in joint.seeds:
        s.op, s.value = "const", 1.0
    outs = []
    for r in plan.reverse:
        for i in layout[r]:
            if prim[i].diff:
                g = joint.input_grads[i]
                outs.append(g if g is not None else _zeros_like(prim[i], b))
    for a in plan.basis:
        t = tangent_graph(_with_outputs(graph, outs), [prim[layout[a][0]]], traced=ctx, model_jvp=model_jvp)
        contexts.append(t.ctx)
        one = t.inputs[0]
        one.op, one.value = "const", 1.0
        graph.inputs.remove(one)
        outs = [tt if tt is not None else _zeros_like(o, b) for o, tt in zip(outs, t.tangents)]
    params = list(prim)
    if plan.runtime is not None:
        wrt = [prim[i] for a in plan.runtime for i in layout[a] if prim[i].diff]
        t = tangent_graph(_with_outputs(graph, outs), wrt, traced=ctx, model_jvp=model_jvp)
        contexts.append(t.ctx)
        touts = [tt if tt is not None else _zeros_like(o, b) for o, tt in zip(outs, t.tangents)]
        for o, tt in zip(outs, touts):
            if tt.name is None or tt.meta.get("anon"):
                tt.name = f"{o.name}_dot" if o.name else None
        params += list(t.inputs)
        outs = outs + touts if plan.keep_value else touts
    _fold_scalars(graph)
    resolve = passes.optimize(_with_outputs(graph, outs))
    outs = [resolve(o) for o in outs]
    graph.outputs = outs
    free_paths = list(dict.fromkeys(p for c in contexts for p in c.free))
    free_names = {k: v for c in contexts for k, v in c.free_names.items()}
    source, namespace, linemap, filename, objects = function_module(
        label, plan.kind, graph, params, outs, [(p, free_names[p]) for p in free_paths], single=len(outs) == 1)
    name = next(k for k in namespace if k.startswith(plan.kind) and callable(namespace[k]))
    c = Compiled(label, label.split(" of ", 1)[-1], {"forward": namespace[name]}, source, filename,
                 linemap=linemap, n_outputs=len(outs), graph=graph, deps=list(ctx.deps),
                 guarded=ctx.guards > 0, objects=objects)
    baked = {}
    for cx in contexts:
        baked.update(cx.baked)
    c.set_guards(baked, free_paths)
    for n in graph.nodes:
        n.meta.pop("obj", None)
    return c


def _fold_scalars(graph):
    """Fold the arithmetic on Python numbers that the tangents along 1 leave (``1.0 * 3``): the
    tracer folds constants as it goes, but the direction became the constant 1 afterwards.
    Python numbers stay Python numbers (weak in NumPy's promotion: float32 stays float32)."""
    for n in graph.nodes:
        if n.op != CALL or n.kwargs or not n.args or n.arity is not None or not passes.foldable(n.fn):
            continue
        if not all(a.op == CONST and type(a.value) in (int, float) for a in n.args):
            continue
        try:
            value = n.fn(*[a.value for a in n.args])
        except Exception:
            continue
        if isinstance(value, (np.generic, int, float)) and np.ndim(value) == 0:
            n.op, n.value, n.args = "const", np.asarray(value).item(), ()


def _with_outputs(graph, outs):
    graph.outputs = list(outs)
    return graph


def _check_scalar(graph, arity, label):
    """A gradient needs one output, a scalar (when its shape is known at compile time)."""
    out = graph.outputs[0] if len(graph.outputs) == 1 and arity is None else None
    shape = out.meta.get("shape") if out is not None else None
    if out is None or (shape is not None and tuple(shape) != ()):
        what = "several values" if out is None else f"a {len(tuple(shape))}-d value"
        loc = (out if out is not None else graph.outputs[0]).loc if graph.outputs else None
        where = (loc.filename, loc.lineno, loc.col, loc.text) if loc is not None else ()
        raise CompileError(f"{label}: the function returns {what}; a gradient needs a scalar "
                           "function (as jax.grad)", *where,
                           hint="sum it (np.sum), or use fc.jacobian / fc.vjp for non-scalar values")


# ------------------------------------------------------------------------------
# helpers


def _check_argnums(argnums):
    ok = isinstance(argnums, int) or (isinstance(argnums, tuple) and argnums and
                                      all(isinstance(a, int) for a in argnums))
    if not ok:
        raise TypeError(f"argnums must be an int or a non-empty tuple of ints, not {argnums!r}")


def _check_plain(f, who):
    if is_model(f):
        raise TypeError(f"{who} takes a plain function; for a model write one that calls it, "
                        f"e.g. {who}(lambda x: np.sum(m(x))), or use fc.grad(m, x) for its Params")
    if not callable(f):
        raise TypeError(f"{who} needs a function, got {type(f).__name__}")


def _check_basis(basis, args, name):
    for a in basis:
        if np.ndim(args[a]) != 0:
            raise TypeError(f"{name}: argument {a} must be a scalar")


def _scalar_function(f, primals, who):
    """``(fn, basis)``: the plain function and the forward directions of scalar ``f``."""
    if hasattr(f, "__fc_scalar__"):        # a Derivative (fc.gradient(f), ...)
        scalar = f.__fc_scalar__(as_numpy_scalars(tuple(primals)))
        if scalar is None:
            raise TypeError(f"{who}: {f.__name__} is not a scalar function of these arguments")
        return scalar
    _check_plain(f, who)
    return f, ()


def _restructure(args, argnums, outs, single):
    """The flat gradient leaves ``outs`` as one gradient per argument in ``argnums`` (each
    with its argument's structure); the one gradient when ``single``."""
    _, trees = pytree.split_args(args)
    flat = pytree.split_args(args)[0]
    layout = _layout(args)
    it = iter(outs)
    grads = []
    for a in argnums:
        leaves = [flat[i] for i in layout[a]]
        gs = [next(it) if _is_float(x) else None for x in leaves]
        grads.append(_leaf_or_tree(args[a], trees[a], leaves if trees[a] is not None else leaves[0],
                                   gs if trees[a] is not None else gs[0]))
    return grads[0] if single else tuple(grads)


def _leaf_or_tree(a, tree, leaves, g):
    if tree is None:
        return pytree.leaf_grad(a, g)
    return pytree.in_order_of(a, pytree.unflatten(tree, map(pytree.leaf_grad, leaves, g)))


def _source(d, plan, inputs):
    inputs = d._last if inputs is None else tuple(inputs)
    if inputs is None:
        raise TypeError(f"fc.source({d.__name__}) needs example arguments: inputs=(x, ...)")
    return _source_of(d.fn, inputs, plan)


def _source_of(fn, inputs, plan):
    return SourceText(compile_plan(fn, as_numpy_scalars(tuple(inputs)), plan).source)
