"""fc.unroll compiled as one function: a loop region over time, the step model inlined and its
recurrent state carried (unrolled.py). Everything is checked against the per-step template it
replaces (``sequences.INLINE[0] = False``, still the fallback) and against finite differences."""
import contextlib
import time

import numpy as np
import pytest

import flux_compile as fc
from flux_compile import sequences
from flux_compile.params import submodels


@fc.net
class UserCell:
    """A user's cell with two state attributes, one read before it is written."""

    def __init__(self, n_in, n_h):
        self.W = fc.initn(n_in, n_h)
        self.U = fc.initn(n_h, n_h)
        self.h = np.zeros((1, n_h))
        self.s = np.zeros((1, n_h))

    def forward(self, x):
        self.s = 0.5 * self.s + np.sin(self.h)
        self.h = np.tanh(x @ self.W + self.h @ self.U + self.s)
        return self.h * 2.0


@fc.net
class IfCell:
    """An ``if`` on data inside the step: a cond region inside the time loop."""

    def __init__(self):
        self.W = fc.initn(3, 3)
        self.h = np.zeros((1, 3))

    def forward(self, x):
        z = x @ self.W + self.h
        if np.sum(z) > 0:
            self.h = np.tanh(z)
        else:
            self.h = 0.5 * self.h + np.sin(z)
        return self.h


@fc.net
class Counter:
    """Scalar state that does not depend on the batch."""

    def __init__(self):
        self.W = fc.initn(3, 3)
        self.count = np.zeros(())

    def forward(self, x):
        self.count = self.count + 1.0
        return x @ self.W * self.count


CELLS = {
    "if": lambda dt: IfCell(),
    "counter": lambda dt: Counter(),
    "rnn": lambda dt: fc.RNN(3, 4, dtype=dt),
    "gru": lambda dt: fc.GRU(3, 4, dtype=dt),
    "lstm": lambda dt: fc.LSTM(3, 4, dtype=dt),
    "user": lambda dt: UserCell(3, 4),
    "chain": lambda dt: fc.Chain(fc.LSTM(3, 4, dtype=dt), fc.Dense(4, 4, act=np.tanh, dtype=dt),
                                 fc.GRU(4, 3, dtype=dt)),
}


@contextlib.contextmanager
def inlined(flag):
    before = sequences.INLINE[0]
    sequences.INLINE[0] = flag
    try:
        yield
    finally:
        sequences.INLINE[0] = before


def make(kind, dtype, seed=0):
    rng = np.random.default_rng(seed)
    cell = CELLS[kind](dtype)
    for p in fc.params(cell):           # hostile: large weights, non-zero initial state
        p.value = (rng.standard_normal(p.shape) * (3.0 if kind == "if" else 0.7)).astype(dtype)
        p.grad = np.zeros_like(p.value)
    return cell


def states(m):
    """Every sub-model's current state (a copy), in tree order."""
    return [{k: np.array(v) for k, v in x.__dict__.get("_fc_state", {}).items()} for x in submodels(m)]


def session(kind, n, batch, dtype, flag):
    """Three batches with truncated BPTT between them, an inference call, a reset, one more
    call: everything observable, as a flat list of arrays."""
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((batch, n, 3)).astype(dtype) for _ in range(3)]
    cell = make(kind, dtype)
    seen = []
    with inlined(flag):
        seq = fc.unroll(cell, n)
        for x in xs:
            y, back = seq.pullback(x)
            dx = back(np.cos(y).astype(dtype))
            seen += [y, dx] + [p.grad.copy() for p in fc.params(cell)]
            seen += [v for st in states(cell) for v in st.values()]
        seen.append(seq(xs[0]))
        seen += [v for st in states(cell) for v in st.values()]
        fc.reset(seq)
        assert all(not st for st in states(cell))
        seen.append(seq(xs[1]))
        c = fc.cache.compile_model(seq, (xs[1],))
    assert hasattr(c, "inner") == flag, "the inlined path must run when it is on"
    return seen


@pytest.mark.parametrize("kind", sorted(CELLS))
@pytest.mark.parametrize("n,batch", [(1, 2), (2, 3), (40, 2), (7, 1)])
def test_inlined_equals_template_float64(kind, n, batch):
    new, old = session(kind, n, batch, np.float64, True), session(kind, n, batch, np.float64, False)
    assert len(new) == len(old)
    for a, b in zip(new, old):
        assert a.dtype == b.dtype == np.float64
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_inlined_equals_template_300_steps(kind):
    new, old = session(kind, 300, 2, np.float64, True), session(kind, 300, 2, np.float64, False)
    for a, b in zip(new, old):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("kind", ["lstm", "gru", "chain"])
def test_inlined_equals_template_float32(kind):
    new, old = session(kind, 12, 2, np.float32, True), session(kind, 12, 2, np.float32, False)
    for a, b in zip(new, old):
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def central(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(*x.shape):
        old = x[i]
        x[i] = old + eps
        up = f()
        x[i] = old - eps
        down = f()
        x[i] = old
        g[i] = (up - down) / (2 * eps)
    return g


@pytest.mark.parametrize("kind", ["lstm", "user", "chain"])
def test_inlined_gradients_match_finite_differences(kind):
    cell = make(kind, np.float64, seed=3)
    seq = fc.unroll(cell, 5)
    x = np.random.default_rng(4).standard_normal((2, 5, 3))
    w = np.random.default_rng(5).standard_normal(seq(x).shape)

    def loss():
        fc.reset(seq)
        return float(np.sum(seq(x) * w))
    fc.reset(seq)
    seq.zero_grad()
    y, back = seq.pullback(x)
    dx = back(w)
    assert hasattr(fc.cache.compile_model(seq, (x,)), "inner")
    np.testing.assert_allclose(dx, central(loss, x), rtol=1e-6, atol=1e-8)
    for p in fc.params(cell):       # weights and the initial state (Params of the step model)
        np.testing.assert_allclose(p.grad, central(loss, p.value), rtol=1e-6, atol=1e-8)


def test_wrong_length_is_the_same_clear_error():
    seq = fc.unroll(fc.LSTM(3, 4), 5)
    with pytest.raises(ValueError, match="runs 5 steps but the sequence has length 4"):
        seq(np.ones((2, 4, 3)))
    with pytest.raises(ValueError, match="runs 5 steps but the sequence has length 6"):
        seq.pullback(np.ones((2, 6, 3)))


def test_source_is_one_function_with_the_hoisted_projection():
    seq = fc.unroll(fc.LSTM(3, 4), 6)
    seq(np.ones((2, 6, 3)))
    fwd, bwd = fc.source(seq, "forward"), fc.source(seq, "backward")
    assert fwd.count("def forward(") == 1 and "for t in range(" in fwd
    # the input projection of all steps, one matmul before the loop; its gradient after it
    assert "xs @ self.model.Wx.value" in fwd.split("\n    for t in range(")[0]
    assert "self.model.Wx.grad += matmul_grad_b(" in bwd.split("\n    for ")[-1].split("\n    # ", 1)[-1]
    assert "in self.model: LSTM.forward" in fwd


def test_train_step_equals_pullback_back_update():
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((3, 8, 3)) for _ in range(4)]
    ys = [rng.standard_normal((3, 8, 4)) for _ in range(4)]
    a, b = make("lstm", np.float64), make("lstm", np.float64)
    seq_a, seq_b = fc.unroll(a, 8), fc.unroll(b, 8)
    step = fc.train_step(seq_a, fc.mse, fc.optim.SGD(0.1))
    for x, y in zip(xs, ys):
        loss_a = step(x, target=y)
        out, back = seq_b.pullback(x)
        loss_b, (dout, _) = fc.grad(fc.mse, out, y)
        back(dout)
        seq_b.update(0.1)
        np.testing.assert_allclose(loss_a, loss_b, rtol=1e-12)
        for p, q in zip(fc.params(a), fc.params(b)):
            np.testing.assert_allclose(p.value, q.value, rtol=1e-10, atol=1e-12)
        for sa, sb in zip(states(a), states(b)):
            for k in sa:
                np.testing.assert_allclose(sa[k], sb[k], rtol=1e-10, atol=1e-12)


def test_a_stateful_model_used_twice_per_step_falls_back_to_the_template():
    """The same stateful cell twice in one step: its state is updated twice per step, which
    the carried-state paths (one per field path) cannot say; the per-step template runs it."""
    cell = fc.RNN(3, 3)
    seq = fc.unroll(fc.Chain(cell, cell), 4)
    x = np.random.default_rng(0).standard_normal((2, 4, 3))
    y = seq(x)
    assert not hasattr(fc.cache.compile_model(seq, (x,)), "inner")
    fc.reset(seq)
    step = fc.unroll1(fc.Chain(cell, cell))
    np.testing.assert_allclose(y, np.stack([step(x[:, t]) for t in range(4)], axis=1), rtol=1e-12)


def test_flip_and_unroll1_share_the_step_state():
    cell = make("gru", np.float64)
    x = np.random.default_rng(1).standard_normal((2, 5, 3))
    y = fc.flip(fc.unroll(cell, 5))(x)
    fc.reset(cell)
    step = fc.unroll1(cell)
    stepped = np.stack([step(x[:, t]) for t in reversed(range(5))][::-1], axis=1)
    np.testing.assert_allclose(y, stepped, rtol=1e-12, atol=1e-14)


def test_backend_runs_the_template_and_agrees():
    pytest.importorskip("torch")
    cell = make("lstm", np.float64)
    seq = fc.unroll(cell, 6)
    x = np.random.default_rng(0).standard_normal((2, 6, 3))
    want = seq(x)
    fc.reset(seq)
    got = fc.to(seq, "torch")(x)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-12)


def test_compile_time_is_roughly_flat_in_n():
    """Not a timing assertion: the generated source does not grow with n (compile time
    follows; benchmarks/README.md has the figures)."""
    sizes = {}
    for n in (2, 300):
        seq = fc.unroll(fc.LSTM(3, 4), n)
        seq(np.ones((1, n, 3)))
        sizes[n] = len(fc.source(seq, "all"))
    assert abs(sizes[300] - sizes[2]) < 100, sizes


@fc.net
class Baked:
    """An int baked into the code, a float read at run time."""

    def __init__(self):
        self.W = fc.Param(np.arange(9.0).reshape(3, 3) / 10)
        self.h = np.zeros((1, 3))
        self.k = 2
        self.scale = 1.5

    def forward(self, x):
        self.h = np.tanh(x @ self.W + self.h) * self.k * self.scale
        return self.h


def _sine_forward(self, x):
    self.h = np.sin(x @ self.W + self.h)
    return self.h


@pytest.mark.parametrize("change", ["int", "float", "param", "forward", "model"])
def test_what_the_loop_baked_in_is_guarded(change, monkeypatch):
    """Soundness: after a change of the step model, the inlined loop computes what the
    template computes (recompiled where it baked the old value in)."""
    def mutate(seq):
        if change == "int":
            seq.model.k = 3
        elif change == "float":
            seq.model.scale = 0.5
        elif change == "param":
            seq.model.W = fc.Param(np.ones((3, 3)))
        elif change == "forward":
            monkeypatch.setattr(Baked, "forward", _sine_forward)
        else:
            seq.model = fc.RNN(3, 3, init=lambda *s: np.full(s, 0.3))
    results = []
    for flag in (True, False):
        with inlined(flag):
            seq = fc.unroll(Baked(), 4)
            x = np.random.default_rng(0).standard_normal((2, 4, 3))
            first = seq(x)
            fc.reset(seq)
            mutate(seq)
            results.append(seq(x))
        if change == "forward":
            monkeypatch.undo()
    assert not np.allclose(first, results[0])
    np.testing.assert_allclose(results[0], results[1], rtol=1e-12)


def test_instances_of_one_structure_share_the_generated_loop():
    """A new fc.unroll of the same step structure (another n, other weights) reuses the loop
    when its guards hold; another structure (other sizes) gets its own."""
    x5, x9 = np.ones((2, 5, 3)), np.ones((2, 9, 3))
    a, b = fc.unroll(make("lstm", np.float64, 1), 5), fc.unroll(make("lstm", np.float64, 2), 9)
    c = fc.unroll(fc.LSTM(3, 6), 5)
    ya, yb, yc = a(x5), b(x9), c(x5)
    inner = [fc.cache.compile_model(s, (x,)).inner for s, x in ((a, x5), (b, x9), (c, x5))]
    assert inner[0] is inner[1] and inner[2] is not inner[0]
    assert yc.shape == (2, 5, 6)
    with inlined(False):
        b2 = fc.unroll(make("lstm", np.float64, 2), 9)
        np.testing.assert_allclose(yb, b2(x9), rtol=1e-12)


def test_a_failed_train_step_changes_nothing():
    """All or nothing: a NaN loss leaves the Params and the carried state as they were."""
    cell = make("lstm", np.float64)
    seq = fc.unroll(cell, 6)
    step = fc.train_step(seq, fc.mse, fc.optim.Adam(0.01))
    x, y = np.ones((2, 6, 3)), np.zeros((2, 6, 4))
    step(x, target=y)
    values, state = [p.value.copy() for p in fc.params(cell)], states(cell)
    with pytest.raises(FloatingPointError):
        step(x, target=np.full((2, 6, 4), np.nan))
    for p, v in zip(fc.params(cell), values):
        np.testing.assert_array_equal(p.value, v)
    for before, now in zip(state, states(cell)):
        assert before.keys() == now.keys()
        for k in before:
            np.testing.assert_array_equal(before[k], now[k])
