"""fc.train_step equals model.pullback + back + update, step by step (float64 to 1e-12).

The reference step is the public call path: ``pullback`` of the model, ``fc.grad`` of the
loss at its output, ``back`` of that gradient, ``model.update(opt)``. The train step is one
generated function with the model flattened and the update fused into the backward.
"""
import copy

import numpy as np
import pytest

import flux_compile as fc
from flux_compile import optim

OPTIMISERS = {
    "SGD": lambda: optim.SGD(0.1),
    "Momentum": lambda: optim.Momentum(0.05, 0.8),
    "Nesterov": lambda: optim.Nesterov(0.05, 0.7),
    "Adam": lambda: optim.Adam(0.01),
    "AdamW": lambda: optim.AdamW(0.01, weight_decay=0.1),
    "RMSProp": lambda: optim.RMSProp(0.01),
}


@fc.net
class Twin:
    """Two branches sharing one Param (``shared``), a nested Chain, a Param used twice."""

    def __init__(self, shared):
        self.left = fc.Dense(5, 4, act=np.tanh)
        self.right = fc.Dense(5, 4)
        self.right.W = shared
        self.left.W = shared
        self.head = fc.Chain(fc.Dense(4, 4, act=fc.sigmoid), fc.Dense(4, 3))
        self.scale = np.full((1, 3), 0.5)

    def forward(self, x):
        h = self.left(x) * self.right(x)
        y = self.head(h)
        return y * self.scale + self.scale * self.scale


def mlp(dtype=np.float64):
    return fc.Chain(fc.Dense(5, 7, act=np.tanh, dtype=dtype), fc.Dense(7, 3, dtype=dtype))


def twin():
    return Twin(fc.Param(np.random.randn(5, 4) / 3))


def frozen():
    m = mlp()
    fc.freeze(m.layers[0])
    return m


def lstm():
    return fc.Chain(fc.unroll(fc.LSTM(5, 4), 3), lambda h: h[:, -1, :], fc.Dense(4, 3))


MODELS = {"mlp": mlp, "twin": twin, "frozen": frozen, "lstm": lstm}


def data(name, dtype=np.float64, batch=6):
    x = np.random.randn(batch, 3, 5) if name == "lstm" else np.random.randn(batch, 5)
    return x.astype(dtype), np.random.randn(batch, 3).astype(dtype)


def reference_step(model, loss, opt, x, t):
    yhat, back = model.pullback(x)
    value, grads = fc.grad(loss, yhat, t)
    back(grads[0], input_grads=False)
    model.update(opt)
    return float(value)


def values(model):
    return [p.value for p in fc.params(model)]


@pytest.mark.parametrize("opt_name", sorted(OPTIMISERS))
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_train_step_equals_pullback_back_update(model_name, opt_name):
    np.random.seed(1)
    a = MODELS[model_name]()
    b = copy.deepcopy(a)
    opt_a, opt_b = OPTIMISERS[opt_name](), OPTIMISERS[opt_name]()
    step = fc.train_step(b, fc.mse, opt_b)
    for _ in range(4):
        x, t = data(model_name)
        want = reference_step(a, fc.mse, opt_a, x, t)
        got = step(x, target=t)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-14)
        for va, vb in zip(values(a), values(b)):
            np.testing.assert_allclose(vb, va, rtol=1e-12, atol=1e-14)
    assert len(fc.params(b)) == len(fc.params(a))


@pytest.mark.parametrize("opt_name", ["SGD", "Adam"])
def test_train_step_float32_stays_float32(opt_name):
    np.random.seed(2)
    a = mlp(np.float32)
    b = copy.deepcopy(a)
    opt_a, opt_b = OPTIMISERS[opt_name](), OPTIMISERS[opt_name]()
    step = fc.train_step(b, fc.mse, opt_b)
    for _ in range(3):
        x, t = data("mlp", np.float32)
        want = reference_step(a, fc.mse, opt_a, x, t)
        got = step(x, target=t)
        assert got == pytest.approx(want, rel=1e-5)
        for va, vb in zip(values(a), values(b)):
            assert vb.dtype == np.float32
            np.testing.assert_allclose(vb, va, rtol=1e-5, atol=1e-6)
    for p in fc.params(b):
        for slot in opt_b.state[p].slots:
            assert slot.dtype == np.float32


def test_shared_param_gets_one_update_from_both_uses():
    np.random.seed(3)
    m = twin()
    step = fc.train_step(m, fc.mse, optim.SGD(0.1))
    x, t = data("twin")
    step(x, target=t)
    src = fc.source(step)
    # the shared W: one partial gradient, summed, then one update
    assert src.count("left.W.value, ") == 1 or src.count("right.W.value, ") == 1
    assert "grad_" in src


def test_source_is_one_flat_function_with_submodel_names():
    np.random.seed(4)
    m = mlp()
    step = fc.train_step(m, fc.mse, optim.Momentum(0.1))
    x, t = data("mlp")
    step(x, target=t)
    src = fc.source(step)
    assert "_back" not in src and "_pullback" not in src         # flattened: no closures
    assert "(in model.layers[0]: Dense.forward, layers.py)" in src
    assert "model.layers[1].W.value" in src
    body = src.split("def step(")[1]
    # fused: each Param's update follows its gradient, before the next layer's backward
    assert body.index("new_3 = ") < body.index("new_0 = ")
    assert ".grad" not in body


def test_fused_step_leaves_grad_untouched():
    np.random.seed(5)
    m = mlp()
    for p in fc.params(m):
        p.grad[...] = 7.0
    step = fc.train_step(m, fc.mse, optim.SGD(0.1))
    x, t = data("mlp")
    step(x, target=t)
    for p in fc.params(m):
        assert (p.grad == 7.0).all()


def test_nonfinite_loss_changes_nothing():
    np.random.seed(6)
    m = mlp()
    opt = optim.Adam(0.01)
    step = fc.train_step(m, fc.mse, opt)
    x, t = data("mlp")
    step(x, target=t)
    before = [v.copy() for v in values(m)]
    state = {id(p): (opt.state[p].step, [s.copy() for s in opt.state[p].slots]) for p in fc.params(m)}
    t_bad = t.copy()
    t_bad[0, 0] = np.nan
    with pytest.raises(FloatingPointError):
        step(x, target=t_bad)
    for v, w in zip(values(m), before):
        np.testing.assert_array_equal(v, w)
    for p in fc.params(m):
        step_count, slots = state[id(p)]
        assert opt.state[p].step == step_count
        for s, w in zip(opt.state[p].slots, slots):
            np.testing.assert_array_equal(s, w)


def root_loss(yhat, t):
    return np.sum(np.sqrt(np.abs(yhat - t)))      # finite at yhat == t, its gradient is not


def test_nonfinite_gradient_names_the_param_and_changes_nothing():
    np.random.seed(7)
    m = mlp()
    opt = optim.Momentum(0.1)
    step = fc.train_step(m, root_loss, opt)
    x, t = data("mlp")
    step(x, target=t)
    before = [v.copy() for v in values(m)]
    slots = [opt.state[p].slots[0].copy() for p in fc.params(m)]
    with pytest.raises(FloatingPointError, match=r"layers\[") as info, np.errstate(all="ignore"):
        step(x, target=m(x))            # the loss is 0.0, the gradients NaN
    assert "nothing was updated" in str(info.value)
    for v, w in zip(values(m), before):
        np.testing.assert_array_equal(v, w)
    for p, w in zip(fc.params(m), slots):
        np.testing.assert_array_equal(opt.state[p].slots[0], w)


def test_fault_mid_step_leaves_params_and_state_unchanged():
    np.random.seed(8)
    m = mlp()
    opt = optim.Momentum(0.1)
    step = fc.train_step(m, fc.mse, opt)
    x, t = data("mlp")
    step(x, target=t)
    before = [v.copy() for v in values(m)]
    steps = [opt.state[p].step for p in fc.params(m)]
    with pytest.raises(Exception):
        step(x, target=t[:, :2])        # the loss fails after the forward ran
    for v, w in zip(values(m), before):
        np.testing.assert_array_equal(v, w)
    assert [opt.state[p].step for p in fc.params(m)] == steps


def test_structure_change_recompiles():
    np.random.seed(9)
    m = mlp()
    step = fc.train_step(m, fc.mse, optim.SGD(0.1))
    x, t = data("mlp")
    step(x, target=t)
    m.layers[1].act = np.tanh            # a sub-model's setting: baked in, so guarded
    b = copy.deepcopy(m)
    want = reference_step(b, fc.mse, optim.SGD(0.1), x, t)
    assert step(x, target=t) == pytest.approx(want, rel=1e-12)
    assert fc.source(step).count("np.tanh(") == 2


def test_same_structure_with_other_trainable_flags_gets_its_own_step():
    """The generated step is shared per structure; a frozen layer is another structure."""
    np.random.seed(10)
    free, frozen_one = mlp(), frozen()
    x, t = data("mlp")
    fc.train_step(free, fc.mse, optim.Adam(0.01))(x, target=t)
    b = copy.deepcopy(frozen_one)
    want = reference_step(b, fc.mse, optim.Adam(0.01), x, t)
    step = fc.train_step(frozen_one, fc.mse, optim.Adam(0.01))
    assert step(x, target=t) == pytest.approx(want, rel=1e-12)
    for va, vb in zip(values(b), values(frozen_one)):
        np.testing.assert_allclose(vb, va, rtol=1e-12, atol=1e-14)
    src = fc.source(step)
    assert "update(model.layers[0]" not in src and src.count("update(model.layers[1]") == 2


@fc.net
class TwoInputs:
    def __init__(self):
        self.a = fc.Dense(3, 2, act=np.tanh)
        self.b = fc.Dense(4, 2)

    def forward(self, x, z):
        return self.a(x) * self.b(z)


def test_model_with_two_inputs():
    np.random.seed(11)
    m = TwoInputs()
    ref = copy.deepcopy(m)
    step = fc.train_step(m, fc.mse, optim.RMSProp(0.01))
    opt = optim.RMSProp(0.01)
    for _ in range(3):
        x, z, t = np.random.randn(5, 3), np.random.randn(5, 4), np.random.randn(5, 2)
        yhat, back = ref.pullback(x, z)
        value, grads = fc.grad(fc.mse, yhat, t)
        back(grads[0], input_grads=False)
        ref.update(opt)
        assert step(x, z, target=t) == pytest.approx(float(value), rel=1e-12)
    for va, vb in zip(values(ref), values(m)):
        np.testing.assert_allclose(vb, va, rtol=1e-12, atol=1e-14)


def test_an_error_in_the_step_names_the_users_line():
    np.random.seed(12)
    m = mlp()
    step = fc.train_step(m, fc.mse, optim.SGD(0.1))
    x, t = data("mlp")
    step(x, target=t)
    with pytest.raises(ValueError, match=r"losses\.py:\d+: return np\.mean"):
        step(x, target=t[:, :2])


def test_fc_train_runs_the_train_step_and_equals_the_reference():
    np.random.seed(13)
    m = twin()
    ref = copy.deepcopy(m)
    batches = [data("twin") for _ in range(3)]
    fc.train(m, fc.mse, batches, optim.Nesterov(0.05), progress=False)
    opt = optim.Nesterov(0.05)
    for x, t in batches:
        reference_step(ref, fc.mse, opt, x, t)
    for va, vb in zip(values(ref), values(m)):
        np.testing.assert_allclose(vb, va, rtol=1e-12, atol=1e-14)
    assert all(not p.grad.any() for p in fc.params(m))


@fc.net
class SharedWithRecurrent:
    """A Param used by an inlined layer and by a recurrent cell that keeps its own call."""

    def __init__(self):
        self.cell = fc.RNN(3, 3)
        self.read = fc.Dense(3, 3)
        self.read.W = self.cell.Wh          # one Param, two owners

    def forward(self, x):
        return self.read(self.cell(x))


@pytest.mark.parametrize("opt_name", ["SGD", "Adam"])
def test_param_shared_by_an_inlined_layer_and_a_recurrent_cell(opt_name):
    """Its gradient is the local part plus what the cell's backward put in .grad."""
    np.random.seed(14)
    m = SharedWithRecurrent()
    ref = copy.deepcopy(m)
    step = fc.train_step(m, fc.mse, OPTIMISERS[opt_name]())
    opt = OPTIMISERS[opt_name]()
    for _ in range(3):
        x, t = np.random.randn(4, 3), np.random.randn(4, 3)
        ref.reset()
        m.reset()
        want = reference_step(ref, fc.mse, opt, x, t)
        assert step(x, target=t) == pytest.approx(want, rel=1e-12)
        for va, vb in zip(values(ref), values(m)):
            np.testing.assert_allclose(vb, va, rtol=1e-12, atol=1e-14)
    src = fc.source(step)
    assert "_pullback" in src and "cell.Wh.grad" in src
    assert all(not p.grad.any() for p in fc.params(m))


def test_gradient_check_is_exact_when_the_sum_overflows():
    from flux_compile import trainstep
    trainstep._finite(("W",), np.full(10, 1e308))                # finite, its sum is inf
    trainstep._finite(("W",), np.full(10, 3e38, dtype=np.float32))
    for bad in (np.inf, -np.inf, np.nan):
        g = np.ones(5)
        g[2] = bad
        with pytest.raises(optim.NonFiniteGradient, match="gradient of W"):
            trainstep._finite(("W",), g)


def test_source_before_a_step_needs_example_arrays():
    m = mlp()
    step = fc.train_step(m, fc.mse, optim.SGD(0.1))
    with pytest.raises(ValueError, match="has not run yet"):
        fc.source(step)
    x, t = data("mlp")
    before = [v.copy() for v in values(m)]
    src = fc.source(step, inputs=(x, t))
    assert src.startswith("# generated by flux_compile") and "def step(" in src
    for v, w in zip(values(m), before):          # showing the code trains nothing
        np.testing.assert_array_equal(v, w)


@fc.net
class WithUnused:
    def __init__(self):
        self.used = fc.Dense(5, 3)
        self.spare = np.ones((2, 2))        # a trainable Param forward never reads

    def forward(self, x):
        return self.used(x)


@pytest.mark.parametrize("opt_name", ["SGD", "Momentum", "Adam"])
def test_an_unused_param_is_updated_with_a_zero_gradient_not_a_stale_one(opt_name):
    np.random.seed(15)
    m = WithUnused()
    ref = copy.deepcopy(m)
    m.spare.grad[...] = 5.0                 # stale: must not reach the update
    step = fc.train_step(m, fc.mse, OPTIMISERS[opt_name]())
    opt = OPTIMISERS[opt_name]()
    for _ in range(2):
        x, t = data("mlp")
        want = reference_step(ref, fc.mse, opt, x, t)
        assert step(x, target=t) == pytest.approx(want, rel=1e-12)
    for va, vb in zip(values(ref), values(m)):
        np.testing.assert_allclose(vb, va, rtol=1e-12, atol=1e-14)
    assert (m.spare.grad == 5.0).all()
