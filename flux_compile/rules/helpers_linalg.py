"""Run-time helpers, part two: linear algebra, and the shims added with later rules
(clip bounds, ``setitem``, ``stack_items``, ``unpartition``, ...). Re-exported by
:mod:`flux_compile.rules.helpers`."""
from __future__ import annotations

import numpy as np

from .helpers_shape import (_is_basic_index, inverse_permutation, normalize_axis, prod_others, restore_axes,
                            unbroadcast)

__all__ = [
    "dot_grad_a", "dot_grad_b", "matmul_grad_a", "matmul_grad_b", "inner_grad_a", "inner_grad_b",
    "tensordot_grad_a", "tensordot_grad_b", "einsum_grads", "kron_grad_a", "kron_grad_b",
    "cross_grad_a", "cross_grad_b", "as_columns", "from_columns", "multi_dot_grads", "norm_grad",
    "vector_norm_grad", "cofactor", "on_triangle", "matrix_power_grad", "clip_bound_grad",
    "setitem", "setitem_value_grad", "stack_items", "unpartition", "unrollaxis", "imag_grad",
]


# --------------------------------------------------------------------------
# linear algebra

def _mul_grad(g, other, shape):
    """Gradient when ``dot``/``inner`` degenerate to multiplication (0-d)."""
    return unbroadcast(g * other, shape)


def dot_grad_a(g, a_ndim, b):
    """Gradient of ``np.dot(a, b)`` with respect to ``a``."""
    b = np.asarray(b)
    g = np.asarray(g)
    if a_ndim == 0 or b.ndim == 0:
        return np.sum(g * b) if a_ndim == 0 else g * b
    if b.ndim == 1:
        return g[..., None] * b
    # y[i.., j.., m] = sum_k a[i.., k] b[j.., k, m]
    gaxes = tuple(range(g.ndim - (b.ndim - 1), g.ndim))
    baxes = tuple(range(b.ndim - 2)) + (b.ndim - 1,)
    return np.tensordot(g, b, axes=(gaxes, baxes))


def dot_grad_b(g, a, b_ndim):
    """Gradient of ``np.dot(a, b)`` with respect to ``b``."""
    a = np.asarray(a)
    g = np.asarray(g)
    if a.ndim == 0 or b_ndim == 0:
        return np.sum(g * a) if b_ndim == 0 else g * a
    lead = tuple(range(a.ndim - 1))
    r = np.tensordot(a, g, axes=(lead, lead))   # (k, j.., m) or (k,)
    if b_ndim == 1:
        return r
    return np.moveaxis(r, 0, -2)


def _as_matrices(a_shape, b_shape, g):
    """Promote 1-D matmul operands to matrices and put the dropped axes back
    into ``g``."""
    g = np.asarray(g)
    if len(b_shape) == 1:
        g = np.expand_dims(g, -1)
        b_shape = tuple(b_shape) + (1,)
    if len(a_shape) == 1:
        g = np.expand_dims(g, -2)
        a_shape = (1,) + tuple(a_shape)
    return tuple(a_shape), tuple(b_shape), g


def matmul_grad_a(g, a_shape, b):
    """Gradient of ``a @ b`` with respect to ``a`` (1-D, 2-D or batched; a stack of ``a``
    times one matrix ``b`` as one matrix product)."""
    b = np.asarray(b)
    g = np.asarray(g)
    if b.ndim == 2 and len(a_shape) > 2 and g.size and b.size and g.shape[:-1] == tuple(a_shape[:-1]):
        return (g.reshape(-1, g.shape[-1]) @ b.T).reshape(a_shape)
    a2, b2, g = _as_matrices(a_shape, b.shape, g)
    da = g @ np.swapaxes(b.reshape(b2), -1, -2)
    return unbroadcast(da, a2).reshape(a_shape)


def matmul_grad_b(g, a, b_shape):
    """Gradient of ``a @ b`` with respect to ``b`` (1-D, 2-D or batched; for a stack of
    ``a`` times one matrix ``b``, one matrix product over all the stacked rows)."""
    a = np.asarray(a)
    g = np.asarray(g)
    if len(b_shape) == 2 and a.ndim > 2 and a.size and g.size and g.shape[:-1] == a.shape[:-1]:
        return a.reshape(-1, a.shape[-1]).T @ g.reshape(-1, g.shape[-1])
    a2, b2, g = _as_matrices(a.shape, b_shape, g)
    db = np.swapaxes(a.reshape(a2), -1, -2) @ g
    return unbroadcast(db, b2).reshape(b_shape)


def inner_grad_a(g, a_ndim, b):
    """Gradient of ``np.inner(a, b)`` with respect to ``a``."""
    b = np.asarray(b)
    g = np.asarray(g)
    if a_ndim == 0 or b.ndim == 0:
        return np.sum(g * b) if a_ndim == 0 else g * b
    gaxes = tuple(range(g.ndim - (b.ndim - 1), g.ndim))
    return np.tensordot(g, b, axes=(gaxes, tuple(range(b.ndim - 1))))


def inner_grad_b(g, a, b_ndim):
    """Gradient of ``np.inner(a, b)`` with respect to ``b``."""
    a = np.asarray(a)
    g = np.asarray(g)
    if a.ndim == 0 or b_ndim == 0:
        return np.sum(g * a) if b_ndim == 0 else g * a
    lead = tuple(range(a.ndim - 1))
    return np.tensordot(g, a, axes=(lead, lead))


def _tensordot_axes(axes, a_ndim, b_ndim):
    if isinstance(axes, (int, np.integer)):
        return list(range(a_ndim - axes, a_ndim)), list(range(axes))
    ax_a, ax_b = axes
    ax_a = [ax_a] if isinstance(ax_a, (int, np.integer)) else list(ax_a)
    ax_b = [ax_b] if isinstance(ax_b, (int, np.integer)) else list(ax_b)
    return [int(i) % a_ndim for i in ax_a], [int(i) % b_ndim for i in ax_b]


def tensordot_grad_a(g, a_ndim, b, axes=2):
    """Gradient of ``np.tensordot(a, b, axes)`` with respect to ``a``."""
    b = np.asarray(b)
    g = np.asarray(g)
    ax_a, ax_b = _tensordot_axes(axes, a_ndim, b.ndim)
    free_a = [i for i in range(a_ndim) if i not in ax_a]
    free_b = [i for i in range(b.ndim) if i not in ax_b]
    gaxes = list(range(len(free_a), g.ndim))
    r = np.tensordot(g, b, axes=(gaxes, free_b))      # free_a, then b's contracted axes in order
    paired = [ax_a[ax_b.index(j)] for j in sorted(ax_b)]
    return np.transpose(r, inverse_permutation(free_a + paired, a_ndim))


def tensordot_grad_b(g, a, b_ndim, axes=2):
    """Gradient of ``np.tensordot(a, b, axes)`` with respect to ``b``."""
    a = np.asarray(a)
    g = np.asarray(g)
    ax_a, ax_b = _tensordot_axes(axes, a.ndim, b_ndim)
    free_a = [i for i in range(a.ndim) if i not in ax_a]
    free_b = [i for i in range(b_ndim) if i not in ax_b]
    r = np.tensordot(a, g, axes=(free_a, list(range(len(free_a)))))  # a's contracted axes in order, free_b
    paired = [ax_b[ax_a.index(i)] for i in sorted(ax_a)]
    return np.transpose(r, inverse_permutation(paired + free_b, b_ndim))


_EINSUM_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _einsum_spelled_out(operands):
    """``(inputs, output, arrays, positions)`` for either calling form of ``np.einsum``
    (``'ij,jk->ik', a, b`` or ``a, [0, 1], b, [1, 2], [0, 2]``): one subscript word per
    array with ``...`` replaced by letters of its own, the output word made explicit, and
    where each array sits among ``operands``."""
    operands = list(operands)
    if isinstance(operands[0], str):
        subscripts, arrays = operands[0], operands[1:]
        positions = list(range(1, len(operands)))
    else:
        output = operands.pop() if len(operands) % 2 else None
        arrays = operands[0::2]
        positions = list(range(0, len(operands), 2))

        def word(sub):
            return "".join("..." if i is Ellipsis else _EINSUM_LETTERS[i] for i in sub)
        subscripts = ",".join(word(sub) for sub in operands[1::2])
        subscripts += "" if output is None else "->" + word(output)
    arrays = [np.asarray(x) for x in arrays]
    s = subscripts.replace(" ", "")
    ins, out = s.split("->") if "->" in s else (s, None)
    ins = ins.split(",")
    if len(ins) != len(arrays):
        raise ValueError(f"einsum {subscripts!r} expects {len(ins)} operands, got {len(arrays)}")
    named = "".join(ins).replace(".", "")
    singles = "".join(sorted(c for c in set(named) if named.count(c) == 1))
    free = [c for c in _EINSUM_LETTERS if c not in s]
    ranks = [x.ndim - len(sub.replace("...", "")) for sub, x in zip(ins, arrays) if "..." in sub]
    ell = "".join(free[:max(ranks, default=0)])
    ins = [sub.replace("...", ell[len(ell) - (x.ndim - len(sub.replace("...", ""))):]) if "..." in sub else sub
           for sub, x in zip(ins, arrays)]
    out = ell + singles if out is None else out.replace("...", ell)
    return ins, out, arrays, positions


def einsum_grads(g, operands):
    """Gradients of ``np.einsum(*operands)``, either calling form (a subscripts string then
    the arrays, or arrays each followed by its list of axis numbers): one entry per operand,
    ``None`` for the subscripts.

    Each is another einsum: the output's adjoint contracted with the other
    operands onto the operand's own subscripts. Letters summed away inside a
    single operand are broadcast back; a letter repeated in one operand (a
    diagonal, ``'ii->i'``) gets its identity matrix; axes of size 1 that einsum
    broadcast are summed back. ``...`` is spelled out as letters first.
    """
    result = [None] * len(operands)
    ins, out, operands, positions = _einsum_spelled_out(operands)
    subscripts = ",".join(ins) + "->" + out
    g = np.asarray(g)
    sizes = {}
    for sub, x in zip(ins, operands):
        for c, n in zip(sub, x.shape):
            sizes[c] = max(n, sizes.get(c, 1))
    grads = []
    for i, (sub, x) in enumerate(zip(ins, operands)):
        if x.size == 0 or g.size == 0:          # an empty operand or output: nothing flows
            grads.append(np.zeros(x.shape, dtype=np.result_type(g, x)))
            continue
        others = [(s, o) for j, (s, o) in enumerate(zip(ins, operands)) if j != i]
        available = set(out).union(*[set(s) for s, _ in others])
        unique = "".join(dict.fromkeys(sub))
        reach = "".join(c for c in unique if c in available)
        spec = ",".join([out] + [s for s, _ in others]) + "->" + reach
        r = np.einsum(spec, g, *[o for _, o in others])
        # letters only this operand had: broadcast back
        shape = [sizes[c] if c in reach else 1 for c in unique]
        r = np.broadcast_to(r.reshape(shape), [sizes[c] for c in unique])
        if len(unique) < len(sub):          # repeated letters: diagonals
            fresh = iter(c for c in map(chr, range(ord("A"), ord("Z") + 1))
                         if c not in subscripts)
            seen, full, eyes = set(), "", []
            for c in sub:
                if c in seen:
                    d = next(fresh)
                    full += d
                    eyes.append((c + d, np.eye(sizes[c], dtype=r.dtype)))
                else:
                    seen.add(c)
                    full += c
            spec = ",".join([unique] + [e for e, _ in eyes]) + "->" + full
            r = np.einsum(spec, r, *[m for _, m in eyes])
        grads.append(unbroadcast(np.array(r), x.shape))
    for at, grad in zip(positions, grads):
        result[at] = grad
    return tuple(result)


def _kron_parts(g, a_shape, b_shape):
    nd = max(len(a_shape), len(b_shape))
    sa = (1,) * (nd - len(a_shape)) + tuple(a_shape)
    sb = (1,) * (nd - len(b_shape)) + tuple(b_shape)
    g = np.asarray(g).reshape([n for pair in zip(sa, sb) for n in pair])
    return g, sa, sb, nd


def kron_grad_a(g, a_shape, b):
    """Gradient of ``np.kron(a, b)`` with respect to ``a``."""
    b = np.asarray(b)
    g, sa, sb, nd = _kron_parts(g, a_shape, b.shape)
    r = np.tensordot(g, b.reshape(sb), axes=(list(range(1, 2 * nd, 2)), list(range(nd))))
    return r.reshape(a_shape)


def kron_grad_b(g, a, b_shape):
    """Gradient of ``np.kron(a, b)`` with respect to ``b``."""
    a = np.asarray(a)
    g, sa, sb, nd = _kron_parts(g, a.shape, b_shape)
    r = np.tensordot(g, a.reshape(sa), axes=(list(range(0, 2 * nd, 2)), list(range(nd))))
    return r.reshape(b_shape)


def _cross_setup(g, a, b, axisa, axisb, axisc, axis):
    if axis is not None:
        axisa = axisb = axisc = axis
    a = np.moveaxis(np.asarray(a), axisa, -1)
    b = np.moveaxis(np.asarray(b), axisb, -1)
    na, nb = a.shape[-1], b.shape[-1]
    g = np.asarray(g)
    if na == 2 and nb == 2:         # y is the z component only
        g3 = np.stack([np.zeros_like(g), np.zeros_like(g), g], axis=-1)
    else:
        g3 = np.moveaxis(g, axisc, -1)
    pad = lambda v: np.concatenate([v, np.zeros_like(v[..., :1])], -1) if v.shape[-1] == 2 else v
    return pad(a), pad(b), g3, na, nb, axisa, axisb


def cross_grad_a(g, a_shape, b, axisa=-1, axisb=-1, axisc=-1, axis=None):
    """Gradient of ``np.cross(a, b)`` with respect to ``a``: ``b x g``."""
    a = np.empty(a_shape)
    _, b3, g3, na, _, axisa, _ = _cross_setup(g, a, b, axisa, axisb, axisc, axis)
    r = np.cross(b3, g3)[..., :na]
    shape = np.moveaxis(a, axisa, -1).shape
    return np.moveaxis(unbroadcast(r, shape), -1, axisa)


def cross_grad_b(g, a, b_shape, axisa=-1, axisb=-1, axisc=-1, axis=None):
    """Gradient of ``np.cross(a, b)`` with respect to ``b``: ``g x a``."""
    b = np.empty(b_shape)
    a3, _, g3, _, nb, _, axisb = _cross_setup(g, a, b, axisa, axisb, axisc, axis)
    r = np.cross(g3, a3)[..., :nb]
    shape = np.moveaxis(b, axisb, -1).shape
    return np.moveaxis(unbroadcast(r, shape), -1, axisb)


_SOLVE_VECTOR_1D = int(np.__version__.split(".")[0]) >= 2


def _solve_vector(a_ndim, b_ndim):
    """Whether ``np.linalg.solve`` treats ``b`` as a (stack of) vector(s)."""
    if _SOLVE_VECTOR_1D:            # NumPy 2: only a 1-D b is a vector
        return b_ndim == 1
    return b_ndim == a_ndim - 1     # NumPy 1


def as_columns(x, a_ndim, b_ndim):
    """``x`` as a stack of matrices: a vector right-hand side of
    ``np.linalg.solve(a, b)`` becomes a column."""
    x = np.asarray(x)
    return x[..., None] if _solve_vector(a_ndim, b_ndim) else x


def from_columns(x, a_ndim, b_ndim):
    """Undo :func:`as_columns`."""
    return x[..., 0] if _solve_vector(a_ndim, b_ndim) else x


def multi_dot_grads(g, arrays):
    """Gradients of ``np.linalg.multi_dot(arrays)``, one per array.

    The first array may be 1-D (a row), the last 1-D (a column).
    """
    mats = [np.asarray(x) for x in arrays]
    shapes = [m.shape for m in mats]
    g = np.asarray(g)
    if mats[0].ndim == 1:
        mats[0] = mats[0][None, :]
        g = g[None, ...]
    if mats[-1].ndim == 1:
        mats[-1] = mats[-1][:, None]
        g = g[..., None]
    g = g.reshape(mats[0].shape[0], mats[-1].shape[1])
    k = len(mats)
    prefix = [np.eye(mats[0].shape[0], dtype=g.dtype)]
    for m in mats[:-1]:
        prefix.append(prefix[-1] @ m)
    suffix = [np.eye(mats[-1].shape[1], dtype=g.dtype)]
    for m in mats[:0:-1]:
        suffix.append(m @ suffix[-1])
    suffix = suffix[::-1]
    return tuple((prefix[i].T @ g @ suffix[i].T).reshape(shapes[i]) for i in range(k))


def _vector_norm_grad(g, x, y, ord, axis, keepdims):
    g = restore_axes(np.real(g), x.shape, axis, keepdims)     # a norm is real, so is its adjoint
    y = restore_axes(y, x.shape, axis, keepdims)
    if ord == np.inf or ord == -np.inf:
        ax = normalize_axis(axis, x.ndim)
        hit = np.abs(x) == y
        w = (hit / np.sum(hit, axis=ax, keepdims=True)).astype(x.dtype, copy=False)
        return g * w * np.conjugate(np.sign(x))
    if ord == 0:
        return np.zeros_like(x)
    if ord == 1:
        return g * np.conjugate(np.sign(x))
    if ord == 2:
        return g * _over_norm(np.conjugate(x), y)
    return g * np.conjugate(np.sign(x)) * _over_norm(np.abs(x) ** (ord - 1), y ** (ord - 1))


def _over_norm(x, y):
    """``x / y`` where the norm ``y`` is positive; 0 where it is 0 (then ``x`` is 0 too): the
    zero subgradient at the norm's kink, as central differences and torch give."""
    zero = y == 0
    return np.where(zero, np.zeros((), dtype=x.dtype), x / np.where(zero, np.ones((), dtype=y.dtype), y))


def _matrix_norm_grad(g, x, ord, axis, keepdims):
    r, c = [a % x.ndim for a in axis]
    if x.size == 0:
        return np.zeros_like(x)
    g = restore_axes(np.real(g), x.shape, axis, keepdims)
    # work with the matrix axes last
    xm = np.moveaxis(x, (r, c), (-2, -1))
    gm = np.moveaxis(g, (r, c), (-2, -1))
    if ord in ("nuc", 2):
        u, s, vt = np.linalg.svd(xm, full_matrices=False)
        if ord == "nuc":
            d = np.conjugate(u @ vt)
        else:
            d = np.conjugate(u[..., :, :1] @ vt[..., :1, :])
        zero = np.all(xm == 0, axis=(-2, -1), keepdims=True)     # the zero subgradient at 0
        out = gm * np.where(zero, np.zeros((), dtype=d.dtype), d)
    elif ord in (1, np.inf):
        sum_axis = -2 if ord == 1 else -1          # column sums vs row sums
        sums = np.sum(np.abs(xm), axis=sum_axis, keepdims=True)
        hit = sums == np.max(sums, axis=(-2, -1), keepdims=True)
        w = (hit / np.sum(hit, axis=(-2, -1), keepdims=True)).astype(x.dtype, copy=False)
        out = gm * w * np.conjugate(np.sign(xm))
    else:
        raise NotImplementedError(f"gradient of np.linalg.norm with ord={ord!r}")
    return np.moveaxis(out, (-2, -1), (r, c))


def norm_grad(g, x, y, ord=None, axis=None, keepdims=False):
    """Gradient of ``np.linalg.norm(x, ord, axis, keepdims)`` for any ``ord``.

    Vector norms: p-norms, ``inf`` (ties share), 1, 2. Matrix norms: ``'fro'``,
    ``'nuc'``, 2 (largest singular value), 1 and ``inf``.
    """
    x = np.asarray(x)
    if axis is None and x.ndim == 2 and ord is not None:
        axis = (0, 1)
    if isinstance(axis, (int, np.integer)) or (axis is None and x.ndim <= 1):
        return _vector_norm_grad(g, x, y, 2 if ord is None else ord, axis, keepdims)
    if axis is None:
        return _vector_norm_grad(g, x, y, 2, None, keepdims)
    axis = tuple(axis)
    if len(axis) == 1:
        return _vector_norm_grad(g, x, y, 2 if ord is None else ord, axis, keepdims)
    if ord in (None, "fro"):
        return restore_axes(np.real(g), x.shape, axis, keepdims) * _over_norm(np.conjugate(x), restore_axes(y, x.shape, axis, keepdims))
    return _matrix_norm_grad(g, x, ord, axis, keepdims)


def vector_norm_grad(g, x, y, ord=2, axis=None, keepdims=False):
    """Gradient of ``np.linalg.vector_norm`` (``axis=None`` means all elements)."""
    x = np.asarray(x)
    return _vector_norm_grad(g, x, y, ord, axis, keepdims)


def cofactor(a):
    """The cofactor matrix ``det(a) inv(a)^T`` of ``a`` (the gradient of ``det``), exact also
    for singular matrices: ``det(U) det(Vh) conj(U) diag(prod of the other singular values)
    conj(Vh)`` from ``a = U diag(s) Vh``."""
    a = np.asarray(a)
    u, s, vt = np.linalg.svd(a)
    sign = np.linalg.det(u) * np.linalg.det(vt)
    return np.expand_dims(sign, (-2, -1)) * (np.conjugate(u) * np.expand_dims(prod_others(s, -1), -2)) @ np.conjugate(vt)


def on_triangle(g, UPLO="L"):
    """The gradient of a function of a symmetric matrix that reads only its lower (``'L'``) or
    upper (``'U'``) triangle, from the gradient ``g`` it would have on a full matrix: the
    diagonal of ``g`` plus both off-diagonal halves folded onto the triangle read (for a
    Hermitian input the other half is conjugated, and only the diagonal's real part is read)."""
    folded = g + np.conjugate(np.swapaxes(g, -1, -2))
    part = np.tril(folded, -1) if UPLO in ("L", "l") else np.triu(folded, 1)
    return part + np.real(g) * np.eye(g.shape[-1], dtype=np.real(g).dtype)


def matrix_power_grad(g, a, n):
    """Gradient of ``np.linalg.matrix_power(a, n)``:
    ``sum_k (a^T)^k g (a^T)^(n-1-k)``; negative ``n`` goes through the inverse."""
    a = np.asarray(a)
    g = np.asarray(g)
    if n < 0:
        b = np.linalg.inv(a)
        gb = matrix_power_grad(g, b, -n)
        bt = np.swapaxes(b, -1, -2)
        return -(bt @ gb @ bt)
    at = np.swapaxes(a, -1, -2)
    powers = [np.broadcast_to(np.eye(a.shape[-1], dtype=a.dtype), a.shape)]
    for _ in range(1, n):
        powers.append(powers[-1] @ at)
    out = np.zeros(np.broadcast_shapes(a.shape, g.shape), dtype=g.dtype)
    for k in range(n):
        out = out + powers[k] @ g @ powers[n - 1 - k]
    return out


def clip_bound_grad(g, y, bound, other=None):
    """Gradient of ``np.clip`` for one bound: the adjoint of the elements that came out equal
    to it (also at a tie with ``a``, as autograd gives ``a`` none there), unless they equal
    ``other`` (the upper bound, which wins when the bounds meet); None when there is no bound."""
    if bound is None:
        return None
    won = (y == bound) & (y != other) if other is not None else y == bound
    return unbroadcast(g * won, np.shape(bound))


def setitem(x, index, value):
    """A copy of ``x`` with ``x[index] = value``: item assignment made functional."""
    out = np.array(x, copy=True)
    out[index] = value
    return out


def setitem_value_grad(g, index, value_shape):
    """Gradient of ``value`` in ``x[index] = value``: each written element takes the adjoint of
    its slot, except where a repeated index is overwritten by a later element (NumPy keeps the
    last write), which gets zero."""
    g = np.asarray(g)
    picked = g[index]
    if not _is_basic_index(index):
        slot = np.arange(picked.size).reshape(picked.shape)
        writer = np.full(g.shape, -1)
        writer[index] = slot
        picked = np.where(writer[index] == slot, picked, np.zeros((), dtype=g.dtype))
    return unbroadcast(picked, tuple(value_shape))


def stack_items(*items):
    """``np.array([a, b, c])`` for a list literal of arrays or numbers (same shapes)."""
    return np.stack([np.asarray(i) for i in items])


def unpartition(g, a, kth, axis=-1):
    """Gradient of ``np.partition(a, kth, axis)``: each adjoint goes back to its element."""
    order = np.argpartition(a, kth, axis=axis)
    out = np.empty(np.shape(a), dtype=np.asarray(g).dtype)
    np.put_along_axis(out, order, g, axis=axis)
    return out


def unrollaxis(g, ndim, axis, start=0):
    """Gradient of ``np.rollaxis(a, axis, start)``: roll the axis back where it came from."""
    axis = axis % ndim
    start = start % (ndim + 1) if start < 0 else start
    if start > axis:
        return np.rollaxis(g, start - 1, axis)
    return np.rollaxis(g, start, axis + 1)


def imag_grad(g, val):
    """Gradient of ``np.imag(val)``: zero for a real ``val``, ``-1j * g`` for a complex one."""
    if np.iscomplexobj(val):
        return -1j * np.asarray(g)
    return np.zeros_like(np.real(g))
