"""Between ``pullback`` and ``back``: the arrays the backward pass reads are held read-only.

The generated backward reads what forward saw by reference, not by copy: Param values,
views of them and results it also returned (``tanh``'s derivative reads ``y``). The
inputs are the caller's: ``m.pullback(x)`` runs on a private copy of them, so the caller
may change ``x`` at any time. So that a write in between cannot silently change the
gradient, ``m.pullback(x)`` marks the outputs, every Param value and every constant
array attribute (masks, indices) in the tree of ``m`` read-only (NumPy's ``writeable``
flag, so a write raises ``ValueError: assignment destination is read-only``), and
``back`` releases them when it has run; so does dropping ``back`` unused. A Param,
Param value or array attribute *replaced* in the meantime is found when ``back`` runs.
Holding costs one flag per array, no copy.

Not caught: writes through another view of the same memory made before ``pullback``
(NumPy's flag belongs to each array object, not to the memory).

>>> import numpy as np, flux_compile as fc
>>> m = fc.Affine(2, 1)
>>> x = np.ones((3, 2))
>>> y, back = m.pullback(x)
>>> x.flags.writeable, m.W.value.flags.writeable
(True, False)
>>> _ = back(np.ones((3, 1)))
>>> m.W.value.flags.writeable
True
"""
from __future__ import annotations

import threading

import numpy as np

from .params import Param, is_model, named_params, path_str, walk
from .pytree import flatten

EDITS = [0]         # public attributes set on any model so far (Model.__setattr__ counts)
_mutex = threading.RLock()   # re-entrant: a Hold dropped by the garbage collector (or a Ctrl-C
                            # between acquire and release) may release from inside _hold
_held = {}          # id(array) -> [array, number of pending backs holding it]
_stuck = {}         # id(array) -> array released while its base was still held


class Hold:
    """The arrays one pending ``back`` reads, and which field held which at ``pullback``."""

    __slots__ = ("fields", "values", "arrays", "released", "edits", "lists")

    def __init__(self, model, args):
        self.edits = EDITS[0]
        self.fields, self.lists = _cached_arrays(model, self.edits)
        self.values = [_value(leaf) for _, leaf in self.fields]
        if all(type(x) is np.ndarray for x in args):         # the common case: array outputs
            extra = list(args)
        else:
            extra = [_value(x) for x in flatten(args)[0] if isinstance(x, (Param, np.ndarray))]
        self.arrays = _hold(self.values + extra)
        self.released = False

    def check(self, model):
        """Raise if a Param, its value or an array attribute of ``model`` was replaced."""
        if EDITS[0] == self.edits and not self.lists and all(
                _value(a) is v for (_, a), v in zip(self.fields, self.values)):
            return                  # no model attribute set since (and no list to edit in place)
        now, _ = model_arrays(model)
        if len(now) == len(self.fields) and all(
                a is b and _value(a) is v for (_, a), (_, b), v in zip(now, self.fields, self.values)):
            return
        for i, (path, leaf) in enumerate(now):
            if i >= len(self.fields) or self.fields[i][1] is not leaf:
                what = "replaced"
                break
            if _value(leaf) is not self.values[i]:
                what = "given a new value"
                break
        else:
            path, what = self.fields[len(now)][0], "removed"
        raise RuntimeError(f"{type(model).__name__}.{path_str(path)} was {what} between pullback and back; "
                           f"backward would mix it with what forward saw. Call back(dy) before changing "
                           f"the model, then pullback again")

    def release(self):
        if not self.released:
            self.released = True
            _release(self.arrays)

    def __del__(self):              # back dropped without running
        try:
            self.release()
        except Exception:           # pragma: no cover - interpreter shutting down
            pass


def model_arrays(m):
    """``[(field path, Param or array)]``: every Param and array attribute in the tree of ``m``
    (constants such as masks and index arrays too: backward reads them), each once; and
    whether the tree holds a list or dict (editable in place, unlike attributes)."""
    containers = []
    found = walk(m, arrays=True, containers=containers)
    return [(path, x) for path, x in found if not is_model(x)], bool(containers)


def _cached_arrays(m, edits):
    """``model_arrays(m)``, walked again only when some model attribute was set since the
    last walk or the tree holds a list or dict (which change without setattr)."""
    hit = m.__dict__.get("_fc_arrays")
    if hit is not None and hit[0] == edits and not hit[2]:
        return hit[1], hit[2]
    fields, lists = model_arrays(m)
    m.__dict__["_fc_arrays"] = (edits, fields, lists)
    return fields, lists


def cached_named_params(m):
    """``named_params(m)``, walked again only when some model attribute was set since the last
    walk or the tree holds a list or dict (the hot path of ``update`` and ``zero_grad``)."""
    edits = EDITS[0]
    hit = m.__dict__.get("_fc_params")
    if hit is not None and hit[0] == edits:
        return hit[1]
    containers = []
    found = [(path, p) for path, p in walk(m, containers=containers) if isinstance(p, Param)]
    if not containers:
        m.__dict__["_fc_params"] = (edits, found)
    return found


def _value(leaf):
    return leaf.value if isinstance(leaf, Param) else leaf


def held(array):
    """True when a pending ``back`` holds ``array`` read-only."""
    return id(array) in _held


def any_held():
    return bool(_held)


def refuse_if_held(model, action, trainable_only=True):
    """Raise before ``action`` replaces a Param value that a pending ``back`` still reads
    (it would make that ``back`` fail later, after the change was made)."""
    if not any_held():
        return
    for path, p in named_params(model, trainable_only=trainable_only):
        if held(p.value):
            raise RuntimeError(f"{action} on {type(model).__name__} while a pullback still waits for "
                               f"back(dy): its backward reads {path_str(path)} as forward saw it. "
                               f"Call back(dy) first (or drop the unused back function)")


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
                a.setflags(write=False)
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
                a.setflags(write=True)
                del _stuck[k]
            except ValueError:
                pass
