"""Forward-mode rules for linear algebra.

Products are multilinear: their tangent is the product rule, one term per operand
whose tangent is not zero, each the same product with that operand replaced by its
tangent. The matrix functions are written out as the math, batched over leading
axes (``np.swapaxes(m, -1, -2)`` is the transpose).
"""
import numpy as np

from .registry import jvprule, multilinear_jvp
from .helpers import as_columns, cofactor, from_columns, norm_grad, vector_norm_grad
from .jvp_elementwise import tsum

multilinear_jvp(np.matmul, np.dot, np.inner, np.outer, np.vdot, np.tensordot, np.einsum, np.kron,
                np.cross, np.linalg.multi_dot)
if hasattr(np, "vecdot"):               # NumPy >= 2.0
    multilinear_jvp(np.vecdot, np.linalg.vecdot, np.linalg.matmul, np.linalg.outer,
                    np.linalg.tensordot, np.linalg.cross)


# ---------------------------------------------------------------- inverses and determinants

@jvprule(np.linalg.inv)
def _(da, y, a):
    return -(y @ da @ y)


@jvprule(np.linalg.det)
def _(da, y, a):
    # the cofactor matrix contracted with the tangent: exact also where a is singular
    return np.sum(cofactor(a) * da, axis=(-2, -1))


@jvprule(np.linalg.slogdet)
def _(da, y, a):
    # y = (sign, logabsdet): the sign is locally constant
    return np.zeros_like(y[0]), np.sum(np.swapaxes(np.linalg.inv(a), -1, -2) * da, axis=(-2, -1))


@jvprule(np.linalg.solve)
def _(da, db, y, a, b):
    # x = a^-1 b: dx = a^-1 (db - da x)
    rhs = tsum(None if db is None else as_columns(db, a.ndim, b.ndim),
               None if da is None else -(da @ as_columns(y, a.ndim, b.ndim)))
    return from_columns(np.linalg.solve(a, rhs), a.ndim, b.ndim)


@jvprule(np.linalg.pinv)
def _(da, y, a, *, rcond=None, hermitian=False):
    # Golub & Pereyra; valid where the rank of a is locally constant
    daT = np.swapaxes(da, -1, -2)
    yT = np.swapaxes(y, -1, -2)
    left = np.eye(a.shape[-1], dtype=a.dtype) - y @ a
    right = np.eye(a.shape[-2], dtype=a.dtype) - a @ y
    return -(y @ da @ y) + y @ yT @ daT @ right + left @ daT @ yT @ y


@jvprule(np.linalg.matrix_power)
def _(da, dn, y, a, n):
    # sum over k of a^k da a^(n-1-k); negative n through the inverse
    if n < 0:
        inv = np.linalg.inv(a)
        dinv = -(inv @ da @ inv)
        return matrix_power_tangent(dinv, inv, -n)
    return matrix_power_tangent(da, a, n)


def matrix_power_tangent(da, a, n):
    """The tangent of ``a^n`` for ``n >= 0``: ``sum_k a^k da a^(n-1-k)``."""
    total = np.zeros(np.broadcast_shapes(np.shape(a), np.shape(da)), dtype=np.result_type(a, da))
    for k in range(n):
        total = total + np.linalg.matrix_power(a, k) @ da @ np.linalg.matrix_power(a, n - 1 - k)
    return total


# ---------------------------------------------------------------- decompositions

@jvprule(np.linalg.cholesky)
def _(da, y, a, *, upper=False):
    # dL = L phi(L^-1 dA_sym L^-T), phi = lower triangle with half the diagonal; the symmetric
    # part of da, as the reverse rule's symmetric gradient
    L = np.swapaxes(y, -1, -2) if upper else y
    Linv = np.linalg.inv(L)
    sym = 0.5 * (da + np.swapaxes(da, -1, -2))
    inner = Linv @ sym @ np.swapaxes(Linv, -1, -2)
    dL = L @ (np.tril(inner) * (1 - 0.5 * np.eye(a.shape[-1], dtype=a.dtype)))
    return np.swapaxes(dL, -1, -2) if upper else dL


@jvprule(np.linalg.eigh)
def _(da, y, a, *, UPLO='L'):
    # the symmetric matrix eigh reads from one triangle, its tangent; then
    # dw = diag(v^T dS v), dv = v (F * (v^T dS v)), F[i, j] = 1 / (w[j] - w[i]) off the diagonal
    w, v = y
    if UPLO in ('L', 'l'):
        dS = np.tril(da) + np.swapaxes(np.tril(da, -1), -1, -2)
    else:
        dS = np.triu(da) + np.swapaxes(np.triu(da, 1), -1, -2)
    inner = np.swapaxes(v, -1, -2) @ dS @ v
    gap = np.expand_dims(w, -2) - np.expand_dims(w, -1)
    F = np.where(gap == 0, 0, 1 / np.where(gap == 0, 1, gap))
    return np.diagonal(inner, 0, -2, -1), v @ (F * inner)


@jvprule(np.linalg.eigvalsh)
def _(da, y, a, *, UPLO='L'):
    w, v = np.linalg.eigh(a, UPLO)
    if UPLO in ('L', 'l'):
        dS = np.tril(da) + np.swapaxes(np.tril(da, -1), -1, -2)
    else:
        dS = np.triu(da) + np.swapaxes(np.triu(da, 1), -1, -2)
    return np.sum(v * (dS @ v), axis=-2)


if hasattr(np.linalg, "svdvals"):       # NumPy >= 2.0
    @jvprule(np.linalg.svdvals)
    def _(dx, y, x):
        # ds_i = u_i^T dx v_i
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        return np.sum(u * (dx @ np.swapaxes(vt, -1, -2)), axis=-2)


# ---------------------------------------------------------------- norms
# every output value is a function of its own slice of x: the tangent is the slice's
# gradient (the reverse rule's, for a unit adjoint) contracted with the tangent

@jvprule(np.linalg.norm)
def _(dx, y, x, *, ord=None, axis=None, keepdims=False):
    if ord is None or ord == 'fro':
        return np.real(np.sum(np.conjugate(x) * dx, axis=axis, keepdims=keepdims)) / np.where(y > 0, y, 1)
    slope = norm_grad(np.ones_like(y), x, y, ord, axis, keepdims)
    return np.real(np.sum(slope * dx, axis=axis, keepdims=keepdims))


if hasattr(np.linalg, "vector_norm"):   # NumPy >= 2.0
    @jvprule(np.linalg.vector_norm)
    def _(dx, y, x, *, axis=None, keepdims=False, ord=2):
        if ord == 2:
            return np.real(np.sum(np.conjugate(x) * dx, axis=axis, keepdims=keepdims)) / np.where(y > 0, y, 1)
        slope = vector_norm_grad(np.ones_like(y), x, y, ord, axis, keepdims)
        return np.real(np.sum(slope * dx, axis=axis, keepdims=keepdims))

    @jvprule(np.linalg.matrix_norm)
    def _(dx, y, x, *, keepdims=False, ord='fro'):
        if ord == 'fro':
            return np.real(np.sum(np.conjugate(x) * dx, axis=(-2, -1), keepdims=keepdims)) / np.where(y > 0, y, 1)
        slope = norm_grad(np.ones_like(y), x, y, ord, (-2, -1), keepdims)
        return np.real(np.sum(slope * dx, axis=(-2, -1), keepdims=keepdims))
