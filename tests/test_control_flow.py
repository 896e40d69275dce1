"""Python control flow in compiled code: branches and loops on data (compiled per path with
guards), loops unrolled over constants, nested functions, comprehensions, item assignment,
list literals and tuple arguments. Gradients against finite differences in float64."""
import numpy as np
import pytest

import flux_compile as fc

rng = np.random.default_rng(11)


def branchy(a):
    if a > 0:
        a = a * 3.0
        if a < 10:
            a = a * a
        else:
            a = a * 2.0
    elif a > -1:
        a = np.sin(a)
    else:
        a = -a
    return a


def both_branches_call(a, b):
    if a * b > 1.0:
        out = scale(a, b)
    else:
        out = scale(b, a + 1.0)
    return out


def scale(u, v):
    return u * v * v


def halve_until_small(a):
    while np.abs(a) > 0.1:
        a = a * 0.5
    return a


def power_loop(a, n):
    for _ in range(n):
        a = a * a
    a = 2.0 * a
    for _ in range(n + 1):
        a = a * 1.5
    return a


def conditional_in_loop(a):
    for _ in range(3):
        if a < 20:
            a = a * a
    return a


def sum_rows(x):
    total = np.zeros(x.shape[1])
    for row in x:
        total = total + np.tanh(row)
    return np.sum(total)


def with_local_def(a, n):
    def twice(u, k=2.0):
        return u * k
    for _ in range(n):
        a = twice(a)
    return a


def comprehension(x):
    return np.sum([v * v for v in x if True]) + sum(x[i] * i for i in range(len(x)))


def item_assignment(x):
    y = np.zeros_like(x)
    for i in range(len(x)):
        y[i] = x[i] * x[i]
    y[0] += 1.0
    return np.sum(y * x)


def recurrence_by_rows(inputs, W):
    h = np.zeros((4, 3))
    for t in range(3):
        h[t + 1] = np.tanh(inputs[t] @ W + h[t])
    return np.sum(h[1:])


def list_literal(a):
    parts = [1.0, a * a, 2.0]
    return np.sum(parts) * parts[1]


def tuple_argument(abc):
    a, b, c = abc
    return a * b + c


def boolean_ops(a, b):
    if a > 0 and b > 0:
        return a * b
    if a < 0 or b < 0:
        return a - b
    return a + b


def early_return(x, n):
    for i in range(n):
        if np.sum(x) > 3.0:
            return x * i
        x = x * 2.0
    return x


SCALAR_CASES = [
    (branchy, (0.5,)), (branchy, (4.0,)), (branchy, (-0.5,)), (branchy, (-3.0,)),
    (both_branches_call, (2.0, 1.5)), (both_branches_call, (0.2, 0.3)),
    (halve_until_small, (1.7,)), (halve_until_small, (0.05,)),
    (power_loop, (1.1, 2)), (conditional_in_loop, (1.5,)), (conditional_in_loop, (3.0,)),
    (with_local_def, (0.7, 3)), (list_literal, (0.8,)),
    (boolean_ops, (1.0, 2.0)), (boolean_ops, (-1.0, 2.0)), (boolean_ops, (0.5, -2.0)),
]


@pytest.mark.parametrize("f,args", SCALAR_CASES, ids=[f"{f.__name__}{args}" for f, args in SCALAR_CASES])
def test_scalar_control_flow(f, args):
    value, grads = fc.grad(f, *args)
    assert np.allclose(value, f(*args))
    assert fc.gradcheck(f, *[np.float64(a) if isinstance(a, float) else a for a in args]).ok


ARRAY_CASES = [
    (sum_rows, (rng.standard_normal((4, 3)),)),
    (comprehension, (rng.standard_normal(4),)),
    (item_assignment, (rng.standard_normal(5),)),
    (recurrence_by_rows, (rng.standard_normal((3, 2)), rng.standard_normal((2, 3)))),
    (early_return, (rng.standard_normal(3) * 0.1, 5)),
    (early_return, (np.ones(3) * 2.0, 5)),
]


@pytest.mark.parametrize("f,args", ARRAY_CASES, ids=[f.__name__ for f, _ in ARRAY_CASES])
def test_array_control_flow(f, args):
    value, _ = fc.grad(f, *[a.copy() if isinstance(a, np.ndarray) else a for a in args])
    np.testing.assert_allclose(value, f(*[a.copy() if isinstance(a, np.ndarray) else a for a in args]))
    assert fc.gradcheck(f, *args).ok


def test_tuple_argument_gets_tuple_gradient():
    value, (g,) = fc.grad(tuple_argument, (1.0, 2.0, 3.0))
    assert value == 5.0 and g == (2.0, 1.0, 1.0)


def early_return(a):
    if a > 0:
        return a * 3.0
    return np.sin(a)


def test_an_if_on_data_is_one_real_if_for_every_path():
    for a in (0.5, 4.0, -0.5, -3.0, 0.5, 4.0):
        v, (g,) = fc.grad(branchy, a)
        assert np.isclose(v, branchy(a))
    src = fc.source(branchy, "forward", args=(-3.0,))
    assert "Retrace" not in src and "# line" in src and "if a > 0:" in src and "else:" in src
    assert src == fc.source(branchy, "forward", args=(4.0,))


def test_guards_switch_variants_and_show_in_source():
    """A return inside a branch is not a cond region: the path taken, with a guard."""
    for a in (0.5, -0.5, -3.0, 4.0):
        v, (g,) = fc.grad(early_return, a)
        assert np.isclose(v, early_return(a)) and np.isclose(g, 3.0 if a > 0 else np.cos(a))
    src = fc.source(early_return, "forward", args=(-3.0,))
    assert "raise Retrace('line" in src and "# line" in src and "if a > 0:" in src


def test_model_with_data_dependent_branch():
    @fc.net
    class Gate:
        def __init__(self):
            self.W = rng.standard_normal((3, 3))

        def forward(self, x):
            h = x @ self.W
            if np.mean(h) > 0:
                h = np.tanh(h)
            else:
                h = h * 0.5
            return h

    m = Gate()
    for scale in (1.0, -1.0, 1.0):
        x = scale * np.abs(rng.standard_normal((2, 3))) * np.sign(np.mean(m.W.value))
        y = m(x)
        h = x @ m.W.value
        np.testing.assert_allclose(y, np.tanh(h) if h.mean() > 0 else h * 0.5)
        assert fc.gradcheck(m, x).ok


def test_array_condition_is_ambiguous_error():
    def f(x):
        if x > 0:
            return x
        return -x
    with pytest.raises(fc.CompileError, match="ambiguous"):
        fc.grad(f, np.ones(3))


def checked_sqrt(x):
    if np.any(x < 0):
        raise ValueError("inputs must be non-negative")
    return np.sum(np.sqrt(x))


def test_users_own_error_branch_raises_their_exception():
    _, (g,) = fc.grad(checked_sqrt, np.array([1.0, 4.0]))
    np.testing.assert_allclose(g, [0.5, 0.25])
    with pytest.raises(ValueError, match="non-negative"):
        fc.grad(checked_sqrt, np.array([-1.0, 4.0]))
    _, (g,) = fc.grad(checked_sqrt, np.array([9.0, 4.0]))     # the guarded variant still works
    np.testing.assert_allclose(g, [1 / 6, 0.25])
