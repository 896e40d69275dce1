"""Hoisting a recurrence's input projection out of its loop region (flux_compile.loophoist).

``x[:, t] @ Wx`` inside a loop becomes one ``x @ Wx`` before the loop, indexed per trip; the
backward adds each trip's row adjoint in place and forms ``dWx`` / ``dx`` once after the loop.
Every case is checked three ways: against autograd, against central finite differences
(float64), and against the same function compiled with the hoisting switched off."""
import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad as ag_grad

import flux_compile as fc
from numeric import numgrad
from flux_compile import cache as fc_cache
from flux_compile import loophoist, traceloop
from flux_compile.ir import CALL, Graph, INPUT, PACK, CONST, PARAM, Node
from flux_compile.rules.helpers import getitem

rng = np.random.default_rng(11)


def unhoisted(monkeypatch):
    monkeypatch.setattr(traceloop.Loops, "_hoist_projections", lambda self, body: None)


# Each factory makes a fresh function (a fresh cache entry) written with ``xnp``.

def rnn_batch_time(xnp):            # x: (batch, time, features), x[:, t]
    def f(x, Wx, Wh, b):
        h = xnp.zeros((x.shape[0], Wh.shape[0]))
        for t in range(x.shape[1]):
            h = xnp.tanh(x[:, t] @ Wx + h @ Wh + b)
        return xnp.sum(h * h)
    return f


def rnn_time_batch(xnp):            # x: (time, batch, features), x[t]
    def f(x, Wx, Wh, b):
        h = xnp.zeros((x.shape[1], Wh.shape[0]))
        for t in range(x.shape[0]):
            h = xnp.tanh(x[t] @ Wx + b + h @ Wh)
        return xnp.sum(h * h)
    return f


def rnn_rows(xnp):                  # for row in x: 1-D rows
    def f(x, Wx, Wh, b):
        h = xnp.zeros(Wh.shape[0])
        for row in x:
            h = xnp.tanh(row @ Wx + h @ Wh + b)
        return xnp.sum(h * h)
    return f


def rnn_matrix_first(xnp):          # Wx @ x[t] with x (time, features): column-vector style
    def f(x, Wx, Wh, b):
        h = xnp.zeros(Wh.shape[0])
        for t in range(x.shape[0]):
            h = xnp.tanh(Wx @ x[t] + Wh @ h + b)
        return xnp.sum(h * h)
    return f


def rnn_matrix_first_batched(xnp):  # Wx @ x[t] with x (time, features, batch)
    def f(x, Wx, Wh, b):
        h = xnp.zeros((Wh.shape[0], x.shape[2]))
        for t in range(x.shape[0]):
            h = xnp.tanh(Wx @ x[t] + Wh @ h)
        return xnp.sum(h * h) + 0.0 * xnp.sum(b)
    return f


def rnn_wx_also_outside(xnp):       # Wx is read after the loop too
    def f(x, Wx, Wh, b):
        h = xnp.zeros((x.shape[0], Wh.shape[0]))
        for t in range(x.shape[1]):
            h = xnp.tanh(x[:, t] @ Wx + h @ Wh + b)
        return xnp.sum(h * h) + xnp.sum(x[:, 0] @ Wx)
    return f


def lstm_like(xnp):                 # one projection sliced into four gates
    def f(x, Wx, Wh, b):
        n = Wh.shape[0]
        h = xnp.zeros((x.shape[0], n))
        c = xnp.zeros((x.shape[0], n))
        for t in range(x.shape[1]):
            z = x[:, t] @ Wx + h @ Wh + b
            i = xnp.tanh(z[:, :n])
            g = xnp.tanh(z[:, 2 * n:3 * n])
            c = c * xnp.tanh(z[:, n:2 * n]) + i * g
            h = xnp.tanh(z[:, 3 * n:]) * xnp.tanh(c)
        return xnp.sum(h * h)
    return f


# (factory, x shape, Wx shape, Wh shape, b shape)
CASES = {
    "x[:, t]": (rnn_batch_time, (3, 6, 4), (4, 5), (5, 5), (1, 5)),
    "x[t]": (rnn_time_batch, (6, 3, 4), (4, 5), (5, 5), (5,)),
    "for row in x": (rnn_rows, (40, 4), (4, 5), (5, 5), (5,)),
    "Wx @ x[t]": (rnn_matrix_first, (6, 4), (5, 4), (5, 5), (5,)),
    "Wx @ x[t] batched": (rnn_matrix_first_batched, (6, 4, 3), (5, 4), (5, 5), (5,)),
    "Wx also outside": (rnn_wx_also_outside, (3, 6, 4), (4, 5), (5, 5), (1, 5)),
    "batch of 1": (rnn_batch_time, (1, 6, 4), (4, 5), (5, 5), (1, 5)),
    "one trip": (rnn_batch_time, (3, 1, 4), (4, 5), (5, 5), (1, 5)),
    "zero trips": (rnn_batch_time, (3, 0, 4), (4, 5), (5, 5), (1, 5)),
    "lstm-like gates": (lstm_like, (2, 5, 3), (3, 8), (2, 8), (1, 8)),
}


def _args(case, dtype=np.float64):
    _, xs, ws, hs, bs = CASES[case]
    return [(rng.normal(size=s) * 0.5).astype(dtype) for s in (xs, ws, hs, bs)]


def _grads(f, args):
    value, grads = fc.grad(f, *[a.copy() for a in args])
    inference = fc_cache.compile_function(f, args).forward
    assert np.allclose(inference(*[a.copy() for a in args]), value, rtol=1e-12, atol=1e-12)
    return value, grads


@pytest.mark.parametrize("case", sorted(CASES))
def test_hoisted_gradients_equal_autograd_and_finite_differences(case):
    factory = CASES[case][0]
    args = _args(case)
    f = factory(np)
    value, grads = _grads(f, args)
    assert np.isclose(value, factory(anp)(*args), rtol=1e-12)
    for i in range(4):
        want = ag_grad(factory(anp), i)(*args)
        np.testing.assert_allclose(grads[i], want, rtol=1e-9, atol=1e-9, err_msg=f"{case} arg {i}")

        def fi(z, i=i):
            a = list(args)
            a[i] = z
            return f(*a)
        np.testing.assert_allclose(grads[i], numgrad(fi, args[i].copy()), atol=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_hoisted_equals_unhoisted(case, monkeypatch):
    factory = CASES[case][0]
    args = _args(case)
    hoisted_value, hoisted = _grads(factory(np), args)
    unhoisted(monkeypatch)
    value, grads = _grads(factory(np), args)
    assert np.isclose(hoisted_value, value, rtol=1e-12)
    for a, b in zip(hoisted, grads):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


HOISTED = ["x[:, t]", "x[t]", "for row in x", "Wx @ x[t]", "Wx @ x[t] batched", "Wx also outside",
           "lstm-like gates"]


@pytest.mark.parametrize("case", HOISTED)
def test_the_projection_runs_once_before_the_loop(case):
    factory = CASES[case][0]
    args = _args(case)
    f = factory(np)
    fc.grad(f, *args)
    for which in ("forward", "backward"):
        src = fc.source(f, which, inputs=tuple(args))
        assert "_all" in src, src
    fwd = fc.source(f, "forward", inputs=tuple(args))
    before, loop = fwd.split("\n    for ", 1)
    assert "Wx" in before.split("_all =")[1].splitlines()[0]
    code = [line for line in loop.splitlines() if line.startswith("        ") and not line.strip().startswith("#")]
    assert not any("@ Wx" in line or "Wx @" in line for line in code), fwd


def test_backward_adds_rows_in_place_and_forms_dWx_once_after_the_loop():
    args = _args("x[:, t]")
    f = rnn_batch_time(np)
    fc.grad(f, *args)
    src = fc.source(f, "backward", inputs=tuple(args))
    head, loop = src.split("\n    for ", 1)
    body = [line for line in loop.splitlines() if line.startswith("        ")]
    after = [line for line in loop.splitlines() if line.startswith("    ") and not line.startswith("        ")]
    assert "getitem_grad" not in src
    assert any("dx_Wx_all[" in line and "+=" in line for line in body), src
    assert not any("matmul_grad" in line and "Wx_all" in line for line in body), src
    assert sum("matmul_grad_b(dx_Wx_all, x" in line for line in after) == 1, src


def rnn_any_dtype():
    def f(x, Wx, Wh, b):
        h = np.zeros((x.shape[0], Wh.shape[0]), dtype=x.dtype)
        for t in range(x.shape[1]):
            h = np.tanh(x[:, t] @ Wx + h @ Wh + b)
        return np.sum(h * h)
    return f


def test_float32_hoisted_loop_stays_float32_and_matches_float64():
    args64 = _args("x[:, t]")
    args32 = [a.astype(np.float32) for a in args64]
    v32, g32 = fc.grad(rnn_any_dtype(), *args32)
    v64, g64 = fc.grad(rnn_any_dtype(), *args64)
    assert "x_Wx_all" in fc.source(rnn_any_dtype(), "forward", inputs=tuple(args32))
    assert np.asarray(v32).dtype == np.float32
    for a, b in zip(g32, g64):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def weights_written_in_loop(xnp):       # W changes from trip to trip: must not hoist
    def f(x, Wx, Wh, b):
        h = xnp.zeros((x.shape[0], Wh.shape[0]))
        W = Wx
        for t in range(x.shape[1]):
            h = xnp.tanh(x[:, t] @ W + h @ Wh + b)
            W = W * 0.9
        return xnp.sum(h * h)
    return f


def input_written_in_loop(xnp):         # x changes from trip to trip: must not hoist
    def f(x, Wx, Wh, b):
        h = xnp.zeros((x.shape[0], Wh.shape[0]))
        for t in range(x.shape[1]):
            h = xnp.tanh(x[:, t] @ Wx + h @ Wh + b)
            x = x * 0.5 + 0.1
        return xnp.sum(h * h)
    return f


def picks_features_not_time(xnp):       # x[:, :, t] @ ... picks the contracted axis: no hoist
    def f(x, Wx, Wh, b):
        h = xnp.zeros((x.shape[0], Wh.shape[0]))
        for t in range(x.shape[2]):
            h = xnp.tanh(x[:, :, t] @ Wx[:x.shape[1]] + h @ Wh + b)
        return xnp.sum(h * h)
    return f


@pytest.mark.parametrize("factory", [weights_written_in_loop, input_written_in_loop, picks_features_not_time])
def test_not_hoisted_when_not_invariant_and_still_right(factory):
    args = _args("x[:, t]")
    if factory is picks_features_not_time:
        args[0] = rng.normal(size=(3, 4, 40))
    f = factory(np)
    value, grads = fc.grad(f, *[a.copy() for a in args])
    assert "_all" not in fc.source(f, "forward", inputs=tuple(args))
    for i in range(4):
        np.testing.assert_allclose(grads[i], ag_grad(factory(anp), i)(*args), rtol=1e-9, atol=1e-9)


def captured_rows_without_matmul(xnp):
    def f(x, w):
        h = xnp.zeros(x.shape[0])
        for t in range(x.shape[1]):
            h = xnp.tanh(x[:, t] * w + h)
        return xnp.sum(h)
    return f


def test_a_captured_arrays_row_adjoint_is_added_in_place():
    """No projection at all: ``x[:, t]`` read per trip; dx is written row by row (no
    zero-filled array of x's whole shape per trip, which made the backward O(T^2))."""
    x, w = rng.normal(size=(3, 50)), rng.normal(size=3)
    f = captured_rows_without_matmul(np)
    _, (dx, dw) = fc.grad(f, x.copy(), w.copy())
    np.testing.assert_allclose(dx, ag_grad(captured_rows_without_matmul(anp), 0)(x, w), rtol=1e-10)
    np.testing.assert_allclose(dw, ag_grad(captured_rows_without_matmul(anp), 1)(x, w), rtol=1e-10)
    src = fc.source(f, "backward", inputs=(x, w))
    assert "getitem_grad" not in src and "dx[" in src and "+=" in src, src


@fc.net
class RNNEncoder:
    def __init__(self, n_in, n_h):
        self.Wx = fc.initn(n_in, n_h) * 30
        self.Wh = fc.initn(n_h, n_h) * 30
        self.b = fc.initn(1, n_h) * 30

    def forward(self, x):
        h = np.zeros((x.shape[0], self.Wh.shape[0]))
        for t in range(x.shape[1]):
            h = np.tanh(x[:, t] @ self.Wx + h @ self.Wh + self.b)
        return h


def test_model_with_a_hoisted_loop_passes_gradcheck_and_matches_autograd():
    m = RNNEncoder(3, 4)
    x = rng.normal(size=(2, 37, 3))
    assert fc.gradcheck(m, x).ok
    m.zero_grad()
    y = m(x)
    m.back(np.ones_like(y), x)

    def f(Wx, Wh, b):
        h = anp.zeros((2, 4))
        for t in range(37):
            h = anp.tanh(x[:, t] @ Wx + h @ Wh + b)
        return anp.sum(h)
    vals = [m.Wx.value, m.Wh.value, m.b.value]
    for i, p in enumerate([m.Wx, m.Wh, m.b]):
        np.testing.assert_allclose(p.grad, ag_grad(f, i)(*vals), rtol=1e-9, atol=1e-12)
    assert "x_Wx_all = x @ self.Wx.value + self.b.value" in fc.source(m, "forward")


# -- the pass on its own ------------------------------------------------------------------

def _body_with_projection(index_items, x_shape, w_shape=(4, 5), matrix_first=False):
    """A body graph reading ``x[index] @ W`` (x and W from outside)."""
    outer = Graph("outer")
    x = outer.add(Node(INPUT, name="x", diff=True))
    x.meta["shape"] = x_shape
    w = Node(PARAM, name="W", base="self", path=("W",), diff=True)
    w.meta["shape"] = w_shape
    body = Graph("body")
    t = body.add(Node(INPUT, name="t"))
    t.meta["shape"] = ()
    items = [body.add(Node(CONST, value=slice(None))) if i == ":" else t for i in index_items]
    index = body.add(Node(PACK, items)) if len(items) > 1 else items[0]
    step = body.add(Node(CALL, (x, index), fn=getitem, diff=True))
    mm = body.add(Node(CALL, (w, step) if matrix_first else (step, w), fn=np.matmul, diff=True))
    body.outputs = [mm]
    return outer, body, x, mm


def _run_pass(outer, body):
    made = []

    def make(fn, args, loc):
        n = outer.add(Node(CALL, args, fn=fn, diff=True))
        made.append(n)
        return n

    def copy(a):
        return outer.add(Node(a.op, name=a.name, base=a.base, path=a.path, diff=a.diff))
    return loophoist.hoist_projections(body, make, copy), made


@pytest.mark.parametrize("index,x_shape,matrix_first,hoisted", [
    ((":", "t"), (3, 6, 4), False, True),
    (("t",), (6, 3, 4), False, True),
    (("t",), (6, 4), False, True),
    ((":", ":", "t"), (3, 4, 6), False, False),     # the contracted axis
    (("t",), (6, 4), True, True),                   # W @ x[t], written x @ W.T
    ((":", "t"), (4, 6), True, True),               # W @ x[:, t]: columns
    ((":", "t"), (4, 6, 3), True, False),           # the contracted axis of W @ x
])
def test_pass_hoists_only_a_batch_axis_pick(index, x_shape, matrix_first, hoisted):
    outer, body, x, mm = _body_with_projection(index, x_shape, (5, 4) if matrix_first else (4, 5),
                                               matrix_first)
    count, made = _run_pass(outer, body)
    assert count == (1 if hoisted else 0)
    if hoisted:
        assert mm.fn is getitem and mm.args[0] is made[-1]
        assert made[-1].name == "x_W_all"
        assert all(not (n.op == CALL and n.fn is getitem and n.args[0] is x) for n in body.nodes)
    else:
        assert mm.fn is np.matmul and not made


@fc.net
class LoopClassifier:
    """An LSTM-like recurrence as a loop, then a read-out: what fc.train_step fuses."""

    def __init__(self, n_in, n_h, n_out):
        self.Wx = fc.initn(n_in, 4 * n_h) * 30
        self.Wh = fc.initn(n_h, 4 * n_h) * 30
        self.b = fc.initn(1, 4 * n_h) * 30
        self.Wo = fc.initn(n_h, n_out) * 30
        self.n_h = n_h

    def forward(self, x):
        n = self.n_h
        h = np.zeros((x.shape[0], n))
        c = np.zeros((x.shape[0], n))
        for t in range(x.shape[1]):
            z = x[:, t] @ self.Wx + h @ self.Wh + self.b
            c = fc.sigmoid(z[:, n:2 * n]) * c + fc.sigmoid(z[:, :n]) * np.tanh(z[:, 2 * n:3 * n])
            h = fc.sigmoid(z[:, 3 * n:]) * np.tanh(c)
        return h @ self.Wo


def test_train_step_updates_params_whose_gradient_is_summed_inside_a_loop():
    """fc.train_step once updated ``Wh`` (accumulated trip by trip in the loop) with zeros."""
    x, labels = rng.normal(size=(4, 36, 3)), rng.integers(0, 2, 4)
    fused, plain = LoopClassifier(3, 5, 2), LoopClassifier(3, 5, 2)
    for p, q in zip(fc.params(fused), fc.params(plain)):
        q.value[...] = p.value
    step = fc.train_step(fused, fc.logitcrossentropy, fc.optim.SGD(0.5))
    for _ in range(3):
        loss = step(x, target=labels)
        y, back = plain.pullback(x)
        want, (dy, _) = fc.grad(fc.logitcrossentropy, y, labels)
        back(dy)
        plain.update(0.5)
        assert np.isclose(loss, want, rtol=1e-10)
    for p, q in zip(fc.params(fused), fc.params(plain)):
        np.testing.assert_allclose(p.value, q.value, rtol=1e-9, atol=1e-12)
        assert not np.any(p.grad)


def test_known_carried_shapes_leave_no_per_trip_shape_bookkeeping():
    m = LoopClassifier(3, 5, 2)
    y, back = m.pullback(rng.normal(size=(4, 36, 3)))
    back(np.ones_like(y))
    src = fc.source(m, "all")
    loop_lines = [line for line in src.splitlines() if line.startswith("        ")]
    assert not any("_shape" in line or "unbroadcast(" in line for line in loop_lines), src
    assert any("np.concatenate(" in line for line in loop_lines), src


def growing(xnp):                       # the carried value changes shape every trip
    def f(x, w):
        h = x[:, :1] * 0.0
        for t in range(x.shape[1]):
            h = xnp.concatenate([h * w[0], xnp.tanh(x[:, t:t + 1] * w[1])], axis=1)
        return xnp.sum(h * h)
    return f


def broadcast_growing(xnp):             # (1, n) becomes (batch, n) on the first trip
    def f(x, w):
        h = xnp.zeros((1, x.shape[2]))
        for t in range(x.shape[1]):
            h = xnp.tanh(x[:, t] * w + h)
        return xnp.sum(h * h)
    return f


@pytest.mark.parametrize("factory,wshape", [(growing, (2,)), (broadcast_growing, (3,))])
def test_carried_values_that_change_shape_stay_right(factory, wshape):
    x, w = rng.normal(size=(3, 35, 3)), rng.normal(size=wshape)
    _, grads = fc.grad(factory(np), x.copy(), w.copy())
    for i in range(2):
        np.testing.assert_allclose(grads[i], ag_grad(factory(anp), i)(x, w), rtol=1e-9, atol=1e-12)


def windows(xnp):
    def f(x, w):
        h = x[:, :1] * 0.0
        for t in range(x.shape[1] - 1):
            h = xnp.tanh(x[:, t:t + 2] * w + h[:, :1])
        return xnp.sum(h * h)
    return f


def test_a_captured_arrays_window_adjoint_is_added_in_place():
    x, w = rng.normal(size=(3, 40)), rng.normal(size=2)
    _, grads = fc.grad(windows(np), x.copy(), w.copy())
    for i in range(2):
        np.testing.assert_allclose(grads[i], ag_grad(windows(anp), i)(x, w), rtol=1e-9, atol=1e-12)
    body = fc.source(windows(np), "backward", inputs=(x, w)).split("reversed(h_steps):")[1]
    assert "dx[" in body and "+=" in body and "getitem_grad(" not in body.split("dh, dw =")[0].split("dh_1 =")[0]


@fc.net
class TwoLayers:
    """Two recurrent layers: the second reads the first's stacked states, also hoisted."""

    def __init__(self):
        self.W1, self.U1 = fc.initn(3, 4) * 40, fc.initn(4, 4) * 40
        self.W2, self.U2 = fc.initn(4, 5) * 40, fc.initn(5, 5) * 40

    def forward(self, x):
        h = np.zeros((x.shape[0], 4))
        hs = []
        for t in range(x.shape[1]):
            h = np.tanh(x[:, t] @ self.W1 + h @ self.U1)
            hs.append(h)
        xs = np.stack(hs, axis=1)
        g = np.zeros((x.shape[0], 5))
        for t in range(xs.shape[1]):
            g = np.tanh(xs[:, t] @ self.W2 + g @ self.U2)
        return g


def test_a_second_layer_reading_the_first_layers_states_is_hoisted_too():
    m = TwoLayers()
    x = rng.normal(size=(2, 34, 3))
    assert fc.gradcheck(m, x).ok
    src = fc.source(m, "forward")
    assert src.count("_all = ") == 2, src

    def f(W1, U1, W2, U2):
        h, g = anp.zeros((2, 4)), anp.zeros((2, 5))
        hs = []
        for t in range(34):
            h = anp.tanh(x[:, t] @ W1 + h @ U1)
            hs.append(h)
        xs = anp.stack(hs, axis=1)
        for t in range(34):
            g = anp.tanh(xs[:, t] @ W2 + g @ U2)
        return anp.sum(g)
    m.zero_grad()
    y = m(x)
    m.back(np.ones_like(y), x)
    vals = [m.W1.value, m.U1.value, m.W2.value, m.U2.value]
    for i, p in enumerate([m.W1, m.U1, m.W2, m.U2]):
        np.testing.assert_allclose(p.grad, ag_grad(f, i)(*vals), rtol=1e-9, atol=1e-12)


def nested(xnp):                        # x: (sequences, batch, time, features)
    def f(x, Wx, Wh, b):
        total = 0.0
        for s in range(x.shape[0]):
            h = xnp.zeros((x.shape[1], Wh.shape[0]))
            for t in range(x.shape[2]):
                h = xnp.tanh(x[s][:, t] @ Wx + h @ Wh + b)
            total = total + xnp.sum(h * h)
        return total
    return f


def test_hoisting_inside_an_outer_loop():
    x = rng.normal(size=(34, 2, 35, 3)) * 0.5
    args = [x, rng.normal(size=(3, 4)) * 0.5, rng.normal(size=(4, 4)) * 0.5, rng.normal(size=(4,)) * 0.5]
    _, grads = fc.grad(nested(np), *[a.copy() for a in args])
    for i in range(4):
        np.testing.assert_allclose(grads[i], ag_grad(nested(anp), i)(*args), rtol=1e-9, atol=1e-12)
    assert "_all = " in fc.source(nested(np), "forward", inputs=tuple(args))


def _benchmark(name):
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_rnn_classifier_benchmark_contenders_compute_the_same_gradients(kind):
    assert _benchmark("rnn_classifier").check_gradients(kind) < 1e-9


def test_lstm_benchmark_loop_model_matches_unroll_and_hand_written():
    assert _benchmark("lstm").check_gradients(11, 7, 2, 3, 5) < 1e-9


@fc.net
class StepCell:
    def __init__(self):
        self.Wx, self.Wh, self.b = fc.initn(3, 4) * 40, fc.initn(4, 4) * 40, fc.initn(1, 4) * 40

    def forward(self, x, h):
        return np.tanh(x @ self.Wx + h @ self.Wh + self.b)


@fc.net
class CellLoop:
    def __init__(self):
        self.cell, self.Wo = StepCell(), fc.initn(4, 2) * 40

    def forward(self, x):
        h = np.zeros((x.shape[0], 4))
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
        return h @ self.Wo


def test_a_stateless_cell_called_in_a_loop_is_hoisted_when_train_step_flattens_it():
    x, target = rng.normal(size=(3, 35, 3)), rng.normal(size=(3, 2))
    fused, plain = CellLoop(), CellLoop()
    for p, q in zip(fc.params(fused), fc.params(plain)):
        q.value[...] = p.value
    step = fc.train_step(fused, fc.mse, fc.optim.SGD(0.3))
    for _ in range(2):
        loss = step(x, target=target)
        y, back = plain.pullback(x)
        want, (dy, _) = fc.grad(fc.mse, y, target)
        back(dy)
        plain.update(0.3)
        assert np.isclose(loss, want, rtol=1e-10)
    for p, q in zip(fc.params(fused), fc.params(plain)):
        np.testing.assert_allclose(p.value, q.value, rtol=1e-9, atol=1e-12)
    assert "x_Wx_all = x @ model.cell.Wx.value + model.cell.b.value" in str(fc.source(step))
