"""Minimised programs from the differential fuzzer (tests/fuzzgen.py), one test each, checked
against NumPy / finite differences. Each one failed before its fix.

PYTEST_DONT_REWRITE: the compiled functions below hold asserts; pytest must not rewrite them."""
import numpy as np
import pytest

import flux_compile as fc


def _whole_shape_equal(x):
    assert x.shape == (3, 4), "shape"
    return np.sum(np.tanh(x) ** 2)


def _shape_equal_itself(x):
    assert x.shape == x.shape
    return np.sum(np.tanh(x) ** 2)


def _trailing_shape_equal(x):
    assert x.shape[1:] == (4,)
    assert x.shape != (4,)
    assert list(x.shape[1:]) == [4]
    return np.sum(np.tanh(x) ** 2)


@pytest.mark.parametrize("fn", [_whole_shape_equal, _shape_equal_itself, _trailing_shape_equal])
def test_assert_comparing_whole_shapes_is_a_python_equality(fn):
    """``x.shape == (3, 4)`` is one bool (tuple equality), not NumPy's elementwise comparison:
    it used to be refused as 'assert on an array with several elements is ambiguous'."""
    x = np.random.default_rng(0).standard_normal((3, 4))
    value, (g,) = fc.grad(fn, x)
    assert np.isclose(value, fn(x))
    assert np.allclose(g, 2 * np.tanh(x) * (1 - np.tanh(x) ** 2))


def test_shape_equality_is_decided_again_for_another_batch():
    def f(x):
        if x.shape == (3, 4):
            return np.sum(x * 2.0)
        return np.sum(x * 3.0)
    for batch, factor in ((3, 2.0), (5, 3.0), (3, 2.0)):
        x = np.ones((batch, 4))
        value, (g,) = fc.grad(f, x)
        assert value == factor * x.size and np.all(g == factor)


def test_a_false_whole_shape_assert_still_fails():
    def f(x):
        assert x.shape == (3, 5), "wrong shape"
        return np.sum(x)
    with pytest.raises((AssertionError, fc.CompileError)):
        fc.grad(f, np.ones((3, 4)))
