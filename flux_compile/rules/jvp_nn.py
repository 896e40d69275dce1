"""Forward-mode rules for the library's activation functions."""
import numpy as np

from .registry import jvprule, linear_jvp
from ..functions import (elu, flatten, gelu, gelu_grad, leakyrelu, logsoftmax, logsumexp, relu, sigmoid,
                         softmax, softplus, standardize, standardize_grad)
from .helpers import restore_axes
from .jvp_elementwise import tsum
from .nn import gelu_second

linear_jvp(flatten)


@jvprule(sigmoid)
def _(dx, y, x):
    return dx * y * (1 - y)


@jvprule(relu)
def _(dx, y, x):
    return dx * (y > 0)


@jvprule(leakyrelu)
def _(dx, y, x, *, a=0.01):
    return np.where(x > 0, dx, a * dx)


@jvprule(elu)
def _(dx, y, x, *, alpha=1.0):
    return np.where(x > 0, dx, dx * (y + alpha))


@jvprule(gelu)
def _(dx, y, x):
    return gelu_grad(dx, x)


@jvprule(gelu_grad)
def _(dg, dx, y, g, x):
    # linear in g; in x the factor gelu'(x) moves with gelu''(x)
    return tsum(None if dg is None else gelu_grad(dg, x), None if dx is None else g * dx * gelu_second(x))


@jvprule(softplus)
def _(dx, y, x):
    return -dx * np.expm1(-y)


@jvprule(softmax)
def _(dx, y, x, *, axis=-1):
    return y * (dx - np.sum(dx * y, axis=axis, keepdims=True))


@jvprule(logsoftmax)
def _(dx, y, x, *, axis=-1):
    return dx - np.sum(dx * np.exp(y), axis=axis, keepdims=True)


@jvprule(logsumexp)
def _(dx, y, x, *, axis=None, keepdims=False):
    weights = np.exp(x - restore_axes(y, x.shape, axis, keepdims))
    return np.sum(dx * weights, axis=axis, keepdims=keepdims)


@jvprule(standardize)
def _(dx, y, x, *, axes=(-1,), eps=1e-5):
    return standardize_grad(dx, x, axes=axes, eps=eps)


@jvprule(standardize_grad)
def _(dg, dx, y, g, x, *, axes=(-1,), eps=1e-5):
    # d rstd = -rstd^2 mean(xhat dx); d xhat = J dx; y = rstd (g - mean(g) - xhat m)
    return tsum(None if dg is None else standardize_grad(dg, x, axes=axes, eps=eps),
                None if dx is None else standardize_x_tangent(dx, y, g, x, axes, eps))


def standardize_x_tangent(dx, y, g, x, axes, eps):
    """The tangent of ``standardize_grad(g, x)`` along ``dx`` (inlined: plain arithmetic)."""
    xc = x - np.mean(x, axis=axes, keepdims=True)
    rstd = 1 / np.sqrt(np.mean(xc * xc, axis=axes, keepdims=True) + eps)
    xhat = xc * rstd
    dxhat = standardize_grad(dx, x, axes=axes, eps=eps)
    m = np.mean(g * xhat, axis=axes, keepdims=True)
    return -rstd * (np.mean(xhat * dx, axis=axes, keepdims=True) * y + dxhat * m
                    + xhat * np.mean(g * dxhat, axis=axes, keepdims=True))


standardize_x_tangent.__flux_inline__ = True
