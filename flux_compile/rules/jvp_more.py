"""Forward-mode rules for the primitives merged after the first forward rules: the fft family,
sliding windows, ``np.select`` and the convolution and pooling kernels.

Every fft is linear (over the reals) in its array input, ``sliding_window_view`` only
moves values, ``np.select`` picks from its choices by
conditions that carry no tangent, average pooling averages, and a convolution is linear in the
image and in the filter separately (the product rule). ``tests/test_jvp_rules.py`` checks each
against central differences and against its reverse rule (the transpose identity)."""
import numpy as np

from .conv import avgpool2d, conv2d
from .registry import linear_jvp, multilinear_jvp

FFTS = (np.fft.fft, np.fft.ifft, np.fft.fft2, np.fft.ifft2, np.fft.fftn, np.fft.ifftn,
        np.fft.rfft, np.fft.irfft, np.fft.rfft2, np.fft.irfft2, np.fft.rfftn, np.fft.irfftn,
        np.fft.hfft, np.fft.ihfft, np.fft.fftshift, np.fft.ifftshift)

linear_jvp(*FFTS, np.lib.stride_tricks.sliding_window_view, np.select, avgpool2d)
multilinear_jvp(conv2d)

from .conv import avgpool2d_grad, conv2d_grad_w, conv2d_grad_x  # noqa: E402
from .helpers import cofactor, match_input  # noqa: E402
from .registry import jvprule  # noqa: E402

# the convolution's and pooling's own gradient kernels (forward over reverse): bilinear in the
# adjoint and the other operand, or linear in the adjoint
multilinear_jvp(conv2d_grad_x, conv2d_grad_w)
linear_jvp(avgpool2d_grad)


@jvprule(np.angle)
def _(dz, y, z, *, deg=False):
    # angle = Im(log z): d angle = Im(dz conj(z)) / |z|^2; 0 for a real z (and at z = 0, as
    # the reverse rule's zero subgradient)
    scale = 57.29577951308232 if deg else 1.0
    safe = np.where(z == 0, 1, z)
    return np.where(z == 0, 0, scale * np.imag(dz * np.conjugate(safe)) / np.abs(safe) ** 2)


@jvprule(np.real_if_close)
def _(da, y, a, *, tol=100):
    return match_input(da, y)       # real where the value came out real


@jvprule(cofactor)
def _(da, c, a):
    # c = det(a) inv(a)^T: d det = <c, da>, d inv = -inv da inv
    inv = np.linalg.inv(a)
    ddet = np.sum(c * da, axis=(-2, -1), keepdims=True)
    det = np.expand_dims(np.linalg.det(a), (-2, -1))
    return ddet * np.swapaxes(inv, -1, -2) - det * np.swapaxes(inv @ da @ inv, -1, -2)


# the reverse rules' kernels above: checked by forward over reverse (tests/test_second_order_hvp.py)
KERNELS = (conv2d_grad_x, conv2d_grad_w, avgpool2d_grad, cofactor)


@jvprule(np.linalg.eigvals)
def _(da, w, a):
    # first-order perturbation theory: dw_i = (V^-1 dA V)_ii, V the eigenvectors (distinct
    # eigenvalues, as the reverse rule)
    w2, v = np.linalg.eig(a)
    return np.diagonal(np.linalg.solve(v, da @ v), axis1=-2, axis2=-1)


# ---------------------------------------------------------------- issue 13: the last five

from .conv import maxpool2d, offsets, windows  # noqa: E402


def maxpool2d_tangent(dx, y, x, k, stride=None):
    """The tangent of :func:`maxpool2d`: each window's at its first maximum (row-major)."""
    # each window's tangent is the tangent at its first maximum (row-major), as maxpool2d_grad
    win, dwin = windows(x, k, k if stride is None else stride), windows(dx, k, k if stride is None else stride)
    out = np.zeros(y.shape, dtype=np.result_type(dx, y))
    free = np.ones(y.shape, dtype=bool)             # windows whose maximum is not found yet
    for i, j in offsets(k):
        hit = (win[..., i, j] == y) & free
        free &= ~hit
        out = np.where(hit, dwin[..., i, j], out)
    return out


def average_tangent(da, dw, y, a, axis=None, weights=None, returned=False, keepdims=False):
    """The tangent of ``np.average`` for tangents ``da`` of ``a`` and ``dw`` of its weights."""
    # avg = sum(w a) / sum(w): d avg = (sum(w da) + sum(dw (a - avg))) / sum(w)
    a = np.asarray(a)
    avg = y[0] if returned else y
    shape = np.shape(avg)
    if weights is None:
        davg = np.zeros(shape) if da is None else np.average(da, axis, keepdims=keepdims)
        return (davg, np.zeros(np.shape(y[1]))) if returned else davg
    wb, dwb = _along(weights, a, axis), None if dw is None else _along(dw, a, axis)
    ones = np.ones_like(a, dtype=np.result_type(a, weights, float))
    sw = np.sum(wb * ones, axis=axis, keepdims=True)
    num = np.zeros(np.shape(sw), dtype=ones.dtype)
    if da is not None:
        num = num + np.sum(wb * da, axis=axis, keepdims=True)
    if dwb is not None:
        num = num + np.sum(dwb * (a - np.sum(wb * a, axis=axis, keepdims=True) / sw), axis=axis, keepdims=True)
    davg = np.reshape(num / sw, shape)
    if not returned:
        return davg
    dsum = np.zeros(np.shape(y[1])) if dwb is None else \
        np.broadcast_to(np.reshape(np.sum(dwb * ones, axis=axis, keepdims=True), shape), np.shape(y[1]))
    return davg, np.array(dsum)


def _along(w, a, axis):
    """Weights ``w`` shaped to broadcast against ``a`` (a 1-d ``w`` lies along ``axis``)."""
    w = np.asarray(w)
    if w.shape == a.shape:
        return w
    return w.reshape([-1 if i == axis % a.ndim else 1 for i in range(a.ndim)])


def _mT(m):
    return np.swapaxes(m, -1, -2)


def svd_tangent(da, y, a, full_matrices=True, compute_uv=True):
    """The tangent of ``np.linalg.svd(a)`` (distinct nonzero singular values)."""
    # a = U S V^T, P = U^T dA V: dS = diag(P); for distinct nonzero singular values
    # dU = U (F o (P S + S P^T)) + (I - U U^T) dA V S^-1, dV likewise with a^T, F_ij = 1/(s_j^2 - s_i^2)
    if not compute_uv:
        u, s, vh = np.linalg.svd(a, full_matrices=False)
        return np.real(np.diagonal(np.conjugate(_mT(u)) @ da @ _mT(np.conjugate(vh)), 0, -2, -1))
    m, n = a.shape[-2:]
    if full_matrices and m != n:
        raise ValueError("the tangent of np.linalg.svd's extra full_matrices=True columns is not defined "
                         "(they are any basis of the complement): call np.linalg.svd(a, full_matrices=False)")
    if np.iscomplexobj(a) or np.iscomplexobj(da):
        raise ValueError("forward mode through complex singular vectors is not supported "
                         "(their phase is arbitrary): use compute_uv=False or a real matrix")
    u, s, vh = y
    v = _mT(vh)
    k = s.shape[-1]
    eye = np.eye(k)
    p = _mT(u) @ da @ v
    ds = np.diagonal(p, 0, -2, -1)
    sr, sc = np.expand_dims(s, -2), np.expand_dims(s, -1)       # s_j along rows, s_i along columns
    f = (1 - eye) / (sr ** 2 - sc ** 2 + eye)
    pt = _mT(p)
    du = u @ (f * (p * sr + sc * pt))
    dv = v @ (f * (sc * p + pt * sr))
    if m > k:
        du = du + (da @ v - u @ p) / sr
    if n > k:
        dv = dv + (_mT(da) @ u - v @ pt) / sr
    return du, ds, _mT(dv)


def eig_tangent(da, y, a):
    """The tangent of ``np.linalg.eig(a)`` (distinct eigenvalues)."""
    # dL = diag(V^-1 dA V); dV = V (F o V^-1 dA V), F_ij = 1/(w_j - w_i), then kept in LAPACK's
    # gauge: unit columns whose largest component is real (distinct eigenvalues, as the reverse rule)
    w, v = y
    q = np.linalg.solve(v, da @ v)
    dw = np.diagonal(q, 0, -2, -1)
    eye = np.eye(w.shape[-1])
    f = (1 - eye) / (np.expand_dims(w, -2) - np.expand_dims(w, -1) + eye)
    dv = v @ (f * q)
    dv = dv - v * np.real(np.sum(np.conjugate(v) * dv, axis=-2, keepdims=True))
    if np.iscomplexobj(v):
        big = np.take_along_axis(v, np.argmax(np.abs(v), axis=-2)[..., None, :], -2)
        dbig = np.take_along_axis(dv, np.argmax(np.abs(v), axis=-2)[..., None, :], -2)
        dv = dv - 1j * v * np.imag(dbig / big)
    return match_input(dw, w), match_input(dv, v)


# the rules proper: one call each (their bodies are helpers, opaque to the compiler that inlines a rule)

@jvprule(maxpool2d)
def _(dx, dk, y, x, k, *, stride=None):
    return maxpool2d_tangent(dx, y, x, k, stride)


@jvprule(np.average)
def _(da, daxis, dw, y, a, axis=None, weights=None, *, returned=False, keepdims=False):
    return average_tangent(da, dw, y, a, axis, weights, returned, keepdims)


@jvprule(np.linalg.svd)
def _(da, y, a, *, full_matrices=True, compute_uv=True, hermitian=False):
    return svd_tangent(da, y, a, full_matrices, compute_uv)


@jvprule(np.linalg.eig)
def _(da, y, a):
    return eig_tangent(da, y, a)


# np.gradient is linear in f (the spacings are constants, as in the reverse rule)
linear_jvp(np.gradient)


# ---------------------------------------------------------------- their reverse rules' helpers
# (forward over reverse: tests/test_second_order_hvp.py)

from .conv import maxpool2d_grad  # noqa: E402
from .helpers import average_grads, gradient_grads, restore_axes, unbroadcast  # noqa: E402


@jvprule(maxpool2d_grad)
def _(ddy, dx, dk, dstride, z, dy, x, k, stride):
    # linear in the adjoint; x only chooses each window's maximum (piecewise constant)
    return None if ddy is None else maxpool2d_grad(ddy, x, k, stride)


@jvprule(gradient_grads)
def _(dg, df, dvarargs, daxis, dedge, z, g, f, varargs, axis=None, edge_order=1):
    # linear in the adjoints; f gives the shape only, the spacings are constants
    return None if dg is None else gradient_grads(dg, f, varargs, axis, edge_order)


@jvprule(average_grads)
def _(dg, da, daxis, dw, dret, dkeep, z, g, a, axis=None, weights=None, returned=False, keepdims=False):
    return average_grads_tangent(dg, da, dw, g, a, axis, weights, returned, keepdims)


def average_grads_tangent(dg, da, dw, g, a, axis=None, weights=None, returned=False, keepdims=False):
    """The tangent of ``average_grads`` (a's and the weights' gradients): linear in the adjoint
    ``g``; with weights, ga = g w / sw and gw = g (a - avg) / sw + g_sum vary with a and w too."""
    if weights is None or da is None and dw is None:
        if dg is None:
            return None
        return average_grads(dg, a, axis, weights, returned, keepdims)
    a = np.asarray(a)
    g_avg, g_sum = g if returned else (g, None)
    dg_avg, dg_sum = (None, None) if dg is None else dg if returned else (dg, None)
    wb = _along(weights, a, axis)
    dwb = np.zeros(wb.shape) if dw is None else _along(dw, a, axis)
    da = np.zeros(a.shape) if da is None else da
    ones = np.ones_like(a, dtype=np.result_type(a, weights, float))
    sw = np.sum(wb * ones, axis=axis, keepdims=True)
    dsw = np.sum(dwb * ones, axis=axis, keepdims=True)
    avg = np.sum(wb * a, axis=axis, keepdims=True) / sw
    davg = (np.sum(dwb * a + wb * da, axis=axis, keepdims=True) - avg * dsw) / sw
    dga = np.zeros(a.shape)
    dgw = np.zeros(np.broadcast_shapes(wb.shape, a.shape))
    if g_avg is not None:
        gr = restore_axes(g_avg, a.shape, axis, keepdims)
        dga = dga + gr * (dwb - wb * dsw / sw) / sw
        dgw = dgw + gr * ((da - davg) - (a - avg) * dsw / sw) / sw
    if dg_avg is not None:
        dgr = restore_axes(dg_avg, a.shape, axis, keepdims)
        dga = dga + dgr * wb / sw
        dgw = dgw + dgr * (a - avg) / sw
    if dg_sum is not None:
        dgw = dgw + restore_axes(np.sum(dg_sum) if np.ndim(dg_sum) == 0 and axis is None else dg_sum,
                                 a.shape, axis, keepdims) * ones
    return dga, None, unbroadcast(dgw, wb.shape).reshape(np.shape(weights))


KERNELS = KERNELS + (maxpool2d_grad, gradient_grads, average_grads)


# ---------------------------------------------------------------- more reverse-rule helpers:
# einsum, multi_dot, matrix_power, prod, cumprod (forward over reverse)

from .helpers import cumprod_grad, einsum_grads, matrix_power_grad, multi_dot_grads, prod_others  # noqa: E402
from .helpers import inverse_permutation, normalize_axis  # noqa: E402
from .jvp_linalg import matrix_power_tangent  # noqa: E402


def _is_array(v):
    return isinstance(v, np.ndarray) or isinstance(v, (float, np.floating))


def _add_entries(total, part, skip=None):
    """Entry-wise sum of two gradient tuples (``None`` is zero); entry ``skip`` of ``part`` left out."""
    part = [None if k == skip else p for k, p in enumerate(part)]
    if total is None:
        return part
    return [p if t is None else t if p is None else t + p for t, p in zip(total, part)]


def product_grads_tangent(grads_of, dg, dops, g, operands):
    """The tangent of a product's gradients ``grads_of(g, operands)``, multilinear in the adjoint
    and the operands, each operand's own gradient free of it: the product rule, one term per
    tangent, the operand's own entry left out of its term."""
    total = None if dg is None else list(grads_of(dg, operands))
    for j, t in enumerate(dops or ()):
        if t is None or not _is_array(operands[j]):
            continue
        swapped = list(operands)
        swapped[j] = t
        total = _add_entries(total, grads_of(g, swapped), skip=j)
    return None if total is None else tuple(total)


@jvprule(einsum_grads)
def _(dg, doperands, z, g, operands):
    return product_grads_tangent(einsum_grads, dg, doperands, g, operands)


@jvprule(multi_dot_grads)
def _(dg, darrays, z, g, arrays):
    return product_grads_tangent(multi_dot_grads, dg, darrays, g, arrays)


@jvprule(matrix_power_grad)
def _(dg, da, dn, z, g, a, n):
    return matrix_power_grad_tangent(dg, da, g, a, n)


def matrix_power_grad_tangent(dg, da, g, a, n):
    """The tangent of ``matrix_power_grad(g, a, n) = sum_k (a^T)^k g (a^T)^(n-1-k)``."""
    out = None if dg is None else matrix_power_grad(dg, a, n)
    if da is None:
        return out
    if n < 0:                   # through b = a^-1: -(b^T gb b^T), gb = matrix_power_grad(g, b, -n)
        b = np.linalg.inv(a)
        db = -(b @ da @ b)
        gb = matrix_power_grad(g, b, -n)
        dgb = matrix_power_grad_tangent(None, db, g, b, -n)
        bt, dbt = _mT(b), _mT(db)
        part = -(dbt @ gb @ bt + bt @ dgb @ bt + bt @ gb @ dbt)
    else:
        at, dat = _mT(a), _mT(da)
        powers = [np.linalg.matrix_power(at, k) for k in range(max(n, 1))]
        dpowers = [matrix_power_tangent(dat, at, k) for k in range(max(n, 1))]
        part = np.zeros(np.broadcast_shapes(np.shape(a), np.shape(g)), dtype=np.result_type(a, da, g))
        for k in range(n):
            part = part + dpowers[k] @ g @ powers[n - 1 - k] + powers[k] @ g @ dpowers[n - 1 - k]
    return part if out is None else out + part


@jvprule(prod_others)
def _(da, daxis, z, a, axis=None):
    return None if da is None else prod_others_tangent(da, a, axis)


def prod_others_tangent(da, a, axis=None):
    """The tangent of ``prod_others(a, axis)``: for each element, the sum over the other elements
    j of da_j times the product of the rest (no division: exact at zeros too)."""
    a, da = np.asarray(a), np.asarray(da)
    axes = normalize_axis(axis, a.ndim)
    if a.ndim == 0 or a.size == 0:
        return np.zeros_like(a)
    rest = [i for i in range(a.ndim) if i not in axes]
    perm = rest + list(axes)
    t = np.transpose(a, perm)
    flat = t.reshape(t.shape[:len(rest)] + (-1,))
    dflat = np.transpose(da, perm).reshape(flat.shape)
    out = np.zeros(flat.shape, dtype=np.result_type(a, da))
    for j in range(flat.shape[-1]):
        swapped = flat.copy() if flat.dtype == out.dtype else flat.astype(out.dtype)
        swapped[..., j] = dflat[..., j]
        term = prod_others(swapped, -1)
        term[..., j] = 0
        out = out + term
    return np.transpose(out.reshape(t.shape), inverse_permutation(perm, a.ndim))


@jvprule(cumprod_grad)
def _(dg, da, dy, daxis, z, g, a, y, axis=None):
    return cumprod_grad_tangent(dg, da, g, a, axis)


def cumprod_grad_tangent(dg, da, g, a, axis=None):
    """The tangent of ``cumprod_grad(g, a, cumprod(a), axis)``, by differentiating its
    division-free recursion grad_i = prod(a[:i]) r_i, r_i = g_i + a_(i+1) r_(i+1)."""
    a = np.asarray(a)
    if axis is None:
        flat = cumprod_grad_tangent(None if dg is None else np.ravel(dg), None if da is None else np.ravel(da),
                                    np.ravel(g), a.ravel(), 0)
        return None if flat is None else flat.reshape(a.shape)
    out = None if dg is None else cumprod_grad(dg, a, np.cumprod(a, axis=axis), axis)
    if da is None:
        return out
    am, dam = np.moveaxis(a, axis, 0), np.moveaxis(np.asarray(da), axis, 0)
    gm = np.moveaxis(np.broadcast_to(g, a.shape), axis, 0)
    dtype = np.result_type(am, dam, gm)
    left, dleft = np.ones(am.shape, dtype=dtype), np.zeros(am.shape, dtype=dtype)
    for i in range(1, am.shape[0]):
        left[i] = left[i - 1] * am[i - 1]
        dleft[i] = dleft[i - 1] * am[i - 1] + left[i - 1] * dam[i - 1]
    r, dr = np.zeros(am.shape, dtype=dtype), np.zeros(am.shape, dtype=dtype)
    r[-1] = gm[-1]
    for i in range(am.shape[0] - 2, -1, -1):
        r[i] = gm[i] + am[i + 1] * r[i + 1]
        dr[i] = dam[i + 1] * r[i + 1] + am[i + 1] * dr[i + 1]
    part = np.moveaxis(dleft * r + left * dr, 0, axis)
    return part if out is None else out + part


KERNELS = KERNELS + (einsum_grads, multi_dot_grads, matrix_power_grad, prod_others, cumprod_grad)


# ---------------------------------------------------------------- norms' gradients

from .helpers import norm_grad, vector_norm_grad  # noqa: E402


@jvprule(norm_grad)
def _(dg, dx, dy, dord, daxis, dkeep, z, g, x, y, ord=None, axis=None, keepdims=False):
    return norm_grad_tangent(dg, dx, dy, g, x, y, ord, axis, keepdims, matrix=True)


@jvprule(vector_norm_grad)
def _(dg, dx, dy, dord, daxis, dkeep, z, g, x, y, ord=2, axis=None, keepdims=False):
    return norm_grad_tangent(dg, dx, dy, g, x, y, ord, axis, keepdims, matrix=False)


def norm_grad_tangent(dg, dx, dy, g, x, y, ord, axis, keepdims, matrix=True):
    """The tangent of ``norm_grad`` (``matrix=False``: ``vector_norm_grad``). Every branch is
    the adjoint times a slope S(x, y): linear in ``g``, plus ``g dS`` (dS is 0 where S is
    piecewise constant: ord 0, 1, inf and the matrix 1 and inf norms)."""
    grad = norm_grad if matrix else vector_norm_grad
    out = None if dg is None else grad(dg, x, y, ord, axis, keepdims)
    if dx is None:
        return out
    x = np.asarray(x)
    if np.iscomplexobj(x):
        raise ValueError("forward mode through the gradient of a complex norm is not supported")
    dy = np.zeros(np.shape(y)) if dy is None else dy
    kind, ord, axis = _norm_kind(x, ord, axis, matrix)
    gr = restore_axes(np.real(g), x.shape, axis, keepdims)
    yr, dyr = restore_axes(y, x.shape, axis, keepdims), restore_axes(dy, x.shape, axis, keepdims)
    if kind == "spectral":
        dslope = _spectral_slope_tangent(dx, x, ord, axis)
    elif ord in (0, 1, np.inf, -np.inf) or kind == "matrix-1-inf":
        dslope = np.zeros(x.shape)
    else:                       # p-norms (2 and Frobenius included): S = sign(x) |x|^(p-1) / y^(p-1)
        safe = np.where(yr == 0, 1.0, yr)
        p = 2 if ord in (None, "fro") else ord
        mag = np.abs(x)
        dslope = (p - 1) * (mag ** (p - 2) if p != 2 else 1.0) * dx / safe ** (p - 1) \
            - (p - 1) * np.sign(x) * mag ** (p - 1) * dyr / safe ** p
        dslope = np.where(yr == 0, 0.0, dslope)
    part = gr * dslope
    return part if out is None else out + part


def _norm_kind(x, ord, axis, matrix):
    """("vector" | "spectral" | "matrix-1-inf", ord, axis) as norm_grad reads its arguments."""
    if not matrix:
        return "vector", ord, axis
    if axis is None and x.ndim == 2 and ord is not None:
        axis = (0, 1)
    if isinstance(axis, (int, np.integer)) or axis is None or len(tuple(axis)) == 1:
        return "vector", 2 if ord is None else ord if axis is not None or x.ndim <= 1 else 2, axis
    axis = tuple(axis)
    if ord in (None, "fro"):
        return "vector", "fro", axis
    return ("spectral" if ord in ("nuc", 2) else "matrix-1-inf"), ord, axis


def _spectral_slope_tangent(dx, x, ord, axis):
    """The tangent of the nuclear (U V^T) or spectral (u1 v1^T) norm's slope."""
    r, c = [a % x.ndim for a in axis]
    xm, dxm = np.moveaxis(x, (r, c), (-2, -1)), np.moveaxis(dx, (r, c), (-2, -1))
    y = np.linalg.svd(xm, full_matrices=False)
    du, ds, dvh = svd_tangent(dxm, y, xm, False, True)
    u, vh = y[0], y[2]
    if ord == 2:
        u, du, vh, dvh = u[..., :, :1], du[..., :, :1], vh[..., :1, :], dvh[..., :1, :]
    d = du @ vh + u @ dvh
    zero = np.all(xm == 0, axis=(-2, -1), keepdims=True)
    return np.moveaxis(np.where(zero, 0.0, d), (-2, -1), (r, c))


KERNELS = KERNELS + (norm_grad, vector_norm_grad)


# ---------------------------------------------------------------- svd's gradient (real matrices)

from .helpers import svd_grad  # noqa: E402


@jvprule(svd_grad)
def _(dgu, dgs, dgvh, da, du, ds, dvh, dfull, z, gu, gs, gvh, a, u, s, vh, full_matrices=True):
    return svd_grad_tangent((dgu, dgs, dgvh), (du, ds, dvh), (gu, gs, gvh), a, (u, s, vh), full_matrices)


def _or_zeros(t, like):
    return np.zeros(np.shape(like)) if t is None else t


def svd_grad_tangent(dgrads, dfactors, grads, a, factors, full_matrices=True):
    """The tangent of ``svd_grad`` (real, distinct nonzero singular values): its formula
    u t v^T (+ the complement terms of a non-square matrix) differentiated term by term, the
    factors' tangents those of ``np.linalg.svd``'s forward rule."""
    u, s, vh = factors
    if np.iscomplexobj(u) or np.iscomplexobj(a):
        raise ValueError("forward mode through the gradient of a complex svd is not supported")
    m, n = np.shape(a)[-2:]
    k = min(m, n)
    gu, gs, gvh = grads
    dgu, dgs, dgvh = dgrads
    du, ds, dvh = (_or_zeros(t, f) for t, f in zip(dfactors, factors))
    if full_matrices and m != n:
        u, du, vh, dvh = u[..., :, :k], du[..., :, :k], vh[..., :k, :], dvh[..., :k, :]
        gu, dgu = (None if x is None else x[..., :, :k] for x in (gu, dgu))
        gvh, dgvh = (None if x is None else x[..., :k, :] for x in (gvh, dgvh))
    v, dv = _mT(vh), _mT(dvh)
    eye = np.eye(k)
    gs, dgs = _or_zeros(gs, s), _or_zeros(dgs, s)
    dt = eye * np.expand_dims(dgs, -1)
    t = eye * np.expand_dims(gs, -1)
    sr, sc, dsr, dsc = np.expand_dims(s, -2), np.expand_dims(s, -1), np.expand_dims(ds, -2), np.expand_dims(ds, -1)
    vectors = gu is not None or gvh is not None or dgu is not None or dgvh is not None
    if vectors:
        f = (1 - eye) / (sr ** 2 - sc ** 2 + eye)
        df = -f * f * (2 * sr * dsr - 2 * sc * dsc)
        gu, dgu = _or_zeros(gu, u), _or_zeros(dgu, u)
        gv, dgv = _mT(_or_zeros(gvh, vh)), _mT(_or_zeros(dgvh, vh))
        j = _mT(u) @ gu - _mT(gu) @ u
        dj = _mT(du) @ gu + _mT(u) @ dgu - _mT(dgu) @ u - _mT(gu) @ du
        kk = _mT(v) @ gv - _mT(gv) @ v
        dkk = _mT(dv) @ gv + _mT(v) @ dgv - _mT(dgv) @ v - _mT(gv) @ dv
        t = t + f * j * sr + sc * (f * kk)
        dt = dt + (df * j + f * dj) * sr + f * j * dsr + dsc * (f * kk) + sc * (df * kk + f * dkk)
    dout = du @ t @ _mT(v) + u @ dt @ _mT(v) + u @ t @ _mT(dv)
    if vectors and m < n:       # (u / s) gv^T (I - v v^T)
        rest = np.eye(n) - v @ _mT(v)
        drest = -(dv @ _mT(v) + v @ _mT(dv))
        us, dus = u / sr, du / sr - u * dsr / sr ** 2
        dout = dout + dus @ _mT(gv) @ rest + us @ _mT(dgv) @ rest + us @ _mT(gv) @ drest
    elif vectors and m > n:     # ((v / s) gu^T (I - u u^T))^T
        rest = np.eye(m) - u @ _mT(u)
        drest = -(du @ _mT(u) + u @ _mT(du))
        vs, dvs = v / sr, dv / sr - v * dsr / sr ** 2
        dout = dout + _mT(dvs @ _mT(gu) @ rest + vs @ _mT(dgu) @ rest + vs @ _mT(gu) @ drest)
    return dout


KERNELS = KERNELS + (svd_grad,)


# ---------------------------------------------------------------- eig's gradient

from .helpers import eig_grad  # noqa: E402


@jvprule(eig_grad)
def _(dgw, dgv, da, dw, dv, z, gw, gv, a, w, v):
    return eig_grad_tangent(dgw, dgv, dw, dv, gw, gv, a, w, v)


def eig_grad_tangent(dgw, dgv, dw, dv, gw, gv, a, w, v):
    """The tangent of ``eig_grad``: out = X^-1 r X with X = v^T and
    r = diag(gw) + F o (v^T gv) - F o ((v^T conj v) (Re(v^T gv) o I)), F_ij = 1 / (w_j - w_i),
    differentiated term by term (distinct eigenvalues, as the reverse rule)."""
    n = w.shape[-1]
    eye = np.eye(n)
    dw, dv = _or_zeros(dw, w), _or_zeros(dv, v)
    x, dx = _mT(v), _mT(dv)
    r = eye * np.expand_dims(_or_zeros(gw, w), -1)
    dr = eye * np.expand_dims(_or_zeros(dgw, w), -1)
    if gv is not None or dgv is not None:
        gv, dgv = _or_zeros(gv, v), _or_zeros(dgv, v)
        f = (1 - eye) / (np.expand_dims(w, -2) - np.expand_dims(w, -1) + 1e-20)
        df = -f * f * (np.expand_dims(dw, -2) - np.expand_dims(dw, -1))
        mm, dmm = x @ gv, dx @ gv + x @ dgv
        nn, dnn = x @ np.conjugate(v), dx @ np.conjugate(v) + x @ np.conjugate(dv)
        dd, ddd = np.real(mm) * eye, np.real(dmm) * eye
        r = r + f * mm - f * (nn @ dd)
        dr = dr + df * mm + f * dmm - df * (nn @ dd) - f * (dnn @ dd + nn @ ddd)
    rx = r @ x
    dout = np.linalg.solve(x, dr @ x + r @ dx - dx @ np.linalg.solve(x, rx))
    return match_input(dout, a)


KERNELS = KERNELS + (eig_grad,)
