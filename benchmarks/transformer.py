"""Train step of a transformer block: flux_compile vs PyTorch eager (one thread) and hand-written NumPy.

Block (pre-norm, one attention head): ``x + attention(LayerNorm(x))``, then
``+ gelu(LayerNorm(.) @ W1 + b1) @ W2 + b2`` with ``fc.gelu`` (tanh form) and width 4d;
batch 16, 64 tokens, d 128, float32, mean squared error to a target, SGD. Every contender
computes the same step from the same weights (checked after one step). A target, not a
test: flux_compile <= 1.0x PyTorch eager on one thread (issue 12).

    python benchmarks/transformer.py [--repeats 5]
"""
import argparse
import os
import sys

import numpy as np

import flux_compile as fc
import flux_compile.init

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mlp import race  # noqa: E402

LR = 0.01
TORCH_THREADS = [1]      # --threads default: torch's own default (match it with OPENBLAS_NUM_THREADS unset)
B, T, D = 16, 64, 128


@fc.net
class Block:
    def __init__(self, d, dtype=np.float32):
        self.ln1 = fc.LayerNorm(d, dtype=dtype)
        self.ln2 = fc.LayerNorm(d, dtype=dtype)
        self.Wqkv = fc.glorot_uniform(d, 3 * d, dtype=dtype)
        self.Wo = fc.glorot_uniform(d, d, dtype=dtype)
        self.W1 = fc.glorot_uniform(d, 4 * d, dtype=dtype)
        self.b1 = np.zeros((1, 4 * d), dtype=dtype)
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


def fc_step(m, x, target):
    y, back = m.pullback(x)
    _, (dy, _) = fc.grad(fc.mse, y, target)
    back(dy, input_grads=False)
    m.update(LR)


# ------------------------------------------------------------------ hand-written NumPy

C0, C1 = np.float32(0.7978845608028654), np.float32(0.044715)


def ln_forward(x, g, b, eps=1e-5):
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    rstd = 1 / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + np.float32(eps))
    xhat = xc * rstd
    return xhat * g + b, (xhat, rstd)


def ln_backward(dy, g, cache):
    xhat, rstd = cache
    dg = (dy * xhat).reshape(-1, xhat.shape[-1]).sum(axis=0)
    db = dy.reshape(-1, xhat.shape[-1]).sum(axis=0)
    dxhat = dy * g
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, dg, db


def numpy_step(P, x, target):
    g1, c1, g2, c2, Wqkv, Wo, W1, b1, W2, b2 = P
    d, sc = D, np.float32(1 / np.sqrt(D))
    h1, ln1 = ln_forward(x, g1, c1)
    qkv = h1 @ Wqkv
    q, k, v = qkv[:, :, :d], qkv[:, :, d:2 * d], qkv[:, :, 2 * d:]
    s = q @ k.transpose(0, 2, 1) * sc
    s -= s.max(axis=-1, keepdims=True)
    a = np.exp(s)
    a /= a.sum(axis=-1, keepdims=True)
    o = a @ v
    x1 = x + o @ Wo
    h2, ln2 = ln_forward(x1, g2, c2)
    z = h2 @ W1 + b1
    t = np.tanh(C0 * (z + C1 * z * z * z))
    u = 0.5 * z * (1 + t)
    out = x1 + u @ W2 + b2
    dout = (out - target) * np.float32(2 / out.size)
    flat = lambda v: v.reshape(-1, v.shape[-1])  # noqa: E731
    dW2, db2 = flat(u).T @ flat(dout), flat(dout).sum(axis=0, keepdims=True)
    du = dout @ W2.T
    dz = du * (0.5 * (1 + t) + 0.5 * z * (1 - t * t) * C0 * (1 + 3 * C1 * z * z))
    dW1, db1 = flat(h2).T @ flat(dz), flat(dz).sum(axis=0, keepdims=True)
    dx1, dg2, dc2 = ln_backward(dz @ W1.T, g2, ln2)
    dx1 += dout
    dWo = flat(o).T @ flat(dx1)
    do = dx1 @ Wo.T
    da = do @ v.transpose(0, 2, 1)
    dv = a.transpose(0, 2, 1) @ do
    ds = a * (da - (da * a).sum(axis=-1, keepdims=True)) * sc
    dq, dk = ds @ k, ds.transpose(0, 2, 1) @ q
    dqkv = np.concatenate([dq, dk, dv], axis=-1)
    dWqkv = flat(h1).T @ flat(dqkv)
    _, dg1, dc1 = ln_backward(dqkv @ Wqkv.T, g1, ln1)
    for value, grad in zip(P, (dg1, dc1, dg2, dc2, dWqkv, dWo, dW1, db1, dW2, db2)):
        value -= np.float32(LR) * grad.reshape(value.shape)


# ------------------------------------------------------------------ PyTorch eager

def torch_step_factory(P, x, target):
    try:
        import torch
    except ImportError:
        return None, None
    torch.set_num_threads(TORCH_THREADS[0])
    F = torch.nn.functional
    W = [torch.tensor(p.copy(), requires_grad=True) for p in P]
    xt, tt = torch.from_numpy(x), torch.from_numpy(target)
    opt = torch.optim.SGD(W, lr=LR)

    def step():
        g1, c1, g2, c2, Wqkv, Wo, W1, b1, W2, b2 = W
        opt.zero_grad()
        qkv = F.layer_norm(xt, (D,), g1, c1) @ Wqkv
        q, k, v = qkv[:, :, :D], qkv[:, :, D:2 * D], qkv[:, :, 2 * D:]
        a = torch.softmax(q @ k.transpose(1, 2) * (1 / np.sqrt(D)), dim=-1)
        x1 = xt + (a @ v) @ Wo
        out = x1 + F.gelu(F.layer_norm(x1, (D,), g2, c2) @ W1 + b1, approximate="tanh") @ W2 + b2
        F.mse_loss(out, tt).backward()
        opt.step()
    return step, W


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", default="1",
                    help="torch threads: 1 (with OPENBLAS_NUM_THREADS=1) or 'default' (leave OpenBLAS's unset)")
    a = ap.parse_args(argv)
    if a.threads != "default":
        TORCH_THREADS[0] = int(a.threads)
    else:
        import torch
        TORCH_THREADS[0] = torch.get_num_threads()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    target = rng.standard_normal((B, T, D)).astype(np.float32)
    flux_compile.init.seed(0)
    m = Block(D)
    names = [("ln1", "g"), ("ln1", "b"), ("ln2", "g"), ("ln2", "b"), ("Wqkv",), ("Wo",), ("W1",), ("b1",),
             ("W2",), ("b2",)]

    def value(path):
        obj = m
        for key in path:
            obj = getattr(obj, key)
        return obj.value

    P = [value(p).copy() for p in names]
    tstep, tW = torch_step_factory(P, x, target)
    fc_step(m, x, target)
    numpy_step(P, x, target)
    err = max(float(np.abs(p - value(n)).max()) for p, n in zip(P, names))
    flux_compile.init.seed(0)
    m2 = Block(D)
    step = fc.train_step(m2, fc.mse, fc.optim.SGD(LR))
    step(x, target=target)
    err = max(err, max(float(np.abs(p.value - q.value).max()) for p, q in zip(fc.params(m), fc.params(m2))))
    contenders = {"flux_compile": lambda: fc_step(m, x, target), "numpy": lambda: numpy_step(P, x, target),
                  "train_step": lambda: step(x, target=target)}
    if tstep is not None:
        tstep()
        err = max(err, max(float(np.abs(w.detach().numpy() - value(n)).max()) for w, n in zip(tW, names)))
        contenders["torch"] = tstep
    best = race(contenders, a.repeats)
    ref = best.get("torch", best["numpy"])
    print(f"transformer block B{B} T{T} d{D}, one head, fc.gelu, LayerNorm, float32 "
          f"(weights agree to {err:.1e} after one step)")
    for name, label in (("torch", f"PyTorch eager ({TORCH_THREADS[0]} thr)"), ("numpy", "hand-written NumPy"),
                        ("flux_compile", "flux_compile pullback/back"), ("train_step", "flux_compile train_step")):
        if name in best:
            print(f"  {label:26s}: {best[name] * 1e3:8.2f} ms/step   ratio to torch {best[name] / ref:5.2f}x"
                  f"   to NumPy {best[name] / best['numpy']:5.2f}x")


if __name__ == "__main__":
    main()
