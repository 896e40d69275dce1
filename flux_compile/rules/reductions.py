"""Reduction and scan rules: sum, mean, prod, max/min, var/std, cumsum, ...

``axis`` may be None, an int or a tuple; ``keepdims`` either way. The adjoint
of a reduction is spread back over the reduced axes by ``sum_grad``.
"""
import numpy as np

from .registry import diffrule, known
from .helpers import (average_grads, cumprod_grad, diff_grad, diff_parts_grads, extremum_mask,
                      gradient_grads, prod_others, reduced_size, sum_grad)


# ---------------------------------------------------------------- sums and products

@diffrule(np.sum)
def _(dy, y, a, *, axis=None, dtype=None, keepdims=False):
    return sum_grad(dy, a.shape, axis, keepdims)


@diffrule(np.nansum)
def _(dy, y, a, *, axis=None, dtype=None, keepdims=False):
    return sum_grad(dy, a.shape, axis, keepdims) * np.logical_not(np.isnan(a))


@diffrule(np.mean)
def _(dy, y, a, *, axis=None, dtype=None, keepdims=False):
    return sum_grad(dy, a.shape, axis, keepdims) / reduced_size(a.shape, axis)


@diffrule(np.prod)
def _(dy, y, a, *, axis=None, dtype=None, keepdims=False):
    # product of the other elements: exact also where a has zeros
    return sum_grad(dy, a.shape, axis, keepdims) * prod_others(a, axis)


# ---------------------------------------------------------------- extrema (ties share)

@diffrule(np.max)
def _(dy, y, a, *, axis=None, keepdims=False):
    return sum_grad(dy, a.shape, axis, keepdims) * extremum_mask(a, y, axis, keepdims)


@diffrule(np.amax)
def _(dy, y, a, *, axis=None, keepdims=False):
    return sum_grad(dy, a.shape, axis, keepdims) * extremum_mask(a, y, axis, keepdims)


@diffrule(np.min)
def _(dy, y, a, *, axis=None, keepdims=False):
    return sum_grad(dy, a.shape, axis, keepdims) * extremum_mask(a, y, axis, keepdims)


@diffrule(np.amin)
def _(dy, y, a, *, axis=None, keepdims=False):
    return sum_grad(dy, a.shape, axis, keepdims) * extremum_mask(a, y, axis, keepdims)


@diffrule(np.ptp)
def _(dy, y, a, *, axis=None, keepdims=False):
    hi = extremum_mask(a, np.max(a, axis=axis, keepdims=keepdims), axis, keepdims)
    lo = extremum_mask(a, np.min(a, axis=axis, keepdims=keepdims), axis, keepdims)
    return sum_grad(dy, a.shape, axis, keepdims) * (hi - lo)


# ---------------------------------------------------------------- moments

@diffrule(np.var)
def _(dy, y, a, *, axis=None, dtype=None, ddof=0, keepdims=False):
    centred = np.conjugate(a - np.mean(a, axis=axis, keepdims=True))     # conj: complex a
    return sum_grad(np.real(dy), a.shape, axis, keepdims) * 2 * centred / (reduced_size(a.shape, axis) - ddof)


@diffrule(np.std)
def _(dy, y, a, *, axis=None, dtype=None, ddof=0, keepdims=False):
    # zero spread (all values equal, or one value): gradient 0, as autograd and central differences
    centred = np.conjugate(a - np.mean(a, axis=axis, keepdims=True))     # conj: complex a
    return sum_grad(np.real(dy) / np.where(y > 0, y, 1), a.shape, axis, keepdims) * centred / (reduced_size(a.shape, axis) - ddof)


# ---------------------------------------------------------------- scans and differences

@diffrule(np.cumsum)
def _(dy, y, a, *, axis=None, dtype=None):
    # reversed cumulative sum; axis=None scanned the flattened array
    if axis is None:
        return np.reshape(np.flip(np.cumsum(np.flip(dy))), a.shape)
    return np.flip(np.cumsum(np.flip(dy, axis), axis=axis), axis)


if hasattr(np, "cumulative_sum"):       # NumPy >= 2.1
    @diffrule(np.cumulative_sum)
    def _(dy, y, x, *, axis=None, dtype=None):
        return np.flip(np.cumsum(np.flip(dy, axis), axis=axis), axis)


@diffrule(np.cumprod)
def _(dy, y, a, *, axis=None, dtype=None):
    # assumes a has no zeros
    return cumprod_grad(dy, a, y, axis)


if hasattr(np, "cumulative_prod"):      # NumPy >= 2.1
    @diffrule(np.cumulative_prod)
    def _(dy, y, x, *, axis=None, dtype=None):
        return cumprod_grad(dy, x, y, axis)


@diffrule(np.diff)
def _(dy, y, a, n=1, axis=-1, prepend=None, append=None):
    # prepend and append are concatenated before differencing; they get their share
    if known(prepend is None) and known(append is None):
        return diff_grad(dy, n, axis), None, None, None, None
    return diff_parts_grads(dy, a, n, axis, prepend, append)


@diffrule(np.gradient)
def _(dy, y, f, *varargs, axis=None, edge_order=1):
    # y: one array per differentiated axis (a list), or one array; the spacings are constants
    return gradient_grads(dy, f, varargs, axis, edge_order)


@diffrule(np.average)
def _(dy, y, a, axis=None, weights=None, *, returned=False, keepdims=False):
    return average_grads(dy, a, axis, weights, returned, keepdims)


# ---------------------------------------------------------------- traces

@diffrule(np.trace)
def _(dy, y, a, *, offset=0, axis1=0, axis2=1, dtype=None):
    eye = np.eye(a.shape[axis1], a.shape[axis2], offset, dtype=a.dtype)
    return np.moveaxis(np.expand_dims(dy, (-2, -1)) * eye, (-2, -1), (axis1, axis2))


if hasattr(np.linalg, "trace"):         # NumPy >= 2.0
    @diffrule(np.linalg.trace)
    def _(dy, y, x, *, offset=0, dtype=None):
        return np.expand_dims(dy, (-2, -1)) * np.eye(x.shape[-2], x.shape[-1], offset, dtype=x.dtype)
