"""``fc.gradcheck``: generated gradients against central finite differences, in float64.

>>> import numpy as np, flux_compile as fc
>>> def f(x):
...     return np.sin(x) * x
>>> report = fc.gradcheck(f, np.linspace(-1, 1, 5))
>>> report.ok
True
"""
from __future__ import annotations

import numpy as np

from . import pytree
from .errors import GradcheckError
from .params import is_model, named_params, path_str
from .layers import seed_dropout
from .runstate import restore_states, snapshot_states


class Row:
    def __init__(self, name, shape, abs_err, rel_err, ok):
        self.name, self.shape, self.abs_err, self.rel_err, self.ok = name, shape, abs_err, rel_err, ok


class Report:
    """Rows of (parameter or input, shape, max abs error, max rel error, ok)."""

    def __init__(self, rows):
        self.rows = rows

    @property
    def ok(self):
        return all(r.ok for r in self.rows)

    def __str__(self):
        head = f"{'value':<24} {'shape':<14} {'max abs err':>12} {'max rel err':>12}  ok"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            shape = "×".join(map(str, r.shape)) or "scalar"
            lines.append(f"{r.name:<24} {shape:<14} {r.abs_err:>12.3g} {r.rel_err:>12.3g}  "
                         f"{'yes' if r.ok else 'NO'}")
        return "\n".join(lines)

    __repr__ = __str__


def _as64(x):
    if isinstance(x, np.ndarray) and x.dtype.kind == "f":
        return x.astype(np.float64)
    if isinstance(x, np.floating):
        return np.float64(x)
    return x


def gradcheck(m_or_f, *inputs, eps=1e-6, rtol=1e-4, atol=1e-6, seed=0, max_elements=64, raise_on_fail=True):
    """Check every float input and every trainable parameter; returns a :class:`Report`.

    Values and parameters are promoted to float64 for the check (and restored).
    At most ``max_elements`` entries of each array are probed, chosen with ``seed``.
    Raises :class:`GradcheckError` on a mismatch unless ``raise_on_fail=False``.

    >>> import numpy as np, flux_compile as fc
    >>> fc.gradcheck(fc.Dense(3, 2, act=np.tanh), np.ones((4, 3))).ok
    True
    """
    from .api import grad
    rng = np.random.default_rng(seed)
    from .api import as_numpy_scalars
    inputs = list(as_numpy_scalars([pytree.tree_map(_as64, x) for x in inputs]))
    model = m_or_f if is_model(m_or_f) else None
    models = ([model] if model else []) + [x for x in inputs if is_model(x)]
    params = []
    seen = set()
    for mm in models:
        for path, p in named_params(mm, trainable_only=True):
            if id(p) not in seen:
                seen.add(id(p))
                params.append((path, p))
    saved_values = [(p, p.value, p.grad) for _, p in params]
    for _, p in params:
        p.value = p.value.astype(np.float64)
        p.grad = np.zeros_like(p.value)
    snap = snapshot_states(models[0]) if models else []
    try:
        def f_call(*xs):
            # the training forward (dropout on, the same mask every time) from the same state
            restore_states(snap)
            seed_dropout(seed)
            if model is not None:
                return model._pullback(*xs)[0]
            return m_or_f(*xs)

        out = f_call(*inputs)
        dys = _random_like(out, rng)

        def objective():
            return _dot(dys, f_call(*inputs))

        # analytic
        restore_states(snap)
        seed_dropout(seed)
        analytic_inputs, analytic_params = _analytic(m_or_f, model, inputs, dys, params)
        rows = []
        for i, x in enumerate(inputs):
            for where, leaf, g in _input_leaves(x, analytic_inputs[i]):
                if isinstance(leaf, np.ndarray) and leaf.dtype.kind == "f":
                    rows.append(_compare(f"input {i}{where}", leaf, g, objective, rng, eps, rtol, atol,
                                         max_elements))
        for (path, p), g in zip(params, analytic_params):
            rows.append(_compare(path_str(path), p.value, g, objective, rng, eps, rtol, atol, max_elements))
    finally:
        for p, v, g in saved_values:
            p.value, p.grad = v, g
        restore_states(snap)
    report = Report(rows)
    if raise_on_fail and not report.ok:
        bad = ", ".join(r.name for r in rows if not r.ok)
        raise GradcheckError(f"gradient mismatch in {bad}\n{report}", report)
    return report


def _input_leaves(x, g):
    """``(path text, leaf, its gradient)`` for each leaf of a structured input; the input itself
    otherwise."""
    if not pytree.is_structured(x):
        return [("", x, g)]
    leaves, tree = pytree.flatten(x)
    grads = pytree.flatten(g)[0] if g is not None else [None] * len(leaves)
    paths = ["".join(f"[{k!r}]" for k in path) for path in pytree.leaf_paths(tree)]
    return list(zip(paths, leaves, grads))


def _random_like(out, rng):
    if isinstance(out, tuple):
        return tuple(_random_like(o, rng) for o in out)
    if isinstance(out, list):
        return [_random_like(o, rng) for o in out]
    if isinstance(out, (np.ndarray, np.generic, float)) and np.asarray(out).dtype.kind == "f":
        return rng.standard_normal(np.shape(out))
    return None


def _dot(dys, out):
    if isinstance(out, (tuple, list)):
        return sum(_dot(d, o) for d, o in zip(dys, out))
    if dys is None:
        return 0.0
    return float(np.sum(dys * np.asarray(out, dtype=np.float64)))


def _analytic(f, model, inputs, dys, params):
    if model is not None:
        for _, p in params:
            p.grad[...] = 0
        _, back = model._pullback(*inputs)
        gin = back(dys)
        gin = [gin] if len(inputs) == 1 else list(gin)
        return gin, [p.grad.copy() for _, p in params]
    from .cache import compile_function
    from .api import forward_function
    c = compile_function(f, inputs)
    for _, p in params:
        p.grad[...] = 0
    c, (out, saved) = forward_function(c, f, inputs)
    gin = c.backward(saved, dys)
    flat, trees = pytree.split_args(inputs)
    gin = [gin] if len(flat) == 1 else list(gin)
    gin = [g if t is None else pytree.unflatten(t, g) for t, g in zip(trees, pytree.group(trees, gin))]
    return gin, [p.grad.copy() for _, p in params]


def _compare(name, x, g, objective, rng, eps, rtol, atol, max_elements):
    if g is None:
        g = np.zeros_like(x)
    g = np.broadcast_to(np.asarray(g, dtype=np.float64), x.shape) if np.shape(g) != x.shape else np.asarray(g)
    flat = x.reshape(-1)
    n = flat.size
    idx = np.arange(n) if n <= max_elements else rng.choice(n, max_elements, replace=False)
    num = np.empty(len(idx))
    for k, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + eps
        fp = objective()
        flat[i] = old - eps
        fm = objective()
        flat[i] = old
        num[k] = (fp - fm) / (2 * eps)
    ana = np.asarray(g, dtype=np.float64).reshape(-1)[idx]
    abs_err = np.abs(ana - num)
    rel_err = abs_err / np.maximum(np.abs(num), 1e-12)
    ok = bool(np.all(abs_err <= atol + rtol * np.abs(num)))
    return Row(name, x.shape, float(abs_err.max(initial=0.0)), float(rel_err.max(initial=0.0)), ok)
