"""Models the backend tests and benchmarks/backends.py run on every backend."""
import numpy as np

import flux_compile as fc


@fc.net
class Block:
    """A pre-norm transformer block (one head): attention, then a GELU MLP."""

    def __init__(self, d, dtype=np.float64):
        self.ln1 = fc.LayerNorm(d, dtype=dtype)
        self.ln2 = fc.LayerNorm(d, dtype=dtype)
        self.Wqkv = fc.glorot_uniform(d, 3 * d, dtype=dtype)
        self.Wo = fc.glorot_uniform(d, d, dtype=dtype)
        self.W1 = fc.glorot_uniform(d, 4 * d, dtype=dtype)
        self.b1 = np.zeros((1, 4 * d), dtype=dtype) + dtype(0.1)
        self.W2 = fc.glorot_uniform(4 * d, d, dtype=dtype)
        self.b2 = np.zeros((1, d), dtype=dtype)
        self.d = d
        self.scale = float(1 / np.sqrt(d))

    def forward(self, x):
        d = self.d
        qkv = self.ln1(x) @ self.Wqkv
        q = qkv[:, :, :d]
        k = qkv[:, :, d:2 * d]
        v = qkv[:, :, 2 * d:]
        a = fc.softmax(q @ np.swapaxes(k, 1, 2) * self.scale, axis=-1)
        x = x + (a @ v) @ self.Wo
        return x + fc.gelu(self.ln2(x) @ self.W1 + self.b1) @ self.W2 + self.b2


def mlp(dtype=np.float64):
    return fc.Chain(fc.Dense(6, 16, act=np.tanh, dtype=dtype), fc.Dense(16, 16, act=fc.relu, dtype=dtype),
                    fc.Dense(16, 4, dtype=dtype))


def zoo(dtype=np.float64, seed=0):
    """``{name: (model, inputs)}``: every architecture the backends must match NumPy on."""
    np.random.seed(seed)
    rng = np.random.default_rng(seed)
    x = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    return {
        "mlp": (mlp(dtype), (x(5, 6),)),
        "chain_softmax": (fc.Chain(fc.Dense(6, 5, act=fc.sigmoid, dtype=dtype), fc.Dense(5, 3, dtype=dtype),
                                   fc.softmax), (x(4, 6),)),
        "lstm_unroll": (fc.unroll(fc.LSTM(3, 5, dtype=dtype), 4), (x(2, 4, 3),)),
        "transformer_block": (Block(8, dtype=dtype), (x(2, 5, 8),)),
        "cnn": (fc.Chain(fc.Conv2d(2, 3, 3, padding=1, act=fc.relu, dtype=dtype), fc.MaxPool2d(2), fc.flatten,
                         fc.Dense(3 * 3 * 3, 4, dtype=dtype)), (x(2, 2, 6, 6),)),
    }
