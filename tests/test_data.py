"""Batching helpers and initialisers."""
import numpy as np
import pytest

from flux_compile import init
from flux_compile.data import batches, chunk, onecold, onehot


def test_batches_in_order_last_partial_kept():
    x, y = np.arange(14).reshape(7, 2), np.arange(7)
    got = list(batches(x, y, 3, shuffle=False))
    assert [len(yb) for _, yb in got] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([xb for xb, _ in got]), x)
    np.testing.assert_array_equal(got[2][1], [6])
    assert all(isinstance(b, tuple) and len(b) == 2 for b in got)
    assert len(batches(x, y, 3)) == 3 and len(batches(x, y, 7)) == 1 and len(batches(x, y, 100)) == 1


def test_batches_shuffle_keeps_pairs_and_is_seedable():
    x, y = np.arange(20) * 10, np.arange(20)
    first = list(batches(x, y, 6, rng=1))
    again = list(batches(x, y, 6, rng=np.random.default_rng(1)))
    for (xa, ya), (xb, yb) in zip(first, again):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(xa, ya * 10)           # rows stay paired
    assert sorted(np.concatenate([yb for _, yb in first]).tolist()) == list(range(20))
    assert not np.array_equal(np.concatenate([yb for _, yb in first]), y)


def test_batches_reshuffle_each_epoch():
    b = batches(np.arange(50), np.arange(50), 50, rng=0)
    (_, e1), = list(b)
    (_, e2), = list(b)
    assert not np.array_equal(e1, e2)


def test_batches_tuple_inputs_and_errors():
    x1, x2, y = np.zeros((5, 2)), np.ones((5, 3)), np.arange(5)
    (xb, yb), *_ = batches((x1, x2), y, 4, shuffle=False)
    assert isinstance(xb, tuple) and xb[0].shape == (4, 2) and xb[1].shape == (4, 3)
    with pytest.raises(ValueError, match="5 rows but y has 4"):
        batches(x1, y[:4], 2)
    with pytest.raises(ValueError, match="at least 1"):
        batches(x1, y, 0)


def test_onehot_onecold():
    oh = onehot(np.array([2, 0, 1]), 4)
    assert oh.shape == (3, 4) and oh.dtype == np.float64
    np.testing.assert_array_equal(oh, np.eye(4)[[2, 0, 1]])
    np.testing.assert_array_equal(onecold(oh), [2, 0, 1])
    assert onehot([1], 2, dtype=np.float32).dtype == np.float32
    assert onehot(np.array([[0, 1]]), 3).shape == (1, 2, 3)
    np.testing.assert_array_equal(onecold(np.array([[0.1, 0.7], [0.6, 0.3]]).T, axis=0), [1, 0])
    with pytest.raises(ValueError, match=r"out of range 0\.\.2: \[3, 5\]"):
        onehot([0, 3, 5], 3)


def test_chunk():
    assert chunk(list(range(10)), 3) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert [len(c) for c in chunk(np.zeros((10, 2)), 4)] == [3, 3, 2, 2]
    assert chunk(range(4), 2) == [range(0, 2), range(2, 4)]
    assert chunk((1, 2, 3), 5) == [(1,), (2,), (3,), (), ()]
    assert sum(chunk(list(range(17)), 5), []) == list(range(17))
    with pytest.raises(ValueError):
        chunk([1], 0)


@pytest.mark.parametrize("fn", [init.initn, init.glorot_uniform, init.glorot_normal, init.zeros])
def test_initialisers_shapes_dtypes_seeds(fn):
    a = fn(3, 4, rng=7)
    assert a.shape == (3, 4) and a.dtype == np.float64
    np.testing.assert_array_equal(a, fn(3, 4, rng=np.random.default_rng(7)))
    assert fn((2, 5)).shape == (2, 5)
    assert fn(4, dtype=np.float32).dtype == np.float32


def test_initialiser_scales():
    assert abs(init.initn(400, 400, rng=0).std() - 0.01) < 5e-4
    limit = np.sqrt(6 / (300 + 100))
    u = init.glorot_uniform(300, 100, rng=0)
    assert u.max() <= limit and u.min() >= -limit and u.max() > 0.95 * limit
    assert abs(init.glorot_normal(300, 100, rng=0).std() - np.sqrt(2 / 400)) < 3e-3
    assert not init.zeros(2, 3).any()


def test_module_generator_reseed():
    init.seed(3)
    a = init.initn(5)
    init.seed(3)
    np.testing.assert_array_equal(a, init.initn(5))
    with pytest.raises(TypeError):
        init.initn(2, rng="seed")
