"""Tokens of compile-time constants."""
from __future__ import annotations


class _Uncacheable:
    """A key part that equals nothing, not even itself: the entry is never reused."""

    def __eq__(self, other):
        return False

    def __hash__(self):
        return id(self)


def freeze(obj):
    """A hashable stand-in for a compile-time constant, equal exactly when the values are."""
    if isinstance(obj, dict):
        return ("dict",) + tuple(sorted(((freeze(k), freeze(v)) for k, v in obj.items()), key=repr))
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__,) + tuple(freeze(v) for v in obj)
    if isinstance(obj, float) and obj != obj:
        return ("nan",)
    try:
        hash(obj)
    except TypeError:
        return _Uncacheable()
    return (type(obj), obj)
