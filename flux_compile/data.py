"""Batching helpers: ``batches``, ``onehot``, ``onecold``, ``chunk``.

>>> import numpy as np
>>> x, y = np.arange(10).reshape(5, 2), np.array([0, 1, 2, 1, 0])
>>> [xb.shape for xb, yb in batches(x, y, 2, shuffle=False)]
[(2, 2), (2, 2), (1, 2)]
>>> onehot([0, 2], 3)
array([[1., 0., 0.],
       [0., 0., 1.]])
>>> onecold(np.array([[0.1, 0.9], [0.8, 0.2]]))
array([1, 0])
>>> chunk(list(range(7)), 3)
[[0, 1, 2], [3, 4], [5, 6]]
"""
from __future__ import annotations

import numpy as np

from .init import as_rng


def _take(a, index):
    """Rows ``index`` of an array, or of each array of a tuple (several inputs)."""
    if isinstance(a, tuple):
        return tuple(_take(v, index) for v in a)
    return a[index]


def _length(a):
    if isinstance(a, tuple):
        lengths = {len(v) for v in a}
        if len(lengths) != 1:
            raise ValueError(f"the arrays of a tuple differ in length: {sorted(lengths)}")
        return lengths.pop()
    return len(a)


class batches:
    """Mini-batches ``(xb, yb)`` of ``size`` rows, the last partial batch kept.

    Re-iterable: every ``for`` loop over it is a new epoch, reshuffled when
    ``shuffle`` is true (with ``rng``: a Generator, an int seed, or ``None``
    for the module generator of :mod:`flux_compile.init`). ``len()`` is the
    number of batches. ``x`` may be a tuple of arrays (a model with several
    inputs); then ``xb`` is a tuple too.

    >>> b = batches(np.zeros((5, 3)), np.arange(5), 2, rng=0)
    >>> len(b), [len(yb) for _, yb in b]
    (3, [2, 2, 1])
    """

    def __init__(self, x, y, size, shuffle=True, rng=None):
        if int(size) < 1:
            raise ValueError(f"batch size must be at least 1, got {size}")
        self.x, self.y, self.size, self.shuffle = x, y, int(size), shuffle
        self.n = _length(x)
        if _length(y) != self.n:
            raise ValueError(f"x has {self.n} rows but y has {_length(y)}")
        self.rng = as_rng(rng)

    def __len__(self):
        return -(-self.n // self.size)

    def __iter__(self):
        order = self.rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        for start in range(0, self.n, self.size):
            index = order[start:start + self.size]
            yield _take(self.x, index), _take(self.y, index)

    def __repr__(self):
        return f"batches(n={self.n}, size={self.size}, shuffle={self.shuffle})"


def onehot(labels, n, dtype=np.float64):
    """Integer labels of any shape -> one-hot array of shape ``labels.shape + (n,)``.

    >>> onehot(np.array([1, 0]), 2, dtype=np.float32)
    array([[0., 1.],
           [1., 0.]], dtype=float32)
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iub":
        if labels.dtype.kind == "f" and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
        else:
            raise TypeError(f"onehot needs integer labels, got dtype {labels.dtype}")
    bad = labels[(labels < 0) | (labels >= n)]
    if bad.size:
        raise ValueError(f"labels out of range 0..{n - 1}: {sorted(set(bad.tolist()))}")
    out = np.zeros(labels.shape + (n,), dtype=dtype)
    np.put_along_axis(out, labels[..., None].astype(np.intp), 1, axis=-1)
    return out


def onecold(probs, axis=-1):
    """The index of the largest entry along ``axis``: the inverse of :func:`onehot`.

    >>> onecold(onehot([2, 0, 1], 3))
    array([2, 0, 1])
    """
    return np.argmax(np.asarray(probs), axis=axis)


def chunk(xs, n):
    """Split ``xs`` into ``n`` consecutive pieces whose lengths differ by at most one.

    The first pieces are the longer ones. Arrays split along the first axis
    (views, as ``np.array_split``); lists, tuples, ranges and strings give
    slices of their own type. Unlike Flux's ``chunk``, which uses pieces of
    ``ceil(len/n)`` and may return fewer, this always returns exactly ``n``
    pieces (some empty when ``n > len(xs)``).

    >>> [len(c) for c in chunk(np.zeros((10, 2)), 4)]
    [3, 3, 2, 2]
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"chunk needs n >= 1, got {n}")
    if isinstance(xs, np.ndarray):
        return np.array_split(xs, n)
    size, extra = divmod(len(xs), n)
    out, start = [], 0
    for i in range(n):
        stop = start + size + (1 if i < extra else 0)
        out.append(xs[start:stop])
        start = stop
    return out
