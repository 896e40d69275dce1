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

from .functions import nodiff, standardize
from .init import as_rng, glorot_uniform, weights, zeros
from .model import net
from .params import Param, const, named_params, submodels
from .rules import nondiff_primitive
from .rules.conv import avgpool2d, conv2d, maxpool2d, pair


@net
class Affine:
    """``x @ W + b`` for batch-first ``x`` of shape (batch, n_in). Glorot-uniform weights and
    zero bias as :class:`Dense`; ``init=fc.initn`` gives early Flux's small normal noise (bias too);
    ``dtype`` (default: the dtype ``init`` makes, float64 for the library's) for every Param.

    >>> import numpy as np, flux_compile as fc
    >>> m = fc.Affine(3, 2)
    >>> m(np.ones((4, 3))).shape, m.W.shape, m.b.shape
    ((4, 2), (3, 2), (1, 2))
    """

    def __init__(self, n_in, n_out, init=glorot_uniform, dtype=None):
        self.W = weights(init, n_in, n_out, dtype=dtype)
        if init is glorot_uniform:
            self.b = zeros(1, n_out, dtype=self.W.dtype)
        else:
            self.b = weights(init, 1, n_out, dtype=self.W.dtype)

    def forward(self, x):
        return x @ self.W + self.b


@net
class Dense:
    """``act(x @ W + b)``; ``act=None`` is the identity. Glorot-uniform weights, zero bias,
    both in ``dtype`` (default: the dtype ``init`` makes, float64 for the library's).

    >>> import numpy as np, flux_compile as fc
    >>> m = fc.Dense(3, 2, act=fc.relu, dtype=np.float32)
    >>> y = m(np.ones((4, 3), dtype=np.float32))
    >>> y.shape, y.dtype, bool((y >= 0).all())
    ((4, 2), dtype('float32'), True)
    """

    def __init__(self, n_in, n_out, act=None, init=glorot_uniform, dtype=None):
        self.W = weights(init, n_in, n_out, dtype=dtype)
        self.b = zeros(1, n_out, dtype=self.W.dtype)
        self.act = act

    def forward(self, x):
        y = x @ self.W + self.b
        return y if self.act is None else self.act(y)


@net
class Chain:
    """Layers applied in order; plain functions are allowed as layers.

    ``len(c)``, ``c[i]`` (a layer) and ``c[i:j]`` (a Chain) work like a list.

    >>> import numpy as np, flux_compile as fc
    >>> c = fc.Chain(fc.Dense(3, 4, act=np.tanh), fc.Dense(4, 2), fc.softmax)
    >>> c(np.ones((5, 3))).sum(axis=1).round(6), len(c), len(c[:2])
    (array([1., 1., 1., 1., 1.]), 3, 2)
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
    """``fc.Dropout(p)``: zero each entry with probability ``p`` while training (in ``pullback``,
    ``back`` and ``fc.train``; ``m(x)`` is the identity); after ``fc.testmode(m)`` always the identity.

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
        self.training = True

    def forward(self, x):
        return dropout(x, self.p) if self.training else x


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
    """Stop training every Param of ``m``: no update, left out of ``fc.params``, no gradient computed.

    >>> import flux_compile as fc
    >>> c = fc.Chain(fc.Dense(3, 4), fc.Dense(4, 2))
    >>> _ = fc.freeze(c[0])
    >>> [p.shape for p in fc.params(c)]
    [(4, 2), (1, 2)]
    """
    if isinstance(m, Param):
        _set_flag(m, False)
        return m
    return _set_trainable(m, False)


def unfreeze(m):
    """Undo :func:`freeze`.

    >>> import flux_compile as fc
    >>> m = fc.Dense(3, 2)
    >>> _ = fc.freeze(m); n_frozen = len(fc.params(m))
    >>> _ = fc.unfreeze(m)
    >>> n_frozen, len(fc.params(m))
    (0, 2)
    """
    if isinstance(m, Param):
        _set_flag(m, True)
        return m
    return _set_trainable(m, True)


# ------------------------------------------------------------------ convolution and normalisation

def _conv_init(c_out, c_in, kh, kw, *, rng=None, dtype=np.float64):
    """Glorot uniform with a kernel's fans: ``(c_in + c_out) * kh * kw``."""
    limit = np.sqrt(6.0 / ((c_in + c_out) * kh * kw))
    return as_rng(rng).uniform(-limit, limit, size=(c_out, c_in, kh, kw)).astype(dtype)


@net
class Conv2d:
    """``act(conv2d(x, W, stride, padding) + b)`` for ``x`` of shape (N, c_in, H, W).

    ``W`` is (c_out, c_in, kH, kW) as in ``torch.nn.Conv2d`` (``k`` an int or a pair),
    ``b`` is (1, c_out, 1, 1); Glorot-uniform weights, zero bias, in ``dtype``.

    >>> import numpy as np, flux_compile as fc
    >>> m = fc.Conv2d(3, 8, 3, padding=1, act=fc.relu)
    >>> m(np.ones((2, 3, 10, 10))).shape, m.W.shape, m.b.shape
    ((2, 8, 10, 10), (8, 3, 3, 3), (1, 8, 1, 1))
    """

    def __init__(self, c_in, c_out, k, stride=1, padding=0, act=None, init=_conv_init, dtype=None):
        kh, kw = pair(k)
        self.W = weights(init, c_out, c_in, kh, kw, dtype=dtype)
        self.b = zeros(1, c_out, 1, 1, dtype=self.W.dtype)
        self.stride = pair(stride)
        self.padding = pair(padding)
        self.act = act

    def forward(self, x):
        y = conv2d(x, self.W, self.stride, self.padding) + self.b
        return y if self.act is None else self.act(y)


@net
class MaxPool2d:
    """Max over each k x k window, stride ``k`` unless given (``F.max_pool2d``).

    >>> import numpy as np, flux_compile as fc
    >>> fc.MaxPool2d(2)(np.ones((2, 3, 10, 10))).shape
    (2, 3, 5, 5)
    """

    def __init__(self, k, stride=None):
        self.k = pair(k)
        self.stride = self.k if stride is None else pair(stride)

    def forward(self, x):
        return maxpool2d(x, self.k, self.stride)


@net
class AvgPool2d:
    """Mean over each k x k window, stride ``k`` unless given (``F.avg_pool2d``).

    >>> import numpy as np, flux_compile as fc
    >>> fc.AvgPool2d(2)(np.ones((2, 3, 10, 10))).shape
    (2, 3, 5, 5)
    """

    def __init__(self, k, stride=None):
        self.k = pair(k)
        self.stride = self.k if stride is None else pair(stride)

    def forward(self, x):
        return avgpool2d(x, self.k, self.stride)


@net
class LayerNorm:
    """Normalise over the last ``len(n)`` axes (``n`` an int or a shape), then scale by ``g``
    and shift by ``b`` (ones and zeros, in ``dtype``), as ``torch.nn.LayerNorm(n, eps)``.

    >>> import numpy as np, flux_compile as fc
    >>> y = fc.LayerNorm(4)(np.arange(8.0).reshape(2, 4))
    >>> y.mean(axis=-1).round(6), y.std(axis=-1).round(3)
    (array([0., 0.]), array([1., 1.]))
    """

    def __init__(self, n, eps=1e-5, dtype=np.float64):
        shape = tuple(n) if isinstance(n, (tuple, list)) else (int(n),)
        self.g = np.ones(shape, dtype=dtype)
        self.b = np.zeros(shape, dtype=dtype)
        self.axes = tuple(range(-len(shape), 0))
        self.eps = float(eps)

    def forward(self, x):
        return standardize(x, axes=self.axes, eps=self.eps) * self.g + self.b


@net
class Embedding:
    """A table of ``n`` rows of width ``d``; ``m(idx)`` with an integer array ``idx`` gives
    ``W[idx]`` (shape ``idx.shape + (d,)``), as ``torch.nn.Embedding`` (standard normal rows).

    >>> import numpy as np, flux_compile as fc
    >>> m = fc.Embedding(10, 3)
    >>> m(np.array([[1, 2], [3, 1]])).shape
    (2, 2, 3)
    """

    def __init__(self, n, d, init=None, dtype=None):
        if init is None:
            self.W = as_rng().standard_normal((n, d)).astype(dtype or np.float64)
        else:
            self.W = weights(init, n, d, dtype=dtype)

    def forward(self, idx):
        return self.W[idx]


@net
class BatchNorm:
    """Batch normalisation over (N, C) or (N, C, H, W) inputs, as ``torch.nn.BatchNorm1d/2d``.

    Training (the default): normalise with the batch's mean and biased variance, and move
    the running statistics (state, not Params) by ``momentum`` towards the batch's mean and
    unbiased variance. After ``fc.testmode(m)``: normalise with the running statistics.
    The statistics persist: ``m.reset()`` and the per-batch reset of ``fc.train`` keep them.

    >>> import numpy as np, flux_compile as fc
    >>> m = fc.BatchNorm(3)
    >>> y, back = m.pullback(np.arange(12.0).reshape(4, 3))      # training: batch statistics
    >>> y.mean(axis=0).round(6)
    array([0., 0., 0.])
    >>> _ = fc.testmode(m); m(np.ones((2, 3))).shape           # inference: running statistics
    (2, 3)
    """
    persistent_state = ("running_mean", "running_var")

    def __init__(self, n, eps=1e-5, momentum=0.1, dtype=np.float64):
        self.g = np.ones(n, dtype=dtype)
        self.b = np.zeros(n, dtype=dtype)
        self.running_mean = const(np.zeros(n, dtype=dtype))
        self.running_var = const(np.ones(n, dtype=dtype))
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.training = True

    def forward(self, x):
        axes = (0,) if x.ndim == 2 else (0, 2, 3)
        shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
        if self.training:
            mean = np.mean(x, axis=axes, keepdims=True)
            xc = x - mean
            var = np.mean(xc * xc, axis=axes, keepdims=True)
            count = x.size // x.shape[1]
            m = self.momentum
            self.running_mean = (1 - m) * self.running_mean + m * nodiff(np.reshape(mean, (-1,)))
            self.running_var = (1 - m) * self.running_var + m * nodiff(np.reshape(var, (-1,))) * (count / (count - 1))
        else:
            xc = x - np.reshape(self.running_mean, shape)
            var = np.reshape(self.running_var, shape)
        return xc / np.sqrt(var + self.eps) * np.reshape(self.g, shape) + np.reshape(self.b, shape)

    def statistics(self):
        """``(running_mean, running_var)`` now (the state after the last step)."""
        from .recurrent import current_state
        values, _ = current_state(self, ["running_mean", "running_var"])
        return tuple(np.asarray(v) for v in values)


def _set_training(m, flag):
    """Set ``training`` on every model in the tree that has the flag (BatchNorm, Dropout, user
    layers that follow the convention); the flag is a compile-time constant of each model."""
    for sub in submodels(m):
        if isinstance(sub.__dict__.get("training"), bool):
            sub.training = flag
    return m


def testmode(m):
    """Switch every BatchNorm and Dropout in ``m`` to inference: running statistics, no dropout.

    >>> import numpy as np, flux_compile as fc
    >>> m = fc.Chain(fc.Dense(4, 4), fc.Dropout(0.5))
    >>> _ = fc.testmode(m)
    >>> x = np.ones((2, 4))
    >>> bool(np.array_equal(m.pullback(x)[0], m(x)))         # no dropout, even in training calls
    True
    """
    return _set_training(m, False)


def trainmode(m):
    """Undo :func:`testmode`: batch statistics (updating the running ones) and dropout.

    >>> import numpy as np, flux_compile as fc
    >>> m = fc.BatchNorm(2)
    >>> _ = fc.trainmode(fc.testmode(m))
    >>> m.pullback(np.array([[0.0, 1.0], [2.0, 5.0]]))[0].mean(axis=0).round(6)
    array([0., 0.])
    """
    return _set_training(m, True)
