"""Shape, joining, splitting and indexing rules.

Each rule undoes its primitive's data movement on ``dy``. Conventions for
lists: an input that is a list of arrays (``np.concatenate(arrays)``) gets a
tuple of gradients, one per array, as its single entry; an output that is a
list (``np.split``) arrives as a list ``dy`` whose entries may be None (zero).
"""
import numpy as np

from .registry import diffrule
from .helpers import select_grads, unwindow
from .helpers import (getitem, getitem_grad, inverse_permutation, reshape_each, setitem, setitem_value_grad,
                      stack_items,
                      unpartition, unrollaxis,
                      restack, take_along_axis_grad, take_grad, unbroadcast,
                      uncolumn_stack, unconcatenate, undiag, undiagonal,
                      undstack, unhsplit, unhstack, unpad, unrepeat, unsort,
                      unsplit, unstack, untile, unvstack)


# ---------------------------------------------------------------- reshaping

@diffrule(np.reshape)
def _(dy, y, a, shape, *, order='C', copy=None):
    return np.reshape(dy, a.shape, order=order), None


@diffrule(np.ravel)
def _(dy, y, a, *, order='C'):
    return np.reshape(dy, a.shape, order=order)


@diffrule(np.squeeze)
def _(dy, y, a, *, axis=None):
    return np.reshape(dy, a.shape)


@diffrule(np.expand_dims)
def _(dy, y, a, axis):
    return np.reshape(dy, a.shape), None


@diffrule(np.atleast_1d)
def _(dy, y, *arys):
    return reshape_each(dy, arys)


@diffrule(np.atleast_2d)
def _(dy, y, *arys):
    return reshape_each(dy, arys)


@diffrule(np.atleast_3d)
def _(dy, y, *arys):
    return reshape_each(dy, arys)


@diffrule(np.broadcast_to)
def _(dy, y, array, shape, *, subok=False):
    return unbroadcast(dy, array.shape), None


# ---------------------------------------------------------------- permuting axes

@diffrule(np.transpose)
def _(dy, y, a, *, axes=None):
    if axes is None:
        return np.transpose(dy)
    return np.transpose(dy, inverse_permutation(axes, dy.ndim))


@diffrule(np.swapaxes)
def _(dy, y, a, axis1, axis2):
    return np.swapaxes(dy, axis1, axis2), None, None


@diffrule(np.moveaxis)
def _(dy, y, a, source, destination):
    return np.moveaxis(dy, destination, source), None, None


if hasattr(np, "matrix_transpose"):     # NumPy >= 2.0
    @diffrule(np.matrix_transpose)
    def _(dy, y, x):
        return np.swapaxes(dy, -1, -2)

    @diffrule(np.linalg.matrix_transpose)
    def _(dy, y, x):
        return np.swapaxes(dy, -1, -2)


# ---------------------------------------------------------------- reversing and rotating

@diffrule(np.flip)
def _(dy, y, m, *, axis=None):
    return np.flip(dy, axis)


@diffrule(np.fliplr)
def _(dy, y, m):
    return np.fliplr(dy)


@diffrule(np.flipud)
def _(dy, y, m):
    return np.flipud(dy)


@diffrule(np.roll)
def _(dy, y, a, shift, *, axis=None):
    return np.roll(dy, np.negative(shift), axis), None


@diffrule(np.rot90)
def _(dy, y, m, *, k=1, axes=(0, 1)):
    return np.rot90(dy, -k, axes)


# ---------------------------------------------------------------- joining

@diffrule(np.concatenate)
def _(dy, y, arrays, *, axis=0, dtype=None, casting='same_kind'):
    return unconcatenate(dy, arrays, axis)


@diffrule(np.stack)
def _(dy, y, arrays, *, axis=0, dtype=None, casting='same_kind'):
    return unstack(dy, axis)


@diffrule(np.vstack)
def _(dy, y, tup, *, dtype=None, casting='same_kind'):
    return unvstack(dy, tup)


@diffrule(np.hstack)
def _(dy, y, tup, *, dtype=None, casting='same_kind'):
    return unhstack(dy, tup)


@diffrule(np.dstack)
def _(dy, y, tup):
    return undstack(dy, tup)


@diffrule(np.column_stack)
def _(dy, y, tup):
    return uncolumn_stack(dy, tup)


@diffrule(np.append)
def _(dy, y, arr, values, *, axis=None):
    return unconcatenate(dy, (arr, values), axis)


# ---------------------------------------------------------------- splitting (list outputs)

@diffrule(np.split)
def _(dy, y, ary, indices_or_sections, *, axis=0):
    return unsplit(dy, y, axis), None


@diffrule(np.array_split)
def _(dy, y, ary, indices_or_sections, *, axis=0):
    return unsplit(dy, y, axis), None


@diffrule(np.hsplit)
def _(dy, y, ary, indices_or_sections):
    return unhsplit(dy, y), None


@diffrule(np.vsplit)
def _(dy, y, ary, indices_or_sections):
    return unsplit(dy, y, 0), None


@diffrule(np.dsplit)
def _(dy, y, ary, indices_or_sections):
    return unsplit(dy, y, 2), None


if hasattr(np, "unstack"):              # NumPy >= 2.1
    @diffrule(np.unstack)
    def _(dy, y, x, *, axis=0):
        return restack(dy, y, axis, x)


# ---------------------------------------------------------------- repeating and padding

@diffrule(np.tile)
def _(dy, y, A, reps):
    return untile(dy, A.shape, reps), None


@diffrule(np.repeat)
def _(dy, y, a, repeats, *, axis=None):
    return unrepeat(dy, a.shape, repeats, axis), None


@diffrule(np.pad)
def _(dy, y, array, pad_width, *, mode='constant', constant_values=0):
    # constant mode only: the gradient is the unpadded inside of dy
    return unpad(dy, pad_width, mode), None


# ---------------------------------------------------------------- diagonals and triangles

@diffrule(np.diag)
def _(dy, y, v, *, k=0):
    return undiag(dy, v.shape, k)


@diffrule(np.diagonal)
def _(dy, y, a, *, offset=0, axis1=0, axis2=1):
    return undiagonal(dy, a.shape, offset, axis1, axis2)


if hasattr(np.linalg, "diagonal"):      # NumPy >= 2.0
    @diffrule(np.linalg.diagonal)
    def _(dy, y, x, *, offset=0):
        return undiagonal(dy, x.shape, offset, -2, -1)


@diffrule(np.tril)
def _(dy, y, m, *, k=0):
    return np.tril(dy, k)


@diffrule(np.triu)
def _(dy, y, m, *, k=0):
    return np.triu(dy, k)


# ---------------------------------------------------------------- sorting and indexing

@diffrule(np.sort)
def _(dy, y, a, *, axis=-1, kind=None, order=None, stable=None):
    return unsort(dy, a, axis)


@diffrule(getitem)
def _(dy, y, x, index):
    # repeated advanced indices accumulate (np.add.at)
    return getitem_grad(dy, x.shape, index), None


@diffrule(np.take)
def _(dy, y, a, indices, *, axis=None):
    return take_grad(dy, a.shape, indices, axis), None


@diffrule(np.take_along_axis)
def _(dy, y, arr, indices, *, axis=-1):
    return take_along_axis_grad(dy, arr.shape, indices, axis), None


# ------------------------------------------------- functional item assignment, list literals

@diffrule(setitem)
def _(dy, y, x, index, value):
    return setitem(dy, index, 0.0), None, setitem_value_grad(dy, index, np.shape(value))


@diffrule(stack_items)
def _(dy, y, *items):
    return unstack(dy, 0)


@diffrule(np.partition)
def _(dy, y, a, kth, *, axis=-1, kind="introselect", order=None):
    return unpartition(dy, a, kth, axis), None


@diffrule(np.rollaxis)
def _(dy, y, a, axis, *, start=0):
    return unrollaxis(dy, a.ndim, axis, start), None


@diffrule(np.select)
def _(dy, y, condlist, choicelist, default=0):
    # each choice where its condition is the first true one; default where none is
    return select_grads(dy, condlist, choicelist, default)


@diffrule(np.lib.stride_tricks.sliding_window_view)
def _(dy, y, x, window_shape, axis=None, *, subok=False, writeable=False):
    # every window adds its adjoint back where it read x
    return unwindow(dy, x.shape, window_shape, axis), None, None
