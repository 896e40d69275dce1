"""Minimised programs from the differential fuzzer (tests/fuzzgen.py), one test each, checked
against NumPy / finite differences. Each one failed before its fix.

PYTEST_DONT_REWRITE: the compiled functions below hold asserts; pytest must not rewrite them."""
import numpy as np
import pytest

import flux_compile as fc


def _whole_shape_equal(x):
    assert x.shape == (3, 4), "shape"
    return np.sum(np.tanh(x) ** 2)


def _shape_equal_itself(x):
    assert x.shape == x.shape
    return np.sum(np.tanh(x) ** 2)


def _trailing_shape_equal(x):
    assert x.shape[1:] == (4,)
    assert x.shape != (4,)
    assert list(x.shape[1:]) == [4]
    return np.sum(np.tanh(x) ** 2)


@pytest.mark.parametrize("fn", [_whole_shape_equal, _shape_equal_itself, _trailing_shape_equal])
def test_assert_comparing_whole_shapes_is_a_python_equality(fn):
    """``x.shape == (3, 4)`` is one bool (tuple equality), not NumPy's elementwise comparison:
    it used to be refused as 'assert on an array with several elements is ambiguous'."""
    x = np.random.default_rng(0).standard_normal((3, 4))
    value, (g,) = fc.grad(fn, x)
    assert np.isclose(value, fn(x))
    assert np.allclose(g, 2 * np.tanh(x) * (1 - np.tanh(x) ** 2))


def test_shape_equality_is_decided_again_for_another_batch():
    def f(x):
        if x.shape == (3, 4):
            return np.sum(x * 2.0)
        return np.sum(x * 3.0)
    for batch, factor in ((3, 2.0), (5, 3.0), (3, 2.0)):
        x = np.ones((batch, 4))
        value, (g,) = fc.grad(f, x)
        assert value == factor * x.size and np.all(g == factor)


def test_a_false_whole_shape_assert_still_fails():
    def f(x):
        assert x.shape == (3, 5), "wrong shape"
        return np.sum(x)
    with pytest.raises((AssertionError, fc.CompileError)):
        fc.grad(f, np.ones((3, 4)))


# fc.jvp of a linear primitive (np.where, np.concatenate, np.stack, np.append, np.r_, item
# assignment) whose other value operand carries no tangent (a constant, a global, a literal):
# the tangent used that operand's value instead of zero.
G_CONST = np.array([[1.0, -1.0]])


def _where_global(W):
    return np.sum(np.where(G_CONST > W, G_CONST, W))


def _where_literal(W):
    return np.sum(np.where(W > 0, W, 1.0))


def _where_global_false_branch(W):
    return np.sum(np.where(W > 0, W, G_CONST) ** 2)


def _concatenate_global(W):
    return np.sum(np.concatenate([W, G_CONST]) ** 2)


def _concatenate_constant(W):
    return np.sum(np.concatenate([W, np.ones((1, 2))], axis=1) ** 2)


def _stack_global(W):
    return np.sum(np.stack([G_CONST, W]) ** 2)


def _append_constant(W):
    return np.sum(np.append(W, np.ones((1, 2)), axis=0) ** 2)


def _r_global(W):
    return np.sum(np.r_[W[0], G_CONST[0]] ** 2)


def _setitem_constant(W):
    v = np.tanh(W)
    v[0] = 3.0
    return np.sum(v ** 2)


def _setitem_global_row(W):
    v = np.tanh(np.concatenate([W, W]))
    v[1] = G_CONST[0]
    return np.sum(v ** 3)


@pytest.mark.parametrize("fn", [_where_global, _where_literal, _where_global_false_branch, _concatenate_global,
                                _concatenate_constant, _stack_global, _append_constant, _r_global,
                                _setitem_constant, _setitem_global_row])
def test_jvp_of_a_linear_primitive_with_a_constant_operand(fn):
    rng = np.random.default_rng(3)
    W = rng.standard_normal((1, 2))
    t = rng.standard_normal((1, 2))
    value, tangent = fc.jvp(fn, (W,), (t,))
    fd = (fn(W + 1e-6 * t) - fn(W - 1e-6 * t)) / 2e-6
    assert np.isclose(value, fn(W))
    assert np.isclose(tangent, fd, rtol=1e-6, atol=1e-8), (tangent, fd)
    _, (g,) = fc.grad(fn, W)              # and reverse mode agrees
    assert np.isclose(np.sum(g * t), tangent, rtol=1e-9, atol=1e-12)


def _diff_append_literal(W):
    return np.sum(np.diff(W, append=-0.25, axis=-1)) * 0.5


def _diff_prepend_literal(W):
    return np.sum(np.diff(W, prepend=0.5, axis=-1) * np.cos(W))


def _diff_prepend_constant_array(W):
    return np.sum(np.diff(W, prepend=np.ones((2, 1)), axis=-1) * np.cos(W))


def _diff_prepend_own_column(W):
    return np.sum(np.diff(W, prepend=W[:, :1] * 2.0, append=G_CONST[:, :1] + W[:, 1:], axis=-1) ** 2)


@pytest.mark.parametrize("fn", [_diff_append_literal, _diff_prepend_literal, _diff_prepend_constant_array,
                                _diff_prepend_own_column])
def test_jvp_of_diff_with_prepend_or_append(fn):
    """np.diff's prepend / append values are constants of the tangent map only through the
    input: a literal there has tangent zero (the tangent used the literal itself)."""
    rng = np.random.default_rng(4)
    W = rng.standard_normal((2, 3))
    t = rng.standard_normal((2, 3))
    value, tangent = fc.jvp(fn, (W,), (t,))
    fd = (fn(W + 1e-6 * t) - fn(W - 1e-6 * t)) / 2e-6
    assert np.isclose(value, fn(W))
    assert np.isclose(tangent, fd, rtol=1e-6, atol=1e-8), (tangent, fd)


def _average_returned_first_item(a, w):
    return np.sum(np.average(a, axis=-1, weights=w, returned=True)[0] ** 2)


def _average_returned_sum_unused(a, w):
    avg, _ = np.average(a, -1, w, returned=True)
    return np.sum(avg * 2.0)


def _average_returned_constant_weights(a, w):
    avg, total = np.average(a * w, axis=-1, weights=np.arange(1.0, 5.0), returned=True)
    return np.sum(np.tanh(avg)) + np.sum(total) * 0.0


def _average_returned_both(a, w):
    avg, total = np.average(a, 0, w[:3], returned=True)
    return np.sum(avg ** 2) + np.sum(total ** 2)


@pytest.mark.parametrize("fn", [_average_returned_first_item, _average_returned_sum_unused,
                                _average_returned_constant_weights, _average_returned_both])
def test_average_returned_is_a_pair(fn):
    """np.average(..., returned=True) gives (average, sum of weights): indexing it or leaving
    one part unused crashed (it was compiled as one array)."""
    rng = np.random.default_rng(5)
    a, w = rng.standard_normal((3, 4)), rng.uniform(0.5, 1.5, 4)
    value, (ga, gw) = fc.grad(fn, a, w)
    assert np.isclose(value, fn(a, w))
    for x, g, i in ((a, ga, 0), (w, gw, 1)):
        for k in range(x.size):
            e = np.zeros(x.size)
            e[k] = 1e-6
            plus = [a, w]
            minus = [a, w]
            plus[i], minus[i] = x + e.reshape(x.shape), x - e.reshape(x.shape)
            fd = (fn(*plus) - fn(*minus)) / 2e-6
            assert np.isclose(g.reshape(-1)[k], fd, rtol=1e-5, atol=1e-7)


def _r_with_a_python_float(a):
    return np.sum(np.r_[a, 0.5, a[:2]] * np.r_[1.5, a, a[1:3]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_r_with_a_python_scalar_keeps_the_arrays_dtype(dtype):
    """NumPy's np.r_ casts a Python scalar to the result type of the items (weak scalars):
    float32 arrays with 0.5 stay float32. The compiled np.r_ gave float64."""
    a = np.random.default_rng(6).standard_normal(4).astype(dtype)
    value, (g,) = fc.grad(_r_with_a_python_float, a)
    ref = _r_with_a_python_float(a)
    assert np.asarray(value).dtype == ref.dtype and g.dtype == dtype
    assert np.isclose(value, ref, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_r_with_an_integer_array_and_a_float_gives_floats():
    def f(a, k):
        return np.sum(np.r_[k, 0.5] * np.r_[a, a[:1]])
    a, k = np.arange(1.0, 4.0), np.arange(3)
    value, _ = fc.grad(f, a, k)
    assert np.isclose(value, f(a, k))


def _stacked_shape_equal_itself(W):
    v = np.stack([W, W], axis=1)
    assert v.shape == v.shape
    assert v.shape != (1, 2)
    return np.sum(np.tanh(v) ** 2) * 0.5


def test_assert_on_the_shape_of_a_value_whose_shape_is_not_inferred():
    """``v.shape == v.shape`` where the compiler did not infer v's shape (np.stack on axis 1)
    is still Python's one bool."""
    W = np.random.default_rng(7).standard_normal((3, 4))
    value, (g,) = fc.grad(_stacked_shape_equal_itself, W)
    assert np.isclose(value, _stacked_shape_equal_itself(W))
    assert np.allclose(g, 2 * np.tanh(W) * (1 - np.tanh(W) ** 2))



def _inplace_add_of_a_float64_value(x):
    v1 = np.diff(x, prepend=0.5, axis=-1)       # float64: NumPy makes the prepended 0.5 float64
    v2 = np.tanh(x)
    v2 += v1                                    # in place: NumPy keeps v2 float32
    return np.sum(v2 ** 2)


def test_inplace_add_keeps_the_targets_dtype():
    x = np.random.default_rng(8).standard_normal((3, 4)).astype(np.float32)
    value, _ = fc.grad(_inplace_add_of_a_float64_value, x)
    assert np.asarray(value).dtype == _inplace_add_of_a_float64_value(x).dtype == np.float32


def test_jvp_of_select_keeps_its_conditions():
    """Found by the jvp_ops fuzz group (seed 120177): np.select was linear in its first operand,
    so the tangent code selected with zeroed conditions (always the default's tangent)."""
    def f(x):
        v1 = x.sum(axis=0, keepdims=True)
        v5 = np.select([v1 > 0.3, v1 < -0.4], [v1 * 2.0, np.tanh(np.cos(v1))], default=0.1 * v1)
        return np.sum(v5 ** 2)

    def g(x):
        return np.sum(np.select([x > 0.2], [x * x], 0.5 * x))    # default given by position
    rng = np.random.default_rng(0)
    for fn in (f, g):
        x, t = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
        _, tangent = fc.jvp(fn, (x,), (t,))
        eps = 1e-6
        fd = (fn(x + eps * t) - fn(x - eps * t)) / (2 * eps)
        np.testing.assert_allclose(tangent, fd, rtol=1e-6, atol=1e-8)


@fc.net
class _ParamFirstReadInABranch:
    def __init__(self):
        self.V = fc.Param(np.arange(4.0).reshape(2, 2) / 4 + 0.5)

    def forward(self, x, w):
        if np.sum(w) > 0:
            y = x @ self.V
        else:
            y = np.log(np.abs(x) + 0.5)
        return np.sum(y * y) + np.sum(self.V) * 0.5


@fc.net
class _ParamFirstReadInALoop:
    def __init__(self):
        self.V = fc.Param(np.arange(4.0).reshape(2, 2) / 4 + 0.5)

    def forward(self, x):
        h = x
        for t in range(x.shape[0]):
            if np.mean(h) > 0.1 * t:
                h = np.tanh(h @ self.V)
        return np.sum(h) + np.sum(self.V * self.V) * 0.5


@pytest.mark.parametrize("model, extra", [(_ParamFirstReadInABranch, (np.ones(2),)),
                                          (_ParamFirstReadInABranch, (-np.ones(2),)),
                                          (_ParamFirstReadInALoop, ())],
                         ids=["branch taken", "branch not taken", "loop with a branch"])
def test_a_param_first_read_inside_a_region_is_read_again_after_it(model, extra):
    """Found by the fuzzer (group all, seed 150098): the tracer kept one node per Param for the
    whole trace, so a Param first read inside a loop body or a branch was, after the region,
    a reference to a node of the region's graph: the generated code read another value there
    (``np.sum(self.V)`` became ``np.sum(unpad_a)``)."""
    from numeric import numgrad
    x = np.random.default_rng(3).standard_normal((3, 2))
    m = model()
    y, back = m.pullback(x, *extra)
    m.zero_grad()
    back(np.ones_like(y))

    def value(V):
        old = m.V.value
        m.V.value = V
        try:
            return float(m(x, *extra))
        finally:
            m.V.value = old

    def reference(V):
        h = x
        if model is _ParamFirstReadInABranch:
            h = x @ V if np.sum(extra[0]) > 0 else np.log(np.abs(x) + 0.5)
            return np.sum(h * h) + np.sum(V) * 0.5
        for t in range(x.shape[0]):
            if np.mean(h) > 0.1 * t:
                h = np.tanh(h @ V)
        return np.sum(h) + np.sum(V * V) * 0.5
    V0 = m.V.value.copy()
    assert np.isclose(float(y), reference(V0), rtol=1e-12)
    np.testing.assert_allclose(m.V.grad, numgrad(reference, V0), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(numgrad(value, V0), numgrad(reference, V0), rtol=1e-6, atol=1e-8)
