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

from .registry import (COMPLEX_OUTPUT, GENERATION, JVP_RULES, LINEAR, NONDIFF, RULES, _key,  # noqa: F401
                       complex_output, diffrule, get_jvp_rule, get_rule, is_nondiff, jvp_rule_signature,
                       jvprule, known, linear_jvp, makes_complex, multilinear_jvp, nondiff_primitive,
                       rule_signature)


def _load_tables():
    from . import elementwise, reductions, shape, linalg, nn, fft, conv  # noqa: F401
    for primitive, rule in fft.TABLE.items():
        diffrule(primitive)(rule)
    complex_output(*fft.COMPLEX_OUTPUT)
    for primitive, rule in conv.TABLE:
        diffrule(primitive)(rule)


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

# The forward tables (rules/jvp_*.py) are loaded by flux_compile.forward, which uses them.
linear_jvp(float)
