"""Cond regions: an ``if`` on run-time data is a real ``if`` in the generated forward and
backward; only the taken branch (and its derivative) runs, one compile serves every branch
pattern. Gradients are checked against autograd and central differences in float64."""
import gc
import tracemalloc
import warnings

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad as ag_grad

import flux_compile as fc
from flux_compile import cache as fc_cache

from test_loops import check, numgrad

rng = np.random.default_rng(11)


def log_guard(xnp):
    """The domain guard: log of a sum only where it is positive."""
    def f(x):
        s = xnp.sum(x)
        if s > 0:
            y = xnp.log(s) * x
        else:
            y = x * 2.0
        return xnp.sum(y * y)
    return f


def sqrt_and_division_guard(xnp):
    """sqrt under a positive test, a division under a nonzero one, nested."""
    def f(x, d):
        s = xnp.sum(x)
        if s > 0:
            y = xnp.sqrt(s) + x
        else:
            y = x * 3.0
        t = xnp.sum(d * d)
        if t != 0:
            z = y / t
        else:
            z = y
        return xnp.sum(z * x)
    return f


def guarded_loop(xnp):
    """In a loop: x[i + 1] only where i < n - 1, log only of a positive element."""
    def f(x):
        acc = 0.0
        n = x.shape[0]
        for i in range(n):
            if i < n - 1:
                acc = acc + x[i + 1] * x[i]
            elif x[i] > 0:
                acc = acc + xnp.log(x[i])
            else:
                acc = acc - x[i]
        return acc
    return f


def loop_in_branch_in_loop(xnp):
    """A cond in a loop in a cond, and a loop inside a branch."""
    def f(x, s):
        y = x
        if xnp.sum(s) > 0:
            for i in range(s.shape[0]):
                if s[i] > 0:
                    y = xnp.tanh(y) * xnp.sqrt(s[i])
                else:
                    y = y * 0.5
        else:
            for i in range(s.shape[0]):
                y = y + s[i] * y
        return xnp.sum(y * y)
    return f


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_log_guard_gives_pythons_finite_gradient(sign):
    x = np.abs(rng.normal(size=6)) * sign
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # the untaken log never runs, not even its rule
        _, (g,) = fc.grad(log_guard(np), x)
    assert np.all(np.isfinite(g))
    check(log_guard(np), log_guard(anp), x)


@pytest.mark.parametrize("sx, d", [(1.0, 1.0), (-1.0, 1.0), (1.0, 0.0), (-1.0, 0.0)])
def test_sqrt_and_division_guards_are_finite_and_match(sx, d):
    x = np.abs(rng.normal(size=5)) * sx
    dd = rng.normal(size=5) * d
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, grads = fc.grad(sqrt_and_division_guard(np), x, dd)
    assert all(np.all(np.isfinite(g)) for g in grads)
    want = [ag_grad(sqrt_and_division_guard(anp), i)(x, dd) for i in (0, 1)]
    assert all(np.allclose(g, w) for g, w in zip(grads, want))
    f = sqrt_and_division_guard(np)
    assert np.allclose(grads[0], numgrad(lambda z: f(z, dd), x.copy()), atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_guarded_index_and_log_in_a_loop(seed):
    x = np.random.default_rng(seed).normal(size=30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fc.grad(guarded_loop(np), x)
    check(guarded_loop(np), guarded_loop(anp), x)
    text = str(fc.graph(guarded_loop(np), (x,)))
    assert text.count("loop(") == 1 and text.count("cond(") == 2 and "guard(" not in text


def test_untaken_branch_that_would_raise_never_runs():
    def f(x, A):
        if np.sum(x) > 0:
            y = x @ np.linalg.inv(A)
        else:
            y = x * 2.0
        return np.sum(y)
    singular = np.ones((3, 3))
    x = -np.ones(3)
    value, (gx, gA) = fc.grad(f, x, singular)
    assert value == -6.0 and np.allclose(gx, 2.0) and np.allclose(gA, 0.0)
    A = rng.normal(size=(3, 3)) + 3 * np.eye(3)
    value, (gx, gA) = fc.grad(f, -x, A)
    inv = np.linalg.inv(A)
    assert np.isclose(value, np.sum(-x @ inv)) and np.allclose(gx, inv.sum(axis=1))
    assert np.allclose(gA, numgrad(lambda a: f(-x, a), A.copy()), atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_nested_cond_loop_cond_matches(seed):
    r = np.random.default_rng(seed)
    for s in (r.normal(size=8), np.abs(r.normal(size=8)), -np.abs(r.normal(size=8))):
        check(loop_in_branch_in_loop(np), loop_in_branch_in_loop(anp), r.normal(size=4), s)


def test_top_level_if_on_data_is_a_cond_not_a_guard():
    x = rng.normal(size=6)
    text = str(fc.graph(log_guard(np), (x,)))
    assert "cond(" in text and "guard(" not in text
    src = fc.source(log_guard(np), "backward", inputs=(x,))
    statements = [line.strip() for line in src.splitlines()]
    assert sum(line.startswith("if ") for line in statements) == 1 and "else:" in statements


def test_float32_stays_float32_through_both_branches():
    f = log_guard(np)
    for sign in (1, -1):
        x = (np.abs(rng.normal(size=5)) * sign).astype(np.float32)
        value, (g,) = fc.grad(f, x)
        assert g.dtype == np.float32 and np.all(np.isfinite(g))
        want = ag_grad(log_guard(anp))(x.astype(np.float64))
        assert np.allclose(g, want, rtol=1e-4, atol=1e-4)


@fc.net
class Branchy:
    """Params used in one branch, a sub-model called in the other."""
    def __init__(self):
        self.W = fc.initn(3, 3) * 100
        self.b = fc.initn(1, 3) * 100
        self.inner = fc.Dense(3, 3, act=np.tanh)

    def forward(self, x):
        if np.sum(x) > 0:
            h = np.log(np.sum(x)) * (x @ self.W) + self.b
        else:
            h = self.inner(x)
        return h


def _model_loss_ag(m):
    W, b = m.W.value, m.b.value
    Wi, bi = m.inner.W.value, m.inner.b.value

    def loss(params, x):
        W, b, Wi, bi = params
        if anp.sum(x) > 0:
            h = anp.log(anp.sum(x)) * (x @ W) + b
        else:
            h = anp.tanh(x @ Wi + bi)
        return anp.sum(h * h)
    return loss, [W, b, Wi, bi]


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_model_params_and_submodel_inside_branches(sign):
    m = Branchy()
    x = np.abs(rng.normal(size=(2, 3))) * sign
    y, back = m.pullback(x)
    dx = back(2 * y)
    loss, params = _model_loss_ag(m)
    want = ag_grad(loss)(params, x)
    got = [m.W.grad, m.b.grad, m.inner.W.grad, m.inner.b.grad]
    assert all(np.allclose(g, w) for g, w in zip(got, want))
    assert np.allclose(dx, ag_grad(lambda z: loss(params, z))(x))
    m.zero_grad()
    assert fc.gradcheck(m, x).ok


def test_200_random_branch_patterns_compile_once_and_memory_stays_flat():
    m = Branchy()
    r = np.random.default_rng(3)
    m.pullback(r.normal(size=(2, 3)))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    signs = set()
    for _ in range(200):
        x = r.normal(size=(2, 3))
        signs.add(bool(np.sum(x) > 0))
        y, back = m.pullback(x)
        back(np.ones_like(y))
        m(x)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert signs == {True, False}
    assert len(m.__dict__["_fc_compiled"]) == 1
    assert after - before < 1_000_000


def test_shape_tests_stay_specialised():
    def f(x):
        if x.shape[0] > 2:
            y = x * 2.0
        else:
            y = x * 3.0
        return np.sum(y)
    text = str(fc.graph(f, (np.ones(4),)))
    assert "cond(" not in text


def test_branches_with_different_ranks_fall_back_to_a_guard():
    def f(x):
        if np.sum(x) > 0:
            y = x[:, None] * x
        else:
            y = x
        return np.sum(y * y)
    x = np.arange(1.0, 5.0)
    text = str(fc.graph(f, (x,)))
    assert "cond(" not in text and "guard(" in text
    assert np.allclose(fc.grad(f, x)[1][0], numgrad(f, x.copy()), atol=1e-4)
    assert np.allclose(fc.grad(f, -x)[1][0], -2 * x)


def test_branches_with_sizes_not_known_equal_are_one_cond():
    def f(x):
        if np.sum(x) > 0:
            y = np.log(x[:2])
        else:
            y = x
        return np.sum(y * y)

    def f_ag(x):
        y = anp.log(x[:2]) if anp.sum(x) > 0 else x
        return anp.sum(y * y)
    x = np.arange(1.0, 5.0)
    assert "cond(" in str(fc.graph(f, (x,)))
    for z in (x, -x):
        check(f, f_ag, z)


def test_break_under_a_domain_guard_in_a_loop():
    def f(x):
        acc = 0.0
        for i in range(x.shape[0]):
            if x[i] < 0:
                break
            acc = acc + np.log(x[i])
        return acc

    def f_ag(x):
        acc = 0.0
        for i in range(x.shape[0]):
            if x[i] < 0:
                break
            acc = acc + anp.log(x[i])
        return acc
    for x in (np.abs(rng.normal(size=40)) + 0.1, np.concatenate([np.ones(5) * 2, -np.ones(35)])):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fc.grad(f, x)
        check(f, f_ag, x)


def nested_branches(xnp):
    """A cond nested in a branch, a log and a sqrt each under its own guard."""
    def f(x, s):
        y = x
        if xnp.sum(s) > 0:
            y = xnp.log(xnp.sum(s)) * y
            if xnp.sum(x) > 0:
                y = xnp.sqrt(xnp.sum(x)) * y
        else:
            y = y * s[:4]
        return xnp.sum(y * y)
    return f


@pytest.mark.parametrize("seed", range(3))
def test_jvp_branches_as_the_primal_does(seed):
    r = np.random.default_rng(seed)
    f = nested_branches(np)
    for s in (np.abs(r.normal(size=6)), -np.abs(r.normal(size=6))):
        for x in (np.abs(r.normal(size=4)), -np.abs(r.normal(size=4))):
            tx, ts = r.normal(size=4), r.normal(size=6)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                value, tangent = fc.jvp(f, (x, s), (tx, ts))
            gx, gs = [ag_grad(nested_branches(anp), i)(x, s) for i in (0, 1)]
            assert np.isclose(value, f(x, s)) and np.isclose(tangent, gx @ tx + gs @ ts)
            e = 1e-6
            assert np.isclose(tangent, (f(x + e * tx, s + e * ts) - f(x - e * tx, s - e * ts)) / (2 * e),
                              rtol=1e-5)
    src = fc.jvp_source(f, (x, s))
    assert "Retrace" not in src and src.count("else:") == 2


def test_gradient_hessian_and_hvp_through_a_data_if():
    """Second order goes through the branch taken (forward over reverse has no tangent of a
    cond's backward yet: those plans compile the path taken, with a guard)."""
    f = nested_branches(np)
    r = np.random.default_rng(4)
    for sign in (1.0, -1.0):
        x, s = np.abs(r.normal(size=4)) * sign, np.abs(r.normal(size=6)) * sign
        gx = fc.gradient(f)(x, s)
        assert np.allclose(gx, ag_grad(nested_branches(anp))(x, s))
        from autograd import hessian as ag_hessian
        assert np.allclose(fc.hessian(f)(x, s), ag_hessian(nested_branches(anp))(x, s))
        t = r.normal(size=4), r.normal(size=6)
        hv = fc.hvp(f, (x, s), t)
        e = 1e-5
        fd = (fc.gradient(f, (0, 1))(x + e * t[0], s + e * t[1])[0] -
              fc.gradient(f, (0, 1))(x - e * t[0], s - e * t[1])[0]) / (2 * e)
        assert np.allclose(hv[0], fd, atol=1e-4)


@fc.net
class GateLog:
    def __init__(self):
        self.W = fc.initn(3, 3) * 100

    def forward(self, x):
        h = x @ self.W
        if np.sum(h) > 0:
            out = np.log(np.sum(h)) * h
        else:
            out = h * 2.0
        return out


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_backends_run_the_real_if(backend):
    pytest.importorskip(backend)
    m = GateLog()
    m2 = fc.to(m, backend)
    r = np.random.default_rng(8)
    w = m.W.value.sum(axis=1)           # sum(x @ W) = sum over rows of x . w: its sign is chosen
    signs = set()
    for k in range(6):
        x = (-1) ** k * np.abs(r.normal(size=(2, 1))) * w + r.normal(size=(2, 3)) * 1e-3
        signs.add(bool(np.sum(x @ m.W.value) > 0))
        y, back = m2.pullback(x)
        dx = back(np.ones((2, 3)))
        y_ref, back_ref = m.pullback(x)
        assert np.allclose(np.asarray(y), y_ref) and np.allclose(np.asarray(dx), back_ref(np.ones((2, 3))))
    assert signs == {True, False}
    assert "if " in fc.source(m2, "backward")


def test_train_step_fuses_the_update_inside_the_branches():
    r = np.random.default_rng(9)
    m, ref = GateLog(), GateLog()
    ref.W.value[...] = m.W.value
    step, opt = fc.train_step(m, fc.mse, fc.optim.SGD(0.1)), fc.optim.SGD(0.1)
    signs = set()
    for _ in range(20):
        x, t = r.normal(size=(2, 3)), r.normal(size=(2, 3))
        signs.add(bool(np.sum(x @ ref.W.value) > 0))
        loss = step(x, target=t)
        y, back = ref.pullback(x)
        assert np.isclose(loss, fc.mse(y, t))
        back(2 * (y - t) / y.size)
        ref.update(opt)
    assert signs == {True, False} and np.allclose(m.W.value, ref.W.value)


def test_jax_train_step_refuses_an_if_on_data_clearly():
    pytest.importorskip("jax")
    m2 = fc.to(GateLog(), "jax")
    step = fc.train_step(m2, fc.mse, fc.optim.SGD(0.1))
    with pytest.raises(fc.CompileError, match="jit"):
        step(np.ones((2, 3)), target=np.ones((2, 3)))


@fc.net
class GatedState:
    """Recurrent state written under an if on data inside a loop region."""

    def __init__(self):
        self.W = fc.initn(3, 3) * 100
        self.h = np.zeros((1, 3))

    def forward(self, x):
        for t in range(x.shape[0]):
            if np.sum(x[t]) > 0:
                self.h = np.tanh(x[t:t + 1] @ self.W + self.h)
            else:
                self.h = np.sqrt(np.abs(self.h) + 1.0) * 0.5 + x[t:t + 1]
        return self.h * 2.0


def test_state_under_an_if_in_a_loop():
    m = GatedState()
    x = rng.normal(size=(40, 3))
    W = m.W.value

    def run(h):
        for t in range(x.shape[0]):
            if np.sum(x[t]) > 0:
                h = np.tanh(x[t:t + 1] @ W + h)
            else:
                h = np.sqrt(np.abs(h) + 1.0) * 0.5 + x[t:t + 1]
        return h
    h1 = run(np.zeros((1, 3)))
    assert np.allclose(m(x), h1 * 2.0)
    assert np.allclose(m(x), run(h1) * 2.0)          # the second call starts from the state
    text = str(fc.graph(m, (x,)))
    assert text.count("loop(") == 1 and "cond(" in text and "carry <self.h>" in text
    m.reset()
    assert fc.gradcheck(m, x).ok


@fc.net
class GatedCell:
    """A sub-model called in one branch of an if on data inside a loop region."""

    def __init__(self):
        self.W = fc.initn(3, 3) * 100
        self.cell = fc.Dense(3, 3, act=np.tanh)

    def forward(self, x):
        h = np.zeros((1, 3))
        for t in range(x.shape[0]):
            if np.sum(x[t]) > 0:
                h = np.tanh(x[t:t + 1] @ self.W + h)
            else:
                h = self.cell(h) * 0.5 + x[t:t + 1]
        return h


def test_submodel_in_a_branch_in_a_loop():
    m = GatedCell()
    x = rng.normal(size=(40, 3))
    text = str(fc.graph(m, (x,)))
    assert text.count("loop(") == 1 and "cond(" in text and "guard(" not in text
    W, Wc, bc = m.W.value, m.cell.W.value, m.cell.b.value

    def loss(params, x):
        W, Wc, bc = params
        h = anp.zeros((1, 3))
        for t in range(x.shape[0]):
            if anp.sum(x[t]) > 0:
                h = anp.tanh(x[t:t + 1] @ W + h)
            else:
                h = anp.tanh(h @ Wc + bc) * 0.5 + x[t:t + 1]
        return anp.sum(h * h)
    y, back = m.pullback(x)
    dx = back(2 * y)
    want = ag_grad(loss)([W, Wc, bc], x)
    assert all(np.allclose(g, w) for g, w in zip([m.W.grad, m.cell.W.grad, m.cell.b.grad], want))
    assert np.allclose(dx, ag_grad(lambda z: loss([W, Wc, bc], z))(x))


@fc.net
class StateUnderIf:
    """Recurrent state written under a top-level if on data (in one branch only)."""

    def __init__(self):
        self.W = fc.initn(3, 3) * 100
        self.h = np.zeros((1, 3))

    def forward(self, x):
        if np.sum(x) > 0:
            self.h = np.tanh(x @ self.W + self.h)
        return self.h + x


def test_state_written_under_a_top_level_if_is_a_cond():
    m = StateUnderIf()
    x = np.abs(rng.normal(size=(1, 3)))
    h = np.tanh(x @ m.W.value)
    assert np.allclose(m(x), h + x)
    assert np.allclose(m(-x), h - x)          # the other path: the state is left as it was
    assert np.allclose(m(x), np.tanh(x @ m.W.value + h) + x)
    src = fc.source(m, "all")
    assert "Retrace" not in src and "else:" in src
    m.reset()
    assert fc.gradcheck(m, x).ok and fc.gradcheck(m, -x).ok


@fc.net
class GatedCellStep:
    """One step of a recurrent cell with an if on data: fc.unroll runs it over time."""

    def __init__(self):
        self.W = fc.initn(3, 3) * 100
        self.h = np.zeros((1, 3))

    def forward(self, x):
        if np.sum(x) > 0:
            self.h = np.tanh(x @ self.W + self.h)
        else:
            self.h = self.h * 0.5 + x * 0.1
        return self.h


def test_unroll_of_a_cell_with_an_if_on_data():
    m = GatedCellStep()
    u = fc.unroll(m, 6)
    x = rng.normal(size=(1, 6, 3))
    W = m.W.value

    def loss(x):
        h = anp.zeros((1, 3))
        hs = []
        for t in range(6):
            h = anp.tanh(x[:, t] @ W + h) if anp.sum(x[:, t]) > 0 else h * 0.5 + x[:, t] * 0.1
            hs.append(h)
        return anp.sum(anp.stack(hs, axis=1) ** 2)
    u.reset()
    y, back = u.pullback(x)
    assert np.isclose(np.sum(y ** 2), loss(x))
    assert np.allclose(back(2 * y), ag_grad(loss)(x))


def test_a_temporary_of_one_branch_is_not_merged():
    def f(x):
        s = np.sum(x)
        if s > 0:
            tmp = np.log(s)
            y = tmp * x
        else:
            y = x * 2.0
        return np.sum(y * y)

    def f_ag(x):
        s = anp.sum(x)
        y = anp.log(s) * x if s > 0 else x * 2.0
        return anp.sum(y * y)
    x = rng.normal(size=5)
    assert "cond(" in str(fc.graph(f, (x,)))
    for z in (np.abs(x), -np.abs(x)):
        check(f, f_ag, z)


def test_a_name_of_one_branch_read_after_the_if_keeps_the_guard():
    def f(x):
        if np.sum(x) > 0:
            y = x * 3.0
        return np.sum(y)
    x = np.ones(3)
    assert "cond(" not in str(fc.graph(f, (x,)))
    assert np.allclose(fc.grad(f, x)[1][0], 3.0)
    with pytest.raises(Exception):
        fc.grad(f, -x)          # Python raises too: y is unbound on that path


def test_backward_params_skips_the_input_gradient_inside_branches():
    @fc.net
    class FirstLayer:
        def __init__(self):
            self.W = fc.initn(3, 3) * 100

        def forward(self, x):
            if np.sum(x) > 0:
                h = np.log(np.sum(x)) * (x @ self.W)
            else:
                h = (x * 2.0) @ self.W
            return h
    m = FirstLayer()
    x = np.abs(rng.normal(size=(2, 3)))
    m.pullback(x)
    src = fc.source(m, "all")
    params_only = src[src.index("def backward_params"):src.index("def update")]
    full = src[src.index("def backward("):src.index("def backward_params")]
    assert "self.W.value.T" in full and "self.W.value.T" not in params_only
    for z in (x, -x):
        m.zero_grad()
        m.back(np.ones((2, 3)), z)
        g = m.W.grad.copy()
        m.zero_grad()
        y, back = m.pullback(z)
        back(np.ones((2, 3)))
        assert np.allclose(g, m.W.grad)


def test_an_infinite_input_kept_out_by_the_guard_gives_a_finite_gradient():
    def f(x):
        if np.all(np.isfinite(x)):
            y = np.sum(x * x)
        else:
            y = np.sum(x[:1] * 3.0)
        return y
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, (g,) = fc.grad(f, np.array([1.0, np.inf]))
        assert value == 3.0 and np.array_equal(g, [3.0, 0.0])
        value, (g,) = fc.grad(f, np.array([1.0, 2.0]))
        assert value == 5.0 and np.array_equal(g, [2.0, 4.0])
        value, (g,) = fc.grad(f, np.array([np.nan, 2.0]))
        assert np.isnan(value) and np.array_equal(g, [3.0, 0.0])       # as autograd: d(3x)/dx
