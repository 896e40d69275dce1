"""Guards and run-time reads of a compiled variant, written to and read back from a disk entry.

A disk entry (see :mod:`diskcache`) keeps, in its authenticated metadata, the variant's
guards and the paths of the values it reads at run time, so a later process reuses it only
while they hold (``Compiled.current(root, args)``, exactly as in memory). Everything is
plain JSON that is read without running code:

* a path is a list of steps (``["attr", name]``, ``["item", "s"|"i", key]``, ...); a step
  naming a live object (``("obj", ref)``, a derivative rule) cannot be written;
* an ``"eq"`` token is a tree of ``[type name, value]`` with type names from a fixed table
  (:data:`_SCALAR_TYPES`, :data:`_NUMPY_SCALARS`); floats stay reprs, as in the token;
* ``"len"``, ``"keys"``, ``"has"``, ``"array"`` are written by value;
* ``"code"``, ``"is"``, ``"type"`` refer to objects: written as ``[module, qualname,
  digest]`` and bound again only among NumPy, flux_compile, a few builtins and user
  modules already imported, a user object only when its content digest matches; an
  inlined function without a name (``HALF = make_scaler(0.5)``) is ``["@path", "",
  digest]``: the user's function read at the guard's own path, when its digest matches;
* values read at run time (floats, arrays at free paths) enter every digest by kind only;
* ``"method"`` and ``"bound"`` (a method bound to a particular object) cannot be written.

Anything that cannot be written raises :class:`Uncacheable` (the variant is not stored);
anything that cannot be read back raises it too (the entry is a miss).
"""
from __future__ import annotations

import builtins
import sys
import types

import numpy as np

from .diskcache import SAFE_BUILTINS, _has_name, _user_module, run_time_memo
from .diskdigest import Uncacheable, _is_library, _is_numpy, digest, locate, resolve
from .guards import _ref, compile_reader

AT_PATH = "@path"       # an inlined function with no name (a closure made by a call): its guard's path

_SCALAR_TYPES = {"NoneType": type(None), "bool": bool, "int": int, "str": str, "bytes": bytes,
                 "complex": complex, "float": float}
_NUMPY_SCALARS = {t.__name__: t for t in (
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64, np.longdouble, np.complex64, np.complex128, np.clongdouble,
    np.str_, np.bytes_)}
_CONTAINERS = {"tuple": tuple, "list": list, "frozenset": frozenset}
_OBJECT_KINDS = ("code", "is", "type")


# ------------------------------------------------------------------------------
# writing

def encode(compiled, root, args=()):
    """``{"guards": [...], "free": [...]}`` for ``compiled``; raises :class:`Uncacheable`."""
    memo = run_time_memo(compiled.read_free(root, args))
    guards = []
    for path, kind, expected in compiled.guards:
        value = None
        if kind in _OBJECT_KINDS:
            try:
                value = compile_reader([path])(root, args)[0]
            except Exception:
                raise Uncacheable(f"cannot read {path} again") from None
        guards.append([encode_path(path), kind, _encode_expected(kind, expected, value, memo)])
    return {"guards": guards, "free": [encode_path(p) for p in compiled.free_paths]}


def encode_path(path):
    return [_encode_step(step) for step in path]


def _encode_step(step):
    k = step[0]
    if k == "cls" and len(step) == 1:
        return ["cls"]
    if k in ("attr", "global", "kwdefault") and type(step[1]) is str:
        return [k, step[1]]
    if k in ("arg", "default") and type(step[1]) is int:
        return [k, step[1]]
    if k == "cell" and type(step[1]) is int and type(step[2]) is str:
        return ["cell", step[1], step[2]]
    if k == "item" and type(step[1]) in (str, int):
        return ["item", "s" if type(step[1]) is str else "i", step[1]]
    raise Uncacheable(f"a path step {k!r} cannot be written")


def encode_token(tok):
    """A value token (guards.value_token) as JSON; raises :class:`Uncacheable`."""
    if tok == ("...",):
        return ["..."]
    t = tok[0]
    if t is float or t is str or t is bool or t is type(None):
        return [t.__name__, tok[1]]
    if t is int:
        return ["int", str(tok[1])]
    if t is bytes:
        return ["bytes", tok[1].hex()]
    if t is complex:
        return ["complex", repr(tok[1].real), repr(tok[1].imag)]
    if t is np.dtype:
        return ["dtype", tok[1]]
    if isinstance(t, type) and _NUMPY_SCALARS.get(t.__name__) is t:
        return ["np." + t.__name__, tok[1]]
    if t is slice or t in _CONTAINERS.values():
        return [t.__name__] + [encode_token(x) for x in tok[1:]]
    if t is dict:
        return ["dict"] + [[encode_token(k), encode_token(v)] for k, v in tok[1:]]
    raise Uncacheable(f"a constant of type {t!r} cannot be written")


def _encode_expected(kind, expected, value, memo):
    if kind == "eq":
        return encode_token(expected)
    if kind == "keys":
        return [encode_token(k) for k in expected]
    if kind == "len":
        if expected[0] not in (tuple, list):
            raise Uncacheable("a length guard on another type")
        return [expected[0].__name__, expected[1]]
    if kind == "has":
        return [expected[0], bool(expected[1])]
    if kind == "array":
        return ["float"] if expected == (float,) else [expected[0], expected[1], list(expected[2])]
    if kind == "param":
        return [bool(expected[0]), [int(d) for d in expected[1]]]
    if kind == "code":
        if not isinstance(value, types.FunctionType) or value.__code__ is not expected:
            raise Uncacheable("an inlined function that is no longer where it was read")
        if not _has_name(value) and _user_module(value.__module__):
            return [AT_PATH, "", digest(value, memo)]       # made by a call: found by its path
        return _encode_object(value, memo)
    if kind == "is":
        if value is not expected():
            raise Uncacheable("an object that is no longer where it was read")
        return _encode_object(value, memo)
    if kind == "type":
        return _encode_object(expected(), memo)
    raise Uncacheable(f"a {kind!r} guard (an object bound to one process) cannot be written")


def _encode_object(obj, memo):
    """``[module, qualname, digest]``: the digest ("" for NumPy, flux_compile and builtins);
    ``[name, "", "module"]`` for a module."""
    if isinstance(obj, types.ModuleType):
        if sys.modules.get(obj.__name__) is not obj or not (_is_numpy(obj.__name__) or _user_module(
                obj.__name__) or obj.__name__.split(".")[0] == "flux_compile"):
            raise Uncacheable(f"module {obj.__name__} is outside numpy / flux_compile / user code")
        return [obj.__name__, "", "module"]
    mod, qual = locate(obj)
    if _is_numpy(mod) or _is_library(obj) or _is_safe_builtin(mod, qual):
        return [mod, qual, ""]
    if not _user_module(mod):
        raise Uncacheable(f"{mod}.{qual} is outside numpy / flux_compile / user code")
    return [mod, qual, digest(obj, memo)]


def _is_safe_builtin(mod, qual):
    return mod == "builtins" and qual in SAFE_BUILTINS


# ------------------------------------------------------------------------------
# reading

def decode(data, run_time=(), root=None):
    """``({(path, kind): expected}, free_paths)`` from :func:`encode`'s output, with live
    objects bound through the allowlist (``run_time``: the values the code reads at run time,
    digested by kind as in :func:`encode`; ``root``: the instance, for functions found by
    their path); raises :class:`Uncacheable` (a miss)."""
    memo = run_time_memo(run_time)
    baked = {}
    try:
        for path, kind, expected in data["guards"]:
            path = decode_path(path)
            if kind == "code" and expected[0] == AT_PATH:
                baked[(path, kind)] = _function_at(path, root, expected, memo).__code__
            else:
                baked[(path, kind)] = _decode_expected(kind, expected, memo)
        free = [decode_path(p) for p in data["free"]]
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        raise Uncacheable(f"malformed guards ({e})") from None
    return baked, free


def decode_paths(paths):
    try:
        return [decode_path(p) for p in paths]
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        raise Uncacheable(f"malformed paths ({e})") from None


def decode_path(steps):
    path = tuple(_decode_step(s) for s in steps)
    if any(s[0] == "arg" for s in path[1:]):
        raise Uncacheable("an argument step inside a path")
    return path


def _decode_step(s):
    k = s[0]
    if k == "cls" and len(s) == 1:
        return ("cls",)
    if k in ("attr", "global", "kwdefault") and len(s) == 2 and type(s[1]) is str:
        return (k, s[1])
    if k in ("arg", "default") and len(s) == 2 and type(s[1]) is int:
        return (k, s[1])
    if k == "cell" and len(s) == 3 and type(s[1]) is int and type(s[2]) is str:
        return ("cell", s[1], s[2])
    if k == "item" and len(s) == 3 and (s[1], type(s[2])) in (("s", str), ("i", int)):
        return ("item", s[2])
    raise Uncacheable(f"a bad path step {s!r}")


def decode_token(e):
    name = e[0]
    if name == "..." and len(e) == 1:
        return ("...",)
    if name in ("float", "str") and len(e) == 2 and type(e[1]) is str:
        if name == "float":
            float(e[1])                     # a float's repr, as value_token keeps it
        return (_SCALAR_TYPES[name], e[1])
    if name == "bool" and len(e) == 2 and type(e[1]) is bool:
        return (bool, e[1])
    if name == "NoneType" and e[1:] == [None]:
        return (type(None), None)
    if name == "int" and len(e) == 2 and type(e[1]) is str:
        return (int, int(e[1]))
    if name == "bytes" and len(e) == 2:
        return (bytes, bytes.fromhex(e[1]))
    if name == "complex" and len(e) == 3:
        return (complex, complex(float(e[1]), float(e[2])))
    if name == "dtype" and len(e) == 2 and type(e[1]) is str:
        return (np.dtype, e[1])
    if name.startswith("np.") and name[3:] in _NUMPY_SCALARS and len(e) == 2 and type(e[1]) is str:
        return (_NUMPY_SCALARS[name[3:]], e[1])
    if name == "slice" and len(e) == 4:
        return (slice,) + tuple(decode_token(x) for x in e[1:])
    if name in _CONTAINERS:
        return (_CONTAINERS[name],) + tuple(decode_token(x) for x in e[1:])
    if name == "dict":
        return (dict,) + tuple((decode_token(k), decode_token(v)) for k, v in e[1:])
    raise Uncacheable(f"a bad constant {name!r}")


def _decode_expected(kind, e, memo):
    if kind == "eq":
        return decode_token(e)
    if kind == "keys":
        return tuple(decode_token(k) for k in e)
    if kind == "len" and e[0] in ("tuple", "list") and type(e[1]) is int:
        return (_CONTAINERS[e[0]], e[1])
    if kind == "has" and type(e[0]) is str and type(e[1]) is bool:
        return (e[0], e[1])
    if kind == "array":
        if e == ["float"]:
            return (float,)
        if type(e[0]) is int and type(e[1]) is str and all(type(b) is bool for b in e[2]):
            return (e[0], e[1], tuple(e[2]))
    if kind == "param" and type(e[0]) is bool and all(type(d) is int for d in e[1]):
        return (e[0], tuple(e[1]))
    if kind in _OBJECT_KINDS:
        obj = _bind(e, memo)
        if kind == "code":
            if not isinstance(obj, types.FunctionType):
                raise Uncacheable("an inlined function that is not a function")
            return obj.__code__
        if kind == "type" and not isinstance(obj, type):
            raise Uncacheable("a type guard on something else")
        return _ref(obj)
    raise Uncacheable(f"a bad {kind!r} guard")


def _function_at(path, root, e, memo):
    """The user's function at ``path`` from ``root``, when its content digest is ``e[2]``."""
    if root is None or e[1] != "" or type(e[2]) is not str:
        raise Uncacheable("a function by path without a root")
    try:
        fn = compile_reader([path])(root, ())[0]
    except Exception:
        raise Uncacheable("an inlined function that is gone") from None
    if not isinstance(fn, types.FunctionType) or not _user_module(fn.__module__) or \
            digest(fn, memo) != e[2]:
        raise Uncacheable("an inlined function that changed")
    return fn


def _bind(e, memo):
    """The live object at ``[module, qualname, digest]``, through the allowlist only."""
    mod, qual, want = e
    if not (type(mod) is str and type(qual) is str and type(want) is str):
        raise Uncacheable("a bad object reference")
    if qual == "" and want == "module":
        if not (_is_numpy(mod) or _user_module(mod) or mod.split(".")[0] == "flux_compile"):
            raise Uncacheable(f"module {mod} is outside numpy / flux_compile / user code")
        if mod not in sys.modules:
            raise Uncacheable(f"module {mod} is not imported")
        return sys.modules[mod]
    if _is_safe_builtin(mod, qual):
        return getattr(builtins, qual)
    if _is_numpy(mod) or mod == "flux_compile" or mod.startswith("flux_compile."):
        obj = resolve(mod, qual)
        if not _is_numpy(mod) and not _is_library(obj):
            raise Uncacheable(f"{mod}.{qual} is not flux_compile's")
        return obj
    if not _user_module(mod) or not want:
        raise Uncacheable(f"{mod}.{qual} is outside numpy / flux_compile / user code")
    obj = resolve(mod, qual)
    if digest(obj, memo) != want:
        raise Uncacheable(f"{mod}.{qual} changed")
    return obj

