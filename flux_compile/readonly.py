"""Between ``pullback`` and ``back``: the arrays the backward pass reads are held read-only.

The generated backward reads what forward saw by reference, not by copy: the inputs,
Param values, views of them and results it also returned (``tanh``'s derivative reads
``y``). So that a write in between cannot silently change the gradient, ``m.pullback(x)``
marks ``x`` (every array among the inputs), the outputs and every Param value of ``m``
read-only (NumPy's ``writeable`` flag, so a write raises
``ValueError: assignment destination is read-only``), and ``back`` releases them when
it has run; so does dropping ``back`` unused. A Param or Param value *replaced* in the
meantime is found when ``back`` runs. Holding costs one flag per array, no copy.

Not caught: writes through another view of the same memory made before ``pullback``
(NumPy's flag belongs to each array object, not to the memory).

>>> import numpy as np, flux_compile as fc
>>> m = fc.Affine(2, 1)
>>> x = np.ones((3, 2))
>>> y, back = m.pullback(x)
>>> x.flags.writeable
False
>>> _ = back(np.ones((3, 1)))
>>> x.flags.writeable
True
"""
from __future__ import annotations

import threading

import numpy as np

from .params import Param, named_params, path_str

_mutex = threading.Lock()
_held = {}          # id(array) -> [array, number of pending backs holding it]
_stuck = {}         # id(array) -> array released while its base was still held


class Hold:
    """The arrays one pending ``back`` reads, and which Param had which value at ``pullback``."""

    __slots__ = ("params", "values", "arrays", "released")

    def __init__(self, model, args):
        self.params = named_params(model)
        self.values = [p.value for _, p in self.params]
        self.arrays = _hold(self.values + list(_arrays_in(args)))
        self.released = False

    def check(self, model):
        """Raise if a Param of ``model`` or its value was replaced since ``pullback``."""
        now = named_params(model)
        if len(now) == len(self.params) and all(p is q for (_, p), (_, q) in zip(now, self.params)) \
                and all(v is p.value for v, (_, p) in zip(self.values, self.params)):
            return
        name = type(model).__name__
        for i, (path, p) in enumerate(now):
            if i >= len(self.params) or self.params[i][1] is not p:
                what = "replaced"
                break
            if p.value is not self.values[i]:
                what = "given a new value"
                break
        else:
            path, what = self.params[len(now)][0], "removed"
        raise RuntimeError(f"{name}.{path_str(path)} was {what} between pullback and back; backward would "
                           f"mix the new parameters with what forward saw. Call back(dy) before changing "
                           f"parameters, then pullback again")

    def release(self):
        if not self.released:
            self.released = True
            _release(self.arrays)

    def __del__(self):              # back dropped without running
        try:
            self.release()
        except Exception:           # pragma: no cover - interpreter shutting down
            pass


def held(array):
    """True when a pending ``back`` holds ``array`` read-only."""
    return id(array) in _held


def any_held():
    return bool(_held)


def _arrays_in(obj):
    if isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, Param):
        yield obj.value
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _arrays_in(v)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _arrays_in(v)


def _hold(arrays):
    """Mark each writable array read-only (counting holders); returns the arrays now held."""
    out, seen = [], set()
    with _mutex:
        for a in arrays:
            k = id(a)
            if k in seen:
                continue
            seen.add(k)
            entry = _held.get(k)
            if entry is not None:
                entry[1] += 1
            elif _stuck.pop(k, None) is not None or a.flags.writeable:
                a.flags.writeable = False
                _held[k] = [a, 1]
            else:
                continue            # read-only already, by its owner's choice: never touched
            out.append(a)
    return out


def _release(arrays):
    with _mutex:
        for a in arrays:
            entry = _held[id(a)]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[id(a)]
                _stuck[id(a)] = a
        for k, a in list(_stuck.items()):   # a view is writable again only after its base
            try:
                a.flags.writeable = True
                del _stuck[k]
            except ValueError:
                pass
