"""``fc.train_step``'s generated steps in the disk cache (``FLUX_COMPILE_CACHE_DIR``).

An entry is a :mod:`diskcache` entry like a model's, under the same rules: its name digests
the library, NumPy and Python, the step's structure key (model classes and attribute tokens,
input kinds, loss, optimiser class, hyper-parameter and slot names, Param sharing) with the
optimiser's update text (``opt.block()``) and the user's derivative rules; its manifest
holds, by content, the model classes, the loss, the optimiser class and every function the
trace inlined; its guards and run-time reads are :mod:`diskguards`' encoding, rooted at the
traced objective with the step's arguments. A hit is used only when every digest matches
and every guard holds for these arguments; anything else is a miss (and a new build).
"""
from __future__ import annotations

import sys
import types

import numpy as np

from . import diskcache, diskguards
from .diskdigest import Uncacheable, locate
from .guards import compile_checks, compile_reader
from .sourcecache import compile_source, unique_filename


def step_key(shared_key, model, opt):
    """``(entry name, classes and functions the key names)``; raises :class:`Uncacheable`.
    ``shared_key``'s first part, the rule generation, is this process's: the rules enter by
    content (``diskcache.entry_key``)."""
    roots = [type(opt)]
    parts = (_portable(shared_key[1:], roots), [str(line) for line in opt.block()])
    return diskcache.entry_key(type(model), ("train_step", parts)), roots


def _portable(obj, roots):
    """The key with classes and functions replaced by where they live (kept in ``roots``)."""
    if isinstance(obj, (tuple, list)):
        return tuple(_portable(x, roots) for x in obj)
    if obj is types.FunctionType:
        return ("type", "function")
    if isinstance(obj, (type, types.FunctionType)):
        roots.append(obj)
        return ("type" if isinstance(obj, type) else "fn",) + tuple(locate(obj))
    return obj


def load(shared_key, model, opt, fn, args):
    """The parts of a stored step valid for ``fn(*args)`` as a dict (``source``, ``fn``,
    ``filename``, ``linemap``, ``trainable_paths``, ``outside_paths``, ``check``,
    ``reader``, ``calls``, ``label``), or None (a miss, or no disk cache)."""
    where = diskcache.usable_directory()
    if where is None:
        return None
    try:
        dkey, _ = step_key(shared_key, model, opt)
    except Exception:           # Uncacheable, or a key part that cannot be named: no disk entry
        return None
    hit = diskcache.load(where, dkey, type(model), lambda meta: _run_time(meta, fn, args))
    if hit is None:
        return None
    source, objects, meta = hit
    try:
        extra = meta["extra"]
        baked, free = diskguards.decode(extra, _run_time(meta, fn, args), fn)
        check = compile_checks([(path, kind, expected) for (path, kind), expected in baked.items()])
        if not check(fn, args):
            return None
        parts = dict(trainable_paths=_paths(extra["trainable"]), outside_paths=_paths(extra["outside"]),
                     calls=bool(extra["calls"]), label=str(extra["label"]), check=check,
                     reader=compile_reader(free))
    except (Uncacheable, KeyError, TypeError, ValueError, IndexError):
        return None
    filename = unique_filename(parts["label"])
    ns = compile_source(source, filename, dict(objects, np=np, fc=sys.modules["flux_compile"]),
                        diskcache.stored_code(meta))
    if not isinstance(ns.get("step"), types.FunctionType):
        return None
    return dict(parts, source=source, fn=ns["step"], filename=filename, linemap=meta["linemap"])


def _paths(data):
    out = []
    for path in data:
        if not all(type(f) in (str, int) for f in path):
            raise TypeError("a bad field path")
        out.append(tuple(path))
    return out


def _run_time(meta, fn, args):
    try:
        return compile_reader(diskguards.decode_paths(meta["extra"]["free"]))(fn, args)
    except Uncacheable:
        raise
    except Exception:
        raise Uncacheable("a run-time input cannot be read") from None


def store(shared_key, model, opt, fn, args, module, built):
    """Write ``module`` (a new build; ``built``: its ``guards``, ``free_paths``, ``inlined``
    and ``namespace``); nothing when it cannot be cached."""
    where = diskcache.usable_directory()
    if where is None:
        return False
    record = types.SimpleNamespace(
        guards=built["guards"], free_paths=built["free_paths"], read_free=module.read_free,
        inlined=list(built["inlined"]), namespace_objects=_objects(built["namespace"], module.filename),
        deps=(), n_outputs=None, input_names=[], state_names=[], guarded=False,
        linemap=module.line_locs, source=module.source, filename=module.filename)
    try:
        dkey, roots = step_key(shared_key, model, opt)
        extra = diskguards.encode(record, fn, args)
        run_time = module.read_free(fn, args)
    except Exception:               # Uncacheable, or a value no longer readable: store nothing
        return False
    extra.update(trainable=[list(p) for p in module.trainable_paths],
                 outside=[list(p) for p in module.outside_paths],
                 calls=bool(module.calls), label=module.label)
    return diskcache.store(where, dkey, type(model), (), record, extra, run_time, also=roots)


def _objects(namespace, filename):
    """The objects the generated module binds (not its own functions, not ``__builtins__``)."""
    return {k: v for k, v in namespace.items() if not k.startswith("__") and not (
        isinstance(v, types.FunctionType) and v.__code__.co_filename == filename)}
