"""Forward-mode (tangent) rules for the elementwise primitives.

A rule gets the tangent of each input (``None`` where it is zero), the output, the
inputs and the keyword constants, and returns the output's tangent; it is inlined
into the generated tangent code like a reverse rule into the backward. Unary rules
are the reverse rule's factor times ``dx``; binary ones add one term per input whose
tangent is not zero (``tsum``), so the generated code has no zero arithmetic.
"""
import numpy as np

from .registry import jvprule, known, linear_jvp
from .helpers import astype, choose, identity, inplace_result


def tsum(a, b):
    """The sum of two tangent terms, either of which may be zero (None): compile time only."""
    if a is None:
        return b
    if b is None:
        return a
    return a + b


tsum.__flux_inline__ = True     # inlined into the rule (None is a compile-time value)


def broadcast_like(t, y):
    """Tangent ``t`` spread to the shape of ``y`` (a broadcast operand's tangent alone)."""
    if np.shape(t) == np.shape(y):
        return t
    return np.broadcast_to(t, np.shape(y)).copy()


def cast_tangent(dx, dtype):
    """Tangent ``dx`` cast like its value to ``dtype``; zero (float64) for an integer or
    boolean ``dtype``, whose values do not vary smoothly."""
    if np.dtype(dtype).kind in "fc":
        return dx.astype(dtype, copy=False)
    return np.zeros(np.shape(dx))


linear_jvp(broadcast_like, cast_tangent)

# ---------------------------------------------------------------- linear ones

linear_jvp(np.negative, np.positive, np.copy, identity, np.real, np.imag, np.conjugate,
           np.deg2rad, np.radians, np.rad2deg, np.degrees, np.where, choose)


# ---------------------------------------------------------------- exp/log


@jvprule(np.exp)
def _(dx, y, x):
    return dx * y


@jvprule(np.exp2)
def _(dx, y, x):
    return dx * y * 0.6931471805599453


@jvprule(np.expm1)
def _(dx, y, x):
    return dx * (y + 1)


@jvprule(np.log)
def _(dx, y, x):
    return dx / x


@jvprule(np.log2)
def _(dx, y, x):
    return dx / (x * 0.6931471805599453)


@jvprule(np.log10)
def _(dx, y, x):
    return dx / (x * 2.302585092994046)


@jvprule(np.log1p)
def _(dx, y, x):
    return dx / (1 + x)


# ---------------------------------------------------------------- powers

@jvprule(np.sqrt)
def _(dx, y, x):
    return dx / (2 * y)


@jvprule(np.cbrt)
def _(dx, y, x):
    return dx / (3 * y * y)


@jvprule(np.square)
def _(dx, y, x):
    return 2 * x * dx


@jvprule(np.reciprocal)
def _(dx, y, x):
    return -dx * y * y


# ---------------------------------------------------------------- signs

@jvprule(np.absolute)
def _(dx, y, x):
    # complex x: Re(conj(x) dx) / |x|; real x: sign(x) dx
    return np.real(np.conjugate(np.sign(x)) * dx)


@jvprule(np.fabs)
def _(dx, y, x):
    return dx * np.sign(x)


# ---------------------------------------------------------------- trigonometry

@jvprule(np.sin)
def _(dx, y, x):
    return dx * np.cos(x)


@jvprule(np.cos)
def _(dx, y, x):
    return -dx * np.sin(x)


@jvprule(np.tan)
def _(dx, y, x):
    return dx * (1 + y * y)


@jvprule(np.arcsin)
def _(dx, y, x):
    return dx / np.sqrt(1 - x * x)


@jvprule(np.arccos)
def _(dx, y, x):
    return -dx / np.sqrt(1 - x * x)


@jvprule(np.arctan)
def _(dx, y, x):
    return dx / (1 + x * x)


@jvprule(np.sinc)
def _(dx, y, x):
    at0 = x == 0
    return dx * np.where(at0, 0, (np.cos(np.pi * x) - y) / np.where(at0, 1, x))


# ---------------------------------------------------------------- hyperbolic

@jvprule(np.sinh)
def _(dx, y, x):
    return dx * np.cosh(x)


@jvprule(np.cosh)
def _(dx, y, x):
    return dx * np.sinh(x)


@jvprule(np.tanh)
def _(dx, y, x):
    return dx * (1 - y * y)


@jvprule(np.arcsinh)
def _(dx, y, x):
    return dx / np.sqrt(x * x + 1)


@jvprule(np.arccosh)
def _(dx, y, x):
    return dx / np.sqrt(x * x - 1)


@jvprule(np.arctanh)
def _(dx, y, x):
    return dx / (1 - x * x)


# ---------------------------------------------------------------- binary arithmetic

@jvprule(np.add)
def _(dx1, dx2, y, x1, x2):
    return broadcast_like(tsum(dx1, dx2), y)


@jvprule(np.subtract)
def _(dx1, dx2, y, x1, x2):
    return broadcast_like(tsum(dx1, None if dx2 is None else -dx2), y)


@jvprule(np.multiply)
def _(dx1, dx2, y, x1, x2):
    return tsum(None if dx1 is None else dx1 * x2, None if dx2 is None else x1 * dx2)


@jvprule(np.divide)
def _(dx1, dx2, y, x1, x2):
    return tsum(None if dx1 is None else dx1 / x2, None if dx2 is None else -dx2 * y / x2)


@jvprule(np.power)
def _(dx1, dx2, y, x1, x2):
    # as the reverse rule: x**0 has slope 0 also at 0; log only where x1 > 0
    if dx1 is None:
        t1 = None
    elif known(x2 != 0):
        t1 = dx1 * x2 * x1 ** (x2 - 1)
    else:
        t1 = dx1 * x2 * x1 ** np.where(x2 != 0, x2 - 1, 1)
    return tsum(t1, None if dx2 is None else dx2 * y * np.log(np.where(x1 > 0, x1, 1)))


@jvprule(np.float_power)
def _(dx1, dx2, y, x1, x2):
    exponent = x2 - 1 if known(x2 != 0) else np.where(x2 != 0, x2 - 1, 1)
    return tsum(None if dx1 is None else dx1 * x2 * np.float_power(x1, exponent),
                None if dx2 is None else dx2 * y * np.log(np.where(x1 > 0, x1, 1)))


@jvprule(np.remainder)
def _(dx1, dx2, y, x1, x2):
    return broadcast_like(tsum(dx1, None if dx2 is None else -dx2 * np.floor_divide(x1, x2)), y)


@jvprule(np.fmod)
def _(dx1, dx2, y, x1, x2):
    return broadcast_like(tsum(dx1, None if dx2 is None else -dx2 * np.trunc(x1 / x2)), y)


# ---------------------------------------------------------------- max/min (ties split)

@jvprule(np.maximum)
def _(dx1, dx2, y, x1, x2):
    tie = x1 == x2
    return broadcast_like(tsum(None if dx1 is None else dx1 * np.where(tie, 0.5, x1 > x2),
                               None if dx2 is None else dx2 * np.where(tie, 0.5, x2 > x1)), y)


@jvprule(np.minimum)
def _(dx1, dx2, y, x1, x2):
    tie = x1 == x2
    return broadcast_like(tsum(None if dx1 is None else dx1 * np.where(tie, 0.5, x1 < x2),
                               None if dx2 is None else dx2 * np.where(tie, 0.5, x2 < x1)), y)


@jvprule(np.fmax)
def _(dx1, dx2, y, x1, x2):
    tie = x1 == x2
    return broadcast_like(
        tsum(None if dx1 is None else dx1 * np.where(tie, 0.5, np.logical_or(x1 > x2, np.isnan(x2))),
             None if dx2 is None else dx2 * np.where(tie, 0.5, np.logical_or(x2 > x1, np.isnan(x1)))), y)


@jvprule(np.fmin)
def _(dx1, dx2, y, x1, x2):
    tie = x1 == x2
    return broadcast_like(
        tsum(None if dx1 is None else dx1 * np.where(tie, 0.5, np.logical_or(x1 < x2, np.isnan(x2))),
             None if dx2 is None else dx2 * np.where(tie, 0.5, np.logical_or(x2 < x1, np.isnan(x1)))), y)


# ---------------------------------------------------------------- other binary

@jvprule(np.arctan2)
def _(dx1, dx2, y, x1, x2):
    r2 = x1 * x1 + x2 * x2
    return tsum(None if dx1 is None else dx1 * x2 / r2, None if dx2 is None else -dx2 * x1 / r2)


@jvprule(np.hypot)
def _(dx1, dx2, y, x1, x2):
    r = 1 / np.where(y > 0, y, 1)
    return tsum(None if dx1 is None else dx1 * x1 * r, None if dx2 is None else dx2 * x2 * r)


@jvprule(np.logaddexp)
def _(dx1, dx2, y, x1, x2):
    return tsum(None if dx1 is None else dx1 * np.exp(x1 - y), None if dx2 is None else dx2 * np.exp(x2 - y))


@jvprule(np.logaddexp2)
def _(dx1, dx2, y, x1, x2):
    return tsum(None if dx1 is None else dx1 * np.exp2(x1 - y), None if dx2 is None else dx2 * np.exp2(x2 - y))


# ---------------------------------------------------------------- selection, casts, creation

@jvprule(np.clip)
def _(da, da_min, da_max, y, a, a_min, a_max):
    # as the reverse rule: a where the result is neither bound, a bound where it is that bound
    # (the upper one when they meet)
    inside = (y != a_min) & (y != a_max)
    at_max = y == a_max
    at_min = (y == a_min) & np.logical_not(at_max)
    t = tsum(None if da is None else da * inside, None if da_min is None else da_min * at_min)
    return broadcast_like(tsum(t, None if da_max is None else da_max * at_max), y)


@jvprule(astype)
def _(dx, ddtype, y, x, dtype):
    return cast_tangent(dx, y.dtype)


@jvprule(inplace_result)
def _(dr, dtarget, y, r, target):
    return cast_tangent(dr, y.dtype)


@jvprule(np.full)
def _(dshape, dfill_value, y, shape, fill_value, *, dtype=None, order="C", device=None, like=None):
    return np.full(shape, dfill_value, dtype=y.dtype)


@jvprule(np.linspace)
def _(dstart, dstop, y, start, stop, *, num=50, endpoint=True, retstep=False, dtype=None, axis=0,
      device=None):
    # linear in (start, stop): the same spacing of the tangents
    return np.linspace(0.0 if dstart is None else dstart, 0.0 if dstop is None else dstop, num=num,
                       endpoint=endpoint, axis=axis, dtype=y.dtype)


@jvprule(np.nan_to_num)
def _(dx, y, x, *, copy=True, nan=0.0, posinf=None, neginf=None):
    return np.where(np.isfinite(x), dx, 0.0)


if hasattr(np, "astype"):           # NumPy 2: np.astype(x, dtype)
    @jvprule(np.astype)
    def _(dx, ddtype, y, x, dtype, *, copy=True, device=None):
        return cast_tangent(dx, y.dtype)
