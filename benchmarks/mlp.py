"""Train step of an MLP: flux_compile vs hand-written NumPy (and PyTorch / autograd when installed).

Prints, for each size, the time per step and the ratio to hand-written NumPy, all measured
in one run, and the first-compile time. A target, not a test: ratio <= 1.0, compile < 50 ms.

    python benchmarks/mlp.py [--repeats 200]
"""
import argparse
import time

import numpy as np

import flux_compile as fc


@fc.net
class Affine:
    def __init__(self, n_in, n_out, rng):
        self.W = rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)
        self.b = np.zeros((1, n_out))

    def forward(self, x):
        return x @ self.W + self.b


@fc.net
class MLP:
    def __init__(self, sizes, rng):
        self.layers = tuple(Affine(a, b, rng) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = fc.relu(layer(x))
        return self.layers[-1](x)


def fc_step(m, x, labels, lr):
    logits, back = m.pullback(x)
    _, (dlogits, _) = fc.grad(fc.logitcrossentropy, logits, labels)
    back(dlogits, input_grads=False)
    m.update(lr)


def numpy_step(Ws, bs, x, labels, lr):
    hs = [x]
    h = x
    for W, b in zip(Ws[:-1], bs[:-1]):
        h = np.maximum(h @ W + b, 0)
        hs.append(h)
    z = h @ Ws[-1] + bs[-1]
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1
    d = p / len(labels)
    for i in range(len(Ws) - 1, -1, -1):
        dW = hs[i].T @ d
        db = d.sum(axis=0, keepdims=True)
        if i:
            d = (d @ Ws[i].T) * (hs[i] > 0)
        Ws[i] -= lr * dW
        bs[i] -= lr * db


def race(contenders, repeats, rounds=5):
    """Best time per call of each contender; they take turns within every round, so a
    slower or busier moment of the machine hits them all alike."""
    best = {name: float("inf") for name in contenders}
    for fn in contenders.values():
        fn()
    for _ in range(rounds):
        for name, fn in contenders.items():
            t = time.perf_counter()
            for _ in range(repeats):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t) / repeats)
    return best


def torch_step_factory(sizes, x, labels, lr):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b).double(), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers[:-1])
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels)

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(xt), yt)
        loss.backward()
        opt.step()
    return step


def run(sizes, batch, repeats):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, sizes[0]))
    labels = rng.integers(0, sizes[-1], batch)
    m = MLP(sizes, rng)
    t0 = time.perf_counter()
    fc_step(m, x, labels, 0.01)
    first = time.perf_counter() - t0
    Ws = [l.W.value.copy() for l in m.layers]
    bs = [l.b.value.copy() for l in m.layers]
    m2 = MLP(sizes, np.random.default_rng(0))
    t0 = time.perf_counter()
    step = fc.train_step(m2, fc.logitcrossentropy, fc.optim.SGD(0.01))
    step(x, target=labels)
    first_step = time.perf_counter() - t0
    check_same_step(sizes, x, labels)
    contenders = {"numpy": lambda: numpy_step(Ws, bs, x, labels, 0.01),
                  "flux_compile": lambda: fc_step(m, x, labels, 0.01),
                  "train_step": lambda: step(x, target=labels)}
    tstep = torch_step_factory(sizes, x, labels, 0.01)
    if tstep is not None:
        contenders["torch"] = tstep
    best = race(contenders, repeats)
    t_np, t_fc = best["numpy"], best["flux_compile"]
    name = "-".join(map(str, sizes))
    print(f"MLP {name}, batch {batch}")
    print(f"  first call (compile + step): {first * 1e3:8.1f} ms")
    print(f"  hand-written NumPy         : {t_np * 1e6:8.1f} us/step")
    print(f"  first fc.train_step call   : {first_step * 1e3:8.1f} ms")
    print(f"  flux_compile pullback/back/update: {t_fc * 1e6:8.1f} us/step   ratio {t_fc / t_np:5.2f}x")
    t_ts = best["train_step"]
    print(f"  flux_compile fc.train_step : {t_ts * 1e6:8.1f} us/step   ratio {t_ts / t_np:5.2f}x   (target <= 0.9x)")
    if "torch" in best:
        print(f"  PyTorch eager (1 thread)   : {best['torch'] * 1e6:8.1f} us/step   ratio {best['torch'] / t_np:5.2f}x")
    return t_ts / t_np, first


def check_same_step(sizes, x, labels):
    """fc.train_step and hand-written NumPy compute the same step (float64)."""
    m = MLP(sizes, np.random.default_rng(1))
    Ws = [l.W.value.copy() for l in m.layers]
    bs = [l.b.value.copy() for l in m.layers]
    fc.train_step(m, fc.logitcrossentropy, fc.optim.SGD(0.01))(x, target=labels)
    numpy_step(Ws, bs, x, labels, 0.01)
    for l, W, b in zip(m.layers, Ws, bs):
        assert np.allclose(l.W.value, W, rtol=1e-10, atol=1e-12) and np.allclose(l.b.value, b, rtol=1e-10, atol=1e-12)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=50)
    a = ap.parse_args(argv)
    run((784, 128, 10), 32, a.repeats)
    run((784, 512, 512, 10), 256, max(3, a.repeats // 10))


if __name__ == "__main__":
    main()
