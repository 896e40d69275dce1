"""Convolution and pooling: the primitives ``conv2d``, ``maxpool2d``, ``avgpool2d``, their
kernels and their derivative rules.

Layout as in PyTorch: ``x`` is (N, C, H, W), a filter bank ``W`` is (O, C, kH, kW); outputs
are (N, O, H_out, W_out) with ``H_out = (H + 2 * padding - kH) // stride + 1`` (the last
rows that do not fill a window are dropped, as ``torch.nn.functional`` does).

im2col is a view (``sliding_window_view``) contracted with the filters in one GEMM
(``np.tensordot``); col2im, in the backward, accumulates the kH * kW window offsets with
strided slices (kH * kW vectorised adds, no ``np.add.at``). Every kernel keeps the dtype of
its inputs (float32 in, float32 out).

>>> x = np.arange(16.0).reshape(1, 1, 4, 4)
>>> maxpool2d(x, 2)
array([[[[ 5.,  7.],
         [13., 15.]]]])
>>> conv2d(x, np.ones((1, 1, 3, 3))).shape
(1, 1, 2, 2)
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


# called by name from the rules below (the rule subset allows these, see tests/test_rules_direct.py)
KERNELS = ["conv2d_grad_x", "conv2d_grad_w", "maxpool2d_grad", "avgpool2d_grad"]


def pair(v):
    """``3`` -> ``(3, 3)``; a pair stays a pair."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair of ints, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _check_input(x, what):
    if np.ndim(x) != 4:
        raise ValueError(f"{what} needs x of shape (N, C, H, W), got shape {np.shape(x)}")


def windows(x, k, stride):
    """im2col as a view: (N, C, H_out, W_out, kH, kW), one window per output position."""
    (kh, kw), (sh, sw) = pair(k), pair(stride)
    if x.shape[2] < kh or x.shape[3] < kw:
        raise ValueError(f"a {kh}x{kw} window does not fit an input of {x.shape[2]}x{x.shape[3]}")
    return sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]


def pad_hw(x, padding):
    """Zero padding on the two spatial axes."""
    ph, pw = pair(padding)
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def col2im(cols, shape, stride):
    """The adjoint of :func:`windows`: ``cols`` is (N, C, kH, kW, H_out, W_out); every window
    offset (i, j) is added into a strided slice of a zero (N, C, H, W) array."""
    sh, sw = pair(stride)
    kh, kw, ho, wo = cols.shape[2:]
    out = np.zeros(shape, dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] += cols[:, :, i, j]
    return out


def unpad_hw(x, padding):
    ph, pw = pair(padding)
    return x[:, :, ph:x.shape[2] - ph, pw:x.shape[3] - pw]


# ------------------------------------------------------------------ primitives

def conv2d(x, W, stride=1, padding=0):
    """2-d cross-correlation, as ``torch.nn.functional.conv2d`` (no bias: a layer adds it).

    ``x`` (N, C, H, W), ``W`` (O, C, kH, kW); ``stride`` and ``padding`` are ints or pairs.
    """
    _check_input(x, "conv2d")
    if np.ndim(W) != 4 or W.shape[1] != x.shape[1]:
        raise ValueError(f"conv2d needs W of shape (O, {x.shape[1]}, kH, kW) for {x.shape[1]} input "
                         f"channels, got shape {np.shape(W)}")
    cols = windows(pad_hw(x, padding), W.shape[2:], stride)
    y = np.tensordot(cols, W, axes=([1, 4, 5], [1, 2, 3]))         # N, H_out, W_out, O
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2))


def maxpool2d(x, k, stride=None):
    """Max over each k x k window (``stride`` defaults to ``k``), as ``F.max_pool2d``."""
    _check_input(x, "maxpool2d")
    return windows(x, k, k if stride is None else stride).max(axis=(4, 5))


def avgpool2d(x, k, stride=None):
    """Mean over each k x k window (``stride`` defaults to ``k``), as ``F.avg_pool2d``."""
    _check_input(x, "avgpool2d")
    kh, kw = pair(k)
    s = windows(x, k, k if stride is None else stride).sum(axis=(4, 5))
    return s / np.asarray(kh * kw, dtype=s.dtype)


# ------------------------------------------------------------------ kernels of the rules

def conv2d_grad_x(dy, W, shape, stride, padding):
    """Gradient of :func:`conv2d` for ``x`` of ``shape``: one GEMM to columns, then col2im."""
    ph, pw = pair(padding)
    padded = (shape[0], shape[1], shape[2] + 2 * ph, shape[3] + 2 * pw)
    cols = np.tensordot(W, dy, axes=([0], [1]))                   # C, kH, kW, N, H_out, W_out
    return unpad_hw(col2im(cols.transpose(3, 0, 1, 2, 4, 5), padded, stride), padding)


def conv2d_grad_w(dy, x, shape, stride, padding):
    """Gradient of :func:`conv2d` for the filters ``W`` of ``shape``: one GEMM."""
    cols = windows(pad_hw(x, padding), shape[2:], stride)         # N, C, H_out, W_out, kH, kW
    return np.tensordot(dy, cols, axes=([0, 2, 3], [0, 2, 3]))


def maxpool2d_grad(dy, x, k, stride):
    """Gradient of :func:`maxpool2d`: each window's adjoint goes to its first maximum (in
    row-major order within the window), the element PyTorch picks on ties."""
    kh, kw = pair(k)
    stride = k if stride is None else stride
    cols = windows(x, k, stride)
    n, c, ho, wo = cols.shape[:4]
    first = np.argmax(cols.reshape(n, c, ho, wo, kh * kw), axis=-1)
    hit = first[..., None] == np.arange(kh * kw)
    spread = np.where(hit, dy[..., None], np.zeros((), dtype=dy.dtype))
    spread = spread.reshape(n, c, ho, wo, kh, kw).transpose(0, 1, 4, 5, 2, 3)
    return col2im(spread, x.shape, stride)


def avgpool2d_grad(dy, shape, k, stride):
    """Gradient of :func:`avgpool2d`: ``dy / (kH * kW)`` spread over each window."""
    kh, kw = pair(k)
    share = dy / np.asarray(kh * kw, dtype=dy.dtype)
    n, c, ho, wo = dy.shape
    cols = np.broadcast_to(share[:, :, None, None], (n, c, kh, kw, ho, wo))
    return col2im(cols, tuple(shape), k if stride is None else stride)


# ------------------------------------------------------------------ rules
# Registered by the rules package (``TABLE``), so this module needs nothing from it.

def conv2d_rule(dy, y, x, W, *, stride=1, padding=0):
    return conv2d_grad_x(dy, W, x.shape, stride, padding), conv2d_grad_w(dy, x, W.shape, stride, padding)


def maxpool2d_rule(dy, y, x, k, *, stride=None):
    return maxpool2d_grad(dy, x, k, stride), None


def avgpool2d_rule(dy, y, x, k, *, stride=None):
    return avgpool2d_grad(dy, x.shape, k, stride), None


TABLE = [(conv2d, conv2d_rule), (maxpool2d, maxpool2d_rule), (avgpool2d, avgpool2d_rule)]
