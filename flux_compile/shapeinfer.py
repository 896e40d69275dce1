"""Symbolic shapes: what the compiler knows about each value's shape while it builds the graph.

A shape is a tuple of dims, each an ``int`` or a :class:`Sym` (a size known only at run
time, like the batch size ``x.0``); ``None`` means the rank itself is unknown. Shapes
let the compiler drop ``unbroadcast`` where no broadcasting happened, fold ``x.ndim``,
and pick the plain 2-D form of a rule.

>>> b = Sym("x.0")
>>> broadcast((b, 3), (1, 3))
(Sym('x.0'), 3)
"""
from __future__ import annotations

import numpy as np

from .ir import value_shape


class Sym:
    """A run-time size. ``nonone`` says it is known not to be 1 (the compiled code is
    specialised to that), so broadcasting it against another such size means they are
    equal (or NumPy raises): the two are then unified."""
    __slots__ = ("name", "nonone", "parent")

    def __init__(self, name, nonone=False):
        self.name = name
        self.nonone = nonone
        self.parent = None

    def __repr__(self):
        return f"Sym({self.name!r})"


_fresh = [0]


def fresh():
    _fresh[0] += 1
    return Sym(f"?{_fresh[0]}")


def find(d):
    while isinstance(d, Sym) and d.parent is not None:
        d = d.parent
    return d


def _is_one(d):
    return isinstance(d, int) and d == 1


def _broadcast_dim(dims):
    dims = [find(d) for d in dims]
    rest = [d for d in dims if not _is_one(d)]
    if not rest:
        return 1
    known = [d for d in rest if isinstance(d, int) or d.nonone]
    if len(known) == len(rest):
        ints = [d for d in known if isinstance(d, int)]
        root = ints[0] if ints else known[0]
        for d in known:
            if isinstance(d, Sym) and d is not root:
                d.parent = root
        return root
    if all(d is rest[0] for d in rest):
        return rest[0]
    return fresh()


def broadcast(*shapes):
    if any(s is None for s in shapes):
        return None
    n = max((len(s) for s in shapes), default=0)
    return tuple(_broadcast_dim([s[len(s) - n + i] for s in shapes if len(s) - n + i >= 0]) for i in range(n))


def same(a, b):
    """True when two symbolic shapes are certainly equal."""
    if a is None or b is None or len(a) != len(b):
        return False
    for x, y in zip(a, b):
        x, y = find(x), find(y)
        if not (x is y or (isinstance(x, int) and isinstance(y, int) and x == y)):
            return False
    return True


def static_shape(s):
    """The shape as a tuple of ints, or None if any dim is symbolic."""
    if s is None:
        return None
    s = tuple(find(d) for d in s)
    return s if all(isinstance(d, int) for d in s) else None


of_value = value_shape      # the shape of a constant: the op table's rule for ``const``


def _axis_tuple(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, int):
        axis = (axis,)
    try:
        return tuple(a % ndim for a in axis)
    except (TypeError, ZeroDivisionError):
        return None


def _reduce(s, axis, keepdims):
    if s is None:       # a reduction over every axis is a scalar whatever the input's shape
        return () if axis is None and not keepdims else None
    axes = _axis_tuple(axis, len(s))
    if axes is None:
        return None
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(s))
    return tuple(d for i, d in enumerate(s) if i not in axes)


def _matmul(a, b):
    if a is None or b is None:
        return None
    if len(a) == 0 or len(b) == 0:
        return None
    if len(a) == 1 and len(b) == 1:
        return ()
    if len(a) == 1:
        return b[:-2] + b[-1:]
    if len(b) == 1:
        return a[:-1]
    batch = broadcast(a[:-2], b[:-2])
    return None if batch is None else batch + (a[-2], b[-1])


def _transpose(s, axes=None):
    if s is None:
        return None
    if axes is None:
        return tuple(reversed(s))
    try:
        return tuple(s[i] for i in axes)
    except (TypeError, IndexError):
        return None


def _reshape(s, newshape):
    if isinstance(newshape, int):
        newshape = (newshape,)
    if not isinstance(newshape, tuple) or not all(isinstance(d, int) for d in newshape):
        return None
    if -1 not in newshape:
        return newshape
    st = static_shape(s)
    if st is None:
        return None
    known = int(np.prod([d for d in newshape if d != -1]))
    total = int(np.prod(st))
    return tuple(total // known if d == -1 else d for d in newshape) if known else None


def infer(fn, shapes, consts, kwargs):
    """Shape of ``fn(*args, **kwargs)``; ``shapes`` per positional arg, ``consts`` their
    compile-time values (or a marker when not constant), ``kwargs`` constant keywords."""
    from . import functions
    from .rules import helpers
    axis = kwargs.get("axis")
    keepdims = kwargs.get("keepdims", False)
    if fn in (float, int, bool, complex) and len(shapes) == 1:
        return ()           # a Python scalar
    if isinstance(fn, np.ufunc) and fn.signature is None and fn.nout == 1 and not kwargs.keys() - {"dtype"}:
        return broadcast(*shapes) if len(shapes) == fn.nin else None
    if fn in (np.sum, np.mean, np.max, np.min, np.prod, np.var, np.std, np.amax, np.amin, np.any, np.all):
        if len(shapes) != 1 or not kwargs.keys() <= {"axis", "keepdims", "ddof"}:
            return None
        return _reduce(shapes[0], axis, keepdims)
    if fn is functions.logsumexp and len(shapes) == 1:
        return _reduce(shapes[0], axis, keepdims)
    if fn in (np.matmul,) and len(shapes) == 2:
        return _matmul(*shapes)
    if fn is np.dot and len(shapes) == 2 and shapes[0] is not None and shapes[1] is not None \
            and len(shapes[0]) <= 2 and len(shapes[1]) <= 2 and len(shapes[0]) and len(shapes[1]):
        return _matmul(*shapes)
    if fn is np.transpose:
        return _transpose(shapes[0], consts[1] if len(consts) > 1 else kwargs.get("axes"))
    if fn is np.reshape and len(shapes) >= 1:
        ns = consts[1] if len(consts) > 1 else kwargs.get("newshape", kwargs.get("shape"))
        return _reshape(shapes[0], ns)
    if fn in (functions.sigmoid, functions.relu, functions.softmax, functions.logsoftmax, functions.elu,
              functions.gelu, functions.softplus, functions.leakyrelu, functions.nodiff,
              functions.standardize, functions.standardize_grad, functions.gelu_grad,
              helpers.astype, helpers.identity, np.clip, np.copy):
        return shapes[0]
    if fn is helpers.inplace_result and len(shapes) == 2:
        return shapes[1]
    if fn is np.swapaxes and shapes[0] is not None and len(consts) == 3:
        s0 = list(shapes[0])
        try:
            i, j = consts[1] % len(s0), consts[2] % len(s0)
        except (TypeError, ZeroDivisionError):
            return None
        s0[i], s0[j] = s0[j], s0[i]
        return tuple(s0)
    if fn is np.moveaxis and shapes[0] is not None and len(consts) == 3 \
            and isinstance(consts[1], int) and isinstance(consts[2], int):
        s0 = list(shapes[0])
        if not (-len(s0) <= consts[1] < len(s0) and -len(s0) <= consts[2] < len(s0)):
            return None
        d = s0.pop(consts[1] % len(shapes[0]))
        s0.insert(consts[2] % len(shapes[0]), d)
        return tuple(s0)
    if fn is np.expand_dims and shapes[0] is not None and len(consts) == 2 and isinstance(consts[1], int):
        s0 = list(shapes[0])
        ax = consts[1] if consts[1] >= 0 else len(s0) + 1 + consts[1]
        return tuple(s0[:ax] + [1] + s0[ax:])
    if fn is np.where and len(shapes) == 3:
        return broadcast(*shapes)
    if fn is helpers.unbroadcast and len(consts) == 2 and isinstance(consts[1], tuple):
        return consts[1]
    if fn is helpers.getitem and len(consts) == 2:
        return _index(shapes[0], consts[1])
    return None


def _index(s, index):
    """Shape of ``x[index]`` for basic indices (ints, slices, None, ...), else None."""
    if s is None:
        return None
    if not isinstance(index, tuple):
        index = (index,)
    if any(not (isinstance(i, (int, slice)) or i is None or i is Ellipsis) or isinstance(i, bool) for i in index):
        return None
    n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
    if Ellipsis in index:
        k = index.index(Ellipsis)
        index = index[:k] + (slice(None),) * (len(s) - n_real) + index[k + 1:]
    else:
        index = index + (slice(None),) * (len(s) - n_real)
    out, axis = [], 0
    for i in index:
        if i is None:
            out.append(1)
            continue
        if axis >= len(s):
            return None
        d = s[axis]
        axis += 1
        if isinstance(i, int):
            continue
        if i == slice(None):
            out.append(d)
        elif isinstance(d, int):
            out.append(len(range(*i.indices(d))))
        else:
            out.append(fresh())
    return tuple(out)


def symbolic_shape(name, spec):
    """``(Sym('x.0'), 3)``-style shape for an input specialised to ``spec`` (ndim, float, ones)."""
    if spec is None or spec[0] is None:
        return None
    ndim, _, ones = spec[:3]
    return tuple(1 if ones[i] else Sym(f"{name}.{i}", nonone=True) for i in range(ndim))
