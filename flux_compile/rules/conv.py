"""Convolution and pooling: the primitives ``conv2d``, ``maxpool2d``, ``avgpool2d``, their
kernels and their derivative rules.

Layout as in PyTorch: ``x`` is (N, C, H, W), a filter bank ``W`` is (O, C, kH, kW); outputs
are (N, O, H_out, W_out) with ``H_out = (H + 2 * padding - kH) // stride + 1`` (the last
rows that do not fill a window are dropped, as ``torch.nn.functional`` does).

im2col is a view (``sliding_window_view``) copied once into per-image column matrices and
multiplied by the filters in one (batched) GEMM (``np.matmul``); col2im, in the backward, accumulates the kH * kW window offsets with
strided slices (kH * kW vectorised adds, no ``np.add.at``); pooling works the same way,
one strided slice per window offset. Every kernel keeps the dtype of
its inputs (float32 in, float32 out).

>>> x = np.arange(16.0).reshape(1, 1, 4, 4)
>>> maxpool2d(x, 2)
array([[[[ 5.,  7.],
         [13., 15.]]]])
>>> conv2d(x, np.ones((1, 1, 3, 3))).shape
(1, 1, 2, 2)
"""
from __future__ import annotations

import os

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


def columns(x, k, stride):
    """im2col for the GEMM: (N, kH * kW * C, H_out * W_out), the windows copied so that each
    image's columns are one matrix (rows of the copy run along rows of the image)."""
    cols = windows(x, k, stride)
    n, c, ho, wo, kh, kw = cols.shape
    return np.ascontiguousarray(cols.transpose(0, 4, 5, 1, 2, 3)).reshape(n, kh * kw * c, ho * wo)


def filters(W):
    """(O, C, kH, kW) filters as the (O, kH * kW * C) matrix that multiplies :func:`columns`."""
    return W.transpose(0, 2, 3, 1).reshape(W.shape[0], -1)


def pad_hw(x, padding):
    """Zero padding on the two spatial axes."""
    ph, pw = pair(padding)
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def col2im(cols, shape, stride):
    """The adjoint of :func:`windows`: ``cols`` is (N, kH, kW, C, H_out, W_out); every window
    offset (i, j) is added into a strided slice of a zero (N, C, H, W) array."""
    out = np.zeros(shape, dtype=cols.dtype)
    col2im_add(out, cols, stride)
    return out


def col2im_add(out, cols, stride):
    """Add the columns ``cols`` (N, kH, kW, C, H_out, W_out) into ``out`` (N, C, H, W) in
    place: one strided slice per window offset (kH * kW vectorised adds)."""
    sh, sw = pair(stride)
    kh, kw, _, ho, wo = cols.shape[1:]
    for i in range(kh):
        for j in range(kw):
            out[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] += cols[:, i, j]


CHUNK_BYTES = 2 << 20     # column matrices of about this size stay in cache between copy and GEMM


def _blas_threads():
    """The BLAS thread count as the environment sets it (OpenBLAS reads it once, at load)."""
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return os.cpu_count() or 1


BLAS_THREADS = _blas_threads()


def image_chunks(n, bytes_per_image):
    """Slices of the batch axis, each holding about :data:`CHUNK_BYTES` of column matrices:
    the columns of a chunk are built and multiplied while they are still in cache, where the
    whole batch's columns (9x the input for a 3x3 kernel) would go to memory and back.
    With several BLAS threads, one chunk: between chunks the single-threaded copy runs
    while BLAS's idle workers spin, which measured slower (benchmarks/README.md)."""
    if BLAS_THREADS > 1:
        return [slice(0, n)]
    step = max(1, CHUNK_BYTES // max(1, int(bytes_per_image)))
    return [slice(s, min(n, s + step)) for s in range(0, n, step)]


def unpad_hw(x, padding):
    ph, pw = pair(padding)
    return x[:, :, ph:x.shape[2] - ph, pw:x.shape[3] - pw]


def offsets(k):
    """The window offsets (i, j) in row-major order."""
    kh, kw = pair(k)
    return [(i, j) for i in range(kh) for j in range(kw)]


# ------------------------------------------------------------------ primitives

def conv2d(x, W, stride=1, padding=0):
    """2-d cross-correlation, as ``torch.nn.functional.conv2d`` (no bias: a layer adds it).

    ``x`` (N, C, H, W), ``W`` (O, C, kH, kW); ``stride`` and ``padding`` are ints or pairs.

    >>> import numpy as np, flux_compile as fc
    >>> x = np.ones((2, 3, 8, 8)); W = np.ones((4, 3, 3, 3))
    >>> fc.conv2d(x, W, stride=1, padding=1).shape, float(fc.conv2d(x, W)[0, 0, 0, 0])
    ((2, 4, 8, 8), 27.0)
    """
    _check_input(x, "conv2d")
    if np.ndim(W) != 4 or W.shape[1] != x.shape[1]:
        raise ValueError(f"conv2d needs W of shape (O, {x.shape[1]}, kH, kW) for {x.shape[1]} input "
                         f"channels, got shape {np.shape(W)}")
    xp = pad_hw(x, padding)
    (kh, kw), (sh, sw) = W.shape[2:], pair(stride)
    ho, wo = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    Wm = filters(W)
    out = np.empty((x.shape[0], W.shape[0], ho * wo), dtype=np.result_type(x, W))
    for part in image_chunks(x.shape[0], kh * kw * x.shape[1] * ho * wo * out.itemsize):
        np.matmul(Wm, columns(xp[part], (kh, kw), stride), out=out[part])
    return out.reshape(x.shape[0], W.shape[0], ho, wo)


def maxpool2d(x, k, stride=None):
    """Max over each k x k window (``stride`` defaults to ``k``), as ``F.max_pool2d``.

    >>> import numpy as np, flux_compile as fc
    >>> fc.maxpool2d(np.arange(16.0).reshape(1, 1, 4, 4), 2)
    array([[[[ 5.,  7.],
             [13., 15.]]]])
    """
    _check_input(x, "maxpool2d")
    win = windows(x, k, k if stride is None else stride)
    y = win[..., 0, 0].copy()
    for i, j in offsets(k)[1:]:
        np.maximum(y, win[..., i, j], out=y)
    return y


def avgpool2d(x, k, stride=None):
    """Mean over each k x k window (``stride`` defaults to ``k``), as ``F.avg_pool2d``.

    >>> import numpy as np, flux_compile as fc
    >>> fc.avgpool2d(np.arange(16.0).reshape(1, 1, 4, 4), 2)
    array([[[[ 2.5,  4.5],
             [10.5, 12.5]]]])
    """
    _check_input(x, "avgpool2d")
    kh, kw = pair(k)
    win = windows(x, k, k if stride is None else stride)
    s = win[..., 0, 0].copy()
    for i, j in offsets(k)[1:]:
        s += win[..., i, j]
    return s / np.asarray(kh * kw, dtype=s.dtype)


# ------------------------------------------------------------------ kernels of the rules

def conv2d_grad_x(dy, W, shape, stride, padding):
    """Gradient of :func:`conv2d` for ``x`` of ``shape``: one GEMM to columns, then col2im;
    at stride 1 the full correlation of ``dy`` with the flipped filters (a forward
    convolution: its chunked im2col costs less than col2im's kH * kW adds)."""
    ph, pw = pair(padding)
    n, c = shape[0], shape[1]
    o, _, kh, kw = W.shape
    if pair(stride) == (1, 1) and ph < kh and pw < kw:
        flipped = np.ascontiguousarray(W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))    # C, O, kH, kW
        return conv2d(dy, flipped, 1, (kh - 1 - ph, kw - 1 - pw))
    ho, wo = dy.shape[2:]
    out = np.zeros((n, c, shape[2] + 2 * ph, shape[3] + 2 * pw), dtype=np.result_type(dy, W))
    Wt, d = filters(W).T, dy.reshape(n, o, ho * wo)
    for part in image_chunks(n, kh * kw * c * ho * wo * out.itemsize):
        cols = np.matmul(Wt, d[part])                                   # chunk, kH*kW*C, H_out*W_out
        col2im_add(out[part], cols.reshape(-1, kh, kw, c, ho, wo), stride)
    return unpad_hw(out, padding)


def conv2d_grad_w(dy, x, shape, stride, padding):
    """Gradient of :func:`conv2d` for the filters ``W`` of ``shape``: one GEMM."""
    o, c, kh, kw = shape
    xp = pad_hw(x, padding)
    n, p = x.shape[0], dy.shape[2] * dy.shape[3]
    d = dy.reshape(n, o, p)
    g = np.zeros((kh * kw * c, o), dtype=np.result_type(dy, x))
    for part in image_chunks(n, kh * kw * c * p * g.itemsize):
        cols = columns(xp[part], (kh, kw), stride)                      # chunk, kH*kW*C, P
        g += np.matmul(cols, np.swapaxes(d[part], 1, 2)).sum(axis=0)   # kH*kW*C, O
    return np.ascontiguousarray(g.reshape(kh, kw, c, o).transpose(3, 2, 0, 1))


def maxpool2d_grad(dy, x, k, stride):
    """Gradient of :func:`maxpool2d`: each window's adjoint goes to its first maximum (in
    row-major order within the window), the element PyTorch picks on ties."""
    stride = k if stride is None else stride
    if pair(stride) == pair(k):
        return _maxpool2d_grad_tiles(dy, x, pair(k))
    sh, sw = pair(stride)
    win = windows(x, k, stride)
    y = maxpool2d(x, k, stride)
    ho, wo = y.shape[2:]
    out = np.zeros(x.shape, dtype=dy.dtype)
    free = np.ones(y.shape, dtype=bool)             # windows whose maximum is not found yet
    zero = np.zeros((), dtype=dy.dtype)
    for i, j in offsets(k):
        hit = (win[..., i, j] == y) & free
        free &= ~hit
        out[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] += np.where(hit, dy, zero)
    return out


def _maxpool2d_grad_tiles(dy, x, k):
    """:func:`maxpool2d_grad` for windows that tile the image (stride = k): the image viewed
    as (N, C, H_out, kH, W_out, kW) tiles, so every window offset is a plain view, and each
    offset's share of ``dy`` is written (not added) into the same view of the result."""
    (kh, kw), (n, c, h, w) = k, x.shape
    ho, wo = h // kh, w // kw
    tiles = x[:, :, :ho * kh, :wo * kw].reshape(n, c, ho, kh, wo, kw)
    core = np.empty((n, c, ho * kh, wo * kw), dtype=dy.dtype)
    out_tiles = core.reshape(n, c, ho, kh, wo, kw)                  # a view of core
    y = tiles[:, :, :, 0, :, 0].copy()
    for i, j in offsets(k)[1:]:
        np.maximum(y, tiles[:, :, :, i, :, j], out=y)
    free = None                         # windows whose first maximum is not found yet
    for i, j in offsets(k):
        hit = tiles[:, :, :, i, :, j] == y
        if free is None:
            free = ~hit
        else:
            hit &= free
            free &= ~hit
        np.multiply(dy, hit, out=out_tiles[:, :, :, i, :, j])
    if (ho * kh, wo * kw) == (h, w):
        return core
    out = np.zeros(x.shape, dtype=dy.dtype)      # rows and columns no window covers: zero
    out[:, :, :ho * kh, :wo * kw] = core
    return out


def avgpool2d_grad(dy, shape, k, stride):
    """Gradient of :func:`avgpool2d`: ``dy / (kH * kW)`` spread over each window."""
    kh, kw = pair(k)
    sh, sw = pair(k if stride is None else stride)
    share = dy / np.asarray(kh * kw, dtype=dy.dtype)
    ho, wo = dy.shape[2:]
    out = np.zeros(tuple(shape), dtype=dy.dtype)
    for i, j in offsets(k):
        out[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] += share
    return out


# ------------------------------------------------------------------ rules
# Registered by the rules package (``TABLE``), so this module needs nothing from it.

def conv2d_rule(dy, y, x, W, *, stride=1, padding=0):
    return conv2d_grad_x(dy, W, x.shape, stride, padding), conv2d_grad_w(dy, x, W.shape, stride, padding)


def maxpool2d_rule(dy, y, x, k, *, stride=None):
    return maxpool2d_grad(dy, x, k, stride), None


def avgpool2d_rule(dy, y, x, k, *, stride=None):
    return avgpool2d_grad(dy, x.shape, k, stride), None


TABLE = [(conv2d, conv2d_rule), (maxpool2d, maxpool2d_rule), (avgpool2d, avgpool2d_rule)]
