"""Run-time helpers, part three: the discrete Fourier transforms and the coverage of
autograd's primitives (svd, eig, ``np.gradient``, average, select, windows). Re-exported
by :mod:`flux_compile.rules.helpers`."""
from __future__ import annotations

import numpy as np

from .helpers_shape import diff_grad, fill_none, reduced_size, restore_axes, sum_grad, unbroadcast

__all__ = [
    "match_input", "fft_axes", "swap_norm", "rfft_grad", "irfft_grad", "svd_grad", "eig_grad",
    "gradient_grads", "average_grads", "select_grads", "unwindow", "diff_parts_grads",
]


# --------------------------------------------------------------------------
# discrete Fourier transforms (rules/fft.py)



def match_input(g, x):
    """``g`` as the gradient of ``x``: truncated or zero-padded on every axis to ``x``'s
    shape (the adjoint of an FFT's ``n=``/``s=``), real for a real ``x`` (autograd's
    convention), in ``x``'s precision."""
    g = np.asarray(g)
    shape = np.shape(x)
    if g.shape != shape:
        g = np.pad(g, [(0, max(0, n - m)) for m, n in zip(g.shape, shape)])
        g = g[tuple(slice(0, n) for n in shape)]
    if not np.iscomplexobj(x):
        g = np.real(g)
    kind = np.asarray(x).dtype
    if kind.kind not in "fc":
        return g
    if kind.kind == "f" and g.dtype.kind == "c":
        kind = np.result_type(kind, np.complex64)
    return g.astype(kind, copy=False)


def fft_axes(ndim, s=None, axes=None):
    """The axes an n-dimensional FFT transforms (NumPy's defaults), non-negative."""
    if axes is None:
        axes = range(ndim) if s is None else range(ndim - len(s), ndim)
    return [a % ndim for a in axes]


def swap_norm(norm):
    """``hfft``/``ihfft`` run the opposite direction's normalisation."""
    return {None: "forward", "backward": "forward", "ortho": "ortho", "forward": "backward"}[norm]


def rfft_grad(g, x, s, axes, norm=None):
    """Gradient of ``np.fft.rfftn(x, s, axes, norm)`` (and rfft, rfft2): the half spectrum
    zero-padded to full length and transformed forward, any length even or odd."""
    axes = fft_axes(np.ndim(x), s, axes)
    full = [np.shape(x)[a] for a in axes] if s is None else list(s)
    return match_input(np.fft.fftn(g, s=full, axes=axes, norm=norm), x)


def irfft_grad(g, x, s, axes, norm=None):
    """Gradient of ``np.fft.irfftn(x, s, axes, norm)`` (and irfft, irfft2) for the
    half spectrum ``x``: the conjugate real transform of ``g``, doubled where a bin stands
    for itself and its mirror image (not the zero bin, nor the Nyquist bin of an even length)."""
    axes = fft_axes(np.ndim(x), s, axes)
    if s is None:
        s = [np.shape(x)[a] for a in axes[:-1]] + [2 * (np.shape(x)[axes[-1]] - 1)]
    n, total = s[-1], float(np.prod(s))
    scale = {None: 1 / total, "backward": 1 / total, "ortho": total ** -0.5, "forward": 1.0}[norm]
    weights = np.full(n // 2 + 1, 2.0)
    weights[0] = 1.0
    if n % 2 == 0:
        weights[-1] = 1.0
    shape = [1] * np.ndim(g)
    shape[axes[-1]] = n // 2 + 1
    spectrum = np.conjugate(np.fft.rfftn(g, axes=axes)) * (scale * weights).reshape(shape)
    return match_input(spectrum, x)


# --------------------------------------------------------------------------
# coverage of autograd's primitives: svd, eig, np.gradient, average, select, windows



def _mT(m):
    return np.swapaxes(m, -1, -2)


def svd_grad(gu, gs, gvh, a, u, s, vh, full_matrices=True):
    """Gradient of ``np.linalg.svd(a)`` (autograd's formula, Townsend 2016). ``None``
    adjoints are unused outputs. Degenerate (repeated or zero) singular values make the
    singular vectors non-unique: the gradient through ``u`` or ``vh`` is infinite or
    meaningless there, as in autograd; through ``s`` alone it is fine."""
    m, n = a.shape[-2:]
    k = min(m, n)
    if np.size(a) == 0:
        return np.zeros_like(a)
    if full_matrices and m != n:
        extra_u = gu is not None and np.any(gu[..., :, k:])
        extra_v = gvh is not None and np.any(gvh[..., k:, :])
        if extra_u or extra_v:
            raise ValueError("the gradient of np.linalg.svd through the extra columns of a "
                             "full_matrices=True factor is not defined (they are any basis of the "
                             "complement): call np.linalg.svd(a, full_matrices=False)")
        u, vh = u[..., :, :k], vh[..., :k, :]
        gu = None if gu is None else gu[..., :, :k]
        gvh = None if gvh is None else gvh[..., :k, :]
    v = np.conjugate(_mT(vh))
    eye = np.eye(k)
    if gs is None:
        gs = np.zeros_like(s)
    t = eye * np.expand_dims(gs, -1)
    if gu is not None or gvh is not None:
        gap = np.expand_dims(s, -2) ** 2 - np.expand_dims(s, -1) ** 2
        with np.errstate(divide="ignore"):
            f = 1 / (gap + eye)
        gu = np.zeros_like(u) if gu is None else gu
        gv = np.zeros_like(v) if gvh is None else np.conjugate(_mT(gvh))
        utgu = _mT(u) @ gu
        vtgv = _mT(v) @ gv
        t = t + f * (utgu - np.conjugate(_mT(utgu))) * np.expand_dims(s, -2)
        t = t + np.expand_dims(s, -1) * (f * (vtgv - np.conjugate(_mT(vtgv))))
        if np.iscomplexobj(u):
            t = t + 1j * np.imag(np.diagonal(utgu, 0, -2, -1))[..., None, :] * eye / np.expand_dims(s, -2)
        out = np.conjugate(u) @ t @ _mT(v)
        if m < n:
            rest = np.eye(n) - v @ np.conjugate(_mT(v))
            out = out + np.conjugate((u / np.expand_dims(s, -2)) @ _mT(gv) @ rest)
        elif m > n:
            rest = np.eye(m) - u @ np.conjugate(_mT(u))
            out = out + _mT((v / np.expand_dims(s, -2)) @ _mT(gu) @ rest)
    else:
        out = np.conjugate(u) @ t @ _mT(v)
    return match_input(out, a)


def eig_grad(gw, gv, a, w, v):
    """Gradient of ``np.linalg.eig(a)`` (``gv`` None: of ``eigvals``), autograd's formula
    (unit-norm eigenvectors). Repeated eigenvalues have no eigenvector gradient (their
    gap divides); a real ``a`` gets the real part."""
    n = w.shape[-1]
    eye = np.eye(n)
    vt = _mT(v)
    r = eye * np.expand_dims(np.zeros_like(w) if gw is None else gw, -1)
    if gv is not None:
        f = 1 / (np.expand_dims(w, -2) - np.expand_dims(w, -1) + 1e-20)
        f = f * (1 - eye)
        vtgv = vt @ gv
        r = r + f * vtgv - f * ((vt @ np.conjugate(v)) @ (np.real(vtgv) * eye))
    out = np.linalg.solve(vt, r @ vt)
    return match_input(out, a)


def _gradient_matrix(n, spacing, edge_order):
    """The (n, n) matrix of ``np.gradient`` along one axis of length n."""
    args = () if spacing is None else (spacing,)
    return np.gradient(np.eye(n), *args, axis=0, edge_order=edge_order)


def gradient_grads(g, f, varargs, axis=None, edge_order=1):
    """Gradients of ``np.gradient(f, *varargs, axis=, edge_order=)``: for ``f``, the
    transposed difference matrix of each axis applied to its adjoint (one output per axis,
    ``None`` where unused); the spacings get none (they are treated as constants). One
    gradient alone without spacings, else a tuple (f's, then None per spacing)."""
    f = np.asarray(f)
    axes = list(range(f.ndim)) if axis is None else [axis] if np.ndim(axis) == 0 else list(axis)
    axes = [ax % f.ndim for ax in axes]
    outs = [g] if len(axes) == 1 else list(g)
    if len(varargs) == 1 and len(axes) > 1:
        varargs = tuple(varargs) * len(axes)
    total = np.zeros(f.shape, dtype=np.result_type(f.dtype if f.dtype.kind in "fc" else float,
                                                   *[np.asarray(o).dtype for o in outs if o is not None]))
    for k, (ax, gk) in enumerate(zip(axes, outs)):
        if gk is None:
            continue
        spacing = varargs[k] if varargs else None
        d = _gradient_matrix(f.shape[ax], spacing, edge_order).astype(total.dtype, copy=False)
        total = total + np.moveaxis(np.tensordot(d, np.asarray(gk), axes=([0], [ax])), 0, ax)
    if not varargs:
        return match_input(total, f)
    return (match_input(total, f),) + (None,) * len(varargs)


def average_grads(g, a, axis=None, weights=None, returned=False, keepdims=False):
    """Gradients of ``np.average(a, axis, weights, returned, keepdims=)`` for ``a`` and
    ``weights`` (``None`` for ``axis``); with ``returned`` the adjoint is a pair
    (average, sum of weights)."""
    a = np.asarray(a)
    g_avg, g_sum = (g if returned else (g, None))
    if weights is None:
        size = a.size if axis is None else reduced_size(a.shape, axis)
        g_avg = fill_none(g_avg, np.zeros(()))
        return sum_grad(g_avg, a.shape, axis, keepdims) / size, None, None
    w = np.asarray(weights)
    wb = w if w.shape == a.shape else w.reshape([-1 if i == axis % a.ndim else 1 for i in range(a.ndim)])
    sw = np.sum(wb * np.ones_like(a), axis=axis, keepdims=True)
    avg = np.sum(wb * a, axis=axis, keepdims=True) / sw
    ga = np.zeros_like(a, dtype=np.result_type(a, w, float))
    gw = np.zeros(np.broadcast_shapes(wb.shape, a.shape), dtype=ga.dtype)
    if g_avg is not None:
        gr = restore_axes(g_avg, a.shape, axis, keepdims)
        ga = ga + gr * wb / sw
        gw = gw + gr * (a - avg) / sw
    if g_sum is not None:
        gw = gw + restore_axes(np.sum(g_sum) if np.ndim(g_sum) == 0 and axis is None else g_sum,
                               a.shape, axis, keepdims) * np.ones_like(a)
    gw = unbroadcast(gw, wb.shape).reshape(w.shape)
    ga = ga.astype(a.dtype if a.dtype.kind in "fc" else ga.dtype, copy=False)
    return ga, None, gw.astype(w.dtype if w.dtype.kind in "fc" else gw.dtype, copy=False)


def select_grads(g, condlist, choicelist, default=0):
    """Gradients of ``np.select(condlist, choicelist, default)``: each choice gets the
    adjoint where its condition is the first true one, ``default`` where none is."""
    conds = [np.asarray(c, dtype=bool) for c in condlist]
    taken = np.zeros(np.shape(g), dtype=bool)
    grads = []
    for c, choice in zip(conds, choicelist):
        mine = np.logical_and(c, np.logical_not(taken))
        taken = np.logical_or(taken, c)
        grads.append(unbroadcast(np.where(mine, g, 0), np.shape(choice)).astype(
            np.result_type(np.asarray(g).dtype, np.asarray(choice).dtype) if np.asarray(choice).dtype.kind in "fc"
            else np.asarray(g).dtype, copy=False))
    rest = unbroadcast(np.where(taken, 0, g), np.shape(default))
    return None, grads, rest


def unwindow(g, shape, window_shape, axis=None):
    """Gradient of ``sliding_window_view(x, window_shape, axis)``: every window's adjoint
    added back where the window read it."""
    window_shape = (window_shape,) if np.ndim(window_shape) == 0 else tuple(window_shape)
    ndim = len(shape)
    axes = list(range(ndim)) if axis is None else ([axis] if np.ndim(axis) == 0 else list(axis))
    axes = [ax % ndim for ax in axes]
    g = np.asarray(g)
    out = np.zeros(shape, dtype=g.dtype)
    starts = list(g.shape[:ndim])
    for offset in np.ndindex(*window_shape):
        shift = [0] * ndim          # an axis may be windowed several times: offsets add up
        for ax, o in zip(axes, offset):
            shift[ax] += o
        target = tuple(slice(sh, sh + n) for sh, n in zip(shift, starts))
        out[target] += g[(slice(None),) * ndim + tuple(offset)]
    return out


def diff_parts_grads(g, a, n=1, axis=-1, prepend=None, append=None):
    """Gradients of ``np.diff(a, n, axis, prepend=, append=)`` for ``a``, ``prepend`` and
    ``append`` (``None`` for ``n`` and ``axis``): the adjoint of the difference of the
    concatenation, cut into its parts (a scalar part is summed, it was broadcast)."""
    a = np.asarray(a)
    axis = -1 if axis is None else axis
    full = diff_grad(g, n, axis)
    ax = axis % max(a.ndim, 1)

    def width(part):
        if part is None:
            return 0
        return 1 if np.ndim(part) == 0 else np.shape(part)[ax]
    lo, hi = width(prepend), width(append)
    if full.shape[ax] != lo + a.shape[ax] + hi:     # n >= the length: an empty result, no gradient
        full = np.zeros(a.shape[:ax] + (lo + a.shape[ax] + hi,) + a.shape[ax + 1:], dtype=full.dtype)
    stop = full.shape[ax] - hi
    pieces = np.split(full, [lo, stop], axis=ax)

    def as_part(piece, part):
        if part is None:
            return None
        return np.sum(piece) if np.ndim(part) == 0 else np.reshape(piece, np.shape(part))
    return pieces[1], None, None, as_part(pieces[0], prepend), as_part(pieces[2], append)
