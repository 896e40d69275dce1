"""The NumPy functions generated and ported code calls, written in torch (a shim the torch
emitter binds as ``tnp``): tensors in, tensors out, ``requires_grad`` never set."""
from __future__ import annotations

import numpy as np

TORCH_DIRECT = set("""tanh exp log sqrt abs sin cos tan sign sinh cosh arcsin arccos arctan
    log1p expm1 floor ceil square reshape swapaxes stack sum mean matmul exp2 log2 log10
    isfinite isnan cumsum""".split())


class TorchNumpy:
    """The NumPy functions generated and ported code calls, in torch (tensors in, tensors
    out, ``requires_grad`` never set)."""

    def __init__(self, torch, device):
        self.torch = torch
        self.device = device
        self.ndarray = torch.Tensor
        self.float32, self.float64 = float, float      # np.float32(0.5) * t: a weak scalar
        self.newaxis = None
        self.pi, self.e, self.inf, self.nan = np.pi, np.e, np.inf, np.nan

    def __getattr__(self, name):
        if name in TORCH_DIRECT:
            return getattr(self.torch, name)
        if isinstance(getattr(np, name, None), type):       # np.integer, np.floating: type tests
            return getattr(np, name)
        raise AttributeError(name)

    def _t(self, x, like=None):
        if isinstance(x, self.torch.Tensor):
            return x
        dtype = like.dtype if isinstance(like, self.torch.Tensor) else None
        device = like.device if isinstance(like, self.torch.Tensor) else self.device
        return self.torch.as_tensor(x, dtype=dtype, device=device)

    def asarray(self, x, dtype=None):
        x = x if isinstance(x, self.torch.Tensor) else self.torch.as_tensor(np.asarray(x), device=self.device)
        return x if dtype is None else x.to(self.dtype(dtype))

    def dtype(self, d):
        if isinstance(d, self.torch.dtype):
            return d
        return getattr(self.torch, np.dtype(d).name)

    def astype(self, x, d):
        return x.to(self.dtype(d))

    def shape(self, x):
        return tuple(x.shape)

    def ndim(self, x):
        return x.ndim

    def maximum(self, a, b):
        return self.torch.maximum(self._t(a, b), self._t(b, a))

    def minimum(self, a, b):
        return self.torch.minimum(self._t(a, b), self._t(b, a))

    def where(self, c, a, b):
        return self.torch.where(c, self._t(a, b), self._t(b, a))

    def max(self, x, axis=None, keepdims=False):
        return self.torch.amax(x, dim=_dims(axis, x), keepdim=keepdims)

    def min(self, x, axis=None, keepdims=False):
        return self.torch.amin(x, dim=_dims(axis, x), keepdim=keepdims)

    amax, amin = max, min

    def concatenate(self, xs, axis=0):
        return self.torch.cat(list(xs), dim=axis)

    def transpose(self, x, axes=None):
        return x.permute(*(reversed(range(x.ndim)) if axes is None else axes))

    def zeros(self, shape, dtype=None):
        return self.torch.zeros(tuple(shape), dtype=self.dtype(dtype or "float64"), device=self.device)

    def zeros_like(self, x, dtype=None):
        return self.torch.zeros_like(x, dtype=None if dtype is None else self.dtype(dtype))

    def ones_like(self, x, dtype=None):
        return self.torch.ones_like(x, dtype=None if dtype is None else self.dtype(dtype))

    def broadcast_to(self, x, shape):
        return self.torch.broadcast_to(x, tuple(shape))

    def expand_dims(self, x, axis):
        return self.torch.unsqueeze(x, axis)


def _dims(axis, x):
    if axis is None:
        return tuple(range(x.ndim))
    return axis
