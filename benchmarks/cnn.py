"""Train step of a small CNN: flux_compile vs PyTorch eager (one thread) and hand-written NumPy.

Model: conv3x3(1->16)+relu, conv3x3(16->16)+relu (padding 1), 2x2 max pooling, Dense to
10 logits; batch 32 of 28x28 images, float32, softmax cross-entropy, SGD. Every contender
computes the same step from the same weights (checked after timing). A target, not a test:
flux_compile <= 1.0x PyTorch eager on one thread (issue 12).

    python benchmarks/cnn.py [--repeats 5] [--batch 32]
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


def fc_model(seed=0):
    flux_compile.init.seed(seed)
    return fc.Chain(fc.Conv2d(1, 16, 3, padding=1, act=fc.relu, dtype=np.float32),
                    fc.Conv2d(16, 16, 3, padding=1, act=fc.relu, dtype=np.float32),
                    fc.MaxPool2d(2), fc.flatten, fc.Dense(16 * 14 * 14, 10, dtype=np.float32))


def fc_step(m, x, labels):
    logits, back = m.pullback(x)
    _, (dlogits, _) = fc.grad(fc.logitcrossentropy, logits, labels)
    back(dlogits, input_grads=False)
    m.update(LR)


# ------------------------------------------------------------------ hand-written NumPy

def np_cols(xp):
    """im2col of a padded batch for 3x3 stride 1: (N, 9 * C, H * W)."""
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))    # N, C, H, W, 3, 3
    n, c, h, w = win.shape[:4]
    return np.ascontiguousarray(win.transpose(0, 4, 5, 1, 2, 3)).reshape(n, 9 * c, h * w)


def np_conv(x, W, b):
    n, _, h, w = x.shape
    Wm = W.transpose(0, 2, 3, 1).reshape(W.shape[0], -1)
    return np.matmul(Wm, np_cols(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))))).reshape(n, -1, h, w) + b


def np_conv_back(dz, x, W, need_dx):
    n, c, h, w = x.shape
    o = W.shape[0]
    cols = np_cols(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))))
    d = dz.reshape(n, o, h * w)
    dW = np.matmul(cols, d.transpose(0, 2, 1)).sum(axis=0).reshape(3, 3, c, o).transpose(3, 2, 0, 1)
    db = dz.sum(axis=(0, 2, 3)).reshape(1, -1, 1, 1)
    dx = None
    if need_dx:
        dcols = np.matmul(W.transpose(0, 2, 3, 1).reshape(o, -1).T, d).reshape(n, 3, 3, c, h, w)
        dxp = np.zeros((n, c, h + 2, w + 2), dtype=x.dtype)
        for i in range(3):
            for j in range(3):
                dxp[:, :, i:i + h, j:j + w] += dcols[:, i, j]
        dx = dxp[:, :, 1:-1, 1:-1]
    return dW, db, dx


def numpy_step(P, x, labels):
    W1, b1, W2, b2, W3, b3 = P
    h1 = np.maximum(np_conv(x, W1, b1), 0)
    h2 = np.maximum(np_conv(h1, W2, b2), 0)
    n, c, hh, ww = h2.shape
    win = h2.reshape(n, c, hh // 2, 2, ww // 2, 2)
    p = win.max(axis=(3, 5))
    f = p.reshape(n, -1)
    z = f @ W3 + b3
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    e /= e.sum(axis=1, keepdims=True)
    e[np.arange(n), labels] -= 1
    dz = e / n
    dW3, db3 = f.T @ dz, dz.sum(axis=0, keepdims=True)
    dp = (dz @ W3.T).reshape(p.shape)
    # max pooling backward: the first maximum of each window (as PyTorch)
    flat = win.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, hh // 2, ww // 2, 4)
    hit = np.argmax(flat, axis=-1)[..., None] == np.arange(4)
    dwin = (hit * dp[..., None]).reshape(n, c, hh // 2, ww // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5)
    dh2 = dwin.reshape(h2.shape) * (h2 > 0)
    dW2, db2, dh1 = np_conv_back(dh2, h1, W2, True)
    dh1 *= h1 > 0
    dW1, db1, _ = np_conv_back(dh1, x, W1, False)
    for value, grad in zip(P, (dW1, db1, dW2, db2, dW3, db3)):
        value -= LR * grad


# ------------------------------------------------------------------ PyTorch eager

def torch_step_factory(m, x, labels):
    try:
        import torch
    except ImportError:
        return None, None
    torch.set_num_threads(TORCH_THREADS[0])
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 14 * 14, 10))
    with torch.no_grad():
        for i, j in ((0, 0), (2, 1)):
            net[i].weight.copy_(torch.from_numpy(m[j].W.value))
            net[i].bias.copy_(torch.from_numpy(m[j].b.value.ravel()))
        net[6].weight.copy_(torch.from_numpy(m[4].W.value.T.copy()))
        net[6].bias.copy_(torch.from_numpy(m[4].b.value.ravel()))
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    return step, net


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", default="1",
                    help="torch threads: 1 (with OPENBLAS_NUM_THREADS=1) or 'default' (leave OpenBLAS's unset)")
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args(argv)
    if a.threads != "default":
        TORCH_THREADS[0] = int(a.threads)
    else:
        import torch
        TORCH_THREADS[0] = torch.get_num_threads()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.batch, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, a.batch)
    m = fc_model()
    P = [m[0].W.value.copy(), m[0].b.value.copy(), m[1].W.value.copy(), m[1].b.value.copy(),
         m[4].W.value.copy(), m[4].b.value.copy()]
    tstep, net = torch_step_factory(m, x, labels)
    # one step each from the same weights: the same result
    fc_step(m, x, labels)
    numpy_step(P, x, labels)
    err = max(float(np.abs(P[0] - m[0].W.value).max()), float(np.abs(P[4] - m[4].W.value).max()))
    m2 = fc_model()
    step = fc.train_step(m2, fc.logitcrossentropy, fc.optim.SGD(LR))
    step(x, target=labels)
    err = max(err, max(float(np.abs(p.value - q.value).max()) for p, q in zip(fc.params(m), fc.params(m2))))
    contenders = {"flux_compile": lambda: fc_step(m, x, labels), "numpy": lambda: numpy_step(P, x, labels),
                  "train_step": lambda: step(x, target=labels)}
    if tstep is not None:
        tstep()
        err = max(err, float(np.abs(net[0].weight.detach().numpy() - m[0].W.value).max()))
        contenders["torch"] = tstep
    best = race(contenders, a.repeats)
    ref = best.get("torch", best["numpy"])
    print(f"CNN 2x conv3x3 16ch + maxpool2 + Dense, batch {a.batch}, 28x28, float32 "
          f"(weights agree to {err:.1e} after one step)")
    for name, label in (("torch", f"PyTorch eager ({TORCH_THREADS[0]} thr)"), ("numpy", "hand-written NumPy"),
                        ("flux_compile", "flux_compile pullback/back"), ("train_step", "flux_compile train_step")):
        if name in best:
            print(f"  {label:26s}: {best[name] * 1e3:8.2f} ms/step   ratio to torch {best[name] / ref:5.2f}x"
                  f"   to NumPy {best[name] / best['numpy']:5.2f}x")


if __name__ == "__main__":
    main()
