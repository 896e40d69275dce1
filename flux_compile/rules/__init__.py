"""Derivative rules: one table per family, one short rule per primitive.

A rule is an ordinary Python function in the compiler's supported subset. It is
*not* called at run time: the compiler parses its source and inlines it into the
backward graph, so the generated code shows it::

    @diffrule(np.tanh)
    def _(dy, y, x):
        return dy * (1 - y * y)

Arguments: ``dy`` (adjoint of the output), ``y`` (the output), then the
primitive's positional inputs (named as in ``inspect.signature(primitive)``
where NumPy gives one), then its keyword arguments as keyword-only parameters
with defaults. The rule returns one gradient per positional input (a tuple when
there are several; ``None`` where an input is not differentiable).

Rule bodies may branch (``if``/``a if c else b``) only on keyword-only
parameters, which are compile-time constants. Anything that depends on shapes
or data goes into a helper in :mod:`flux_compile.rules.helpers`, which the
generated code calls by name.
"""
from __future__ import annotations

import inspect

import numpy as np

RULES: dict = {}        # primitive -> rule function
NONDIFF: set = set()    # primitives known to have no gradient
GENERATION = [0]        # bumped on every registration: compiled code made before is stale


def _key(primitive):
    return primitive


def diffrule(primitive):
    """Register the decorated function as the derivative rule of ``primitive``.

    >>> import numpy as np, flux_compile as fc
    >>> def cube(x): return x ** 3
    >>> @fc.diffrule(cube)
    ... def _(dy, y, x):
    ...     return dy * 3 * x ** 2
    """
    def register(rule):
        RULES[_key(primitive)] = rule
        NONDIFF.discard(_key(primitive))
        GENERATION[0] += 1
        rule.__flux_primitive__ = primitive
        return rule
    return register


def nondiff_primitive(*primitives):
    """Declare primitives whose outputs carry no gradient (argmax, floor, ...)."""
    for p in primitives:
        NONDIFF.add(_key(p))
    GENERATION[0] += 1
    return primitives[0] if len(primitives) == 1 else primitives


def known(condition):
    """In a rule body: true when ``condition`` is known to hold at compile time.

    ``if known(a.ndim == 2): return dy @ b.T`` picks the plain form when the
    compiler knows the rank, and falls through to a general helper otherwise.
    Called outside the compiler (a rule run as plain Python) it is ``bool`` of a scalar
    condition, and false for an array one (not known to hold everywhere).
    """
    return bool(condition) if np.ndim(condition) == 0 else False


def get_rule(primitive):
    """The rule function for ``primitive``, or ``None``."""
    try:
        return RULES.get(_key(primitive))
    except TypeError:       # unhashable
        return None


def is_nondiff(primitive):
    try:
        return _key(primitive) in NONDIFF
    except TypeError:
        return False


def rule_signature(rule):
    """(positional input names, keyword-only defaults) of a rule, minus dy and y."""
    sig = inspect.signature(rule)
    pos, kw = [], {}
    for p in list(sig.parameters.values())[2:]:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            pos.append(p.name)
        elif p.kind is p.VAR_POSITIONAL:
            pos.append("*" + p.name)
        elif p.kind is p.KEYWORD_ONLY:
            kw[p.name] = p.default
    return pos, kw


def _load_tables():
    from . import elementwise, reductions, shape, linalg, nn, conv  # noqa: F401
    for primitive, rule in conv.TABLE:      # a table that does not import this package
        diffrule(primitive)(rule)


_load_tables()

# Python builtins that can appear in compiled code.
nondiff_primitive(len, int, bool, round, slice)


@diffrule(float)
def _float_rule(dy, y, x):
    return dy
