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


TORCH_TOL = {np.float64: 1e-10, np.float32: 1e-5}     # ours against torch with copied values


def close_to_torch(ours, theirs, dtype, what=""):
    """``ours`` has ``dtype``, torch's shape and its values to ``TORCH_TOL`` (scaled by the
    largest magnitude); ``theirs`` a torch tensor or an array."""
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    ours = np.asarray(ours)
    assert ours.dtype == dtype, f"{what}: dtype {ours.dtype}, wanted {np.dtype(dtype)}"
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs torch {theirs.shape}"
    scale = max(1.0, float(np.abs(theirs).max(initial=0)))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=TORCH_TOL[dtype] * scale, err_msg=what)
