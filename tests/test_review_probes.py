"""Hostile probes of the merged run-time behaviour (review of the soundness and
run-time-state branches): pullback/back, holds, dtypes, threads, closures, pickling,
resuming training."""
import os
import pickle
import threading

import numpy as np
import pytest

import flux_compile as fc
from numeric import numgrad


def rng(seed=0):
    return np.random.default_rng(seed)


def dense_pair():
    """Two Dense layers with equal parameters."""
    a, b = fc.Dense(3, 2, act=np.tanh), fc.Dense(3, 2, act=np.tanh)
    b.W.value[...] = a.W.value
    b.b.value[...] = a.b.value
    return a, b


def chain(dtype=np.float64):
    m = fc.Chain(fc.Dense(3, 4, act=np.tanh), fc.Dense(4, 2))
    for i, p in enumerate(fc.params(m)):
        p.value[...] = rng(i).standard_normal(p.shape) * 0.5
    return fc.cast(m, dtype) if dtype != np.float64 else m


def same_params(a, b):
    return all(np.array_equal(p.value, q.value) for p, q in zip(fc.params(a), fc.params(b)))


# ------------------------------------------------------------ pullback and back

def test_pullback_then_mutate_input_then_back_is_correct():
    m, ref = dense_pair()
    x, dy = rng(1).standard_normal((4, 3)), rng(2).standard_normal((4, 2))
    expected = numgrad(lambda t: float((ref(t) * dy).sum()), x)
    _, back = m.pullback(x)
    x += 100.0
    np.testing.assert_allclose(back(dy), expected, rtol=1e-6, atol=1e-8)
    ref.back(dy, x - 100.0)
    np.testing.assert_allclose(m.W.grad, ref.W.grad, rtol=1e-12)


def test_back_twice_raises_unless_retained():
    m = fc.Dense(3, 2, act=np.tanh)
    x, dy = rng(1).standard_normal((4, 3)), rng(2).standard_normal((4, 2))
    _, back = m.pullback(x)
    first = back(dy, retain=True)
    np.testing.assert_array_equal(back(dy), first)
    with pytest.raises(RuntimeError, match="already ran"):
        back(dy)


def test_m_back_twice_accumulates():
    m = fc.Dense(3, 2, act=np.tanh)
    x, dy = rng(1).standard_normal((4, 3)), rng(2).standard_normal((4, 2))
    m.back(dy, x)
    once = m.W.grad.copy()
    m.back(dy, x)
    np.testing.assert_allclose(m.W.grad, 2 * once, rtol=1e-12)


def grads_of(m, x):
    return fc.grad(lambda mm: np.sum(mm(x)), m)[1][0]


@pytest.mark.parametrize("action", ["fc.update", "fc.load", "fc.train"])
def test_library_changes_refused_while_a_pullback_waits(action, tmp_path):
    """Like m.update: refused before anything changes, so the pending back still works
    (they used to replace the Param values, and the pending back then failed)."""
    m, ref = dense_pair()
    x, dy = rng(1).standard_normal((4, 3)), rng(2).standard_normal((4, 2))
    path = tmp_path / "m.npz"
    fc.save(path, m)
    before = m.W.value.copy()
    _, back = m.pullback(x)
    with pytest.raises(RuntimeError, match="waits for back"):
        if action == "fc.update":
            fc.update(m, grads_of(m, x), lambda v, g: v - 0.1 * g)
        elif action == "fc.load":
            fc.load(path, m)
        else:
            fc.train(m, fc.mse, [(x, np.zeros((4, 2)))], 0.1, progress=False)
    np.testing.assert_array_equal(m.W.value, before)
    back(dy)
    ref.back(dy, x)
    np.testing.assert_allclose(m.W.grad, ref.W.grad, rtol=1e-12)
    fc.update(m, grads_of(m, x), lambda v, g: v - 0.1 * g)    # released: allowed again


# ------------------------------------------------------------ dtypes

@pytest.mark.parametrize("make", [
    lambda: 0.1, lambda: fc.optim.SGD(0.1), lambda: fc.optim.Momentum(0.1),
    lambda: fc.optim.Nesterov(0.1), lambda: fc.optim.Adam(0.01), lambda: fc.optim.AdamW(0.01),
    lambda: fc.optim.RMSProp(0.01)])
def test_float32_model_stays_float32_through_train_update_save_load(make, tmp_path):
    m = chain(np.float32)
    x = rng(1).standard_normal((8, 3)).astype(np.float32)
    y = rng(2).standard_normal((8, 2)).astype(np.float32)
    opt = make()
    fc.train(m, fc.mse, [(x, y)] * 2, opt, progress=False)
    m.back(m(x), x)
    m.update(opt)
    value, (g, gx) = fc.grad(lambda mm, x: fc.mse(mm(x), y), m, x)
    assert np.asarray(value).dtype == np.float32 and gx.dtype == np.float32
    fc.update(m, g, lambda v, d: v - 0.1 * d)
    fc.update(m, g, lambda v, d: v - 0.1 * d.astype(np.float64))
    assert {p.value.dtype for p in fc.params(m)} == {np.dtype(np.float32)}
    assert {p.grad.dtype for p in fc.params(m)} == {np.dtype(np.float32)}
    saves_opt = not isinstance(opt, float)
    fc.save(tmp_path / "m.npz", m, opt=opt if saves_opt else None)
    m2, opt2 = chain(np.float32), make()
    fc.load(tmp_path / "m.npz", m2, opt=opt2 if saves_opt else None)
    assert {p.value.dtype for p in fc.params(m2)} == {np.dtype(np.float32)}
    assert m2(x).dtype == np.float32
    fc.train(m, fc.mse, [(x, y)] * 2, opt, progress=False)
    fc.train(m2, fc.mse, [(x, y)] * 2, opt2, progress=False)
    assert same_params(m, m2)


# ------------------------------------------------------------ threads

def test_threads_sharing_a_model_lose_no_gradient():
    m = fc.Dense(3, 4, act=np.tanh)
    x, dy = rng(1).standard_normal((16, 3)), rng(2).standard_normal((16, 4))
    m.back(dy, x)
    once = m.W.grad.copy()
    m.zero_grad()
    errors = []

    def work():
        try:
            for _ in range(20):
                _, back = m.pullback(x)
                m(x)
                back(dy)
                m.back(dy, x)
        except Exception as e:           # reported below
            errors.append(e)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    np.testing.assert_allclose(m.W.grad, 160 * once, rtol=1e-10)


def test_threads_with_closures_get_their_own_values():
    results = {}

    def work(i):
        xb = np.full((2, 3), float(i))
        ok = []
        for _ in range(20):
            _, (g,) = fc.grad(lambda x: np.sum(x * xb), np.ones((2, 3)))
            ok.append(np.array_equal(g, xb))
        results[i] = all(ok)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: True for i in range(4)}


# ------------------------------------------------------------ closures and globals

def test_closure_per_minibatch_sees_each_batch():
    m = fc.Affine(3, 1)
    for seed in range(4):
        xb, yb = rng(seed).standard_normal((5, 3)), rng(seed + 10).standard_normal((5, 1))

        def loss(model):
            return fc.mse(model(xb), yb)
        value, (g,) = fc.grad(loss, m)
        np.testing.assert_allclose(value, np.mean((m(xb) - yb) ** 2), rtol=1e-12)
        np.testing.assert_allclose(g[("W",)], 2 * xb.T @ (m(xb) - yb) / 5, rtol=1e-10)


SCALE = 1.0


def scaled_sum(x):
    return np.sum(x * SCALE)


@fc.net
class GlobalScaled:
    def __init__(self):
        self.W = np.ones((2, 2))

    def forward(self, x):
        return x @ self.W * SCALE


def test_global_float_changed_between_calls():
    global SCALE
    m = GlobalScaled()
    x = np.ones((1, 2))
    try:
        for SCALE in (1.0, 5.0, -2.5):
            value, (g,) = fc.grad(scaled_sum, np.ones(3))
            assert value == 3 * SCALE
            np.testing.assert_array_equal(g, np.full(3, SCALE))
            np.testing.assert_array_equal(m(x), np.full((1, 2), 2 * SCALE))
            np.testing.assert_array_equal(m.back(np.ones((1, 2)), x), np.full((1, 2), 2 * SCALE))
    finally:
        SCALE = 1.0


@fc.net
class AttrScaled:
    def __init__(self):
        self.W = np.ones((2, 2))
        self.s = 1.0
        self.n = 2

    def forward(self, x):
        return (x @ self.W * self.s) ** self.n


def test_float_and_int_attributes_changed_between_calls():
    m, x = AttrScaled(), np.ones((1, 2))
    for s, n in ((1.0, 2), (3.0, 2), (3.0, 1), (np.float32(2.0), 3)):
        m.s, m.n = s, n
        np.testing.assert_allclose(m(x), np.full((1, 2), (2 * float(s)) ** n))


# ------------------------------------------------------------ pickling, resuming

def test_pickled_model_and_optimiser_resume_exactly():
    m = chain()
    x, y = rng(1).standard_normal((8, 3)), rng(2).standard_normal((8, 2))
    opt = fc.optim.Adam(0.01)
    fc.train(m, fc.mse, [(x, y)] * 3, opt, progress=False)
    m2, opt2 = pickle.loads(pickle.dumps((m, opt)))
    np.testing.assert_array_equal(m2(x), m(x))
    fc.train(m, fc.mse, [(x, y)] * 3, opt, progress=False)
    fc.train(m2, fc.mse, [(x, y)] * 3, opt2, progress=False)
    assert same_params(m, m2)


@pytest.mark.parametrize("make", [lambda: fc.optim.Adam(0.01), lambda: fc.optim.Momentum(0.1),
                                  lambda: fc.optim.Nesterov(0.1)])
def test_train_interrupted_by_callback_exception_then_resumed(make):
    x, y = rng(1).standard_normal((8, 3)), rng(2).standard_normal((8, 2))
    data = [(x[i:i + 2], y[i:i + 2]) for i in range(0, 8, 2)]
    a, opt_a = chain(), make()
    fc.train(a, fc.mse, data, opt_a, epochs=2, progress=False)

    def boom(epoch, step, loss):
        if (epoch, step) == (1, 3):
            raise KeyError("boom")
    b, opt_b = chain(), make()
    with pytest.raises(KeyError):
        fc.train(b, fc.mse, data, opt_b, epochs=2, callbacks=[boom], progress=False)
    assert all(not p.grad.any() for p in fc.params(b))
    fc.train(b, fc.mse, data[3:], opt_b, progress=False)      # the rest of epoch 1
    fc.train(b, fc.mse, data, opt_b, progress=False)          # epoch 2
    assert same_params(a, b)


def test_freezing_while_a_back_is_pending_leaves_no_stale_gradient():
    """pullback, freeze, back, unfreeze, update: the update uses no gradient from before the
    freeze (the Param's gradient restarts at zero whenever its flag changes)."""
    m = fc.Chain(fc.Dense(3, 4), fc.Dense(4, 2))
    x = np.linspace(-1, 1, 15).reshape(5, 3)
    first = m.layers[0]
    before = first.W.value.copy()
    y, back = m.pullback(x)
    fc.freeze(first)
    assert not first.W.grad.any()
    back(np.ones_like(y))
    fc.unfreeze(first)
    assert not first.W.grad.any() and not first.b.grad.any()
    m.update(0.1)
    np.testing.assert_array_equal(first.W.value, before)
    assert m.layers[1].W.grad.sum() == 0            # the trained layer was updated and zeroed
