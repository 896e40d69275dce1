"""Optional on-disk cache of generated sources (``FLUX_COMPILE_CACHE_DIR``).

An entry is the generated module text plus a JSON sidecar: the library version,
the hash of every source that was inlined (re-checked before use), the names the
module needs (module + qualified name, re-imported on load) and the line map for
error messages. Anything that cannot be re-imported is simply not cached.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os

from ._version import __version__
from .ir import Loc


def directory():
    d = os.environ.get("FLUX_COMPILE_CACHE_DIR")
    return d or None


def entry_key(parts):
    return hashlib.sha256(repr((__version__,) + tuple(parts)).encode()).hexdigest()[:32]


def _locate(obj):
    mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not mod or not qual or "<" in qual:
        return None
    try:
        got = importlib.import_module(mod)
        for part in qual.split("."):
            got = getattr(got, part)
    except (ImportError, AttributeError):
        return None
    return [mod, qual] if got is obj else None


def _resolve(mod, qual):
    got = importlib.import_module(mod)
    for part in qual.split("."):
        got = getattr(got, part)
    return got


def _src_hash(fn):
    try:
        return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()
    except (OSError, TypeError):
        return None


def store(key, compiled, namespace_objects, inlined):
    d = directory()
    if d is None:
        return False
    names = {}
    for name, obj in namespace_objects.items():
        if name in ("np", "fc", "Retrace"):
            continue
        where = _locate(obj)
        if where is None:
            return False
        names[name] = where
    deps = []
    for fn in inlined:
        where, h = _locate(fn), _src_hash(fn)
        if where is None or h is None:
            return False
        deps.append([where[0], where[1], h])
    meta = {
        "version": __version__, "names": names, "deps": deps, "n_outputs": compiled.n_outputs,
        "input_names": compiled.input_names,
        "state_names": compiled.state_names,
        "linemap": {str(k): [v.filename, v.lineno, v.col, v.text, v.owner] for k, v in compiled.linemap.items()},
    }
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, key + ".py"), "w") as f:
        f.write(compiled.source)
    with open(os.path.join(d, key + ".json"), "w") as f:
        json.dump(meta, f)
    return True


def load(key):
    """``(source, namespace objects, meta)`` if a valid entry exists, else None."""
    d = directory()
    if d is None:
        return None
    src_path, meta_path = os.path.join(d, key + ".py"), os.path.join(d, key + ".json")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        with open(src_path) as f:
            source = f.read()
        if meta.get("version") != __version__:
            return None
        for mod, qual, h in meta["deps"]:
            if _src_hash(_resolve(mod, qual)) != h:
                return None
        objects = {name: _resolve(mod, qual) for name, (mod, qual) in meta["names"].items()}
        from .errors import Retrace
        objects["Retrace"] = Retrace
    except (OSError, ValueError, KeyError, ImportError, AttributeError):
        return None
    meta["linemap"] = {int(k): Loc(*v) for k, v in meta["linemap"].items()}
    meta["deps"] = [(vars(importlib.import_module(mod)), qual, _resolve(mod, qual))
                    for mod, qual, _ in meta["deps"] if "." not in qual]
    return source, objects, meta
