"""Activation and normalisation functions: ``fc.sigmoid``, ``fc.softmax``, ...

Plain NumPy, numerically stable, dtype preserving (float32 in, float32 out).
Each is a *primitive* for the compiler: its derivative rule lives in
:mod:`flux_compile.rules.nn` and shows up in the generated backward code.

>>> import numpy as np
>>> softmax(np.array([1.0, 1.0]))
array([0.5, 0.5])
"""
from __future__ import annotations

import numpy as np

__all__ = ["sigmoid", "σ", "relu", "leakyrelu", "elu", "gelu", "softplus",
           "softmax", "logsoftmax", "logsumexp", "nodiff", "flatten"]


NUMPY = np      # stays NumPy when a backend ports these functions (binding ``np`` to its own)


def sigmoid(x):
    """Logistic sigmoid ``1 / (1 + exp(-x))``, accurate to the last bit or so for any ``x``:
    where ``exp(-x)`` overflows (``x`` below about -709, -88 in float32) it is ``inf`` and
    ``1 / (1 + inf)`` is 0, the right value; the warning is silenced. Four passes over the
    array, two of them in place (the recurrent gates call it once per time step).

    >>> sigmoid(np.array([0.0, 1000.0, -1000.0]))
    array([0.5, 1. , 0. ])
    """
    if np is not NUMPY:         # ported to another array library: the two-branch form
        e = np.exp(-np.abs(x))
        r = 1.0 / (1.0 + e)
        return np.where(x >= 0, r, e * r)
    with np.errstate(over="ignore"):
        t = np.exp(np.negative(x))
    if isinstance(t, np.ndarray):
        t += 1.0
        return np.reciprocal(t, out=t)
    return 1.0 / (1.0 + t)


σ = sigmoid


def relu(x):
    """Rectified linear unit ``max(x, 0)``.

    >>> relu(np.array([-1.0, 2.0]))
    array([0., 2.])
    """
    return np.maximum(x, 0)


def leakyrelu(x, a=0.01):
    """Leaky ReLU: ``x`` where positive, ``a * x`` elsewhere.

    >>> leakyrelu(np.array([-1.0, 2.0]))
    array([-0.01,  2.  ])
    """
    return np.where(x > 0, x, a * x)


def elu(x, alpha=1.0):
    """Exponential linear unit: ``x`` where positive, ``alpha * (exp(x) - 1)`` elsewhere.

    >>> elu(np.array([-1.0, 2.0])).round(4)
    array([-0.6321,  2.    ])
    """
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


def gelu(x):
    """Gaussian error linear unit, the tanh approximation
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (as in GPT-2 and Flux).

    >>> gelu(np.array([-1.0, 0.0, 1.0])).round(4)
    array([-0.1588,  0.    ,  0.8412])
    """
    if _writable_float(x):          # NumPy: one temporary, updated in place
        t = x * x
        t *= _GELU_C0 * _GELU_C1
        t += _GELU_C0
        t *= x
        np.tanh(t, out=t)
        t += 1
        t *= x
        t *= 0.5
        return t
    return 0.5 * x * (1 + np.tanh(0.7978845608028654 * (x + 0.044715 * (x * x * x))))


_GELU_C0, _GELU_C1 = 0.7978845608028654, 0.044715        # sqrt(2 / pi) and the cubic's weight
_NUMPY_ARRAY = np.ndarray       # kept when a backend ports these functions (np rebound): a torch
                                # tensor or JAX array is not one and takes the plain expressions


def _writable_float(*arrays):
    """All NumPy float arrays (not 0-d: their arithmetic gives scalars) of one dtype and shape:
    in-place arithmetic on a copy keeps the result and its dtype what the plain expression gives."""
    first = arrays[0]
    return all(isinstance(a, _NUMPY_ARRAY) and a.ndim > 0 and a.dtype.kind == "f" and a.dtype == first.dtype
               and a.shape == first.shape for a in arrays)


def gelu_grad(g, x):
    """``g * gelu'(x)``, the kernel of :func:`gelu`'s derivative rule. With ``t`` the tanh
    of the forward and ``h = 0.5 x u'(x)`` (``u`` its argument),
    ``gelu'(x) = 0.5 (1 + t) + h (1 - t^2) = (1 + t) (0.5 + h (1 - t))``.

    >>> float(gelu_grad(np.array(1.0), np.array(0.0)))
    0.5
    """
    if _writable_float(x, g):       # NumPy: three temporaries, updated in place
        x2 = x * x
        t = x2 * (_GELU_C0 * _GELU_C1)
        t += _GELU_C0
        t *= x
        np.tanh(t, out=t)
        h = x2
        h *= 1.5 * _GELU_C0 * _GELU_C1
        h += 0.5 * _GELU_C0
        h *= x
        s = np.subtract(1, t)
        s *= h
        s += 0.5
        t += 1
        t *= s
        t *= g
        return t
    x2 = x * x
    t = np.tanh(x * (_GELU_C0 + _GELU_C0 * _GELU_C1 * x2))
    return g * ((1 + t) * (0.5 + x * (0.5 * _GELU_C0 + 1.5 * _GELU_C0 * _GELU_C1 * x2) * (1 - t)))


def standardize(x, *, axes=(-1,), eps=1e-5):
    """``(x - mean) / sqrt(var + eps)`` over ``axes`` (kept), the normalisation inside
    ``LayerNorm``; a primitive, so its derivative is one fused rule (:func:`standardize_grad`).

    >>> standardize(np.array([[1.0, 3.0]]), eps=0.0)
    array([[-1.,  1.]])
    """
    xc = x - np.mean(x, axis=axes, keepdims=True)
    if _writable_float(xc):         # NumPy: the centred copy is scaled in place
        xc *= _rstd(xc, axes, eps)
        return xc
    return xc / np.sqrt(np.mean(xc * xc, axis=axes, keepdims=True) + eps)


def _rstd(xc, axes, eps):
    """``1 / sqrt(var + eps)`` of the centred ``xc`` (kept axes)."""
    var = np.mean(np.square(xc), axis=axes, keepdims=True)
    return 1 / np.sqrt(var + np.asarray(eps, dtype=var.dtype))


def standardize_grad(g, x, *, axes=(-1,), eps=1e-5):
    """``J g`` for :func:`standardize`'s Jacobian ``J`` at ``x``, which is symmetric:
    ``rstd * (g - mean(g) - xhat * mean(g * xhat))`` (means over ``axes``), so it is the
    derivative rule's kernel and the forward rule's too. The statistics of ``x`` are
    recomputed (two passes) rather than saved.

    >>> standardize_grad(np.array([[1.0, 1.0]]), np.array([[1.0, 3.0]]), eps=0.0)
    array([[0., 0.]])
    """
    xc = x - np.mean(x, axis=axes, keepdims=True)
    if _writable_float(xc, g):      # NumPy: two temporaries, updated in place
        rstd = _rstd(xc, axes, eps)
        xhat = xc
        xhat *= rstd
        t = np.multiply(g, xhat)
        m = np.mean(t, axis=axes, keepdims=True)
        np.multiply(xhat, m, out=t)
        np.subtract(g, t, out=t)
        t -= np.mean(g, axis=axes, keepdims=True)
        t *= rstd
        return t
    rstd = 1 / np.sqrt(np.mean(xc * xc, axis=axes, keepdims=True) + eps)
    xhat = xc * rstd
    return rstd * (g - np.mean(g, axis=axes, keepdims=True) - xhat * np.mean(g * xhat, axis=axes, keepdims=True))


def softplus(x):
    """Smooth ReLU ``log(1 + exp(x))``, overflow-free.

    >>> softplus(np.array([0.0, 1000.0])).round(4).tolist()
    [0.6931, 1000.0]
    """
    return np.logaddexp(0.0, x)


def softmax(x, axis=-1):
    """``exp(x) / sum(exp(x))`` along ``axis`` (the last by default), shifted
    by the maximum so it never overflows.

    >>> softmax(np.array([[0.0, 1000.0]]))
    array([[0., 1.]])
    """
    e = x - np.max(x, axis=axis, keepdims=True)
    if _writable_float(e):          # NumPy: one temporary, exponentiated and normalised in place
        np.exp(e, out=e)
        e /= np.sum(e, axis=axis, keepdims=True)
        return e
    e = np.exp(e)
    return e / np.sum(e, axis=axis, keepdims=True)


def logsoftmax(x, axis=-1):
    """``log(softmax(x, axis))``, computed as ``x - logsumexp(x)``.

    >>> logsoftmax(np.array([0.0, 0.0])).round(4)
    array([-0.6931, -0.6931])
    """
    return x - logsumexp(x, axis=axis, keepdims=True)


def logsumexp(x, axis=None, keepdims=False):
    """``log(sum(exp(x), axis))``, stable for large and ``-inf`` entries.

    >>> float(logsumexp(np.array([1000.0, 1000.0]))).__round__(4)
    1000.6931
    """
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    r = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    if not keepdims:
        r = np.squeeze(r, axis=axis)
        if np.ndim(r) == 0:
            r = r[()]
    return r


def nodiff(x):
    """``x`` itself, with the gradient stopped: nothing flows back through it.

    >>> nodiff(np.array([1.0]))
    array([1.])
    """
    return x


def flatten(x):
    """Flatten all but the first (batch) axis: shape ``(n, ...)`` to ``(n, -1)``.

    >>> flatten(np.zeros((2, 3, 4))).shape
    (2, 12)
    """
    return np.reshape(x, (np.shape(x)[0], -1))
