"""Initialisers: ``initn``, ``glorot_uniform``, ``glorot_normal``, ``zeros``.

Each takes the shape as positional integers (or one tuple), an optional
``rng`` keyword (a ``np.random.Generator`` or an int seed; default: this
module's generator, reseeded with :func:`seed`) and ``dtype`` (float64).

>>> W = initn(3, 4, rng=0)
>>> W.shape, W.dtype.name
((3, 4), 'float64')
>>> glorot_uniform(2, 5, rng=0, dtype=np.float32).dtype.name
'float32'
>>> zeros(2)
array([0., 0.])
"""
from __future__ import annotations

import numpy as np

_default_rng = np.random.default_rng()


def seed(s=None):
    """Reseed the module-level generator used when ``rng`` is not given.

    >>> seed(1); a = initn(2); seed(1); b = initn(2)
    >>> bool((a == b).all())
    True
    """
    global _default_rng
    _default_rng = np.random.default_rng(s)


def as_rng(rng=None):
    """``None`` -> the module generator; an int -> a fresh seeded generator; a Generator as is.

    >>> import flux_compile as fc
    >>> float(fc.init.as_rng(0).random()) == float(fc.init.as_rng(0).random())
    True
    """
    if rng is None:
        return _default_rng
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, not {type(rng).__name__}")


def _shape(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return tuple(int(n) for n in shape)


def _fans(shape):
    """(fan_in, fan_out) for a batch-first weight: ``W`` is (n_in, n_out).

    A vector of length n counts as (1, n); for more dimensions the leading
    ones are the receptive field (a kernel ``(kh, kw, c_in, c_out)``).
    """
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


def initn(*shape, rng=None, dtype=np.float64):
    """Normal noise scaled down: ``randn(*shape) / 100`` (early Flux's default).

    >>> import flux_compile as fc
    >>> W = fc.initn(100, 50, rng=0)
    >>> W.shape, float(abs(W).max()) < 0.1
    ((100, 50), True)
    """
    shape = _shape(shape)
    return (as_rng(rng).standard_normal(shape) / 100).astype(dtype)


def glorot_uniform(*shape, rng=None, dtype=np.float64):
    """Uniform in ``±sqrt(6 / (fan_in + fan_out))`` (Glorot and Bengio, 2010).

    >>> import numpy as np, flux_compile as fc
    >>> W = fc.glorot_uniform(30, 20, rng=0, dtype=np.float32)
    >>> W.dtype, bool(abs(W).max() <= np.sqrt(6 / 50))
    (dtype('float32'), True)
    """
    shape = _shape(shape)
    fan_in, fan_out = _fans(shape)
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return as_rng(rng).uniform(-limit, limit, size=shape).astype(dtype)


def glorot_normal(*shape, rng=None, dtype=np.float64):
    """Normal with standard deviation ``sqrt(2 / (fan_in + fan_out))``.

    >>> W = glorot_normal(300, 200, rng=0)
    >>> W.shape, round(float(W.std()), 3), round(float(np.sqrt(2 / (300 + 200))), 3)
    ((300, 200), 0.063, 0.063)
    """
    shape = _shape(shape)
    fan_in, fan_out = _fans(shape)
    std = np.sqrt(2.0 / (fan_in + fan_out))
    return (as_rng(rng).standard_normal(shape) * std).astype(dtype)


def weights(init, *shape, dtype=None):
    """``init(*shape)`` as an array of ``dtype``; ``dtype=None`` keeps the dtype ``init`` made.

    The library layers make every Param through this, then their biases and state in the
    weights' dtype, so a float32 ``init`` (or ``dtype=np.float32``) gives a float32 layer.

    >>> weights(glorot_uniform, 2, 3, dtype=np.float32).dtype.name
    'float32'
    """
    w = np.asarray(init(*shape))
    if dtype is not None:
        w = w.astype(dtype, copy=False)
    elif w.dtype.kind not in "fc":
        w = w.astype(np.float64)
    return w


def zeros(*shape, rng=None, dtype=np.float64):
    """All zeros (``rng`` is accepted and ignored, so every initialiser is interchangeable).

    >>> import flux_compile as fc
    >>> fc.zeros(2, 3).sum(), fc.Dense(3, 2, init=fc.zeros).W.shape
    (np.float64(0.0), (3, 2))
    """
    return np.zeros(_shape(shape), dtype=dtype)
