"""Linear-algebra rules: products, einsum, and ``np.linalg``.

Products whose gradient depends on the operands' ``ndim`` (dot, matmul with
1-D or batched operands, tensordot, einsum, kron) call a helper; the matrix
functions are written out as the math, batched over leading axes
(``np.swapaxes(m, -1, -2)`` is the transpose). ``eigh`` and ``eigvalsh`` read one
triangle of their input (``UPLO``): their gradient lives on that triangle, the
off-diagonal part doubled, as autograd's (for a symmetric perturbation it equals
the symmetric gradient). ``cholesky`` returns the symmetric gradient, as autograd
and PyTorch do. ``svd`` and ``eig`` follow autograd's formulas: where singular values or
eigenvalues repeat (or a singular value is zero) the singular vectors or eigenvectors are
not unique and their gradient does not exist (it comes out infinite or NaN, as autograd's);
the gradient of the values alone (``compute_uv=False``, ``eigvals``) is fine there.
``full_matrices=True`` with a non-square input is differentiable only through the first
``min(m, n)`` columns of ``u`` and rows of ``vh``.
"""
import numpy as np

from .registry import complex_output, diffrule, known
from .helpers import (eig_grad, svd_grad, as_columns, cross_grad_a, cross_grad_b, dot_grad_a,
                      dot_grad_b, einsum_grads, fill_none, from_columns,
                      inner_grad_a, inner_grad_b, kron_grad_a, kron_grad_b,
                      matmul_grad_a, matmul_grad_b, matrix_power_grad,
                      multi_dot_grads, norm_grad, on_triangle, cofactor, sum_grad, tensordot_grad_a,
                      tensordot_grad_b, unbroadcast, vector_norm_grad)


# ---------------------------------------------------------------- products

@diffrule(np.matmul)
def _(dy, y, x1, x2):
    if known(x1.ndim == 2) and known(x2.ndim == 2):
        return dy @ x2.T, x1.T @ dy
    return matmul_grad_a(dy, x1.shape, x2), matmul_grad_b(dy, x1, x2.shape)


@diffrule(np.dot)
def _(dy, y, a, b):
    if known(a.ndim == 2) and known(b.ndim == 2):
        return dy @ b.T, a.T @ dy
    return dot_grad_a(dy, a.ndim, b), dot_grad_b(dy, a, b.ndim)


@diffrule(np.inner)
def _(dy, y, a, b):
    return inner_grad_a(dy, a.ndim, b), inner_grad_b(dy, a, b.ndim)


@diffrule(np.outer)
def _(dy, y, a, b):
    # outer flattens its inputs
    return np.reshape(dy @ np.ravel(b), a.shape), np.reshape(np.ravel(a) @ dy, b.shape)


@diffrule(np.vdot)
def _(dy, y, a, b):
    return dy * np.reshape(b, a.shape), dy * np.reshape(a, b.shape)


@diffrule(np.tensordot)
def _(dy, y, a, b, *, axes=2):
    return tensordot_grad_a(dy, a.ndim, b, axes), tensordot_grad_b(dy, a, b.ndim, axes)


@diffrule(np.einsum)
def _(dy, y, *operands, optimize=False):
    # operands: a subscripts string then the arrays, or each array followed by its axis list;
    # the helper returns one gradient per operand (None for subscripts)
    return einsum_grads(dy, operands)


@diffrule(np.kron)
def _(dy, y, a, b):
    return kron_grad_a(dy, a.shape, b), kron_grad_b(dy, a, b.shape)


@diffrule(np.cross)
def _(dy, y, a, b, *, axisa=-1, axisb=-1, axisc=-1, axis=None):
    # a x b: the gradient for a is b x dy, for b it is dy x a
    return (cross_grad_a(dy, a.shape, b, axisa, axisb, axisc, axis),
            cross_grad_b(dy, a, b.shape, axisa, axisb, axisc, axis))


@diffrule(np.linalg.multi_dot)
def _(dy, y, arrays):
    return multi_dot_grads(dy, arrays)


if hasattr(np, "vecdot"):               # NumPy >= 2.0: the Array API spellings
    @diffrule(np.vecdot)
    def _(dy, y, x1, x2, *, axis=-1):
        g = np.expand_dims(dy, axis)
        return unbroadcast(g * x2, x1.shape), unbroadcast(g * x1, x2.shape)

    @diffrule(np.linalg.vecdot)
    def _(dy, y, x1, x2, *, axis=-1):
        g = np.expand_dims(dy, axis)
        return unbroadcast(g * x2, x1.shape), unbroadcast(g * x1, x2.shape)

    @diffrule(np.linalg.matmul)
    def _(dy, y, x1, x2):
        return matmul_grad_a(dy, x1.shape, x2), matmul_grad_b(dy, x1, x2.shape)

    @diffrule(np.linalg.outer)
    def _(dy, y, x1, x2):
        return dy @ x2, x1 @ dy

    @diffrule(np.linalg.tensordot)
    def _(dy, y, x1, x2, *, axes=2):
        return tensordot_grad_a(dy, x1.ndim, x2, axes), tensordot_grad_b(dy, x1, x2.ndim, axes)

    @diffrule(np.linalg.cross)
    def _(dy, y, x1, x2, *, axis=-1):
        return (cross_grad_a(dy, x1.shape, x2, axis=axis),
                cross_grad_b(dy, x1, x2.shape, axis=axis))


# ---------------------------------------------------------------- inverses and determinants

@diffrule(np.linalg.inv)
def _(dy, y, a):
    yT = np.swapaxes(y, -1, -2)
    return -(yT @ dy @ yT)


@diffrule(np.linalg.det)
def _(dy, y, a):
    # the cofactor matrix: det * inv(a)^T, also where a is singular
    return np.expand_dims(dy, (-2, -1)) * cofactor(a)


@diffrule(np.linalg.slogdet)
def _(dy, y, a):
    # y = (sign, logabsdet); the sign has no gradient
    dlogdet = fill_none(dy[1], y[1])
    return np.expand_dims(dlogdet, (-2, -1)) * np.swapaxes(np.linalg.inv(a), -1, -2)


@diffrule(np.linalg.solve)
def _(dy, y, a, b):
    # x = a^-1 b: db = a^-T dy, da = -db x^T (a 1-D b is a column)
    db = np.linalg.solve(np.swapaxes(a, -1, -2), as_columns(dy, a.ndim, b.ndim))
    da = -(db @ np.swapaxes(as_columns(y, a.ndim, b.ndim), -1, -2))
    return unbroadcast(da, a.shape), unbroadcast(from_columns(db, a.ndim, b.ndim), b.shape)


@diffrule(np.linalg.pinv)
def _(dy, y, a, *, rcond=None, hermitian=False):
    # Golub & Pereyra; valid where the rank of a is locally constant
    yT = np.swapaxes(y, -1, -2)
    dyT = np.swapaxes(dy, -1, -2)
    left = np.eye(a.shape[-2], dtype=a.dtype) - a @ y
    right = np.eye(a.shape[-1], dtype=a.dtype) - y @ a
    return -(yT @ dy @ yT) + left @ dyT @ y @ yT + yT @ y @ dyT @ right


@diffrule(np.linalg.matrix_power)
def _(dy, y, a, n):
    return matrix_power_grad(dy, a, n), None


# ---------------------------------------------------------------- decompositions

@diffrule(np.linalg.cholesky)
def _(dy, y, a, *, upper=False):
    # Murray (2016): S = L^-T phi(L^T dL) L^-1, phi = lower triangle, half diagonal
    L = np.swapaxes(y, -1, -2) if upper else y
    dL = np.swapaxes(dy, -1, -2) if upper else dy
    phi = np.tril(np.swapaxes(L, -1, -2) @ dL) * (1 - 0.5 * np.eye(a.shape[-1], dtype=a.dtype))
    Linv = np.linalg.inv(L)
    S = np.swapaxes(Linv, -1, -2) @ phi @ Linv
    return 0.5 * (S + np.swapaxes(S, -1, -2))


@diffrule(np.linalg.eigh)
def _(dy, y, a, *, UPLO='L'):
    # y = (w, v); F[i, j] = 1 / (w[j] - w[i]) off the diagonal, 0 on it
    w, v = y
    dw = np.real(fill_none(dy[0], w))       # eigenvalues are real
    dv = fill_none(dy[1], v)
    vT = np.swapaxes(v, -1, -2)
    eye = np.eye(a.shape[-1], dtype=w.dtype)
    gap = np.expand_dims(w, -2) - np.expand_dims(w, -1)
    F = np.where(gap == 0, 0, 1 / np.where(gap == 0, 1, gap))     # 0 for repeated eigenvalues
    g = np.conjugate(v) @ (np.expand_dims(dw, -1) * eye + F * (vT @ dv)) @ vT
    return on_triangle(g, UPLO)


@diffrule(np.linalg.eigvalsh)
def _(dy, y, a, *, UPLO='L'):
    w, v = np.linalg.eigh(a, UPLO)
    return on_triangle((np.conjugate(v) * np.expand_dims(np.real(dy), -2)) @ np.swapaxes(v, -1, -2), UPLO)


@diffrule(np.linalg.svd)
def _(dy, y, a, *, full_matrices=True, compute_uv=True, hermitian=False):
    # y = (u, s, vh), or s alone without compute_uv
    if compute_uv:
        return svd_grad(dy[0], dy[1], dy[2], a, y[0], y[1], y[2], full_matrices)
    u, s, vh = np.linalg.svd(a, full_matrices=False)
    return svd_grad(None, dy, None, a, u, s, vh, False)


@diffrule(np.linalg.eig)
def _(dy, y, a):
    # y = (w, v); complex in general, also for a real a
    return eig_grad(dy[0], dy[1], a, y[0], y[1])


@diffrule(np.linalg.eigvals)
def _(dy, y, a):
    w, v = np.linalg.eig(a)
    return eig_grad(dy, None, a, w, v)


complex_output(np.linalg.eig, np.linalg.eigvals)


if hasattr(np.linalg, "svdvals"):       # NumPy >= 2.0
    @diffrule(np.linalg.svdvals)
    def _(dy, y, x):
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        return (u * np.expand_dims(dy, -2)) @ vt


# ---------------------------------------------------------------- norms

@diffrule(np.linalg.norm)
def _(dy, y, x, *, ord=None, axis=None, keepdims=False):
    if ord is None or ord == 'fro':       # at a zero norm x is 0 too: gradient 0, no 0/0
        return sum_grad(np.real(dy) / np.where(y > 0, y, 1), x.shape, axis, keepdims) * np.conjugate(x)
    return norm_grad(dy, x, y, ord, axis, keepdims)


if hasattr(np.linalg, "vector_norm"):   # NumPy >= 2.0
    @diffrule(np.linalg.vector_norm)
    def _(dy, y, x, *, axis=None, keepdims=False, ord=2):
        if ord == 2:
            return sum_grad(np.real(dy) / np.where(y > 0, y, 1), x.shape, axis, keepdims) * np.conjugate(x)
        return vector_norm_grad(dy, x, y, ord, axis, keepdims)

    @diffrule(np.linalg.matrix_norm)
    def _(dy, y, x, *, keepdims=False, ord='fro'):
        if ord == 'fro':
            return sum_grad(np.real(dy) / np.where(y > 0, y, 1), x.shape, (-2, -1), keepdims) * np.conjugate(x)
        return norm_grad(dy, x, y, ord, (-2, -1), keepdims)
