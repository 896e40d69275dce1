"""Arrays a compiled variant keeps across calls, so that a step writes its large temporaries
into memory it already has (``np.matmul(a, b, out=buf)``) instead of a fresh allocation
(a fresh 512 KiB array is a fresh mmap: its page faults cost more than the multiply).

Soundness rests on one check: an array is handed out again only when nothing but the pool
refers to it (CPython's reference count: a result returned to the user, a value saved by a
live pullback, a view of it, a Param's value, optimiser or recurrent state, a local of
another call of the same variant, in this thread or another, all hold a reference). The
check-out is lock-free: ``dict.pop`` takes a slot's arrays, so two threads never test the
same array at once; whoever finds nothing free allocates. Where the count cannot be trusted
(no ``sys.getrefcount``, or a free-threaded build) every call allocates, as before.
"""
from __future__ import annotations

import operator
import sys

import numpy as np

SMALL = 1 << 16
"""Bytes below which NumPy's allocation is as cheap as a look-up here: such results stay fresh."""

KEEP = 2
"""Arrays kept per slot: two, so that a Param's new value can alternate with its old one."""

_getrefcount = getattr(sys, "getrefcount", None)
_gil = getattr(sys, "_is_gil_enabled", lambda: True)
_shape = operator.attrgetter("shape")
_dtype = operator.attrgetter("dtype")


class Buffers:
    """The kept arrays of one compiled variant, by slot number (one slot per result site)."""

    __slots__ = ("slots",)

    def __init__(self):
        self.slots = {}

    def __repr__(self):
        return f"<flux_compile.Buffers: {sum(map(len, self.slots.values()))} arrays in {len(self.slots)} slots>"

    def empty(self, key, shape, dtype):
        """An array of ``shape`` and ``dtype`` that nothing else refers to: a kept one when
        one is free, else a new one (then kept, the oldest of the slot dropped). Its
        contents are undefined. (The same lines run whichever way it goes: a Ctrl-C test
        counts lines, and the search runs in C.)"""
        held = self.slots.pop(key, ())
        wanted = (_FREE, shape, dtype)
        found = tuple(zip(map(_getrefcount, held), map(_shape, held), map(_dtype, held)))
        i = found.index(wanted) if wanted in found else -1
        a = held[i] if i >= 0 else np.empty(shape, dtype)
        self.slots[key] = held if i >= 0 or not REUSE else (a,) + held[:KEEP - 1]
        return a

    def like(self, key, a):
        """``empty`` of ``a``'s shape and dtype."""
        return self.empty(key, a.shape, a.dtype)

    def matmul(self, key, a, b):
        """``a @ b``; for two float matrices whose product is not small, written into a kept
        array of this slot."""
        if type(a) is not np.ndarray or type(b) is not np.ndarray or a.ndim != 2 or b.ndim != 2:
            return a @ b
        dtype = a.dtype
        if dtype != b.dtype:
            dtype = np.result_type(dtype, b.dtype)
        shape = (a.shape[0], b.shape[1])
        if dtype.kind not in "fc" or shape[0] * shape[1] * dtype.itemsize < SMALL:
            return a @ b
        return np.matmul(a, b, out=self.empty(key, shape, dtype))

    def clear(self):
        self.slots.clear()


def _free_count():
    """The reference count ``Buffers.empty`` sees for an array only its slot holds."""
    if _getrefcount is None:
        return -1
    return tuple(map(_getrefcount, (np.empty(0),)))[0]


_FREE = _free_count()
REUSE = _FREE > 0 and _gil()
"""False where reference counts cannot prove an array free: then nothing is kept."""
