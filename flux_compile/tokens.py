"""Tokens of compile-time constants: one walker, three policies.

A *token* is a hashable stand-in for a value that compiled code may bake in, equal
exactly when the values are the same constant. ``token`` walks the constant
vocabulary (None, bool, int, str, bytes, complex, float, NumPy scalars and dtypes,
Ellipsis, slices, tuples, lists, frozensets, dicts) the same way for every user; they
differ in two explicit parameters:

=====================  ===========  =================================================
user                   ``ordered``  ``other`` (a value outside the vocabulary)
=====================  ===========  =================================================
``value_token``        True         ``not_constant``: None (guards: "not a constant")
(guards, frontend)
``freeze``             True         ``by_identity``: ``(type, value)`` when hashable,
(in-memory cache keys)              else :data:`UNEQUAL` parts (never reused)
``diskdigest.canonical``False       a digest of arrays, functions and classes; raises
(disk cache keys)                   ``Uncacheable`` for the rest
=====================  ===========  =================================================

``ordered=False`` makes dicts and frozensets equal whatever their insertion order: the
disk key, whose entry carries guards on the order where the code depends on it. The
in-memory key keeps the order, as the guards do: ``for k in d`` over a dict argument of
``fc.grad`` is unrolled in that order, and no guard checks a key's own parts. Floats are
compared by ``repr`` everywhere, so ``-0.0`` and ``0.0`` differ and ``nan`` equals ``nan``.

>>> token({"b": 1, "a": 2}) == token({"a": 2, "b": 1})
False
>>> token({"b": 1, "a": 2}, ordered=False) == token({"a": 2, "b": 1}, ordered=False)
True
>>> value_token(object()) is None, freeze(-0.0) == freeze(0.0), freeze(float("nan")) == freeze(float("nan"))
(True, False, True)
>>> freeze({"b": 1, "a": 2}) == freeze({"a": 2, "b": 1})
False
"""
from __future__ import annotations

import numpy as np

_SCALARS = (type(None), bool, int, str, bytes, complex)


def not_constant(value):
    """``other`` policy of guards: a value outside the vocabulary has no token."""
    return None


class Unequal:
    """A key part that equals nothing, not even itself: an entry holding it is never reused."""

    def __eq__(self, other):
        return False

    def __hash__(self):
        return id(self)


def by_identity(value):
    """``other`` policy of the in-memory keys: a hashable object stands for itself (a function
    passed as a constant is the same key only as the same object); an unhashable one (an
    array, a set) makes the key equal to nothing."""
    try:
        hash(value)
    except TypeError:
        return Unequal()
    return (type(value), value)


def token(v, ordered=True, other=not_constant):
    """The token of ``v``; ``other(value)`` gives that of a value outside the vocabulary
    (None: no token, and then none for a container holding it either)."""
    t = type(v)
    if t in _SCALARS:
        return (t, v)
    if t is float:
        return (t, repr(v))            # tells -0.0 from 0.0; nan equals nan
    if isinstance(v, np.generic):
        return (t, repr(v.item()))
    if isinstance(v, np.dtype):
        return (np.dtype, v.str)
    if v is Ellipsis:
        return ("...",)
    if t is slice:
        parts = (token(v.start, ordered, other), token(v.stop, ordered, other), token(v.step, ordered, other))
        return None if None in parts else (t,) + parts
    if t in (tuple, list, frozenset):
        parts = tuple(token(x, ordered, other) for x in v)
        if t is frozenset and not ordered:
            parts = tuple(sorted(parts, key=repr))
        return None if None in parts else (t,) + parts
    if t is dict:
        parts = tuple((token(k, ordered, other), token(x, ordered, other)) for k, x in v.items())
        if not ordered:
            parts = tuple(sorted(parts, key=repr))
        return None if any(None in p for p in parts) else (t,) + parts
    return other(v)


def value_token(v):
    """A hashable token equal exactly when two values are the same constant, or None when
    ``v`` is not made only of constants (arrays, functions, objects). The guards' policy."""
    return token(v)


def freeze(obj):
    """A hashable stand-in for a compile-time constant in an in-memory cache key: equal
    exactly when the values are (dicts in the same order); never equal when it holds an
    unhashable object."""
    return token(obj, other=by_identity)
