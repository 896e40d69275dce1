"""Recurrent state at run time: the current state of a model, links between steps.

Calling a model with state advances it; ``reset`` restores the initial state. State
carried from a step belongs to that step's batch (``check_batch``). :class:`Link`
carries the state gradient from step t+1's backward to step t's (backprop through
time). ``snapshot_states`` / ``restore_states`` (in :mod:`flux_compile.params`, so
that the graph evaluators below can use them) save and put back every model's state.
"""
from __future__ import annotations

import numpy as np

from .params import STATE_KEYS, Param, restore_states, snapshot_states, submodels

__all__ = ["current_state", "Link", "set_state", "input_batch", "check_batch", "accumulate_initial",
           "reset", "snapshot_states", "restore_states", "initial_value"]

_INITIAL = "initial"


def initial_value(m, name):
    v = m.__dict__.get(name, None)
    if v is None:
        return None
    return v.value if isinstance(v, Param) else v


def current_state(m, names):
    """(values, source): the state before this step, and where it came from."""
    st = m.__dict__.get("_fc_state")
    if st is None:
        values = []
        for name in names:
            if name not in m.__dict__:
                raise AttributeError(f"{type(m).__name__}.{name} is recurrent state but has no initial value: "
                                     f"set self.{name} in __init__")
            values.append(initial_value(m, name))
        return values, _INITIAL
    return [st[name] for name in names], m.__dict__.get("_fc_link")


class Link:
    """Carries the state gradient from step t+1's backward to step t's backward."""
    __slots__ = ("pending",)

    def __init__(self):
        self.pending = None

    def add(self, grads):
        if self.pending is None:
            self.pending = list(grads)
        else:
            self.pending = [a if b is None else (b if a is None else a + b) for a, b in zip(self.pending, grads)]


def set_state(m, names, values, link, args=()):
    """Store the state after a step, with the batch size of the step's inputs ``args``."""
    m.__dict__["_fc_state"] = dict(zip(names, values))
    m.__dict__["_fc_link"] = link
    m.__dict__["_fc_batch"] = input_batch(args)


def input_batch(args):
    """The batch size (axis 0) of each array input: what carried state was computed for."""
    return tuple(a.shape[0] for a in args if isinstance(a, (np.ndarray, Param)) and a.ndim >= 1)


def check_batch(m, names, values, args):
    """A clear error when state carried from a step at one batch size meets another.

    State whose shape never changed from its initial value (a (1, n) Param broadcast
    over the batch, a running statistic) fits any batch and is not checked."""
    before = m.__dict__.get("_fc_batch")
    if before is None:
        return
    now = input_batch(args)
    if now == before:
        return
    for name, v in zip(names, values):
        if np.shape(v) != np.shape(initial_value(m, name)):
            cls = type(m)
            label = f"fc.{cls.__name__}" if cls.__module__.startswith("flux_compile.") else cls.__name__
            raise ValueError(f"{label} carries state of batch {_batch_str(before)} from its last step "
                             f"(self.{name} has shape {np.shape(v)}); this input has batch "
                             f"{_batch_str(now)}: call reset() on the model before a new sequence "
                             f"(m.reset() resets every layer inside m)")


def _batch_str(batch):
    return str(batch[0]) if len(set(batch)) == 1 else str(batch)


def accumulate_initial(m, names, grads):
    """Add the gradient w.r.t. the initial state into the state attributes' Params."""
    from .rules.helpers import unbroadcast
    for name, g in zip(names, grads):
        p = m.__dict__.get(name)
        if g is not None and isinstance(p, Param) and p.trainable:
            p.grad += unbroadcast(np.asarray(g), p.shape)


def reset(m):
    """Restore the initial state of ``m`` and every model inside it.

    State a class lists in ``persistent_state`` (BatchNorm's running statistics) is not
    recurrent: it keeps its latest value, which becomes its new starting value.

    >>> import numpy as np, flux_compile as fc
    >>> m = fc.RNN(2, 3)
    >>> first = m(np.ones((1, 2))); _ = m(np.ones((1, 2)))
    >>> _ = fc.reset(m)
    >>> bool(np.allclose(m(np.ones((1, 2))), first))
    True
    """
    for x in submodels(m):
        _keep_persistent(x)
        for key in STATE_KEYS:
            x.__dict__.pop(key, None)
    return m


def _keep_persistent(x):
    """Write the current values of ``x``'s persistent state back as its attributes."""
    names = getattr(type(x), "persistent_state", ())
    current = x.__dict__.get("_fc_state")
    if not names or current is None:
        return
    for name in names:
        old = x.__dict__.get(name)
        if name in current and isinstance(old, np.ndarray) and old.shape == np.shape(current[name]):
            old[...] = current[name]        # in place: the attribute stays the same array
