"""Optimisers: hand-computed steps, torch.optim agreement, frozen Params, generated source."""
import inspect

import numpy as np
import pytest

from flux_compile import optim, updatestep
from flux_compile.optim import (SGD, Adam, AdamW, Momentum, Nesterov, RMSProp, apply_update,
                                update_source, update_with)
from flux_compile.params import Param, named_params


class Toy:
    """Stands in for an @fc.net model: the class flag plus plain attributes."""
    __flux_net__ = True

    def __init__(self, **fields):
        self.__dict__.update(fields)


def scalar_model():
    return Toy(w=Param(np.array([1.0])))


def run(opt, steps, g=0.5):
    m = scalar_model()
    out = []
    for _ in range(steps):
        m.w.grad[...] = g
        apply_update(m, opt)
        out.append(float(m.w.value[0]))
    return out


# -- hand-computed values: w = 1, constant gradient 0.5 ------------------------

def test_sgd_by_hand():
    assert run(SGD(0.1), 2) == pytest.approx([0.95, 0.90])


def test_sgd_from_a_number():
    m = scalar_model()
    m.w.grad[...] = 0.5
    apply_update(m, 0.1)
    assert m.w.value[0] == pytest.approx(0.95)


def test_momentum_by_hand():
    # v = 0.5, p = 1 - 0.05;  v = 0.9 * 0.5 + 0.5 = 0.95, p = 0.95 - 0.095
    assert run(Momentum(0.1, 0.9), 2) == pytest.approx([0.95, 0.855])


def test_nesterov_by_hand():
    # v = 0.5, p = 1 - 0.1 * (0.5 + 0.45);  v = 0.95, p = 0.905 - 0.1 * (0.5 + 0.855)
    assert run(Nesterov(0.1, 0.9), 2) == pytest.approx([0.905, 0.7695])


def test_adam_by_hand():
    # with a constant gradient the bias-corrected mhat / sqrt(vhat) is exactly 1: each step moves lr
    assert run(Adam(0.1), 3) == pytest.approx([0.9, 0.8, 0.7], rel=1e-7)


def test_adamw_by_hand():
    # p *= 1 - lr * wd, then the Adam step of lr
    assert run(AdamW(0.1, weight_decay=0.1), 2) == pytest.approx([0.89, 0.89 * 0.99 - 0.1], rel=1e-7)


def test_rmsprop_by_hand():
    v1 = 0.1 * 0.25
    p1 = 1 - 0.1 * 0.5 / (np.sqrt(v1) + 1e-8)
    v2 = 0.9 * v1 + 0.1 * 0.25
    p2 = p1 - 0.1 * 0.5 / (np.sqrt(v2) + 1e-8)
    assert run(RMSProp(0.1, 0.9), 2) == pytest.approx([p1, p2])
    assert p1 == pytest.approx(0.683772234)


# -- against torch.optim ---------------------------------------------------------

TORCH_PAIRS = [
    (lambda: SGD(0.05), lambda t, ps: t.optim.SGD(ps, lr=0.05)),
    (lambda: Momentum(0.05, 0.8), lambda t, ps: t.optim.SGD(ps, lr=0.05, momentum=0.8)),
    (lambda: Nesterov(0.05, 0.8), lambda t, ps: t.optim.SGD(ps, lr=0.05, momentum=0.8, nesterov=True)),
    (lambda: Adam(0.01, (0.8, 0.95), 1e-6),
     lambda t, ps: t.optim.Adam(ps, lr=0.01, betas=(0.8, 0.95), eps=1e-6)),
    (lambda: AdamW(0.01, (0.8, 0.95), 1e-6, 0.1),
     lambda t, ps: t.optim.AdamW(ps, lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)),
    (lambda: RMSProp(0.01, 0.9, 1e-6), lambda t, ps: t.optim.RMSprop(ps, lr=0.01, alpha=0.9, eps=1e-6)),
]


@pytest.mark.parametrize("ours, theirs", TORCH_PAIRS,
                         ids=["SGD", "Momentum", "Nesterov", "Adam", "AdamW", "RMSProp"])
def test_matches_torch(ours, theirs):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    m = Toy(W=Param(rng.normal(size=(3, 4))), b=Param(rng.normal(size=(4,))))
    tparams = [torch.tensor(p.value.copy(), requires_grad=True) for p in (m.W, m.b)]
    opt, topt = ours(), theirs(torch, tparams)
    for _ in range(5):
        grads = [rng.normal(size=p.shape) for p in (m.W, m.b)]
        for p, tp, g in zip((m.W, m.b), tparams, grads):
            p.grad[...] = g
            tp.grad = torch.tensor(g)
        apply_update(m, opt)
        topt.step()
        for p, tp in zip((m.W, m.b), tparams):
            np.testing.assert_allclose(p.value, tp.detach().numpy(), rtol=1e-10, atol=1e-12)


# -- behaviour -------------------------------------------------------------------

ALL = [SGD(0.1), Momentum(), Nesterov(), Adam(), AdamW(), RMSProp()]


@pytest.mark.parametrize("opt", ALL, ids=lambda o: type(o).__name__)
def test_grads_zeroed_and_frozen_untouched(opt):
    frozen = Param(np.ones(3), trainable=False)
    m = Toy(W=Param(np.ones((2, 2))), F=frozen)
    m.W.grad[...] = 1.0
    frozen.grad[...] = 1.0
    opt.step(m)
    assert not np.array_equal(m.W.value, np.ones((2, 2)))
    np.testing.assert_array_equal(frozen.value, np.ones(3))
    assert not m.W.grad.any() and not frozen.grad.any()
    assert frozen not in opt.state


@pytest.mark.parametrize("opt", ALL, ids=lambda o: type(o).__name__)
def test_float32_kept(opt):
    m = Toy(W=Param(np.ones((2, 3), dtype=np.float32)))
    for _ in range(3):
        m.W.grad[...] = 0.25
        opt.step(m)
    assert m.W.value.dtype == np.float32 and m.W.grad.dtype == np.float32
    for s in opt.state[m.W].slots:
        assert s.dtype == np.float32


def test_frozen_left_out_of_params():
    m = Toy(a=Param(np.ones(1)), b=Param(np.ones(1), trainable=False))
    assert [q for q, _ in named_params(m, trainable_only=True)] == [("a",)]


def test_source_is_flat_commented_and_deterministic():
    def model():
        return Toy(layers=[Toy(W=Param(np.ones((2, 2))), b=Param(np.zeros(2), trainable=False))],
                   out=Toy(W=Param(np.ones(2))))
    src = update_source(model(), Adam())
    assert src == update_source(model(), Adam(0.5))        # hyper-parameters are arguments
    assert src.startswith("def update(params, state, steps, lr, beta1, beta2, eps):")
    assert "# layers[0].W\n" in src and "# out.W\n" in src
    assert "# layers[0].b (frozen: no update)" in src
    assert "for " not in src                                 # one flat piece of code
    assert "p = p - lr * mhat / (np.sqrt(vhat) + eps)" in src
    assert update_source(model()) == update_source(model(), SGD(0.1))


def test_source_defaults_to_the_last_optimiser_used():
    m = Toy(W=Param(np.ones(2)))
    assert "lr * g" in update_source(m)
    apply_update(m, RMSProp())
    assert update_source(m) == update_source(m, RMSProp())
    assert update_source(m, SGD(0.1)) != update_source(m)


def test_compiled_once_and_inspectable():
    m = Toy(W=Param(np.ones(2)))
    opt = Momentum()
    apply_update(m, opt)
    n = len(updatestep._CACHE)
    for _ in range(3):
        apply_update(m, opt)
    assert len(updatestep._CACHE) == n
    (source, fn), = [v for k, v in updatestep._CACHE.items() if k[0] is Momentum and k[2:] == ((("W",),), ())]
    assert inspect.getsource(fn) == source
    assert "Toy.update (Momentum)" in fn.__code__.co_filename


def test_shared_param_updated_once():
    shared = Param(np.array([1.0]))
    m = Toy(a=Toy(w=shared), b=Toy(w=shared))
    shared.grad[...] = 0.5
    apply_update(m, SGD(0.1))
    assert shared.value[0] == pytest.approx(0.95)
    assert update_source(m).count("p = p - lr * g") == 1


def test_state_per_parameter():
    opt = Adam()
    m1, m2 = scalar_model(), scalar_model()
    m1.w.grad[...] = 1.0
    opt.step(m1)
    m1.w.grad[...] = 1.0
    opt.step(m1)
    m2.w.grad[...] = 1.0
    opt.step(m2)
    assert opt.state[m1.w].step == 2 and opt.state[m2.w].step == 1
    opt.reset()
    assert not opt.state


def test_repr_and_bad_argument():
    assert repr(Adam()) == "Adam(lr=0.001, betas=(0.9, 0.999), eps=1e-08)"
    with pytest.raises(TypeError, match="learning rate or an optimiser"):
        apply_update(scalar_model(), "fast")


def test_update_with():
    m = Toy(first=Toy(W=Param(np.ones(2))), F=Param(np.ones(1), trainable=False))
    update_with(m, {("first", "W"): np.array([1.0, 2.0]), "F": np.ones(1)}, lambda x, g: x - 0.5 * g)
    np.testing.assert_allclose(m.first.W.value, [0.5, 0.0])
    np.testing.assert_array_equal(m.F.value, [1.0])         # frozen: left alone


def test_update_with_in_place_fn():
    m = Toy(W=Param(np.ones(2)))

    def step(x, g):
        x -= g

    update_with(m, {("W",): np.ones(2)}, step)
    np.testing.assert_array_equal(m.W.value, [0.0, 0.0])


def test_update_with_unknown_paths_listed_and_nothing_changed():
    m = Toy(W=Param(np.ones(2)))
    with pytest.raises(KeyError) as err:
        update_with(m, {("W",): np.ones(2), ("nope",): 1, ("x", "y"): 2}, lambda x, g: x - g)
    assert "('nope',)" in str(err.value) and "('x', 'y')" in str(err.value)
    np.testing.assert_array_equal(m.W.value, [1.0, 1.0])


def test_clip_grad_norm_scales_to_max_and_returns_norm():
    import flux_compile as fc
    from flux_compile.optim import clip_grad_norm
    m = fc.Affine(1, 1)
    m.W.grad[...] = 3.0
    m.b.grad[...] = 4.0
    assert clip_grad_norm(m, 10.0) == 5.0 and m.W.grad[0, 0] == 3.0      # under the limit: untouched
    assert clip_grad_norm(m, 1.0) == 5.0
    np.testing.assert_allclose([m.W.grad[0, 0], m.b.grad[0, 0]], [0.6, 0.8])


def test_cast_to_float32():
    import flux_compile as fc
    m = fc.cast(fc.LSTM(3, 4), np.float32)
    assert all(p.dtype == np.float32 and p.grad.dtype == np.float32 for p in fc.params(m))
    assert fc.unroll(m, 2)(np.ones((2, 2, 3), np.float32)).dtype == np.float32


class InPlaceSGD(SGD):
    """A user's optimiser written the old way, updating in place."""
    def block(self):
        return ["p -= lr * g"]


class WritesIntoAnElement(SGD):
    def block(self):
        return ["p[0] = 0.0"]


def test_an_in_place_block_is_rewritten_so_the_old_arrays_stay_intact():
    m = Toy(w=Param(np.array([1.0, 2.0])))
    old = m.w.value
    m.w.grad[...] = [1.0, 1.0]
    assert "p = p - lr * g" in update_source(m, InPlaceSGD(0.5))
    apply_update(m, InPlaceSGD(0.5))
    np.testing.assert_array_equal(m.w.value, [0.5, 1.5])
    np.testing.assert_array_equal(old, [1.0, 2.0])          # computed into a new array
    with pytest.raises(TypeError, match=r"writes into an array \(p\[0\] = 0.0\)"):
        update_source(m, WritesIntoAnElement(0.5))


def test_update_with_changes_nothing_when_fn_fails_for_a_later_param():
    m = Toy(a=Param(np.ones(2)), b=Param(np.ones(2)))

    def fn(w, g):
        if g[0] == 2.0:
            raise RuntimeError("no")
        return w - g
    with pytest.raises(RuntimeError):
        update_with(m, {"a": np.ones(2), "b": np.full(2, 2.0)}, fn)
    np.testing.assert_array_equal(m.a.value, np.ones(2))
    with pytest.raises(ValueError, match="update of b has shape"):
        update_with(m, {"a": np.ones(2), "b": np.full(2, 2.0)},
                    lambda w, g: np.ones(3) if g[0] == 2.0 else w - g)
    np.testing.assert_array_equal(m.a.value, np.ones(2))
