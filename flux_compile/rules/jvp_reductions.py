"""Forward-mode rules for reductions and scans. Sums, means, scans, differences and
traces are linear: their tangent is the same reduction of the tangent."""
import numpy as np

from .registry import jvprule, linear_jvp
from .helpers import extremum_mask, prod_others, reduced_size

linear_jvp(np.sum, np.mean, np.cumsum, np.diff, np.trace)
for _name in ("cumulative_sum",):
    if hasattr(np, _name):          # NumPy >= 2.1
        linear_jvp(getattr(np, _name))
if hasattr(np.linalg, "trace"):
    linear_jvp(np.linalg.trace)


@jvprule(np.nansum)
def _(da, y, a, *, axis=None, dtype=None, keepdims=False):
    return np.sum(np.where(np.isnan(a), 0, da), axis=axis, keepdims=keepdims)


@jvprule(np.prod)
def _(da, y, a, *, axis=None, dtype=None, keepdims=False):
    # sum over i of da_i times the product of the others: exact where a has zeros
    return np.sum(da * prod_others(a, axis), axis=axis, keepdims=keepdims)


# ---------------------------------------------------------------- extrema (ties share)

@jvprule(np.max)
def _(da, y, a, *, axis=None, keepdims=False):
    return np.sum(da * extremum_mask(a, y, axis, keepdims), axis=axis, keepdims=keepdims)


@jvprule(np.amax)
def _(da, y, a, *, axis=None, keepdims=False):
    return np.sum(da * extremum_mask(a, y, axis, keepdims), axis=axis, keepdims=keepdims)


@jvprule(np.min)
def _(da, y, a, *, axis=None, keepdims=False):
    return np.sum(da * extremum_mask(a, y, axis, keepdims), axis=axis, keepdims=keepdims)


@jvprule(np.amin)
def _(da, y, a, *, axis=None, keepdims=False):
    return np.sum(da * extremum_mask(a, y, axis, keepdims), axis=axis, keepdims=keepdims)


@jvprule(np.ptp)
def _(da, y, a, *, axis=None, keepdims=False):
    hi = extremum_mask(a, np.max(a, axis=axis, keepdims=keepdims), axis, keepdims)
    lo = extremum_mask(a, np.min(a, axis=axis, keepdims=keepdims), axis, keepdims)
    return np.sum(da * (hi - lo), axis=axis, keepdims=keepdims)


# ---------------------------------------------------------------- moments

@jvprule(np.var)
def _(da, y, a, *, axis=None, dtype=None, ddof=0, keepdims=False):
    centred = np.conjugate(a - np.mean(a, axis=axis, keepdims=True))
    return np.real(np.sum(2 * centred * da, axis=axis, keepdims=keepdims)) / (reduced_size(a.shape, axis) - ddof)


@jvprule(np.std)
def _(da, y, a, *, axis=None, dtype=None, ddof=0, keepdims=False):
    # zero spread: slope 0, as the reverse rule
    centred = np.conjugate(a - np.mean(a, axis=axis, keepdims=True))
    dvar = np.real(np.sum(centred * da, axis=axis, keepdims=keepdims)) / (reduced_size(a.shape, axis) - ddof)
    return dvar / np.where(y > 0, y, 1)


# ---------------------------------------------------------------- products along an axis

@jvprule(np.cumprod)
def _(da, y, a, *, axis=None, dtype=None):
    # assumes a has no zeros (as the reverse rule): y * cumsum(da / a)
    if axis is None:
        return y * np.cumsum(np.ravel(da / a))
    return y * np.cumsum(da / a, axis=axis)


if hasattr(np, "cumulative_prod"):      # NumPy >= 2.1
    @jvprule(np.cumulative_prod)
    def _(dx, y, x, *, axis=None, dtype=None):
        return y * np.cumulative_sum(dx / x, axis=axis)
