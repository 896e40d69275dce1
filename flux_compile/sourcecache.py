"""Compile generated source under a unique, stable filename registered in ``linecache``.

Tracebacks and ``inspect.getsource`` then work on generated functions.

>>> ns = compile_source("def f(x):\\n    return x + 1\\n", "<flux_compile demo>", {})
>>> ns["f"](1)
2
"""
from __future__ import annotations

import linecache
import threading

_counter = {}
_lock = threading.Lock()


def unique_filename(label):
    """``<flux_compile: label>``, with ``#2``, ``#3`` when the label repeats in this process
    (also when threads compile at once)."""
    with _lock:
        n = _counter.get(label, 0) + 1
        _counter[label] = n
    return f"<flux_compile: {label}>" if n == 1 else f"<flux_compile: {label} #{n}>"


def compile_source(source, filename, namespace):
    """Execute ``source`` in ``namespace`` (a dict, updated and returned) as file ``filename``."""
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    code = compile(source, filename, "exec")
    exec(code, namespace)
    return namespace
