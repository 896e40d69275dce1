"""Optional on-disk cache of generated sources (``FLUX_COMPILE_CACHE_DIR``).

One entry is one file, ``<key>.py``: a header line with an HMAC, a line of JSON
metadata (with the module's code object, marshalled, for this Python only), then the
generated module text. ``<key>`` digests everything known before compiling: the library
(version, and size and modification time of each of its files), NumPy and Python
versions, the class, the in-memory cache key (``forward``'s code digest, model
structure, input specs, compile-time settings, by value) and every derivative rule,
nondiff and complex-output declaration the user registered (rules by content). The
metadata lists, with a content digest each, what the compile read besides: the class
(all its methods and class constants), every function it inlined, and through them
every global, default and closure value they name (functions by their code, arrays by
their bytes, except the values the generated code reads at run time: by kind, see
:func:`run_time_memo`). Before an entry is used, each digest is recomputed from the
live objects; any difference is a miss. No source file is read on a hit. The variant's
guards are kept in the metadata too (``meta["extra"]``, see diskguards.py). The
digests themselves are diskdigest.py's; this module keeps the directory, the key, the
entry format and the storage; ``fc.train_step``'s entries are diskstep.py's.

Threat model. Someone who can write the cache directory but cannot read the
per-user secret key (``$XDG_CONFIG_HOME/flux_compile/cache.key``, else
``~/.config/flux_compile/cache.key``; created 0600, never inside the cache
directory) cannot make the compiler run code it did not generate for these
exact inputs: the entry's MAC (HMAC-SHA256 over key, metadata and source) fails,
and the entry is a miss. Names in the metadata are bound only from NumPy,
flux_compile, or user functions already imported whose content digest matches
what the compile saw; nothing is ever imported. Not covered: someone who can
write the user's own source files, config directory or Python installation
(they can run code anyway), and denial of service (deleting entries only costs
a recompile). A directory writable by group or others, or owned by another
user, is refused. Entries are written atomically (a unique temporary file, then
``os.replace``), 0600 in a 0700 directory; a bad entry (truncated, malformed, bad
MAC, stale digest, unknown name) is a miss and is overwritten. An unusable
directory means running uncached, with one warning per directory and process.
``FLUX_COMPILE_CACHE_MAX_MB`` (default 256) bounds the directory; the least
recently used entries (by mtime, refreshed on every hit) go first.
"""
from __future__ import annotations

import base64
import builtins
import hashlib
import hmac
import importlib.util
import json
import marshal
import os
import re
import secrets
import stat
import sys
import tempfile
import types
import warnings

import numpy as np

from ._version import __version__
from .buffers import Buffers
from .diskdigest import (  # noqa: F401  (locate, resolve: still importable from here)
    Uncacheable, _hash, _is_library, _is_numpy, canonical, digest, locate, resolve)
from .ir import Loc
from .sourcecache import code_of

FORMAT = "2"
DEFAULT_MAX_MB = 256.0
_MAGIC = "# flux_compile cache entry "
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class Unusable(Exception):
    """The cache directory (or the secret key) cannot be used safely."""


# ------------------------------------------------------------------------------
# the directory and the secret key

_posix = hasattr(os, "getuid")      # elsewhere there are no owners and mode bits to check
_checked = {}       # directory -> its secret key (bytes), or None when unusable (warned once)


def directory():
    d = os.environ.get("FLUX_COMPILE_CACHE_DIR")
    return d or None


def usable_directory():
    """``(directory, secret key)`` when the disk cache is on and safe to use, else None."""
    d = directory()
    if d is None:
        return None
    d = os.path.abspath(d)
    if d not in _checked:
        try:
            _checked[d] = _prepare(d)
        except (OSError, ValueError, Unusable) as e:      # ValueError: a NUL in the path
            disable(d, e)
    key = _checked[d]
    return (d, key) if key is not None else None


def disable(d, reason):
    """Stop using ``d`` for the rest of the process, with one warning."""
    if _checked.get(d, False) is None:
        return
    _checked[d] = None
    warnings.warn(f"FLUX_COMPILE_CACHE_DIR={d} is not usable ({reason}); running without the disk cache",
                  RuntimeWarning, stacklevel=4)


def _prepare(d):
    os.makedirs(d, mode=0o700, exist_ok=True)
    _check_private_dir(d, "the cache directory")
    fd, probe = tempfile.mkstemp(dir=d, prefix=".probe-")     # is it really writable?
    os.close(fd)
    os.unlink(probe)
    return _secret_key(d)


def _check_private_dir(d, what):
    st = os.stat(d)
    if not stat.S_ISDIR(st.st_mode):
        raise Unusable(f"{what} is not a directory")
    if not _posix:
        return
    if st.st_uid != os.getuid():
        raise Unusable(f"{what} {d} is owned by another user")
    if st.st_mode & 0o022:
        raise Unusable(f"{what} {d} is writable by group or others; chmod 700 it")


def key_path():
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(os.path.abspath(base), "flux_compile", "cache.key")


def _secret_key(cache_dir):
    path = key_path()
    kdir = os.path.dirname(path)
    real_cache = os.path.realpath(cache_dir)
    if os.path.realpath(kdir) == real_cache or os.path.realpath(kdir).startswith(real_cache + os.sep):
        raise Unusable(f"the secret key {path} would be inside the cache directory")
    os.makedirs(kdir, mode=0o700, exist_ok=True)
    _check_private_dir(kdir, "the key directory")
    if not os.path.exists(path):
        fd, tmp = tempfile.mkstemp(dir=kdir, prefix=".key-")      # 0600 whatever the umask
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)          # atomic: the first process to get here wins
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        st = os.fstat(fd)
        if _posix and (st.st_uid != os.getuid() or st.st_mode & 0o077):
            raise Unusable(f"the secret key {path} must be a 0600 file of this user")
        text = os.read(fd, 1024).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    if len(text) != 64:
        raise Unusable(f"the secret key {path} is malformed; delete it to make a new one")
    return bytes.fromhex(text)


def max_bytes():
    try:
        mb = float(os.environ.get("FLUX_COMPILE_CACHE_MAX_MB", DEFAULT_MAX_MB))
    except ValueError:
        mb = DEFAULT_MAX_MB
    return int(max(mb, 0.0) * 2 ** 20)


# ------------------------------------------------------------------------------
# the library's fingerprint

def _library_fingerprint():
    """The version and, per file of the package, its size and modification time (what Python
    itself checks before it reuses a ``.pyc``): any edit of the library is a new fingerprint,
    and no file is read."""
    if not _fingerprint:
        h = hashlib.sha256(__version__.encode())
        for rel, st in _python_files(_PACKAGE_DIR, ""):
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        _fingerprint.append(h.hexdigest())
    return _fingerprint[0]


def _python_files(root, prefix):
    """``(relative path, stat)`` of every ``.py`` file under ``root``, in a fixed order."""
    with os.scandir(root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            if e.name != "__pycache__":
                yield from _python_files(e.path, prefix + e.name + "/")
        elif e.name.endswith(".py"):
            yield prefix + e.name, e.stat()


_fingerprint = []


def _user_rules():
    """The derivative rules the user registered (by content), the nondiff primitives and those
    declared to make complex outputs."""
    rules, named, nondiff = _registered_by_user()
    return sorted((name, digest(rule)) for name, rule in named), nondiff


_user_memo = {}     # registry generation and sizes -> (RULES module, [(name, user rule)], nondiff)


def _registered_by_user():
    """The user's entries of the registry (a walk of ~300 rules), found again only after a
    registration (every one bumps ``GENERATION``)."""
    from . import rules
    stamp = (rules.GENERATION[0], len(rules.RULES), len(rules.NONDIFF), len(rules.COMPLEX_OUTPUT))
    if _user_memo.get("stamp") != stamp:
        named = [(f"{getattr(prim, '__module__', '?')}.{getattr(prim, '__qualname__', getattr(prim, '__name__', '?'))}",
                  rule) for prim, rule in list(rules.RULES.items()) if not _is_library(rule)]
        nondiff = sorted(f"{getattr(p, '__module__', '?')}.{getattr(p, '__name__', '?')}" for p in rules.NONDIFF)
        nondiff += ["complex output"] + sorted(      # fc.complex_output: gradients take the real part
            f"{getattr(p, '__module__', '?')}.{getattr(p, '__name__', '?')}" for p in rules.COMPLEX_OUTPUT)
        _user_memo.update(stamp=stamp, value=(rules, named, nondiff))
    return _user_memo["value"]


def entry_key(cls, key_parts):
    """The entry name for compiling ``cls`` under the in-memory key ``key_parts`` (without the
    class object); raises :class:`Uncacheable`."""
    parts = [FORMAT, _library_fingerprint(), np.__version__, sys.version_info[:3], cls.__module__,
             cls.__qualname__, canonical(tuple(key_parts)), _user_rules()]
    return _hash(*parts)[:40]


# ------------------------------------------------------------------------------
# entries

def _models_in(token):
    """``(module, qualname)`` of the classes and functions named in a model signature."""
    if isinstance(token, tuple):
        if len(token) == 3 and token[0] in ("model", "fn") and all(isinstance(t, str) for t in token[1:]):
            yield token[1], token[2]
        for t in token:
            yield from _models_in(t)


def run_time_memo(values):
    """A digest memo in which the values compiled code reads at run time (arrays and floats at
    its free paths) stand for their kind only: a new value is an input, not a change of code."""
    memo = {"_keep": []}
    for v in values:
        if type(v) is not float and not (isinstance(v, np.ndarray) and not v.dtype.hasobject):
            raise Uncacheable(f"a run-time input is a {type(v).__qualname__}")
        kind = "float" if type(v) is float else f"{v.dtype.str}:{v.ndim}:{[d == 1 for d in v.shape]}"
        memo[id(v)] = "run-time " + kind
        memo["_keep"].append(v)
    return memo


def _manifest(cls, key_parts, compiled, run_time=(), also=()):
    """What the compile read, located and digested: ``[[module, qualname, digest], ...]``
    (``run_time``: the values read at run time, digested by kind; ``also``: more classes and
    functions the key names)."""
    roots = {id(cls): cls}
    for obj in also:
        roots.setdefault(id(obj), obj)
    guarded_code = {id(e) for _, kind, e in getattr(compiled, "guards", ()) if kind == "code"}
    for fn in getattr(compiled, "inlined", ()):
        if _has_name(fn) or id(fn.__code__) not in guarded_code:
            roots.setdefault(id(fn), fn)
        # else (made by a call: ``make_scaler(0.5)``): its code guard keeps its digest (diskguards)
    for mod, qual in _models_in(tuple(key_parts)):
        obj = resolve(mod, qual)
        roots.setdefault(id(obj), obj)
    memo = run_time_memo(run_time)
    return [locate(obj) + [digest(obj, memo)] for obj in roots.values() if not _is_library(obj)]


def _has_name(obj):
    try:
        locate(obj)
    except Uncacheable:
        return False
    return True


def _names(compiled):
    """The generated module's globals besides np / fc / Retrace, as ``name: [kind, module,
    qualname, digest]``; only NumPy, flux_compile and user functions."""
    out = {}
    for name, obj in compiled.namespace_objects.items():
        if name in ("np", "fc", "Retrace") or isinstance(obj, Buffers):
            continue        # a Buffers pool is made by the module's own text (buffers = Buffers())
        where = locate(obj)
        if _is_numpy(where[0]):
            out[name] = ["numpy"] + where + [""]
        elif _is_library(obj):
            out[name] = ["lib"] + where + [""]
        elif isinstance(obj, types.FunctionType) and _user_module(where[0]):
            out[name] = ["user"] + where + [digest(obj)]
        elif _is_safe_builtin(*where) and getattr(builtins, where[1]) is obj:
            out[name] = ["builtin"] + where + [""]
        else:
            raise Uncacheable(f"{name} is not a function flux_compile binds")
    return out


# Builtins generated code may call (bound under another name when the user's code takes
# theirs, as ``slice_1``); nothing that reads files, imports or evaluates text.
SAFE_BUILTINS = frozenset({
    "slice", "range", "len", "abs", "min", "max", "sum", "float", "int", "bool", "complex",
    "tuple", "list", "dict", "zip", "enumerate", "reversed", "sorted", "isinstance", "round",
    "pow", "divmod", "all", "any", "map", "Ellipsis",
})


def _is_safe_builtin(mod, qual):
    return mod == "builtins" and qual in SAFE_BUILTINS


def _user_module(mod):
    top = mod.split(".")[0]
    return top not in getattr(sys, "stdlib_module_names", ()) and top not in ("numpy", "flux_compile")


def _deps(compiled):
    out = []
    for ns, name, fn in getattr(compiled, "deps", ()):
        mod = ns.get("__name__") if isinstance(ns, dict) else None
        if not isinstance(mod, str) or getattr(sys.modules.get(mod), "__dict__", None) is not ns:
            raise Uncacheable("a dependency outside a module")
        out.append([mod, name])
    return out


def store(where, dkey, cls, key_parts, compiled, extra=None, run_time=(), also=()):
    """Write the entry for ``compiled`` (``extra``: JSON kept, authenticated, as
    ``meta["extra"]``; ``run_time``: the values its code reads at run time, see
    :func:`run_time_memo`; ``also``: classes and functions to check besides ``cls``);
    False when it cannot be cached (or the write failed)."""
    d, secret = where
    try:
        meta = {
            "key": dkey, "manifest": _manifest(cls, key_parts, compiled, run_time, also),
            "names": _names(compiled),
            "deps": _deps(compiled), "n_outputs": compiled.n_outputs,
            "input_names": compiled.input_names, "state_names": compiled.state_names,
            "guarded": bool(getattr(compiled, "guarded", False)),
            "linemap": {str(k): [v.filename, v.lineno, v.col, v.text, v.owner]
                        for k, v in compiled.linemap.items()},
            "code": _code_record(compiled.filename, compiled.source),
            "extra": extra,
        }
        meta_line = json.dumps(meta, separators=(",", ":"))
    except (Uncacheable, TypeError, ValueError, AttributeError):
        return False
    body = meta_line + "\n" + compiled.source
    text = f"{_MAGIC}{FORMAT} {_mac(secret, dkey, body)}\n# {body}"
    try:
        _write_atomic(d, dkey + ".py", text)
        _evict(d, keep=dkey + ".py")
    except OSError as e:
        disable(d, e)
        return False
    return True


def _code_record(filename, source):
    """The module code the source was compiled to, marshalled (for this Python's bytecode
    only): a hit runs it without compiling the text again. None when it is not at hand."""
    code = code_of(filename, source)
    if code is None:
        return None
    return [importlib.util.MAGIC_NUMBER.hex(), base64.b64encode(marshal.dumps(code)).decode("ascii")]


def stored_code(meta):
    """The module code of a verified entry, or None (another Python, or none kept): the
    caller then compiles the source. Only ever called after the entry's MAC checked out."""
    record = meta.get("code")
    try:
        if not record or record[0] != importlib.util.MAGIC_NUMBER.hex():
            return None
        code = marshal.loads(base64.b64decode(record[1], validate=True))
    except (ValueError, TypeError, EOFError, IndexError):
        return None
    return code if isinstance(code, types.CodeType) else None


def _mac(secret, dkey, body):
    return hmac.new(secret, f"{FORMAT}\0{dkey}\0".encode() + body.encode(), hashlib.sha256).hexdigest()


def _write_atomic(d, name, text):
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".part")     # 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, os.path.join(d, name))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


_ENTRY = re.compile(r"[0-9a-f]{40}\.py")           # nothing else in the directory is ever deleted
_TEMP = re.compile(r"\.tmp-\w+\.part")


def _evict(d, keep):
    """Delete least-recently-used entries (and stale temporaries) beyond ``max_bytes()``."""
    import time
    limit, now = max_bytes(), time.time()
    entries, total = [], 0
    with os.scandir(d) as it:
        for e in it:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if _TEMP.fullmatch(e.name) and now - st.st_mtime > 3600:
                _unlink(e.path)
            elif _ENTRY.fullmatch(e.name) and stat.S_ISREG(st.st_mode):
                entries.append((e.name != keep, st.st_mtime, e.path, st.st_size))
                total += st.st_size
    for _, _, path, size in sorted(entries, key=lambda t: (not t[0], t[1])):
        if total <= limit:
            break
        _unlink(path)
        total -= size


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def load(where, dkey, cls, run_time=None):
    """``(source, namespace objects, meta)`` for a valid entry, else None (a miss).
    ``run_time(meta)``: the live values the entry's code would read at run time (raises
    :class:`Uncacheable` when they cannot be read)."""
    d, secret = where
    path = os.path.join(d, dkey + ".py")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        meta, source = _verified(text, secret, dkey)
        objects = _check(meta, cls, run_time(meta) if run_time is not None else ())
    except (Uncacheable, ValueError, KeyError, TypeError, IndexError):
        return None
    try:
        os.utime(path)          # recently used
    except OSError:
        pass
    return source, objects, meta


def _verified(text, secret, dkey):
    header, sep, rest = text.partition("\n")
    if not sep or not header.startswith(_MAGIC) or not rest.startswith("# "):
        raise ValueError("not an entry")
    fmt, _, mac = header[len(_MAGIC):].partition(" ")
    body = rest[2:]
    if fmt != FORMAT or not hmac.compare_digest(mac, _mac(secret, dkey, body)):
        raise ValueError("bad MAC")
    meta_line, sep, source = body.partition("\n")
    meta = json.loads(meta_line)
    if not sep or meta["key"] != dkey:
        raise ValueError("bad entry")
    return meta, source


def _check(meta, cls, run_time=()):
    """The namespace objects, after checking every digest against the live objects."""
    memo = run_time_memo(run_time)
    for mod, qual, want in meta["manifest"]:
        obj = cls if [mod, qual] == [cls.__module__, cls.__qualname__] else resolve(mod, qual)
        if digest(obj, memo) != want:
            raise Uncacheable(f"{mod}.{qual} changed")
    objects = {}
    for name, (kind, mod, qual, want) in meta["names"].items():
        ok = {"numpy": _is_numpy(mod), "lib": mod == "flux_compile" or mod.startswith("flux_compile."),
              "user": _user_module(mod), "builtin": _is_safe_builtin(mod, qual)}.get(kind, False)
        if not ok:
            raise Uncacheable(f"{name} is bound outside numpy / flux_compile / user code")
        obj = resolve(mod, qual)
        if kind == "user" and (not isinstance(obj, types.FunctionType) or digest(obj) != want):
            raise Uncacheable(f"{mod}.{qual} changed")
        objects[name] = obj
    from .errors import Retrace
    objects["Retrace"] = Retrace
    meta["linemap"] = {int(k): Loc(*v) for k, v in meta["linemap"].items()}
    meta["deps"] = [(vars(sys.modules[mod]), name, vars(sys.modules[mod]).get(name)) for mod, name in meta["deps"]]
    return objects
