"""Augmented assignment on arrays (``v += w``) keeps NumPy's in-place meaning: the target's
dtype (a same_kind cast) and shape, NumPy's errors, and gradients through the cast; compared
with running the same function in NumPy and with central differences in float64."""
import numpy as np
import pytest

import flux_compile as fc


def add_(x, w):
    v = np.tanh(x)
    v += w
    return np.sum(v * v)


def sub_(x, w):
    v = np.tanh(x)
    v -= w
    return np.sum(v * v)


def mul_(x, w):
    v = np.tanh(x)
    v *= w
    return np.sum(v * v)


def div_(x, w):
    v = np.tanh(x) + 3.0
    v /= w
    return np.sum(v * v)


def pow_(x, w):
    v = np.exp(x)
    v **= w
    return np.sum(v)


OPS = [add_, sub_, mul_, div_, pow_]
RNG = np.random.default_rng(3)


def _right_sides():
    return {
        "float64": RNG.uniform(0.5, 1.5, (3, 4)),
        "float32": RNG.uniform(0.5, 1.5, (4,)).astype(np.float32),
        "int": np.arange(1, 5),
        "scalar": 1.5,
        "float64-row": RNG.uniform(0.5, 1.5, (1, 4)),
    }


def central_difference(f, x, *rest, eps=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = eps
        g[i] = (f(x + e, *rest) - f(x - e, *rest)) / (2 * eps)
    return g


@pytest.mark.parametrize("f", OPS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("kind", list(_right_sides()))
def test_float32_target_keeps_float32(f, kind):
    w = _right_sides()[kind]
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    expected = f(x, w)                              # NumPy: v stays float32
    value, (dx, _) = fc.grad(f, x, w)
    assert np.asarray(value).dtype == np.asarray(expected).dtype == np.float32
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    assert dx.dtype == np.float32
    x64 = x.astype(np.float64)                      # the gradient, float64 throughout, by differences
    w64 = np.asarray(w, dtype=np.float64) if not isinstance(w, float) else w
    np.testing.assert_allclose(dx, central_difference(f, x64, w64), rtol=2e-3, atol=1e-3)


@pytest.mark.parametrize("f", OPS, ids=lambda f: f.__name__)
def test_float64_target_with_float32_right_side(f):
    x = RNG.standard_normal((3, 4))
    w = RNG.uniform(0.5, 1.5, (3, 4)).astype(np.float32)
    value, (dx, dw) = fc.grad(f, x, w)
    assert np.asarray(value).dtype == np.float64
    np.testing.assert_allclose(value, f(x, w), rtol=1e-12)
    np.testing.assert_allclose(dx, central_difference(f, x, w), rtol=1e-6, atol=1e-8)
    w64 = w.astype(np.float64)
    np.testing.assert_allclose(dw, central_difference(lambda w_, x_: f(x_, w_), w64, x),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("f", OPS, ids=lambda f: f.__name__)
def test_jvp_through_the_cast(f):
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    w = RNG.uniform(0.5, 1.5, (3, 4))
    t = RNG.standard_normal((3, 4)).astype(np.float32)
    value, tangent = fc.jvp(lambda x_: f(x_, w), (x,), (t,))
    assert np.asarray(value).dtype == np.float32
    x64 = x.astype(np.float64)
    eps = 1e-6
    fd = (f(x64 + eps * t, w) - f(x64 - eps * t, w)) / (2 * eps)
    np.testing.assert_allclose(tangent, fd, rtol=2e-3, atol=1e-3)


def int_target_float_value(x):
    v = (x > 0).astype(np.int64)
    v += 0.5
    return np.sum(v * x)


def int_target_int_value(x, k):
    v = (x > 0).astype(np.int64)
    v += k
    return np.sum(v * x)


def test_int_target_with_a_float_raises_like_numpy():
    x = RNG.standard_normal((3, 4))
    with pytest.raises(TypeError):                  # NumPy's UFuncTypeError is a TypeError
        int_target_float_value(x)
    with pytest.raises(TypeError, match="same_kind") as info:
        fc.grad(int_target_float_value, x)
    assert "int_target_float_value" in str(info.value)


def test_int_target_with_an_int_stays_int():
    x = RNG.standard_normal((3, 4))
    k = np.arange(4)
    value, (dx, _) = fc.grad(int_target_int_value, x, k)
    np.testing.assert_allclose(value, int_target_int_value(x, k))
    np.testing.assert_allclose(dx, central_difference(int_target_int_value, x, k), atol=1e-8)


def grows(x):
    v = np.sum(x, axis=1, keepdims=True)
    v += x                                          # (n, 1) += (n, m): NumPy raises
    return np.sum(v)


def grows_rank(x, b):
    v = np.tanh(b)
    v += x                                          # (4,) += (3, 4)
    return np.sum(v)


def test_broadcasting_to_a_larger_shape_is_refused_at_the_users_line():
    x, b = RNG.standard_normal((3, 4)), RNG.standard_normal(4)
    for f, args in ((grows, (x,)), (grows_rank, (x, b))):
        with pytest.raises(ValueError):
            f(*args)
        with pytest.raises(fc.CompileError, match="larger shape") as info:
            fc.grad(f, *args)
        assert info.value.lineno == f.__code__.co_firstlineno + 2


def unknown_shape(x, i):
    v = np.tanh(np.take(x, i))
    v += x                                          # v's shape is not inferred: checked at run time
    return np.sum(v)


def test_broadcasting_checked_at_run_time_when_the_shape_is_not_known():
    x = RNG.standard_normal((3, 4))
    with pytest.raises(ValueError, match="non-broadcastable"):
        fc.grad(unknown_shape, x, np.arange(4))
    value, (dx, _) = fc.grad(unknown_shape, x, np.arange(12).reshape(3, 4))
    np.testing.assert_allclose(value, unknown_shape(x, np.arange(12).reshape(3, 4)))


def on_input(x):
    x += 1.0
    return np.sum(x)


def on_view(x):
    v = np.tanh(x)
    u = v[:, :2]
    u *= 2.0                                        # NumPy writes through to v
    return np.sum(v)


def test_inplace_on_the_callers_array_or_a_view_is_refused():
    x = RNG.standard_normal((3, 4))
    for f, what in ((on_input, "an input"), (on_view, "a view")):
        with pytest.raises(fc.CompileError, match=what) as info:
            fc.grad(f, x.copy())
        assert "v = v + w" in info.value.hint


def same_dtype(x, W):
    h = np.tanh(x @ W)
    h += x @ W
    h *= 0.5
    return np.sum(h * h)


def test_same_dtype_needs_no_cast_in_the_generated_text():
    x, W = RNG.standard_normal((2, 3)).astype(np.float32), RNG.standard_normal((3, 3)).astype(np.float32)
    text = fc.source(fc.gradient(same_dtype), inputs=(x, W))
    assert "inplace_result" not in text and "cast_grad" not in text
    value, (dx, dW) = fc.grad(same_dtype, x, W)
    assert value.dtype == dx.dtype == dW.dtype == np.float32
    np.testing.assert_allclose(value, same_dtype(x, W), rtol=1e-6)


def mixed_dtype(x, b):
    h = np.tanh(x)
    h += b * x                      # sources {x, b}, not among h's {x}: may promote
    h += x[0]                       # sources {x}: cannot
    return np.sum(h * h)


def test_a_cast_only_where_the_dtype_may_differ():
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    b = RNG.standard_normal(3)
    assert fc.source(fc.gradient(mixed_dtype), inputs=(x, b)).count("inplace_result(") == 1
    # one variant serves float32 and float64 (the key fixes float-ness only): NumPy's dtype each time
    for xx, bb in ((x, b), (x.astype(np.float64), b), (x, b.astype(np.float32)), (x.astype(np.float64), b)):
        value, _ = fc.grad(mixed_dtype, xx, bb)
        assert np.asarray(value).dtype == np.asarray(mixed_dtype(xx, bb)).dtype
        np.testing.assert_allclose(value, mixed_dtype(xx, bb), rtol=1e-6)


# ---------------------------------------------------------------- loops and models

def carried(x, W):
    h = np.zeros((x.shape[0], W.shape[1]), dtype=x.dtype)
    for t in range(x.shape[1]):
        h += np.tanh(x[:, t] @ W + h)
    return np.sum(h * h)


def test_carried_inplace_in_a_loop_region():
    xs = RNG.standard_normal((2, 5, 3)).astype(np.float32)
    W = RNG.standard_normal((3, 4)) * 0.5           # float64: NumPy keeps h float32
    value, (dx, dW) = fc.grad(carried, xs, W)
    assert np.asarray(value).dtype == np.asarray(carried(xs, W)).dtype == np.float32
    np.testing.assert_allclose(value, carried(xs, W), rtol=1e-5)
    x64 = xs.astype(np.float64)
    value64, (dx64, dW64) = fc.grad(carried, x64, W)
    np.testing.assert_allclose(dx64, central_difference(carried, x64, W), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dW64, central_difference(lambda W_, x_: carried(x_, W_), W, x64),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dx, dx64, rtol=1e-3, atol=1e-4)


@fc.net
class Accumulator:
    def __init__(self, n, dtype=np.float32):
        self.W = fc.Param((np.random.default_rng(0).standard_normal((n, n)) * 0.3).astype(dtype))
        self.h = np.zeros((1, n), dtype=dtype)

    def forward(self, x):
        self.h += np.tanh(x @ self.W)
        return self.h


def _reference_steps(W, h, xs):
    out = []
    for x in xs:
        h = h.copy()
        h += np.tanh(x @ W)                         # NumPy: h keeps its dtype
        out.append(h)
    return out


def test_state_inplace_in_a_model_keeps_the_states_dtype():
    m = Accumulator(3)
    xs = [RNG.standard_normal((1, 3)) for _ in range(3)]   # float64 inputs into a float32 state
    ref = _reference_steps(m.W.value.copy(), np.array(m.h), xs)
    for x, r in zip(xs, ref):
        y = m(x)
        assert y.dtype == r.dtype == np.float32
        np.testing.assert_allclose(y, r, rtol=1e-6)


def test_pullback_and_train_step_through_the_state_cast():
    m = Accumulator(3, dtype=np.float64)
    x = RNG.standard_normal((1, 3)).astype(np.float32)
    W0 = m.W.value.copy()
    y, back = m.pullback(x)
    dx = back(np.ones_like(y))
    f = lambda x_: np.sum(np.zeros((1, 3)) + np.tanh(x_ @ W0))
    np.testing.assert_allclose(dx, central_difference(f, x.astype(np.float64)), rtol=1e-4, atol=1e-5)
    gW = lambda W_: np.sum(np.tanh(x.astype(np.float64) @ W_))
    np.testing.assert_allclose(m.W.grad, central_difference(gW, W0), rtol=1e-6, atol=1e-8)
    m.zero_grad()
    m2 = Accumulator(3, dtype=np.float64)
    step = fc.train_step(m2, fc.mse, fc.optim.SGD(0.1))
    target = np.zeros((1, 3))
    loss = step(x, target=target)
    x64 = x.astype(np.float64)
    mse = lambda W_: np.mean((np.zeros((1, 3)) + np.tanh(x64 @ W_) - target) ** 2)
    np.testing.assert_allclose(loss, mse(W0), rtol=1e-6)
    np.testing.assert_allclose(m2.W.value, W0 - 0.1 * central_difference(mse, W0), rtol=1e-6, atol=1e-8)
    assert m2.W.value.dtype == np.float64


def test_pullback_of_a_float32_state_fed_float64_inputs():
    m = Accumulator(3)                              # float32 W and state; NumPy keeps h float32
    x = RNG.standard_normal((1, 3))
    W0 = m.W.value.astype(np.float64)
    y, back = m.pullback(x)
    assert y.dtype == np.float32
    dx = back(np.ones_like(y))
    f = lambda x_: np.sum(np.tanh(x_ @ W0))
    np.testing.assert_allclose(dx, central_difference(f, x), rtol=1e-4, atol=1e-5)
    assert m.W.grad.dtype == np.float32
    np.testing.assert_allclose(m.W.grad, central_difference(lambda W_: np.sum(np.tanh(x @ W_)), W0),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_backends_run_the_inplace_cast(backend):
    pytest.importorskip(backend)
    x = RNG.standard_normal((1, 3)).astype(np.float32)     # torch's matmul does not promote
    m = Accumulator(3)
    ref_y, ref_back = m.pullback(x)
    ref_dx = ref_back(np.ones_like(ref_y))
    m2 = fc.to(Accumulator(3), backend)
    y, back = m2.pullback(x)
    dx = back(y * 0 + 1)
    assert "inplace_result" in fc.source(m2, "forward")
    assert str(y.dtype).endswith("float32")
    np.testing.assert_allclose(np.asarray(y), ref_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(dx), ref_dx, rtol=1e-4, atol=1e-6)


def carried_from_the_input(x, W):
    h = x
    for t in range(W.shape[0] + 40):                # a loop region: NumPy writes into x every trip
        h += np.tanh(h @ W) * 0.01
    return np.sum(h)


def test_carried_inplace_starting_from_the_callers_array_is_refused():
    x, W = RNG.standard_normal((2, 3)), RNG.standard_normal((3, 3))
    with pytest.raises(fc.CompileError, match="an input") as info:
        fc.grad(carried_from_the_input, x, W)
    assert info.value.lineno == carried_from_the_input.__code__.co_firstlineno + 3


def python_float_scale(x, s):
    v = np.tanh(x) * s                              # s a Python float: weak, v stays float32
    v += np.tanh(s)                                 # np.tanh(s) is a float64 NumPy scalar
    return np.sum(v * v)


def test_python_float_input_is_not_taken_for_the_targets_dtype():
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    value, _ = fc.grad(python_float_scale, x, 0.7)
    assert np.asarray(value).dtype == np.asarray(python_float_scale(x, 0.7)).dtype == np.float32
    np.testing.assert_allclose(value, python_float_scale(x, 0.7), rtol=1e-6)
