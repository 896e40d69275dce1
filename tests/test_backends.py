"""Backends: every model of the zoo gives NumPy's outputs and gradients on torch and JAX,
and trains through the same losses; the shown source is torch / JAX code."""
import os
import re
import sys

import numpy as np
import pytest

import flux_compile as fc
from flux_compile.backends import BackendModel, to_numpy, train_step
from flux_compile.params import path_str
from flux_compile.train import History

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from backend_models import Block, mlp, zoo  # noqa: E402

BACKENDS = []
for _name in ("torch", "jax"):
    try:
        __import__(_name)
        BACKENDS.append(_name)
    except ImportError:
        pass
if not BACKENDS:
    pytest.skip("neither torch nor jax is installed", allow_module_level=True)

TOL = {np.float64: 1e-10, np.float32: 1e-5}
MODELS = list(zoo())


def close(native, expected, dtype):
    got = to_numpy(native)
    assert got.dtype == expected.dtype, (got.dtype, expected.dtype)
    tol = TOL[dtype]
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * scale)


def numpy_reference(m, xs, dy):
    y, back = m.pullback(*xs)
    dx = back(dy)
    return y, dx, [(path, p.grad.copy()) for path, p in fc.named_params(m)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_outputs_and_gradients_equal_numpy(backend, name, dtype):
    m, xs = zoo(dtype, seed=3)[name]
    m2 = fc.to(m, backend)                         # before the reference run: gradients start at zero
    rng = np.random.default_rng(7)
    y_ref = m(*xs)
    m.reset()
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    y, dx, grads = numpy_reference(m, xs, dy)
    y2, back2 = m2.pullback(*xs)
    dx2 = back2(dy)
    close(y2, y, dtype)
    close(dx2, dx, dtype)
    got = dict(m2.named_params())
    assert [path for path, _ in grads] == list(got)
    for path, g in grads:
        close(got[path].grad, g, dtype)
    m2.reset()
    close(m2(*xs), y_ref, dtype)                   # inference forward too


@pytest.mark.parametrize("backend", BACKENDS)
def test_native_inputs_and_outputs(backend):
    m, (x,) = zoo()["mlp"]
    m2 = fc.to(m, backend)
    native = fc.backends.Backend(backend).native(x)
    y_np, y_native = m2(x), m2(native)
    assert type(y_np) is type(native) and type(y_native) is type(native)
    np.testing.assert_array_equal(to_numpy(y_np), to_numpy(y_native))
    dx = m2.back(np.ones(m(x).shape), native)
    assert type(dx) is type(native)
    assert all(type(p.value) is type(native) and type(p.grad) is type(native) for _, p in m2.named_params())


def test_torch_runs_without_autograd():
    torch = pytest.importorskip("torch")
    m, (x,) = zoo()["transformer_block"]
    m2 = fc.to(m, "torch")
    y, back = m2.pullback(x)
    back()
    assert y.grad_fn is None and not y.requires_grad
    for _, p in m2.named_params():
        assert not p.value.requires_grad and not p.grad.requires_grad and p.grad.grad_fn is None
    assert torch.is_grad_enabled()                  # nothing switched off behind the user's back
    xt = torch.tensor(x, requires_grad=True)        # even an input that asks for a tape gets none
    y, back = m2.pullback(xt)
    assert y.grad_fn is None and back().grad_fn is None


def _numpy_training(m, loss, opt, batches):
    losses = []
    for x, y in batches:
        m.reset()
        yhat, back = m.pullback(x)
        value, (dl, _) = fc.grad(loss, yhat, y)
        back(dl, input_grads=False)
        m.update(opt)
        losses.append(float(value))
    return losses


def _batches(model_name, dtype, n=5):
    m, xs = zoo(dtype)[model_name]
    y = m(*xs)
    m.reset()
    rng = np.random.default_rng(11)
    return [(rng.standard_normal(xs[0].shape).astype(dtype), rng.standard_normal(y.shape).astype(dtype))
            for _ in range(n)]


OPTIMISERS = {"sgd": lambda: 0.05, "adam": lambda: fc.optim.Adam(0.01), "momentum": lambda: fc.optim.Momentum(0.02),
              "rmsprop": lambda: fc.optim.RMSProp(0.01)}


TRAINING = [("mlp", opt) for opt in OPTIMISERS] + [(name, "adam") for name in
                                                   ("lstm_unroll", "transformer_block", "cnn")]


@pytest.mark.parametrize("name,opt", TRAINING)
@pytest.mark.parametrize("backend", BACKENDS)
def test_training_steps_give_numpys_losses(backend, name, opt):
    dtype = np.float64
    batches = _batches(name, dtype)
    m, _ = zoo(dtype)[name]
    m2 = fc.to(m, backend)
    ref = _numpy_training(m, fc.mse, OPTIMISERS[opt](), batches)
    step = train_step(m2, fc.mse, OPTIMISERS[opt]())
    got = [float(step(x, y)) for x, y in batches]
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    assert ref[-1] != ref[0]                        # the parameters did move
    for (path, p), (_, q) in zip(fc.named_params(m), m2.named_params()):
        close(q.value, p.value, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_training_stays_float32(backend):
    batches = _batches("mlp", np.float32)
    m, _ = zoo(np.float32)["mlp"]
    m2 = fc.to(m, backend)
    ref = _numpy_training(m, fc.mse, fc.optim.Adam(0.01), batches)
    losses = fc.train(m2, fc.mse, batches, fc.optim.Adam(0.01))
    np.testing.assert_allclose(losses, ref, rtol=1e-5)
    assert all(to_numpy(p.value).dtype == np.float32 for _, p in m2.named_params())


@pytest.mark.parametrize("backend", BACKENDS)
def test_pullback_update_loop_equals_numpy(backend):
    """m2.pullback / back / update(opt) by hand, as on NumPy."""
    batches = _batches("mlp", np.float64)
    m, _ = zoo()["mlp"]
    m2 = fc.to(m, backend)
    ref = _numpy_training(m, fc.mse, fc.optim.Adam(0.01), batches)
    opt, got = fc.optim.Adam(0.01), []
    for x, y in batches:
        yhat, back = m2.pullback(x)
        value, (dl, _) = fc.grad(fc.mse, to_numpy(yhat), y)
        back(dl, input_grads=False)
        m2.update(opt)
        got.append(float(value))
    np.testing.assert_allclose(got, ref, rtol=1e-10)


def test_jax_step_is_one_compiled_program():
    pytest.importorskip("jax")
    batches = _batches("transformer_block", np.float64)
    m, _ = zoo()["transformer_block"]
    step = train_step(fc.to(m, "jax"), fc.mse, fc.optim.Adam(0.01))
    for x, y in batches:
        step(x, y)
    assert step.jitted._cache_size() == 1           # traced once, then the same XLA program


@pytest.mark.parametrize("backend", BACKENDS)
def test_source_is_backend_code(backend):
    m, (x,) = zoo()["transformer_block"]
    m2 = fc.to(m, backend)
    m2.pullback(x)[1]()
    m2.update(fc.optim.Adam(0.01))
    code = lambda text: "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))  # noqa
    back = code(fc.source(m2, "backward"))
    everything = fc.source(m2, "all")
    assert f"({backend} backend)" in everything
    assert not re.search(r"\bnp\.", back)
    assert ("torch." in back) if backend == "torch" else ("jnp." in back)
    assert "# line" in fc.source(m2, "backward")                        # the user's statements still label the code
    update = fc.source(m2, "update")
    assert not re.search(r"\bnp\.sqrt", update) and ("torch.sqrt" in update or "jnp.sqrt" in update)
    if backend == "jax":
        assert "+=" not in everything               # pure: accumulation rebinds, never writes in place
    m2.ln1.pullback(x)[1]()         # inlined in its parent's code; run alone, it has its own
    ln = code(fc.source(m2.ln1, "backward"))
    assert not re.search(r"\bnp\.", ln)


def test_round_trip_to_numpy():
    backend = BACKENDS[0]
    m = mlp()
    x = np.random.default_rng(1).standard_normal((4, 6))
    m2 = fc.to(m, backend)
    for _ in range(2):
        m2.pullback(x)[1]()
        m2.update(0.1)
    m3 = fc.to(m2, "numpy")
    assert not isinstance(m3, BackendModel) and type(m3) is type(m)
    np.testing.assert_allclose(m3(x), to_numpy(m2(x)), rtol=1e-12)
    assert not np.allclose(m3(x), m(x))             # m itself is untouched
    m4 = fc.to(m3, backend)
    np.testing.assert_allclose(to_numpy(m4(x)), m3(x), rtol=1e-12)


def test_backend_copy_leaves_the_original_alone():
    backend = BACKENDS[0]
    m = mlp()
    before = [p.value.copy() for p in fc.params(m)]
    m2 = fc.to(m, backend)
    m2.pullback(np.ones((2, 6)))[1]()
    m2.update(1.0)
    for p, b in zip(fc.params(m), before):
        np.testing.assert_array_equal(p.value, b)
        assert not p.grad.any()


def test_shared_param_gets_both_gradients():
    backend = BACKENDS[0]
    a = fc.Dense(3, 3)
    m = fc.Chain(a, np.tanh, a)
    x = np.random.default_rng(2).standard_normal((4, 3))
    m2 = fc.to(m, backend)
    _, _, grads = numpy_reference(m, (x,), np.ones((4, 3)))
    m2.pullback(x)[1](np.ones((4, 3)))
    got = m2.named_params()
    assert len(got) == len(grads) == 2
    for (_, g), (_, p) in zip(grads, got):
        close(p.grad, g, np.float64)


def test_missing_primitive_is_a_compile_error_naming_it():
    pytest.importorskip("torch")

    @fc.net
    class Cube:
        def __init__(self):
            self.W = np.ones((3, 3))

        def forward(self, x):
            return np.cbrt(x @ self.W)

    m2 = fc.to(Cube(), "torch")
    with pytest.raises(fc.CompileError, match=r"torch backend has no kernel for np\.cbrt"):
        m2(np.ones((2, 3)))


def test_bad_backend_and_device():
    with pytest.raises(ValueError, match="unknown backend"):
        fc.to(mlp(), "tensorflow")
    with pytest.raises(ValueError, match="device= is for the torch backend"):
        fc.to(mlp(), "jax", device="cpu")


@pytest.mark.skipif(not any(b == "torch" for b in BACKENDS), reason="torch not installed")
def test_torch_device_placement_cpu():
    import torch
    m2 = fc.to(mlp(), "torch", device="cpu")
    y = m2(np.ones((2, 6)))
    assert y.device == torch.device("cpu")
    assert all(p.value.device == torch.device("cpu") for _, p in m2.named_params())


def _cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.skipif(not _cuda(), reason="no CUDA device")
@pytest.mark.parametrize("name", MODELS)
def test_torch_cuda_equals_numpy(name):
    m, xs = zoo(np.float64, seed=5)[name]
    m2 = fc.to(m, "torch", device="cuda")
    dy_shape = m(*xs).shape
    m.reset()
    dy = np.ones(dy_shape)
    y, dx, grads = numpy_reference(m, xs, dy)
    y2, back = m2.pullback(*xs)
    assert y2.is_cuda
    close(back(dy), dx, np.float64)
    close(y2, y, np.float64)
    for (_, g), (_, p) in zip(grads, m2.named_params()):
        assert p.grad.is_cuda
        close(p.grad, g, np.float64)


def test_block_is_the_benchmark_block():
    """The zoo's transformer block is the one benchmarks/backends.py times."""
    assert Block(4)(np.zeros((1, 2, 4))).shape == (1, 2, 4)


@fc.net
class Hostile:
    """Strided and repeated indices, a scalar Param broadcast, reductions with and without
    keepdims, maximum ties through relu at zero, a float constant array."""

    def __init__(self, dtype=np.float64):
        rng = np.random.default_rng(4)
        self.W = rng.standard_normal((4, 6)).astype(dtype)
        self.s = np.array(1.5, dtype=dtype)
        self.mask = fc.const(np.array([1.0, 0.0, 2.0], dtype=dtype))

    def forward(self, x):
        h = x @ self.W
        a = h[:, ::2] * self.s * self.mask
        b = h[:, [0, 2, 2]]
        c = fc.relu(h[1:, 1:4] - h[1:, 1:4])          # relu exactly at zero
        return np.sum(a, axis=1) + np.max(b, axis=1) + np.mean(c) + np.sum(h[:, 3:] ** 2, axis=-1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("backend", BACKENDS)
def test_hostile_indexing_and_broadcasting(backend, dtype):
    m = Hostile(dtype)
    x = np.random.default_rng(5).standard_normal((5, 4)).astype(dtype)
    m2 = fc.to(m, backend)
    dy = np.linspace(-1, 1, 5).astype(dtype)
    y, dx, grads = numpy_reference(m, (x,), dy)
    y2, back = m2.pullback(x)
    close(y2, y, dtype)
    close(back(dy), dx, dtype)
    for (_, g), (_, p) in zip(grads, m2.named_params()):
        close(p.grad, g, dtype)
    assert to_numpy(m2.s.grad).shape == ()


def test_setting_a_field_of_a_backend_model_is_refused():
    """The code baked the fields in: a change would be ignored silently, so it is an error."""
    m2 = fc.to(fc.Dense(3, 2, act=np.tanh), BACKENDS[0])
    with pytest.raises(AttributeError, match="snapshot"):
        m2.act = None
    m2.update(0.1)                                  # updates still replace Param values


# -- data-dependent control flow: every path runs its own guarded variant ------------------

@fc.net
class _Gate:
    def __init__(self):
        self.W = np.linspace(-1.0, 1.0, 6).reshape(3, 2)

    def forward(self, x):
        h = x @ self.W
        if np.sum(h) > 0:
            return np.tanh(h) * 2.0
        return h * h - 3.0


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_data_dependent_branches_follow_the_data(backend):
    pytest.importorskip(backend)
    ref = _Gate()
    m2 = fc.to(ref, backend)
    rng = np.random.default_rng(3)
    for sign in (1.0, -1.0, 1.0, -1.0):         # both paths, alternating, after the first compile
        x = sign * (np.abs(rng.standard_normal((4, 3))) + 0.1) * np.array([1.0, -0.2, 0.1])
        np.testing.assert_allclose(fc.backends.to_numpy(m2(x)), ref(x), rtol=1e-12)
        y, back = m2.pullback(x)
        dy = rng.standard_normal(ref(x).shape)
        dx = back(dy)
        y_ref, back_ref = ref.pullback(x)
        ref.zero_grad()
        dx_ref = back_ref(dy)
        np.testing.assert_allclose(fc.backends.to_numpy(y), y_ref, rtol=1e-12)
        np.testing.assert_allclose(fc.backends.to_numpy(dx), dx_ref, rtol=1e-12)
        np.testing.assert_allclose(fc.backends.to_numpy(m2.W.grad), ref.W.grad, rtol=1e-12)
        m2.zero_grad()


def test_a_jitted_jax_step_of_a_model_branching_on_data_is_a_clear_error():
    pytest.importorskip("jax")
    m2 = fc.to(_Gate(), "jax")
    step = fc.backends.train_step(m2, fc.mse, 0.1)
    x = np.ones((4, 3))
    with pytest.raises(fc.CompileError, match="np.where"):
        step(x, np.zeros((4, 2)))


# -- fc.train_step and fc.train on backend models ----------------------------------------

def _numpy_step_losses(m, opt, batches):
    """NumPy's generated step, each batch from the initial recurrent state (as a backend step)."""
    step = fc.train_step(m, fc.mse, opt)
    losses = []
    for x, y in batches:
        m.reset()
        losses.append(step(x, target=y))
    return losses


@pytest.mark.parametrize("name", ["mlp", "transformer_block", "lstm_unroll"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_public_train_step_on_backend_equals_numpy_train_step(backend, name):
    """fc.train_step(m2, ...) dispatches to the backend's step: same losses and parameters
    as NumPy's generated step (float64, 1e-10), native inputs accepted."""
    batches = _batches(name, np.float64)
    m, _ = zoo()[name]
    m2 = fc.to(m, backend)
    ref = _numpy_step_losses(m, fc.optim.Adam(0.01), batches)
    step = fc.train_step(m2, fc.mse, fc.optim.Adam(0.01))
    assert isinstance(step, fc.backends.BackendStep)
    be = m2._fc_backend
    got = [float(step(be.native(x), target=be.native(y))) for x, y in batches]
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    for (path, p), (_, q) in zip(fc.named_params(m), m2.named_params()):
        close(q.value, p.value, np.float64)
    if backend == "jax":
        assert step.jitted._cache_size() == 1       # the whole step: one jax.jit program


@pytest.mark.parametrize("backend", BACKENDS)
def test_source_of_a_backend_train_step_shows_its_code(backend):
    m, _ = zoo()["mlp"]
    step = fc.train_step(fc.to(m, backend), fc.mse, fc.optim.Adam(0.01))
    (x, y), = _batches("mlp", np.float64, n=1)
    with pytest.raises(ValueError, match="has not run yet"):
        fc.source(step)
    step(x, target=y)
    text = fc.source(step)
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert ("jax.jit" in text) == (backend == "jax")
    assert "def backward_params" in code and "def update" in code and "mse" in text
    assert not re.search(r"\bnp\.", code)
    assert ("torch." in code) if backend == "torch" else ("jnp." in code)
    assert fc.source(step) == text                  # same input, same text


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_on_backend_returns_numpys_history(backend):
    batches = _batches("mlp", np.float64)
    m, _ = zoo()["mlp"]
    m2 = fc.to(m, backend)
    ref = fc.train(m, fc.mse, batches, fc.optim.Adam(0.01), epochs=2, progress=False)
    got = fc.train(m2, fc.mse, batches, fc.optim.Adam(0.01), epochs=2, progress=False)
    assert isinstance(got, History)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.epochs, ref.epochs, rtol=1e-10)
    assert len(got) == 2 * len(batches) and not got.stopped
    seen = []
    stopped = fc.train(fc.to(m, backend), fc.mse, batches, 0.1, epochs=3, progress=False,
                       callbacks=lambda epoch, step, loss: seen.append((epoch, step)) or
                       ("stop" if step == 2 else None))
    assert stopped.stopped and len(stopped) == 2 and seen == [(1, 1), (1, 2)]


def _sqrt_of_square_loss(yhat, y):
    return np.mean(np.sqrt((yhat - y) ** 2))       # finite at yhat == y, its gradient is not


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_loss_or_gradient_on_backend_stops_before_the_update(backend):
    """A NaN loss (TrainingError) or gradient (GradientError naming the Param) changes no
    value and no optimiser state: training on after it equals training without it."""
    from flux_compile.train import GradientError, TrainingError
    batches = _batches("mlp", np.float64)
    m, _ = zoo()["mlp"]
    m2, clean = fc.to(m, backend), fc.to(m, backend)
    opt, clean_opt = fc.optim.Adam(0.01), fc.optim.Adam(0.01)
    fc.train(m2, fc.mse, batches[:1], opt, progress=False)
    fc.train(clean, fc.mse, batches[:1], clean_opt, progress=False)
    x, y = batches[1]
    x = x.copy()
    x[0, 0] = np.nan
    with pytest.raises(TrainingError, match="epoch 1, step 1") as info:
        fc.train(m2, fc.mse, [(x, y)], opt, progress=False)
    assert not isinstance(info.value, GradientError)
    exact = to_numpy(m2(batches[2][0]))
    with pytest.raises(GradientError) as info:
        fc.train(m2, _sqrt_of_square_loss, [(batches[2][0], exact)], opt, progress=False)
    assert info.value.path in {path_str(path) for path, _ in fc.named_params(m)}
    after = fc.train(m2, fc.mse, batches[1:], opt, progress=False)
    want = fc.train(clean, fc.mse, batches[1:], clean_opt, progress=False)
    np.testing.assert_allclose(after, want, rtol=1e-12)
    for (_, p), (_, q) in zip(m2.named_params(), clean.named_params()):
        np.testing.assert_array_equal(to_numpy(p.value), to_numpy(q.value))
