"""Forward-mode rules for shape, joining, splitting and indexing primitives.

Nearly all of them only move data: they are linear, and the tangent is the same
movement of the tangent (``np.reshape(dx, shape)``). Sorting and partitioning move
the tangent the way the values moved.
"""
import numpy as np

from .registry import jvprule, linear_jvp, nondiff_primitive
from .helpers import getitem, setitem, stack_items

linear_jvp(
    np.reshape, np.ravel, np.squeeze, np.expand_dims, np.atleast_1d, np.atleast_2d, np.atleast_3d,
    np.broadcast_to, np.transpose, np.swapaxes, np.moveaxis, np.flip, np.fliplr, np.flipud, np.roll,
    np.rot90, np.concatenate, np.stack, np.vstack, np.hstack, np.dstack, np.column_stack, np.append,
    np.split, np.array_split, np.hsplit, np.vsplit, np.dsplit, np.tile, np.repeat, np.diag,
    np.diagonal, np.tril, np.triu, getitem, np.take, np.take_along_axis, setitem, stack_items,
    np.rollaxis,
)
if hasattr(np, "matrix_transpose"):     # NumPy >= 2.0
    linear_jvp(np.matrix_transpose, np.linalg.matrix_transpose)
if hasattr(np.linalg, "diagonal"):
    linear_jvp(np.linalg.diagonal)
if hasattr(np, "unstack"):              # NumPy >= 2.1
    linear_jvp(np.unstack)


def partition_order(a, kth, axis=-1):
    """Where each element of ``np.partition(a, kth, axis)`` came from."""
    return np.argpartition(a, kth, axis=axis)


nondiff_primitive(partition_order)


@jvprule(np.pad)
def _(darray, dpad_width, y, array, pad_width, *, mode='constant', constant_values=0):
    # constant mode only (as the reverse rule): the padding is constant, its tangent 0
    return np.pad(darray, pad_width, mode=mode)


@jvprule(np.sort)
def _(da, y, a, *, axis=-1, kind=None, order=None, stable=None):
    return np.take_along_axis(da, np.argsort(a, axis=axis, kind="stable"), axis=axis)


@jvprule(np.partition)
def _(da, dkth, y, a, kth, *, axis=-1, kind="introselect", order=None):
    return np.take_along_axis(da, partition_order(a, kth, axis), axis=axis)
