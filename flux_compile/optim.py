"""Optimisers whose update step is generated source, like everything else.

An optimiser is a few hyper-parameters plus per-parameter state (momentum,
second moments, a step count), kept inside the optimiser and keyed by the
Param. For a model it writes *one flat function* over every trainable Param,
a block per Param commented with its field path, compiles it once per
(optimiser class, model layout) and runs it on every step:

>>> import numpy as np
>>> from flux_compile.params import Param
>>> class Toy:                         # stands in for an @fc.net model
...     __flux_net__ = True
...     def __init__(self): self.W = Param(np.ones(2))
>>> m = Toy(); m.W.grad[:] = [1.0, -2.0]
>>> print(update_source(m, SGD(0.1)))  # doctest: +NORMALIZE_WHITESPACE
def update(params, state, steps, lr):
    # W
    p, g = params[0].value, params[0].grad
    p -= lr * g
    g[...] = 0
<BLANKLINE>
>>> apply_update(m, SGD(0.1)); m.W.value, m.W.grad
(array([0.9, 1.2]), array([0., 0.]))

Every step zeroes the gradients of *all* Params, frozen ones included;
frozen Params (``trainable=False``) are not updated.
"""
from __future__ import annotations

import weakref

import numpy as np

from .params import named_params, params, path_str
from .sourcecache import compile_source, unique_filename

__all__ = ["Optimiser", "SGD", "Momentum", "Nesterov", "Adam", "AdamW", "RMSProp",
           "apply_update", "update_source", "update_with"]


class Optimiser:
    """Base class. A subclass names its hyper-parameters (``hyper``, in the
    generated function's argument order), its per-parameter state arrays
    (``slots``) and writes the math for one parameter (:meth:`block`) in terms
    of ``p`` (the value), ``g`` (the gradient), the slot names and ``t`` (this
    parameter's step number, counting from 1)."""

    hyper: tuple = ()
    slots: tuple = ()
    uses_t = False          # does the math need the step number ``t``?

    def __init__(self):
        self.state = {}     # id(param) -> [param, step count, slot arrays]

    def hyperparams(self):
        """Hyper-parameter values as Python floats, in ``hyper`` order."""
        return [float(getattr(self, name)) for name in self.hyper]

    def block(self):
        """Lines of math updating ``p`` in place, from ``g`` and the slots."""
        raise NotImplementedError

    def step(self, model):
        """Apply one update to ``model``'s trainable Params, then zero every gradient."""
        apply_update(model, self)

    def reset(self):
        """Forget all per-parameter state (moments, step counts)."""
        self.state.clear()

    def _state_for(self, p):
        entry = self.state.get(id(p))
        if entry is None or entry[0] is not p or any(
                s.shape != p.value.shape or s.dtype != p.value.dtype for s in entry[2]):
            entry = [p, 0, tuple(np.zeros_like(p.value) for _ in self.slots)]
            self.state[id(p)] = entry
        return entry

    def __repr__(self):
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._repr_names())
        return f"{type(self).__name__}({args})"

    def _repr_names(self):
        return self.hyper


class SGD(Optimiser):
    """Plain gradient descent: ``p -= lr * g`` (``torch.optim.SGD(lr)``)."""

    hyper = ("lr",)

    def __init__(self, lr=0.1):
        super().__init__()
        self.lr = lr

    def block(self):
        return ["p -= lr * g"]


class Momentum(Optimiser):
    """Heavy-ball momentum, as ``torch.optim.SGD(lr, momentum=rho)``::

        v = rho * v + g
        p = p - lr * v
    """

    hyper = ("lr", "rho")
    slots = ("v",)

    def __init__(self, lr=0.01, rho=0.9):
        super().__init__()
        self.lr, self.rho = lr, rho

    def block(self):
        return ["v *= rho; v += g",
                "p -= lr * v"]


class Nesterov(Momentum):
    """Nesterov momentum, as ``torch.optim.SGD(lr, momentum=rho, nesterov=True)``::

        v = rho * v + g
        p = p - lr * (g + rho * v)
    """

    def __init__(self, lr=0.001, rho=0.9):
        super().__init__(lr, rho)

    def block(self):
        return ["v *= rho; v += g",
                "p -= lr * (g + rho * v)"]


class Adam(Optimiser):
    """Adam (Kingma and Ba), as ``torch.optim.Adam(lr, betas, eps)``::

        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g^2
        p = p - lr * mhat / (sqrt(vhat) + eps)   # mhat = m / (1 - beta1^t), vhat likewise
    """

    hyper = ("lr", "beta1", "beta2", "eps")
    slots = ("m", "v")
    uses_t = True

    def __init__(self, lr=0.001, betas=(0.9, 0.999), eps=1e-8):
        super().__init__()
        self.lr, self.betas, self.eps = lr, tuple(betas), eps

    beta1 = property(lambda self: self.betas[0])
    beta2 = property(lambda self: self.betas[1])

    def _repr_names(self):
        return ("lr", "betas", "eps")

    def block(self):
        return ["m *= beta1; m += (1 - beta1) * g",
                "v *= beta2; v += (1 - beta2) * g * g",
                "mhat = m / (1 - beta1 ** t)",
                "vhat = v / (1 - beta2 ** t)",
                "p -= lr * mhat / (np.sqrt(vhat) + eps)"]


class AdamW(Adam):
    """Adam with decoupled weight decay, as ``torch.optim.AdamW``: first
    ``p *= 1 - lr * weight_decay``, then the Adam step."""

    hyper = ("lr", "beta1", "beta2", "eps", "weight_decay")

    def __init__(self, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(lr, betas, eps)
        self.weight_decay = weight_decay

    def _repr_names(self):
        return ("lr", "betas", "eps", "weight_decay")

    def block(self):
        return ["p *= 1 - lr * weight_decay"] + super().block()


class RMSProp(Optimiser):
    """RMSProp, as ``torch.optim.RMSprop(lr, alpha=rho, eps)``::

        v = rho * v + (1 - rho) * g^2
        p = p - lr * g / (sqrt(v) + eps)
    """

    hyper = ("lr", "rho", "eps")
    slots = ("v",)

    def __init__(self, lr=0.001, rho=0.9, eps=1e-8):
        super().__init__()
        self.lr, self.rho, self.eps = lr, rho, eps

    def block(self):
        return ["v *= rho; v += (1 - rho) * g * g",
                "p -= lr * g / (np.sqrt(v) + eps)"]


# -- source generation ---------------------------------------------------------

def _as_optimiser(opt):
    if isinstance(opt, Optimiser):
        return opt
    if isinstance(opt, (int, float, np.number)) and not isinstance(opt, bool):
        return SGD(float(opt))
    raise TypeError(f"expected a learning rate or an optimiser from fc.optim, not {opt!r}")


def _layout(model):
    """(trainable [(path, Param)], frozen [(path, Param)]) of ``model``."""
    everything = named_params(model)
    return ([(q, p) for q, p in everything if p.trainable],
            [(q, p) for q, p in everything if not p.trainable])


def _source(opt, trainable_paths, frozen_paths):
    lines = [f"def update(params, state, steps, {', '.join(opt.hyper)}):"]
    for i, path in enumerate(trainable_paths):
        lines.append(f"    # {path_str(path) or '<model>'}")
        head = f"    p, g = params[{i}].value, params[{i}].grad"
        if opt.slots:
            names = ", ".join(opt.slots) + ("," if len(opt.slots) == 1 else "")
            head = f"    p, g, ({names}) = params[{i}].value, params[{i}].grad, state[{i}]"
        lines.append(head)
        if opt.uses_t:
            lines.append(f"    t = steps[{i}]")
        lines += ["    " + line for line in opt.block()]
        lines.append("    g[...] = 0")
    for j, path in enumerate(frozen_paths, start=len(trainable_paths)):
        lines.append(f"    # {path_str(path)} (frozen: no update)")
        lines.append(f"    params[{j}].grad[...] = 0")
    if not trainable_paths and not frozen_paths:
        lines.append("    pass")
    return "\n".join(lines) + "\n"


_CACHE = {}     # (optimiser class, model class name, trainable paths, frozen paths) -> (source, fn)


def _compiled(model, opt, trainable, frozen):
    tpaths = tuple(q for q, _ in trainable)
    fpaths = tuple(q for q, _ in frozen)
    key = (type(opt), type(model).__qualname__, tpaths, fpaths)
    hit = _CACHE.get(key)
    if hit is None:
        source = _source(opt, tpaths, fpaths)
        label = f"{type(model).__qualname__}.update ({type(opt).__name__})"
        ns = compile_source(source, unique_filename(label), {"np": np})
        hit = _CACHE[key] = (source, ns["update"])
    return hit


_LAST = weakref.WeakKeyDictionary()     # model -> the optimiser of its latest update


def update_source(model, opt=None):
    """The generated update function for ``model`` and ``opt`` as text.

    Without ``opt``: the optimiser of the model's latest update, or ``SGD(0.1)``.
    """
    if opt is None:
        try:
            opt = _LAST.get(model)
        except TypeError:       # a model that cannot be weakly referenced
            opt = None
    opt = SGD(0.1) if opt is None else _as_optimiser(opt)
    trainable, frozen = _layout(model)
    return _compiled(model, opt, trainable, frozen)[0]


def apply_update(model, lr_or_opt):
    """One optimiser step on ``model``: a number means ``SGD(lr)``.

    Updates every trainable Param from its ``.grad``, then zeroes the
    gradients of all Params, frozen ones included.
    """
    opt = _as_optimiser(lr_or_opt)
    trainable, frozen = _layout(model)
    _, fn = _compiled(model, opt, trainable, frozen)
    try:
        _LAST[model] = opt
    except TypeError:
        pass
    state, steps = [], []
    for _, p in trainable:
        entry = opt._state_for(p)
        entry[1] += 1
        state.append(entry[2])
        steps.append(entry[1])
    fn([p for _, p in trainable] + [p for _, p in frozen], state, steps, *opt.hyperparams())


def update_with(model, grads, fn):
    """``fc.update(m, grads, fn)``: set each Param to ``fn(value, grad)``.

    ``grads`` maps field paths (tuples such as ``("first", "W")``, or the
    string ``"first.W"``) to gradients, as ``fc.grad`` returns them. Frozen
    Params are left alone. If ``fn`` returns ``None`` it is taken to have
    changed ``value`` in place. A path that names no Param is a ``KeyError``
    listing every such path; nothing is changed then.

    >>> from flux_compile.params import Param
    >>> class Toy:
    ...     __flux_net__ = True
    ...     def __init__(self): self.W = Param(np.ones(2))
    >>> m = Toy()
    >>> update_with(m, {("W",): np.array([1.0, 2.0])}, lambda x, g: x - 0.5 * g)
    >>> m.W.value
    array([0.5, 0. ])
    """
    by_path = {}
    for q, p in named_params(model):
        by_path[q] = p
        by_path[path_str(q)] = p
    unknown = [k for k in grads if k not in by_path]
    if unknown:
        known = ", ".join(path_str(q) for q, _ in named_params(model))
        raise KeyError(f"no parameter at {', '.join(map(repr, unknown))}; the model has: {known}")
    for key, g in grads.items():
        p = by_path[key]
        if g is None or not p.trainable:
            continue
        new = fn(p.value, g)
        if new is not None:
            new = np.asarray(new)
            if new.shape != p.value.shape:
                raise ValueError(f"update of {path_str(key) if isinstance(key, tuple) else key} "
                                 f"has shape {new.shape}, the parameter {p.value.shape}")
            if new is not p.value:
                p.value[...] = new


def clip_grad_norm(model, max_norm):
    """Scale every trainable Param's gradient so their global L2 norm is at most ``max_norm``.

    Returns the norm before clipping (as ``torch.nn.utils.clip_grad_norm_`` does).

    >>> import numpy as np, flux_compile as fc
    >>> m = fc.Affine(1, 1)
    >>> m.W.grad[...] = 3.0; m.b.grad[...] = 4.0
    >>> clip_grad_norm(m, 1.0), round(float(m.W.grad[0, 0]), 6), round(float(m.b.grad[0, 0]), 6)
    (5.0, 0.6, 0.8)
    """
    grads = [p.grad for p in params(model)]
    norm = float(np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads)))
    if norm > max_norm > 0:
        scale = max_norm / (norm + 1e-12)
        for g in grads:
            g *= scale
    return norm
