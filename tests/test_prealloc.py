"""Arrays kept across calls (flux_compile/buffers.py) and fc.train_step writing into them:
nothing the user, a Param, optimiser state or another call holds is ever written."""
import threading
import time

import autograd
import autograd.numpy as anp
import numpy as np
import pytest

import flux_compile as fc
from flux_compile import buffers as kept
from flux_compile.buffers import Buffers

pytestmark = pytest.mark.skipif(not kept.REUSE, reason="reference counts cannot prove an array free here")


# -- the pool itself -------------------------------------------------------------------------
def test_a_free_array_is_handed_out_again():
    b = Buffers()
    a = b.empty(0, (64, 64), np.float64)
    ident = id(a)
    del a
    assert id(b.empty(0, (64, 64), np.float64)) == ident


@pytest.mark.parametrize("hold", ["array", "view", "transpose", "tuple", "memoryview"])
def test_an_array_anything_holds_is_never_handed_out(hold):
    b = Buffers()
    a = b.empty(0, (8, 8), np.float64)
    a[...] = 7.0
    holder = {"array": lambda: a, "view": lambda: a[1:], "transpose": lambda: a.T,
              "tuple": lambda: (a,), "memoryview": lambda: memoryview(a)}[hold]()
    first = a
    del a
    for _ in range(5):
        c = b.empty(0, (8, 8), np.float64)
        assert c is not first and not np.shares_memory(c, first)
        c[...] = -1.0
    assert (first == 7.0).all()
    del holder


def test_two_arrays_alternate_in_one_slot():
    """A Param's new value and its old one: the one the Param holds is never handed out."""
    b = Buffers()
    held = b.empty(0, (4, 4), np.float32)             # plays the Param's value
    other = b.empty(0, (4, 4), np.float32)
    assert other is not held
    other_id = id(other)
    del other
    for _ in range(4):
        new = b.empty(0, (4, 4), np.float32)
        assert new is not held and id(new) == other_id
        held, new = new, held                         # commit: swap
        other_id = id(new)
        del new


@pytest.mark.parametrize("shape, dtype", [((8, 8), np.float32), ((8, 9), np.float64), ((9, 8), np.float64)])
def test_a_shape_or_dtype_switch_gives_another_array(shape, dtype):
    b = Buffers()
    a = b.empty(0, (8, 8), np.float64)
    ident = id(a)
    del a
    c = b.empty(0, shape, dtype)
    assert c.shape == shape and c.dtype == dtype and id(c) != ident


def test_nested_calls_of_one_slot_get_different_arrays():
    """Reentrancy: the outer call's array is a live local while the inner call runs."""
    b = Buffers()
    outer = b.empty(3, (16, 16), np.float64)
    inner = b.empty(3, (16, 16), np.float64)
    assert inner is not outer and not np.shares_memory(inner, outer)


@pytest.mark.parametrize("m, k, n, dtypes", [(300, 40, 200, (np.float64, np.float64)),
                                             (300, 40, 200, (np.float32, np.float32)),
                                             (300, 40, 200, (np.float32, np.float64)),
                                             (3, 4, 5, (np.float64, np.float64)),
                                             (300, 40, 200, (np.int64, np.int64))])
def test_matmul_equals_the_operator_and_keeps_no_held_result(m, k, n, dtypes):
    rng = np.random.default_rng(0)
    b = Buffers()
    results = []
    for _ in range(3):
        x = (rng.standard_normal((m, k)) * 10).astype(dtypes[0])
        y = (rng.standard_normal((k, n)) * 10).astype(dtypes[1])
        r = b.matmul(0, x, y)
        expect = x @ y
        assert r.dtype == expect.dtype and r.shape == expect.shape
        np.testing.assert_array_equal(r, expect)
        results.append((r, expect))
    for r, expect in results:                       # held results were never overwritten
        np.testing.assert_array_equal(r, expect)
    ids = set()
    for _ in range(3):                               # dropped results are reused
        ids.add(id(b.matmul(0, x, y)))
    assert len(ids) == 1 or m * n * 8 < kept.SMALL


def test_matmul_of_a_transposed_view_and_vectors():
    rng = np.random.default_rng(1)
    b = Buffers()
    a = rng.standard_normal((200, 300))
    np.testing.assert_array_equal(b.matmul(0, a.T, a), a.T @ a)
    v = rng.standard_normal(200)
    np.testing.assert_array_equal(b.matmul(1, v, a), v @ a)


def test_threads_never_share_a_checked_out_array():
    b = Buffers()
    errors = []

    def worker(value):
        try:
            for _ in range(300):
                a = b.empty(0, (32, 32), np.float64)
                a[...] = value
                for _ in range(3):
                    pass
                if not (a == value).all():
                    errors.append(value)
        except Exception as e:          # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(v,)) for v in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors


# -- fc.train_step ---------------------------------------------------------------------------
@fc.net
class MLP:
    def __init__(self, sizes, dtype=np.float64, seed=0):
        rng = np.random.default_rng(seed)
        self.Ws = tuple(fc.param((rng.standard_normal((a, b)) / np.sqrt(a)).astype(dtype))
                        for a, b in zip(sizes[:-1], sizes[1:]))
        self.bs = tuple(fc.param(np.zeros((1, b), dtype)) for b in sizes[1:])

    def forward(self, x):
        for W, b in zip(self.Ws[:-1], self.bs[:-1]):
            x = np.tanh(x @ W + b)
        return x @ self.Ws[-1] + self.bs[-1]


SIZES = (40, 300, 200, 3)       # the hidden matmuls are large enough to be kept


def reference_step(m, x, target, opt):
    """The same step through pullback / back / update (no train_step)."""
    y, back = m.pullback(x)
    _, (dy, _) = fc.grad(fc.mse, y, target)
    back(dy, input_grads=False)
    m.update(opt)


def values(m):
    return [p.value.copy() for p in fc.params(m)]


def data(rng, n, dtype=np.float64):
    return rng.standard_normal((n, SIZES[0])).astype(dtype), rng.standard_normal((n, SIZES[-1])).astype(dtype)


@pytest.mark.parametrize("make_opt", [lambda: fc.optim.SGD(0.05), lambda: fc.optim.Momentum(0.05, 0.9),
                                      lambda: fc.optim.Nesterov(0.05, 0.9), lambda: fc.optim.Adam(0.01),
                                      lambda: fc.optim.AdamW(0.01, weight_decay=0.1),
                                      lambda: fc.optim.RMSProp(0.01)])
def test_steps_equal_the_reference_and_held_values_stay_intact(make_opt):
    rng = np.random.default_rng(2)
    m, ref = MLP(SIZES), MLP(SIZES)
    step, opt_ref = fc.train_step(m, fc.mse, make_opt()), make_opt()
    held = []
    for i in range(6):
        x, t = data(rng, (256, 256, 64)[i % 3])       # batch switches as well
        before = [p.value for p in fc.params(m)]          # the arrays themselves, held
        snapshot = [v.copy() for v in before]
        step(x, target=t)
        reference_step(ref, x, t, opt_ref)
        for a, b in zip(values(m), values(ref)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
        held.append((before, snapshot))
        for arrays, copies in held:                        # every earlier value is untouched
            for a, c in zip(arrays, copies):
                np.testing.assert_array_equal(a, c)
    for (p, p_ref) in zip(fc.params(m), fc.params(ref)):   # optimiser state agrees too
        for s, s_ref in zip(step.opt._state_for(p).slots, opt_ref._state_for(p_ref).slots):
            np.testing.assert_allclose(s, s_ref, rtol=1e-10, atol=1e-12)


def test_optimiser_state_held_by_the_user_stays_intact():
    rng = np.random.default_rng(3)
    m = MLP(SIZES)
    opt = fc.optim.Adam(0.01)
    step = fc.train_step(m, fc.mse, opt)
    step(*data(rng, 64)[:1], target=data(rng, 64)[1])
    held = [(s, s.copy()) for p in fc.params(m) for s in opt._state_for(p).slots]
    for _ in range(4):
        x, t = data(rng, 64)
        step(x, target=t)
    for s, c in held:
        np.testing.assert_array_equal(s, c)


def test_the_sgd_step_is_the_autograd_gradient():
    """(p_before - p_after) / lr is the gradient of the loss, against autograd."""
    rng = np.random.default_rng(4)
    m = MLP(SIZES)
    lr = 0.5
    step = fc.train_step(m, fc.mse, fc.optim.SGD(lr))

    def loss(ws, bs, x, t):
        for W, b in zip(ws[:-1], bs[:-1]):
            x = anp.tanh(x @ W + b)
        return anp.mean((x @ ws[-1] + bs[-1] - t) ** 2)
    for _ in range(3):
        x, t = data(rng, 128)
        ws, bs = [W.value.copy() for W in m.Ws], [b.value.copy() for b in m.bs]
        gw, gb = autograd.grad(loss, (0, 1))(ws, bs, x, t)
        step(x, target=t)
        for before, p, g in zip(ws + bs, list(m.Ws) + list(m.bs), list(gw) + list(gb)):
            np.testing.assert_allclose((before - p.value) / lr, g, rtol=1e-7, atol=1e-9)


def test_float32_and_float64_inputs_alternate():
    rng = np.random.default_rng(5)
    m, ref = MLP(SIZES, np.float32), MLP(SIZES, np.float32)
    step = fc.train_step(m, fc.mse, fc.optim.SGD(0.05))
    for i in range(6):
        x, t = data(rng, 128, np.float32 if i % 2 else np.float64)
        step(x, target=t)
        reference_step(ref, x, t, fc.optim.SGD(0.05))
        for p, q in zip(fc.params(m), fc.params(ref)):
            assert p.value.dtype == np.float32
            np.testing.assert_allclose(p.value, q.value, rtol=2e-5, atol=1e-6)


def test_two_threads_stepping_two_models_of_one_structure():
    """Both models share one generated step and its Buffers; each must equal its own
    sequential reference. Bounded time: a few steps each."""
    rng = np.random.default_rng(6)
    batches = [[data(rng, 128) for _ in range(8)] for _ in range(2)]
    models = [MLP(SIZES, seed=7), MLP(SIZES, seed=8)]
    steps = [fc.train_step(m, fc.mse, fc.optim.Momentum(0.05, 0.9)) for m in models]
    errors = []

    def run(i):
        try:
            for x, t in batches[i]:
                steps[i](x, target=t)
        except Exception as e:          # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    start = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors and time.perf_counter() - start < 120
    for i, seed in enumerate((7, 8)):
        ref = MLP(SIZES, seed=seed)
        opt = fc.optim.Momentum(0.05, 0.9)
        for x, t in batches[i]:
            reference_step(ref, x, t, opt)
        for p, q in zip(fc.params(models[i]), fc.params(ref)):
            np.testing.assert_allclose(p.value, q.value, rtol=1e-10, atol=1e-12)


def test_a_fault_mid_update_changes_nothing_and_the_next_step_is_right(monkeypatch):
    rng = np.random.default_rng(9)
    m, ref = MLP(SIZES), MLP(SIZES)
    opt, opt_ref = fc.optim.Adam(0.01), fc.optim.Adam(0.01)
    step = fc.train_step(m, fc.mse, opt)
    x, t = data(rng, 128)
    step(x, target=t)
    reference_step(ref, x, t, opt_ref)
    calls = {"n": 0}
    like = Buffers.like

    def failing(self, key, a):
        calls["n"] += 1
        if calls["n"] == 9:             # in the middle of the updates, after some were written
            raise MemoryError("injected")
        return like(self, key, a)
    before = values(m)
    monkeypatch.setattr(Buffers, "like", failing)
    x, t = data(rng, 128)
    with pytest.raises(MemoryError):
        step(x, target=t)
    monkeypatch.setattr(Buffers, "like", like)
    for a, b in zip(values(m), before):
        np.testing.assert_array_equal(a, b)
    for _ in range(3):
        x, t = data(rng, 128)
        step(x, target=t)
        reference_step(ref, x, t, opt_ref)
    for a, b in zip(values(m), values(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_a_non_finite_step_changes_nothing_and_the_next_step_is_right():
    rng = np.random.default_rng(10)
    m, ref = MLP(SIZES), MLP(SIZES)
    step = fc.train_step(m, fc.mse, fc.optim.SGD(0.05))
    x, t = data(rng, 128)
    step(x, target=t)
    reference_step(ref, x, t, fc.optim.SGD(0.05))
    before = values(m)
    bad = t.copy()
    bad[3, 1] = np.inf
    with pytest.raises(FloatingPointError):
        step(x, target=bad)
    for a, b in zip(values(m), before):
        np.testing.assert_array_equal(a, b)
    x, t = data(rng, 128)
    step(x, target=t)
    reference_step(ref, x, t, fc.optim.SGD(0.05))
    for a, b in zip(values(m), values(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_the_generated_step_reads_well():
    m = MLP(SIZES)
    step = fc.train_step(m, fc.mse, fc.optim.SGD(0.05))
    x, t = data(np.random.default_rng(11), 8)
    step(x, target=t)
    src = fc.source(step)
    assert "buffers.matmul(" in src and "np.subtract(p, p_new, out=p_new)" in src


# -- fc.logitcrossentropy: one softmax for the loss and its gradient ---------------------------
@pytest.mark.parametrize("case", ["classes", "onehot", "soft", "huge", "float32", "int_logits", "3d"])
def test_value_and_grad_equals_the_loss_and_its_rule(case):
    from flux_compile.losses import logitcrossentropy_grad, logitcrossentropy_value_and_grad
    rng = np.random.default_rng(12)
    z = rng.standard_normal((7, 5))
    y = rng.integers(0, 5, 7)
    if case == "onehot":
        y = np.eye(5)[y]
    elif case == "soft":
        y = rng.dirichlet(np.ones(5), 7) * 1.5
    elif case == "huge":
        z = z * 1e300
    elif case == "float32":
        z = z.astype(np.float32)
    elif case == "int_logits":
        z = rng.integers(-3, 3, (7, 5))
    elif case == "3d":
        z, y = rng.standard_normal((2, 3, 5)), rng.integers(0, 5, (2, 3))
    loss, g = logitcrossentropy_value_and_grad(z, y)
    expect_loss, expect_g = fc.logitcrossentropy(z, y), logitcrossentropy_grad(z, y)
    assert type(loss) is type(expect_loss) and g.dtype == expect_g.dtype
    np.testing.assert_allclose(loss, expect_loss, rtol=1e-12)
    np.testing.assert_allclose(g, expect_g, rtol=1e-12, atol=1e-300)


def test_train_step_computes_the_softmax_once_and_matches_finite_differences():
    rng = np.random.default_rng(13)
    m = MLP((6, 300, 200, 4))
    x, labels = rng.standard_normal((64, 6)), rng.integers(0, 4, 64)
    lr = 1.0
    step = fc.train_step(m, fc.logitcrossentropy, fc.optim.SGD(lr))
    before = [W.value.copy() for W in m.Ws] + [b.value.copy() for b in m.bs]
    step(x, target=labels)
    src = fc.source(step)
    assert "logitcrossentropy_value_and_grad(" in src and "logitcrossentropy_grad(" not in src
    probe = MLP((6, 300, 200, 4))
    params = list(probe.Ws) + list(probe.bs)
    for p, v in zip(params, before):
        p.value = v.copy()
    after = list(m.Ws) + list(m.bs)
    for p, p_after, v in zip(params, after, before):       # central differences, a few entries
        for idx in [(0, 0), tuple(s - 1 for s in v.shape)]:
            h = 1e-6
            p.value[idx] = v[idx] + h
            up = fc.logitcrossentropy(probe(x), labels)
            p.value[idx] = v[idx] - h
            down = fc.logitcrossentropy(probe(x), labels)
            p.value[idx] = v[idx]
            np.testing.assert_allclose((v[idx] - p_after.value[idx]) / lr, (up - down) / (2 * h),
                                       rtol=1e-5, atol=1e-8)


# -- the ordinary call path: forward, pullback, back ------------------------------------------
@pytest.fixture(autouse=True)
def keep_buffers_on_the_call_path(monkeypatch):
    """The models below compile their forward and backward with kept matmuls (off by default)."""
    from flux_compile import assemble
    monkeypatch.setattr(assemble, "KEEP_BUFFERS", True)


@fc.net
class Deep:
    """Large enough that every matmul result is kept (> buffers.SMALL bytes)."""
    def __init__(self, dtype=np.float64, seed=0):
        rng = np.random.default_rng(seed)
        self.W1 = (rng.standard_normal((50, 300)) / 7).astype(dtype)
        self.W2 = (rng.standard_normal((300, 200)) / 17).astype(dtype)

    def forward(self, x):
        h = x @ self.W1
        z = np.tanh(h)
        return np.sin(z @ self.W2)


def deep_reference(W1, W2, x, dy):
    """Output, input gradient and Param gradients by autograd."""
    f = lambda W1, W2, x: anp.sin(anp.tanh(x @ W1) @ W2)
    y = f(W1, W2, x)
    g = autograd.grad(lambda W1, W2, x: anp.sum(f(W1, W2, x) * dy), (0, 1, 2))(W1, W2, x)
    return y, g[2], g[0], g[1]


def test_held_outputs_and_gradients_of_call_one_survive_later_calls():
    rng = np.random.default_rng(20)
    m = Deep()
    held = []
    for i in range(5):
        x, dy = rng.standard_normal((256, 50)), rng.standard_normal((256, 200))
        m.zero_grad()
        y = m(x)
        y2, back = m.pullback(x)
        dx = back(dy)
        held.append((x, dy, y, y2, dx, m.W1.grad.copy(), m.W2.grad.copy()))
    W1, W2 = m.W1.value, m.W2.value
    for x, dy, y, y2, dx, g1, g2 in held:
        ry, rdx, rg1, rg2 = deep_reference(W1, W2, x, dy)
        for got, want in ((y, ry), (y2, ry), (dx, rdx), (g1, rg1), (g2, rg2)):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_interleaved_pullbacks_held_and_called_twice():
    rng = np.random.default_rng(21)
    m = Deep()
    W1, W2 = m.W1.value, m.W2.value
    xs = [rng.standard_normal((128, 50)) for _ in range(3)]
    dys = [rng.standard_normal((128, 200)) for _ in range(3)]
    pulls = [m.pullback(x) for x in xs]                      # three live pullbacks
    for (y, back), x, dy in reversed(list(zip(pulls, xs, dys))):
        for last in (False, True):                           # each called twice
            m.zero_grad()
            dx = back(dy, retain=not last)
            ry, rdx, rg1, rg2 = deep_reference(W1, W2, x, dy)
            np.testing.assert_allclose(y, ry, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(dx, rdx, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(m.W1.grad, rg1, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(m.W2.grad, rg2, rtol=1e-10, atol=1e-12)
            m(rng.standard_normal((128, 50)))                # another call in between


@pytest.mark.parametrize("switch", ["dtype", "shape"])
def test_dtype_and_shape_switches_on_the_call_path(switch):
    rng = np.random.default_rng(22)
    m32, m64 = Deep(np.float32), Deep(np.float64)
    for i in range(6):
        n = (256, 64, 300)[i % 3] if switch == "shape" else 256
        dtype = (np.float32, np.float64)[i % 2] if switch == "dtype" else np.float64
        x = rng.standard_normal((n, 50)).astype(dtype)
        for m in (m32, m64):
            y = m(x)
            want = np.sin(np.tanh(x @ m.W1.value) @ m.W2.value)
            assert y.dtype == want.dtype and y.shape == want.shape
            np.testing.assert_allclose(y, want, rtol=2e-5 if want.dtype == np.float32 else 1e-12, atol=1e-6)


def test_two_threads_hammering_one_model():
    rng = np.random.default_rng(23)
    m = Deep()
    W1, W2 = m.W1.value, m.W2.value
    inputs = [[(rng.standard_normal((128, 50)), rng.standard_normal((128, 200))) for _ in range(10)]
              for _ in range(2)]
    results, errors = [[], []], []

    def run(i):
        try:
            for x, dy in inputs[i]:
                y, back = m.pullback(x)
                results[i].append((y, back(dy), m(x)))
        except Exception as e:          # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors
    for i in range(2):
        assert len(results[i]) == 10
        for (x, dy), (y, dx, y_infer) in zip(inputs[i], results[i]):
            ry, rdx, _, _ = deep_reference(W1, W2, x, dy)
            np.testing.assert_allclose(y, ry, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(y_infer, ry, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(dx, rdx, rtol=1e-10, atol=1e-12)


def test_a_model_calling_itself_through_a_sub_model_of_the_same_class():
    """The same variant nested: an outer call's kept arrays are live while the inner runs."""
    @fc.net
    class Twice:
        def __init__(self, inner=None):
            rng = np.random.default_rng(24)
            self.W = rng.standard_normal((60, 60)) / 8
            self.inner = inner

        def forward(self, x):
            h = x @ self.W
            return np.tanh(h) if self.inner is None else self.inner(np.tanh(h)) + h
    m = Twice(Twice())
    rng = np.random.default_rng(25)
    for _ in range(3):
        x = rng.standard_normal((300, 60))
        h = x @ m.W.value
        want = np.tanh(np.tanh(h) @ m.inner.W.value) + h
        np.testing.assert_allclose(m(x), want, rtol=1e-12, atol=1e-12)
        y, back = m.pullback(x)
        np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


def test_the_backward_reads_well():
    m = Deep()
    y, back = m.pullback(np.ones((4, 50)))
    back(np.ones_like(y))
    src = fc.source(m, "backward")
    assert "self.W2.grad += buffers.matmul(" in src
    assert "h = x @ self.W1.value" in fc.source(m, "forward") or "buffers.matmul(" in fc.source(m, "forward")


def test_a_non_finite_gradient_with_a_finite_loss_changes_nothing():
    """The finiteness check reads the sum the update helper took of each gradient."""
    @fc.net
    class Root:
        def __init__(self):
            self.W = np.random.default_rng(26).standard_normal((40, 300))

        def forward(self, x):
            return np.sqrt(np.abs(x @ self.W))
    m = Root()
    opt = fc.optim.Adam(0.01)
    step = fc.train_step(m, fc.mse, opt)
    rng = np.random.default_rng(27)
    x, t = rng.standard_normal((128, 40)), rng.standard_normal((128, 300))
    step(x, target=t)
    before, state = m.W.value.copy(), [s.copy() for s in opt._state_for(m.W).slots]
    x0 = x.copy()
    x0[5] = 0.0                                      # sqrt'(0): an infinite gradient
    with pytest.raises(fc.optim.NonFiniteGradient, match="W"):
        step(x0, target=t)
    np.testing.assert_array_equal(m.W.value, before)
    for s, c in zip(opt._state_for(m.W).slots, state):
        np.testing.assert_array_equal(s, c)
    step(x, target=t)                                # the next step starts from `before`
    again = Root()
    again.W.value = before.copy()
    opt2 = fc.optim.Adam(0.01)
    opt2.state[again.W] = (opt._state_for(m.W).step - 1, state)
    fc.train_step(again, fc.mse, opt2)(x, target=t)
    np.testing.assert_allclose(m.W.value, again.W.value, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_other_backends_spell_kept_matmuls_as_the_operator(backend):
    pytest.importorskip(backend)

    @fc.net
    class Lin:
        def __init__(self):
            self.W = np.random.default_rng(28).standard_normal((50, 300)) / 7

        def forward(self, x):
            h = x @ self.W
            return np.tanh(h)
    m = Lin()
    x = np.random.default_rng(29).standard_normal((256, 50))
    y, back = m.pullback(x)
    back(np.ones_like(y))
    assert "buffers.matmul(" in fc.source(m, "forward")
    m2 = fc.to(m, backend)
    y2, back2 = m2.pullback(x)
    dx2 = back2(np.ones((256, 300)))
    src = fc.source(m2, "all")
    assert "buffers" not in src and "Buffers" not in src and "@" in src
    np.testing.assert_allclose(np.asarray(y2), np.tanh(x @ m.W.value), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(np.asarray(dx2), (1 - np.tanh(x @ m.W.value) ** 2) @ m.W.value.T,
                               rtol=1e-6, atol=1e-8)


class ClippedMomentum(fc.optim.Momentum):
    """A user's block mixing lines the rewriter takes (into kept arrays) and one it leaves as
    written (``np.clip``), which then feeds a rewritten line."""
    def block(self):
        return ["u = np.clip(g, -0.01, 0.01)",
                "v = rho * v + u",
                "p -= lr * v"]


@pytest.mark.parametrize("make_opt", [lambda: ClippedMomentum(0.05, 0.9), lambda: fc.optim.AdamW(0.01)])
def test_a_user_block_with_an_unrewritable_line_steps_like_the_update_path(make_opt):
    rng = np.random.default_rng(30)
    m, ref = MLP(SIZES), MLP(SIZES)
    step, opt_ref = fc.train_step(m, fc.mse, make_opt()), make_opt()
    for _ in range(4):
        x, t = data(rng, 128)
        step(x, target=t)
        reference_step(ref, x, t, opt_ref)
    src = fc.source(step)
    if isinstance(step.opt, ClippedMomentum):
        assert "u = np.clip(g, -0.01, 0.01)" in src and "np.add(v_new, u, out=v_new)" in src
    for a, b in zip(values(m), values(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
