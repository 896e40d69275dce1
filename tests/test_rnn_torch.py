"""fc.RNN, fc.GRU and fc.LSTM against PyTorch's nn.RNN/GRU/LSTM, in float64.

Each layer is copied from a torch module with ``from_torch``, unrolled with
``fc.unroll(m, T)`` over the same (batch, T, n_in) input, and compared on

- the output sequence (torch starts from a zero state, as our initial Params do);
- every gradient of ``(out * W).sum()`` for a fixed random ``W``: the input,
  each weight (ours are the transposes of torch's), the biases, and the
  initial state (ours is a (1, n_h) Param, so its gradient is torch's h0 / c0
  gradient summed over the batch);
- ``to_torch()``: the exported module computes the same sequence, and
  ``from_torch(m.to_torch())`` gives back the same parameters.
"""
import numpy as np
import pytest

import flux_compile as fc

torch = pytest.importorskip("torch")

N_IN, N_H, BATCH = 3, 5, 4
KINDS = {"RNN": fc.RNN, "GRU": fc.GRU, "LSTM": fc.LSTM}
LENGTHS = [1, 2, 7]


def torch_module(kind, seed=0, **kw):
    torch.manual_seed(seed)
    return getattr(torch.nn, kind)(N_IN, N_H, batch_first=True, dtype=torch.float64, **kw)


def inputs(T, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((BATCH, T, N_IN)), rng.standard_normal((BATCH, T, N_H))


def torch_run(module, xs, W=None):
    """Run ``module`` from a zero state that requires grad; backprop ``(out * W).sum()``.

    Returns the output sequence, and with ``W`` the input and initial-state gradients.
    """
    x = torch.from_numpy(xs).requires_grad_(True)
    h0 = torch.zeros(1, xs.shape[0], module.hidden_size, dtype=torch.float64, requires_grad=True)
    if isinstance(module, torch.nn.LSTM):
        c0 = torch.zeros_like(h0, requires_grad=True)
        out, _ = module(x, (h0, c0))
        state = {"h": h0, "c": c0}
    else:
        out, _ = module(x, h0)
        state = {"h": h0}
    if W is None:
        return out.detach().numpy()
    (out * torch.from_numpy(W)).sum().backward()
    dstate = {name: s.grad.numpy().sum(axis=1) for name, s in state.items()}    # (1, n_h), as ours
    return out.detach().numpy(), x.grad.numpy(), dstate


def weight_grads(kind, module):
    """Torch's parameter gradients under our names (transposed to our layout)."""
    g = {"Wx": module.weight_ih_l0.grad.numpy().T, "Wh": module.weight_hh_l0.grad.numpy().T}
    bih, bhh = module.bias_ih_l0.grad.numpy()[None], module.bias_hh_l0.grad.numpy()[None]
    if kind == "GRU":
        g["bx"], g["bh"] = bih, bhh
    else:
        np.testing.assert_allclose(bih, bhh)    # both biases enter as a sum
        g["b"] = bih
    return g


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("kind", KINDS)
def test_outputs_match_torch(kind, T):
    module = torch_module(kind)
    m = KINDS[kind].from_torch(module)
    xs, _ = inputs(T)
    ys = fc.unroll(m, T)(xs)
    assert ys.shape == (BATCH, T, N_H) and ys.dtype == np.float64
    np.testing.assert_allclose(ys, torch_run(module, xs), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("kind", KINDS)
def test_gradients_match_torch(kind, T):
    module = torch_module(kind)
    m = KINDS[kind].from_torch(module)
    xs, W = inputs(T)
    out_t, dx_t, dstate_t = torch_run(module, xs, W)

    ys, back = fc.unroll(m, T).pullback(xs)
    dx = back(W)
    np.testing.assert_allclose(ys, out_t, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, dx_t, rtol=1e-9, atol=1e-12)
    for name, g in weight_grads(kind, module).items():
        np.testing.assert_allclose(getattr(m, name).grad, g, rtol=1e-9, atol=1e-12, err_msg=name)
    for name, g in dstate_t.items():
        np.testing.assert_allclose(getattr(m, name).grad, g, rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_state_carries_across_calls(kind):
    """Two calls on consecutive halves continue where the first stopped: torch on the whole."""
    module = torch_module(kind)
    m = KINDS[kind].from_torch(module)
    xs, _ = inputs(6)
    seq = fc.unroll(m, 3)
    ys = np.concatenate([seq(xs[:, :3]), seq(xs[:, 3:])], axis=1)
    np.testing.assert_allclose(ys, torch_run(module, xs), rtol=1e-10, atol=1e-12)
    m.reset()
    np.testing.assert_allclose(seq(xs[:, :3]), torch_run(module, xs[:, :3]), rtol=1e-10, atol=1e-12)


def test_rnn_relu_matches_torch():
    module = torch_module("RNN", nonlinearity="relu")
    m = fc.RNN.from_torch(module)
    xs, W = inputs(7)
    out_t, dx_t, _ = torch_run(module, xs, W)
    ys, back = fc.unroll(m, 7).pullback(xs)
    np.testing.assert_allclose(ys, out_t, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(back(W), dx_t, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m.Wh.grad, module.weight_hh_l0.grad.numpy().T, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_to_torch_round_trip(kind):
    fc.init.seed(3)
    m = KINDS[kind](N_IN, N_H)
    rng = np.random.default_rng(4)
    for p in fc.params(m):                      # nonzero biases, so every copy is exercised
        if p is not m.h and p is not getattr(m, "c", None):
            p.value[...] += 0.1 * rng.standard_normal(p.shape)
    module = m.to_torch()
    assert isinstance(module, getattr(torch.nn, kind)) and module.batch_first
    xs, _ = inputs(7)
    np.testing.assert_allclose(torch_run(module, xs), fc.unroll(m, 7)(xs), rtol=1e-10, atol=1e-12)
    back = KINDS[kind].from_torch(module)
    for (path, p), (path2, q) in zip(fc.named_params(m), fc.named_params(back)):
        assert path == path2
        np.testing.assert_allclose(q.value, p.value, rtol=1e-15, atol=0, err_msg=str(path))
