"""Convolution, pooling, LayerNorm, Embedding and BatchNorm against ``torch.nn.functional``
(copied weights; outputs and gradients; float64 to 1e-10 and float32 to 1e-5), compiled
gradients against central finite differences in float64, and train/test mode soundness."""
import numpy as np
import pytest

import flux_compile as fc
from numeric import TORCH_TOL, close_to_torch as close

torch = pytest.importorskip("torch")
F = torch.nn.functional
torch.set_num_threads(1)

TOL = TORCH_TOL
rng = np.random.default_rng(7)


def t(a, grad=True):
    return torch.tensor(np.asarray(a), requires_grad=grad)


# ------------------------------------------------------------------ primitives, compiled

CONV_CASES = [  # x shape, W shape, stride, padding
    ((2, 3, 6, 5), (4, 3, 3, 3), 1, 0),
    ((2, 3, 7, 6), (4, 3, 3, 2), 2, 1),                 # stride, padding, non-square kernel
    ((1, 1, 9, 7), (2, 1, 4, 3), 3, 0),                 # batch 1, C=1, k not dividing H
    ((2, 2, 5, 8), (3, 2, 2, 3), (2, 3), (1, 2)),       # pairs
    ((3, 2, 4, 4), (1, 2, 4, 4), 1, 0),                 # kernel as large as the input
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("xs,ws,stride,padding", CONV_CASES)
def test_conv2d_equals_torch(xs, ws, stride, padding, dtype):
    @fc.net
    class Conv:
        def __init__(self):
            self.W = rng.standard_normal(ws).astype(dtype)

        def forward(self, x):
            return fc.conv2d(x, self.W, stride, padding)

    m = Conv()
    x = rng.standard_normal(xs).astype(dtype)
    y, back = m.pullback(x)
    tx, tW = t(x), t(m.W.value)
    ty = F.conv2d(tx, tW, stride=stride, padding=padding)
    close(y, ty, dtype, "output")
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = back(dy)
    ty.backward(torch.tensor(dy))
    close(dx, tx.grad, dtype, "dx")
    close(m.W.grad, tW.grad, dtype, "dW")


@pytest.mark.parametrize("xs,ws,stride,padding", CONV_CASES)
def test_conv2d_gradients_match_finite_differences(xs, ws, stride, padding):
    def f(x, W):
        return np.sum(np.tanh(fc.conv2d(x, W, stride=stride, padding=padding)) ** 2)
    x, W = rng.standard_normal(xs), rng.standard_normal(ws) * 0.3
    assert fc.gradcheck(f, x, W, rtol=1e-6, max_elements=200).ok


POOL_CASES = [  # x shape, k, stride
    ((2, 3, 4, 6), 2, None),
    ((1, 2, 7, 5), 3, 2),            # overlapping windows, k not dividing H or W
    ((2, 1, 6, 6), (2, 3), None),    # non-square
    ((1, 1, 5, 5), 2, 1),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("xs,k,stride", POOL_CASES)
def test_pooling_equals_torch(xs, k, stride, kind, dtype):
    ours = {"max": fc.maxpool2d, "avg": fc.avgpool2d}[kind]
    theirs = {"max": F.max_pool2d, "avg": F.avg_pool2d}[kind]

    def f(x):
        return ours(x, k, stride=stride)
    x = rng.standard_normal(xs).astype(dtype)
    y, back = _pullback(f, x)
    tx = t(x)
    ty = theirs(tx, k, stride=stride)
    close(y, ty, dtype, "output")
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = back(dy)
    dx = dx[0] if isinstance(dx, tuple) else dx
    ty.backward(torch.tensor(dy))
    close(dx, tx.grad, dtype, "dx")


def _pullback(f, x):
    @fc.net
    class Wrap:
        def forward(self, x):
            return f(x)
    return Wrap().pullback(x)


@pytest.mark.parametrize("k,stride", [(2, None), (3, 1), ((2, 3), (1, 2))])
def test_maxpool_ties_go_where_torch_sends_them(k, stride):
    x = np.round(rng.standard_normal((2, 2, 6, 7)))          # many equal values in each window
    x[0, 0] = 1.0                                            # a window of nothing but ties
    y, back = _pullback(lambda v: fc.maxpool2d(v, k, stride=stride), x)
    tx = t(x)
    ty = F.max_pool2d(tx, k, stride=stride)
    dy = rng.standard_normal(y.shape)
    ty.backward(torch.tensor(dy))
    close(y, ty, np.float64, "output")
    close(back(dy), tx.grad, np.float64, "dx")


@pytest.mark.parametrize("kind", [fc.maxpool2d, fc.avgpool2d])
def test_pooling_gradients_match_finite_differences(kind):
    x = (rng.permutation(2 * 2 * 7 * 5) * 0.1).reshape(2, 2, 7, 5)     # distinct: no ties

    def f(x):
        return np.sum(kind(x, 3, stride=2) ** 2)
    assert fc.gradcheck(f, x, max_elements=140).ok


def test_conv2d_positional_stride_and_padding_in_a_model():
    m = fc.Conv2d(2, 3, 3, stride=2, padding=1)
    x = rng.standard_normal((2, 2, 5, 5))
    want = F.conv2d(t(x, False), t(m.W.value, False), t(m.b.value.ravel(), False), stride=2, padding=1)
    close(m(x), want, np.float64)
    assert fc.gradcheck(m, x).ok


def test_bad_shapes_say_what_is_wanted():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        fc.conv2d(np.ones((3, 4)), np.ones((1, 1, 2, 2)))
    with pytest.raises(ValueError, match="input channels"):
        fc.conv2d(np.ones((1, 3, 4, 4)), np.ones((1, 2, 2, 2)))
    with pytest.raises(ValueError, match="does not fit"):
        fc.maxpool2d(np.ones((1, 1, 2, 2)), 3)


def test_col2im_does_not_use_add_at():
    import inspect
    from flux_compile.rules import conv
    for kernel in (conv.col2im, conv.conv2d_grad_x, conv.maxpool2d_grad, conv.avgpool2d_grad):
        code = inspect.getsource(kernel).split('"""')[-1]          # the body after the docstring
        assert "add.at" not in code and "np.add" not in code, kernel.__name__


# ------------------------------------------------------------------ layers with copied weights

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_conv2d_layer_with_relu_equals_torch(dtype):
    m = fc.Conv2d(3, 5, (3, 2), stride=(1, 2), padding=1, act=fc.relu, dtype=dtype)
    m.b.value[...] = rng.standard_normal(m.b.shape)
    tconv = torch.nn.Conv2d(3, 5, (3, 2), stride=(1, 2), padding=1,
                            dtype=torch.float64 if dtype == np.float64 else torch.float32)
    with torch.no_grad():
        tconv.weight.copy_(torch.tensor(m.W.value))
        tconv.bias.copy_(torch.tensor(m.b.value.ravel()))
    x = rng.standard_normal((2, 3, 6, 7)).astype(dtype)
    y, back = m.pullback(x)
    tx = t(x)
    ty = torch.relu(tconv(tx))
    close(y, ty, dtype, "output")
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = back(dy)
    ty.backward(torch.tensor(dy))
    close(dx, tx.grad, dtype, "dx")
    close(m.W.grad, tconv.weight.grad, dtype, "dW")
    close(m.b.grad.ravel(), tconv.bias.grad, dtype, "db")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(4, 6), ((3, 6)), (2, 3, (2, 5))])
def test_layernorm_equals_torch(shape, dtype):
    *lead, n = shape
    m = fc.LayerNorm(n, dtype=dtype)
    m.g.value[...] = rng.standard_normal(m.g.shape)
    m.b.value[...] = rng.standard_normal(m.b.shape)
    norm = n if isinstance(n, tuple) else (n,)
    x = (rng.standard_normal(tuple(lead) + norm) * 3 + 1).astype(dtype)
    y, back = m.pullback(x)
    tx, tg, tb = t(x), t(m.g.value), t(m.b.value)
    ty = F.layer_norm(tx, norm, tg, tb, eps=1e-5)
    close(y, ty, dtype, "output")
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = back(dy)
    ty.backward(torch.tensor(dy))
    close(dx, tx.grad, dtype, "dx")
    close(m.g.grad, tg.grad, dtype, "dg")
    close(m.b.grad, tb.grad, dtype, "db")
    if dtype == np.float64:
        assert fc.gradcheck(m, x).ok


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_embedding_equals_torch_repeated_indices(dtype):
    m = fc.Embedding(7, 4, dtype=dtype)
    idx = np.array([[0, 3, 3], [6, 0, 3]])
    y, back = m.pullback(idx)
    tW = t(m.W.value)
    ty = F.embedding(torch.tensor(idx), tW)
    close(y, ty, dtype, "output")
    dy = rng.standard_normal(y.shape).astype(dtype)
    back(dy)
    ty.backward(torch.tensor(dy))
    close(m.W.grad, tW.grad, dtype, "dW")


def _torch_bn(n, dim, dtype):
    cls = torch.nn.BatchNorm1d if dim == 2 else torch.nn.BatchNorm2d
    return cls(n, dtype=torch.float64 if dtype == np.float64 else torch.float32)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5, 2)])
def test_batchnorm_train_then_test_equals_torch(shape, dtype):
    m = fc.BatchNorm(shape[1], dtype=dtype)
    m.g.value[...] = rng.standard_normal(m.g.shape)
    m.b.value[...] = rng.standard_normal(m.b.shape)
    tm = _torch_bn(shape[1], len(shape), dtype)
    with torch.no_grad():
        tm.weight.copy_(torch.tensor(m.g.value))
        tm.bias.copy_(torch.tensor(m.b.value))
    for step in range(3):                     # running statistics move with every step
        x = (rng.standard_normal(shape) * 2 + step).astype(dtype)
        y, back = m.pullback(x)
        tx = t(x)
        ty = tm(tx)
        close(y, ty, dtype, f"train output, step {step}")
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx = back(dy)
        ty.backward(torch.tensor(dy))
        close(dx, tx.grad, dtype, "dx")
        close(m.g.grad, tm.weight.grad, dtype, "dg")
        close(m.b.grad, tm.bias.grad, dtype, "db")
        m.zero_grad()
        tm.zero_grad()
    mean, var = m.statistics()
    close(mean, tm.running_mean, dtype, "running mean")
    close(var, tm.running_var, dtype, "running var")
    fc.testmode(m)
    tm.eval()
    x = rng.standard_normal(shape).astype(dtype)
    y, back = m.pullback(x)
    tx = t(x)
    ty = tm(tx)
    close(y, ty, dtype, "test output")
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = back(dy)
    ty.backward(torch.tensor(dy))
    close(dx, tx.grad, dtype, "test dx")
    close(m(x), ty, dtype, "test __call__")
    close(m.statistics()[0], tm.running_mean, dtype, "test mode leaves the statistics alone")


def test_batchnorm_gradients_match_finite_differences_in_both_modes():
    m = fc.BatchNorm(3)
    x = rng.standard_normal((5, 3, 2, 2))
    assert fc.gradcheck(m, x).ok
    m.reset()
    fc.testmode(m)
    assert fc.gradcheck(m, x).ok


def test_switching_mode_never_reuses_the_other_modes_code():
    m = fc.Chain(fc.Dense(3, 3), fc.BatchNorm(3), fc.Dropout(0.5))
    x = rng.standard_normal((8, 3)) * 4 + 2
    train_out = m(x)
    assert np.allclose(train_out.mean(axis=0), m[1].b.value, atol=1e-12)      # batch statistics
    fc.testmode(m)
    assert m[1].training is False and m[2].training is False
    test_out = m(x)
    assert not np.allclose(test_out, train_out)
    mean, var = m[1].statistics()
    h = m[0](x)
    np.testing.assert_allclose(test_out, (h - mean) / np.sqrt(var + 1e-5), atol=1e-12)
    y, back = m.pullback(x)                           # no dropout in test mode, even when training
    np.testing.assert_allclose(y, test_out, atol=1e-12)
    fc.trainmode(m)
    again = m.pullback(x)[0]
    assert (again == 0).sum() > 0                     # dropout is back
    assert np.allclose(fc.Chain(*m.layers[:2])(x).mean(axis=0), 0, atol=1e-12)


# ------------------------------------------------------------------ dtype end to end

def _float32_models():
    return [
        (fc.Affine(4, 3, dtype=np.float32), (5, 4)),
        (fc.Dense(4, 3, fc.relu, dtype=np.float32), (5, 4)),
        (fc.RNN(4, 3, dtype=np.float32), (5, 4)),
        (fc.GRU(4, 3, dtype=np.float32), (5, 4)),
        (fc.LSTM(4, 3, dtype=np.float32), (5, 4)),
        (fc.Chain(fc.Conv2d(2, 3, 3, padding=1, act=fc.relu, dtype=np.float32), fc.MaxPool2d(2),
                  fc.AvgPool2d(1), fc.BatchNorm(3, dtype=np.float32)), (2, 2, 4, 4)),
        (fc.LayerNorm(4, dtype=np.float32), (5, 4)),
        (fc.Embedding(6, 3, dtype=np.float32), None),
    ]


@pytest.mark.parametrize("index", range(len(_float32_models())))
def test_float32_model_stays_float32(index):
    m, shape = _float32_models()[index]
    assert all(p.value.dtype == np.float32 for p in fc.params(m))
    x = np.array([[1, 5], [0, 2]]) if shape is None else rng.standard_normal(shape).astype(np.float32)
    opt = fc.optim.Adam(1e-2)
    for _ in range(2):
        y, back = m.pullback(x)
        assert y.dtype == np.float32
        dx = back(np.ones_like(y))
        if shape is not None:
            assert dx.dtype == np.float32
        assert all(p.grad.dtype == np.float32 for p in fc.params(m))
        m.update(opt)
        assert all(p.value.dtype == np.float32 for p in fc.params(m))
    assert m(x).dtype == np.float32
    from flux_compile.params import submodels
    for sub in submodels(m):                          # recurrent state and running statistics
        for name, value in sub.__dict__.get("_fc_state", {}).items():
            assert np.asarray(value).dtype == np.float32, f"{type(sub).__name__}.{name}"


@pytest.mark.parametrize("cls", [fc.Dense, fc.Affine, fc.LSTM, fc.GRU, fc.RNN])
def test_float32_init_gives_a_float32_layer(cls):
    def init32(*shape):
        return fc.glorot_uniform(*shape, dtype=np.float32)
    m = cls(4, 3, init=init32)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    assert m(x).dtype == np.float32
    assert m(x).dtype == np.float32            # the state after a step too


def test_affine_and_dense_share_the_default_init():
    fc.init.seed(5)
    a = fc.Affine(30, 20)
    fc.init.seed(5)
    d = fc.Dense(30, 20)
    np.testing.assert_array_equal(a.W.value, d.W.value)
    assert not a.b.value.any()
    small = fc.Affine(30, 20, init=fc.initn)
    assert np.abs(small.W.value).max() < 0.1 and small.b.value.any()


def test_gelu_and_its_rule_use_no_power():
    """``x ** 3`` runs libm pow (hundreds of times slower than ``x * x * x`` on negative inputs):
    neither fc.gelu nor its rule may use it (issue 12; benchmarks/transformer.py measures it)."""
    import ast
    import inspect
    from flux_compile import rules
    for fn in (fc.gelu, rules.get_rule(fc.gelu)):
        tree = ast.parse(inspect.getsource(fn))
        assert not any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Pow) for n in ast.walk(tree)), fn


def test_fc_train_moves_batchnorm_statistics_across_a_ragged_last_batch():
    m = fc.Chain(fc.Conv2d(1, 3, 3, padding=1, act=fc.relu), fc.BatchNorm(3), fc.MaxPool2d(2),
                 fc.flatten, fc.Dense(3 * 3 * 3, 4))
    x = rng.standard_normal((10, 1, 6, 6)) + 3
    labels = rng.integers(0, 4, 10)
    data = fc.data.batches(x, labels, 4, rng=0)               # batches of 4, 4 and 2
    history = fc.train(m, fc.logitcrossentropy, data, fc.optim.Adam(1e-2), epochs=2)
    assert len(history) == 6 and np.all(np.isfinite(list(history)))
    mean, var = m[1].statistics()
    assert np.all(mean != 0) and np.all(var != 1)


def _sum_of_squares(m, x):
    return np.sum(m(x) ** 2)


def test_fc_grad_follows_the_mode_of_a_model_argument():
    bn = fc.BatchNorm(3)
    x = rng.standard_normal((6, 3)) * 3 + 1
    train_value, _ = fc.grad(_sum_of_squares, bn, x)
    np.testing.assert_allclose(train_value, 18.0, rtol=1e-4)     # batch-normalised: 6 * 3 unit squares
    fc.testmode(bn)
    test_value, _ = fc.grad(_sum_of_squares, bn, x)
    mean, var = bn.statistics()
    np.testing.assert_allclose(test_value, np.sum((x - mean) ** 2 / (var + 1e-5)), rtol=1e-12)
    fc.trainmode(bn)
    again, _ = fc.grad(_sum_of_squares, bn, x)
    np.testing.assert_allclose(again, train_value, rtol=1e-12)
