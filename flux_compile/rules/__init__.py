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
    from . import elementwise, reductions, shape, linalg, nn  # noqa: F401


_load_tables()

# Python builtins that can appear in compiled code.
nondiff_primitive(len, int, bool, round, slice)


@diffrule(float)
def _float_rule(dy, y, x):
    return dy


# ---------------------------------------------------------------- forward mode (JVP) rules
#
# A forward rule gets the tangents of the primitive's positional inputs (``None`` where an
# input's tangent is zero), then the output, then the inputs, then the keyword constants, and
# returns the output's tangent (a tuple for a tuple-valued output):
#
#     @jvprule(np.tanh)
#     def _(dx, y, x):
#         return dx * (1 - y * y)
#
# Linear primitives need no rule body: the tangent is the primitive applied to the tangents
# (``np.sum(dx, axis=...)``), zeros filled in where one input's tangent is zero. Multilinear
# ones (products) take the product rule: the sum over inputs of the primitive with that input
# replaced by its tangent.

JVP_RULES: dict = {}        # primitive -> forward rule function
LINEAR: dict = {}           # primitive -> "linear" or "multilinear"


def jvprule(primitive):
    """Register the decorated function as the forward-mode (tangent) rule of ``primitive``.

    >>> import numpy as np, flux_compile as fc
    >>> def cube(x): return x ** 3
    >>> @fc.jvprule(cube)
    ... def _(dx, y, x):
    ...     return dx * 3 * x ** 2
    """
    def register(rule):
        JVP_RULES[_key(primitive)] = rule
        LINEAR.pop(_key(primitive), None)
        GENERATION[0] += 1
        rule.__flux_primitive__ = primitive
        return rule
    return register


def linear_jvp(*primitives):
    """Declare primitives linear in their array inputs: tangent = primitive(tangents, ...)."""
    for p in primitives:
        LINEAR[_key(p)] = "linear"
    GENERATION[0] += 1


def multilinear_jvp(*primitives):
    """Declare primitives linear in each array input separately (products): the product rule."""
    for p in primitives:
        LINEAR[_key(p)] = "multilinear"
    GENERATION[0] += 1


def get_jvp_rule(primitive):
    """The forward rule function, ``"linear"``, ``"multilinear"``, or ``None``."""
    try:
        return JVP_RULES.get(_key(primitive)) or LINEAR.get(_key(primitive))
    except TypeError:
        return None


def jvp_rule_signature(rule):
    """(positional input names, keyword-only defaults) of a forward rule: its 2k + 1
    positional parameters are k tangents, the output, the k inputs."""
    params = list(inspect.signature(rule).parameters.values())
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    kw = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
    k = (len(positional) - 1) // 2
    return positional[k + 1:], kw


# The forward tables (rules/jvp_*.py) are loaded by flux_compile.forward, which uses them.
linear_jvp(float)
