"""Concrete inputs for every derivative rule, used by ``test_rules_direct.py``.

``CASES`` lists :class:`Case` entries: a primitive, float64 arguments chosen in
its domain (positive for ``log``, ``|x| < 1`` for ``arcsin``, well separated
values for ``max`` and ``sort``, well-conditioned matrices for ``np.linalg``)
and the indexes of the arguments whose gradients are checked.
``NONDIFF_CASES`` lists primitives that are declared to have no gradient.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

import flux_compile.functions as F
from flux_compile import rules
from flux_compile.rules.helpers import astype, choose, getitem, identity, inplace_result, setitem, stack_items


@dataclass
class Case:
    primitive: Any
    args: tuple
    kwargs: dict = field(default_factory=dict)
    diff: tuple = (0,)
    name: str | None = None
    sym: tuple = ()          # arguments read as symmetric matrices (one triangle)
    dy_none: tuple = ()      # output entries whose adjoint is None (unused)
    autograd: Any = None     # None: look up by name; False: no comparison
    f32: bool = True         # include in the float32 dtype check
    rtol: float = 1e-5
    atol: float = 1e-7

    @property
    def id(self):
        label = primitive_name(self.primitive)
        return f"{label}[{self.name}]" if self.name else label


def primitive_name(p):
    """``np.exp``, ``np.linalg.inv``, ``fc.sigmoid``, ``getitem``: a readable name."""
    name = getattr(p, "__name__", repr(p))
    if getattr(np, name, None) is p:
        return f"np.{name}"
    if getattr(np.linalg, name, None) is p:
        return f"np.linalg.{name}"
    if getattr(np.fft, name, None) is p:
        return f"np.fft.{name}"
    if getattr(F, name, None) is p:
        return f"fc.{name}"
    module = getattr(p, "__module__", None) or "?"
    return name if module == "builtins" else f"{module}.{name}"


rng = np.random.default_rng(1234)


def r(*shape):
    """Standard normal."""
    return rng.standard_normal(shape)


def pos(*shape, lo=0.5, hi=2.0):
    """Positive, away from zero."""
    return rng.uniform(lo, hi, shape)


def unit(*shape):
    """Inside (-0.8, 0.8)."""
    return rng.uniform(-0.8, 0.8, shape)


def away(*shape):
    """Normal values kept at least 0.2 away from zero (for kinks at 0)."""
    x = r(*shape)
    return np.where(np.abs(x) < 0.2, np.sign(x + 1e-12) * 0.2 + x, x)


def sep(*shape):
    """Distinct values at least 0.5 apart (for max, min and sort)."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * 0.5 + rng.uniform(0, 0.1, n) - n / 4).reshape(shape)


def wellcond(n, batch=()):
    """A well-conditioned square matrix (or a stack of them)."""
    return 3 * np.eye(n) + 0.4 * r(*batch, n, n)


def spd(n, batch=()):
    """A symmetric positive-definite matrix with distinct eigenvalues."""
    q = np.linalg.qr(r(*batch, n, n))[0]
    w = np.arange(1, n + 1) * 1.5 + 0.5
    return (q * w[..., None, :]) @ np.swapaxes(q, -1, -2)


def s(x):
    """A 0-d float64 array (a scalar operand)."""
    return np.array(x, dtype=float)


CASES: list[Case] = []


def case(primitive, *args, **kw):
    options = {k: kw.pop(k) for k in list(kw) if k in Case.__dataclass_fields__}
    CASES.append(Case(primitive, args, kw, **options))


# ================================================================ elementwise: unary

for f, make in [
    (np.exp, lambda: r(3, 4)), (np.exp2, lambda: r(3, 4)), (np.expm1, lambda: r(3, 4)),
    (np.log, lambda: pos(3, 4)), (np.log2, lambda: pos(3, 4)), (np.log10, lambda: pos(3, 4)),
    (np.log1p, lambda: pos(3, 4)), (np.sqrt, lambda: pos(3, 4)), (np.cbrt, lambda: pos(3, 4)),
    (np.square, lambda: r(3, 4)), (np.reciprocal, lambda: pos(3, 4)),
    (np.absolute, lambda: away(3, 4)), (np.fabs, lambda: away(3, 4)),
    (np.negative, lambda: r(3, 4)), (np.positive, lambda: r(3, 4)),
    (np.sin, lambda: r(3, 4)), (np.cos, lambda: r(3, 4)), (np.tan, lambda: unit(3, 4)),
    (np.arcsin, lambda: unit(3, 4)), (np.arccos, lambda: unit(3, 4)), (np.arctan, lambda: r(3, 4)),
    (np.sinc, lambda: away(3, 4)),
    (np.deg2rad, lambda: r(3, 4)), (np.radians, lambda: r(3, 4)),
    (np.rad2deg, lambda: r(3, 4)), (np.degrees, lambda: r(3, 4)),
    (np.sinh, lambda: r(3, 4)), (np.cosh, lambda: r(3, 4)), (np.tanh, lambda: r(3, 4)),
    (np.arcsinh, lambda: r(3, 4)), (np.arccosh, lambda: pos(3, 4, lo=1.2, hi=3.0)),
    (np.arctanh, lambda: unit(3, 4)),
]:
    case(f, make())
case(np.exp, s(0.3), name="0-d")
case(np.tanh, r(5), name="1-d")

# ================================================================ elementwise: binary

BROADCAST = [((3, 4), (3, 4), "same"), ((3, 4), (4,), "row"), ((3, 1), (3, 4), "column"),
             ((3, 4), (), "scalar"), ((), (2, 3), "scalar-left"), ((3, 1), (1, 4), "outer")]
for f in (np.add, np.subtract, np.multiply, np.divide):
    for sa, sb, label in BROADCAST:
        b = pos(*sb) if f is np.divide else r(*sb)
        case(f, r(*sa), b, diff=(0, 1), name=label)

for f, ma, mb in [
    (np.power, pos, r), (np.float_power, pos, r),
    (np.arctan2, r, away), (np.hypot, r, r),
    (np.logaddexp, r, r), (np.logaddexp2, r, r),
    (np.maximum, sep, sep), (np.minimum, sep, sep),
    (np.fmax, sep, sep), (np.fmin, sep, sep),
]:
    case(f, ma(3, 4), mb(3, 4), diff=(0, 1), name="same")
    case(f, ma(3, 4), mb(4), diff=(0, 1), name="row")
case(np.power, pos(3, 4), s(2.0), diff=(0, 1), name="scalar-exponent")
case(np.power, pos(3, 1), pos(1, 4), diff=(0, 1), name="outer")

# ties go halves: central differences see exactly that
case(np.maximum, np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.0, 4.0]), diff=(0, 1), name="tie")
case(np.minimum, np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.0, 4.0]), diff=(0, 1), name="tie")
# fmax/fmin: a NaN loses
case(np.fmax, np.array([1.0, np.nan, 3.0]), np.array([0.0, 2.0, 4.0]), diff=(1,), name="nan",
     autograd=False)
case(np.fmin, np.array([1.0, np.nan, 3.0]), np.array([0.0, 2.0, 4.0]), diff=(1,), name="nan",
     autograd=False)

# remainder and fmod: away from the jumps (x1 / x2 not near a whole number)
_q = np.array([[0.3, 1.4, -2.6, 3.2], [-0.7, 2.3, 4.6, -1.2], [5.4, -3.3, 0.6, 1.7]])
_d = pos(3, 4, lo=0.8, hi=1.5)
case(np.remainder, _q * _d, _d, diff=(0, 1), name="same")
case(np.fmod, _q * _d, _d, diff=(0, 1), name="same")
case(np.remainder, _q * 1.3, s(1.3), diff=(0, 1), name="scalar")
case(np.fmod, _q * 1.3, s(1.3), diff=(0, 1), name="scalar")

# clip and where
_c = np.array([[-2.0, -0.5, 0.3, 1.7], [0.9, -1.4, 2.2, 0.1], [-0.2, 1.2, -3.0, 0.6]])
case(np.clip, _c, s(-1.0), s(1.0), diff=(0, 1, 2), name="scalars")
case(np.clip, _c, np.array([-1.0, -0.7, 0.0, 0.5]), s(1.0), diff=(0, 1, 2), name="row-bound")
case(np.clip, _c, None, s(0.5), diff=(0, 2), name="no-lower", autograd=False)
_m = r(3, 4) > 0
case(np.where, _m, r(3, 4), r(3, 4), diff=(1, 2), name="same")
case(np.where, _m, r(4), s(0.5), diff=(1, 2), name="broadcast",
     autograd=False)                 # autograd 1.9 does not unbroadcast here

# casts and copies
case(astype, r(3, 4), np.float64, name="float64")
case(identity, r(3, 4))
case(choose, np.True_, r(3, 4), r(3, 4), diff=(1, 2), name="then")       # an if in a loop region
case(choose, np.False_, r(3, 4), r(3, 4), diff=(1, 2), name="else")
case(choose, True, s(0.5), r(2), diff=(1, 2), name="shapes differ")
case(np.copy, r(3, 4))

# ================================================================ reductions

for f in (np.sum, np.mean, np.nansum):
    case(f, r(2, 3, 4), name="all")
    case(f, r(2, 3, 4), axis=1, name="axis1")
    case(f, r(2, 3, 4), axis=(0, 2), name="axes02")
    case(f, r(2, 3, 4), axis=-1, keepdims=True, name="last-keepdims")
    case(f, r(2, 3, 4), keepdims=True, name="all-keepdims")
case(np.sum, s(1.5), name="0-d")
case(np.nansum, np.array([[1.0, np.nan, 2.0], [0.5, 3.0, np.nan]]), axis=1, name="nan",
     autograd=False)

case(np.prod, pos(3, 4), name="all")
case(np.prod, pos(2, 3, 4), axis=1, name="axis1")
case(np.prod, pos(2, 3, 4), axis=(0, 2), keepdims=True, name="axes02-keepdims")
# autograd divides by the input and gives NaN at zeros; the rule is exact there
case(np.prod, np.array([[1.5, 0.0, 2.0], [0.7, 1.2, 3.0]]), axis=1, name="one-zero",
     autograd=False)
case(np.prod, np.array([[1.5, 0.0, 0.0], [0.7, 1.2, 3.0]]), axis=1, name="two-zeros",
     autograd=False)

for f in (np.max, np.amax, np.min, np.amin, np.ptp):
    case(f, sep(3, 4), name="all")
    case(f, sep(2, 3, 4), axis=1, name="axis1")
    case(f, sep(2, 3, 4), axis=(0, 2), keepdims=True, name="axes02-keepdims")
case(np.max, np.array([[1.0, 3.0, 3.0], [2.0, 0.5, 1.0]]), axis=1, name="tie")
case(np.min, np.array([[1.0, 3.0, 1.0], [2.0, 0.5, 1.0]]), axis=1, name="tie")

for f in (np.var, np.std):
    case(f, r(3, 4), name="all")
    case(f, r(2, 3, 4), axis=1, name="axis1")
    case(f, r(2, 3, 4), axis=(0, 2), ddof=1, keepdims=True, name="axes02-ddof1-keepdims")

case(np.cumsum, r(3, 4), name="flat")
case(np.cumsum, r(3, 4), axis=1, name="axis1")
case(np.cumsum, r(2, 3, 4), axis=0, name="axis0")
case(np.cumprod, pos(3, 4), name="flat")
case(np.cumprod, pos(3, 4), axis=1, name="axis1")
if hasattr(np, "cumulative_sum"):
    case(np.cumulative_sum, r(3, 4), axis=0, name="axis0", autograd=False)
    case(np.cumulative_sum, r(5), name="1-d", autograd=False)
    case(np.cumulative_prod, pos(3, 4), axis=1, name="axis1", autograd=False)

case(np.diff, r(3, 5), name="last")
case(np.diff, r(4, 3), n=2, axis=0, name="n2-axis0")

case(np.trace, r(4, 4), name="square")
case(np.trace, r(3, 5), offset=1, name="offset1")
case(np.trace, r(2, 3, 4), offset=-1, axis1=1, axis2=2, name="3-d")
if hasattr(np.linalg, "trace"):
    case(np.linalg.trace, r(2, 3, 3), name="batched", autograd=False)
    case(np.linalg.trace, r(3, 4), offset=1, name="offset1", autograd=False)

# ================================================================ shape

case(np.reshape, r(3, 4), (2, 6), name="2x6")
case(np.reshape, r(3, 4), (2, -1), order="F", name="order-F", autograd=False)
case(np.ravel, r(3, 4))
case(np.squeeze, r(3, 1, 4, 1), name="all")
case(np.squeeze, r(3, 1, 4, 1), axis=1, name="axis1")
case(np.expand_dims, r(3, 4), 1)
case(np.expand_dims, r(3, 4), (0, 3), name="tuple")
case(np.atleast_1d, s(2.0), name="0-d")
case(np.atleast_2d, r(4), name="1-d")
case(np.atleast_3d, r(3, 4), name="2-d")
case(np.atleast_1d, s(2.0), r(3), diff=(0, 1), name="two", autograd=False)
case(np.broadcast_to, r(4), (3, 4), name="row")
case(np.broadcast_to, r(3, 1), (2, 3, 4), name="column")

case(np.transpose, r(3, 4), name="2-d")
case(np.transpose, r(2, 3, 4), axes=(1, -1, 0), name="axes",
     autograd=False)                 # autograd mishandles negative axes
case(np.swapaxes, r(2, 3, 4), 0, 2)
case(np.moveaxis, r(2, 3, 4), 0, -1)
case(np.moveaxis, r(2, 3, 4, 5), (0, 1), (3, 2), name="tuple")
if hasattr(np, "matrix_transpose"):
    case(np.matrix_transpose, r(2, 3, 4), autograd=False)
    case(np.linalg.matrix_transpose, r(3, 4), autograd=False)

case(np.flip, r(3, 4), name="all")
case(np.flip, r(2, 3, 4), axis=1, name="axis1")
case(np.fliplr, r(3, 4))
case(np.flipud, r(3, 4))
case(np.roll, r(3, 4), 2, name="flat")
case(np.roll, r(3, 4), (1, -2), axis=(0, 1), name="axes")
case(np.rot90, r(3, 4), name="once")
case(np.rot90, r(2, 3, 4), k=3, axes=(1, 2), name="k3-axes12")

case(np.concatenate, [r(2, 3), r(1, 3), r(4, 3)], name="axis0")
case(np.concatenate, [r(2, 3), r(2, 1)], axis=1, name="axis1")
case(np.concatenate, [r(2, 3), r(4)], axis=None, name="flat", autograd=False)
case(np.stack, [r(3, 4), r(3, 4), r(3, 4)], name="axis0")
case(np.stack, [r(3, 4), r(3, 4)], axis=-1, name="last")
case(np.vstack, [r(4), r(2, 4)], name="1-d-and-2-d")
case(np.hstack, [r(3), r(2)], name="1-d")
case(np.hstack, [r(3, 2), r(3, 1)], name="2-d")
case(np.dstack, [r(3, 2), r(3, 2, 2)])
case(np.column_stack, [r(3), r(3, 2)])
case(np.append, r(2, 3), r(4), diff=(0, 1), name="flat")
case(np.append, r(2, 3), r(1, 3), diff=(0, 1), axis=0, name="axis0")

case(np.split, r(6, 4), 3, name="sections")
case(np.split, r(4, 6), [1, 4], axis=1, dy_none=(1,), name="indices-unused-piece")
case(np.array_split, r(7, 2), 3, name="uneven")
case(np.hsplit, r(3, 4), 2, name="2-d")
case(np.hsplit, r(6), 3, name="1-d")
case(np.vsplit, r(4, 3), [1], dy_none=(0,), name="unused-piece")
case(np.dsplit, r(2, 3, 4), 2)
if hasattr(np, "unstack"):
    case(np.unstack, r(3, 4), name="axis0", autograd=False)
    case(np.unstack, r(3, 4), axis=1, dy_none=(2,), name="axis1-unused", autograd=False)

case(np.tile, r(3), 2, name="1-d")
case(np.tile, r(2, 3), (2, 1, 3), name="more-reps")
case(np.tile, r(2, 3, 2), (2, 1), name="fewer-reps",
     autograd=False)                 # autograd sums the wrong tiles here
case(np.repeat, r(3, 2), 2, name="flat")
case(np.repeat, r(3, 4), [2, 0, 1, 3], axis=1, name="counts-axis1", autograd=False)
case(np.repeat, r(3, 4), 3, axis=0, name="axis0")
case(np.pad, r(3, 4), ((1, 2), (0, 3)), name="widths")
case(np.pad, r(3, 4), 1, constant_values=2.0, name="uniform", autograd=False)

case(np.diag, r(4), name="vector")
case(np.diag, r(3), k=1, name="vector-k1")
case(np.diag, r(3, 5), k=-1, name="matrix-k-1",
     autograd=False)                 # autograd assumes a square matrix
case(np.diagonal, r(4, 4), name="square")
case(np.diagonal, r(3, 5), offset=2, name="offset2")
case(np.diagonal, r(2, 3, 4), offset=-1, axis1=2, axis2=1, name="3-d")
if hasattr(np.linalg, "diagonal"):
    case(np.linalg.diagonal, r(2, 3, 4), offset=1, autograd=False)
case(np.tril, r(4, 4), name="square")
case(np.tril, r(2, 3, 4), k=1, name="batched-k1")
case(np.triu, r(4, 4), name="square")
case(np.triu, r(3, 5), k=-1, name="k-1")

case(np.sort, sep(3, 4), name="last")
case(np.sort, sep(3, 4), axis=0, name="axis0")
case(np.sort, sep(3, 4), axis=None, name="flat")

_x = r(4, 5)
for label, index in [
    ("int", 2), ("slice", (slice(1, 3), slice(None, None, 2))), ("negative-step", slice(None, None, -1)),
    ("newaxis-ellipsis", (None, Ellipsis, 1)), ("int-array-repeats", np.array([0, 2, 2, 3, 0])),
    ("bool-mask", _x > 0), ("row-mask", np.array([True, False, True, True])),
    ("pair-arrays", (np.array([0, 1, 1]), np.array([4, 0, 4]))),
    ("slice-and-array", (slice(None), np.array([[1, 1], [3, 0]]))),
    ("list", [1, 1, 2]),
]:
    case(getitem, _x, index, name=label)
case(getitem, r(2, 3, 4), (Ellipsis, np.array([0, 0, 3])), name="ellipsis-array")

case(np.take, r(3, 4), np.array([1, 1, 7, 0]), name="flat")
case(np.take, r(3, 4), np.array([[2, 2], [0, 1]]), axis=1, name="axis1")
case(np.take_along_axis, r(3, 4), np.array([[0, 0], [3, 1], [2, 2]]), axis=1, name="axis1",
     autograd=False)
case(np.take_along_axis, r(3, 4), np.array([[0, 2, 1, 1]]), axis=0, name="axis0-broadcast",
     autograd=False)

# ================================================================ linear algebra: products

for label, sa, sb in [("2d-2d", (3, 4), (4, 5)), ("1d-2d", (4,), (4, 5)), ("2d-1d", (3, 4), (4,)),
                      ("1d-1d", (4,), (4,)), ("batched", (2, 3, 4), (4, 5)),
                      ("broadcast-batch", (2, 1, 3, 4), (5, 4, 2)), ("1d-batched", (4,), (2, 4, 3))]:
    case(np.matmul, r(*sa), r(*sb), diff=(0, 1), name=label)
for label, sa, sb in [("2d-2d", (3, 4), (4, 5)), ("1d-1d", (4,), (4,)), ("2d-1d", (3, 4), (4,)),
                      ("1d-2d", (4,), (4, 5)), ("3d-3d", (2, 3, 4), (5, 4, 2)),
                      ("scalar", (), (3, 4)), ("3d-1d", (2, 3, 4), (4,))]:
    case(np.dot, r(*sa), r(*sb), diff=(0, 1), name=label)
for label, sa, sb in [("1d", (4,), (4,)), ("2d", (3, 4), (5, 4)), ("3d-2d", (2, 3, 4), (5, 4)),
                      ("scalar", (), (3, 4))]:
    case(np.inner, r(*sa), r(*sb), diff=(0, 1), name=label)
case(np.outer, r(3), r(4), diff=(0, 1), name="1d")
case(np.outer, r(2, 2), r(3), diff=(0, 1), name="flattens",
     autograd=False)                 # autograd returns the flattened shape
case(np.vdot, r(3, 4), r(12), diff=(0, 1))
case(np.tensordot, r(3, 4, 5), r(4, 5, 2), diff=(0, 1), name="axes2")
case(np.tensordot, r(3, 4), r(4, 5), diff=(0, 1), axes=1, name="axes1")
case(np.tensordot, r(3, 4, 5), r(5, 2, 3), diff=(0, 1), axes=([2, 0], [0, 2]), name="pairs")
case(np.tensordot, r(3, 4), r(2, 5), diff=(0, 1), axes=0, name="outer")
for spec, shapes in [("ij,jk->ik", [(3, 4), (4, 5)]), ("ij->", [(3, 4)]), ("ij->j", [(3, 4)]),
                     ("ii->i", [(4, 4)]), ("ii", [(3, 3)]), ("ij,ij->i", [(3, 4), (3, 4)]),
                     ("ij,jk", [(3, 4), (4, 2)]), ("ijk,k->ji", [(2, 3, 4), (4,)]),
                     ("ij,k->i", [(3, 4), (2,)]), ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 2)]),
                     ("i,i", [(5,), (5,)]), ("ij,j->ij", [(3, 4), (4,)]), ("iij->ij", [(3, 3, 2)])]:
    case(np.einsum, spec, *[r(*sh) for sh in shapes], diff=tuple(range(1, len(shapes) + 1)),
         name=spec)
case(np.kron, r(2, 3), r(3, 2), diff=(0, 1), name="2d-2d")
case(np.kron, r(3), r(2, 2), diff=(0, 1), name="1d-2d")
case(np.cross, r(4, 3), r(4, 3), diff=(0, 1), name="batched")
case(np.cross, r(3), r(4, 3), diff=(0, 1), name="broadcast",
     autograd=False)                 # autograd does not unbroadcast
case(np.cross, r(2), r(2), diff=(0, 1), name="2-vectors")
case(np.cross, r(4, 2), r(4, 3), diff=(0, 1), name="2-and-3", autograd=False)
case(np.cross, r(3, 4), r(3, 4), diff=(0, 1), axis=0, name="axis0")
case(np.cross, r(3, 4), r(4, 3), diff=(0, 1), axisa=0, axisc=0, name="axisa-axisc", autograd=False)
case(np.linalg.multi_dot, [r(2, 3), r(3, 4), r(4, 2)], name="matrices", autograd=False)
case(np.linalg.multi_dot, [r(3), r(3, 4), r(4, 2), r(2)], name="vector-ends", autograd=False)
if hasattr(np, "vecdot"):
    case(np.vecdot, r(3, 4), r(4), diff=(0, 1), name="broadcast", autograd=False)
    case(np.vecdot, r(4, 3), r(4, 3), diff=(0, 1), axis=0, name="axis0", autograd=False)
    case(np.linalg.vecdot, r(2, 3, 4), r(3, 4), diff=(0, 1), autograd=False)
    case(np.linalg.matmul, r(2, 3, 4), r(4, 2), diff=(0, 1), autograd=False)
    case(np.linalg.outer, r(3), r(4), diff=(0, 1), autograd=False)
    case(np.linalg.tensordot, r(3, 4, 5), r(4, 5, 2), diff=(0, 1), autograd=False)
    case(np.linalg.cross, r(4, 3), r(3), diff=(0, 1), autograd=False)

# ================================================================ linear algebra: np.linalg

case(np.linalg.inv, wellcond(3), name="3x3")
case(np.linalg.inv, wellcond(3, (2,)), name="batched")
case(np.linalg.det, wellcond(3), name="3x3")
case(np.linalg.det, wellcond(3, (2,)), name="batched")
case(np.linalg.slogdet, wellcond(3), name="3x3")
case(np.linalg.slogdet, wellcond(3, (2,)), dy_none=(0,), name="batched-sign-unused")
case(np.linalg.solve, wellcond(3), r(3), diff=(0, 1), name="vector")
case(np.linalg.solve, wellcond(3), r(3, 2), diff=(0, 1), name="matrix")
case(np.linalg.solve, wellcond(3, (2,)), r(3, 4), diff=(0, 1), name="batched-a", autograd=False)
case(np.linalg.solve, wellcond(3, (2,)), r(2, 3, 1), diff=(0, 1), name="batched")
case(np.linalg.pinv, r(3, 5), name="wide", autograd=False)
case(np.linalg.pinv, r(5, 3), name="tall", autograd=False)
case(np.linalg.pinv, wellcond(3), name="square", autograd=False)
case(np.linalg.matrix_power, wellcond(3) / 3, 3, name="n3")
case(np.linalg.matrix_power, wellcond(3) / 3, 1, name="n1")
case(np.linalg.matrix_power, wellcond(3) / 3, 0, name="n0")
case(np.linalg.matrix_power, wellcond(3) / 3, -2, name="n-2", autograd=False)
case(np.linalg.matrix_power, wellcond(3, (2,)) / 3, 2, name="batched", autograd=False)
case(np.linalg.cholesky, spd(4), sym=(0,), name="4x4")
case(np.linalg.cholesky, spd(3, (2,)), sym=(0,), name="batched")
case(np.linalg.cholesky, spd(3), upper=True, sym=(0,), name="upper", autograd=False)
case(np.linalg.eigh, spd(4), sym=(0,), name="4x4")
case(np.linalg.eigh, spd(3, (2,)), sym=(0,), dy_none=(0,), name="batched-vectors-only")
case(np.linalg.eigh, spd(3), sym=(0,), dy_none=(1,), name="values-only")
case(np.linalg.eigvalsh, spd(4), sym=(0,), name="4x4", autograd=False)
if hasattr(np.linalg, "svdvals"):
    case(np.linalg.svdvals, r(3, 5), name="wide", autograd=False)
    case(np.linalg.svdvals, r(2, 4, 3), name="batched", autograd=False)

case(np.linalg.norm, r(5), name="vector")
case(np.linalg.norm, r(3, 4), name="frobenius")
case(np.linalg.norm, r(3, 4), axis=1, keepdims=True, name="rows-keepdims",
     autograd=False)                 # autograd adds an axis again with keepdims
case(np.linalg.norm, r(2, 3, 4), axis=(1, 2), name="fro-batched")
case(np.linalg.norm, r(3, 4), ord="fro", name="fro")
case(np.linalg.norm, away(5), ord=1, name="l1")
case(np.linalg.norm, sep(5), ord=np.inf, name="linf",
     autograd=False)                 # autograd gives NaN
case(np.linalg.norm, away(3, 4), ord=3, axis=0, name="l3-axis0")
case(np.linalg.norm, r(3, 4), ord=2, axis=1, name="l2-axis1")
case(np.linalg.norm, r(3, 4), ord="nuc", name="nuclear")
case(np.linalg.norm, r(3, 4), ord=2, name="spectral")
case(np.linalg.norm, sep(3, 4), ord=1, name="matrix-1", autograd=False)
case(np.linalg.norm, sep(3, 4), ord=np.inf, name="matrix-inf", autograd=False)
if hasattr(np.linalg, "vector_norm"):
    case(np.linalg.vector_norm, r(3, 4), name="all", autograd=False)
    case(np.linalg.vector_norm, away(3, 4), axis=1, ord=1, name="l1-axis1", autograd=False)
    case(np.linalg.vector_norm, sep(3, 4), ord=np.inf, name="linf", autograd=False)
    case(np.linalg.matrix_norm, r(2, 3, 4), name="fro", autograd=False)
    case(np.linalg.matrix_norm, r(3, 4), ord="nuc", keepdims=True, name="nuc-keepdims",
         autograd=False)

# ================================================================ nn functions

case(F.sigmoid, r(3, 4))
case(F.relu, away(3, 4))
case(F.leakyrelu, away(3, 4), name="default")
case(F.leakyrelu, away(3, 4), a=0.2, name="a0.2")
case(F.elu, away(3, 4), name="default")
case(F.elu, away(3, 4), alpha=0.5, name="alpha0.5")
case(F.gelu, r(3, 4))
case(F.gelu, r(3, 4).astype(np.float32) * 3, name="float32-in-place", f32=True)
case(F.gelu_grad, r(3, 4), r(3, 4) * 3, diff=(0, 1), autograd=False)
case(F.standardize, r(3, 5) * 2 + 1, autograd=False, name="last")
case(F.standardize, r(2, 3, 4), axes=(-2, -1), eps=0.1, autograd=False, name="two-axes-eps")
case(F.standardize_grad, r(3, 5), r(3, 5) * 2 + 1, diff=(0, 1), autograd=False, name="last")
case(F.standardize_grad, r(2, 3, 4), r(2, 3, 4), axes=(-2, -1), eps=0.1, diff=(0, 1), autograd=False,
     name="two-axes-eps")
case(F.softplus, r(3, 4))
case(F.softmax, r(3, 4), name="last")
case(F.softmax, r(3, 4), axis=0, name="axis0")
case(F.logsoftmax, r(3, 4), name="last")
case(F.logsoftmax, r(2, 3, 4), axis=1, name="axis1")
case(F.logsumexp, r(3, 4), name="all")
case(F.logsumexp, r(3, 4), axis=1, name="axis1")
case(F.logsumexp, r(2, 3, 4), axis=(0, 2), keepdims=True, name="axes02-keepdims")
case(F.flatten, r(2, 3, 4))

# ================================================================ convolution and pooling

from flux_compile.rules import conv as C  # noqa: E402

case(C.conv2d, r(2, 3, 5, 6), r(4, 3, 3, 2), diff=(0, 1), autograd=False, name="plain")
case(C.conv2d, r(1, 1, 7, 6), r(2, 1, 3, 3), stride=2, padding=1, diff=(0, 1), autograd=False, name="stride2-pad1-c1")
case(C.conv2d, r(2, 2, 6, 7), r(3, 2, 2, 3), diff=(0, 1), stride=(2, 3), padding=(1, 2),
     autograd=False, name="pairs")
case(C.maxpool2d, sep(2, 3, 4, 6), 2, autograd=False, name="k2")
case(C.maxpool2d, sep(1, 2, 7, 5), 3, stride=2, autograd=False, name="k3-stride2-overlap-floor")
case(C.maxpool2d, sep(2, 1, 6, 6), (2, 3), autograd=False, name="k2x3")
case(C.avgpool2d, r(2, 3, 4, 6), 2, autograd=False, name="k2")
case(C.avgpool2d, r(1, 2, 7, 5), (3, 2), stride=1, autograd=False, name="k3x2-stride1")

# ================================================================ rules registered elsewhere

if rules.get_rule(float) is not None:       # float(x) of a 0-d array in compiled code
    case(float, s(1.5), autograd=False, f32=False)

try:
    from flux_compile import losses as _losses
except Exception:       # the package may be half-written; the rules tables stand alone
    _losses = None
if _losses is not None and hasattr(_losses, "logitcrossentropy"):
    case(_losses.logitcrossentropy, r(3, 4), np.array([0, 3, 1]), name="indices", autograd=False)
    case(_losses.logitcrossentropy, r(3, 4), np.eye(4)[[2, 0, 1]], name="onehot", autograd=False)


# ================================================================ no gradient

NONDIFF_CASES = [
    np.sign, np.floor, np.ceil, np.round, np.around, np.rint, np.trunc, np.fix,
    np.floor_divide, np.heaviside, np.isnan, np.isinf, np.isfinite, np.isclose,
    np.equal, np.not_equal, np.less, np.less_equal, np.greater, np.greater_equal,
    np.logical_and, np.logical_or, np.logical_not, np.logical_xor,
    np.zeros_like, np.ones_like, np.full_like, np.empty_like,
    np.argmax, np.argmin, np.argsort, np.argwhere, np.nonzero, np.flatnonzero,
    np.searchsorted, np.count_nonzero, np.any, np.all, np.array_equal,
    np.shape, np.ndim, np.size,
    np.zeros, np.ones, np.empty, np.eye, np.identity, np.arange,
    F.nodiff,
]


# functional item assignment (y[i] = v in compiled code) and list literals as arrays
case(setitem, r(4, 3), 1, r(3), diff=(0, 2), name="row", autograd=False)
case(setitem, r(4, 3), (slice(1, 3), 0), r(2), diff=(0, 2), name="slice", autograd=False)
case(setitem, r(5), 2, s(0.5), diff=(0, 2), name="scalar", autograd=False)
case(stack_items, r(3), r(3), r(3), diff=(0, 1, 2), name="three", autograd=False)
case(stack_items, s(1.0), s(2.0), diff=(0, 1), name="scalars", autograd=False)


# real/imag/conjugate of real inputs, NaN cleaning, partition, rollaxis, np.astype
case(np.real, r(3, 2), autograd=False)
case(np.imag, r(3, 2), autograd=False, f32=False)
case(np.conjugate, r(4), autograd=False)
case(np.nan_to_num, r(5), autograd=False)
case(np.partition, sep(6), 2, name="kth2", autograd=False)
case(np.partition, sep(3, 5), 1, axis=1, name="axis1", autograd=False)
case(np.rollaxis, r(2, 3, 4), 2, name="to-front", autograd=False)
case(np.rollaxis, r(2, 3, 4), 0, start=3, name="to-back", autograd=False)
if hasattr(np, "astype"):
    case(np.astype, r(3), np.float64, autograd=False)

# repeated advanced indices in item assignment: NumPy keeps the last write
case(setitem, r(4, 3), [0, 2, 0], r(3, 3), diff=(0, 2), name="repeated-rows", autograd=False)
case(setitem, r(4, 3), ([1, 1], [2, 2]), r(2), diff=(0, 2), name="repeated-pair", autograd=False)
case(getitem, r(4, 3), [], name="empty-list")
# casts to an integer or boolean dtype have no gradient (zeros when reached at run time)
case(astype, r(3, 4) * 3, np.int64, name="to-int", autograd=False)
case(astype, r(3, 4), bool, name="to-bool", autograd=False)

# creation from float arguments: fill_value, start and stop carry gradients
case(np.full, (3, 4), s(0.7), diff=(1,), name="scalar")
case(np.full, (3, 4), r(4), diff=(1,), name="row", autograd=False)
case(np.linspace, s(-1.0), s(2.0), num=5, diff=(0, 1), name="num5")
case(np.linspace, s(0.5), s(2.0), num=4, endpoint=False, diff=(0, 1), name="no-endpoint", autograd=False)
case(np.linspace, r(3), r(2, 3), num=4, axis=-1, diff=(0, 1), name="arrays-last-axis", autograd=False)
case(np.linspace, s(0.5), s(2.0), num=1, diff=(0, 1), name="num1", autograd=False)

# eigh and eigvalsh read one triangle (UPLO): checked on full, non-symmetric inputs
_ns = spd(4) + 0.3 * np.triu(r(4, 4), 1)
case(np.linalg.eigh, _ns, name="upper-ignored")
case(np.linalg.eigh, _ns.T.copy(), UPLO="U", name="UPLO-U")
case(np.linalg.eigh, _ns, dy_none=(1,), name="values-only-upper-ignored")
case(np.linalg.eigvalsh, _ns, name="upper-ignored", autograd=False)
case(np.linalg.eigvalsh, _ns.T.copy(), UPLO="U", name="UPLO-U", autograd=False)

# einsum with '...' and in sublist form (arrays each followed by its axis numbers)
for spec, shapes in [("...j,jk->...k", [(2, 3, 4), (4, 5)]), ("...ij,...jk", [(2, 3, 4), (4, 2)]),
                     ("i...,i...->...", [(3, 2, 2), (3, 1, 2)]), ("...", [(2, 3)]),
                     ("ij...->...", [(2, 3, 4)]), ("bij,bjk->bik", [(1, 3, 4), (2, 4, 2)])]:
    case(np.einsum, spec, *[r(*sh) for sh in shapes], diff=tuple(range(1, len(shapes) + 1)),
         name=spec, autograd=False)
case(np.einsum, r(3, 4), [0, 1], r(4, 5), [1, 2], diff=(0, 2), name="sublist-implicit", autograd=False)
case(np.einsum, r(3, 4), [0, 1], r(4, 5), [1, 2], [2], diff=(0, 2), name="sublist-explicit",
     autograd=False)
case(np.einsum, r(2, 3, 4), [Ellipsis, 1], r(4, 5), [1, 2], [Ellipsis, 2], diff=(0, 2),
     name="sublist-ellipsis", autograd=False)

# take_along_axis: indices broadcast against arr off the axis (both ways)
case(np.take_along_axis, r(3, 4), np.array([[0, 3, 3]]), axis=1, name="indices-broadcast", autograd=False)
case(np.take_along_axis, r(1, 4), np.array([[0, 3], [1, 1], [2, 0]]), axis=1, name="arr-broadcast",
     autograd=False)
case(np.take_along_axis, r(2, 3, 4), np.array([[[1], [0], [2]]]), axis=2, name="3-d-broadcast",
     autograd=False)


# ================================================================ coverage of autograd's primitives (issue 13)
# complex inputs and outputs: the objective is Re(sum(dy * y)) with complex dy, a complex
# input's gradient d/dRe - i d/dIm (autograd's convention); see test_rules_direct._fd

def cplx(*shape):
    return r(*shape) + 1j * r(*shape)


_FFT = np.fft
for f in (_FFT.fft, _FFT.ifft):
    case(f, r(3, 6), name="real")
    case(f, cplx(3, 5), name="complex-odd")
    case(f, cplx(4, 3), n=6, axis=0, norm="ortho", name="pad-axis0-ortho")
    case(f, r(3, 6), n=4, norm="forward", name="truncate-forward")
for f in (_FFT.fft2, _FFT.ifft2, _FFT.fftn, _FFT.ifftn):
    case(f, r(3, 4), name="real")
    case(f, cplx(2, 3, 5), axes=(0, 2), norm="ortho", name="axes-ortho")
    case(f, cplx(3, 4), s=(5, 2), axes=(1, 0), name="s-pad-truncate")
for f in (_FFT.rfft, _FFT.ihfft):
    case(f, r(3, 6), name="even")
    case(f, r(3, 5), norm="ortho", name="odd-ortho")
    # autograd's rfft factors assume n equals the input length: central differences decide
    case(f, r(4, 3), n=7, axis=0, norm="forward", name="pad-odd-axis0", autograd=False)
    case(f, r(3, 6), n=4, name="truncate", autograd=False)
for f in (_FFT.irfft, _FFT.hfft):
    case(f, cplx(3, 4), name="default-n")
    case(f, cplx(3, 4), n=7, norm="ortho", name="odd-n-ortho")
    case(f, cplx(3, 4), n=4, norm="forward", name="truncate-forward",
         autograd=False)             # autograd scales norm="forward" as "backward"
    case(f, cplx(5, 2), n=10, axis=0, name="pad-axis0")
    case(f, r(3, 4), name="real-input", f32=False)
for f in (_FFT.rfft2, _FFT.rfftn):
    case(f, r(4, 6), name="even")
    case(f, r(3, 5), s=(4, 7), axes=(0, 1), norm="ortho", name="s-odd-ortho")
    case(f, r(2, 3, 4), axes=(2, 0), name="axes")
for f in (_FFT.irfft2, _FFT.irfftn):
    case(f, cplx(4, 4), name="default-s")
    case(f, r(3, 4), name="real-input", f32=False)
    case(f, cplx(3, 4), s=(4, 7), axes=(0, 1), norm="ortho", name="s-odd-ortho")
    case(f, cplx(2, 3, 4), axes=(2, 0), norm="forward", name="axes-forward",
         autograd=False)             # autograd scales norm="forward" as "backward"
for f in (_FFT.fftshift, _FFT.ifftshift):
    case(f, r(3, 5), name="all")
    case(f, cplx(4, 5), axes=1, name="complex-axis1")

_svd_in = {"tall": r(4, 3), "wide": r(3, 5), "square": wellcond(3), "batched": r(2, 4, 3)}
for label, a in _svd_in.items():
    case(np.linalg.svd, a, full_matrices=False, name=label)
    case(np.linalg.svd, a, compute_uv=False, name=label + "-values")
case(np.linalg.svd, wellcond(3), dy_none=(0, 2), full_matrices=False, name="s-only")
case(np.linalg.svd, r(4, 3) + 1j * r(4, 3), compute_uv=False, name="complex-values")
case(np.linalg.svd, wellcond(3), name="full-matrices-square")
_P = wellcond(4)
case(np.linalg.eig, _P @ np.diag([3.0, 1.0, -1.0, -3.0]) @ np.linalg.inv(_P), name="real-spectrum")
case(np.linalg.eig, wellcond(3), dy_none=(1,), name="values-only")
# complex eigenvectors: their phase is LAPACK's choice, not a function central differences can
# follow; the values here, the vectors against autograd and through |v| in test_coverage_rules
case(np.linalg.eig, cplx(3, 3) + np.diag([3.0, 0.0, -3.0]), dy_none=(1,), name="complex-values")
case(np.linalg.eigvals, r(4, 4), name="real", autograd=False)
case(np.linalg.eigvals, cplx(3, 3), name="complex", autograd=False)

case(np.angle, cplx(5), name="complex")
case(np.angle, cplx(2, 3), deg=True, name="deg")
case(np.angle, away(5), name="real")
case(np.real_if_close, cplx(4), name="complex")
case(np.real_if_close, r(4) + 1e-20j, name="close-to-real")
case(np.real_if_close, r(2, 3), name="real")

case(np.gradient, r(5, 6), name="all-axes", autograd=False)
case(np.gradient, r(5, 6), axis=1, edge_order=2, name="axis1-edge2")
case(np.gradient, r(7), 0.5, name="spacing", autograd=False)
case(np.gradient, r(4, 6), 0.5, np.linspace(0.0, 1.0, 6) ** 2, name="coordinates", autograd=False)
case(np.gradient, r(3, 4, 5), axis=(0, 2), dy_none=(1,), name="axes-one-unused", autograd=False)
case(np.gradient, r(3, 3), name="short-edge2", edge_order=2, autograd=False)

case(np.average, r(4, 5), name="all")
case(np.average, r(4, 5), 1, name="axis1")
case(np.average, r(4, 5), 1, pos(5), diff=(0, 2), name="weights-axis1")
case(np.average, r(4, 5), None, pos(4, 5), diff=(0, 2), name="weights-full")
case(np.average, r(4, 5), 0, pos(4), diff=(0, 2), returned=True, name="returned", autograd=False)
case(np.average, r(4, 5), 0, pos(4, 5), diff=(0, 2), keepdims=True, name="keepdims", autograd=False)

case(np.diff, r(3, 5), 1, -1, r(3, 2), diff=(0, 3), name="prepend", autograd=False)
case(np.diff, r(3, 5), 2, 0, s(0.5), r(2, 5), diff=(0, 3, 4), name="scalar-prepend-append", autograd=False)
case(np.diff, r(4), 1, 0, r(2), r(1), diff=(0, 3, 4), name="1-d-both", autograd=False)

_cond = [np.array([True, False, True, False]), np.array([True, True, False, False])]
case(np.select, _cond, [r(4), r(4)], s(0.5), diff=(1, 2), name="overlapping", autograd=False)
case(np.select, [_x > 0.5, _x < -0.5], [r(4, 5), r(5)], s(0.0), diff=(1,), name="broadcast",
     autograd=False)

_swv = np.lib.stride_tricks.sliding_window_view
case(_swv, r(6), 3, name="1-d", autograd=False)
case(_swv, r(4, 5), (2, 3), name="2-d", autograd=False)
case(_swv, r(4, 5), 2, 0, name="axis0", autograd=False)
case(_swv, r(4, 5), (2, 2), (1, 1), name="repeated-axis", autograd=False)

# appended last: its random draws leave every earlier case's inputs as they were
case(inplace_result, r(3, 4), r(3, 4), name="same-dtype", autograd=False, diff=(0,))
