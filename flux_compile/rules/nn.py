"""Rules for the library's activation functions (:mod:`flux_compile.functions`).

Most are cheapest in terms of the output ``y``, which the forward pass keeps.
"""
import numpy as np

from .registry import diffrule, nondiff_primitive
from ..functions import (elu, flatten, gelu, gelu_grad, leakyrelu, logsoftmax, logsumexp,
                         nodiff, relu, sigmoid, softmax, softplus, standardize, standardize_grad)
from .helpers import restore_axes

KERNELS = ["gelu_grad", "gelu_second", "standardize_grad"]      # called by name from the rules below (tests/test_rules_direct.py)


@diffrule(sigmoid)
def _(dy, y, x):
    return dy * y * (1 - y)


@diffrule(relu)
def _(dy, y, x):
    return dy * (y > 0)


@diffrule(leakyrelu)
def _(dy, y, x, *, a=0.01):
    return np.where(x > 0, dy, a * dy)


@diffrule(elu)
def _(dy, y, x, *, alpha=1.0):
    # below zero y = alpha * (exp(x) - 1), so dy/dx = y + alpha
    return np.where(x > 0, dy, dy * (y + alpha))


@diffrule(gelu)
def _(dy, y, x):
    return gelu_grad(dy, x)


@diffrule(gelu_grad)
def _(dy, y, g, x):
    # y = g * gelu'(x), so d/dg = gelu'(x) and d/dx = g * gelu''(x)
    return gelu_grad(dy, x), dy * g * gelu_second(x)


def gelu_second(x):
    """The second derivative of :func:`gelu` (inlined into the rules that use it)."""
    t = np.tanh(0.7978845608028654 * x * (1 + 0.044715 * (x * x)))
    u1 = 0.7978845608028654 * (1 + 0.134145 * (x * x))
    u2 = 0.21406444881780076 * x
    return (1 - t * t) * (u1 + 0.5 * x * (u2 - 2 * t * u1 * u1))


gelu_second.__flux_inline__ = True      # plain arithmetic: differentiable at any order


@diffrule(standardize)
def _(dy, y, x, *, axes=(-1,), eps=1e-5):
    # the Jacobian is symmetric: the kernel applies it (statistics of x recomputed, fused)
    return standardize_grad(dy, x, axes=axes, eps=eps)


@diffrule(standardize_grad)
def _(dy, y, g, x, *, axes=(-1,), eps=1e-5):
    # y = J(x) g: linear in g (J symmetric); in x through rstd, xhat and m = mean(g * xhat)
    xc = x - np.mean(x, axis=axes, keepdims=True)
    rstd = 1 / np.sqrt(np.mean(xc * xc, axis=axes, keepdims=True) + eps)
    xhat = xc * rstd
    m = np.mean(g * xhat, axis=axes, keepdims=True)
    dx = -rstd * (xhat * np.mean(dy * y, axis=axes, keepdims=True) + y * np.mean(dy * xhat, axis=axes, keepdims=True))
    return standardize_grad(dy, x, axes=axes, eps=eps), dx - standardize_grad(rstd * m * dy, x, axes=axes, eps=eps)


@diffrule(softplus)
def _(dy, y, x):
    # sigmoid(x) = 1 - exp(-softplus(x))
    return -dy * np.expm1(-y)


@diffrule(softmax)
def _(dy, y, x, *, axis=-1):
    return y * (dy - np.sum(dy * y, axis=axis, keepdims=True))


@diffrule(logsoftmax)
def _(dy, y, x, *, axis=-1):
    return dy - np.exp(y) * np.sum(dy, axis=axis, keepdims=True)


@diffrule(logsumexp)
def _(dy, y, x, *, axis=None, keepdims=False):
    # the softmax of x along axis, scaled by dy
    return restore_axes(dy, x.shape, axis, keepdims) * np.exp(x - restore_axes(y, x.shape, axis, keepdims))


@diffrule(flatten)
def _(dy, y, x):
    return np.reshape(dy, x.shape)


nondiff_primitive(nodiff)
