"""Shared numerical references for the tests."""
import numpy as np


def numgrad(f, x, eps=1e-6):
    """Central finite differences of the scalar function ``f`` at ``x``, in float64."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        fp = f(x.copy())
        x[i] = old - eps
        fm = f(x.copy())
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def mixed_second_difference(L, x, u, v, eps):
    """``u^T H v`` of the scalar function ``L`` at ``x`` by central second differences."""
    return (L(x + eps * u + eps * v) - L(x + eps * u - eps * v)
            - L(x - eps * u + eps * v) + L(x - eps * u - eps * v)) / (4 * eps * eps)
