"""NumPy's promotion treats NumPy scalars unlike Python numbers (float32 array * np.float64(2)
is float64, * 2.0 is float32): folded constants and Python float arguments keep that meaning."""
import numpy as np
import pytest

import flux_compile as fc

SHIFT32 = np.float32(0.3)
SHIFT64 = np.float64(0.3)


def folded32(w):
    return np.sum(np.tanh(w) * (1.0 / (1.0 + np.exp(-SHIFT32))))


def folded64(w):
    return np.sum(np.tanh(w) * (1.0 / (1.0 + np.exp(-SHIFT64))))


def with_float(w, s):
    return np.sum(np.tanh(w) * s)


@pytest.mark.parametrize("f", [folded32, folded64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_folded_numpy_scalars_promote_as_in_numpy(f, dtype):
    w = np.linspace(0.1, 1, 6).reshape(2, 3).astype(dtype)
    value, (g,) = fc.grad(f, w)
    want = f(w)
    assert np.asarray(value).dtype == np.asarray(want).dtype
    np.testing.assert_allclose(value, want, rtol=1e-6)
    assert g.dtype == w.dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_python_float_argument_stays_weak(dtype):
    w = np.linspace(0.1, 1, 6).reshape(2, 3).astype(dtype)
    value, (gw, gs) = fc.grad(with_float, w, 0.5)
    assert np.asarray(value).dtype == dtype and gw.dtype == dtype
    assert isinstance(gs, float)
    np.testing.assert_allclose(gs, np.sum(np.tanh(w.astype(np.float64))), rtol=1e-6)
