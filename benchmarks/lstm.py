"""Train step of a character LSTM: flux_compile vs hand-written NumPy (and PyTorch eager when installed).

One step = forward over ``T`` time steps, softmax cross-entropy on every step's
logits, backprop through time, Adam update. The model is the one of
``examples/char_rnn.py``: ``layers`` LSTMs (PyTorch gate layout i, f, g, o)
and an affine read-out, one-hot inputs of ``N`` characters. Three contenders,
timed in one run, same sizes, same dtype, same thread count:

- flux_compile: ``fc.unroll(fc.Chain(fc.LSTM, ..., fc.Affine), T)`` (one generated loop, the
  step inlined and its input projections hoisted; also timed with the old per-step template,
  ``sequences.INLINE[0] = False``), ``pullback``,
  ``fc.grad(fc.logitcrossentropy, ...)``, ``back``, ``update(Adam)``; the same through
  ``fc.train_step``; and the same network with each layer's time loop written in its
  ``forward`` (:class:`LSTMLayer`), through ``fc.train_step``: a loop region, its input
  projection hoisted by the compiler;
- hand-written NumPy, two ways: the same per-step structure as the generated code
  ("per step"), and with the input projection ``x @ Wx`` and its gradients hoisted
  out of the time loop as one big matmul each ("hoisted") — what a careful person writes;
- PyTorch eager ``nn.LSTM`` + ``nn.Linear`` + ``torch.optim.Adam``.

After timing (so that the first call includes the compile), the hand-written
gradients are checked against flux_compile's (float64, same weights): every
contender computes the same thing.

    python benchmarks/lstm.py [--dtype float32|float64] [--threads 1 2] [--repeats 5]

BLAS threads are pinned with threadpoolctl when it is installed (and PyTorch's with
``torch.set_num_threads``). Times are the best of ``rounds`` means of ``repeats`` steps, the contenders taking turns.
"""
import argparse
import contextlib
import os
import sys
import time

import numpy as np

import flux_compile as fc
import flux_compile.init
from flux_compile import sequences

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mlp import race  # noqa: E402  (the contenders take turns in every round)


# ------------------------------------------------------------------------------
# flux_compile


def fc_model(n_chars, hidden, layers, dtype, seed=0):
    """``layers`` fc.LSTMs and an fc.Affine read-out, every Param in ``dtype``."""
    flux_compile.init.seed(seed)
    sizes = [n_chars] + [hidden] * layers
    model = fc.Chain(*[fc.LSTM(a, b) for a, b in zip(sizes[:-1], sizes[1:])], fc.Affine(hidden, n_chars))
    for p in fc.params(model):
        p.value = p.value.astype(dtype)
        p.grad = np.zeros_like(p.value)
    return model


def fc_step(model, seq, opt, xs, labels):
    """One training step of the unrolled model; returns the loss."""
    model.reset()
    logits, back = seq.pullback(xs)
    n = logits.shape[-1]
    loss, (dlogits, _) = fc.grad(fc.logitcrossentropy, logits.reshape(-1, n), labels)
    back(dlogits.reshape(logits.shape), input_grads=False)    # no gradient for the one-hot input
    model.update(opt)
    return loss


@fc.net
class LSTMLayer:
    """One LSTM layer over a whole (batch, time, features) sequence, its time loop written in
    ``forward``: a loop region, whose input projection ``x[:, t] @ Wx + b`` flux_compile
    hoists out of the loop (one matmul for all steps, forward and backward)."""

    def __init__(self, cell):
        self.Wx, self.Wh, self.b = cell.Wx.value.copy(), cell.Wh.value.copy(), cell.b.value.copy()
        self.h0, self.c0 = cell.h.value.copy(), cell.c.value.copy()     # trainable initial state
        self.n_h = cell.n_h

    def forward(self, xs):
        n = self.n_h
        h = np.zeros((xs.shape[0], n), dtype=xs.dtype) + self.h0
        c = np.zeros((xs.shape[0], n), dtype=xs.dtype) + self.c0
        hs = []
        for t in range(xs.shape[1]):
            z = xs[:, t] @ self.Wx + h @ self.Wh + self.b
            i = fc.sigmoid(z[:, :n])
            f = fc.sigmoid(z[:, n:2 * n])
            g = np.tanh(z[:, 2 * n:3 * n])
            o = fc.sigmoid(z[:, 3 * n:])
            c = f * c + i * g
            h = o * np.tanh(c)
            hs.append(h)
        return np.stack(hs, axis=1)


def loop_model(model):
    """The same network (same weights) with each layer's time loop in its forward."""
    readout = model.layers[-1]
    affine = fc.Affine(*readout.W.shape)
    affine.W.value, affine.b.value = readout.W.value.copy(), readout.b.value.copy()
    for p in fc.params(affine):
        p.grad = np.zeros_like(p.value)
    return fc.Chain(*[LSTMLayer(cell) for cell in model.layers[:-1]], affine)


# ------------------------------------------------------------------------------
# hand-written NumPy


def seq_loss(logits, labels):
    """Cross-entropy of every time step's logits (batch, time, chars) against flat labels."""
    return fc.logitcrossentropy(logits.reshape(-1, logits.shape[-1]), labels)


def ts_step(model, step, xs, labels):
    """One training step through ``fc.train_step`` (forward, loss, backward, Adam in one function)."""
    model.reset()
    return step(xs, target=labels)


def sigmoid(z):
    return 0.5 * (np.tanh(0.5 * z) + 1)


def lstm_forward(xs, Wx, Wh, b, h, c, hoist):
    """Forward through time of one LSTM layer; returns hs (B, T, H) and the tape for backward."""
    B, T, _ = xs.shape
    H = Wh.shape[0]
    if hoist:
        xz = xs @ Wx + b                                   # (B, T, 4H): one matmul for all steps
    hs = np.empty((B, T, H), dtype=xs.dtype)
    tape = []
    for t in range(T):
        z = (xz[:, t] if hoist else xs[:, t] @ Wx + b) + h @ Wh
        i, f = sigmoid(z[:, :H]), sigmoid(z[:, H:2 * H])
        g, o = np.tanh(z[:, 2 * H:3 * H]), sigmoid(z[:, 3 * H:])
        c_prev, h_prev = c, h
        c = f * c + i * g
        tc = np.tanh(c)
        h = o * tc
        hs[:, t] = h
        tape.append((h_prev, c_prev, i, f, g, o, tc))
    return hs, tape


def lstm_backward(dhs, xs, Wx, Wh, tape, grads, hoist, input_grad=True):
    """Backprop through time of one layer: adds into ``grads = [dWx, dWh, db, dh0, dc0]``; returns dxs
    (None without ``input_grad``)."""
    B, T, H = dhs.shape
    dWx, dWh, db, dh0, dc0 = grads
    dh_next = np.zeros((B, H), dtype=dhs.dtype)
    dc_next = np.zeros((B, H), dtype=dhs.dtype)
    dz_all = np.empty((B, T, 4 * H), dtype=dhs.dtype)
    dxs = np.empty_like(xs) if input_grad and not hoist else None
    for t in reversed(range(T)):
        h_prev, c_prev, i, f, g, o, tc = tape[t]
        dh = dhs[:, t] + dh_next
        dc = dc_next + dh * o * (1 - tc * tc)
        dz = dz_all[:, t]
        dz[:, :H] = dc * g * i * (1 - i)
        dz[:, H:2 * H] = dc * c_prev * f * (1 - f)
        dz[:, 2 * H:3 * H] = dc * i * (1 - g * g)
        dz[:, 3 * H:] = dh * tc * o * (1 - o)
        dc_next = dc * f
        dh_next = dz @ Wh.T
        dWh += h_prev.T @ dz
        if not hoist:
            dWx += xs[:, t].T @ dz
            db += dz.sum(axis=0, keepdims=True)
            if input_grad:
                dxs[:, t] = dz @ Wx.T
    if hoist:
        flat = dz_all.reshape(B * T, 4 * H)
        dWx += xs.reshape(B * T, -1).T @ flat
        db += flat.sum(axis=0, keepdims=True)
        dxs = dz_all @ Wx.T if input_grad else None
    dh0 += dh_next.sum(axis=0, keepdims=True)           # the initial state is a (1, H) Param
    dc0 += dc_next.sum(axis=0, keepdims=True)
    return dxs


class NumpyLSTM:
    """The same model as plain arrays: per layer [Wx, Wh, b, h0, c0], then [Wo, bo]; Adam by hand."""

    def __init__(self, model, hoist):
        self.layers = [[p.value.copy() for p in (l.Wx, l.Wh, l.b, l.h, l.c)] for l in model.layers[:-1]]
        self.Wo, self.bo = model.layers[-1].W.value.copy(), model.layers[-1].b.value.copy()
        self.hoist = hoist
        self.params = [p for layer in self.layers for p in layer] + [self.Wo, self.bo]
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.t = 0

    def gradients(self, xs, labels):
        """(loss, gradients in ``self.params`` order) for one-hot ``xs`` (B, T, N), labels (B*T,)."""
        grads = [np.zeros_like(p) for p in self.params]
        B, T, _ = xs.shape
        inputs, tapes, x = [], [], xs
        for Wx, Wh, b, h0, c0 in self.layers:
            inputs.append(x)
            x, tape = lstm_forward(x, Wx, Wh, b, np.repeat(h0, B, axis=0), np.repeat(c0, B, axis=0), self.hoist)
            tapes.append(tape)
        H = x.shape[-1]
        hflat = x.reshape(B * T, H)
        logits = hflat @ self.Wo + self.bo
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        rows = np.arange(B * T)
        loss = -np.mean(np.log(p[rows, labels]))
        p[rows, labels] -= 1
        dlogits = p / (B * T)
        grads[-2] += hflat.T @ dlogits
        grads[-1] += dlogits.sum(axis=0, keepdims=True)
        dx = (dlogits @ self.Wo.T).reshape(B, T, H)
        for k in reversed(range(len(self.layers))):
            dx = lstm_backward(dx, inputs[k], *self.layers[k][:2], tapes[k], grads[5 * k: 5 * k + 5], self.hoist,
                               input_grad=k > 0)       # none for the one-hot input
        return loss, grads

    def step(self, xs, labels, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
        """Gradients, then Adam (as fc.optim.Adam and torch.optim.Adam); returns the loss."""
        loss, grads = self.gradients(xs, labels)
        self.t += 1
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= lr * (m / (1 - b1 ** self.t)) / (np.sqrt(v / (1 - b2 ** self.t)) + eps)
        return loss


def check_gradients(n_chars, hidden, layers, batch, T):
    """Hand-written gradients (both ways) equal flux_compile's, in float64; returns the worst relative error."""
    rng = np.random.default_rng(1)
    model = fc_model(n_chars, hidden, layers, np.float64)
    for p in fc.params(model):                           # nonzero initial state and biases
        p.value[...] += 0.1 * rng.standard_normal(p.shape)
    ids = rng.integers(0, n_chars, (batch, T + 1))
    xs, labels = np.eye(n_chars)[ids[:, :-1]], ids[:, 1:].reshape(-1)
    logits, back = fc.unroll(model, T).pullback(xs)
    loss, (dl, _) = fc.grad(fc.logitcrossentropy, logits.reshape(-1, n_chars), labels)
    back(dl.reshape(logits.shape), input_grads=False)
    want = [p.grad for p in fc.params(model)]
    looped = loop_model(model)
    y, back = looped.pullback(xs)
    _, (dl, _) = fc.grad(fc.logitcrossentropy, y.reshape(-1, n_chars), labels)
    back(dl.reshape(y.shape))
    for p, w in zip(fc.params(looped), want):           # the loop model computes the same
        assert np.allclose(p.grad, w, rtol=1e-9, atol=1e-12)
    worst = 0.0
    for hoist in (False, True):
        hand_loss, got = NumpyLSTM(model, hoist).gradients(xs, labels)
        assert np.isclose(hand_loss, loss, rtol=1e-12), (hand_loss, loss)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            err = np.max(np.abs(g - w)) / (np.max(np.abs(w)) + 1e-300)
            assert err < 1e-9, err
            worst = max(worst, err)
    return worst


# ------------------------------------------------------------------------------
# PyTorch


def torch_step_factory(model, xs, labels, threads):
    """A PyTorch eager step with the same weights, or None when torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    dtype = torch.float32 if xs.dtype == np.float32 else torch.float64
    lstms, readout = model.layers[:-1], model.layers[-1]
    n_in, hidden = lstms[0].Wx.shape[0], lstms[0].n_h
    net = torch.nn.LSTM(n_in, hidden, num_layers=len(lstms), batch_first=True, dtype=dtype)
    lin = torch.nn.Linear(hidden, readout.W.shape[1], dtype=dtype)
    with torch.no_grad():
        for k, l in enumerate(lstms):
            getattr(net, f"weight_ih_l{k}").copy_(torch.from_numpy(l.Wx.value.T.copy()))
            getattr(net, f"weight_hh_l{k}").copy_(torch.from_numpy(l.Wh.value.T.copy()))
            getattr(net, f"bias_ih_l{k}").copy_(torch.from_numpy(l.b.value.ravel().copy()))
            getattr(net, f"bias_hh_l{k}").zero_()
        lin.weight.copy_(torch.from_numpy(readout.W.value.T.copy()))
        lin.bias.copy_(torch.from_numpy(readout.b.value.ravel().copy()))
    params = list(net.parameters()) + list(lin.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    xt, yt = torch.from_numpy(xs), torch.from_numpy(labels)

    def step():
        opt.zero_grad()
        out, _ = net(xt)                                 # zero initial state (not trained here)
        loss = torch.nn.functional.cross_entropy(lin(out).reshape(-1, lin.out_features), yt)
        loss.backward()
        opt.step()
    return step


# ------------------------------------------------------------------------------


def blas_threads(n):
    """Pin NumPy's BLAS to ``n`` threads (a no-op context without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext(), "library default (install threadpoolctl to pin)"
    return threadpool_limits(limits=n, user_api="blas"), str(n)


def run(n_chars, hidden, layers, batch, T, dtype, threads, repeats, rounds):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, n_chars, (batch, T + 1))
    xs = np.eye(n_chars, dtype=dtype)[ids[:, :-1]]
    labels = ids[:, 1:].reshape(-1)
    limit, shown = blas_threads(threads)
    with limit:
        model = fc_model(n_chars, hidden, layers, dtype)
        hand = {hoist: NumpyLSTM(model, hoist) for hoist in (False, True)}
        seq, opt = fc.unroll(model, T), fc.optim.Adam(1e-3)
        t0 = time.perf_counter()
        fc_step(model, seq, opt, xs, labels)
        first = time.perf_counter() - t0
        tstep = torch_step_factory(model, xs, labels, threads)
        model4 = fc_model(n_chars, hidden, layers, dtype)       # the old per-step template of fc.unroll
        seq4, opt4 = fc.unroll(model4, T), fc.optim.Adam(1e-3)
        sequences.INLINE[0] = False
        try:
            t0 = time.perf_counter()
            fc_step(model4, seq4, opt4, xs, labels)
            first4 = time.perf_counter() - t0
        finally:
            sequences.INLINE[0] = True
        model2 = fc_model(n_chars, hidden, layers, dtype)
        step = fc.train_step(fc.unroll(model2, T), seq_loss, fc.optim.Adam(1e-3))
        ts_step(model2, step, xs, labels)
        model3 = loop_model(model2)
        step3 = fc.train_step(model3, seq_loss, fc.optim.Adam(1e-3))
        step3(xs, target=labels)
        fns = {"numpy": lambda: hand[False].step(xs, labels),
               "hoisted": lambda: hand[True].step(xs, labels),
               "fc": lambda: fc_step(model, seq, opt, xs, labels),
               "template": lambda: fc_step(model4, seq4, opt4, xs, labels),
               "train_step": lambda: ts_step(model2, step, xs, labels),
               "loop": lambda: step3(xs, target=labels)}
        if tstep is not None:
            fns["torch"] = tstep
        times = race(fns, repeats, rounds)
    t_per, t_hoist, t_fc, t_torch = times["numpy"], times["hoisted"], times["fc"], times.get("torch")
    print(f"LSTM train step: {layers} layer(s) of {hidden}, one-hot {n_chars}, batch {batch}, "
          f"{T} steps, {np.dtype(dtype).name}, BLAS threads {shown}"
          + (f", torch threads {threads}" if tstep is not None else ""))
    print(f"  first call (compile + step)  : {first * 1e3:8.1f} ms")
    print(f"  hand-written NumPy, per step : {t_per * 1e3:8.1f} ms/step   (reference)")
    print(f"  hand-written NumPy, hoisted  : {t_hoist * 1e3:8.1f} ms/step   ratio {t_hoist / t_per:5.2f}x")
    print(f"  flux_compile                 : {t_fc * 1e3:8.1f} ms/step   ratio {t_fc / t_per:5.2f}x"
          f"   ({t_fc / t_hoist:.2f}x the hoisted)")
    t_tpl = times["template"]
    print(f"  flux_compile, per-step templ.: {t_tpl * 1e3:8.1f} ms/step   ratio {t_tpl / t_per:5.2f}x"
          f"   (fc.unroll before it became one loop; first call {first4 * 1e3:.1f} ms)")
    t_ts = times["train_step"]
    print(f"  flux_compile fc.train_step   : {t_ts * 1e3:8.1f} ms/step   ratio {t_ts / t_per:5.2f}x")
    t_loop = times["loop"]
    print(f"  flux_compile, loop in forward: {t_loop * 1e3:8.1f} ms/step   ratio {t_loop / t_per:5.2f}x"
          f"   ({t_loop / t_hoist:.2f}x the hoisted; target <= 0.75x)")
    if t_torch is not None:
        print(f"  PyTorch eager                : {t_torch * 1e3:8.1f} ms/step   ratio {t_torch / t_per:5.2f}x")
    return dict(times, first=first, first_template=first4)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chars", type=int, default=65)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=50)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    for threads in a.threads:
        run(a.chars, a.hidden, a.layers, a.batch, a.seq_len, np.dtype(a.dtype).type, threads,
            a.repeats, a.rounds)
    err = check_gradients(11, 7, a.layers, 3, 5)
    print(f"hand-written gradients match flux_compile's (float64, worst relative error {err:.1e})")


if __name__ == "__main__":
    main()
