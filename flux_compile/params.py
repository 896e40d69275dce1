"""Parameters and the model tree: ``Param``, ``const``, field paths, ``params``.

>>> import numpy as np, flux_compile as fc
>>> p = fc.Param(np.ones((2, 3)))
>>> p.shape, float(p.grad.sum()), float((p * 2).sum())
((2, 3), 0.0, 12.0)
"""
from __future__ import annotations

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin


class Param(NDArrayOperatorsMixin):
    """A trainable array: ``.value``, ``.grad`` (same shape and dtype, starts at zero), ``.trainable``.

    Outside compiled code it behaves like its array (``np.asarray(p)``,
    arithmetic, ``.shape``, ``.dtype``).

    >>> import numpy as np, flux_compile as fc
    >>> p = fc.Param(np.ones((2, 3)))
    >>> p.shape, p.grad.shape, float((p * 2).sum()), p.trainable
    ((2, 3), (2, 3), 12.0, True)
    """

    __array_priority__ = 20

    def __init__(self, value, trainable=True):
        if isinstance(value, Param):
            value = value.value
        value = np.asarray(value)
        if value.dtype.kind not in "fc":
            value = value.astype(np.float64)
        self.value = value
        self.grad = np.zeros_like(value)
        self.trainable = bool(trainable)

    # -- array protocol -------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        v = self.value
        if dtype is not None:
            v = v.astype(dtype, copy=False)
        return v.copy() if copy else v

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = tuple(x.value if isinstance(x, Param) else x for x in inputs)
        if "out" in kwargs:
            kwargs["out"] = tuple(x.value if isinstance(x, Param) else x for x in kwargs["out"])
        return getattr(ufunc, method)(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        return func(*_unwrap(args), **_unwrap(kwargs))

    shape = property(lambda self: self.value.shape)
    dtype = property(lambda self: self.value.dtype)
    ndim = property(lambda self: self.value.ndim)
    size = property(lambda self: self.value.size)
    T = property(lambda self: self.value.T)

    def __len__(self):
        return len(self.value)

    def __getitem__(self, index):
        return self.value[index]

    def __repr__(self):
        flag = "" if self.trainable else ", trainable=False"
        return f"Param({np.array2string(self.value, threshold=6, edgeitems=2)}{flag})"

    def zero_grad(self):
        self.grad[...] = 0


def _unwrap(obj):
    if isinstance(obj, Param):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unwrap(x) for x in obj)
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    return obj


def param(value, trainable=True):
    """``fc.param(x)``: the same as ``fc.Param(x)``.

    >>> import numpy as np, flux_compile as fc
    >>> fc.param(np.zeros(2)).value
    array([0., 0.])
    """
    return Param(value, trainable=trainable)


class Const:
    """Marker returned by :func:`const`; unwrapped when set on a ``@net``."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def const(value):
    """Keep an array attribute out of the parameters: ``self.mask = fc.const(m)``.

    >>> import numpy as np, flux_compile as fc
    >>> @fc.net
    ... class Masked:
    ...     def __init__(self):
    ...         self.W = np.ones((2, 2))
    ...         self.mask = fc.const(np.array([[1.0, 0.0], [0.0, 1.0]]))
    ...     def forward(self, x):
    ...         return x @ (self.W * self.mask)
    >>> [p.shape for p in fc.params(Masked())]             # mask is not a parameter
    [(2, 2)]
    """
    return Const(np.asarray(value))


def is_model(obj):
    return getattr(type(obj), "__flux_net__", False)


def children(m):
    """(name, value) pairs of a model's fields in definition order, skipping private ones."""
    for name, value in vars(m).items():
        if not name.startswith("_"):
            yield name, value


class ModelCycleError(ValueError):
    """A model reaches itself through its attributes (``m.child = m``, or a longer cycle)."""


def cycle_error(root, path, ancestors):
    """The error for a model at field ``path`` of ``root`` that is already one of its own
    ``ancestors`` (``{id(model): path of that model}``)."""
    name = type(root).__name__
    where = f"{name}.{path_str(path)}"
    again = ancestors[id(get_path(root, path))]
    target = f"{name}.{path_str(again)}" if again else f"the {name} model itself"
    return ModelCycleError(
        f"{where} is {target}: a model cannot contain itself (its attributes form a cycle). "
        f"Keep the back reference under a private name (a leading underscore, e.g. self._parent), "
        f"which flux_compile does not walk.")


def walk(m, arrays=False, containers=None):
    """Every model and Param in the tree of ``m`` as ``(field_path, obj)``: depth first, in
    field order, through lists, tuples and dicts, each object once (under its first path), ``m``
    first. A model that contains itself raises :class:`ModelCycleError` naming the path.
    With ``arrays`` plain arrays (constants such as masks) come too; a ``containers`` list
    receives the path of every list and dict met (they change without an attribute set).

    >>> import flux_compile as fc
    >>> [path for path, _ in walk(fc.Chain(fc.Affine(2, 3)))]
    [(), ('layers', 0), ('layers', 0, 'W'), ('layers', 0, 'b')]
    """
    seen, ancestors = set(), {}

    def visit(obj, path):
        if isinstance(obj, Param) or is_model(obj) or arrays and isinstance(obj, np.ndarray):
            if is_model(obj) and id(obj) in ancestors:
                raise cycle_error(m, path, ancestors)
            if id(obj) in seen:
                return
            seen.add(id(obj))
            yield path, obj
            if not is_model(obj):
                return
            ancestors[id(obj)] = path
            for name, value in children(obj):
                yield from visit(value, path + (name,))
            del ancestors[id(obj)]
        elif isinstance(obj, (list, tuple)):
            if containers is not None and isinstance(obj, list):
                containers.append(path)
            for i, value in enumerate(obj):
                yield from visit(value, path + (i,))
        elif isinstance(obj, dict):
            if containers is not None:
                containers.append(path)
            for k, value in obj.items():
                yield from visit(value, path + (k,))

    return list(visit(m, ()))


def named_params(m, trainable_only=False):
    """Unique Params of ``m`` as ``[(field_path, Param)]``, depth first, in field order.

    A Param shared by two sub-models appears once, under its first path. A model that
    contains itself raises :class:`ModelCycleError` naming the attribute path.

    >>> import flux_compile as fc
    >>> [(path, p.shape) for path, p in fc.named_params(fc.Dense(3, 2))]
    [(('W',), (3, 2)), (('b',), (1, 2))]
    """
    return [(path, p) for path, p in walk(m)
            if isinstance(p, Param) and (p.trainable or not trainable_only)]


def params(m):
    """Unique trainable Params of ``m``, deterministic depth-first order.

    >>> import flux_compile as fc
    >>> [p.shape for p in fc.params(fc.Chain(fc.Dense(3, 4), fc.Dense(4, 2)))]
    [(3, 4), (1, 4), (4, 2), (1, 2)]
    """
    return [p for _, p in named_params(m, trainable_only=True)]


def submodels(m):
    """Every model in the tree of ``m`` (``m`` first), each once."""
    return [x for _, x in walk(m) if is_model(x)]


def get_path(m, path):
    """Follow a field path: ``get_path(m, ("first", "W"))`` is ``m.first.W``."""
    obj = m
    for key in path:
        obj = obj[key] if isinstance(key, int) or isinstance(obj, dict) else getattr(obj, key)
    return obj


def path_str(path):
    """``("layers", 0, "W")`` -> ``"layers[0].W"``."""
    s = ""
    for key in path:
        s += f"[{key}]" if isinstance(key, int) else (f".{key}" if s else key)
    return s


def cast(m, dtype):
    """Convert every Param of ``m`` (values and gradients) to ``dtype``, e.g. ``np.float32``.

    >>> import numpy as np, flux_compile as fc
    >>> fc.cast(fc.LSTM(3, 4), np.float32).Wx.dtype
    dtype('float32')
    """
    for _, p in named_params(m):
        p.value = p.value.astype(dtype)
        p.grad = p.grad.astype(dtype)
    return m


# ------------------------------------------------------------------------------
# recurrent state kept on a model (see runstate.py): saved and put back around a trial run

STATE_KEYS = ("_fc_state", "_fc_link", "_fc_batch")      # the state, its backprop link, its batch


def snapshot_states(m):
    """The recurrent state of every model in the tree of ``m``, to restore later."""
    if not is_model(m):
        return []
    return [(x, dict(x.__dict__["_fc_state"]) if "_fc_state" in x.__dict__ else None,
             x.__dict__.get("_fc_link"), x.__dict__.get("_fc_batch")) for x in submodels(m)]


def restore_states(snapshot):
    """Put back the state ``snapshot_states`` saved (a model without state then has none)."""
    for x, st, link, batch in snapshot:
        if st is None:
            for key in STATE_KEYS:
                x.__dict__.pop(key, None)
        else:
            x.__dict__["_fc_state"] = dict(st)
            x.__dict__["_fc_link"] = link
            x.__dict__["_fc_batch"] = batch


def call_keeping_state(target, args):
    """``target(*args)`` with the recurrent state of a model target put back afterwards
    (how tracing evaluates a sub-model call on the real arguments)."""
    if not is_model(target):
        return target(*args)
    snap = snapshot_states(target)
    try:
        return target(*args)
    finally:
        restore_states(snap)
