"""Build: frontend → autodiff → passes → codegen → :class:`Compiled`.

``build`` runs the whole pipeline for one function; ``build_model`` and
``build_function`` prepare a model class (or instance) and a plain function for it.
Nothing here caches: :mod:`flux_compile.cache` decides when to build and keeps
what was built. ``arity_of(sub_model, nargs, args)`` is how a build asks the number
of outputs of a sub-model it calls (the cache answers, compiling it if needed).
"""
from __future__ import annotations

import hashlib
import inspect
import types

import numpy as np

from . import assemble, naming, passes, pytree
from .autodiff import differentiate, split
from .compiled import Compiled
from .errors import CompileError
from .frontend import Builder, Context, ModelRef, Seq, Static, get_source, structured
from .parsing import code_digest
from .ir import INPUT, Graph, Node, is_leaf
from .params import Param, call_keeping_state, is_model, named_params
from .shapeinfer import symbolic_shape
from .statehooks import state_factory, state_names
from .tokens import freeze

FORWARD_PATH = (("cls",), ("attr", "forward"))


def _outputs(b, out):
    if isinstance(out, Seq):
        return [b.as_node(v) for v in out.items], len(out.items)
    if isinstance(out, Static) and isinstance(out.value, tuple):
        return [b.as_node(Static(v)) for v in out.value], len(out.value)
    return [b.as_node(out)], None


def _trace(label, fn, selfval, inputs, training, state=None, arity_of=None, generic_cls=None, values=None,
           free_names=None, cond_regions=True):
    g = Graph(label)
    ctx = Context(g, "forward")
    ctx.generic_cls = generic_cls
    ctx.free_names = dict(free_names or {})
    ctx.arg_index = {name: i for i, (kind, name, _) in enumerate(inputs) if kind == "model"}
    if values is not None:
        from .concrete import Concrete
        ctx.concrete = Concrete(selfval.obj if selfval is not None else None, values, call_keeping_state)
    ctx.training = training
    ctx.arity_of = arity_of
    ctx.state = state
    ctx.cond_regions = cond_regions     # False: an if on data is decided with a guard (forward mode)
    if getattr(fn, "_fc_flatten", False) or selfval is not None and selfval.obj is not None:
        ctx.flatten = flattenable       # fc.train_step's objective, or a model instance's forward
    if getattr(state, "inline_stateful", False):
        ctx.flatten = inlinable         # fc.unroll's loop: stateful step models inlined too
    b = Builder(ctx)
    args = []
    for spec in inputs:
        kind, name, obj = spec
        if kind == "tree":              # a structured argument: one input per leaf
            treedef, leaf_specs = obj
            args.append(structured(treedef, [_input_value(g, s) for s in leaf_specs]))
        else:
            args.append(_input_value(g, spec))
    if state is not None:
        state.begin(b)
    from . import rules
    if selfval is None and (rules.get_rule(fn) is not None or rules.is_nondiff(fn)):
        out = b.call_primitive(fn, args, {}, None)      # fc.grad of a primitive itself
    else:
        root = () if selfval is None else (("attr", "forward"),) if generic_cls is not None \
            else FORWARD_PATH
        if selfval is not None:
            ctx.guard(root, "code", fn.__code__)    # Class.forward reassigned: not this code
        out = b.call_function(fn, args, {}, selfval=selfval, path=root)
    outs, arity = _outputs(b, out)
    for i, o in enumerate(outs):
        if o.name is None and not is_leaf(o):
            o.name = naming.output(i, len(outs))
            o.meta["anon"] = True
    if state is not None:
        outs = outs + state.end(b)
    if state is not None:
        state.end(b)
    g.outputs = outs
    return g, arity, ctx


def flattenable(obj):
    """Can sub-model ``obj`` be inlined into its caller (whole-model flattening)? Not a model
    with recurrent state or a template of its own (``fc.unroll``): those keep their call."""
    cls = type(obj)
    return not hasattr(cls, "_fc_template") and not state_names(cls)


def inlinable(obj):
    """Can sub-model ``obj`` be inlined when its state is carried by the caller
    (:class:`statehooks.SubStateHooks`)? Any model but a template of its own."""
    return not hasattr(type(obj), "_fc_template")


def _input_value(g, spec):
    """Add the input node for one argument spec; the value the traced code sees for it."""
    kind, name, obj = spec
    if kind == "array":
        n = g.add(Node(INPUT, name=name, diff=obj[1] if obj is not None else True))
        n.meta["shape"] = symbolic_shape(name, obj)
        n.meta["complex"] = obj is not None and len(obj) > 3 and obj[3]
        return n
    g.add(Node(INPUT, name=name, diff=False))
    return ModelRef(name, (), obj) if kind == "model" else Static(obj)


def build(label, owner, fn, selfval, input_specs, state_factory=None, generic_cls=None,
          values=None, arity_of=None, source_hash=None):
    """Run the whole pipeline for one function; returns a :class:`Compiled`."""
    state = state_factory() if state_factory else None
    infer_g, arity, ctx1 = _trace(label, fn, selfval, input_specs, False, state, arity_of, generic_cls,
                                  values)
    r = passes.optimize(infer_g)
    infer_g.outputs = [r(o) for o in infer_g.outputs]
    state2 = state_factory() if state_factory else None
    train_g, _, ctx2 = _trace(label, fn, selfval, input_specs, True, state2, arity_of, generic_cls,
                              values, ctx1.free_names)
    joint = differentiate(train_g, traced=ctx2)
    r2 = passes.optimize(train_g)
    joint.resolved_grads = [r2(x) if x is not None else None for x in joint.input_grads]
    sp = split(joint, r2)
    ctx3 = joint.ctx
    free_paths = list(dict.fromkeys(list(ctx1.free) + list(ctx2.free) + list(ctx3.free)))
    free_names = {**ctx1.free_names, **ctx2.free_names, **ctx3.free_names}
    source, namespace, linemap, filename, objects = assemble.emit_module(
        label, owner, infer_g, joint, sp, selfval is not None, [(p, free_names[p]) for p in free_paths])
    c = Compiled(label, owner, namespace, source, filename, linemap=linemap, n_outputs=arity,
                 input_names=[n.name for n in infer_g.inputs],
                 state_names=state.names if state is not None else (),
                 graph=infer_g, train_graph=train_g,
                 deps={(id(ns), name): (ns, name, f) for ns, name, f in ctx1.deps + ctx2.deps}.values(),
                 guarded=ctx1.guards > 0 or ctx2.guards > 0,
                 inlined=dict.fromkeys(ctx1.inlined + ctx2.inlined), objects=objects,
                 source_hash=source_hash)
    c.set_guards({**ctx1.baked, **ctx2.baked, **ctx3.baked}, free_paths)
    for graph in (infer_g, train_g):      # the cache must not keep the first instance alive
        for n in graph.nodes:
            n.meta.pop("obj", None)
    return c


# ------------------------------------------------------------------------------
# models


def source_hash(cls):
    """sha256 of the code of ``cls.forward`` (part of every cache key of the class): it changes
    with any edit of its source but comments, and needs no file read (see ``code_digest``)."""
    code = getattr(inspect.unwrap(cls.forward), "__code__", None)
    if code is None:
        return hashlib.sha256(get_source(cls.forward).text.encode()).hexdigest()
    return code_digest(code)


def forward_inputs(cls):
    """The names of ``forward``'s inputs (after ``self``), kept on the class per ``forward``."""
    fn = cls.forward
    known = cls.__dict__.get("_fc_forward_inputs")
    code = getattr(fn, "__code__", None)
    if known is not None and known[0] is fn and known[1] is code:
        return list(known[2])
    names = _forward_inputs(cls, fn)
    type.__setattr__(cls, "_fc_forward_inputs", (fn, code, tuple(names)))
    return names


def _forward_inputs(cls, fn):
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        raise CompileError(f"{cls.__name__}.forward has no readable signature")
    names = []
    for p in list(sig.parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            src = get_source(fn)
            raise CompileError(f"{cls.__name__}.forward(*{p.name}) is not supported",
                               src.filename, src.offset + src.tree.lineno, None,
                               hint="name each input: def forward(self, x, h)")
        if p.kind is p.KEYWORD_ONLY:
            src = get_source(fn)
            raise CompileError("keyword-only inputs to forward are not supported", src.filename,
                               src.offset + src.tree.lineno, hint="make them positional")
        names.append(p.name)
    return names


def input_key(args):
    """What a compiled function is specialised to for each input: rank and float-ness."""
    if args is None:
        return None
    key = []
    for a in args:
        if type(a) is np.ndarray:           # the common case first (the call path is hot)
            kind = a.dtype.kind
            key.append((a.ndim, kind in "fc", tuple(d == 1 for d in a.shape), kind == "c"))
            continue
        if isinstance(a, Param):
            a = a.value
        if pytree.is_structured(a):         # its leaves are inputs: the structure and each leaf's key
            leaves, tree = pytree.flatten(a)
            key.append(("tree", tree, input_key(leaves)))
        elif isinstance(a, (np.ndarray, np.generic)):
            key.append((a.ndim, a.dtype.kind in "fc", tuple(d == 1 for d in a.shape), a.dtype.kind == "c"))
        elif isinstance(a, float):
            key.append((0, True, ()))
        elif is_model(a) or isinstance(a, (list, tuple)) and a and all(
                isinstance(v, (np.ndarray, float)) for v in a):
            key.append((None, True, None))
        else:                       # None, ints, strings, flags: the code is specialised to them
            key.append(("static", freeze(a)))
    return tuple(key)


def build_model(cls, inst, ikey=None, values=None, arity_of=None):
    """Build ``cls.forward`` for the instance ``inst`` (None: the generic class) and the input
    key ``ikey``; ``values`` are the real inputs and state when known (by name)."""
    if inst is not None:
        named_params(inst)          # raises ModelCycleError naming the path if inst contains itself
    names = forward_inputs(cls)
    selfval = ModelRef("self", (), inst)
    nstate = len(state_names(cls))
    if ikey is not None and len(ikey) != len(names) + nstate:
        raise TypeError(f"{cls.__name__}.forward takes {len(names)} inputs ({', '.join(names)}) "
                        f"but {len(ikey) - nstate} were given")
    specs, taken = [], set(names)
    for i, n in enumerate(names):
        k = ikey[i] if ikey is not None else None
        if k is not None and k[0] == "tree":
            specs.append(_tree_spec(n, k, values.get(n) if values else None, taken))
        else:
            specs.append(_input_spec(n, k, values.get(n) if values else None))
    if values is not None:
        values = dict(flat_inputs(specs, [values.get(n) for n in names]), **{
            n: values[n] for n in state_names(cls) if n in values})
    state_specs = list(ikey[len(names):]) if ikey is not None else None
    label = cls.__qualname__
    hooks = state_factory(cls, inst, state_specs)
    snames = state_names(cls) if hooks else []
    clash = set(snames) & set(names)
    if clash:
        src = get_source(cls.forward)
        raise CompileError(f"{cls.__name__}.forward has an input and a state attribute both named "
                           f"{sorted(clash)[0]!r}", src.filename, src.offset + src.tree.lineno,
                           hint="rename the input")
    return build(label, cls.__name__, cls.forward, selfval, specs, state_factory=hooks,
                 generic_cls=cls if inst is None else None, values=values, arity_of=arity_of,
                 source_hash=source_hash(cls))


def _input_spec(name, k, value):
    """The spec of one model input from its ``input_key`` entry ``k``."""
    if k is not None and k[0] == "static":
        return ("static", name, value)
    return ("array", name, k if k is not None and k[0] is not None else None)


def _tree_spec(name, k, value, taken):
    """The spec of a structured model input: a leaf spec per leaf, named from its path."""
    _, tree, leaf_keys = k
    leaves = pytree.flatten(value)[0] if value is not None else [None] * tree.n_leaves
    if any(is_model(v) for v in leaves):
        raise TypeError(f"a model inside a structured input ({name}) is not supported; make it an "
                        f"attribute of the model")
    names = pytree.leaf_names(name, tree, taken)
    taken.update(names)
    return ("tree", name, (tree, [_input_spec(n, lk, v) for n, lk, v in zip(names, leaf_keys, leaves)]))



# ------------------------------------------------------------------------------
# plain functions (fc.grad)

def _arg_specs(names, args):
    """One spec per argument; a structured one is ``("tree", name, (treedef, leaf specs))``
    with its leaves named from their paths (``abc_0``, ``params_W``)."""
    specs, taken = [], set(names)
    for name, value in zip(names, args):
        if pytree.is_structured(value):
            leaves, tree = pytree.flatten(value)
            leaf_names = pytree.leaf_names(name, tree, taken)
            taken.update(leaf_names)
            specs.append(("tree", name, (tree, [_arg_spec(n, v) for n, v in zip(leaf_names, leaves)])))
        else:
            specs.append(_arg_spec(name, value))
    return specs


def flat_inputs(specs, args=None):
    """The generated code's input names (a structured argument's leaves in its place), or
    ``{name: value}`` for them when ``args`` are given."""
    names, values = [], []
    for i, spec in enumerate(specs):
        if spec[0] == "tree":
            names.extend(s[1] for s in spec[2][1])
            if args is not None:
                values.extend(pytree.flatten(args[i])[0])
        else:
            names.append(spec[1])
            if args is not None:
                values.append(args[i])
    return names if args is None else dict(zip(names, values))


def _arg_spec(name, value):
    if is_model(value):
        return ("model", name, value)
    if isinstance(value, (np.ndarray, float, complex, np.floating, Param)) and not isinstance(value, bool):
        return ("array", name, input_key([value])[0])
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, (np.ndarray, float, np.floating)) and not isinstance(v, bool) for v in value):
        return ("array", name, None)
    return ("static", name, value)


def build_function(fn, args, arity_of=None):
    """Build the plain function ``fn`` for these arguments (their kinds and constants)."""
    specs = function_specs(fn, args)
    new = build(fn.__qualname__, fn.__qualname__, fn, None, specs, values=flat_inputs(specs, args),
                arity_of=arity_of)
    new.inlined = []            # holds no function: closures (and what they capture) stay free
    return new


def trace_function(label, fn, args, who="fc.grad", cond_regions=True):
    """The inference graph of the plain function ``fn`` for these arguments, for a transform
    that derives its own code from it (``fc.jvp``): ``(graph, arity, ctx, specs)``.
    ``cond_regions=False`` for a transform that applies forward mode (no tangent of a cond
    region yet: an ``if`` on data is compiled for the branch taken, with a guard)."""
    specs = function_specs(fn, args, who)
    graph, arity, ctx = _trace(label, fn, None, specs, False, values=flat_inputs(specs, args),
                               cond_regions=cond_regions)
    return graph, arity, ctx, specs


def function_specs(fn, args, who="fc.grad"):
    """One spec per argument of ``fn``; a clear error for a call it cannot take."""
    if not isinstance(fn, types.FunctionType):
        what = "a Python function or a @net model" if who == "fc.grad" else "a Python function"
        raise TypeError(f"{who} needs {what}, got {type(fn).__name__}")
    try:
        sig = inspect.signature(fn)
        names = [p.name for p in sig.parameters.values()
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        names = []
    if len(args) > len(names):
        raise TypeError(f"{fn.__name__}() takes {len(names)} arguments but {len(args)} were given")
    return _arg_specs(names[:len(args)], args)
