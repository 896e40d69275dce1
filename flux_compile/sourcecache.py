"""Compile generated source under a unique, stable filename registered in ``linecache``.

Tracebacks and ``inspect.getsource`` then work on generated functions.

>>> ns = compile_source("def f(x):\\n    return x + 1\\n", "<flux_compile demo>", {})
>>> ns["f"](1)
2
"""
from __future__ import annotations

import linecache
import threading
import types
from collections import OrderedDict

_counter = {}
_lock = threading.Lock()
_codes = OrderedDict()      # filename -> (source, the module code compiled from it): the last ones
MAX_CODES = 64


def unique_filename(label):
    """``<flux_compile: label>``, with ``#2``, ``#3`` when the label repeats in this process
    (also when threads compile at once)."""
    with _lock:
        n = _counter.get(label, 0) + 1
        _counter[label] = n
    return f"<flux_compile: {label}>" if n == 1 else f"<flux_compile: {label} #{n}>"


def compile_source(source, filename, namespace, code=None):
    """Execute ``source`` in ``namespace`` (a dict, updated and returned) as file ``filename``.
    ``code``: the module code of exactly this source, compiled before (the disk cache keeps
    it): it runs under ``filename`` without compiling the text again."""
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    code = compile(source, filename, "exec") if code is None else _renamed(code, filename)
    with _lock:
        _codes[filename] = (source, code)
        while len(_codes) > MAX_CODES:
            _codes.popitem(last=False)
    exec(code, namespace)
    return namespace


def code_of(filename, source):
    """The module code ``source`` was compiled to under ``filename`` (None once it is no
    longer kept, or when another text was compiled under that name)."""
    got = _codes.get(filename)
    return got[1] if got is not None and got[0] == source else None


def _renamed(code, filename):
    """``code`` (and every function in it) with ``co_filename`` set to ``filename``."""
    consts = tuple(_renamed(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)
