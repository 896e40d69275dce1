"""Differential fuzzing of the library layers: random stacks of Conv2d, MaxPool2d, AvgPool2d,
BatchNorm (train and test mode), LayerNorm, Embedding and Dense in a ``fc.Chain``, compared
with the same stack in torch (weights copied: outputs, input and parameter gradients, and
BatchNorm's running statistics) and with central finite differences of flux_compile's own
forward. Some stacks are float32 end to end (``dtype=np.float32``), compared in float32.

``generate_stack(seed)`` gives the stack as the source text of one ``fc.Chain(...)`` expression
(the repro); ``check_stack(stack)`` returns a ``fuzzgen.Result``. ``tools/fuzz.py --group layers``.
"""
from __future__ import annotations

import dataclasses
import random
import traceback
import warnings
from pathlib import Path

import numpy as np


def flatten(x):
    return np.reshape(x, (x.shape[0], -1))


@dataclasses.dataclass
class Stack:
    seed: int
    text: str                  # ``fc.Chain(...)``, evaluated with fc, np, flatten in scope
    input_shape: tuple
    dtype: str                 # "float64" or "float32"
    embedding: int = 0         # > 0: the input is an integer array of indices below it
    stats: list = dataclasses.field(default_factory=list)   # running statistics for test-mode BatchNorms

    def source(self):
        return (f"# input {self.input_shape} {'int indices < %d' % self.embedding if self.embedding else self.dtype}\n"
                f"model = {self.text}\n")


ACTS = ["None", "np.tanh", "fc.sigmoid"]


def generate_stack(seed, float32_share=0.25):
    r = random.Random(f"layers:{seed}")
    dtype = "float32" if r.random() < float32_share else "float64"
    dt = ", dtype=np.float32" if dtype == "float32" else ""
    layers, stats = [], []
    batch = r.randint(2, 4)
    if r.random() < 0.25:                                  # tokens: Embedding first
        vocab, d, t = r.randint(3, 7), r.randint(2, 5), r.randint(2, 4)
        layers.append(f"fc.Embedding({vocab}, {d}{dt})")
        shape, n_in, emb = (batch, t), d, vocab
        for _ in range(r.randint(1, 3)):
            if r.random() < 0.4:
                layers.append(f"fc.LayerNorm({n_in}{dt.replace('dtype=', 'dtype=')})")
            else:
                n_out = r.randint(2, 5)
                layers.append(f"fc.Dense({n_in}, {n_out}, act={r.choice(ACTS)}{dt})")
                n_in = n_out
        return Stack(seed, "fc.Chain(" + ", ".join(layers) + ")", shape, dtype, emb)
    c, h, w = r.randint(1, 3), r.randint(5, 9), r.randint(5, 9)
    shape = (batch, c, h, w)
    for _ in range(r.randint(1, 4)):
        kind = r.choice(["conv", "conv", "maxpool", "avgpool", "bn", "bn", "ln"])
        if kind == "conv":
            k, s, p = r.randint(1, 3), r.randint(1, 2), r.randint(0, 1)
            if h + 2 * p < k or w + 2 * p < k:
                continue
            c_out = r.randint(1, 4)
            layers.append(f"fc.Conv2d({c}, {c_out}, {k}, stride={s}, padding={p}, act={r.choice(ACTS)}{dt})")
            c, h, w = c_out, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        elif kind == "ln":                                 # over (C, H, W) or (H, W)
            layers.append(f"fc.LayerNorm({(c, h, w) if r.random() < 0.5 else (h, w)}{dt})")
        elif kind in ("maxpool", "avgpool") and min(h, w) >= 2:
            k = r.choice([2, 2, 3]) if min(h, w) >= 3 else 2
            s = r.choice([None, 1, 2])
            cls = "fc.MaxPool2d" if kind == "maxpool" else "fc.AvgPool2d"
            layers.append(f"{cls}({k})" if s is None else f"{cls}({k}, stride={s})")
            s = s or k
            h, w = (h - k) // s + 1, (w - k) // s + 1
        elif kind == "bn":
            layers.append(f"fc.BatchNorm({c}{dt})")
            stats.append(r.random() < 0.5)               # True: test mode with random statistics
    layers.append("flatten")
    n_in = c * h * w
    if r.random() < 0.5:
        layers.append(f"fc.LayerNorm({n_in}{dt})")
    if r.random() < 0.3:
        layers.append(f"fc.BatchNorm({n_in}{dt})")
        stats.append(r.random() < 0.5)
    n_out = r.randint(1, 4)
    layers.append(f"fc.Dense({n_in}, {n_out}, act={r.choice(ACTS)}{dt})")
    return Stack(seed, "fc.Chain(" + ", ".join(layers) + ")", shape, dtype, 0, stats)


# --------------------------------------------------------------------------------------------
# building both models


def build(stack, rng):
    """The flux_compile model, its layers, the torch modules (one per layer) and the input."""
    import flux_compile as fc
    model = eval(stack.text, {"fc": fc, "np": np, "flatten": flatten})
    dtype = np.dtype(stack.dtype)
    layers = list(model.layers)
    test_modes = iter(stack.stats)
    for layer in layers:                       # random values instead of ones / zeros, same dtype
        for p in fc.params(layer):
            p.value[...] = rng.standard_normal(p.value.shape).astype(p.value.dtype) * 0.5 + \
                (1.0 if type(layer).__name__ in ("LayerNorm", "BatchNorm") and p is layer.g else 0.0)
        if type(layer).__name__ == "BatchNorm" and next(test_modes):
            n = layer.g.value.shape[0]
            layer.running_mean = fc.const(rng.standard_normal(n).astype(dtype) * 0.3)
            layer.running_var = fc.const((rng.uniform(0.5, 1.5, n)).astype(dtype))
            fc.testmode(layer)
    if stack.embedding:
        x = rng.integers(0, stack.embedding, stack.input_shape)
    else:
        x = rng.standard_normal(stack.input_shape).astype(dtype)
    return model, layers, x


def torch_forward(layers, x, dtype):
    """The same stack run by torch.nn.functional; returns (output, input tensor, [(fc Param,
    torch tensor, to_fc)] and the BatchNorm running statistics torch ends with)."""
    import torch
    import torch.nn.functional as F
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    pairs, stats = [], []

    def leaf(p, to_torch=lambda a: a, to_fc=lambda g: g):
        t = torch.tensor(to_torch(np.asarray(p.value)), dtype=tdtype, requires_grad=True)
        pairs.append((p, t, to_fc))
        return t
    if np.issubdtype(x.dtype, np.integer):
        h = xt = torch.tensor(x)
    else:
        h = xt = torch.tensor(x, dtype=tdtype, requires_grad=True)
    for layer in layers:
        name = type(layer).__name__
        if name == "Conv2d":
            W, b = leaf(layer.W), leaf(layer.b, lambda a: a.reshape(-1), lambda g: g.reshape(1, -1, 1, 1))
            h = F.conv2d(h, W, b, stride=layer.stride, padding=layer.padding)
        elif name == "Dense":
            W, b = leaf(layer.W), leaf(layer.b)
            h = h @ W + b
        elif name == "MaxPool2d":
            h = F.max_pool2d(h, layer.k, layer.stride)
        elif name == "AvgPool2d":
            h = F.avg_pool2d(h, layer.k, layer.stride)
        elif name == "LayerNorm":
            h = F.layer_norm(h, tuple(np.shape(layer.g.value)), leaf(layer.g), leaf(layer.b), layer.eps)
        elif name == "Embedding":
            h = F.embedding(h, leaf(layer.W))
        elif name == "BatchNorm":
            rm, rv = (torch.tensor(np.asarray(v), dtype=tdtype).clone() for v in layer.statistics())
            h = F.batch_norm(h, rm, rv, leaf(layer.g), leaf(layer.b), layer.training, layer.momentum, layer.eps)
            stats.append((layer, rm, rv))
        elif name == "function":
            h = h.reshape(h.shape[0], -1)
        else:
            raise AssertionError(f"no torch twin for {name}")
        act = getattr(layer, "act", None)
        if act is not None:
            h = torch.tanh(h) if act is np.tanh else torch.sigmoid(h)
    return h, xt, pairs, stats


# --------------------------------------------------------------------------------------------
# checking


def check_stack(stack):
    import flux_compile as fc
    from fuzzgen import Failure, Result
    phase = ["compile"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _check(stack, phase)
    except Failure as f:
        return Result(f.outcome, f.check, f.message, stack.source())
    except fc.CompileError as e:
        return Result("rejected", phase[0], getattr(e, "msg", str(e)), stack.source())
    except Exception as e:
        tb = traceback.extract_tb(e.__traceback__)
        where = " <- ".join(f"{Path(fr.filename).name}:{fr.lineno}" for fr in reversed(tb[-4:]))
        return Result("crash", phase[0], f"{type(e).__name__}: {e} [{where}]", stack.source())
    return Result("ok", "", "", stack.source())


def _close(a, b, f32, what):
    from fuzzgen import Failure
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise Failure("wrong", what, f"{what}: shape {a.shape}, torch gives {b.shape}")
    rtol, atol = (2e-3, 2e-4) if f32 else (1e-7, 1e-9)
    scale = max(1.0, float(np.max(np.abs(b))) if b.size else 1.0)
    if not np.allclose(a, b, rtol=rtol, atol=atol * scale):
        raise Failure("wrong", what, f"{what}: differs by {float(np.max(np.abs(a - b))):.3g}")


def _check(stack, phase):
    import flux_compile as fc
    import torch
    from fuzzgen import Failure
    rng = np.random.default_rng(stack.seed)
    model, layers, x = build(stack, rng)
    dtype = np.dtype(stack.dtype)
    f32 = dtype == np.float32
    phase[0] = "torch"
    # torch in float64 on the same values also for a float32 stack: torch's own float32 rounding
    # (3e-4 on a gradient that is 0, behind a second BatchNorm) is not the reference
    ref, xt, pairs, stats = torch_forward(layers, x, np.float64)
    dy = rng.standard_normal(tuple(ref.shape)).astype(dtype)
    ref.backward(torch.tensor(dy, dtype=torch.float64))
    phase[0] = "first"
    x_before = x.copy()
    model.zero_grad()
    out, back = model.pullback(x)
    dx = back(dy)
    if not np.array_equal(x, x_before):
        raise Failure("wrong", "inputs_modified", "the input was modified")
    _close(out, ref.detach().numpy(), f32, "value")
    if f32 and (np.asarray(out).dtype != np.float32 or any(p.grad.dtype != np.float32 for p in fc.params(model))):
        raise Failure("wrong", "float32_dtype", f"float32 stack gives {np.asarray(out).dtype} output or float64 grads")
    if xt.grad is not None:
        _close(dx, xt.grad.numpy(), f32, "input_grad")
    for i, (p, t, to_fc) in enumerate(pairs):
        _close(p.grad, to_fc(t.grad.numpy()), f32, f"param_grad {i}")
    for layer, rm, rv in stats:
        got = layer.statistics()
        _close(got[0], rm.numpy(), f32, "running_mean")
        _close(got[1], rv.numpy(), f32, "running_var")
    if not f32:
        phase[0] = "fd"
        _check_fd(model, x, dy, rng)


def _check_fd(model, x, dy, rng, eps=1e-6):
    """Central differences of sum(model(x) * dy) in a few entries of x and of every Param,
    against the gradients of the pullback run just before (BatchNorm state is not read back:
    in train mode the output does not depend on the running statistics)."""
    import flux_compile as fc
    from fuzzgen import Failure
    grads = [p.grad.copy() for p in fc.params(model)]
    model.zero_grad()
    _, back = model.pullback(x)
    dx = back(dy)

    def loss():
        return float(np.sum(np.asarray(model(x), np.float64) * dy))
    targets = [(p.value, g, f"param {i}") for i, (p, g) in enumerate(zip(fc.params(model), grads))]
    if np.issubdtype(x.dtype, np.floating):
        targets.append((x, dx, "input"))
    for value, g, what in targets:
        for k in rng.choice(value.size, min(3, value.size), replace=False):
            flat = value.reshape(-1)
            old = flat[k]
            flat[k] = old + eps
            up = loss()
            flat[k] = old - eps
            down = loss()
            flat[k] = old
            est = (up - down) / (2 * eps)
            got = float(np.asarray(g).reshape(-1)[k])
            if abs(got - est) > 1e-4 * max(1.0, abs(est)):
                raise Failure("wrong", "fd", f"finite differences: {what} entry {k}: {got:.6g} vs {est:.6g}")


def run_many(count, seed, verbose=False):
    counts, classes = {}, {}
    for s in range(seed, seed + count):
        stack = generate_stack(s)
        r = check_stack(stack)
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
        if r.outcome != "ok":
            entry = classes.setdefault(r.key, [0, r, stack])
            entry[0] += 1
        if verbose and r.outcome != "ok":
            print(f"seed {s}: {r.key}", flush=True)
    return counts, classes
