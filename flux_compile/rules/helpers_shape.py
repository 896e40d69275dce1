"""Run-time helpers, part one: primitive shims, broadcasting and reductions, shape and
indexing. Rules import them from :mod:`flux_compile.rules.helpers`, which re-exports
every part (and generated code names them from there)."""
from __future__ import annotations

import numpy as np

__all__ = [
    "reuse", "scatter_rows", "getitem", "astype", "cast_grad", "inplace_result", "linspace_grad", "identity", "choose", "choose_grad", "unbroadcast", "normalize_axis",
    "reduced_size", "restore_axes", "sum_grad", "extremum_mask", "prod_others", "fill_none",
    "diff_grad", "cumprod_grad", "inverse_permutation", "getitem_grad", "take_grad",
    "take_along_axis_grad", "unconcatenate", "unstack", "unvstack", "unhstack", "undstack",
    "uncolumn_stack", "unsplit", "restack", "unhsplit", "reshape_each", "untile", "unrepeat",
    "unpad", "undiag", "undiagonal", "unsort",
]


# --------------------------------------------------------------------------
# primitive shims

def getitem(x, index):
    """``x[index]`` as a function (the primitive behind subscripts)."""
    return x[index]


def astype(x, dtype):
    """``x.astype(dtype)`` as a function; leaves Python scalars as 0-d arrays."""
    return np.asarray(x).astype(dtype, copy=False)


def cast_grad(g, source_dtype, target_dtype):
    """Gradient of ``x.astype(target_dtype)``: ``g`` cast back to ``x``'s dtype, or zeros when
    the cast is to an integer or boolean dtype (a piecewise constant function)."""
    if np.dtype(target_dtype).kind not in "fc":
        return np.zeros(np.shape(g), dtype=source_dtype)
    return np.asarray(g).astype(source_dtype, copy=False)


def inplace_result(r, target):
    """The value ``target`` holds after ``target op= w``, given ``r = target op w``: NumPy
    writes into an array target, so it keeps the target's shape (a larger broadcast result is
    an error) and dtype (cast with ``same_kind``: an integer target with a float result raises);
    a scalar target (a Python or NumPy number) is simply rebound to ``r``."""
    if not isinstance(target, np.ndarray):
        return r
    if np.shape(r) != target.shape:
        raise ValueError(f"non-broadcastable output operand with shape {target.shape} doesn't match "
                         f"the broadcast shape {np.shape(r)}")
    return np.asarray(r).astype(target.dtype, casting="same_kind", copy=False)


def linspace_grad(g, shape, num, endpoint, axis, end):
    """Gradient of ``np.linspace(start, stop, num)`` for ``start`` (``end`` 0) or ``stop``
    (``end`` 1): each sample is ``start + t * (stop - start)``, so the adjoint is summed along
    the samples' axis with weights ``1 - t`` or ``t``."""
    g = np.asarray(g)
    steps = num - 1 if endpoint else num
    t = np.arange(num) / steps if steps > 0 else np.zeros(num)
    axis = axis % g.ndim
    t = t.reshape((num,) + (1,) * (g.ndim - axis - 1)).astype(g.dtype)
    weights = t if end else 1 - t
    return unbroadcast(np.sum(g * weights, axis=axis), tuple(shape))


def identity(x):
    """Return ``x`` unchanged (a node that exists only to carry a name)."""
    return x


def choose(taken, a, b):
    """``a if taken else b``: a name's value after an ``if`` on data inside a loop region,
    whose two branches were both computed."""
    return a if taken else b


def choose_grad(dy, taken, like, other=False):
    """The adjoint of one branch of :func:`choose` (the ``else`` one when ``other``): ``dy``
    when that branch ran, else zeros shaped like its value."""
    if bool(taken) != other:
        return dy
    return np.zeros(np.shape(like), dtype=np.result_type(dy))


# --------------------------------------------------------------------------
# broadcasting and reductions

def unbroadcast(g, shape):
    """Sum ``g`` down to ``shape``, undoing NumPy broadcasting.

    Leading extra axes are summed away, as are axes where ``shape`` has size 1.
    ``g`` is returned as is when its shape already matches.

    >>> unbroadcast(np.ones((3, 4)), (4,))
    array([3., 3., 3., 3.])
    >>> float(unbroadcast(np.ones((3, 4)), ()))
    12.0
    """
    shape = tuple(shape)
    gshape = np.shape(g)
    if gshape == shape:
        return g
    g = np.asarray(g)
    extra = g.ndim - len(shape)
    if extra > 0:
        g = g.sum(axis=tuple(range(extra)))
    elif extra < 0:     # target bigger than g: g broadcasts up to it
        return np.broadcast_to(g, shape).copy()
    ones = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if ones:
        g = g.sum(axis=ones, keepdims=True)
    if g.shape != shape:    # g had size 1 where shape is larger
        g = np.broadcast_to(g, shape).copy()
    return g


def normalize_axis(axis, ndim):
    """``axis`` (None, int or tuple) as a sorted tuple of non-negative ints."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)):
        axis = (axis,)
    return tuple(sorted(int(a) % ndim if ndim else 0 for a in axis))


def reduced_size(shape, axis):
    """Number of elements a reduction over ``axis`` combines (a Python int)."""
    shape = tuple(shape)
    n = 1
    for a in normalize_axis(axis, len(shape)):
        n *= shape[a]
    return n


def restore_axes(g, shape, axis, keepdims=False):
    """Reshape a reduction's result ``g`` so it broadcasts against ``shape``.

    Puts back the reduced axes with size 1 (nothing to do when ``keepdims``).
    """
    g = np.asarray(g)
    if keepdims:
        return g
    shape = tuple(shape)
    axes = normalize_axis(axis, len(shape))
    kept = [1 if i in axes else n for i, n in enumerate(shape)]
    return g.reshape(kept)


def sum_grad(g, shape, axis=None, keepdims=False):
    """Spread a reduction's adjoint ``g`` back over the reduced axes of ``shape``.

    This is the gradient of ``np.sum(a, axis, keepdims=keepdims)``; a fresh
    writable array.
    """
    g = restore_axes(g, shape, axis, keepdims)
    return np.broadcast_to(g, tuple(shape)).copy()


def extremum_mask(a, y, axis=None, keepdims=False):
    """Where ``a`` attains its reduced max/min ``y``; ties share equally.

    Returns weights of ``a``'s dtype summing to 1 along the reduced axes
    (autograd's convention for ``np.max`` with ties).
    """
    a = np.asarray(a)
    hit = a == restore_axes(y, a.shape, axis, keepdims)
    count = np.sum(hit, axis=normalize_axis(axis, a.ndim), keepdims=True)
    dtype = a.dtype if a.dtype.kind in "fc" else np.float64
    return (hit / count).astype(dtype, copy=False)


def prod_others(a, axis=None):
    """For every element, the product of the *other* elements of its reduction.

    Exact also when ``a`` holds zeros (products of the left and right
    neighbours, no division), so ``np.prod``'s gradient is correct there.
    """
    a = np.asarray(a)
    axes = normalize_axis(axis, a.ndim)
    if a.ndim == 0 or a.size == 0:
        return np.ones_like(a)
    rest = [i for i in range(a.ndim) if i not in axes]
    perm = rest + list(axes)
    t = np.transpose(a, perm)
    flat = t.reshape(t.shape[:len(rest)] + (-1,))
    ones = np.ones(flat.shape[:-1] + (1,), dtype=flat.dtype)
    left = np.cumprod(np.concatenate([ones, flat[..., :-1]], axis=-1), axis=-1)
    right = np.cumprod(np.concatenate([ones, flat[..., :0:-1]], axis=-1), axis=-1)[..., ::-1]
    out = (left * right).reshape(t.shape)
    return np.transpose(out, inverse_permutation(perm, a.ndim))


def fill_none(g, like):
    """``g``, or zeros shaped like ``like`` when ``g`` is None (an unused output)."""
    if g is None:
        return np.zeros_like(like)
    return g


def diff_grad(g, n=1, axis=-1):
    """Adjoint of ``np.diff(a, n, axis)``: ``-diff`` of ``g`` padded with zeros (``None``:
    NumPy's defaults, for a rule whose optional positional inputs were not passed)."""
    g = np.asarray(g)
    n = 1 if n is None else n
    axis = -1 if axis is None else axis
    width = [(0, 0)] * g.ndim
    width[axis] = (1, 1)
    for _ in range(n):
        g = -np.diff(np.pad(g, width), axis=axis)
    return g


def cumprod_grad(g, a, y, axis=None):
    """Gradient of ``np.cumprod(a, axis)``: reversed cumulative sum of ``g*y`` divided by
    ``a``; where ``a`` holds zeros, the same without division (exact there too)."""
    a = np.asarray(a)
    if axis is None:
        return cumprod_grad(np.ravel(g), a.ravel(), np.ravel(y), 0).reshape(a.shape)
    if np.all(a != 0):
        return np.flip(np.cumsum(np.flip(g * y, axis), axis=axis), axis) / a
    # grad_i = prod(a[:i]) * r_i with r_i = g_i + a_(i+1) * r_(i+1): no division
    am, gm = np.moveaxis(a, axis, 0), np.moveaxis(np.asarray(g), axis, 0)
    left = np.concatenate([np.ones_like(am[:1]), np.cumprod(am[:-1], axis=0)], axis=0)
    r = np.zeros(np.broadcast_shapes(am.shape, gm.shape), dtype=np.result_type(am, gm))
    r[-1] = gm[-1]
    for i in range(am.shape[0] - 2, -1, -1):
        r[i] = gm[i] + am[i + 1] * r[i + 1]
    return np.moveaxis(left * r, 0, axis)


# --------------------------------------------------------------------------
# shape and indexing

def inverse_permutation(axes, ndim=None):
    """The axes that undo ``np.transpose(x, axes)``."""
    axes = [int(a) for a in axes]
    if ndim is None:
        ndim = len(axes)
    axes = [a % ndim for a in axes]
    return tuple(int(i) for i in np.argsort(axes))


def reuse(buffer, other):
    """``buffer`` when an elementwise result of ``buffer`` and ``other`` has ``buffer``'s dtype
    (the generated code's ``out=reuse(t, u)`` writes into ``t``, dead after this use), else
    None (NumPy allocates: a float32 buffer never receives a float64 result)."""
    return buffer if getattr(other, "dtype", None) == buffer.dtype else None


def _is_basic_index(index):
    items = index if isinstance(index, tuple) else (index,)
    for i in items:
        if i is None or i is Ellipsis or isinstance(i, (slice, int, np.integer)):
            continue
        return False
    return True


def _index_arrays(index):
    """``index`` with its lists as arrays, as ``x[index]`` reads them (an empty list is an
    empty integer array), for ``np.add.at``."""
    def array(i):
        if not isinstance(i, list):
            return i
        a = np.asarray(i)
        return a.astype(np.intp) if a.size == 0 else a
    return tuple(array(i) for i in index) if isinstance(index, tuple) else array(index)


def getitem_grad(g, shape, index, dtype=None):
    """Gradient of ``x[index]``: zeros of ``shape`` with ``g`` scattered in.

    Basic indexing (ints, slices, None, Ellipsis) writes ``g`` in place, and so does one
    boolean mask (its positions are distinct); one integer array, alone or after full
    slices (``W[idx]``, ``x[:, idx]``), adds rows up by sorting (:func:`scatter_rows`);
    any other advanced index adds up with ``np.add.at`` so repeated indices add up.
    """
    g = np.asarray(g)
    out = np.zeros(tuple(shape), dtype=dtype or g.dtype)
    if _is_basic_index(index):
        out[index] = g
        return out
    index = _index_arrays(index)
    items = index if isinstance(index, tuple) else (index,)
    axis = _one_array_axis(items, out.ndim)
    if axis is None:
        np.add.at(out, index, g)
    elif items[axis].dtype == bool:
        out[index] = g
    else:
        scatter_rows(np.moveaxis(out, axis, 0), items[axis],
                     np.moveaxis(g, range(axis, axis + items[axis].ndim), range(items[axis].ndim)))
    return out


def _one_array_axis(items, ndim):
    """The position of the one index array (integers or a boolean mask) in ``items`` when
    every other item is a full slice ``:``, else None."""
    arrays = [i for i, it in enumerate(items) if isinstance(it, np.ndarray)]
    if len(arrays) != 1 or len(items) > ndim:
        return None
    axis = arrays[0]
    if any(not (isinstance(it, slice) and it == slice(None)) for i, it in enumerate(items) if i != axis):
        return None
    return axis if items[axis].dtype.kind in "biu" else None


def scatter_rows(out, idx, g):
    """``out[idx[j]] += g[j]`` for every position ``j`` of the integer array ``idx``,
    repeated indices adding up; ``out`` (n, ...) may be a view, ``g`` has shape
    ``idx.shape + out.shape[1:]``. Rows of one value: ``np.add.at``, whose one-dimensional
    fast path (NumPy >= 1.25) beats ``np.bincount`` (measured: 8 us against 1.3 ms for 4096
    indices into 50000); wider rows: a stable sort and ``np.add.reduceat``, summing each
    index's rows in order (2-7x faster than ``np.add.at`` on embedding-sized rows)."""
    n = out.shape[0]
    idx = np.asarray(idx).reshape(-1)
    if idx.size == 0:
        return out
    idx = np.where(idx < 0, idx + n, idx)
    rows = np.asarray(g).reshape((idx.size,) + out.shape[1:])
    width = int(np.prod(out.shape[1:], dtype=np.int64))
    if width == 1:
        np.add.at(out.reshape(n) if out.ndim > 1 else out, idx, rows.reshape(-1))
        return out
    order = np.argsort(idx, kind="stable")
    ordered = idx[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    out[ordered[starts]] += np.add.reduceat(rows[order], starts, axis=0).astype(out.dtype, copy=False)
    return out


def take_grad(g, shape, indices, axis=None, dtype=None):
    """Gradient of ``np.take(a, indices, axis)`` (repeated indices add up)."""
    g = np.asarray(g)
    out = np.zeros(tuple(shape), dtype=dtype or g.dtype)
    indices = np.asarray(indices)
    if axis is None:
        scatter_rows(out.reshape(-1), indices, g)
        return out
    axis = axis % len(shape)
    scatter_rows(np.moveaxis(out, axis, 0), indices,
                 np.moveaxis(g, range(axis, axis + indices.ndim), range(indices.ndim)))
    return out


def take_along_axis_grad(g, shape, indices, axis=-1, dtype=None):
    """Gradient of ``np.take_along_axis(arr, indices, axis)``; ``indices`` and ``arr``
    broadcast against each other off ``axis`` (the adjoint ``g`` has the broadcast shape).
    Every position's flat index, then one :func:`scatter_rows` into the flat result."""
    g = np.asarray(g)
    out = np.zeros(tuple(shape), dtype=dtype or g.dtype)
    indices = np.asarray(indices)
    if axis is None:
        scatter_rows(out.reshape(-1), indices, g)
        return out
    ndim = len(shape)
    axis = axis % ndim
    index = []
    for i in range(ndim):
        if i == axis:
            index.append(np.where(indices < 0, indices + shape[i], indices))
        else:
            s = [1] * ndim
            s[i] = g.shape[i]
            # a size-1 axis of arr that was broadcast: every position reads its one entry
            index.append((np.arange(g.shape[i]) % max(shape[i], 1)).reshape(s))
    index = tuple(np.broadcast_arrays(*index))
    if out.size:
        scatter_rows(out.reshape(-1), np.ravel_multi_index(index, out.shape), np.broadcast_to(g, index[0].shape))
    return out


def _split_like(g, shapes, axis, sizes):
    """Cut ``g`` along ``axis`` into pieces of ``sizes``, reshaped to ``shapes``."""
    cuts = np.cumsum(sizes)[:-1]
    pieces = np.split(g, cuts, axis=axis)
    return tuple(np.reshape(p, s) for p, s in zip(pieces, shapes))


def unconcatenate(g, arrays, axis=0):
    """Gradient of ``np.concatenate(arrays, axis)``: one piece per input."""
    shapes = [np.shape(a) for a in arrays]
    if axis is None:
        return _split_like(np.ravel(g), shapes, 0, [int(np.prod(s)) for s in shapes])
    return _split_like(g, shapes, axis, [s[axis] for s in shapes])


def unstack(g, axis=0):
    """Gradient of ``np.stack(arrays, axis)``: the slices of ``g`` along ``axis``."""
    return tuple(np.moveaxis(np.asarray(g), axis, 0))


def unvstack(g, tup):
    """Gradient of ``np.vstack(tup)`` (1-D inputs became rows)."""
    shapes = [np.shape(a) for a in tup]
    return _split_like(g, shapes, 0, [np.atleast_2d(np.empty(s)).shape[0] for s in shapes])


def unhstack(g, tup):
    """Gradient of ``np.hstack(tup)`` (axis 0 for 1-D inputs, else axis 1)."""
    shapes = [np.shape(a) for a in tup]
    promoted = [np.atleast_1d(np.empty(s)).shape for s in shapes]
    axis = 0 if len(promoted[0]) == 1 else 1
    return _split_like(g, shapes, axis, [s[axis] for s in promoted])


def undstack(g, tup):
    """Gradient of ``np.dstack(tup)`` (inputs promoted to 3-D, joined on axis 2)."""
    shapes = [np.shape(a) for a in tup]
    return _split_like(g, shapes, 2, [np.atleast_3d(np.empty(s)).shape[2] for s in shapes])


def uncolumn_stack(g, tup):
    """Gradient of ``np.column_stack(tup)`` (1-D inputs became columns)."""
    shapes = [np.shape(a) for a in tup]
    sizes = [1 if len(s) < 2 else s[1] for s in shapes]
    return _split_like(g, shapes, 1, sizes)


def unsplit(g, y, axis=0):
    """Gradient of ``np.split``/``np.array_split``: join the pieces' adjoints.

    ``g`` is a list with one adjoint per piece ``y[i]``; None means zero.
    """
    parts = [np.zeros_like(p) if d is None else d for d, p in zip(g, y)]
    return np.concatenate(parts, axis=axis)


def restack(g, y, axis=0, x=None):
    """Gradient of ``np.unstack(x, axis)``: stack the pieces' adjoints
    (None means zero; no pieces, from an empty axis: zeros like ``x``)."""
    parts = [np.zeros_like(p) if d is None else d for d, p in zip(g, y)]
    return np.stack(parts, axis=axis) if parts else np.zeros_like(x)


def unhsplit(g, y):
    """Gradient of ``np.hsplit`` (axis 1, or 0 for 1-D arrays)."""
    return unsplit(g, y, 1 if np.ndim(y[0]) > 1 else 0)


def reshape_each(g, arys):
    """Gradient of ``np.atleast_Nd(*arys)``: ``g`` reshaped back per input.

    One input: one gradient; several: a tuple (the outputs were a list).
    """
    if len(arys) == 1:
        return np.reshape(g, np.shape(arys[0]))
    return tuple(None if d is None else np.reshape(d, np.shape(a))
                 for d, a in zip(g, arys))


def untile(g, shape, reps):
    """Gradient of ``np.tile(A, reps)``: sum the tiles."""
    shape = tuple(shape)
    reps = (reps,) if np.isscalar(reps) else tuple(reps)
    ndim = max(len(shape), len(reps))
    full = (1,) * (ndim - len(shape)) + shape
    reps = (1,) * (ndim - len(reps)) + reps
    g = np.asarray(g).reshape([n for pair in zip(reps, full) for n in pair])
    g = g.sum(axis=tuple(range(0, 2 * ndim, 2)))
    return g.reshape(shape)


def unrepeat(g, shape, repeats, axis=None):
    """Gradient of ``np.repeat(a, repeats, axis)``: sum each run of copies."""
    shape = tuple(shape)
    g = np.asarray(g)
    if axis is None:
        g, ax, n = g.ravel(), 0, int(np.prod(shape))
    else:
        ax = axis % len(shape)
        n = shape[ax]
    repeats = np.broadcast_to(np.asarray(repeats), (n,))
    starts = np.concatenate([[0], np.cumsum(repeats)[:-1]])
    keep = repeats > 0
    out = np.zeros(g.shape[:ax] + (n,) + g.shape[ax + 1:], dtype=g.dtype)
    if keep.any():
        sums = np.add.reduceat(g, starts[keep], axis=ax)
        index = (slice(None),) * ax + (np.nonzero(keep)[0],)
        out[index] = sums
    return out.reshape(shape)


def unpad(g, pad_width, mode="constant"):
    """Gradient of ``np.pad(array, pad_width)`` in constant mode: the inside."""
    if mode != "constant":
        raise NotImplementedError(f"gradient of np.pad with mode={mode!r}")
    g = np.asarray(g)
    width = np.broadcast_to(np.asarray(pad_width, dtype=int), (g.ndim, 2))
    index = tuple(slice(int(lo), n - int(hi)) for (lo, hi), n in zip(width, g.shape))
    return g[index]


def undiag(g, shape, k=0):
    """Gradient of ``np.diag(v, k)`` for 1-D ``v`` (a diagonal of ``g``) or
    2-D ``v`` (``g`` written back on the k-th diagonal)."""
    g = np.asarray(g)
    if len(shape) == 1:
        return np.diagonal(g, k).copy()
    return undiagonal(g, shape, k)


def undiagonal(g, shape, offset=0, axis1=0, axis2=1):
    """Gradient of ``np.diagonal(a, offset, axis1, axis2)``."""
    g = np.asarray(g)
    shape = tuple(shape)
    nd = len(shape)
    axis1, axis2 = axis1 % nd, axis2 % nd
    n1, n2 = shape[axis1], shape[axis2]
    rest = tuple(n for i, n in enumerate(shape) if i not in (axis1, axis2))
    out = np.zeros(rest + (n1, n2), dtype=g.dtype)
    i = np.arange(g.shape[-1])
    out[..., i + max(0, -offset), i + max(0, offset)] = g
    return np.moveaxis(out, (-2, -1), (axis1, axis2))


def unsort(g, a, axis=-1):
    """Gradient of ``np.sort(a, axis)``: send each adjoint back to where its
    element came from."""
    a = np.asarray(a)
    g = np.asarray(g)
    if axis is None:
        out = np.empty(a.size, dtype=g.dtype)
        out[np.argsort(a, axis=None, kind="stable")] = g
        return out.reshape(a.shape)
    order = np.argsort(a, axis=axis, kind="stable")
    out = np.empty(np.broadcast_shapes(g.shape, a.shape), dtype=g.dtype)
    np.put_along_axis(out, order, g, axis=axis)
    return out
