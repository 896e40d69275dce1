"""Elementwise rules: unary and binary ufuncs, clip, where, casts.

Binary rules undo broadcasting with ``unbroadcast``. Constants are Python
floats so float32 stays float32 (NEP 50).
"""
import numpy as np

from .registry import diffrule, known, nondiff_primitive
from .helpers import (astype, cast_grad, choose, choose_grad, clip_bound_grad, identity, imag_grad,
                      inplace_result, linspace_grad, match_input, unbroadcast)

# Constants are written as literals (ln 2, ln 10, pi/180): rules are inlined
# into generated code, which has no access to this module's globals.


# ---------------------------------------------------------------- unary: exp/log

@diffrule(np.exp)
def _(dy, y, x):
    return dy * y


@diffrule(np.exp2)
def _(dy, y, x):
    return dy * y * 0.6931471805599453


@diffrule(np.expm1)
def _(dy, y, x):
    return dy * (y + 1)


@diffrule(np.log)
def _(dy, y, x):
    return dy / x


@diffrule(np.log2)
def _(dy, y, x):
    return dy / (x * 0.6931471805599453)


@diffrule(np.log10)
def _(dy, y, x):
    return dy / (x * 2.302585092994046)


@diffrule(np.log1p)
def _(dy, y, x):
    return dy / (1 + x)


# ---------------------------------------------------------------- unary: powers

@diffrule(np.sqrt)
def _(dy, y, x):
    return dy / (2 * y)


@diffrule(np.cbrt)
def _(dy, y, x):
    return dy / (3 * y * y)


@diffrule(np.square)
def _(dy, y, x):
    return dy * 2 * x


@diffrule(np.reciprocal)
def _(dy, y, x):
    return -dy * y * y


# ---------------------------------------------------------------- unary: signs

@diffrule(np.absolute)
def _(dy, y, x):
    # complex x: conj(x) / |x| (autograd's convention); the output is real, so is its adjoint
    return np.real(dy) * np.conjugate(np.sign(x))


@diffrule(np.fabs)
def _(dy, y, x):
    return dy * np.sign(x)


@diffrule(np.negative)
def _(dy, y, x):
    return -dy


@diffrule(np.positive)
def _(dy, y, x):
    return dy


# ---------------------------------------------------------------- unary: trigonometry

@diffrule(np.sin)
def _(dy, y, x):
    return dy * np.cos(x)


@diffrule(np.cos)
def _(dy, y, x):
    return -dy * np.sin(x)


@diffrule(np.tan)
def _(dy, y, x):
    return dy * (1 + y * y)


@diffrule(np.arcsin)
def _(dy, y, x):
    return dy / np.sqrt(1 - x * x)


@diffrule(np.arccos)
def _(dy, y, x):
    return -dy / np.sqrt(1 - x * x)


@diffrule(np.arctan)
def _(dy, y, x):
    return dy / (1 + x * x)


@diffrule(np.sinc)
def _(dy, y, x):
    # sinc(x) = sin(pi x) / (pi x): a smooth even function, slope 0 at x = 0 (autograd: NaN)
    at0 = x == 0
    return dy * np.where(at0, 0, (np.cos(np.pi * x) - y) / np.where(at0, 1, x))


@diffrule(np.deg2rad)
def _(dy, y, x):
    return dy * 0.017453292519943295


@diffrule(np.radians)
def _(dy, y, x):
    return dy * 0.017453292519943295


@diffrule(np.rad2deg)
def _(dy, y, x):
    return dy / 0.017453292519943295


@diffrule(np.degrees)
def _(dy, y, x):
    return dy / 0.017453292519943295


# ---------------------------------------------------------------- unary: hyperbolic

@diffrule(np.sinh)
def _(dy, y, x):
    return dy * np.cosh(x)


@diffrule(np.cosh)
def _(dy, y, x):
    return dy * np.sinh(x)


@diffrule(np.tanh)
def _(dy, y, x):
    return dy * (1 - y * y)


@diffrule(np.arcsinh)
def _(dy, y, x):
    return dy / np.sqrt(x * x + 1)


@diffrule(np.arccosh)
def _(dy, y, x):
    return dy / np.sqrt(x * x - 1)


@diffrule(np.arctanh)
def _(dy, y, x):
    return dy / (1 - x * x)


# ---------------------------------------------------------------- binary: arithmetic

@diffrule(np.add)
def _(dy, y, x1, x2):
    return unbroadcast(dy, x1.shape), unbroadcast(dy, x2.shape)


@diffrule(np.subtract)
def _(dy, y, x1, x2):
    return unbroadcast(dy, x1.shape), unbroadcast(-dy, x2.shape)


@diffrule(np.multiply)
def _(dy, y, x1, x2):
    return unbroadcast(dy * x2, x1.shape), unbroadcast(dy * x1, x2.shape)


@diffrule(np.divide)
def _(dy, y, x1, x2):
    return unbroadcast(dy / x2, x1.shape), unbroadcast(-dy * y / x2, x2.shape)


@diffrule(np.power)
def _(dy, y, x1, x2):
    # log taken where x1 > 0 only: d(0**p)/dp is 0, negative bases have none;
    # x**0 has derivative 0 everywhere, also at x = 0 (0 * 0**-1 would be NaN; autograd's convention)
    if known(x2 != 0):
        return (unbroadcast(dy * x2 * x1 ** (x2 - 1), x1.shape),
                unbroadcast(dy * y * np.log(np.where(x1 > 0, x1, 1)), x2.shape))
    return (unbroadcast(dy * x2 * x1 ** np.where(x2 != 0, x2 - 1, 1), x1.shape),
            unbroadcast(dy * y * np.log(np.where(x1 > 0, x1, 1)), x2.shape))


@diffrule(np.float_power)
def _(dy, y, x1, x2):
    # float_power computes in float64; gradients come back in each input's dtype
    exponent = x2 - 1 if known(x2 != 0) else np.where(x2 != 0, x2 - 1, 1)
    return (astype(unbroadcast(dy * x2 * np.float_power(x1, exponent), x1.shape), x1.dtype),
            astype(unbroadcast(dy * y * np.log(np.where(x1 > 0, x1, 1)), x2.shape), x2.dtype))


@diffrule(np.remainder)
def _(dy, y, x1, x2):
    return unbroadcast(dy, x1.shape), unbroadcast(-dy * np.floor_divide(x1, x2), x2.shape)


@diffrule(np.fmod)
def _(dy, y, x1, x2):
    return unbroadcast(dy, x1.shape), unbroadcast(-dy * np.trunc(x1 / x2), x2.shape)


# ---------------------------------------------------------------- binary: max/min (ties split)

@diffrule(np.maximum)
def _(dy, y, x1, x2):
    return (unbroadcast(np.where(x1 == x2, 0.5 * dy, dy * (x1 > x2)), x1.shape),
            unbroadcast(np.where(x1 == x2, 0.5 * dy, dy * (x2 > x1)), x2.shape))


@diffrule(np.minimum)
def _(dy, y, x1, x2):
    return (unbroadcast(np.where(x1 == x2, 0.5 * dy, dy * (x1 < x2)), x1.shape),
            unbroadcast(np.where(x1 == x2, 0.5 * dy, dy * (x2 < x1)), x2.shape))


@diffrule(np.fmax)
def _(dy, y, x1, x2):
    # a NaN loses: the gradient goes to the other argument
    return (unbroadcast(np.where(x1 == x2, 0.5 * dy, dy * np.logical_or(x1 > x2, np.isnan(x2))), x1.shape),
            unbroadcast(np.where(x1 == x2, 0.5 * dy, dy * np.logical_or(x2 > x1, np.isnan(x1))), x2.shape))


@diffrule(np.fmin)
def _(dy, y, x1, x2):
    return (unbroadcast(np.where(x1 == x2, 0.5 * dy, dy * np.logical_or(x1 < x2, np.isnan(x2))), x1.shape),
            unbroadcast(np.where(x1 == x2, 0.5 * dy, dy * np.logical_or(x2 < x1, np.isnan(x1))), x2.shape))


# ---------------------------------------------------------------- binary: other

@diffrule(np.arctan2)
def _(dy, y, x1, x2):
    r2 = x1 * x1 + x2 * x2
    return unbroadcast(dy * x2 / r2, x1.shape), unbroadcast(-dy * x1 / r2, x2.shape)


@diffrule(np.hypot)
def _(dy, y, x1, x2):
    # at hypot = 0 the zero subgradient (as for norms), not 0/0
    r = dy / np.where(y > 0, y, 1)
    return unbroadcast(r * x1, x1.shape), unbroadcast(r * x2, x2.shape)


@diffrule(np.logaddexp)
def _(dy, y, x1, x2):
    return unbroadcast(dy * np.exp(x1 - y), x1.shape), unbroadcast(dy * np.exp(x2 - y), x2.shape)


@diffrule(np.logaddexp2)
def _(dy, y, x1, x2):
    return unbroadcast(dy * np.exp2(x1 - y), x1.shape), unbroadcast(dy * np.exp2(x2 - y), x2.shape)


# ---------------------------------------------------------------- selection

@diffrule(np.clip)
def _(dy, y, a, a_min, a_max):
    # a gets the adjoint where the result is neither bound (autograd's convention, also at a
    # tie); a bound gets it where the result equals it (the upper one when they meet)
    return (unbroadcast(dy * ((y != a_min) & (y != a_max)), a.shape),
            clip_bound_grad(dy, y, a_min, a_max),
            clip_bound_grad(dy, y, a_max))


@diffrule(np.where)
def _(dy, out, condition, x, y):
    # NumPy's names for the inputs; the output is called out here
    return None, unbroadcast(np.where(condition, dy, 0), x.shape), unbroadcast(np.where(condition, 0, dy), y.shape)


# ---------------------------------------------------------------- casts and copies

@diffrule(astype)
def _(dy, y, x, dtype):
    return cast_grad(dy, x.dtype, dtype), None


@diffrule(inplace_result)
def _(dy, y, r, target):
    # the cast back to r's dtype; y is float wherever a gradient flows (an integer target with
    # a float r raises in the forward)
    return astype(dy, r.dtype), None


@diffrule(identity)
def _(dy, y, x):
    return dy


@diffrule(choose)
def _(dy, y, taken, a, b):
    return None, choose_grad(dy, taken, a), choose_grad(dy, taken, b, other=True)


@diffrule(np.copy)
def _(dy, y, a):
    return dy


# ---------------------------------------------------------------- no gradient

nondiff_primitive(
    np.sign, np.floor, np.ceil, np.round, np.around, np.rint, np.trunc, np.fix,
    np.floor_divide, np.heaviside, np.isnan, np.isinf, np.isfinite, np.isclose,
    np.equal, np.not_equal, np.less, np.less_equal, np.greater, np.greater_equal,
    np.logical_and, np.logical_or, np.logical_not, np.logical_xor,
    np.zeros_like, np.ones_like, np.full_like, np.empty_like,
    np.argmax, np.argmin, np.argsort, np.argwhere, np.nonzero, np.flatnonzero,
    np.searchsorted, np.count_nonzero, np.any, np.all, np.array_equal,
    np.shape, np.ndim, np.size,
    np.zeros, np.ones, np.empty, np.eye, np.identity, np.arange,
)


# ---------------------------------------------------------------- creation from float arguments

@diffrule(np.full)
def _(dy, y, shape, fill_value, *, dtype=None, order="C", device=None, like=None):
    return None, unbroadcast(dy, np.shape(fill_value))


@diffrule(np.linspace)
def _(dy, y, start, stop, *, num=50, endpoint=True, retstep=False, dtype=None, axis=0, device=None):
    return (linspace_grad(dy, np.shape(start), num, endpoint, axis, 0),
            linspace_grad(dy, np.shape(stop), num, endpoint, axis, 1))


# ------------------------------------------------ real and complex parts, casts, cleaning

@diffrule(np.real)
def _(dy, y, val):
    return np.real(dy)


@diffrule(np.imag)
def _(dy, y, val):
    return imag_grad(dy, val)


@diffrule(np.conjugate)
def _(dy, y, x):
    return np.conjugate(dy)


@diffrule(np.nan_to_num)
def _(dy, y, x, *, copy=True, nan=0.0, posinf=None, neginf=None):
    return np.where(np.isfinite(x), dy, 0.0)


if hasattr(np, "astype"):           # NumPy 2: np.astype(x, dtype)
    @diffrule(np.astype)
    def _(dy, y, x, dtype, *, copy=True, device=None):
        return cast_grad(dy, x.dtype, dtype), None


@diffrule(np.angle)
def _(dy, y, z, *, deg=False):
    # d angle = Im(dz / z): conj(i z) / |z|^2 (autograd's); 0 for a real z, and 0 at z = 0
    # (the angle jumps there: the zero subgradient, where autograd gives NaN)
    scale = 57.29577951308232 if deg else 1.0
    safe = np.where(z == 0, 1, z)
    return match_input(np.where(z == 0, 0, np.real(dy) * scale * np.conjugate(safe * 1j) / np.abs(safe) ** 2), z)


@diffrule(np.real_if_close)
def _(dy, y, a, *, tol=100):
    return match_input(dy, a)
