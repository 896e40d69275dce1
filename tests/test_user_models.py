"""User-style models: layer norm, attention, a residual block calling one layer twice, an
embedding looked up with integer indices, flatten/clip, einsum; gradients checked against
finite differences, integer inputs get no gradient."""
import numpy as np
import pytest
import flux_compile as fc

@fc.net
class LayerNorm:
    def __init__(self, n):
        self.g = np.ones((1, n)); self.b = np.zeros((1, n)); self.eps = 1e-5
    def forward(self, x):
        mu = x.mean(axis=-1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
        return self.g * (x - mu) / np.sqrt(var + self.eps) + self.b

@fc.net
class Attention:
    def __init__(self, d):
        r = np.random.default_rng(0)
        self.Wq, self.Wk, self.Wv = (r.standard_normal((d, d)) * 0.3 for _ in range(3))
    def forward(self, x):
        q, k, v = x @ self.Wq, x @ self.Wk, x @ self.Wv
        d = q.shape[-1]
        scores = q @ k.swapaxes(-1, -2) / np.sqrt(d)
        return fc.softmax(scores, axis=-1) @ v

@fc.net
class Residual:
    def __init__(self, n):
        self.layer = fc.Dense(n, n, np.tanh)
        self.norm = LayerNorm(n)
    def forward(self, x):
        return self.norm(x + self.layer(self.layer(x)))

@fc.net
class Embed:
    def __init__(self, v, d):
        self.E = np.random.default_rng(1).standard_normal((v, d))
        self.out = fc.Affine(2 * d, 3)
    def forward(self, idx):
        h = self.E[idx]
        h = h.reshape(h.shape[0], -1)
        return fc.logsoftmax(self.out(np.where(h > 0, h, 0.1 * h)), axis=-1)

@fc.net
class Flat:
    def __init__(self):
        self.W = np.random.default_rng(2).standard_normal((12, 2))
    def forward(self, x):
        return np.clip(fc.flatten(x) @ self.W, -1.0, 1.0) ** 2

@fc.net
class Einsum:
    def __init__(self):
        self.K = np.random.default_rng(3).standard_normal((3, 4, 5))
    def forward(self, x):
        return np.einsum("bi,ijk->bjk", x, self.K).max(axis=-1)


rng = np.random.default_rng(0)
CASES = [
    ("layernorm", lambda: LayerNorm(5), (4, 5)),
    ("attention", lambda: Attention(4), (2, 3, 4)),
    ("residual", lambda: Residual(4), (3, 4)),
    ("flatten", lambda: Flat(), (2, 3, 4)),
    ("einsum", lambda: Einsum(), (2, 3)),
]


@pytest.mark.parametrize("name,make,shape", CASES, ids=[c[0] for c in CASES])
def test_user_model_gradients(name, make, shape):
    m = make()
    x = rng.standard_normal(shape)
    y = m(x)
    y2, back = m.pullback(x)
    np.testing.assert_allclose(y, y2)
    assert fc.gradcheck(m, x).ok


def test_integer_inputs_index_an_embedding():
    m = Embed(6, 2)
    idx = np.array([[0, 1], [2, 5], [3, 3]])
    y, back = m.pullback(idx)
    assert back(np.ones_like(y)) is None           # no gradient for integer inputs
    assert m.E.grad[4].sum() == 0 and np.abs(m.E.grad[3]).sum() > 0


def test_layer_called_twice_sums_its_gradients():
    m = Residual(4)
    x = rng.standard_normal((3, 4))
    assert fc.gradcheck(m, x).ok
    src = fc.source(m, "backward")            # inlined twice: both uses' parts summed, one +=
    assert src.count("self.layer.W.grad +=") == 1 and "dW_part_1" in src
