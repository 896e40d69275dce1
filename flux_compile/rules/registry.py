"""The derivative-rule registry (layer 0): ``diffrule``, ``nondiff_primitive`` and the lookups.

The rule tables (``elementwise``, ``reductions``, ...) register into it; the package
``flux_compile.rules`` imports the tables and re-exports these names, so
``from flux_compile.rules import diffrule`` keeps working. Knows nothing above it.
"""
from __future__ import annotations

import inspect

import numpy as np

RULES: dict = {}        # primitive -> rule function
NONDIFF: set = set()    # primitives known to have no gradient
GENERATION = [0]        # bumped on every registration: compiled code made before is stale
COMPLEX_OUTPUT: set = set()     # primitives whose output may be complex for real inputs (np.fft.fft, eig)


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
    """Declare primitives whose outputs carry no gradient (argmax, floor, ...).

    >>> import numpy as np, flux_compile as fc
    >>> def bucket(x): return np.floor(x * 4) / 4
    >>> _ = fc.nondiff_primitive(bucket)
    >>> def f(x): return (x * bucket(x)).sum()
    >>> fc.grad(f, np.array([0.3, 0.6]))[1][0]      # bucket(x) carries no gradient
    array([0.25, 0.5 ])
    """
    for p in primitives:
        NONDIFF.add(_key(p))
    GENERATION[0] += 1
    return primitives[0] if len(primitives) == 1 else primitives



def complex_output(*primitives):
    """Declare primitives that may return complex values for real inputs, so gradients
    reaching real values take the real part (autograd's convention)."""
    COMPLEX_OUTPUT.update(_key(p) for p in primitives)
    GENERATION[0] += 1


def makes_complex(primitive):
    try:
        return _key(primitive) in COMPLEX_OUTPUT
    except TypeError:
        return False


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
    """(positional input names, keyword-only defaults) of a rule, minus dy and y; kept per
    rule while its code and defaults stay (every use of a primitive asks again)."""
    stamp = (getattr(rule, "__code__", None), getattr(rule, "__defaults__", None),
             getattr(rule, "__kwdefaults__", None), getattr(rule, "__signature__", None))
    known = _signatures.get(id(rule))
    if known is None or known[0] is not rule or any(a is not b for a, b in zip(known[1], stamp)):
        if len(_signatures) > 4096:
            _signatures.clear()
        known = _signatures[id(rule)] = (rule, stamp, _rule_signature(rule))
    pos, kw = known[2]
    return list(pos), dict(kw)


_signatures = {}        # id(rule) -> (rule, what its signature is made of, (names, keyword defaults))


def _rule_signature(rule):
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


# ---------------------------------------------------------------- forward mode (JVP) rules
# (the rule convention is described in rules/__init__.py)

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
