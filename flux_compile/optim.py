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
    p = p - lr * g
    new_0 = p, ()
    return [new_0]
<BLANKLINE>
>>> apply_update(m, SGD(0.1)); m.W.value, m.W.grad
(array([0.9, 1.2]), array([0., 0.]))

A step is all or nothing. The generated function only *computes*: it
returns a new value and new state for every Param and changes nothing.
Only when all of them exist are they committed, by assigning references,
with Ctrl-C held back for those few assignments (:func:`interrupts_held`).
A gradient that is NaN or infinite stops the step before anything is
computed (:class:`NonFiniteGradient`). Every step zeroes the gradients of
*all* Params, frozen ones included; frozen Params (``trainable=False``) are
not updated.
"""
from __future__ import annotations

from .updatestep import (SGD, Entry, NonFiniteGradient, Optimiser, ParamState, PendingUpdate,  # noqa: F401
                         apply_update, check_gradients, clip_grad_norm, interrupts_held, prepare_update,
                         update_source, update_with)

__all__ = ["Optimiser", "SGD", "Momentum", "Nesterov", "Adam", "AdamW", "RMSProp", "ParamState",
           "NonFiniteGradient", "apply_update", "prepare_update", "update_source", "update_with",
           "interrupts_held"]


class Momentum(Optimiser):
    """Heavy-ball momentum, as ``torch.optim.SGD(lr, momentum=rho)``::

        v = rho * v + g
        p = p - lr * v

    >>> import numpy as np, flux_compile as fc
    >>> m, opt = fc.Dense(1, 1), fc.optim.Momentum(0.1, rho=0.9)
    >>> for _ in range(2):
    ...     m.b.grad[...] = 1.0; m.update(opt)
    >>> m.b.value                                        # -0.1 * 1, then -0.1 * 1.9
    array([[-0.29]])
    """

    hyper = ("lr", "rho")
    slots = ("v",)

    def __init__(self, lr=0.01, rho=0.9):
        super().__init__()
        self.lr, self.rho = lr, rho

    def block(self):
        return ["v = rho * v + g",
                "p = p - lr * v"]


class Nesterov(Momentum):
    """Nesterov momentum, as ``torch.optim.SGD(lr, momentum=rho, nesterov=True)``::

        v = rho * v + g
        p = p - lr * (g + rho * v)

    >>> import numpy as np, flux_compile as fc
    >>> m = fc.Dense(1, 1)
    >>> m.b.grad[...] = 1.0; m.update(fc.optim.Nesterov(0.1, rho=0.9))
    >>> m.b.value                                        # -0.1 * (1 + 0.9 * 1)
    array([[-0.19]])
    """

    def __init__(self, lr=0.001, rho=0.9):
        super().__init__(lr, rho)

    def block(self):
        return ["v = rho * v + g",
                "p = p - lr * (g + rho * v)"]


class Adam(Optimiser):
    """Adam (Kingma and Ba), as ``torch.optim.Adam(lr, betas, eps)``::

        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g^2
        p = p - lr * mhat / (sqrt(vhat) + eps)   # mhat = m / (1 - beta1^t), vhat likewise

    >>> import numpy as np, flux_compile as fc
    >>> m = fc.Dense(1, 1)
    >>> m.b.grad[...] = 5.0; m.update(fc.optim.Adam(0.1))
    >>> m.b.value.round(6)                               # the first step is lr * sign(g)
    array([[-0.1]])
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
        return ["m = beta1 * m + (1 - beta1) * g",
                "v = beta2 * v + (1 - beta2) * g * g",
                "mhat = m / (1 - beta1 ** t)",
                "vhat = v / (1 - beta2 ** t)",
                "p = p - lr * mhat / (np.sqrt(vhat) + eps)"]


class AdamW(Adam):
    """Adam with decoupled weight decay, as ``torch.optim.AdamW``: first
    ``p *= 1 - lr * weight_decay``, then the Adam step.

    >>> import numpy as np, flux_compile as fc
    >>> m = fc.Dense(1, 1, init=lambda *s, **k: np.ones(s))
    >>> m.W.grad[...] = 0.0; m.update(fc.optim.AdamW(0.1, weight_decay=0.5))
    >>> m.W.value.round(6)                               # decay only: 1 * (1 - 0.1 * 0.5)
    array([[0.95]])
    """

    hyper = ("lr", "beta1", "beta2", "eps", "weight_decay")

    def __init__(self, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(lr, betas, eps)
        self.weight_decay = weight_decay

    def _repr_names(self):
        return ("lr", "betas", "eps", "weight_decay")

    def block(self):
        return ["p = p * (1 - lr * weight_decay)"] + super().block()


class RMSProp(Optimiser):
    """RMSProp, as ``torch.optim.RMSprop(lr, alpha=rho, eps)``::

        v = rho * v + (1 - rho) * g^2
        p = p - lr * g / (sqrt(v) + eps)

    >>> import numpy as np, flux_compile as fc
    >>> m = fc.Dense(1, 1)
    >>> m.b.grad[...] = 1.0; m.update(fc.optim.RMSProp(0.01, rho=0.99))
    >>> m.b.value.round(6)                               # -0.01 * 1 / sqrt(0.01)
    array([[-0.1]])
    """

    hyper = ("lr", "rho", "eps")
    slots = ("v",)

    def __init__(self, lr=0.001, rho=0.9, eps=1e-8):
        super().__init__()
        self.lr, self.rho, self.eps = lr, rho, eps

    def block(self):
        return ["v = rho * v + (1 - rho) * g * g",
                "p = p - lr * g / (np.sqrt(v) + eps)"]
