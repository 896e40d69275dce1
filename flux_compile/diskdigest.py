"""Content digests of what a compile read, for the disk cache's keys and entries.

``digest(obj)`` is a content digest of a value (functions by code, defaults, closure
cells and the globals they name; classes by their members; arrays by their bytes;
NumPy and flux_compile objects by where they live and their derivative rules);
``canonical(obj)`` the text under which the disk cache compares constants (the tokens'
walker with the disk policy); ``locate``/``resolve`` name an object by module and
qualname and find it again among modules already imported (never importing anything).
Anything that cannot be digested or located raises :class:`Uncacheable`.
"""
from __future__ import annotations

import builtins
import hashlib
import sys
import types

import numpy as np

from .parsing import code_digest
from .pytree import TreeDef
from .tokens import token


class Uncacheable(Exception):
    """The compile depends on something that cannot be digested or located: do not cache."""


def _is_library(obj):
    mod = getattr(obj, "__module__", None)
    return isinstance(mod, str) and (mod == "flux_compile" or mod.startswith("flux_compile."))


def _is_numpy(mod):
    return isinstance(mod, str) and (mod == "numpy" or mod.startswith("numpy."))


def resolve(mod, qual):
    """``mod.qual`` among modules already imported (never imports anything)."""
    got = sys.modules.get(mod)
    if got is None:
        raise Uncacheable(f"module {mod} is not imported")
    try:
        for part in qual.split("."):
            got = getattr(got, part)
    except AttributeError:
        raise Uncacheable(f"{mod}.{qual} does not exist") from None
    return got


def locate(obj):
    """``[module, qualname]`` under which ``obj`` itself can be found again."""
    mod = getattr(obj, "__module__", None)
    qual = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if not isinstance(mod, str) or not isinstance(qual, str) or "<" in qual:
        raise Uncacheable(f"{obj!r} has no importable name")
    if resolve(mod, qual) is not obj:
        raise Uncacheable(f"{mod}.{qual} is not {obj!r}")
    return [mod, qual]


def _code_names(code):
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _code_names(c)
    return names


def digest(obj, memo=None):
    """A content digest of a value the compile read; raises :class:`Uncacheable`."""
    memo = {} if memo is None else memo
    key = id(obj)
    if key in memo:
        return memo[key]
    memo[key] = "cycle"            # a reference back to an object being digested
    try:
        memo[key] = out = _digest(obj, memo)
    except BaseException:
        del memo[key]              # not "cycle" next time: it raises again
        raise
    memo.setdefault("_keep", []).append(obj)       # ids stay valid while memo lives
    return out


def _digest(obj, memo):
    if isinstance(obj, types.ModuleType):
        return "module:" + obj.__name__
    if isinstance(obj, types.MethodType):
        return _hash("method", digest(obj.__func__, memo), digest(obj.__self__, memo))
    if isinstance(obj, (types.FunctionType, type)) and _is_library(obj):
        return "lib:" + ".".join(locate(obj)) + _rule_part(obj, memo)
    if isinstance(obj, types.FunctionType):
        return _function_digest(obj, memo)
    if isinstance(obj, type):
        if _is_numpy(obj.__module__) or obj.__module__ == "builtins":
            return "type:" + ".".join(locate(obj))
        return _class_digest(obj, memo)
    if isinstance(obj, (types.BuiltinFunctionType, np.ufunc)) or callable(obj) and _is_numpy(
            getattr(obj, "__module__", None)):
        mod = getattr(obj, "__module__", None) or "builtins"
        return f"obj:{mod}.{getattr(obj, '__qualname__', None) or obj.__name__}" + _rule_part(obj, memo)
    return canonical(obj)


def _rule_part(fn, memo):
    from . import rules
    rule = rules.get_rule(fn)
    return (f"|rule:{digest(rule, memo)}" if rule is not None else "") + \
        ("|nondiff" if rules.is_nondiff(fn) else "")


def _function_digest(fn, memo):
    """By its code (everything its source compiled to: see ``code_digest``; a compile checks
    that the file still defines that code), defaults, closure cells and the globals it names."""
    parts = ["fn", fn.__module__, fn.__qualname__, code_digest(fn.__code__),
             [digest(v, memo) for v in fn.__defaults__ or ()],
             sorted((k, digest(v, memo)) for k, v in (fn.__kwdefaults__ or {}).items())]
    for cell in fn.__closure__ or ():
        try:
            parts.append(digest(cell.cell_contents, memo))
        except ValueError:
            parts.append("empty cell")
    glob, names = fn.__globals__, _code_names(fn.__code__)
    for name in sorted(names):
        if name in glob:
            parts.append((name, _named_digest(glob[name], names, memo)))
        elif not hasattr(builtins, name):
            parts.append((name, "unbound"))
    return _hash(*parts) + _rule_part(fn, memo)


def _stable_module(name):
    """NumPy, flux_compile and the standard library: covered by their versions in the key."""
    top = name.split(".")[0]
    return top in ("numpy", "flux_compile", "builtins") or top in getattr(sys, "stdlib_module_names", ())


def _named_digest(value, names, memo):
    """``digest(value)``; for a user module, with the attributes ``names`` may read from it
    (``cfg.SCALE`` is baked into the code like ``SCALE``)."""
    if not isinstance(value, types.ModuleType) or _stable_module(value.__name__):
        return digest(value, memo)
    key = ("module", id(value), frozenset(names))
    if key in memo:
        return memo[key]
    memo[key] = "cycle"
    attrs = vars(value)
    try:
        memo[key] = out = _hash("module", value.__name__, [(n, _named_digest(attrs[n], names, memo))
                                                           for n in sorted(names) if n in attrs])
    except BaseException:
        del memo[key]
        raise
    memo.setdefault("_keep", []).append(value)
    return out


def _class_digest(cls, memo):
    parts = ["class", cls.__module__, cls.__qualname__]
    for klass in cls.__mro__:
        if klass is object or _is_library(klass):
            parts.append(getattr(klass, "__qualname__", "?"))
            continue
        for name, value in sorted(vars(klass).items()):
            if name.startswith("__") and name.endswith("__") or name.startswith("_fc_"):
                continue            # _fc_*: flux_compile's own memos of forward (its signature)
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if isinstance(value, property):
                value = (value.fget, value.fset)
            try:
                parts.append((klass.__qualname__, name, digest(value, memo)))
            except Uncacheable:
                parts.append((klass.__qualname__, name, "opaque " + type(value).__qualname__))
    return _hash(*parts)


def canonical(obj):
    """A text equal for two values exactly when the compiler would treat them alike: the
    tokens' walker (tokens.py) with the disk policy, dicts and sets in any order, arrays by
    content, functions and classes by where they live; anything else is :class:`Uncacheable`."""
    return repr(token(obj, ordered=False, other=_disk_leaf))


def _disk_leaf(obj):
    """The disk policy's token of a value outside the constant vocabulary."""
    if isinstance(obj, (bool, int, float, str, bytes, complex)):    # a subclass: an IntEnum member
        return ("scalar", type(obj).__module__, type(obj).__qualname__, repr(obj))
    if isinstance(obj, set):
        return ("set",) + tuple(sorted((token(v, False, _disk_leaf) for v in obj), key=repr))
    if isinstance(obj, TreeDef):
        return ("tree", obj.kind, token(obj.cls, False, _disk_leaf),
                tuple(token(k, False, _disk_leaf) for k in obj.keys),
                tuple(token(c, False, _disk_leaf) for c in obj.children))
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise Uncacheable("an object array")
        return ("ndarray", repr(obj.dtype), obj.shape,
                hashlib.sha256(np.ascontiguousarray(obj).tobytes()).hexdigest())
    if isinstance(obj, type) or callable(obj):
        return "ref:" + ".".join(locate(obj))
    raise Uncacheable(f"cannot digest a {type(obj).__qualname__}")


def _hash(*parts):
    return hashlib.sha256(repr(parts).encode()).hexdigest()
