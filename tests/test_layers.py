"""Layers and activations: Affine, Dense, Chain (with plain functions, len, indexing,
slicing, repr), Dropout, freeze/unfreeze; every activation's gradient against finite
differences; initialisers."""
import numpy as np
import pytest

import flux_compile as fc

rng = np.random.default_rng(3)


@pytest.mark.parametrize("act", [None, fc.relu, fc.sigmoid, fc.σ, np.tanh, fc.leakyrelu, fc.elu, fc.gelu,
                                 fc.softplus, fc.softmax, fc.logsoftmax])
def test_dense_with_every_activation(act):
    m = fc.Dense(4, 3, act)
    x = rng.standard_normal((5, 4))
    expected = x @ m.W.value + m.b.value
    if act is not None:
        expected = act(expected)
    np.testing.assert_allclose(m(x), expected)
    assert fc.gradcheck(m, x).ok


def test_affine_uses_its_initialiser():
    m = fc.Affine(10, 20, init=fc.initn)
    assert m.W.shape == (10, 20) and m.b.shape == (1, 20)
    assert np.abs(m.W.value).max() < 0.1          # initn: randn / 100
    x = rng.standard_normal((3, 10))
    np.testing.assert_allclose(m(x), x @ m.W.value + m.b.value)
    assert fc.gradcheck(m, x).ok


def test_chain_with_functions_len_index_slice_repr():
    c = fc.Chain(fc.Dense(4, 8, fc.relu), fc.flatten, np.tanh, fc.Dense(8, 2), fc.softmax)
    x = rng.standard_normal((3, 4))
    y = c(x)
    assert y.shape == (3, 2) and np.allclose(y.sum(axis=1), 1)
    assert len(c) == 5
    assert c[0] is c.layers[0]
    head = c[:2]
    assert isinstance(head, fc.Chain) and len(head) == 2
    np.testing.assert_allclose(c[2:](head(x)), y)
    text = repr(c)
    assert text.startswith("Chain(Dense(") and "softmax" in text and "0x" not in text
    assert fc.gradcheck(c, x).ok


def test_logsumexp_and_flatten_gradients():
    def f(x):
        return np.sum(fc.logsumexp(fc.flatten(x), axis=1) ** 2)
    assert fc.gradcheck(f, rng.standard_normal((2, 3, 2))).ok


def test_activations_are_stable_for_large_inputs():
    big = np.array([[1000.0, -1000.0, 0.0]])
    assert np.all(np.isfinite(fc.sigmoid(big))) and np.all(np.isfinite(fc.softplus(big)))
    assert np.all(np.isfinite(fc.logsoftmax(big))) and np.isfinite(fc.logsumexp(big))
    np.testing.assert_allclose(fc.softmax(big).sum(), 1.0)


def test_dropout_validation_and_identity_at_inference():
    with pytest.raises(ValueError):
        fc.Dropout(1.0)
    d = fc.Dropout(0.5)
    x = rng.standard_normal((4, 6))
    np.testing.assert_array_equal(d(x), x)
    y, _ = d.pullback(x)
    kept = y != 0
    np.testing.assert_allclose(y[kept], 2 * x[kept])


def test_frozen_param_from_constructor():
    @fc.net
    class Half:
        def __init__(self):
            self.W = fc.Param(np.ones((2, 2)), trainable=False)
            self.b = np.zeros((1, 2))

        def forward(self, x):
            return x @ self.W + self.b

    m = Half()
    assert fc.params(m) == [m.b]
    m.back(np.ones((3, 2)), np.ones((3, 2)))
    assert not m.W.grad.any() and m.b.grad.any()
    W0 = m.W.value.copy()
    m.update(0.5)
    np.testing.assert_array_equal(m.W.value, W0)


@pytest.mark.parametrize("init", [fc.initn, fc.glorot_uniform, fc.glorot_normal, fc.zeros])
def test_initialisers_shapes_and_seeds(init):
    a = init(3, 4, rng=np.random.default_rng(1)) if init is not fc.zeros else init(3, 4)
    b = init(3, 4, rng=np.random.default_rng(1)) if init is not fc.zeros else init(3, 4)
    assert a.shape == (3, 4) and a.dtype == np.float64
    np.testing.assert_array_equal(a, b)
