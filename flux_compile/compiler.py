"""The pipeline in one place: frontend → autodiff → passes → codegen → cached functions.

``compile_model(m)`` compiles a ``@net`` instance (or class); ``compile_function(f, args)``
a plain function for ``fc.grad``. Results are cached per class, per hash of
every source that went in, and per the structure of the instance (which
attributes are Params, sub-models, functions or flags).
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import linecache
import sys
import types
import weakref
from collections import OrderedDict

import numpy as np

from . import codegen, naming, passes, pytree
from ._version import __version__
from .autodiff import differentiate
from .errors import CompileError, ModelError, model_error_type
from .frontend import (Builder, Context, IdentityTable, ModelRef, Seq, Static, attr_token, get_source,
                       structured)
from .guards import compile_checks, compile_reader
from .ir import Graph, Node
from .params import Param, cycle_error, is_model, named_params


def _always(root, args):
    return True


def _nothing(root, args):
    return ()


class Compiled:
    """Generated functions of one model class (or function) for one structure."""

    def __init__(self, label, owner):
        self.label = label
        self.owner = owner
        self.forward = self.forward_train = self.backward = None
        self.backward_params = None   # the backward without input gradients
        self.sections = {}
        self.source = ""
        self.graph = None          # the inference graph
        self.train_graph = None    # the joint (forward + backward) graph
        self.linemap = {}
        self.filename = None
        self.n_outputs = None      # None: one output; k: a tuple of k
        self.from_disk = False
        self.guarded = False       # has guards: other variants may exist for other paths
        self.alternatives = [self]
        self.rebuild = None        # re-runs the pipeline (for the graph of a disk-cache hit)
        self.deps = []             # (namespace, name, function) looked up while compiling
        self.input_names = []
        self.state_names = []      # recurrent state: extra inputs after the user's, extra outputs after
        self.guards = []           # (path, kind, expected): see guards.py
        self.free_paths = []       # paths of the arrays read at run time (extra inputs, in order)
        self.check = _always
        self.read_free = _nothing  # read_free(root, args) -> the values of the extra inputs

    def set_guards(self, baked, free_paths):
        """Guards as ``{(path, kind): expected}``; arrays at ``free_paths`` are extra inputs."""
        identity = {path for path, kind in baked if kind == "is"}     # implies the same code
        self.guards = [(path, kind, expected) for (path, kind), expected in baked.items()
                       if not (kind == "code" and path in identity)]
        self.free_paths = list(free_paths)
        self.check = compile_checks(self.guards)
        self.read_free = compile_reader(self.free_paths)

    def current(self, root=None, args=()):
        """False once a function the code was built from has been redefined, or (given the
        root: the model instance or the function) once a value it baked in has changed."""
        for ns, name, fn in self.deps:
            if ns.get(name) is not fn:
                return False
        return root is None or self.check(root, args)

    # -- errors inside generated code -------------------------------------------
    def translate(self, exc, direction="forward"):
        """Re-raise ``exc`` as a ModelError naming the user's statement, or return None."""
        tb = exc.__traceback__
        lineno = None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == self.filename:
                lineno = tb.tb_lineno
            tb = tb.tb_next
        if lineno is None or not self.linemap:
            return None
        loc = self.linemap.get(lineno)
        where = f"{loc.filename}:{loc.lineno}" if loc else f"{self.filename}:{lineno}"
        text = loc.text if loc else ""
        frame = (f"{self.owner} ({direction})", where, text)
        if isinstance(exc, ModelError):
            exc.trace.append(frame)
            return exc
        cls = model_error_type(type(exc))
        try:
            new = cls(f"{type(exc).__name__}: {exc}", [frame])
        except Exception:
            new = ModelError(f"{type(exc).__name__}: {exc}", [frame])
        return new


def symbolic_shape(name, spec):
    """``(Sym('x.0'), 3)``-style shape for an input specialised to ``spec`` (ndim, float, ones)."""
    from .shapeinfer import Sym
    if spec is None or spec[0] is None:
        return None
    ndim, _, ones = spec[:3]
    return tuple(1 if ones[i] else Sym(f"{name}.{i}", nonone=True) for i in range(ndim))


def _outputs(b, out):
    if isinstance(out, Seq):
        return [b.as_node(v) for v in out.items], len(out.items)
    if isinstance(out, Static) and isinstance(out.value, tuple):
        return [b.as_node(Static(v)) for v in out.value], len(out.value)
    return [b.as_node(out)], None


def _trace(label, fn, selfval, inputs, training, state=None, arity_of=None, generic_cls=None, values=None,
           free_names=None):
    g = Graph(label)
    ctx = Context(g, "forward")
    ctx.generic_cls = generic_cls
    ctx.free_names = dict(free_names or {})
    ctx.arg_index = {name: i for i, (kind, name, _) in enumerate(inputs) if kind == "model"}
    if values is not None:
        from .concrete import Concrete
        ctx.concrete = Concrete(selfval.obj if selfval is not None else None, values)
    ctx.training = training
    ctx.arity_of = arity_of
    ctx.state = state
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
        if o.name is None and o.op not in ("input", "param", "const", "attr"):
            o.name = naming.output(i, len(outs))
            o.meta["anon"] = True
    if state is not None:
        outs = outs + state.end(b)
    if state is not None:
        state.end(b)
    g.outputs = outs
    return g, arity, ctx


def _input_value(g, spec):
    """Add the input node for one argument spec; the value the traced code sees for it."""
    kind, name, obj = spec
    if kind == "array":
        n = g.add(Node("input", name=name, diff=obj[1] if obj is not None else True))
        n.meta["shape"] = symbolic_shape(name, obj)
        n.meta["complex"] = obj is not None and len(obj) > 3 and obj[3]
        return n
    g.add(Node("input", name=name, diff=False))
    return ModelRef(name, (), obj) if kind == "model" else Static(obj)


def _arity_of(obj, nargs, args=None):
    """How many outputs sub-model ``obj`` returns, from the variant for the real ``args`` when
    known (its forward may depend on them, e.g. ``range(x.ndim)``), else the generic one."""
    from . import recurrent
    if args is not None and not recurrent.state_names(type(obj)):
        return compile_model(obj, tuple(args)).n_outputs
    try:
        return compile_model(obj).n_outputs
    except CompileError:        # needs its inputs to compile: it is compiled when called
        return None


def _emit(label, owner, infer_g, joint, split, has_self, free=()):
    """Generate the module: forward, forward_train, backward, backward_params. Every name
    comes from one :class:`naming.ModuleNames`: the inference forward is one scope, the
    training forward and both backwards another (saved values keep their names)."""
    module = naming.ModuleNames()
    ns = codegen.Namespace(module)
    fs = codegen.FuncSet()
    hints = [naming.SELF] if has_self else []
    hints += [n.name for n in infer_g.inputs if "free" not in n.meta]
    hints += [name for _, name in free]       # arrays read at run time: last, in read_free's order
    # inference forward
    scope = module.scope()
    sig = scope.params(hints)
    names, bases = _bind_inputs(infer_g.inputs, sig, has_self, free)
    em = codegen.FunctionEmitter(ns, names, fs.locs, "infer", scope, bases=bases)
    outs = infer_g.outputs
    roots = list(outs) + [n for n in infer_g.nodes if n.op in ("state", "guard")]
    alive = passes.live(roots)
    nodes = [n for n in infer_g.nodes if n.id in alive]
    keep = {o.id for o in outs}
    body = em.statements(nodes, keep)
    ret = codegen.tuple_or_single([em.expr(o) for o in outs])
    fs.defs.append(codegen.make_function("forward", sig, body, ret))
    # training forward; its scope also holds the backward's parameters and seeds
    g = joint.graph
    scope = module.scope()
    sig = scope.params(hints)
    bsig = sig[:1] if has_self else []          # the backward's self is the forward's
    bsig = bsig + scope.params([naming.SAVED, naming.SEEDS])
    saved_param, seeds_param = bsig[-2], bsig[-1]
    names, bases = _bind_inputs(g.inputs, sig, has_self, free)
    if len(joint.seeds) == 1:
        names[joint.seeds[0].id] = seeds_param
    else:
        names.update(zip((s.id for s in joint.seeds), scope.params([s.name for s in joint.seeds])))
    back_names = {}
    em = codegen.FunctionEmitter(ns, names, fs.locs, "train", scope, back_names, bases)
    em._last_loc = None
    touts = g.outputs
    keep = {o.id for o in touts} | {a.id for a, _ in split.saved}
    body = em.statements(split.forward, keep)
    saved_exprs = []
    for node, kind in split.saved:
        saved_exprs.append(ast.Name(id=back_names[node.id] if kind == "back" else names[node.id], ctx=ast.Load()))
    out_expr = codegen.tuple_or_single([em.expr(o) for o in touts])
    ret = ast.Tuple(elts=[out_expr, ast.Tuple(elts=saved_exprs, ctx=ast.Load())], ctx=ast.Load())
    fs.defs.append(codegen.make_function("forward_train", sig, body, ret))
    # backward
    em2 = codegen.FunctionEmitter(ns, names, fs.locs, "backward", scope, back_names, bases)
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
    ret = codegen.tuple_or_single(rets) if rets else ast.Constant(None)
    fs.defs.append(codegen.make_function("backward", bsig, head + body, ret))
    # the same backward when the caller needs no input gradients (only Params, and recurrent
    # state, which carries gradients between steps): the input-gradient work is dead code
    state_grads = [x if inp.meta.get("state") else None for inp, x in pairs]
    alive = passes.live([x for x in state_grads if x is not None] +
                        [n for n in split.backward if n.op in ("accum", "model_back")])
    em3 = codegen.FunctionEmitter(ns, names, fs.locs, "backward", scope, back_names, bases)
    em3._last_loc = None
    body = em3.statements([n for n in split.backward if n.id in alive],
                          {x.id for x in state_grads if x is not None})
    rets = [em3.expr(x) if x is not None else ast.Constant(None) for x in state_grads]
    ret = codegen.tuple_or_single(rets) if rets else ast.Constant(None)
    fs.defs.append(codegen.make_function("backward_params", bsig, head + body, ret))
    source, namespace, linemap, filename = codegen.build_module(label, fs, ns)
    return source, namespace, linemap, filename, dict(ns.objects)


def _bind_inputs(inputs, sig, has_self, free=()):
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


def _sections(source):
    """Split the module text into its three functions (for ``fc.source(m, which)``)."""
    out, cur, header = {}, None, []
    for line in source.splitlines(True):
        if line.startswith("def "):
            cur = line[4:line.index("(")]
            out[cur] = header + [line] if cur == "forward" else [line]
            continue
        if cur is None:
            header.append(line)
        else:
            out[cur].append(line)
    return {k: "".join(v).rstrip("\n") + "\n" for k, v in out.items()}


def build(label, owner, fn, selfval, input_specs, state_factory=None, generic_cls=None,
          values=None):
    """Run the whole pipeline for one function; returns a :class:`Compiled`."""
    c = Compiled(label, owner)
    state = state_factory() if state_factory else None
    infer_g, arity, ctx1 = _trace(label, fn, selfval, input_specs, False, state, _arity_of, generic_cls,
                                  values)
    r = passes.optimize(infer_g)
    infer_g.outputs = [r(o) for o in infer_g.outputs]
    state2 = state_factory() if state_factory else None
    train_g, _, ctx2 = _trace(label, fn, selfval, input_specs, True, state2, _arity_of, generic_cls,
                              values, ctx1.free_names)
    joint = differentiate(train_g, traced=ctx2)
    r2 = passes.optimize(train_g)
    joint.resolved_grads = [r2(x) if x is not None else None for x in joint.input_grads]
    sp = passes.split(joint, r2)
    ctx3 = joint.ctx
    free_paths = list(dict.fromkeys(list(ctx1.free) + list(ctx2.free) + list(ctx3.free)))
    free_names = {**ctx1.free_names, **ctx2.free_names, **ctx3.free_names}
    input_names = [n.name for n in infer_g.inputs]
    source, namespace, linemap, filename, objects = _emit(label, owner, infer_g, joint, sp, selfval is not None,
                                                          [(p, free_names[p]) for p in free_paths])
    c.namespace_objects = objects
    c.inlined = list(dict.fromkeys(ctx1.inlined + ctx2.inlined))
    c.deps = list({(id(ns), name): (ns, name, fn) for ns, name, fn in ctx1.deps + ctx2.deps}.values())
    c.forward = namespace["forward"]
    c.forward_train = namespace["forward_train"]
    c.backward = namespace["backward"]
    c.backward_params = namespace["backward_params"]
    c.source = source
    c.sections = _sections(source)
    c.graph = infer_g
    c.train_graph = train_g
    c.linemap = linemap
    c.filename = filename
    c.n_outputs = arity
    c.input_names = input_names
    c.state_names = list(state.names) if state is not None else []
    c.guarded = ctx1.guards > 0 or ctx2.guards > 0
    c.alternatives = [c]
    c.set_guards({**ctx1.baked, **ctx2.baked, **ctx3.baked}, free_paths)
    for graph in (infer_g, train_g):      # the cache must not keep the first instance alive
        for n in graph.nodes:
            n.meta.pop("obj", None)
    return c


# ------------------------------------------------------------------------------
# the in-memory caches: bounded, and never keeping alive what the user dropped

MAX_VARIANTS = 32       # per model class or per function; the least recently used go first


class VariantCache:
    """Compiled variants by key, each valid while its guards hold; at most ``limit`` in all."""

    def __init__(self, limit=None):
        self.entries = OrderedDict()        # key -> [Compiled], most recent first
        self.limit = limit
        self.count = 0

    def find(self, key, root, args=()):
        for c in self.entries.get(key, ()):
            if c.current(root, args):
                self.entries.move_to_end(key)
                return c
        return None

    def add(self, key, c):
        variants = self.entries.setdefault(key, [])
        if c in variants:
            variants.remove(c)
            self.count -= 1
        variants.insert(0, c)
        self.entries.move_to_end(key)
        self.count += 1
        limit = self.limit or MAX_VARIANTS
        while self.count > limit:
            oldest_key, oldest = next(iter(self.entries.items()))
            gone = oldest.pop()
            self.count -= 1
            if not oldest:
                del self.entries[oldest_key]
            if not any(gone in v for v in self.entries.values()):
                linecache.cache.pop(gone.filename, None)     # its generated text goes with it


_class_caches = weakref.WeakKeyDictionary()      # model class -> VariantCache
_function_caches = IdentityTable()              # code object -> VariantCache
_primitive_caches = {}                           # fc.grad of a primitive without __code__ (a ufunc)


def _cache_of(table, owner):
    cache = table.get(owner)
    if cache is None:
        cache = table[owner] = VariantCache()
    return cache


def _function_cache(fn):
    code = getattr(fn, "__code__", None)
    return _cache_of(_function_caches, code) if code is not None else _cache_of(_primitive_caches, fn)


def _link_alternative(new, old):
    """``new`` is another variant (another path through data-dependent control flow) of ``old``."""
    new.alternatives = old.alternatives
    new.alternatives.insert(0, new)
    del new.alternatives[MAX_VARIANTS:]


# ------------------------------------------------------------------------------
# models


def _class_sources(cls):
    return get_source(cls.forward).text


def model_signature(m):
    return tuple((k, attr_token(v)) for k, v in vars(m).items() if not k.startswith("_"))


def _forward_inputs(cls):
    fn = cls.forward
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


def compile_model(m_or_cls, args=None, fresh=False):
    """The :class:`Compiled` for a model instance (specialised to its structure and to the
    rank of each input in ``args``) or a class (generic). ``fresh`` compiles a new variant
    for the path these ``args`` take through data-dependent control flow."""
    ikey = input_key(args)
    from .rules import GENERATION
    if isinstance(m_or_cls, type):
        cls, inst = m_or_cls, None
    else:
        cls, inst = type(m_or_cls), m_or_cls
        if inst.__dict__.get("_fc_gen") != GENERATION[0]:          # a rule was (re)registered
            inst.__dict__.pop("_fc_compiled", None)
            inst.__dict__["_fc_gen"] = GENERATION[0]
        c = None if fresh else cached_variant(inst, ikey, args is None)
        if c is not None:
            return c
    if not hasattr(cls, "forward"):
        raise TypeError(f"{cls.__name__} has no forward method")
    if inst is not None and hasattr(cls, "_fc_template"):
        return _remember(inst, ikey, inst._fc_template(ikey))
    text = _class_sources(cls)
    sig = model_signature(inst) if inst is not None else ("generic",)
    key = (cls, hashlib.sha256(text.encode()).hexdigest(), sig, ikey, GENERATION[0])
    cache = _cache_of(_class_caches, cls)
    c = cache.find(key[1:], inst if inst is not None else cls)
    if c is None or fresh:
        values = None
        if inst is not None and args is not None:
            from . import recurrent
            names = _forward_inputs(cls) + recurrent.state_names(cls)
            values = dict(zip(names, args))
        new = _from_disk(cls, key, lambda: _compile_model(cls, inst, text, ikey, values),
                         inst if inst is not None else cls) if not fresh \
            else _compile_model(cls, inst, text, ikey, values)
        if c is not None:
            _link_alternative(new, c)
        c = new
        cache.add(key[1:], c)
    return _remember(inst, ikey, c) if inst is not None else c


def cached_variant(inst, ikey, last=False):
    """The instance's compiled variant for input key ``ikey`` (with ``last``: the one that ran
    last) while it is still valid, else None. It only reads, so callers need no lock."""
    from .rules import GENERATION
    d = inst.__dict__
    variants = d.get("_fc_compiled")
    if variants is None or d.get("_fc_gen") != GENERATION[0]:
        return None
    if last:
        ikey = d.get("_fc_last")
        if ikey is None:
            return None
    c = variants.get(ikey)
    return c if c is not None and c.current(inst) else None


def _remember(inst, ikey, c):
    d = inst.__dict__
    if "_fc_compiled" not in d:
        object.__setattr__(inst, "_fc_compiled", {})
    mine = d["_fc_compiled"]
    mine.pop(ikey, None)
    mine[ikey] = c
    while len(mine) > MAX_VARIANTS:             # one per input kind: bounded like the class's
        del mine[next(iter(mine))]
    if ikey is not None:
        d["_fc_last"] = ikey
    return c


def _from_disk(cls, key, make, root):
    """The compiled model from FLUX_COMPILE_CACHE_DIR when valid and its guards hold for
    ``root`` (the instance, or the class); else ``make()`` (and store it)."""
    from . import diskcache
    where = diskcache.usable_directory()
    if where is None:
        return make()
    try:
        dkey = diskcache.entry_key(cls, key[1:])
    except diskcache.Uncacheable:
        return make()
    hit = diskcache.load(where, dkey, cls, lambda meta: _run_time_values(meta, root))
    if hit is not None:
        c = _from_entry(cls, make, root, *hit)
        if c is not None and c.current(root):
            return c
        if c is not None:               # its guards fail for this root: not used
            linecache.cache.pop(c.filename, None)
    c = make()
    _store(where, dkey, cls, key, c, root)
    return c


def _store(where, dkey, cls, key, c, root):
    """Write ``c`` with its guards and run-time reads; nothing when one cannot be written."""
    from . import diskcache, diskguards
    try:
        extra = diskguards.encode(c, root)
        run_time = c.read_free(root, ())
    except Exception:               # Uncacheable, or a value no longer readable: store nothing
        return
    diskcache.store(where, dkey, cls, key[1:], c, extra, run_time)


def _run_time_values(meta, root):
    """The values an entry's code would read at run time from ``root`` (for its manifest)."""
    from . import diskcache, diskguards
    try:
        return compile_reader(diskguards.decode_paths(meta["extra"]["free"]))(root, ())
    except diskcache.Uncacheable:
        raise
    except Exception:
        raise diskcache.Uncacheable("a run-time input cannot be read") from None


def _from_entry(cls, make, root, source, objects, meta):
    """The variant of a verified entry, or None when its guards cannot be bound again."""
    from . import diskcache, diskguards
    from .sourcecache import compile_source, unique_filename
    try:
        baked, free_paths = diskguards.decode(meta["extra"], _run_time_values(meta, root), root)
    except (diskcache.Uncacheable, KeyError, TypeError):
        return None
    c = Compiled(cls.__qualname__, cls.__name__)
    filename = unique_filename(cls.__qualname__)
    ns = compile_source(source, filename, dict(objects, np=np, fc=sys.modules["flux_compile"]))
    c.forward, c.forward_train, c.backward = ns["forward"], ns["forward_train"], ns["backward"]
    c.backward_params = ns["backward_params"]
    c.source, c.sections, c.linemap, c.filename = source, _sections(source), meta["linemap"], filename
    c.n_outputs, c.input_names = meta["n_outputs"], meta["input_names"]
    c.state_names = meta.get("state_names", [])
    c.deps = meta["deps"]
    c.guarded = meta.get("guarded", False)
    c.from_disk = True
    c.rebuild = make
    baked[(FORWARD_PATH, "code")] = cls.forward.__code__
    c.set_guards(baked, free_paths)
    return c


FORWARD_PATH = (("cls",), ("attr", "forward"))


def _compile_model(cls, inst, text, ikey=None, values=None):
    from . import recurrent
    if inst is not None:
        named_params(inst)          # raises ModelCycleError naming the path if inst contains itself
    names = _forward_inputs(cls)
    selfval = ModelRef("self", (), inst)
    nstate = len(recurrent.state_names(cls))
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
            n: values[n] for n in recurrent.state_names(cls) if n in values})
    state_specs = list(ikey[len(names):]) if ikey is not None else None
    label = cls.__qualname__
    state_factory = recurrent.state_factory(cls, inst, state_specs)
    snames = recurrent.state_names(cls) if state_factory else []
    clash = set(snames) & set(names)
    if clash:
        src = get_source(cls.forward)
        raise CompileError(f"{cls.__name__}.forward has an input and a state attribute both named "
                           f"{sorted(clash)[0]!r}", src.filename, src.offset + src.tree.lineno,
                           hint="rename the input")
    c = build(label, cls.__name__, cls.forward, selfval, specs,
              state_factory=state_factory, generic_cls=cls if inst is None else None, values=values)
    c.hash = hashlib.sha256(text.encode()).hexdigest()
    return c


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


def _spec_token(spec):
    kind, name, obj = spec
    if kind == "model":
        return (kind, name, type(obj), tuple((p, attr_token(v)) for p, v in _walk_tokens(obj)))
    if kind == "array":
        return (kind, name, obj)
    if kind == "static":
        return (kind, name, freeze(obj))
    if kind == "tree":
        return (kind, name, obj[0], tuple(_spec_token(s) for s in obj[1]))
    return (kind, name)


class _Uncacheable:
    """A key part that equals nothing, not even itself: the entry is never reused."""

    def __eq__(self, other):
        return False

    def __hash__(self):
        return id(self)


def freeze(obj):
    """A hashable stand-in for a compile-time constant, equal exactly when the values are."""
    if isinstance(obj, dict):
        return ("dict",) + tuple(sorted(((freeze(k), freeze(v)) for k, v in obj.items()), key=repr))
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__,) + tuple(freeze(v) for v in obj)
    if isinstance(obj, float) and obj != obj:
        return ("nan",)
    try:
        hash(obj)
    except TypeError:
        return _Uncacheable()
    return (type(obj), obj)


def _walk_tokens(m, prefix=(), ancestors=None, root=None):
    ancestors = {id(m): prefix} if ancestors is None else ancestors
    root = m if root is None else root
    for k, v in vars(m).items():
        if k.startswith("_"):
            continue
        yield prefix + (k,), v
        if is_model(v):
            if id(v) in ancestors:
                raise cycle_error(root, prefix + (k,), ancestors)
            ancestors[id(v)] = prefix + (k,)
            yield from _walk_tokens(v, prefix + (k,), ancestors, root)
            del ancestors[id(v)]


def _fast_key(args):
    """A cheap key for the common call (arrays and constants, no models), or None."""
    from .rules import GENERATION
    parts = []
    for a in args:
        if isinstance(a, (np.ndarray, np.generic)):
            parts.append((a.ndim, a.dtype.kind, tuple(d == 1 for d in a.shape)))
        elif type(a) in (int, float, bool, str, type(None)):
            parts.append((type(a), a))
        elif pytree.is_structured(a):
            leaves, tree = pytree.flatten(a)
            inner = _fast_key(leaves)
            if inner is None:
                return None
            parts.append(("tree", tree, inner[2]))
        else:
            return None
    return ("fast", GENERATION[0], tuple(parts))


def compile_function(fn, args, fresh=False):
    """Compile a plain function for these argument kinds (arrays, models, constants).

    Cached per code object, so every closure of one ``def`` or lambda shares the code: the
    arrays it captures are read at run time (``c.read_free(fn, args)``), and anything else it
    was built from is checked by its guards (``c.current(fn, args)``)."""
    cache = _function_cache(fn)
    fast = _fast_key(args)
    if fast is not None and not fresh:
        c = cache.find(fast, fn, args)
        if c is not None:
            return c
    return _compile_function(fn, args, cache, fresh, fast)


def _compile_function(fn, args, cache, fresh=False, fast=None):
    if not isinstance(fn, types.FunctionType):
        raise TypeError(f"fc.grad needs a Python function or a @net model, got {type(fn).__name__}")
    try:
        sig = inspect.signature(fn)
        names = [p.name for p in sig.parameters.values()
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        names = []
    if len(args) > len(names):
        raise TypeError(f"{fn.__name__}() takes {len(names)} arguments but {len(args)} were given")
    names = names[:len(args)]
    specs = _arg_specs(names, args)
    from . import rules
    primitive = rules.get_rule(fn) is not None or rules.is_nondiff(fn)
    if not primitive:
        get_source(fn)              # the source matches the code (or a clear error)
    from .rules import GENERATION
    key = fast if fast is not None else (tuple(_spec_token(s) for s in specs), GENERATION[0])
    c = cache.find(key, fn, args) if fast is None or fresh else None     # (compile_function looked)
    if c is None or fresh:
        values = flat_inputs(specs, args)
        new = build(fn.__qualname__, fn.__qualname__, fn, None, specs, values=values)
        new.inlined = []            # holds no function: closures (and what they capture) stay free
        if c is not None:
            _link_alternative(new, c)
        c = new
        cache.add(key, c)
    return c


def run_guarded(c, call, recompile, root=None, args=()):
    """``call(c)``; when a guard fails, try the other variants (those still valid for ``root``:
    each may have baked in other values), then compile a new one. Returns ``(variant, result)``."""
    from .errors import Retrace
    try:
        return c, call(c)
    except Retrace:
        pass
    for alt in list(c.alternatives):
        if alt is c or not alt.current(root, args):
            continue
        try:
            return alt, call(alt)
        except Retrace:
            continue
    new = recompile()
    return new, call(new)


# ------------------------------------------------------------------------------
# transforms (fc.jvp, ...): a hook that traces a plain function and caches what is made of it

def compile_transform(fn, args, kind, make, fresh=False):
    """The cached ``kind`` variant of plain function ``fn`` for these argument kinds, or a new
    one: ``make(c, graph, arity, ctx, specs)`` fills :class:`Compiled` ``c`` from the traced
    inference graph; its guards and run-time reads come from the trace, as ``fc.grad``'s."""
    if not isinstance(fn, types.FunctionType):
        raise TypeError(f"fc.{kind} needs a Python function, got {type(fn).__name__}")
    cache = _function_cache(fn)
    fast = _fast_key(args)
    names = [p.name for p in inspect.signature(fn).parameters.values()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(args) > len(names):
        raise TypeError(f"{fn.__name__}() takes {len(names)} arguments but {len(args)} were given")
    specs = _arg_specs(names[:len(args)], args)
    from .rules import GENERATION
    key = (kind, fast) if fast is not None else (kind, tuple(_spec_token(s) for s in specs), GENERATION[0])
    old = cache.find(key, fn, args)
    if old is not None and not fresh:
        return old
    get_source(fn)
    label = f"{kind} of {fn.__qualname__}"
    graph, arity, ctx = _trace(label, fn, None, specs, False, values=flat_inputs(specs, args))
    c = Compiled(label, fn.__qualname__)
    make(c, graph, arity, ctx, specs)
    c.deps = list(ctx.deps)
    c.guarded = ctx.guards > 0
    if old is not None:
        _link_alternative(c, old)
    cache.add(key, c)
    return c
