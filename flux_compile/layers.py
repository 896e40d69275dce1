"""Layers: ordinary ``@net`` classes, made exactly the way users make theirs.

>>> import numpy as np, flux_compile as fc
>>> m = fc.Chain(fc.Dense(4, 8, fc.relu), fc.Dense(8, 2))
>>> m(np.ones((3, 4))).shape
(3, 2)
>>> m[0]
Dense(W=Param(4×8, float64), b=Param(1×8, float64), act=relu)
>>> m[:1]
Chain(Dense(W=Param(4×8, float64), b=Param(1×8, float64), act=relu))
"""
from __future__ import annotations

import numpy as np

from .init import glorot_uniform, initn, zeros
from .model import net
from .params import Param, named_params, submodels
from .rules import nondiff_primitive


@net
class Affine:
    """``x @ W + b`` for batch-first ``x`` of shape (batch, n_in)."""

    def __init__(self, n_in, n_out, init=initn):
        self.W = init(n_in, n_out)
        self.b = init(1, n_out)

    def forward(self, x):
        return x @ self.W + self.b


@net
class Dense:
    """``act(x @ W + b)``; ``act=None`` is the identity. Glorot-uniform weights, zero bias."""

    def __init__(self, n_in, n_out, act=None, init=glorot_uniform):
        self.W = init(n_in, n_out)
        self.b = zeros(1, n_out)
        self.act = act

    def forward(self, x):
        y = x @ self.W + self.b
        return y if self.act is None else self.act(y)


@net
class Chain:
    """Layers applied in order; plain functions are allowed as layers.

    ``len(c)``, ``c[i]`` (a layer) and ``c[i:j]`` (a Chain) work like a list.
    """

    def __init__(self, *layers):
        self.layers = tuple(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Chain(*self.layers[i])
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def __repr__(self):
        inner = ", ".join(repr(layer) if hasattr(type(layer), "__flux_net__") else
                          getattr(layer, "__qualname__", repr(layer)) for layer in self.layers)
        return f"Chain({inner})"


_dropout_rng = np.random.default_rng()


def seed_dropout(seed):
    """Seed the generator behind ``fc.dropout`` (for reproducible training)."""
    global _dropout_rng
    _dropout_rng = np.random.default_rng(seed)


def dropout_mask(x, p):
    """Keep each entry with probability ``1 - p``, scaled by ``1 / (1 - p)``; same dtype as ``x``."""
    keep = _dropout_rng.random(np.shape(x)) >= p
    return (keep / (1 - p)).astype(x.dtype if hasattr(x, "dtype") else np.float64)


dropout_mask.__flux_impure__ = True
nondiff_primitive(dropout_mask)          # a random mask: called, never inlined, no gradient


def dropout(x, p):
    """Inverted dropout in training (``pullback``/``back``); the identity in ``__call__``.

    Called outside a model it always drops: each entry is zeroed with probability ``p``
    and the rest scaled by ``1 / (1 - p)``, so the mean is kept.

    >>> y = dropout(np.ones(1000), 0.25)
    >>> sorted(set(np.unique(y).round(4).tolist()))
    [0.0, 1.3333]
    """
    return x * dropout_mask(x, p)


dropout.__flux_inference_identity__ = True


@net
class Dropout:
    """``fc.Dropout(p)``: zero each entry with probability ``p`` while training.

    >>> import flux_compile as fc
    >>> m = fc.Chain(fc.Dense(4, 4), fc.Dropout(0.5))
    >>> x = np.ones((2, 4))
    >>> bool((m(x) == m(x)).all())             # inference (m(x)): no dropout
    True
    >>> y, back = m.pullback(x)                 # training: about half the entries zeroed
    >>> bool((y == 0).any())
    True
    """

    def __init__(self, p=0.5):
        if not 0 <= p < 1:
            raise ValueError(f"Dropout probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x):
        return dropout(x, self.p)


def _set_trainable(m, flag):
    for _, p in named_params(m):
        _set_flag(p, flag)
    for sub in submodels(m):
        sub.__dict__.pop("_fc_compiled", None)
    return m


def _set_flag(p, flag):
    """A Param whose flag changes starts from a zero gradient: a frozen Param has none, and
    nothing accumulated before (or by a backward pending since) is applied after unfreezing."""
    if p.trainable != flag:
        p.trainable = flag
        p.grad[...] = 0


def freeze(m):
    """Stop training every Param of ``m``: no update, left out of ``fc.params``, no gradient computed."""
    if isinstance(m, Param):
        _set_flag(m, False)
        return m
    return _set_trainable(m, False)


def unfreeze(m):
    """Undo :func:`freeze`."""
    if isinstance(m, Param):
        _set_flag(m, True)
        return m
    return _set_trainable(m, True)
