"""Every registered rule, inlined by the compiler into generated backward code, checked
against central finite differences in float64 (the registry walk through the compiler)."""
import os

import numpy as np
import pytest

import flux_compile as fc
from flux_compile import rules
from rule_cases import CASES


def apply1(fn, kw, a):
    return fn(a, **kw)


def apply2(fn, kw, a, b):
    return fn(a, b, **kw)


def apply3(fn, kw, a, b, c):
    return fn(a, b, c, **kw)


def apply4(fn, kw, a, b, c, d):
    return fn(a, b, c, d, **kw)


def list2(fn, kw, a, b):
    return fn([a, b], **kw)


def list3(fn, kw, a, b, c):
    return fn([a, b, c], **kw)


class Kwargs(dict):
    """The keyword arguments as one compile-time constant: a dict subclass is a leaf, not a
    structured argument whose float values would be differentiable inputs."""


def real_imag1(fn, kw, a):
    y = fn(a, **kw)
    return np.real(y) + 0.5 * np.imag(y)


APPLY = {1: apply1, 2: apply2, 3: apply3, 4: apply4}
LISTS = {2: list2, 3: list3}

def _complex_array(y):
    return isinstance(y, np.ndarray) and y.dtype.kind == "c"


def _wrap(case):
    args = list(case.args)
    if args and isinstance(args[0], list) and len(args) == 1 and len(args[0]) in LISTS:
        return LISTS[len(args[0])], list(args[0]), list(range(len(args[0])))
    if args and isinstance(args[0], list) and all(isinstance(a, np.ndarray) for a in args[0]):
        return None, None, None
    f = APPLY.get(len(args))
    if f is apply1 and _complex_array(case.primitive(*args, **case.kwargs)):
        f = real_imag1      # a complex output: both parts, through the np.real/np.imag rules
    return f, args, list(case.diff)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule_through_the_compiler(case):
    if case.sym:
        pytest.skip("symmetric-input rules are checked directly in test_rules_direct")
    if any(_complex_array(case.args[i]) for i in case.diff):
        pytest.skip("complex inputs: fc.gradcheck perturbs real parts; checked in test_rules_direct "
                    "and test_coverage_rules")
    f, args, diff = _wrap(case)
    if f is None:
        pytest.skip("argument layout not expressible as a fixed-arity wrapper")
    kw = Kwargs(case.kwargs)
    report = fc.gradcheck(f, case.primitive, kw, *args, raise_on_fail=False, rtol=1e-4, atol=1e-6)
    rows = {r.name: r for r in report.rows}
    for i in diff:
        name = f"input {i + 2}"
        if name in rows:
            assert rows[name].ok, f"{case.id}: {report}"


def test_every_rule_has_a_compiled_case():
    covered = {c.primitive for c in CASES}
    package = os.path.dirname(fc.__file__)
    own = {p for p, r in rules.RULES.items() if r.__code__.co_filename.startswith(package)}
    missing = [getattr(p, "__name__", repr(p)) for p in own if p not in covered and p is not float]
    assert not missing, f"rules without a case: {missing}"
