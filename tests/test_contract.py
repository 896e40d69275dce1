"""Contract smoke test: every name and behaviour in DESIGN.md's "Public contract",
exercised as written there; gradients checked against central finite differences."""
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import flux_compile as fc
from numeric import numgrad
from flux_compile.cli import main as cli_main


@fc.net
class Affine:
    def __init__(self, n_in, n_out, init=fc.initn):
        self.W = init(n_in, n_out)      # float arrays set on a @net become Params
        self.b = init(1, n_out)

    def forward(self, x):               # batch first: x is (batch, n_in)
        return x @ self.W + self.b


@fc.net
class TLP:                              # sub-models are just attributes
    def __init__(self, first, second):
        self.first, self.second = first, second

    def forward(self, x):
        l1 = fc.sigmoid(self.first(x))
        return fc.softmax(self.second(l1))


@fc.net
class Bilinear:
    def __init__(self, n):
        self.W = np.random.default_rng(3).standard_normal((n, n))

    def forward(self, x, z):
        return (x @ self.W) * z


@fc.net
class Counter:
    def __init__(self, n):
        self.W = np.random.default_rng(4).standard_normal((n, n)) * 0.3
        self.h = np.zeros((1, n))

    def forward(self, x):
        self.h = np.tanh(x + self.h @ self.W)
        return self.h


def rng(seed=0):
    return np.random.default_rng(seed)


def param_numgrad(m, p, loss_of_model, eps=1e-6):
    """Finite differences of loss_of_model(m) w.r.t. Param p's value (changed in place)."""
    g = np.zeros_like(p.value)
    for i in np.ndindex(p.value.shape):
        old = p.value[i]
        p.value[i] = old + eps
        fp = loss_of_model(m)
        p.value[i] = old - eps
        fm = loss_of_model(m)
        p.value[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


# ---------------------------------------------------------------- model methods

def make_tlp():
    np.random.seed(0)
    return TLP(Affine(10, 20), Affine(20, 15))


def test_call_back_pullback_update_zero_grad():
    m = make_tlp()
    x = rng(1).standard_normal((4, 10))
    dy = rng(2).standard_normal((4, 15))
    y = m(x)
    assert y.shape == (4, 15) and y.dtype == np.float64
    close(y.sum(axis=1), np.ones(4))
    loss = lambda mm: float((mm(x) * dy).sum())

    dx = m.back(dy, x)
    close(dx, numgrad(lambda xx: float((m(xx) * dy).sum()), x))
    W = m.first.W
    close(W.grad, param_numgrad(m, W, loss))
    close(m.second.b.grad, param_numgrad(m, m.second.b, loss))

    y2, back = m.pullback(x)
    close(y2, y)
    dx2 = back(dy)
    close(dx2, dx)
    close(W.grad, 2 * param_numgrad(m, W, loss))       # accumulates

    before = W.value.copy()
    g = W.grad.copy()
    m.update(0.1)
    close(W.value, before - 0.1 * g)
    assert not np.any(W.grad)

    m.back(dy, x)
    m.zero_grad()
    assert all(not np.any(p.grad) for p in fc.params(m))


def test_back_returns_tuple_for_several_inputs():
    m = Bilinear(3)
    x, z = rng(1).standard_normal((2, 3)), rng(2).standard_normal((2, 3))
    dy = rng(3).standard_normal((2, 3))
    dxz = m.back(dy, x, z)
    assert isinstance(dxz, tuple) and len(dxz) == 2
    close(dxz[0], numgrad(lambda a: float((m(a, z) * dy).sum()), x))
    close(dxz[1], numgrad(lambda a: float((m(x, a) * dy).sum()), z))


@pytest.mark.parametrize("make", [
    lambda: fc.optim.SGD(0.1), lambda: fc.optim.Momentum(0.1), lambda: fc.optim.Nesterov(0.1),
    lambda: fc.optim.Adam(0.01), lambda: fc.optim.AdamW(0.01), lambda: fc.optim.RMSProp(0.01)])
def test_update_with_optimiser_lowers_loss_and_zeros_grads(make):
    m = Affine(3, 2)
    x, t = rng(1).standard_normal((8, 3)), rng(2).standard_normal((8, 2))
    opt = make()
    loss0 = fc.mse(m(x), t)
    for _ in range(30):
        _, back = m.pullback(x)
        back(2 * (m(x) - t) / t.size)
        m.update(opt)
        assert all(not np.any(p.grad) for p in fc.params(m))
    assert fc.mse(m(x), t) < loss0


def test_sgd_optimiser_equals_update_lr():
    a, b = Affine(3, 2), Affine(3, 2)
    b.W.value[...] = a.W.value
    b.b.value[...] = a.b.value
    x, dy = rng(1).standard_normal((4, 3)), rng(2).standard_normal((4, 2))
    a.back(dy, x)
    b.back(dy, x)
    a.update(0.1)
    b.update(fc.optim.SGD(0.1))
    close(a.W.value, b.W.value, 1e-12)


# ---------------------------------------------------------------- Params

def test_param_behaves_like_array():
    for ctor in (fc.Param, fc.param):
        p = ctor(np.arange(6.0).reshape(2, 3))
        assert p.value.shape == (2, 3)
        assert p.grad.shape == (2, 3) and p.grad.dtype == p.value.dtype and not np.any(p.grad)
        assert p.trainable
        assert p.shape == (2, 3) and p.dtype == np.float64
        close(np.asarray(p), np.arange(6.0).reshape(2, 3))
        close(p + 1, np.arange(6.0).reshape(2, 3) + 1)
        close(2 * p, 2 * np.arange(6.0).reshape(2, 3))
    p32 = fc.Param(np.ones(3, np.float32))
    assert p32.grad.dtype == np.float32


@fc.net
class WithConsts:
    def __init__(self):
        self.W = np.ones((3, 2))
        self.scale = fc.const(np.full((1, 2), 2.0))
        self.idx = np.array([0, 2])
        self.mask = np.array([True, False, True])

    def forward(self, x):
        return (x @ self.W) * self.scale


def test_const_int_and_bool_arrays_are_not_params():
    m = WithConsts()
    ps = fc.params(m)
    assert len(ps) == 1 and ps[0] is m.W
    x = rng(1).standard_normal((2, 3))
    close(m(x), (x @ np.ones((3, 2))) * 2)


@fc.net
class Shared:
    def __init__(self):
        self.a = Affine(3, 3)
        self.b = Affine(3, 3)
        self.b.W = self.a.W

    def forward(self, x):
        return self.b(self.a(x))


def test_params_order_and_sharing():
    m = make_tlp()
    ps = fc.params(m)
    assert [id(p) for p in ps] == [id(m.first.W), id(m.first.b), id(m.second.W), id(m.second.b)]
    assert [id(p) for p in fc.params(m)] == [id(p) for p in ps]      # deterministic
    s = Shared()
    ps = fc.params(s)
    assert len(ps) == 3 and sum(p is s.a.W for p in ps) == 1
    x, dy = rng(1).standard_normal((2, 3)), rng(2).standard_normal((2, 3))
    s.back(dy, x)
    close(s.a.W.grad, param_numgrad(s, s.a.W, lambda mm: float((mm(x) * dy).sum())))


# ---------------------------------------------------------------- introspection

@pytest.mark.parametrize("which", ["forward", "backward", "update", "all"])
def test_source_each_which(which):
    m = make_tlp()
    m(rng(1).standard_normal((2, 10)))
    # the update step is per instance; a class is refused with a clear TypeError
    for target in (m, TLP) if which != "update" else (m,):
        text = fc.source(target, which=which)
        assert isinstance(text, str) and "def " in text
    if which == "update":
        with pytest.raises(TypeError, match="instance"):
            fc.source(TLP, which="update")
    assert fc.source(m) == fc.source(m, which="backward")


def test_graph_printable_and_dot():
    m = make_tlp()
    m(rng(1).standard_normal((2, 10)))
    for target in (m, TLP):
        g = fc.graph(target)
        assert "sigmoid" in str(g) or "softmax" in str(g)
        assert "digraph" in g.to_dot()


# ---------------------------------------------------------------- fc.grad / update

def test_grad_of_function_and_model():
    def f(a, b):
        return np.sum(np.tanh(a) * b)
    a, b = rng(1).standard_normal((3, 2)), rng(2).standard_normal((3, 2))
    v, (ga, gb) = fc.grad(f, a, b)
    close(v, f(a, b))
    close(ga, numgrad(lambda t: f(t, b), a))
    close(gb, numgrad(lambda t: f(a, t), b))

    m = make_tlp()
    x = rng(3).standard_normal((4, 10))
    w = rng(4).standard_normal((4, 15))

    def loss(model, x):
        return np.sum(model(x) * w)
    v, (gm, gx) = fc.grad(loss, m, x)
    assert isinstance(gm, dict)
    assert set(gm) == {("first", "W"), ("first", "b"), ("second", "W"), ("second", "b")}
    close(gm[("first", "W")], param_numgrad(m, m.first.W, lambda mm: float(loss(mm, x))))
    close(gx, numgrad(lambda t: float(loss(m, t)), x))
    assert not np.any(m.first.W.grad)                     # fc.grad does not accumulate

    mm = Affine(10, 1)
    v2, grads = fc.grad(lambda model, x: np.sum(model(x)), mm, x)
    close(v2, mm(x).sum())

    before = m.first.W.value.copy()
    fc.update(m, gm, lambda value, g: value - 0.5 * g)
    close(m.first.W.value, before - 0.5 * gm[("first", "W")])


def test_grad_f_is_model():
    m = Affine(3, 1)
    x = rng(1).standard_normal((1, 3))
    v, (gm, gx) = fc.grad(m, x)         # a model as f: gradients for the model, then x
    close(v, m(x))
    close(gx, numgrad(lambda t: float(m(t).sum()), x))
    close(gm[("W",)], param_numgrad(m, m.W, lambda mm: float(mm(x).sum())))


def test_grad_pytrees():
    def f(p):
        return np.sum(p["w"] * p["pair"][0]) + np.sum(np.sin(p["pair"][1])) * p["s"]
    p = {"w": rng(1).standard_normal(3), "pair": (rng(2).standard_normal(3), [rng(3).standard_normal(2)][0]),
         "s": 1.5}
    v, (g,) = fc.grad(f, p)
    assert isinstance(g, dict) and isinstance(g["pair"], tuple)
    close(g["w"], p["pair"][0])
    close(g["pair"][0], p["w"])
    close(g["pair"][1], 1.5 * np.cos(p["pair"][1]))
    close(g["s"], np.sum(np.sin(p["pair"][1])))

    def h(xs):
        return np.sum(xs[0] * xs[1])
    v, (g,) = fc.grad(h, [np.ones(2), np.full(2, 3.0)])
    assert isinstance(g, list)
    close(g[0], [3.0, 3.0])


# ---------------------------------------------------------------- rules

def mycube(x):
    return x * x * x


@fc.diffrule(mycube)
def _(dy, y, x):
    return dy * 3 * x * x


def myscale(x, s):
    return x * s


@fc.diffrule(myscale)
def _(dy, y, x, s):
    return dy * s, None


def mysum(x, *, axis=None):
    return np.sum(x, axis=axis)


@fc.diffrule(mysum)
def _(dy, y, x, *, axis=None):
    return np.broadcast_to(np.expand_dims(dy, axis) if axis is not None else dy, x.shape)


def test_diffrule_single_tuple_none_and_keyword():
    x = rng(1).standard_normal((3, 2))
    f = lambda x: np.sum(mycube(x))
    close(fc.grad(f, x)[1][0], 3 * x * x)

    s = rng(2).standard_normal((3, 2))
    g = lambda x, s: np.sum(myscale(x, s))
    v, (gx, gs) = fc.grad(g, x, s)
    close(gx, s)

    k = lambda x: np.sum(mysum(x, axis=1) ** 2)
    close(fc.grad(k, x)[1][0], numgrad(lambda t: float(np.sum(np.sum(t, axis=1) ** 2)), x))


def test_nodiff():
    def f(x):
        return np.sum(x * fc.nodiff(x))
    x = rng(1).standard_normal(4)
    close(fc.grad(f, x)[1][0], x)


def test_gradcheck_report_and_error():
    report = fc.gradcheck(make_tlp(), rng(1).standard_normal((2, 10)))
    assert report is not None

    def bad(x):
        return np.sum(badsq(x))
    with pytest.raises(fc.GradcheckError):
        fc.gradcheck(bad, rng(1).standard_normal(3))


def badsq(x):
    return x * x


@fc.diffrule(badsq)
def _(dy, y, x):
    return dy * 3 * x          # wrong on purpose


# ---------------------------------------------------------------- errors

@fc.net
class Unsupported:
    def __init__(self):
        self.W = np.ones((2, 2))

    def forward(self, x):
        async def nope():       # unsupported
            pass
        return x @ self.W


def test_compile_error_attributes():
    with pytest.raises(fc.CompileError) as info:
        Unsupported()(np.ones((1, 2)))
    e = info.value
    assert isinstance(e, SyntaxError)
    assert e.filename.endswith("test_contract.py") and e.lineno > 0 and e.offset is not None
    assert "async" in (e.text or "")
    assert getattr(e, "hint", None)


@fc.net
class BadShapes:
    def __init__(self):
        self.W = np.ones((3, 2))

    def forward(self, x):
        y = x @ self.W
        return y


def test_runtime_error_names_class_and_line():
    with pytest.raises(Exception) as info:
        BadShapes()(np.ones((2, 5)))
    text = str(info.value)
    assert "BadShapes" in text and "test_contract.py" in text and "y = x @ self.W" in text


# ---------------------------------------------------------------- layers and functions

def test_layers_and_chain():
    np.random.seed(1)
    a, d = fc.Affine(4, 3), fc.Dense(3, 2, act=fc.relu)
    c = fc.Chain(a, d, fc.softmax)
    x = rng(1).standard_normal((5, 4))
    y = c(x)
    close(y, fc.softmax(fc.relu((x @ a.W.value + a.b.value) @ d.W.value + d.b.value)))
    assert isinstance(c[0:2], fc.Chain) and c[0] is a and isinstance(c[1:], fc.Chain)
    close(c[0:2](x), fc.relu((x @ a.W.value + a.b.value) @ d.W.value + d.b.value))
    dy = rng(2).standard_normal((5, 2))
    close(c.back(dy, x), numgrad(lambda t: float((c(t) * dy).sum()), x))
    assert fc.Dense(3, 2).W.shape in ((3, 2), (2, 3))


def test_activations_losses_init():
    x = rng(1).standard_normal((3, 4))
    assert fc.σ is fc.sigmoid
    close(fc.sigmoid(x), 1 / (1 + np.exp(-x)))
    close(fc.relu(x), np.maximum(x, 0))
    sm = np.exp(x) / np.exp(x).sum(-1, keepdims=True)
    close(fc.softmax(x), sm)
    close(fc.softmax(x, axis=0), np.exp(x) / np.exp(x).sum(0, keepdims=True))
    close(fc.logsoftmax(x), np.log(sm))
    close(np.squeeze(fc.logsumexp(x)), np.log(np.exp(x).sum()) if np.ndim(fc.logsumexp(x)) == 0
          else np.squeeze(np.log(np.exp(x).sum(-1, keepdims=True))))
    t = rng(2).standard_normal((3, 4))
    close(fc.mse(x, t), np.mean((x - t) ** 2))
    labels = np.array([0, 3, 1])
    oh = fc.data.onehot(labels, 4)
    ce = fc.crossentropy(sm, oh)
    close(ce, -np.sum(oh * np.log(sm)) / 3)
    close(fc.logitcrossentropy(x, labels if False else oh), ce)
    for init in (fc.initn, fc.glorot_uniform):
        w = init(30, 20)
        assert w.shape == (30, 20) and w.dtype == np.float64
    assert np.std(fc.initn(200, 200)) == pytest.approx(0.01, rel=0.1)
    lim = np.sqrt(6 / 50)
    assert np.abs(fc.glorot_uniform(30, 20)).max() <= lim


def test_loss_gradients_match_finite_differences():
    x = rng(1).standard_normal((3, 4))
    t = rng(2).standard_normal((3, 4))
    oh = fc.data.onehot(np.array([0, 3, 1]), 4)
    for loss, target in ((fc.mse, t), (fc.logitcrossentropy, oh)):
        g = fc.grad(loss, x, target)[1][0]
        close(g, numgrad(lambda a: float(loss(a, target)), x))
    f = lambda a: np.sum(fc.logsoftmax(a) * t) + np.sum(fc.logsumexp(a))
    close(fc.grad(f, x)[1][0], numgrad(lambda a: float(f(a)), x))


# ---------------------------------------------------------------- recurrence

def test_state_reset_unroll_unroll1():
    m = Counter(3)
    x = rng(1).standard_normal((2, 3))
    h1 = m(x)
    h2 = m(x)
    assert not np.allclose(h1, h2)
    m.reset()
    close(m(x), h1)
    m.reset()

    xs = rng(2).standard_normal((2, 4, 3))
    seq = fc.unroll(m, 4)
    ys = seq(xs)
    assert ys.shape == (2, 4, 3)
    m.reset()
    step = fc.unroll1(m)
    stepped = np.stack([step(xs[:, t]) for t in range(4)], axis=1)
    close(ys, stepped)

    dys = rng(3).standard_normal(ys.shape)

    def total(xx):
        m.reset()
        return float((seq(xx) * dys).sum())
    m.reset()
    dxs = seq.back(dys, xs)
    close(dxs, numgrad(total, xs))


@pytest.mark.parametrize("cls", [fc.RNN, fc.GRU, fc.LSTM])
def test_library_recurrent_layers_bptt(cls):
    np.random.seed(2)
    cell = cls(3, 4)
    seq = fc.unroll(cell, 3)
    xs = rng(1).standard_normal((2, 3, 3))
    cell.reset()
    ys = seq(xs)
    dys = rng(2).standard_normal(ys.shape)

    def total(xx):
        cell.reset()
        return float((seq(xx) * dys).sum())
    cell.reset()
    dxs = seq.back(dys, xs)
    close(dxs, numgrad(total, xs))
    p = fc.params(cell)[0]
    close(p.grad, param_numgrad(seq, p, lambda s: total(xs)))


# ---------------------------------------------------------------- training, io

def test_train_callbacks_and_nan():
    m = Affine(3, 1)
    x, y = rng(1).standard_normal((16, 3)), rng(2).standard_normal((16, 1))
    seen = []
    h = fc.train(m, fc.mse, [(x, y)] * 5, fc.optim.Adam(0.05), epochs=2,
                 callbacks=[lambda epoch, step, loss: seen.append((epoch, step, loss))],
                 progress=False)
    assert len(h) == 10 and [s[:2] for s in seen][:2] == [(1, 1), (1, 2)] and seen[-1][:2] == (2, 5)
    assert h[-1] < h[0]
    stop = fc.train(m, fc.mse, [(x, y)] * 5, 0.1, callbacks=lambda **k: "stop", progress=False)
    assert len(stop) == 1
    with pytest.raises(FloatingPointError):
        fc.train(m, fc.mse, [(x * np.nan, y)], 0.1, progress=False)


def test_save_load_with_and_without_opt(tmp_path):
    m = Affine(3, 2)
    x, y = rng(1).standard_normal((8, 3)), rng(2).standard_normal((8, 2))
    opt = fc.optim.Adam(0.01)
    fc.train(m, fc.mse, [(x, y)] * 3, opt, progress=False)
    fc.save(tmp_path / "m.npz", m)
    fc.save(tmp_path / "mo.npz", m, opt=opt)
    m2, opt2 = Affine(3, 2), fc.optim.Adam(0.01)
    fc.load(tmp_path / "mo.npz", m2, opt=opt2)
    close(m2.W.value, m.W.value, 0)
    fc.train(m, fc.mse, [(x, y)] * 3, opt, progress=False)
    fc.train(m2, fc.mse, [(x, y)] * 3, opt2, progress=False)
    np.testing.assert_array_equal(m2.W.value, m.W.value)           # resumed == uninterrupted
    m3 = Affine(3, 2)
    fc.load(tmp_path / "m.npz", m3)
    with pytest.raises(Exception):
        fc.load(tmp_path / "m.npz", Affine(4, 2))


def test_freeze_unfreeze_dropout():
    m = make_tlp()
    fc.freeze(m.first)
    assert len(fc.params(m)) == 2
    x, dy = rng(1).standard_normal((2, 10)), rng(2).standard_normal((2, 15))
    before = m.first.W.value.copy()
    m.back(dy, x)
    m.update(0.1)
    np.testing.assert_array_equal(m.first.W.value, before)
    fc.unfreeze(m.first)
    assert len(fc.params(m)) == 4

    d = fc.Dropout(0.5)
    c = fc.Chain(fc.Affine(4, 4), d)
    out = c(np.ones((50, 4)))
    assert out.shape == (50, 4)


def test_data_helpers():
    x, y = np.arange(20.0).reshape(10, 2), np.arange(10)
    bs = list(fc.data.batches(x, y, 4, rng=0))
    assert [len(b[0]) for b in bs] in ([4, 4, 2], [4, 4])
    assert sorted(np.concatenate([b[1] for b in bs]).tolist())[:8] == sorted(
        np.concatenate([b[1] for b in bs]).tolist())[:8]
    oh = fc.data.onehot(np.array([2, 0]), 3)
    np.testing.assert_array_equal(oh, [[0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(fc.data.onecold(oh), [2, 0])
    chunks = list(fc.data.chunk(np.arange(10), 3))
    assert len(chunks) == 3 and sum(len(c) for c in chunks) == 10


def test_shapes():
    m = make_tlp()
    text = str(fc.shapes(m, np.ones((8, 10))))
    assert "8" in text and "15" in text and "float64" in text


# ---------------------------------------------------------------- CLI

MODELS = textwrap.dedent('''
    import numpy as np
    import flux_compile as fc

    @fc.net
    class Affine:
        def __init__(self, n_in, n_out):
            self.W = fc.initn(n_in, n_out)
            self.b = fc.initn(1, n_out)
        def forward(self, x):
            return x @ self.W + self.b
    ''')


@pytest.fixture
def models_file(tmp_path):
    path = tmp_path / "models.py"
    path.write_text(MODELS)
    return str(path)


def test_cli_commands_and_exit_codes(models_file, capsys):
    assert cli_main(["graph", f"{models_file}:Affine"]) == 0
    assert cli_main(["graph", f"{models_file}:Affine", "--dot"]) == 0
    assert "digraph" in capsys.readouterr().out
    assert cli_main(["shapes", models_file, "Affine(4, 3)", "--input", "8x4"]) == 0
    assert cli_main(["check", models_file, "Affine(4, 3)", "--input", "8x4"]) == 0
    assert cli_main(["check", models_file, "Nope(4)", "--input", "8x4"]) == 2
    assert cli_main(["check", models_file, "Affine(4, 3)", "--input", "8x5"]) != 0
    r = subprocess.run([sys.executable, "-m", "flux_compile", "check", models_file, "Affine(4, 3)",
                        "--input", "8x4"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_cli_show_every_pass(models_file, capsys):
    for p in ("forward", "backward", "update", "all"):
        extra = ["--args", "4, 3"] if p in ("update", "all") else []
        assert cli_main(["show", f"{models_file}:Affine", "--pass", p, *extra]) == 0
        assert "def " in capsys.readouterr().out


def test_cli_check_fails_with_1(tmp_path, capsys):
    path = tmp_path / "bad.py"
    path.write_text(textwrap.dedent('''
        import numpy as np
        import flux_compile as fc

        def sq(x):
            return x * x

        @fc.diffrule(sq)
        def _(dy, y, x):
            return dy * 3 * x

        @fc.net
        class Bad:
            def __init__(self, n):
                self.W = np.ones((n, n))
            def forward(self, x):
                return sq(x @ self.W)
        '''))
    assert cli_main(["check", str(path), "Bad(3)", "--input", "4x3"]) == 1
