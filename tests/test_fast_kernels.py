"""The fast paths of the convolution, pooling and matmul kernels (issue 12, branch kernels):
chunked im2col (several chunks forced), tiled max-pooling backward, and one-GEMM gradients
of ``x @ W`` for batched rows, each against ``torch.nn.functional`` / torch autograd with
copied values (float64 1e-10, float32 1e-5) and central finite differences, at edge shapes;
forward mode (``fc.jvp``) and ``fc.hvp`` through the changed kernels."""
import numpy as np
import pytest

import flux_compile as fc
from numeric import TORCH_TOL, close_to_torch as close
from flux_compile.rules import conv as C
from flux_compile.rules import helpers as H

torch = pytest.importorskip("torch")
F = torch.nn.functional
torch.set_num_threads(1)

TOL = TORCH_TOL
rng = np.random.default_rng(12)


def t(a, grad=True):
    return torch.tensor(np.asarray(a), requires_grad=grad)


@pytest.fixture(params=["one chunk", "chunk per image", "chunks of 3"])
def chunking(request, monkeypatch):
    """Run each convolution with the batch in one chunk, one image a chunk, and chunks of
    three images (the last one short), whatever the BLAS thread count."""
    monkeypatch.setattr(C, "BLAS_THREADS", 1)
    if request.param == "one chunk":
        monkeypatch.setattr(C, "BLAS_THREADS", 2)      # several BLAS threads: the whole batch
    elif request.param == "chunk per image":
        monkeypatch.setattr(C, "CHUNK_BYTES", 1)
    elif request.param == "chunks of 3":
        monkeypatch.setattr(C, "image_chunks",
                            lambda n, _: [slice(s, min(n, s + 3)) for s in range(0, n, 3)])
    return request.param


CONV_EDGES = [  # x shape, W shape, stride, padding
    ((5, 3, 7, 6), (4, 3, 3, 3), 1, 1),          # 5 images: chunks of 3 leave a short one
    ((4, 2, 9, 8), (3, 2, 3, 2), 2, 1),          # stride 2 dropping the last rows
    ((1, 1, 5, 5), (1, 1, 1, 1), 1, 0),          # 1x1 kernel, batch 1, one channel
    ((7, 4, 6, 6), (2, 4, 1, 1), 2, 0),          # 1x1 kernel, stride 2
    ((2, 1, 7, 9), (3, 1, 4, 3), (3, 2), (2, 1)),  # odd sizes, pairs
    ((3, 2, 3, 3), (2, 2, 3, 3), 1, 0),          # kernel as large as the input
    ((2, 2, 4, 4), (3, 2, 1, 1), 1, 1),          # padding >= kernel: dx by col2im, not the flipped conv
    ((2, 3, 5, 6), (2, 3, 3, 2), 1, (2, 1)),     # stride 1, padding as large as the kernel allows
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("xs,ws,stride,padding", CONV_EDGES)
def test_chunked_conv2d_equals_torch(xs, ws, stride, padding, dtype, chunking):
    x, W = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    tx, tW = t(x), t(W)
    ty = F.conv2d(tx, tW, stride=stride, padding=padding)
    y = C.conv2d(x, W, stride, padding)
    close(y, ty, dtype, "output")
    dy = rng.standard_normal(y.shape).astype(dtype)
    ty.backward(torch.tensor(dy))
    close(C.conv2d_grad_x(dy, W, x.shape, stride, padding), tx.grad, dtype, "dx")
    close(C.conv2d_grad_w(dy, x, W.shape, stride, padding), tW.grad, dtype, "dW")


def test_chunked_conv2d_in_a_compiled_layer_matches_finite_differences(chunking):
    m = fc.Conv2d(2, 3, 3, stride=1, padding=1, act=np.tanh)
    x = rng.standard_normal((4, 2, 5, 4))
    assert fc.gradcheck(m, x, rtol=1e-6, max_elements=120).ok


@pytest.mark.parametrize("xs,ws,stride,padding", CONV_EDGES[:3])
def test_jvp_and_hvp_through_chunked_conv2d(xs, ws, stride, padding, chunking):
    x, W = rng.standard_normal(xs), rng.standard_normal(ws) * 0.5
    dx, dW = rng.standard_normal(xs), rng.standard_normal(ws)

    def f(x, W):
        return np.sum(np.tanh(fc.conv2d(x, W, stride=stride, padding=padding)) ** 2)

    tx, tW = t(x), t(W)
    tdx, tdW = torch.tensor(dx), torch.tensor(dW)
    tf = lambda a, b: torch.sum(torch.tanh(F.conv2d(a, b, stride=stride, padding=padding)) ** 2)  # noqa: E731
    (val, tan), (tval, ttan) = fc.jvp(f, (x, W), (dx, dW)), torch.func.jvp(tf, (tx, tW), (tdx, tdW))
    close(np.asarray(val), tval, np.float64, "value")
    close(np.asarray(tan), ttan, np.float64, "tangent")
    hx, hW = fc.hvp(f, (x, W), (dx, dW))
    _, (thx, thW) = torch.autograd.functional.hvp(tf, (tx, tW), (tdx, tdW))
    close(hx, thx, np.float64, "hvp x")
    close(hW, thW, np.float64, "hvp W")


POOL_TILES = [  # x shape, k: stride = k, the tiled backward
    ((2, 3, 4, 6), 2),
    ((1, 1, 7, 5), 2),          # H and W not multiples of k: uncovered rows and columns get 0
    ((2, 2, 6, 9), (2, 3)),     # non-square windows
    ((3, 1, 3, 3), 3),          # one window per image
    ((1, 2, 5, 4), 1),          # 1x1 windows
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("xs,k", POOL_TILES)
@pytest.mark.parametrize("ties", [False, True])
def test_tiled_maxpool_backward_equals_torch(xs, k, ties, dtype):
    x = rng.standard_normal(xs)
    if ties:
        x = np.round(x)                     # many equal values in a window
        x[0, 0] = 1.0                       # windows of nothing but ties
    x = x.astype(dtype)
    tx = t(x)
    ty = F.max_pool2d(tx, k)
    dy = rng.standard_normal(tuple(ty.shape)).astype(dtype)
    ty.backward(torch.tensor(dy))
    close(C.maxpool2d(x, k), ty, dtype, "output")
    close(C.maxpool2d_grad(dy, x, k, None), tx.grad, dtype, "dx")
    close(C.maxpool2d_grad(dy, x, k, k), tx.grad, dtype, "dx, stride given")


def test_tiled_maxpool_backward_matches_finite_differences_and_jvp():
    x = (rng.permutation(2 * 2 * 7 * 6) * 0.1).reshape(2, 2, 7, 6)      # distinct: no ties

    def f(x):
        return np.sum(fc.maxpool2d(x, 2) ** 2)
    assert fc.gradcheck(f, x, max_elements=168).ok
    v = rng.standard_normal(x.shape)
    _, tangent = fc.jvp(f, (x,), (v,))
    eps = 1e-6
    np.testing.assert_allclose(tangent, (f(x + eps * v) - f(x - eps * v)) / (2 * eps), rtol=1e-7)
    hv = fc.hvp(f, (x,), (v,))
    hv = hv[0] if isinstance(hv, tuple) else hv
    tx = t(x)
    _, thv = torch.autograd.functional.hvp(lambda a: torch.sum(F.max_pool2d(a, 2) ** 2), tx, torch.tensor(v))
    close(hv, thv, np.float64, "hvp")


MATMUL_ROWS = [  # a shape, b shape: a batch of rows times a matrix
    ((4, 5, 3), (3, 6)),
    ((2, 3, 4, 5), (5, 2)),
    ((1, 1, 3), (3, 1)),
    ((3, 1, 4), (4, 7)),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sa,sb", MATMUL_ROWS)
@pytest.mark.parametrize("layout", ["contiguous", "sliced"])
def test_matmul_gradients_of_batched_rows_equal_torch(sa, sb, layout, dtype):
    a, b = rng.standard_normal(sa).astype(dtype), rng.standard_normal(sb).astype(dtype)
    if layout == "sliced":          # a non-contiguous view (as q, k, v sliced from qkv)
        a = np.concatenate([a, a], axis=-1)[..., ::2]
    g = rng.standard_normal(sa[:-1] + sb[-1:]).astype(dtype)
    if layout == "sliced":
        g = np.swapaxes(np.ascontiguousarray(np.swapaxes(g, -1, -2)), -1, -2)
    ta, tb = t(a), t(b)
    (ta @ tb).backward(torch.tensor(g))
    close(H.matmul_grad_a(g, a.shape, b), ta.grad, dtype, "da")
    close(H.matmul_grad_b(g, a, b.shape), tb.grad, dtype, "db")


def test_compiled_batched_rows_times_matrix_matches_finite_differences_and_hvp():
    a, b = rng.standard_normal((3, 4, 5)), rng.standard_normal((5, 2))

    def f(a, b):
        return np.sum(np.tanh(a[:, 1:, :] @ b) ** 2)
    assert fc.gradcheck(f, a, b, rtol=1e-6).ok
    va, vb = rng.standard_normal(a.shape), rng.standard_normal(b.shape)
    ha, hb = fc.hvp(f, (a, b), (va, vb))
    tf = lambda x, y: torch.sum(torch.tanh(x[:, 1:, :] @ y) ** 2)  # noqa: E731
    _, (tha, thb) = torch.autograd.functional.hvp(tf, (t(a), t(b)), (torch.tensor(va), torch.tensor(vb)))
    close(ha, tha, np.float64, "hvp a")
    close(hb, thb, np.float64, "hvp b")


# ------------------------------------------------------------------ gelu: in-place kernels

GELU_INPUTS = [(4, 7), (1,), (3, 1, 5)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", GELU_INPUTS)
def test_gelu_and_its_gradient_equal_torch(shape, dtype):
    x = (rng.standard_normal(shape) * 4).astype(dtype)          # tails where tanh saturates
    x.flat[0] = 0.0
    tx = t(x)
    ty = F.gelu(tx, approximate="tanh")
    close(fc.gelu(x), ty, dtype, "gelu")
    dy = rng.standard_normal(shape).astype(dtype)
    ty.backward(torch.tensor(dy))
    close(fc.grad(lambda v: np.sum(fc.gelu(v) * dy), x)[1][0], tx.grad, dtype, "gelu'")
    close(fc.functions.gelu_grad(dy, x), tx.grad, dtype, "gelu_grad kernel")


def test_gelu_kernels_leave_inputs_alone_and_take_views_and_scalars():
    x = rng.standard_normal((6, 8))
    view = x[::2, 1::3]                                       # a strided view
    keep = x.copy()
    want = F.gelu(torch.tensor(np.ascontiguousarray(view)), approximate="tanh").numpy()
    np.testing.assert_allclose(fc.gelu(view), want, rtol=0, atol=1e-12)
    g = np.ones_like(view)
    fc.functions.gelu_grad(g, view)
    assert np.array_equal(x, keep) and np.array_equal(g, np.ones_like(view))
    assert abs(float(fc.gelu(np.array(1.0))) - 0.8411919906082768) < 1e-12      # 0-d: the plain path
    assert abs(float(fc.gelu(1.0)) - 0.8411919906082768) < 1e-12
    np.testing.assert_allclose(fc.gelu(np.array([1, 2])), fc.gelu(np.array([1.0, 2.0])))     # integers


def test_gelu_second_order_equals_torch():
    x, v = rng.standard_normal((3, 5)) * 2, rng.standard_normal((3, 5))

    def f(x):
        return np.sum(fc.gelu(x) ** 2)

    def tf(x):
        return torch.sum(F.gelu(x, approximate="tanh") ** 2)
    _, thv = torch.autograd.functional.hvp(tf, t(x), torch.tensor(v))
    hv = fc.hvp(f, (x,), (v,))
    close(hv[0] if isinstance(hv, tuple) else hv, thv, np.float64, "hvp (forward over reverse)")

    def g(s):           # reverse over reverse through gelu_grad's own rule
        return np.sum(fc.gelu(s * x))
    tg = lambda s: torch.sum(F.gelu(s * t(x, False), approximate="tanh"))  # noqa: E731
    d2 = fc.gradient(fc.gradient(g))(1.5)
    s = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    (d1,) = torch.autograd.grad(tg(s), s, create_graph=True)
    (td2,) = torch.autograd.grad(d1, s)
    close(np.asarray(d2, dtype=np.float64), td2, np.float64, "d2/ds2")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_in_place_softmax_equals_torch_and_leaves_its_input(axis, dtype):
    x = (rng.standard_normal((3, 4, 5)) * 30).astype(dtype)          # large logits: the shift matters
    keep = x.copy()
    tx = t(x)
    ty = torch.softmax(tx, dim=axis)
    close(fc.softmax(x, axis=axis), ty, dtype, "softmax")
    assert np.array_equal(x, keep)
    dy = rng.standard_normal(x.shape).astype(dtype)
    ty.backward(torch.tensor(dy))
    close(fc.grad(lambda v: np.sum(fc.softmax(v, axis=axis) * dy), x)[1][0], tx.grad, dtype, "dx")
    np.testing.assert_allclose(fc.softmax(np.array([1, 2, 3])), fc.softmax(np.array([1.0, 2.0, 3.0])))
    assert fc.softmax(np.float64(2.0)) == 1.0


# ------------------------------------------------------------------ LayerNorm: the fused standardize rule

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("lead,norm", [((4,), (6,)), ((2, 3), (2, 5)), ((1,), (2,)), ((3, 1), (7,))])
def test_layernorm_forward_backward_and_hvp_equal_torch(lead, norm, dtype):
    m = fc.LayerNorm(norm, dtype=dtype)
    m.g.value[...] = rng.standard_normal(norm)
    m.b.value[...] = rng.standard_normal(norm)
    x = (rng.standard_normal(lead + norm) * 3 + 2).astype(dtype)
    tx, tg, tb = t(x), t(m.g.value), t(m.b.value)
    ty = F.layer_norm(tx, norm, tg, tb, eps=1e-5)
    y, back = m.pullback(x)
    close(y, ty, dtype, "output")
    dy = rng.standard_normal(y.shape).astype(dtype)
    ty.backward(torch.tensor(dy))
    close(back(dy), tx.grad, dtype, "dx")
    close(m.g.grad, tg.grad, dtype, "dg")
    close(m.b.grad, tb.grad, dtype, "db")
    if dtype == np.float64:
        v = rng.standard_normal(x.shape)
        g, b = m.g.value, m.b.value

        def f(x):
            return np.sum(np.tanh(fc.functions.standardize(x, axes=m.axes, eps=1e-5) * g + b) ** 2)
        tf = lambda a: torch.sum(torch.tanh(F.layer_norm(a, norm, t(g, False), t(b, False), eps=1e-5)) ** 2)  # noqa: E731
        _, thv = torch.autograd.functional.hvp(tf, t(x), torch.tensor(v))
        hv = fc.hvp(f, (x,), (v,))
        close(hv[0] if isinstance(hv, tuple) else hv, thv, np.float64, "hvp")
        assert fc.gradcheck(m, x, rtol=1e-6).ok


def test_layernorm_reverse_over_reverse_equals_torch():
    x = rng.standard_normal((3, 6)) * 2
    w = rng.standard_normal((3, 6))

    def g(s):
        return np.sum(fc.functions.standardize(s * x + w) ** 3)
    tg = lambda s: torch.sum(F.layer_norm(s * t(x, False) + t(w, False), (6,), eps=1e-5) ** 3)  # noqa: E731
    d2 = fc.gradient(fc.gradient(g))(0.7)
    s = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    (d1,) = torch.autograd.grad(tg(s), s, create_graph=True)
    (td2,) = torch.autograd.grad(d1, s)
    close(np.asarray(d2, dtype=np.float64), td2, np.float64, "d2/ds2")


def test_standardize_of_a_constant_row_is_finite():
    x = np.array([[2.0, 2.0, 2.0], [1.0, 2.0, 3.0]])
    g = np.ones_like(x)
    y = fc.functions.standardize(x)
    dx = fc.functions.standardize_grad(g, x)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx)) and np.all(y[0] == 0)


def test_layernorm_of_one_element_is_its_shift():
    """Over one element x - mean is exactly 0: the output is b and g gets no gradient (torch's
    float32 mean leaves a rounding error that 1 / sqrt(eps) amplifies, so float64 here)."""
    m = fc.LayerNorm(1)
    m.g.value[...], m.b.value[...] = 2.0, 0.5
    x = rng.standard_normal((5, 1)) * 3
    tx, tg, tb = t(x), t(m.g.value), t(m.b.value)
    ty = F.layer_norm(tx, (1,), tg, tb, eps=1e-5)
    y, back = m.pullback(x)
    assert np.all(y == 0.5)
    dy = rng.standard_normal(y.shape)
    ty.backward(torch.tensor(dy))
    close(y, ty, np.float64, "output")
    close(back(dy), tx.grad, np.float64, "dx")
    close(m.g.grad, tg.grad, np.float64, "dg")
    close(m.b.grad, tb.grad, np.float64, "db")


@pytest.mark.parametrize("env,want", [({"OPENBLAS_NUM_THREADS": "1"}, 1), ({"OMP_NUM_THREADS": "3"}, 3),
                                      ({"OPENBLAS_NUM_THREADS": "2,1"}, 2), ({}, None)])
def test_blas_thread_count_from_the_environment(env, want, monkeypatch):
    import os
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert C._blas_threads() == (want or os.cpu_count() or 1)
    monkeypatch.setattr(C, "BLAS_THREADS", 2)
    assert C.image_chunks(10, 1) == [slice(0, 10)]
    monkeypatch.setattr(C, "BLAS_THREADS", 1)
    assert C.image_chunks(10, C.CHUNK_BYTES // 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
