"""Recurrence: state attributes in forward, unrolling with backprop through time, RNN/GRU/LSTM.
Every gradient through time is checked against central finite differences in float64."""
import pickle

import numpy as np
import pytest

import flux_compile as fc

rng = np.random.default_rng(7)


@fc.net
class Recurrent:
    def __init__(self, n_in, n_h):
        self.Wxh, self.Whh, self.bh = rng.standard_normal((n_in, n_h)) * 0.5, \
            rng.standard_normal((n_h, n_h)) * 0.5, rng.standard_normal((1, n_h)) * 0.1
        self.h = rng.standard_normal((1, n_h)) * 0.1          # trainable initial state
    def forward(self, x):
        self.h = np.tanh(x @ self.Wxh + self.h @ self.Whh + self.bh)   # reads the previous step
        return self.h


@fc.net
class TwiceWritten:
    """Assigns its state twice and reads it after assigning: plain Python semantics."""
    def __init__(self, n):
        self.W = rng.standard_normal((n, n)) * 0.5
        self.s = np.zeros((1, n))
        self.count = np.zeros((1, n))

    def forward(self, x):
        self.s = self.s * 0.5 + x
        y = np.tanh(self.s @ self.W)         # sees this step's first write
        self.s = self.s + y                 # second write wins
        self.count = self.count + 1.0
        return y * self.count


def plain_twice(W, s, count, x):
    s = s * 0.5 + x
    y = np.tanh(s @ W)
    s = s + y
    count = count + 1.0
    return y * count, s, count


LAYERS = {
    "user": lambda: Recurrent(3, 4),
    "RNN": lambda: fc.RNN(3, 4),
    "GRU": lambda: fc.GRU(3, 4),
    "LSTM": lambda: fc.LSTM(3, 4),
    "chain": lambda: fc.Chain(fc.RNN(3, 5), fc.LSTM(5, 4), fc.Affine(4, 2)),
    "twice": lambda: fc.Chain(fc.Affine(3, 4), TwiceWritten(4)),
}


@pytest.mark.parametrize("n", [1, 2, 7])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_backprop_through_time_matches_finite_differences(kind, n):
    m = LAYERS[kind]()
    seq = fc.unroll(m, n)
    xs = rng.standard_normal((2, n, 3))
    report = fc.gradcheck(seq, xs)
    assert report.ok
    # the initial state is among the checked parameters and gets a gradient
    names = [r.name for r in report.rows]
    assert any(name.endswith(("h", ".s")) for name in names)


@pytest.mark.parametrize("kind", ["user", "LSTM", "chain"])
def test_state_carried_across_two_calls(kind):
    m = LAYERS[kind]()
    seq = fc.unroll(m, 3)
    seq(rng.standard_normal((2, 3, 3)))           # first batch: the state moves on
    report = fc.gradcheck(seq, rng.standard_normal((2, 3, 3)))
    assert report.ok
    # truncated BPTT: the second call did not start from the initial state
    for p in fc.params(seq):
        p.grad[...] = 0
    _, back = seq.pullback(rng.standard_normal((2, 3, 3)))
    back(np.ones((2, 3, m(np.ones((2, 3))).shape[-1]) if kind != "chain" else (2, 3, 2)))
    first = m.layers[0] if kind == "chain" else m
    assert not first.h.grad.any()


def test_calling_advances_state_and_reset_restores():
    m = Recurrent(3, 4)
    x = rng.standard_normal((2, 3))
    y1 = m(x)
    y2 = m(x)
    assert not np.allclose(y1, y2)
    m.reset()
    np.testing.assert_allclose(m(x), y1)
    fc.reset(m)
    np.testing.assert_allclose(m(x), y1)


def test_state_semantics_like_plain_python():
    m = TwiceWritten(3)
    W, s, count = m.W.value.copy(), m.s.value.copy(), m.count.value.copy()
    for _ in range(3):
        x = rng.standard_normal((2, 3))
        y, s, count = plain_twice(W, s, count, x)
        np.testing.assert_allclose(m(x), y)


def test_state_is_explicit_in_generated_source():
    m = Recurrent(3, 4)
    m(np.ones((2, 3)))
    src = fc.source(m, "forward")
    assert "def forward(self, x, h):" in src
    back = fc.source(m, "backward")
    assert "dh" in back and "return dx, dh" in back


def test_sequence_length_mismatch_is_a_clear_error():
    seq = fc.unroll(fc.RNN(3, 4), 5)
    with pytest.raises(ValueError, match="runs 5 steps but the sequence has length 4"):
        seq(np.ones((2, 4, 3)))


def test_unroll_source_shows_time_loop_and_step():
    seq = fc.unroll(fc.RNN(3, 4), 6)
    seq(np.ones((2, 6, 3)))
    src = fc.source(seq, "backward")
    # one function: the time loop run backwards, the step's code inlined in it (its lines named)
    assert src.count("def backward(") == 1 and "for " in src and "reversed(" in src
    assert "in self.model: RNN.forward" in src and "self.model.Wh.grad +=" in src


def test_unroll_matches_stepping():
    m = fc.LSTM(3, 4)
    xs = rng.standard_normal((2, 5, 3))
    ys = fc.unroll(m, 5)(xs)
    m.reset()
    step = fc.unroll1(m)
    stepped = np.stack([step(xs[:, t]) for t in range(5)], axis=1)
    np.testing.assert_allclose(ys, stepped)


def test_flip_runs_backwards_in_time():
    m = fc.GRU(3, 4)
    xs = rng.standard_normal((2, 4, 3))
    back_in_time = fc.flip(fc.unroll(m, 4))(xs)
    m.reset()
    expected = fc.unroll(m, 4)(xs[:, ::-1])[:, ::-1]
    np.testing.assert_allclose(back_in_time, expected)
    m.reset()
    assert fc.gradcheck(fc.flip(fc.unroll(m, 4)), xs).ok


def test_bidirectional_encoder_gradients():
    @fc.net
    class BiEncoder:
        def __init__(self):
            self.fwd = fc.unroll(fc.RNN(3, 4), 4)
            self.bwd = fc.flip(fc.unroll(fc.RNN(3, 4), 4))

        def forward(self, xs):
            return np.concatenate([self.fwd(xs), self.bwd(xs)], axis=2)

    m = BiEncoder()
    xs = rng.standard_normal((2, 4, 3))
    assert m(xs).shape == (2, 4, 8)
    fc.reset(m)
    assert fc.gradcheck(m, xs).ok


def test_training_an_rnn_reduces_loss():
    m = fc.unroll(fc.Chain(fc.RNN(2, 8), fc.Affine(8, 1)), 6)
    xs = rng.standard_normal((16, 6, 2))
    target = np.cumsum(xs[:, :, :1], axis=1) * 0.3       # running sum: needs memory
    opt = fc.optim.Adam(0.02)
    losses = []
    for _ in range(80):
        fc.reset(m)
        y, back = m.pullback(xs)
        loss, (dy, _) = fc.grad(fc.mse, y, target)
        back(dy)
        m.update(opt)
        losses.append(loss)
    assert losses[-1] < 0.5 * losses[0]


def test_float32_recurrence_stays_float32():
    m = fc.LSTM(3, 4)
    for p in fc.params(m):
        p.value = p.value.astype(np.float32)
        p.grad = np.zeros_like(p.value)
    seq = fc.unroll(m, 3)
    xs = rng.standard_normal((2, 3, 3)).astype(np.float32)
    ys, back = seq.pullback(xs)
    assert ys.dtype == np.float32
    dxs = back(np.ones_like(ys))
    assert dxs.dtype == np.float32 and m.Wx.grad.dtype == np.float32


def test_pickle_recurrent_model_keeps_working():
    m = fc.LSTM(3, 4)
    m(np.ones((2, 3)))
    m2 = pickle.loads(pickle.dumps(m))
    np.testing.assert_allclose(m2(np.ones((2, 3))), m(np.ones((2, 3))))


def test_state_without_initial_value_is_a_clear_error():
    @fc.net
    class NoInit:
        def __init__(self):
            self.W = np.ones((2, 2))

        def forward(self, x):
            self.h = np.tanh(x @ self.W + self.h)
            return self.h

    with pytest.raises(AttributeError, match="set self.h in __init__"):
        NoInit()(np.ones((1, 2)))
