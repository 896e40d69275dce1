"""Every forward-mode (jvp) rule, called directly, on every case of ``rule_cases.CASES``.

Two checks per case, in float64, along random directions ``t``:

* against central finite differences: ``(f(x + e t) - f(x - e t)) / 2e``;
* against the reverse rule, by the transpose identity ``<jvp(t), c> == <t, vjp(c)>`` for a
  random output cotangent ``c`` (to 1e-8, relative).

Linear primitives (declared with ``linear_jvp``) are applied to the tangents; multilinear
ones (``multilinear_jvp``) take the product rule; the others call their ``@jvprule``. A walk
of the registry checks that every primitive with a reverse rule has a forward rule.
"""
from __future__ import annotations

import numpy as np
import pytest

import flux_compile  # noqa: F401  (registers every rule, the losses' too)
import flux_compile.forward  # noqa: F401  (loads the forward tables)
from flux_compile import rules
from rule_cases import CASES, primitive_name

EPS = 1e-6

pytestmark = pytest.mark.filterwarnings("ignore:Arrays of 2-dimensional vectors:DeprecationWarning")


def _is_seq(v):
    return isinstance(v, (list, tuple))


def _is_float_array(v):
    return isinstance(v, (np.ndarray, np.floating, float)) and np.asarray(v).dtype.kind == "f"


def _direction(case, i, x, rng):
    """A random tangent for argument ``i`` (a list of them for a list argument); symmetric
    for an argument read as a symmetric matrix."""
    if _is_seq(x):
        return [rng.standard_normal(np.shape(v)) for v in x]
    t = rng.standard_normal(np.shape(x))
    return t + np.swapaxes(t, -1, -2) if i in case.sym else t


def _tangents(case, rng):
    return {i: _direction(case, i, case.args[i], rng) for i in case.diff}


def _shift(args, tangents, e):
    out = list(args)
    for i, t in tangents.items():
        out[i] = [x + e * ti for x, ti in zip(args[i], t)] if _is_seq(args[i]) else args[i] + e * t
    return out


def jvp_of(case, tangents):
    """The forward rule's tangent of the case's output, for ``tangents`` {arg index: tangent}."""
    fn, args, kw = case.primitive, list(case.args), case.kwargs
    rule = rules.get_jvp_rule(fn)
    assert rule is not None, f"{case.id}: no forward rule"
    if rule == "linear":
        targs = []
        for i, a in enumerate(args):
            if i in tangents:
                targs.append(tangents[i])
            elif _is_seq(a) and all(_is_float_array(v) for v in a) or _is_float_array(a) and i in case.diff:
                targs.append(np.zeros_like(a) if not _is_seq(a) else [np.zeros_like(v) for v in a])
            else:
                targs.append(a)
        return fn(*targs, **kw)
    if rule == "multilinear":
        total = None
        for i, t in tangents.items():
            if _is_seq(args[i]):
                for j, tj in enumerate(t):
                    items = list(args[i])
                    items[j] = tj
                    term = fn(*args[:i], items, *args[i + 1:], **kw)
                    total = term if total is None else total + term
            else:
                term = fn(*args[:i], t, *args[i + 1:], **kw)
                total = term if total is None else total + term
        return total
    y = fn(*args, **kw)
    k = len(rules.jvp_rule_signature(rule)[0])
    padded = args + [None] * (k - len(args))
    return rule(*[tangents.get(i) for i in range(k)], y, *padded, **kw)


def _parts(v):
    return list(v) if _is_seq(v) else [v]


def _fd(case, tangents):
    up = case.primitive(*_shift(case.args, tangents, EPS), **case.kwargs)
    down = case.primitive(*_shift(case.args, tangents, -EPS), **case.kwargs)
    return [(np.asarray(u, dtype=float) - np.asarray(d, dtype=float)) / (2 * EPS)
            if np.asarray(u).dtype.kind in "fc" else None for u, d in zip(_parts(up), _parts(down))]


def _float_case(case):
    leaves = [v for a in case.args for v in (a if _is_seq(a) else [a])]
    return not any(np.iscomplexobj(v) for v in leaves if isinstance(v, (np.ndarray, complex)))


# Reverse rules merged after the forward rules were written; their forward rules are being
# added (issue 13). This list may only shrink; the walk below fails for any other primitive.
FORWARD_PENDING: set[str] = set()
CHECKED = [c for c in CASES if _float_case(c) and primitive_name(c.primitive) not in FORWARD_PENDING]


def _ids(cases):
    seen, out = {}, []
    for c in cases:
        seen[c.id] = seen.get(c.id, 0) + 1
        out.append(c.id if seen[c.id] == 1 else f"{c.id}#{seen[c.id]}")
    return out


@pytest.mark.parametrize("case", CHECKED, ids=_ids(CHECKED))
def test_jvp_rule_matches_finite_differences(case):
    rng = np.random.default_rng(7)
    tangents = _tangents(case, rng)
    got = _parts(jvp_of(case, tangents))
    want = _fd(case, tangents)
    assert len(got) == len(want), f"{case.id}: {len(got)} tangents for {len(want)} outputs"
    for k, (g, w) in enumerate(zip(got, want)):
        if w is None:           # an integer or boolean output: its tangent is zero
            assert not np.any(g), f"{case.id}: tangent {k} of a non-float output is not zero"
            continue
        assert np.shape(g) == np.shape(w), f"{case.id}: tangent {k} has shape {np.shape(g)}, output {np.shape(w)}"
        np.testing.assert_allclose(np.asarray(g, dtype=float), w, rtol=max(case.rtol, 1e-5), atol=max(case.atol, 1e-6),
                                   err_msg=f"{case.id}: tangent {k} vs finite differences")


@pytest.mark.parametrize("case", CHECKED, ids=_ids(CHECKED))
def test_jvp_rule_is_the_transpose_of_the_reverse_rule(case):
    """<jvp(t), c> == <t, vjp(c)>: forward and reverse rule describe the same derivative."""
    rng = np.random.default_rng(11)
    tangents = _tangents(case, rng)
    y = case.primitive(*case.args, **case.kwargs)
    cot = [None if k in case.dy_none else rng.standard_normal(np.shape(v)) for k, v in enumerate(_parts(y))]
    dy = (list(cot) if isinstance(y, list) else tuple(cot)) if _is_seq(y) else cot[0]
    grads = rules.get_rule(case.primitive)(dy, y, *case.args, **case.kwargs)
    positional, _ = rules.rule_signature(rules.get_rule(case.primitive))
    if isinstance(grads, np.ndarray) or len(positional) == 1 and (
            len(case.args) == 1 or not positional[0].startswith("*")):   # one gradient
        grads = (grads,)      # (np.gradient's rule answers one array for f alone, as test_rules_direct reads it)
    grads = tuple(grads)[:len(case.args)]
    forward = sum(float(np.sum(np.asarray(t, dtype=float) * c))
                  for t, c in zip(_parts(jvp_of(case, tangents)), cot) if c is not None)
    backward = 0.0
    for i, t in tangents.items():
        for ti, gi in zip(_parts(t) if _is_seq(case.args[i]) else [t], _parts(grads[i]) if _is_seq(case.args[i])
                          else [grads[i]]):
            backward += float(np.sum(ti * np.asarray(gi, dtype=float)))
    assert abs(forward - backward) <= 1e-8 * max(1.0, abs(forward), abs(backward)), \
        f"{case.id}: <jvp(t), c> = {forward!r} but <t, vjp(c)> = {backward!r}"


def _library(rule):
    """The package's own rules (tests and doctests register rules of their own on the way)."""
    import os
    code = getattr(rule, "__code__", None)
    return code is not None and code.co_filename.startswith(os.path.dirname(flux_compile.__file__))


def test_every_reverse_rule_has_a_forward_rule():
    missing = [primitive_name(p) for p, r in rules.RULES.items()
               if _library(r) and rules.get_jvp_rule(p) is None]
    missing = [name for name in missing if name not in FORWARD_PENDING]
    assert not missing, f"primitives with a reverse rule but no forward rule: {missing}"


def test_every_forward_rule_is_exercised():
    """A forward rule (or linear declaration) without a case here is untested: fail."""
    covered = {id(c.primitive) for c in CHECKED}
    from flux_compile.rules.jvp_elementwise import broadcast_like, cast_tangent
    from flux_compile.rules.jvp_shape import partition_order
    from flux_compile.rules.jvp_helpers import BILINEAR_HELPERS, LINEAR_HELPERS
    own = {id(broadcast_like), id(partition_order), id(cast_tangent), id(float)}    # run-time helpers (tested below)
    own |= {id(h) for h in LINEAR_HELPERS + BILINEAR_HELPERS}     # test_jvp.py: forward over reverse
    from flux_compile.rules.jvp_helpers import REVERSE_HELPERS
    from flux_compile.rules.jvp_more import KERNELS
    own |= {id(h) for h in REVERSE_HELPERS + KERNELS}     # test_second_order_hvp.py: forward over reverse
    from flux_compile.losses import logitcrossentropy_grad
    own.add(id(logitcrossentropy_grad))     # the same (logitcrossentropy's hvp)
    declared = [p for p, r in rules.JVP_RULES.items() if _library(r)] + list(rules.LINEAR)
    untested = [primitive_name(p) for p in declared if id(p) not in covered and id(p) not in own]
    assert not untested, f"forward rules without a case in rule_cases.py: {untested}"


def test_run_time_helpers_of_the_forward_rules():
    from flux_compile.rules.jvp_elementwise import broadcast_like, cast_tangent
    from flux_compile.rules.jvp_shape import partition_order
    t, y = np.arange(3.0), np.zeros((2, 3))
    spread = broadcast_like(t, y)
    assert spread.shape == (2, 3) and spread.flags.writeable and np.all(spread == t)
    assert broadcast_like(y, y) is y
    assert cast_tangent(np.ones(2), np.float32).dtype == np.float32
    assert not np.any(cast_tangent(np.ones(2), np.int64)) and cast_tangent(np.ones(2), bool).dtype.kind == "f"
    a = np.array([3.0, 1.0, 2.0, 0.0])
    np.testing.assert_array_equal(a[partition_order(a, 2)], np.partition(a, 2))
