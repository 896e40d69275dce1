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

from .registry import (COMPLEX_OUTPUT, GENERATION, NONDIFF, RULES, _key, complex_output, diffrule,  # noqa: F401
                       get_rule, is_nondiff, known, makes_complex, nondiff_primitive, rule_signature)


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
