"""Second order for every rule, in the style of autograd's ``check_grads(order=2)``.

``fc.gradient`` (reverse over reverse) does not exist yet, so the second derivative is
checked through the compiled first-order gradient: for each rule case of
``rule_cases.CASES`` the objective ``L(x) = sum(w * primitive(x))`` (real and imaginary
parts weighted for a complex output) is compiled with ``fc.grad``, and the directional
derivative of a random projection of that gradient, ``u . (g(x + e v) - g(x - e v)) / 2e``,
must equal

* the same with ``u`` and ``v`` swapped (the Hessian is symmetric: a compiled gradient that
  is not the gradient of a twice differentiable function fails here), and
* ``u^T H v`` from second-order central differences of ``L`` itself (only the primitive).

The rules that are not twice differentiable at their case points are listed in
``NOT_TWICE_DIFFERENTIABLE`` with the reason; the walk fails for a rule that is neither
checked nor listed.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import flux_compile as fc
from flux_compile import rules
from numeric import mixed_second_difference
from rule_cases import CASES, primitive_name
from test_rules_compiled import Kwargs

pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::numpy.exceptions.ComplexWarning")]

# rules (by primitive name) or single cases (by case id) left out, and why
NOT_TWICE_DIFFERENTIABLE = {
    # the case sits on a kink on purpose: the gradient jumps there
    "np.maximum[tie]": "a tie: the gradient jumps (halves) there",
    "np.minimum[tie]": "a tie: the gradient jumps (halves) there",
    "np.max[tie]": "a tie: the gradient jumps there",
    "np.min[tie]": "a tie: the gradient jumps there",
    "np.prod[two-zeros]": "the gradient of a product with two zeros is a kink of prod_others",
    # a compiler limitation, not the rule's: in compiled code w * float(x) (a 0-d w) fails in the
    # forward, the Python float has no .shape for the multiply's unbroadcast (reported)
    "float": "compiled w * float(x) fails in the forward (Python float has no .shape)",
    "np.fmax[nan]": "a NaN input: no second derivative to difference",
    "np.fmin[nan]": "a NaN input: no second derivative to difference",
    "np.nansum[nan]": "a NaN input: no second derivative to difference",
}

EPS_GRAD = 1e-5         # central differences of the compiled gradient
EPS_F = 1e-4            # second-order central differences of the objective


def _part(y):
    y = np.asarray(y)
    return np.real(y) + 0.5 * np.imag(y) if y.dtype.kind == "c" else y


def _objective(case, w, k, x, i):
    """sum(w * output k) with input i replaced by x (plain NumPy, the reference)."""
    flat, rebuild = _layout(case)
    flat[i] = x
    y = case.primitive(*rebuild(flat), **case.kwargs)
    if k is not None:
        y = y[k]
    return float(np.sum(w * _part(y)))


def obj1(fn, kw, w, a):
    return np.sum(w * fn(a, **kw))


def obj1c(fn, kw, w, a):
    y = fn(a, **kw)
    return np.sum(w * (np.real(y) + 0.5 * np.imag(y)))


def obj2(fn, kw, w, a, b):
    return np.sum(w * fn(a, b, **kw))


def obj3(fn, kw, w, a, b, c):
    return np.sum(w * fn(a, b, c, **kw))


# one wrapper per (number of outputs, output used, number of inputs): the compiler unpacks a
# call's outputs by assignment


def out2_0_of1(fn, kw, w, a):
    y0, y1 = fn(a, **kw)
    return np.sum(w * y0)


def out2_1_of1(fn, kw, w, a):
    y0, y1 = fn(a, **kw)
    return np.sum(w * y1)


def out3_0_of1(fn, kw, w, a):
    y0, y1, y2 = fn(a, **kw)
    return np.sum(w * y0)


def out3_1_of1(fn, kw, w, a):
    y0, y1, y2 = fn(a, **kw)
    return np.sum(w * y1)


def out3_2_of1(fn, kw, w, a):
    y0, y1, y2 = fn(a, **kw)
    return np.sum(w * y2)


def out2_0_of2(fn, kw, w, a, b):
    y0, y1 = fn(a, b, **kw)
    return np.sum(w * y0)


def out2_1_of2(fn, kw, w, a, b):
    y0, y1 = fn(a, b, **kw)
    return np.sum(w * y1)


def out3_0_of2(fn, kw, w, a, b):
    y0, y1, y2 = fn(a, b, **kw)
    return np.sum(w * y0)


def out3_1_of2(fn, kw, w, a, b):
    y0, y1, y2 = fn(a, b, **kw)
    return np.sum(w * y1)


def out3_2_of2(fn, kw, w, a, b):
    y0, y1, y2 = fn(a, b, **kw)
    return np.sum(w * y2)


UNPACK = {(1, 2, 0): out2_0_of1, (1, 2, 1): out2_1_of1, (1, 3, 0): out3_0_of1, (1, 3, 1): out3_1_of1, (1, 3, 2): out3_2_of1, (2, 2, 0): out2_0_of2, (2, 2, 1): out2_1_of2, (2, 3, 0): out3_0_of2, (2, 3, 1): out3_1_of2, (2, 3, 2): out3_2_of2}



def list2(fn, kw, w, a, b):
    return np.sum(w * fn([a, b], **kw))


def list3(fn, kw, w, a, b, c):
    return np.sum(w * fn([a, b, c], **kw))


def list4(fn, kw, w, a, b, c, d):
    return np.sum(w * fn([a, b, c, d], **kw))


def select2(fn, kw, w, c0, c1, a, b, d):
    return np.sum(w * fn([c0, c1], [a, b], d, **kw))


def sym1(fn, kw, w, a):
    """A rule that reads a symmetric input: differentiated through a + a^T."""
    return np.sum(w * fn(a + np.swapaxes(a, -1, -2), **kw))


def _layout(case):
    """(flat arguments, rebuild): a single list argument is passed item by item, np.select's
    two lists too; a symmetric input is s with a = s + s^T (taken at s = a / 2)."""
    args = case.args
    if case.primitive is np.select:
        return list(args[0]) + list(args[1]) + [args[2]], lambda f: ([f[0], f[1]], [f[2], f[3]], f[4])
    if case.sym:
        return [a / 2 if i in case.sym else a for i, a in enumerate(args)], \
            lambda f: tuple(x + np.swapaxes(x, -1, -2) if i in case.sym else x for i, x in enumerate(f))
    if len(args) == 1 and isinstance(args[0], list):
        return list(args[0]), lambda flat: (list(flat),)
    return list(args), tuple


def _compiled(case):
    """(compiled objective, output index or None), or None when the layout does not fit."""
    args = case.args
    if case.primitive is np.select:
        return (select2, None) if len(args[0]) == 2 and len(args[1]) == 2 else None
    if case.sym:
        y = case.primitive(*args, **case.kwargs)
        return (sym1, None) if len(args) == 1 and isinstance(y, np.ndarray) else None
    listed = len(args) == 1 and isinstance(args[0], list)
    if not listed and any(isinstance(a, list) and any(isinstance(x, np.ndarray) for x in a) for a in args):
        return None
    y = case.primitive(*args, **case.kwargs)
    if listed:
        if isinstance(y, (tuple, list)) or np.asarray(y).dtype.kind == "c":
            return None
        return {2: list2, 3: list3, 4: list4}.get(len(args[0])), None
    if isinstance(y, (tuple, list)):
        k = next((j for j in range(len(y)) if j not in case.dy_none and np.asarray(y[j]).dtype.kind in "fc"), None)
        if k is None or np.asarray(y[k]).dtype.kind == "c":
            return None
        return UNPACK.get((len(args), len(y), k)), k
    if np.asarray(y).dtype.kind == "c":
        return (obj1c, None) if len(args) == 1 else None
    return {1: obj1, 2: obj2, 3: obj3}.get(len(args)), None


def _float_inputs(case):
    flat, _ = _layout(case)
    diff = range(len(flat)) if len(case.args) == 1 and isinstance(case.args[0], list) else case.diff
    if case.primitive is np.select:
        diff = (2, 3, 4)
    return [i for i in diff if isinstance(flat[i], np.ndarray) and flat[i].dtype.kind == "f" and flat[i].size]


def _checkable(case):
    if case.id in NOT_TWICE_DIFFERENTIABLE or primitive_name(case.primitive) in NOT_TWICE_DIFFERENTIABLE:
        return False
    if not _float_inputs(case):
        return False
    made = _compiled(case)
    return made is not None and made[0] is not None


CHECKED = [c for c in CASES if _checkable(c)]


@pytest.mark.parametrize("case", CHECKED, ids=[f"{c.id}#{n}" for n, c in enumerate(CHECKED)])
def test_second_order_through_the_compiled_gradient(case):
    rng = np.random.default_rng(11)
    f, k = _compiled(case)
    flat, _ = _layout(case)
    y = case.primitive(*case.args, **case.kwargs)
    y = y[k] if k is not None else y
    w = rng.standard_normal(np.shape(y))
    head = (case.primitive, Kwargs(case.kwargs), w)
    shift = len(head)
    for i in _float_inputs(case):
        x = flat[i]
        u, v = rng.standard_normal(x.shape), rng.standard_normal(x.shape)

        def grad_at(xi):
            args = list(flat)
            args[i] = xi
            return np.asarray(fc.grad(f, *head, *args)[1][shift + i])

        def directional(a, b):      # a . (g(x + e b) - g(x - e b)) / 2e
            return float(np.sum(a * (grad_at(x + EPS_GRAD * b) - grad_at(x - EPS_GRAD * b)))) / (2 * EPS_GRAD)
        uhv, vhu = directional(u, v), directional(v, u)
        scale = max(1.0, abs(uhv), abs(vhu))
        assert abs(uhv - vhu) <= 1e-5 * scale, f"{case.id} input {i}: Hessian not symmetric: {uhv} vs {vhu}"

        def L(xi):
            return _objective(case, w, k, xi, i)
        ref = mixed_second_difference(L, x, u, v, EPS_F)
        assert abs(uhv - ref) <= 1e-4 * max(1.0, abs(ref)), \
            f"{case.id} input {i}: u^T H v {uhv} through the compiled gradient, {ref} by differences"


def test_every_rule_is_checked_to_second_order_or_listed():
    """The registry walk: each library rule has a second-order case, or a reason it has none."""
    package = os.path.dirname(fc.__file__)
    own = {p for p, r in rules.RULES.items() if r.__code__.co_filename.startswith(package)}
    checked = {c.primitive for c in CHECKED}
    # structural reasons a whole primitive is out (no float array input and output to project)
    listed = {c.primitive for c in CASES if c.id in NOT_TWICE_DIFFERENTIABLE
              or primitive_name(c.primitive) in NOT_TWICE_DIFFERENTIABLE}
    missing = sorted(primitive_name(p) for p in own - checked - listed - set(LIST_ONLY))
    assert not missing, f"rules with no second-order check and no reason listed: {missing}"


# primitives whose cases all take list inputs or give list/tuple outputs the objective wrappers
# above do not project (checked to first order in test_rules_direct and test_rules_compiled)
LIST_ONLY = {}
