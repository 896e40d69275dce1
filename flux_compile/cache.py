"""Reuse: cache keys, guards, the in-memory caches and the disk cache.

``compile_model(m)`` compiles a ``@net`` instance (or class); ``compile_function(f, args)``
a plain function for ``fc.grad``. Results are cached per class, per hash of
every source that went in, and per the structure of the instance (which
attributes are Params, sub-models, functions or flags); each variant stays valid
while its guards hold (``Compiled.current``). ``run_guarded`` runs a variant and
falls back to the others, then to a new build, when a guard fails at run time.
The builds themselves are :mod:`flux_compile.compiler`'s.
"""
from __future__ import annotations

import linecache
import sys
import weakref
from collections import OrderedDict

import numpy as np

from . import pytree
from .compiled import Compiled
from .compiler import FORWARD_PATH, build_function, build_model, forward_inputs, function_specs, input_key, \
    source_hash, trace_function
from .errors import CompileError
from .frontend import IdentityTable, attr_token, get_source
from .guards import compile_reader
from .params import cycle_error, is_model
from .rules import GENERATION
from .statehooks import state_names
from .tokens import freeze


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

def model_signature(m):
    return tuple((k, attr_token(v)) for k, v in vars(m).items() if not k.startswith("_"))


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
    sig = model_signature(inst) if inst is not None else ("generic",)
    key = (cls, source_hash(cls), sig, ikey, GENERATION[0])
    cache = _cache_of(_class_caches, cls)
    c = cache.find(key[1:], inst if inst is not None else cls)
    if c is None or fresh:
        values = None
        if inst is not None and args is not None:
            names = forward_inputs(cls) + state_names(cls)
            values = dict(zip(names, args))
        def make():
            return build_model(cls, inst, ikey, values, arity_of=_arity_of)
        new = _from_disk(cls, key, make, inst if inst is not None else cls) if not fresh else make()
        if c is not None:
            _link_alternative(new, c)
        c = new
        cache.add(key[1:], c)
    return _remember(inst, ikey, c) if inst is not None else c


def cached_variant(inst, ikey, last=False):
    """The instance's compiled variant for input key ``ikey`` (with ``last``: the one that ran
    last) while it is still valid, else None. It only reads, so callers need no lock."""
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


# ------------------------------------------------------------------------------
# the disk cache (FLUX_COMPILE_CACHE_DIR): diskcache.py stores, diskguards.py encodes the guards

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
    filename = unique_filename(cls.__qualname__)
    ns = compile_source(source, filename, dict(objects, np=np, fc=sys.modules["flux_compile"]),
                        diskcache.stored_code(meta))
    c = Compiled(cls.__qualname__, cls.__name__, ns, source, filename, linemap=meta["linemap"],
                 n_outputs=meta["n_outputs"], input_names=meta["input_names"],
                 state_names=meta.get("state_names", ()), deps=meta["deps"],
                 guarded=meta.get("guarded", False), from_disk=True, rebuild=make)
    baked[(FORWARD_PATH, "code")] = cls.forward.__code__
    c.set_guards(baked, free_paths)
    return c



# ------------------------------------------------------------------------------
# plain functions (fc.grad)

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
    specs = function_specs(fn, args)
    from . import rules
    primitive = rules.get_rule(fn) is not None or rules.is_nondiff(fn)
    if not primitive:
        get_source(fn)              # the source matches the code (or a clear error)
    from .rules import GENERATION
    key = fast if fast is not None else (tuple(_spec_token(s) for s in specs), GENERATION[0])
    c = cache.find(key, fn, args) if fast is None or fresh else None     # (compile_function looked)
    if c is None or fresh:
        new = build_function(fn, args, arity_of=_arity_of)
        if c is not None:
            _link_alternative(new, c)
        c = new
        cache.add(key, c)
    return c


def compile_transform(fn, args, kind, make, fresh=False, variant=None, cond_regions=True):
    """The cached ``kind`` variant (``"jvp"``, ...) of the plain function ``fn`` for these
    argument kinds, or a new one: ``make(label, graph, arity, ctx, specs)`` returns the
    :class:`Compiled` made from the traced inference graph, with its guards and run-time reads
    from the trace (``ctx.baked``, ``ctx.free``), as ``fc.grad``'s. ``variant`` (hashable)
    tells apart transforms of one kind (``fc.gradient`` with respect to other arguments)."""
    specs = function_specs(fn, args, f"fc.{kind}")
    cache = _function_cache(fn)
    fast = _fast_key(args)
    from .rules import GENERATION
    kind_key = kind if variant is None else (kind, variant)     # variant: e.g. which arguments
    key = (kind_key, fast) if fast is not None else (kind_key, tuple(_spec_token(s) for s in specs), GENERATION[0])
    old = cache.find(key, fn, args)
    if old is not None and not fresh:
        return old
    get_source(fn)
    label = f"{kind} of {fn.__qualname__}"
    c = make(label, *trace_function(label, fn, args, f"fc.{kind}", cond_regions))
    if old is not None:
        _link_alternative(c, old)
    cache.add(key, c)
    return c


# ------------------------------------------------------------------------------
# running a guarded variant

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


def _arity_of(obj, nargs, args=None):
    """How many outputs sub-model ``obj`` returns, from the variant for the real ``args`` when
    known (its forward may depend on them, e.g. ``range(x.ndim)``), else the generic one."""
    if args is not None and not state_names(type(obj)):
        return compile_model(obj, tuple(args)).n_outputs
    try:
        return compile_model(obj).n_outputs
    except CompileError:        # needs its inputs to compile: it is compiled when called
        return None


