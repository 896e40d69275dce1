"""The update step: one optimiser step on a model, generated source like everything else.

The machinery every optimiser shares (the :class:`Optimiser` protocol, per-Param
state, the generated flat update function, the all-or-nothing commit) and
:class:`SGD`, which a bare number means (``m.update(0.1)``). It sits below the
models (``model.update`` and ``fc.source(m, "update")`` use it); the library of
optimisers (Momentum, Adam, ...) is :mod:`flux_compile.optim`.

>>> import numpy as np
>>> from flux_compile.params import Param
>>> class Toy:                         # stands in for an @fc.net model
...     __flux_net__ = True
...     def __init__(self): self.W = Param(np.ones(2))
>>> m = Toy(); m.W.grad[:] = [1.0, -2.0]
>>> apply_update(m, 0.1); m.W.value, m.W.grad
(array([0.9, 1.2]), array([0., 0.]))
"""
from __future__ import annotations

import ast
import weakref
from typing import NamedTuple

import numpy as np

from .locks import interrupts_held
from .params import named_params, params, path_str
from .readonly import cached_named_params, refuse_if_held
from .sourcecache import compile_source, unique_filename

__all__ = ["Optimiser", "SGD", "ParamState", "Entry", "NonFiniteGradient", "apply_update", "prepare_update",
           "update_source", "update_with", "clip_grad_norm", "interrupts_held"]


class NonFiniteGradient(FloatingPointError):
    """A trainable Param's gradient holds NaN or inf; ``.path`` names the first such Param.

    Raised before anything is computed: values, gradients and optimiser state are unchanged.

    >>> import numpy as np, flux_compile as fc
    >>> m = fc.Dense(1, 1)
    >>> m.W.grad[...] = np.nan
    >>> try:
    ...     m.update(0.1)
    ... except fc.optim.NonFiniteGradient as e:
    ...     print(e.path)
    W
    """

    def __init__(self, path, grad):
        self.path = path
        nan, inf = int(np.isnan(grad).sum()), int(np.isinf(grad).sum())
        super().__init__(f"the gradient of {path} is not finite ({nan} NaN and {inf} inf of "
                         f"{grad.size} entries); nothing was updated. Look for a log or division "
                         f"of zero, an overflow, or NaN in the data")


class Entry(NamedTuple):
    """One Param's optimiser state: the number of steps taken and the slot arrays."""
    step: int
    slots: tuple


class ParamState:
    """Optimiser state per Param, keyed by the Param object itself (by identity).

    The Params are held weakly: a Param that is no longer used anywhere else
    is freed, and its state with it. Entries are immutable and replaced whole
    (one assignment each), so a step's state is never half written. Pickled
    together with the model that owns the Params, the state is restored for
    those same Params (pickle keeps object identity within one dump).

    >>> import numpy as np, flux_compile as fc
    >>> m, opt = fc.Dense(1, 1), fc.optim.Adam(0.1)
    >>> m.b.grad[...] = 1.0; m.update(opt)
    >>> isinstance(opt.state, fc.optim.ParamState)
    True
    """

    def __init__(self):
        self._entries = {}          # id(param) -> (weakref to param, Entry)

    def _ref(self, p):
        held = self._entries.get(id(p))
        if held is not None and held[0]() is p:
            return held[0]
        me = weakref.ref(self)

        def forget(ref, key=id(p)):
            owner = me()
            if owner is not None and owner._entries.get(key, (None,))[0] is ref:
                del owner._entries[key]
        return weakref.ref(p, forget)

    def record(self, p, entry):
        """``(key, value)`` that :meth:`install` stores: made ahead, so a commit only assigns."""
        return id(p), (self._ref(p), entry)

    def install(self, record):
        """Store ``record``; returns the record it replaced (to put back), ``(key, None)`` if none."""
        key, value = record
        old = self._entries.get(key)
        self._entries[key] = value
        return key, old

    def restore(self, old):
        key, value = old
        if value is None:
            self._entries.pop(key, None)
        else:
            self._entries[key] = value

    def get(self, p, default=None):
        held = self._entries.get(id(p))
        return held[1] if held is not None and held[0]() is p else default

    def __getitem__(self, p):
        entry = self.get(p)
        if entry is None:
            raise KeyError(f"no optimiser state for {p!r}")
        return entry

    def __setitem__(self, p, entry):
        self.install(self.record(p, Entry(int(entry[0]), tuple(entry[1]))))

    def __delitem__(self, p):
        if self.get(p) is None:
            raise KeyError(f"no optimiser state for {p!r}")
        del self._entries[id(p)]

    def pop(self, p, default=None):
        entry = self.get(p)
        if entry is not None:
            del self._entries[id(p)]
        return default if entry is None else entry

    def __contains__(self, p):
        return self.get(p) is not None

    def items(self):
        """``[(param, Entry)]`` for the Params still alive."""
        out = []
        for ref, entry in list(self._entries.values()):
            p = ref()
            if p is not None:
                out.append((p, entry))
        return out

    def __iter__(self):
        return iter([p for p, _ in self.items()])

    def __len__(self):
        return len(self.items())

    def clear(self):
        self._entries.clear()

    def __getstate__(self):
        return {"entries": [(p, e.step, e.slots) for p, e in self.items()]}

    def __setstate__(self, state):
        self._entries = {}
        for p, step, slots in state["entries"]:
            self[p] = (step, slots)

    def __repr__(self):
        return f"<ParamState of {len(self)} Params>"


class Optimiser:
    """Base class. A subclass names its hyper-parameters (``hyper``, in the
    generated function's argument order), its per-parameter state arrays
    (``slots``) and writes the math for one parameter (:meth:`block`) in terms
    of ``p`` (the value), ``g`` (the gradient), the slot names and ``t`` (this
    parameter's step number, counting from 1).

    >>> import flux_compile as fc
    >>> opt = fc.optim.Adam(0.01)
    >>> isinstance(opt, fc.optim.Optimiser), opt.hyper, opt.slots
    (True, ('lr', 'beta1', 'beta2', 'eps'), ('m', 'v'))
    """

    hyper: tuple = ()
    slots: tuple = ()
    uses_t = False          # does the math need the step number ``t``?

    def __init__(self):
        self.state = ParamState()       # Param -> Entry(step count, slot arrays), Params held weakly

    def hyperparams(self):
        """Hyper-parameter values as Python floats, in ``hyper`` order."""
        return [float(getattr(self, name)) for name in self.hyper]

    def block(self):
        """Lines of math giving the new ``p`` and slots from ``g`` and the old ones.

        Write new arrays (``p = p - lr * g``), never into the old ones: the
        old values must stay intact until every Param's new value exists.
        (``p -= x`` is rewritten to ``p = p - (x)``; writing into an element
        or an attribute is an error.)"""
        raise NotImplementedError

    def step(self, model):
        """Apply one update to ``model``'s trainable Params, then zero every gradient."""
        apply_update(model, self)

    def reset(self):
        """Forget all per-parameter state (moments, step counts)."""
        self.state.clear()

    def _state_for(self, p):
        """The state ``p`` starts this step from (zeros at its first step); stores nothing."""
        entry = self.state.get(p)
        if entry is None or len(entry.slots) != len(self.slots) or any(
                s.shape != p.value.shape or s.dtype != p.value.dtype for s in entry.slots):
            entry = Entry(0, tuple(np.zeros_like(p.value) for _ in self.slots))
        return entry

    def settings(self):
        """``{name: value}`` of the hyper-parameters (what a checkpoint compares on load)."""
        return dict(zip(self.hyper, self.hyperparams()))

    def __repr__(self):
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._repr_names())
        return f"{type(self).__name__}({args})"

    def _repr_names(self):
        return self.hyper


class SGD(Optimiser):
    """Plain gradient descent: ``p -= lr * g`` (``torch.optim.SGD(lr)``).

    >>> import numpy as np, flux_compile as fc
    >>> m = fc.Dense(1, 1)
    >>> m.b.grad[...] = 2.0
    >>> m.update(fc.optim.SGD(0.25)); m.b.value
    array([[-0.5]])
    """

    hyper = ("lr",)

    def __init__(self, lr=0.1):
        super().__init__()
        self.lr = lr

    def block(self):
        return ["p = p - lr * g"]


# -- source generation ---------------------------------------------------------

def _as_optimiser(opt):
    if isinstance(opt, Optimiser):
        return opt
    if isinstance(opt, (int, float, np.number)) and not isinstance(opt, bool):
        return SGD(float(opt))
    raise TypeError(f"expected a learning rate or an optimiser from fc.optim, not {opt!r}")


def _layout(model):
    """(trainable [(path, Param)], frozen [(path, Param)]) of ``model``."""
    everything = cached_named_params(model)
    return ([(q, p) for q, p in everything if p.trainable],
            [(q, p) for q, p in everything if not p.trainable])


def _functional(opt, lines):
    """``opt.block()`` with ``x op= e`` rewritten to ``x = x op (e)``: the old arrays stay intact."""
    out = []
    for line in lines:
        for stmt in ast.parse(line).body:
            if isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name):
                load = ast.Name(stmt.target.id, ast.Load())
                stmt = ast.Assign([stmt.target], ast.BinOp(load, stmt.op, stmt.value), lineno=1)
            targets = stmt.targets if isinstance(stmt, ast.Assign) else \
                [stmt.target] if isinstance(stmt, (ast.AugAssign, ast.AnnAssign)) else []
            if any(not isinstance(n, (ast.Name, ast.Tuple, ast.List, ast.Store)) and
                   isinstance(n, (ast.Subscript, ast.Attribute))
                   for t in targets for n in ast.walk(t)):
                raise TypeError(f"{type(opt).__name__}.block() writes into an array "
                                f"({ast.unparse(stmt)}): write a new array instead "
                                f"(p = p - lr * g), so that a step is all or nothing")
            out.append(ast.unparse(ast.fix_missing_locations(stmt)))
    return out


def _source(opt, trainable_paths, frozen_paths):
    lines = [f"def update(params, state, steps, {', '.join(opt.hyper)}):"]
    block = _functional(opt, opt.block())
    slots = "(" + ", ".join(opt.slots) + ("," if len(opt.slots) == 1 else "") + ")"
    for i, path in enumerate(trainable_paths):
        lines.append(f"    # {path_str(path) or '<model>'}")
        head = f"    p, g = params[{i}].value, params[{i}].grad"
        if opt.slots:
            head = f"    p, g, {slots} = params[{i}].value, params[{i}].grad, state[{i}]"
        lines.append(head)
        if opt.uses_t:
            lines.append(f"    t = steps[{i}]")
        lines += ["    " + line for line in block]
        lines.append(f"    new_{i} = p, {slots if opt.slots else '()'}")
    for path in frozen_paths:
        lines.append(f"    # {path_str(path)} (frozen: no update)")
    lines.append(f"    return [{', '.join(f'new_{i}' for i in range(len(trainable_paths)))}]")
    return "\n".join(lines) + "\n"


_CACHE = {}     # (optimiser class, model class name, trainable paths, frozen paths) -> (source, fn)


def _compiled(model, opt, trainable, frozen):
    tpaths = tuple(q for q, _ in trainable)
    fpaths = tuple(q for q, _ in frozen)
    key = (type(opt), type(model).__qualname__, tpaths, fpaths)
    hit = _CACHE.get(key)
    if hit is None:
        source = _source(opt, tpaths, fpaths)
        label = f"{type(model).__qualname__}.update ({type(opt).__name__})"
        ns = compile_source(source, unique_filename(label), {"np": np})
        hit = _CACHE[key] = (source, ns["update"])
    return hit


_LAST = weakref.WeakKeyDictionary()     # model -> the optimiser of its latest update


def update_source(model, opt=None):
    """The generated update function for ``model`` and ``opt`` as text.

    Without ``opt``: the optimiser of the model's latest update, or ``SGD(0.1)``.

    >>> import flux_compile as fc
    >>> print(fc.optim.update_source(fc.Dense(2, 1), fc.optim.SGD(0.1)))   # doctest: +ELLIPSIS
    def update...
    """
    if opt is None:
        try:
            opt = _LAST.get(model)
        except TypeError:       # a model that cannot be weakly referenced
            opt = None
    opt = SGD(0.1) if opt is None else _as_optimiser(opt)
    trainable, frozen = _layout(model)
    return _compiled(model, opt, trainable, frozen)[0]


class PendingUpdate:
    """One optimiser step, computed but not applied yet. :meth:`commit` applies all of it."""

    def __init__(self, opt, values, records, grads):
        self.opt, self.values, self.records, self.grads = opt, values, records, grads
        self.done = False

    def commit(self):
        """Install every new value and state and zero every gradient, with Ctrl-C held back.

        Only assignments and zero fills (checked ahead to be possible), so nothing should
        fail here; if something does anyway, what was installed is put back before it
        propagates. ``done`` is set with the last assignment.
        """
        state = self.opt.state
        old_values, old_records = [], []
        with interrupts_held():
            try:
                for p, value in self.values:
                    old_values.append((p, p.value))
                    p.value = value
                for record in self.records:
                    old_records.append(state.install(record))
            except BaseException:
                for old in reversed(old_records):
                    state.restore(old)
                for p, value in reversed(old_values):
                    p.value = value
                raise
            for g in self.grads:
                g[...] = 0
            self.done = True


def check_gradients(trainable):
    """Raise :class:`NonFiniteGradient` for the first trainable Param whose gradient is not finite."""
    # a finite sum settles it without a temporary array (NaN and inf propagate into the sum);
    # a sum that overflowed (silently) is checked entry by entry
    with np.errstate(over="ignore", invalid="ignore"):
        for path, p in trainable:
            g = p.grad
            if not np.isfinite(np.add.reduce(g, axis=None)) and not np.isfinite(g).all():
                raise NonFiniteGradient(path_str(path) or "<model>", g)


def prepare_update(model, lr_or_opt):
    """Compute one optimiser step on ``model`` and return it uncommitted; changes nothing.

    Checks first that every trainable gradient is finite (else
    :class:`NonFiniteGradient`).

    >>> import numpy as np, flux_compile as fc
    >>> m = fc.Dense(1, 1)
    >>> m.b.grad[...] = 1.0
    >>> step = fc.optim.prepare_update(m, 0.5)
    >>> m.b.value                                        # nothing changed yet
    array([[0.]])
    """
    opt = _as_optimiser(lr_or_opt)
    trainable, frozen = _layout(model)
    _, fn = _compiled(model, opt, trainable, frozen)
    try:
        _LAST[model] = opt
    except TypeError:
        pass
    check_gradients(trainable)
    grads = [p.grad for _, p in trainable + frozen]
    for (path, p), g in zip(trainable + frozen, grads):
        if not g.flags.writeable:
            raise ValueError(f"the gradient of {path_str(path)} is read-only: it cannot be zeroed")
    old = [opt._state_for(p) for _, p in trainable]
    new = fn([p for _, p in trainable], [e.slots for e in old], [e.step + 1 for e in old],
             *opt.hyperparams())
    values, records = [], []
    for (path, p), before, (value, slots) in zip(trainable, old, new):
        values.append((p, _like(value, p.value, path)))
        slots = tuple(_like(s, p.value, path) for s in slots)
        records.append(opt.state.record(p, Entry(before.step + 1, slots)))
    return PendingUpdate(opt, values, records, grads)


def _like(new, old, path):
    """``new`` as a fresh array of ``old``'s shape and dtype (never ``old`` itself)."""
    if type(new) is not np.ndarray:
        new = np.asarray(new)
    if new.shape != old.shape:
        raise ValueError(f"the update of {path_str(path)} has shape {new.shape}, "
                         f"the parameter {old.shape}")
    if new is old or (new.base is not None or old.base is not None) and np.may_share_memory(new, old):
        new = new.copy()            # (an array owning its memory shares none with another)
    return new if new.dtype == old.dtype else new.astype(old.dtype)


def apply_update(model, lr_or_opt):
    """One optimiser step on ``model``: a number means ``SGD(lr)``.

    Updates every trainable Param from its ``.grad``, then zeroes the
    gradients of all Params, frozen ones included. All or nothing: a
    non-finite gradient (:class:`NonFiniteGradient`) or an error while
    computing leaves values, gradients and state as they were, and Ctrl-C
    during the step either stops it before anything changed or after all of it.

    >>> import numpy as np, flux_compile as fc
    >>> m = fc.Dense(1, 1)
    >>> m.b.grad[...] = 1.0
    >>> fc.optim.apply_update(m, 0.5); m.b.value, m.b.grad
    (array([[-0.5]]), array([[0.]]))
    """
    prepare_update(model, lr_or_opt).commit()


def update_with(model, grads, fn):
    """``fc.update(m, grads, fn)``: set each Param to ``fn(value, grad)``.

    ``grads`` maps field paths (tuples such as ``("first", "W")``, or the
    string ``"first.W"``) to gradients, as ``fc.grad`` returns them. Frozen
    Params are left alone. If ``fn`` returns ``None`` it is taken to have
    changed ``value`` in place. A path that names no Param is a ``KeyError``
    listing every such path; nothing is changed then. The new values are
    installed only once ``fn`` has returned for every Param, so an error in
    ``fn`` or a wrong shape changes nothing (unless ``fn`` writes in place).

    >>> from flux_compile.params import Param
    >>> class Toy:
    ...     __flux_net__ = True
    ...     def __init__(self): self.W = Param(np.ones(2))
    >>> m = Toy()
    >>> update_with(m, {("W",): np.array([1.0, 2.0])}, lambda x, g: x - 0.5 * g)
    >>> m.W.value
    array([0.5, 0. ])
    """
    refuse_if_held(model, "fc.update")
    by_path = {}
    for q, p in named_params(model):
        by_path[q] = p
        by_path[path_str(q)] = p
    unknown = [k for k in grads if k not in by_path]
    if unknown:
        known = ", ".join(path_str(q) for q, _ in named_params(model))
        raise KeyError(f"no parameter at {', '.join(map(repr, unknown))}; the model has: {known}")
    values = []                 # every new value first, then all of them at once
    for key, g in grads.items():
        p = by_path[key]
        if g is None or not p.trainable:
            continue
        new = fn(p.value, g)
        if new is not None:
            new = np.asarray(new)
            if new.shape != p.value.shape:
                raise ValueError(f"update of {path_str(key) if isinstance(key, tuple) else key} "
                                 f"has shape {new.shape}, the parameter {p.value.shape}")
            if new is not p.value:
                values.append((p, new.astype(p.value.dtype, copy=not np.may_share_memory(new, p.value))))
    with interrupts_held():
        for p, new in values:
            p.value = new


def clip_grad_norm(model, max_norm):
    """Scale every trainable Param's gradient so their global L2 norm is at most ``max_norm``.

    Returns the norm before clipping (as ``torch.nn.utils.clip_grad_norm_`` does).

    >>> import numpy as np, flux_compile as fc
    >>> m = fc.Affine(1, 1)
    >>> m.W.grad[...] = 3.0; m.b.grad[...] = 4.0
    >>> clip_grad_norm(m, 1.0), round(float(m.W.grad[0, 0]), 6), round(float(m.b.grad[0, 0]), 6)
    (5.0, 0.6, 0.8)
    """
    grads = [p.grad for p in params(model)]
    norm = float(np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads)))
    if norm > max_norm > 0:
        scale = max_norm / (norm + 1e-12)
        for g in grads:
            g *= scale
    return norm
