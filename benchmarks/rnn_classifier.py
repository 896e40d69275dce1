"""Train step of a GRU and an LSTM sequence classifier: flux_compile vs PyTorch eager and hand-written NumPy.

The model reads a (batch, time, features) sequence with one recurrent layer, keeps the
last hidden state, applies a Dense read-out and ``fc.logitcrossentropy`` against class
labels; one step is forward, loss, backprop through time and an SGD update. The
recurrence is written as an ordinary loop in ``forward`` (``for t in range(x.shape[1])``),
so flux_compile compiles it as a loop region and hoists the input projection
``x[:, t] @ Wx + b`` out of it (one matmul for all steps, forward and backward).

Contenders, timed in one run taking turns (same sizes, dtype and one thread each):

- flux_compile: ``fc.train_step(model, fc.logitcrossentropy, fc.optim.SGD(lr))``;
- hand-written NumPy with the projection hoisted by hand (what a careful person writes);
- PyTorch eager ``nn.GRU`` / ``nn.LSTM`` + ``nn.Linear`` + ``cross_entropy`` + ``SGD``.

After timing, the hand-written gradients are checked against flux_compile's in float64.

    OPENBLAS_NUM_THREADS=1 python benchmarks/rnn_classifier.py [--dtype float32] [--repeats 5]
"""
import argparse
import os
import sys
import time

import numpy as np

import flux_compile as fc
import flux_compile.init

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mlp import race  # noqa: E402  (the contenders take turns in every round)


@fc.net
class GRUClassifier:
    """GRU (PyTorch gate layout r, z, n) over time, last state, Dense read-out."""

    def __init__(self, n_in, n_h, n_out, dtype=np.float32):
        self.Wx = fc.glorot_uniform(n_in, 3 * n_h).astype(dtype)
        self.Wh = fc.glorot_uniform(n_h, 3 * n_h).astype(dtype)
        self.bx = np.zeros((1, 3 * n_h), dtype=dtype)
        self.bh = np.zeros((1, 3 * n_h), dtype=dtype)
        self.Wo = fc.glorot_uniform(n_h, n_out).astype(dtype)
        self.bo = np.zeros((1, n_out), dtype=dtype)
        self.n_h = n_h

    def forward(self, x):
        n = self.n_h
        h = np.zeros((x.shape[0], n), dtype=x.dtype)
        for t in range(x.shape[1]):
            gx = x[:, t] @ self.Wx + self.bx
            gh = h @ self.Wh + self.bh
            r = fc.sigmoid(gx[:, :n] + gh[:, :n])
            z = fc.sigmoid(gx[:, n:2 * n] + gh[:, n:2 * n])
            c = np.tanh(gx[:, 2 * n:] + r * gh[:, 2 * n:])
            h = (1 - z) * c + z * h
        return h @ self.Wo + self.bo


@fc.net
class LSTMClassifier:
    """LSTM (PyTorch gate layout i, f, g, o) over time, last state, Dense read-out."""

    def __init__(self, n_in, n_h, n_out, dtype=np.float32):
        self.Wx = fc.glorot_uniform(n_in, 4 * n_h).astype(dtype)
        self.Wh = fc.glorot_uniform(n_h, 4 * n_h).astype(dtype)
        self.b = np.zeros((1, 4 * n_h), dtype=dtype)
        self.Wo = fc.glorot_uniform(n_h, n_out).astype(dtype)
        self.bo = np.zeros((1, n_out), dtype=dtype)
        self.n_h = n_h

    def forward(self, x):
        n = self.n_h
        h = np.zeros((x.shape[0], n), dtype=x.dtype)
        c = np.zeros((x.shape[0], n), dtype=x.dtype)
        for t in range(x.shape[1]):
            z = x[:, t] @ self.Wx + h @ self.Wh + self.b
            i = fc.sigmoid(z[:, :n])
            f = fc.sigmoid(z[:, n:2 * n])
            g = np.tanh(z[:, 2 * n:3 * n])
            o = fc.sigmoid(z[:, 3 * n:])
            c = f * c + i * g
            h = o * np.tanh(c)
        return h @ self.Wo + self.bo


# ------------------------------------------------------------------------------
# hand-written NumPy (projection hoisted)


def sigmoid(z):
    return 0.5 * (np.tanh(0.5 * z) + 1)


def readout_loss(h, Wo, bo, labels):
    """(loss, dlogits) of the mean cross-entropy of ``h @ Wo + bo``."""
    logits = h @ Wo + bo
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    rows = np.arange(len(labels))
    loss = -np.mean(np.log(p[rows, labels]))
    p[rows, labels] -= 1
    return loss, p / len(labels)


def lstm_gradients(P, x, labels):
    """(loss, [dWx, dWh, db, dWo, dbo]) of the LSTM classifier."""
    Wx, Wh, b, Wo, bo = P
    B, T, _ = x.shape
    n = Wh.shape[0]
    xz = x @ Wx + b                                       # all steps at once
    h = np.zeros((B, n), dtype=x.dtype)
    c = np.zeros((B, n), dtype=x.dtype)
    tape = []
    for t in range(T):
        z = xz[:, t] + h @ Wh
        i, f = sigmoid(z[:, :n]), sigmoid(z[:, n:2 * n])
        g, o = np.tanh(z[:, 2 * n:3 * n]), sigmoid(z[:, 3 * n:])
        c_prev, h_prev = c, h
        c = f * c + i * g
        tc = np.tanh(c)
        h = o * tc
        tape.append((h_prev, c_prev, i, f, g, o, tc))
    loss, dlogits = readout_loss(h, Wo, bo, labels)
    dWo, dbo = h.T @ dlogits, dlogits.sum(axis=0, keepdims=True)
    dh = dlogits @ Wo.T
    dc_next = np.zeros((B, n), dtype=x.dtype)
    dWh = np.zeros_like(Wh)
    dz_all = np.empty_like(xz)
    for t in reversed(range(T)):
        h_prev, c_prev, i, f, g, o, tc = tape[t]
        dc = dc_next + dh * o * (1 - tc * tc)
        dz = dz_all[:, t]
        dz[:, :n] = dc * g * i * (1 - i)
        dz[:, n:2 * n] = dc * c_prev * f * (1 - f)
        dz[:, 2 * n:3 * n] = dc * i * (1 - g * g)
        dz[:, 3 * n:] = dh * tc * o * (1 - o)
        dc_next = dc * f
        dh = dz @ Wh.T
        dWh += h_prev.T @ dz
    flat = dz_all.reshape(B * T, 4 * n)
    return loss, [x.reshape(B * T, -1).T @ flat, dWh, flat.sum(axis=0, keepdims=True), dWo, dbo]


class Hand:
    """Plain arrays and an SGD step by hand."""

    def __init__(self, model, kind):
        self.kind = kind
        self.params = [p.value.copy() for p in fc.params(model)]

    def gradients(self, x, labels):
        if self.kind == "lstm":
            return lstm_gradients(self.params, x, labels)
        return gru_hand(self.params, x, labels)

    def step(self, x, labels, lr):
        loss, grads = self.gradients(x, labels)
        for p, g in zip(self.params, grads):
            p -= lr * g
        return loss


def gru_hand(P, x, labels):
    """(loss, [dWx, dWh, dbx, dbh, dWo, dbo]) of the GRU classifier, projection hoisted."""
    Wx, Wh, bx, bh, Wo, bo = P
    B, T, _ = x.shape
    n = Wh.shape[0]
    gx_all = x @ Wx + bx
    h = np.zeros((B, n), dtype=x.dtype)
    tape = []
    for t in range(T):
        gx = gx_all[:, t]
        gh = h @ Wh + bh
        r = sigmoid(gx[:, :n] + gh[:, :n])
        z = sigmoid(gx[:, n:2 * n] + gh[:, n:2 * n])
        c = np.tanh(gx[:, 2 * n:] + r * gh[:, 2 * n:])
        tape.append((h, gh, r, z, c))
        h = (1 - z) * c + z * h
    loss, dlogits = readout_loss(h, Wo, bo, labels)
    dWo, dbo = h.T @ dlogits, dlogits.sum(axis=0, keepdims=True)
    dh = dlogits @ Wo.T
    dWh = np.zeros_like(Wh)
    dbh = np.zeros_like(bh)
    dgx_all = np.empty_like(gx_all)
    dgh = np.empty((B, 3 * n), dtype=x.dtype)
    for t in reversed(range(T)):
        h_prev, gh, r, z, c = tape[t]
        dc = dh * (1 - z) * (1 - c * c)
        dgx = dgx_all[:, t]
        dgx[:, n:2 * n] = dgh[:, n:2 * n] = dh * (h_prev - c) * z * (1 - z)
        dgx[:, :n] = dgh[:, :n] = dc * gh[:, 2 * n:] * r * (1 - r)
        dgx[:, 2 * n:] = dc
        dgh[:, 2 * n:] = dc * r
        dWh += h_prev.T @ dgh
        dbh += dgh.sum(axis=0)
        dh = dh * z + dgh @ Wh.T
    flat = dgx_all.reshape(B * T, 3 * n)
    return loss, [x.reshape(B * T, -1).T @ flat, dWh, flat.sum(axis=0, keepdims=True), dbh, dWo, dbo]


# ------------------------------------------------------------------------------
# PyTorch


def torch_step_factory(model, kind, x, labels, lr, threads):
    """A PyTorch eager step with the same weights, or None when torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    dtype = torch.float32 if x.dtype == np.float32 else torch.float64
    n_in, n_h, n_out = x.shape[-1], model.n_h, model.Wo.shape[1]
    rnn = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(n_in, n_h, batch_first=True, dtype=dtype)
    lin = torch.nn.Linear(n_h, n_out, dtype=dtype)

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a))
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(t(model.Wx.value.T))
        rnn.weight_hh_l0.copy_(t(model.Wh.value.T))
        if kind == "lstm":
            rnn.bias_ih_l0.copy_(t(model.b.value.ravel()))
            rnn.bias_hh_l0.zero_()
        else:
            rnn.bias_ih_l0.copy_(t(model.bx.value.ravel()))
            rnn.bias_hh_l0.copy_(t(model.bh.value.ravel()))
        lin.weight.copy_(t(model.Wo.value.T))
        lin.bias.copy_(t(model.bo.value.ravel()))
    opt = torch.optim.SGD(list(rnn.parameters()) + list(lin.parameters()), lr=lr)
    xt, yt = t(x), t(labels)

    def step():
        opt.zero_grad()
        out, _ = rnn(xt)
        loss = torch.nn.functional.cross_entropy(lin(out[:, -1]), yt)
        loss.backward()
        opt.step()
        return loss.item()
    return step


# ------------------------------------------------------------------------------


def make(kind, n_in, n_h, n_out, dtype, seed=0):
    flux_compile.init.seed(seed)
    cls = LSTMClassifier if kind == "lstm" else GRUClassifier
    return cls(n_in, n_h, n_out, dtype=dtype)


def check_gradients(kind):
    """The hand-written gradients equal flux_compile's (float64); the worst relative error."""
    rng = np.random.default_rng(1)
    model = make(kind, 5, 4, 3, np.float64)
    for p in fc.params(model):
        p.value[...] += 0.3 * rng.standard_normal(p.shape)
    x, labels = rng.standard_normal((3, 37, 5)), rng.integers(0, 3, 3)
    y, back = model.pullback(x)
    loss, (dy, _) = fc.grad(fc.logitcrossentropy, y, labels)
    back(dy)
    hand_loss, got = Hand(model, kind).gradients(x, labels)
    assert np.isclose(hand_loss, loss, rtol=1e-12), (hand_loss, loss)
    worst = 0.0
    for g, p in zip(got, fc.params(model)):
        err = np.max(np.abs(g - p.grad)) / (np.max(np.abs(p.grad)) + 1e-300)
        assert err < 1e-9, (kind, err)
        worst = max(worst, err)
    return worst


def run(kind, batch, T, n_in, n_h, n_out, dtype, repeats, rounds, lr=0.05):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, T, n_in)).astype(dtype)
    labels = rng.integers(0, n_out, batch)
    model = make(kind, n_in, n_h, n_out, dtype)
    hand = Hand(model, kind)
    tstep = torch_step_factory(model, kind, x, labels, lr, 1)
    step = fc.train_step(model, fc.logitcrossentropy, fc.optim.SGD(lr))
    t0 = time.perf_counter()
    step(x, target=labels)
    first = time.perf_counter() - t0
    fns = {"numpy": lambda: hand.step(x, labels, lr), "fc": lambda: step(x, target=labels)}
    if tstep is not None:
        fns["torch"] = tstep
    times = race(fns, repeats, rounds)
    print(f"{kind.upper()} classifier train step: batch {batch}, {T} steps, {n_in} -> {n_h} -> {n_out}, "
          f"{np.dtype(dtype).name}, SGD, one thread")
    print(f"  first call (compile + step)    : {first * 1e3:8.1f} ms")
    print(f"  hand-written NumPy (hoisted)   : {times['numpy'] * 1e3:8.2f} ms/step")
    if tstep is not None:
        print(f"  PyTorch eager                  : {times['torch'] * 1e3:8.2f} ms/step")
    line = f"  flux_compile fc.train_step     : {times['fc'] * 1e3:8.2f} ms/step   " \
           f"{times['fc'] / times['numpy']:.2f}x NumPy"
    if tstep is not None:
        line += f"   {times['fc'] / times['torch']:.2f}x PyTorch (target <= 1.0x)"
    print(line)
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=50)
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args(argv)
    try:
        from threadpoolctl import threadpool_limits
        limit = threadpool_limits(limits=1, user_api="blas")
    except ImportError:
        limit = None
    for kind in ("gru", "lstm"):
        run(kind, a.batch, a.seq_len, a.features, a.hidden, a.classes, np.dtype(a.dtype).type,
            a.repeats, a.rounds)
    for kind in ("gru", "lstm"):
        print(f"hand-written {kind.upper()} gradients match flux_compile's "
              f"(float64, worst relative error {check_gradients(kind):.1e})")
    del limit


if __name__ == "__main__":
    main()
