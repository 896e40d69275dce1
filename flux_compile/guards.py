"""Guards: every value compiled code was built from, and how to check it before reuse.

A value the frontend reads from outside the traced code (a closure cell, a module
global, a default, an attribute of the model or of an object) carries a *path*: how
to read it again from the *root* of the compile (the function given to ``fc.grad``,
or the model instance). A path is a tuple of steps::

    ("arg", i)          the i-th argument (first step only)
    ("obj", ref)        the object ``ref()`` (first step only; a derivative rule)
    ("cls",)            type(obj)
    ("attr", name)      getattr(obj, name)
    ("item", key)       obj[key]
    ("cell", i, name)   obj.__closure__[i].cell_contents
    ("global", name)    obj.__globals__[name]
    ("default", i)      obj.__defaults__[i]
    ("kwdefault", name) obj.__kwdefaults__[name]

A guard is ``(path, kind, expected)`` (``Compiled.guards`` is a list of them)::

    "eq"      value_token(value) == expected       constants (ints, strings, tuples, ...)
    "code"    value.__code__ is expected           an inlined function
    "is"      value is expected()                  what the code calls or holds (a weakref)
    "method"  (__func__, ref to __self__)          a bound method called opaquely
    "bound"   (ref to __self__, __name__)          a builtin bound method (``cfg.get``)
    "type"    type(value) is expected()            a plain object whose fields are read
    "keys"    the dict's keys, in order            a dict iterated or expanded
    "len"     (type, len)                          a list or tuple iterated or unpacked
    "has"     (name, present)                      hasattr / getattr with a default
    "array"   array_token(value) == expected       an array (or float) read at run time
    "param"   (trainable, shape)                   a Param of an inlined sub-model

:func:`compile_checks` turns a list of them into one small generated function
``check(root, args) -> bool``. Arrays and Python floats are not guarded by value:
compiled code reads them at run time (:func:`compile_reader`), as extra inputs.

>>> def f(x, s=2.0):
...     return x * s
>>> check = compile_checks([((("default", 0),), "eq", value_token(2.0))])
>>> check(f, ()), check(lambda x, s=3.0: x, ())
(True, False)
"""
from __future__ import annotations

import keyword
import types
import weakref

import numpy as np

from .tokens import value_token  # noqa: F401  (the guards' token policy; importable from here)


def array_token(v):
    """What compiled code is specialised to for an array (or Python float) read at run time."""
    if type(v) is float:
        return (float,)
    if not isinstance(v, np.ndarray):
        return None
    return (v.ndim, v.dtype.kind, tuple(d == 1 for d in v.shape))


def _ref(obj):
    """A weak reference when ``obj`` takes one (so guards never keep user objects alive)."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


_MODULE_PREFIXES = ("numpy", "flux_compile", "math", "builtins", "operator", "functools", "scipy",
                    "jax", "torch", "autograd")


def stable(value):
    """Library modules and their contents are not guarded (rebinding ``np`` is not supported)."""
    if isinstance(value, types.ModuleType):
        return value.__name__.split(".")[0] in _MODULE_PREFIXES
    return False


def guard_for(value):
    """``(kind, expected)`` for a value read at compile time, or None (arrays, containers)."""
    tok = value_token(value)
    if tok is not None:
        return "eq", tok
    if isinstance(value, np.ndarray):
        return "array", array_token(value)
    if isinstance(value, (dict, list, tuple)):
        return None            # their items carry their own guards; see structure_guard
    if isinstance(value, types.FunctionType):
        return "code", value.__code__
    if isinstance(value, types.MethodType):
        return "method", (value.__func__, _ref(value.__self__))
    if isinstance(value, types.BuiltinMethodType) and not isinstance(value.__self__, types.ModuleType):
        return "bound", (_ref(value.__self__), value.__name__)      # d.get: a new object each time
    if callable(value) or isinstance(value, types.ModuleType):
        return "is", _ref(value)
    return "type", _ref(type(value))


def structure_guard(value):
    """``(kind, expected)`` for a container whose shape the code depends on (iterated, unpacked)."""
    if isinstance(value, dict):
        return "keys", tuple(value_token(k) for k in value)
    if isinstance(value, (list, tuple)):
        return "len", (type(value), len(value))
    return None


class _Render:
    def __init__(self):
        self.env = {"value_token": value_token, "array_token": array_token}
        self.locals = {}            # path -> the local that holds its value (compile_checks)

    def const(self, v):
        name = f"_k{len(self.env)}"
        self.env[name] = v
        return name

    def path(self, path):
        s = "r"
        for step in path:
            s = self.step(s, step)
        return s

    def bound(self, path, lines, indent="        "):
        """A local holding the value at ``path``, each prefix read once: the assignments of
        the prefixes not bound yet are appended to ``lines`` (guards share their paths'
        heads, ``r.layers[0]`` for every field of a Chain's first layer)."""
        if not path:
            return "r"
        name = self.locals.get(path)
        if name is None:
            head = self.bound(path[:-1], lines, indent)
            name = self.locals[path] = f"_v{len(self.locals)}"
            lines.append(f"{indent}{name} = {self.step(head, path[-1])}")
        return name

    def step(self, s, step):
        """The expression for one path step applied to the expression ``s``."""
        k = step[0]
        if k == "arg":
            return f"a[{step[1]}]"
        if k == "obj":
            return f"{self.const(step[1])}()"
        if k == "cls":
            return f"type({s})"
        if k == "attr":
            name = step[1]
            return f"{s}.{name}" if name.isidentifier() and not keyword.iskeyword(name) \
                else f"getattr({s}, {self.const(name)})"
        if k == "item":
            return f"{s}[{self.const(step[1])}]"
        if k == "cell":
            return f"{s}.__closure__[{step[1]}].cell_contents"
        if k == "global":
            return f"{s}.__globals__[{self.const(step[1])}]"
        if k == "default":
            return f"{s}.__defaults__[{step[1]}]"
        if k == "kwdefault":
            return f"{s}.__kwdefaults__[{self.const(step[1])}]"
        raise AssertionError(step)

    def test(self, kind, expected):
        """A condition on ``v`` that holds when the guard passes."""
        e = self.const(expected)
        if kind == "eq":
            t = expected[0]
            if t in (int, str, bool, type(None)):
                return f"type(v) is {self.const(t)} and v == {e}[1]"
            return f"value_token(v) == {e}"
        if kind == "code":
            return f"v.__code__ is {e}"
        if kind == "is":
            return f"v is {e}()"
        if kind == "type":
            return f"type(v) is {e}()"
        if kind == "method":
            return f"v.__func__ is {e}[0] and v.__self__ is {e}[1]()"
        if kind == "has":           # the path ends in the attribute; v is its owner
            return f"hasattr(v, {e}[0]) is {e}[1]"
        if kind == "bound":
            return f"v.__self__ is {e}[0]() and v.__name__ == {e}[1]"
        if kind == "array":
            return f"array_token(v) == {e}"
        if kind == "param":         # not a Param (no .trainable): raises, so the guard fails
            return f"v.trainable is {e}[0] and v.shape == {e}[1]"
        if kind == "keys":
            return f"type(v) is dict and tuple(value_token(k) for k in v) == {e}"
        if kind == "len":
            return f"type(v) is {e}[0] and len(v) == {e}[1]"
        raise AssertionError(kind)


def compile_checks(guards):
    """One function ``check(root, args)``: True when every guard holds."""
    if not guards:
        return lambda r, a: True
    rd = _Render()
    lines = ["def check(r, a):", "    try:"]
    for path, kind, expected in guards:
        lines.append(f"        v = {rd.bound(path[:-1] if kind == 'has' else path, lines)}")
        lines.append(f"        if not ({rd.test(kind, expected)}):")
        lines.append("            return False")
    lines += ["    except Exception:", "        return False", "    return True"]
    exec(_compiled("\n".join(lines), "<flux_compile guards>"), rd.env)
    return rd.env["check"]


def compile_reader(paths):
    """One function ``read(root, args)``: the values at ``paths``, as a tuple."""
    if not paths:
        return lambda r, a: ()
    rd = _Render()
    body = ", ".join(rd.path(p) for p in paths)
    exec(_compiled(f"def read(r, a):\n    return ({body},)\n", "<flux_compile reads>"), rd.env)
    return rd.env["read"]


_codes = {}         # (text, filename) -> its code: the text names its values, never holds them


def _compiled(text, filename):
    """``compile(text, filename, "exec")``, kept: every variant of a class has the same checks."""
    key = (text, filename)
    code = _codes.get(key)
    if code is None:
        if len(_codes) > 512:
            _codes.clear()
        code = _codes[key] = compile(text, filename, "exec")
    return code


def name_hint(path):
    """A variable name for the value at ``path``: ``xb`` for a cell or global, ``cfg_b`` for
    ``self.cfg["b"]``, ``consts_V`` for ``consts.V``."""
    parts = []
    for step in reversed(path):
        k = step[0]
        if k in ("attr", "item"):
            parts.append(str(step[1]))
        elif k in ("cell", "global", "kwdefault"):
            parts.append(str(step[-1]))
            break
        else:
            break
    name = "_".join(reversed(parts))
    return name if name.isidentifier() else "captured"


def describe(path):
    """``forward.__closure__['scale']``-style text for messages and the guard list."""
    out = []
    for step in path:
        k = step[0]
        out.append({"arg": lambda s: f"arg{s[1]}", "cls": lambda s: "type()", "obj": lambda s: repr(s[1]()),
                    "attr": lambda s: f".{s[1]}", "item": lambda s: f"[{s[1]!r}]",
                    "cell": lambda s: f"<closure {s[2]}>", "global": lambda s: f"<global {s[1]}>",
                    "default": lambda s: f"<default {s[1]}>",
                    "kwdefault": lambda s: f"<default {s[1]}>"}[k](step))
    return "".join(out)
