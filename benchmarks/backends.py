"""Train step on the torch and JAX backends vs the same model written by hand for that library.

- JAX: ``fc.to(m, "jax")`` + ``train_step`` (one ``jax.jit`` program) vs the model written
  in ``jax.numpy`` with ``jax.grad`` and ``jax.jit``. Target: <= 1.1x.
- torch: ``fc.to(m, "torch")`` + ``train_step`` (our generated backward, no autograd) vs
  PyTorch eager with ``torch.autograd`` and ``torch.optim.SGD``. Target: <= 1.0x.

Models: an MLP (B128, 256-512-512-10, tanh) and the transformer block of
``benchmarks/transformer.py`` (B16 T64 d128); float32, mean squared error, SGD. Every pair
is checked to compute the same loss from the same weights first. Ratios measured in one run.

    OPENBLAS_NUM_THREADS=1 python benchmarks/backends.py [--repeats 20]
"""
import argparse
import copy
import os
import sys

import numpy as np

import flux_compile as fc
from flux_compile.backends import train_step

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mlp import race  # noqa: E402
from transformer import Block  # noqa: E402

LR = 0.01


def mlp_model():
    return fc.Chain(fc.Dense(256, 512, act=np.tanh, dtype=np.float32), fc.Dense(512, 512, act=np.tanh,
                    dtype=np.float32), fc.Dense(512, 10, dtype=np.float32))


def mlp_data(rng):
    return rng.standard_normal((128, 256)).astype(np.float32), rng.standard_normal((128, 10)).astype(np.float32)


def block_data(rng):
    x = rng.standard_normal((16, 64, 128)).astype(np.float32)
    return x, rng.standard_normal(x.shape).astype(np.float32)


# ------------------------------------------------------------------ hand-written JAX

def jax_mlp(params, x):
    import jax.numpy as jnp
    (W1, b1), (W2, b2), (W3, b3) = params
    h = jnp.tanh(x @ W1 + b1)
    h = jnp.tanh(h @ W2 + b2)
    return h @ W3 + b3


def jax_layernorm(x, g, b, eps=1e-5):
    import jax.numpy as jnp
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    return xc / jnp.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps) * g + b


def jax_block(params, x):
    import jax
    import jax.numpy as jnp
    g1, c1, g2, c2, Wqkv, Wo, W1, b1, W2, b2 = params
    d = x.shape[-1]
    qkv = jax_layernorm(x, g1, c1) @ Wqkv
    q, k, v = qkv[:, :, :d], qkv[:, :, d:2 * d], qkv[:, :, 2 * d:]
    a = jax.nn.softmax(q @ jnp.swapaxes(k, 1, 2) * (1 / np.sqrt(d)), axis=-1)
    x = x + (a @ v) @ Wo
    z = jax_layernorm(x, g2, c2) @ W1 + b1
    u = 0.5 * z * (1 + jnp.tanh(0.7978845608028654 * (z + 0.044715 * (z * z * z))))
    return x + u @ W2 + b2


def jax_step_factory(forward, params):
    import jax

    def loss(p, x, y):
        d = forward(p, x) - y
        return (d * d).mean()

    @jax.jit
    def step(p, x, y):
        value, g = jax.value_and_grad(loss)(p, x, y)
        return value, jax.tree_util.tree_map(lambda a, b: a - LR * b, p, g)
    state = [params]

    def run(x, y):
        value, state[0] = step(state[0], x, y)
        return value
    return run


def mlp_jax_params(m):
    return [(l.W.value, l.b.value) for l in m.layers]


def block_jax_params(m):
    return [m.ln1.g.value, m.ln1.b.value, m.ln2.g.value, m.ln2.b.value, m.Wqkv.value, m.Wo.value,
            m.W1.value, m.b1.value, m.W2.value, m.b2.value]


# ------------------------------------------------------------------ PyTorch eager

def torch_mlp(m):
    import torch
    layers = []
    for i, l in enumerate(m.layers):
        lin = torch.nn.Linear(*l.W.value.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(l.W.value.T.copy()))
            lin.bias.copy_(torch.from_numpy(l.b.value[0]))
        layers += [lin] + ([torch.nn.Tanh()] if i < len(m.layers) - 1 else [])
    return torch.nn.Sequential(*layers)


class TorchBlock:
    def __init__(self, m):
        import torch
        t = lambda a: torch.tensor(np.asarray(a), requires_grad=True)  # noqa: E731
        self.params = [t(a) for a in block_jax_params(m)]

    def parameters(self):
        return self.params

    def __call__(self, x):
        import torch
        g1, c1, g2, c2, Wqkv, Wo, W1, b1, W2, b2 = self.params
        d = x.shape[-1]
        ln = lambda x, g, b: torch.nn.functional.layer_norm(x, (d,), g.reshape(-1), b.reshape(-1), 1e-5)  # noqa
        qkv = ln(x, g1, c1) @ Wqkv
        q, k, v = qkv[:, :, :d], qkv[:, :, d:2 * d], qkv[:, :, 2 * d:]
        a = torch.softmax(q @ k.transpose(1, 2) * float(1 / np.sqrt(d)), dim=-1)
        x = x + (a @ v) @ Wo
        z = ln(x, g2, c2) @ W1 + b1
        return x + torch.nn.functional.gelu(z, approximate="tanh") @ W2 + b2


def torch_step_factory(net):
    import torch
    opt = torch.optim.SGD(net.parameters(), lr=LR)

    def run(x, y):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        opt.step()
        return loss.detach()
    return run


# ------------------------------------------------------------------ the race

def compare(label, model, data, jax_forward, jax_params, torch_net, repeats):
    rows = []
    make_model = lambda: copy.deepcopy(model)  # noqa: E731  every contender starts from the same weights
    x, y = data
    try:
        import jax
        import jax.numpy as jnp
        m2 = fc.to(make_model(), "jax")
        ours = train_step(m2, fc.mse, LR)
        theirs = jax_step_factory(jax_forward, jax_params(make_model()))
        xj, yj = jnp.asarray(x), jnp.asarray(y)
        a, b = float(ours(xj, yj)), float(theirs(xj, yj))
        assert abs(a - b) <= 1e-4 * abs(b), (a, b)
        t = race({"ours": lambda: jax.block_until_ready(ours(xj, yj)),
                  "hand": lambda: jax.block_until_ready(theirs(xj, yj))}, repeats)
        rows.append((label, "JAX (jit) vs hand-written jax.jit", t["ours"], t["hand"], 1.1))
    except ImportError:
        print("JAX not installed: skipped")
    try:
        import torch
        torch.set_num_threads(1)
        m2 = fc.to(make_model(), "torch")
        ours = train_step(m2, fc.mse, LR)
        theirs = torch_step_factory(torch_net(make_model()))
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        a, b = float(ours(xt, yt)), float(theirs(xt, yt))
        assert abs(a - b) <= 1e-4 * abs(b), (a, b)
        t = race({"ours": lambda: ours(xt, yt), "eager": lambda: theirs(xt, yt)}, repeats)
        rows.append((label, "torch vs PyTorch eager + autograd", t["ours"], t["eager"], 1.0))
    except ImportError:
        print("torch not installed: skipped")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    rows = compare("MLP B128 256-512-512-10", mlp_model(), mlp_data(rng), jax_mlp, mlp_jax_params, torch_mlp,
                   args.repeats)
    rows += compare("transformer block B16 T64 d128", Block(128), block_data(rng), jax_block, block_jax_params,
                    TorchBlock, args.repeats)
    print(f"{'model':34} {'contest':36} {'ours ms':>8} {'theirs ms':>9} {'ratio':>6} target")
    for label, contest, ours, theirs, target in rows:
        ratio = ours / theirs
        print(f"{label:34} {contest:36} {ours * 1e3:8.2f} {theirs * 1e3:9.2f} {ratio:6.2f} "
              f"<= {target} {'ok' if ratio <= target else 'MISSED'}")


if __name__ == "__main__":
    main()
