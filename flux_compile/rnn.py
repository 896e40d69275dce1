"""Recurrent layers: ``fc.RNN``, ``fc.GRU``, ``fc.LSTM`` — ordinary ``@net`` classes.

Batch first: each step takes ``x`` of shape (batch, n_in). The state (``self.h``, and
``self.c`` for the LSTM) starts from a trainable (1, n_h) Param, as in Flux. Gate
layout follows PyTorch (LSTM gates i, f, g, o; GRU r, z, n), so ``from_torch`` /
``to_torch`` copy weights from and to a single-layer ``batch_first`` torch module.
After a step the state has one row per batch item: call ``reset()`` before a batch of
another size (otherwise a ``ValueError`` says so).

>>> import numpy as np, flux_compile as fc
>>> lstm = fc.LSTM(3, 5)
>>> lstm(np.ones((2, 3))).shape
(2, 5)
"""
from __future__ import annotations

import numpy as np

from .functions import sigmoid
from .init import glorot_uniform, weights, zeros
from .model import net


def _torch():
    try:
        import torch
    except ImportError as e:                     # pragma: no cover - depends on the environment
        raise ImportError("to_torch/from_torch need PyTorch: pip install torch==2.13.0") from e
    return torch


def _np(t):
    return t.detach().cpu().numpy().astype(np.float64)


def _to_torch(kind, n_in, n_h, weights, **options):
    """A float64 ``torch.nn.<kind>`` with ``weights`` ({torch name: our array}) copied in."""
    torch = _torch()
    t = getattr(torch.nn, kind)(n_in, n_h, batch_first=True, dtype=torch.float64, **options)
    with torch.no_grad():
        for name, value in weights.items():
            target = getattr(t, name)
            if value is None:
                target.zero_()
            else:
                target.copy_(torch.from_numpy(np.array(value, dtype=np.float64).reshape(target.shape)))
    return t


def _from_torch(m, module, biases):
    """Copy a torch module's weights into ``m`` (transposed: we are batch-first, ``x @ Wx``);
    ``biases`` maps each of our bias Params to the torch bias tensors summed into it."""
    m.Wx.value[...] = _np(module.weight_ih_l0).T
    m.Wh.value[...] = _np(module.weight_hh_l0).T
    if module.bias:
        for ours, names in biases.items():
            getattr(m, ours).value[...] = sum(_np(getattr(module, name)) for name in names)
    return m


def _check_torch(module, kind):
    if module.num_layers != 1 or not module.batch_first or module.bidirectional:
        raise ValueError(f"from_torch needs a single-layer, batch_first, unidirectional torch.nn.{kind}")


@net
class RNN:
    """Elman RNN: ``h = act(x @ Wx + h @ Wh + b)``; returns ``h``. Params and state in ``dtype``
    (default: the dtype ``init`` makes, float64 for the library's), as every recurrent layer here.

    >>> import numpy as np, flux_compile as fc
    >>> m = fc.RNN(3, 5, dtype=np.float32)
    >>> h = m(np.ones((2, 3), dtype=np.float32))          # one step; the state is now h
    >>> h.shape, h.dtype
    ((2, 5), dtype('float32'))
    """

    def __init__(self, n_in, n_h, act=np.tanh, init=glorot_uniform, dtype=None):
        self.Wx = weights(init, n_in, n_h, dtype=dtype)
        self.Wh = weights(init, n_h, n_h, dtype=self.Wx.dtype)
        self.b = zeros(1, n_h, dtype=self.Wx.dtype)
        self.h = zeros(1, n_h, dtype=self.Wx.dtype)
        self.act = act

    def forward(self, x):
        self.h = self.act(x @ self.Wx + self.h @ self.Wh + self.b)
        return self.h

    @classmethod
    def from_torch(cls, module):
        """Copy a ``torch.nn.RNN(n_in, n_h, batch_first=True)`` (tanh or relu)."""
        _check_torch(module, "RNN")
        from .functions import relu
        m = cls(module.input_size, module.hidden_size, act=relu if module.nonlinearity == "relu" else np.tanh)
        return _from_torch(m, module, {"b": ("bias_ih_l0", "bias_hh_l0")})

    def to_torch(self):
        n_in, n_h = self.Wx.shape
        return _to_torch("RNN", n_in, n_h, {"weight_ih_l0": self.Wx.value.T, "weight_hh_l0": self.Wh.value.T,
                                            "bias_ih_l0": self.b.value, "bias_hh_l0": None},
                         nonlinearity="tanh" if self.act is np.tanh else "relu")


@net
class LSTM:
    """Long short-term memory, gates (i, f, g, o) as in PyTorch; returns ``h``.

    >>> import numpy as np, flux_compile as fc
    >>> fc.unroll(fc.LSTM(3, 5), 7)(np.ones((2, 7, 3))).shape
    (2, 7, 5)
    """

    def __init__(self, n_in, n_h, init=glorot_uniform, dtype=None):
        self.Wx = weights(init, n_in, 4 * n_h, dtype=dtype)
        self.Wh = weights(init, n_h, 4 * n_h, dtype=self.Wx.dtype)
        self.b = zeros(1, 4 * n_h, dtype=self.Wx.dtype)
        self.b.value[:, n_h:2 * n_h] = 1.0        # forget-gate bias 1: remember by default
        self.h = zeros(1, n_h, dtype=self.Wx.dtype)
        self.c = zeros(1, n_h, dtype=self.Wx.dtype)
        self.n_h = n_h

    def forward(self, x):
        n = self.n_h
        z = x @ self.Wx + self.h @ self.Wh + self.b
        i = sigmoid(z[:, :n])
        f = sigmoid(z[:, n:2 * n])
        g = np.tanh(z[:, 2 * n:3 * n])
        o = sigmoid(z[:, 3 * n:])
        self.c = f * self.c + i * g
        self.h = o * np.tanh(self.c)
        return self.h

    @classmethod
    def from_torch(cls, module):
        """Copy a ``torch.nn.LSTM(n_in, n_h, batch_first=True)``."""
        _check_torch(module, "LSTM")
        m = cls(module.input_size, module.hidden_size)
        m.b.value[...] = 0.0                      # torch's LSTM without bias has no forget-gate bias
        return _from_torch(m, module, {"b": ("bias_ih_l0", "bias_hh_l0")})

    def to_torch(self):
        n_in, n4 = self.Wx.shape
        return _to_torch("LSTM", n_in, n4 // 4, {"weight_ih_l0": self.Wx.value.T, "weight_hh_l0": self.Wh.value.T,
                                                 "bias_ih_l0": self.b.value, "bias_hh_l0": None})


@net
class GRU:
    """Gated recurrent unit, gates (r, z, n) as in PyTorch; returns ``h``.

    >>> import numpy as np, flux_compile as fc
    >>> fc.unroll(fc.GRU(3, 5), 7)(np.ones((2, 7, 3))).shape
    (2, 7, 5)
    """

    def __init__(self, n_in, n_h, init=glorot_uniform, dtype=None):
        self.Wx = weights(init, n_in, 3 * n_h, dtype=dtype)
        self.Wh = weights(init, n_h, 3 * n_h, dtype=self.Wx.dtype)
        self.bx = zeros(1, 3 * n_h, dtype=self.Wx.dtype)
        self.bh = zeros(1, 3 * n_h, dtype=self.Wx.dtype)
        self.h = zeros(1, n_h, dtype=self.Wx.dtype)
        self.n_h = n_h

    def forward(self, x):
        n = self.n_h
        gx = x @ self.Wx + self.bx
        gh = self.h @ self.Wh + self.bh
        r = sigmoid(gx[:, :n] + gh[:, :n])
        z = sigmoid(gx[:, n:2 * n] + gh[:, n:2 * n])
        c = np.tanh(gx[:, 2 * n:] + r * gh[:, 2 * n:])
        self.h = (1 - z) * c + z * self.h
        return self.h

    @classmethod
    def from_torch(cls, module):
        """Copy a ``torch.nn.GRU(n_in, n_h, batch_first=True)``."""
        _check_torch(module, "GRU")
        m = cls(module.input_size, module.hidden_size)
        return _from_torch(m, module, {"bx": ("bias_ih_l0",), "bh": ("bias_hh_l0",)})

    def to_torch(self):
        n_in, n3 = self.Wx.shape
        return _to_torch("GRU", n_in, n3 // 3, {"weight_ih_l0": self.Wx.value.T, "weight_hh_l0": self.Wh.value.T,
                                                "bias_ih_l0": self.bx.value, "bias_hh_l0": self.bh.value})
