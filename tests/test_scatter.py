"""The gradients of indexing (``x[idx]``, ``np.take``, ``np.take_along_axis``) add repeated
indices up without ``np.add.at`` where a sort does the same work faster (rows wider than one
value; for single values NumPy's own ``np.add.at`` fast path is the fastest): checked against
``np.add.at`` itself on hostile indices, and through the compiler against autograd."""
import autograd
import autograd.numpy as anp
import numpy as np
import pytest

import flux_compile as fc
from flux_compile.rules import helpers, helpers_shape

RNG = np.random.default_rng(7)


def _reference_getitem(g, shape, index):
    out = np.zeros(shape, dtype=g.dtype)
    np.add.at(out, index, g)
    return out


INDEXES = [
    ("repeated rows", (6, 3), np.array([0, 2, 2, 5, 0, 2])),
    ("negative", (6, 3), np.array([-1, 0, -1, 3])),
    ("2-d index", (5, 4), np.array([[1, 1], [4, 0], [1, 3]])),
    ("0-d index", (5, 4), np.array(3)),
    ("empty", (5, 4), np.array([], dtype=np.intp)),
    ("one column", (7,), np.array([6, 6, 6, 1, -7])),
    ("after a slice", (3, 6, 2), (slice(None), np.array([5, 1, 5, -1]))),
    ("last axis", (3, 2, 5), (slice(None), slice(None), np.array([[0, 4], [4, 4]]))),
    ("uint index", (4, 2), np.array([3, 3, 1], dtype=np.uint8)),
    ("list", (4, 2), [1, 1, 3]),
    ("mask", (4, 3), np.array([True, False, True, True])),
    ("mask after a slice", (2, 4), (slice(None), np.array([False, True, True, False]))),
    ("2-d mask", (3, 2, 2), np.array([[True, False], [False, False], [True, True]])),
    ("two arrays (np.add.at)", (4, 3), (np.array([0, 0, 2]), np.array([1, 1, 2]))),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128])
@pytest.mark.parametrize("name, shape, index", INDEXES, ids=[i[0] for i in INDEXES])
def test_getitem_grad_equals_np_add_at(name, shape, index, dtype):
    g = np.asarray(np.zeros(shape)[helpers_shape._index_arrays(index) if isinstance(index, list) else index])
    g = (RNG.normal(size=g.shape) + (1j * RNG.normal(size=g.shape) if dtype is np.complex128 else 0)).astype(dtype)
    got = helpers.getitem_grad(g, shape, index)
    want = _reference_getitem(g, shape, helpers_shape._index_arrays(index))
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6 if dtype is np.float32 else 1e-12)


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("indices", [np.array([2, 2, 0, -1]), np.array([[1, 1], [0, 1]]), np.array(1),
                                     np.array([], dtype=int)])
def test_take_grad_equals_np_add_at(axis, indices):
    a = RNG.normal(size=(3, 4, 3))
    g = RNG.normal(size=np.take(a, indices, axis=axis).shape)
    want = np.zeros(a.shape)
    if axis is None:
        np.add.at(want.reshape(-1), indices, g)
    else:
        np.add.at(want, (slice(None),) * (axis % 3) + (indices,), g)
    np.testing.assert_allclose(helpers.take_grad(g, a.shape, indices, axis), want, rtol=1e-12)


@pytest.mark.parametrize("shape, ishape, axis", [((3, 4), (3, 6), 1), ((3, 1), (3, 5), 1), ((1, 4), (5, 4), 0),
                                                 ((2, 3, 4), (2, 7, 4), 1), ((4,), (9,), None)])
def test_take_along_axis_grad_equals_np_add_at(shape, ishape, axis):
    arr = RNG.normal(size=shape)
    n = int(np.prod(shape)) if axis is None else shape[axis]
    indices = RNG.integers(-n, n, size=ishape)
    g = RNG.normal(size=np.take_along_axis(arr, indices, axis=axis).shape)
    want = np.zeros(shape)      # the reference: np.add.at over every position, broadcasting by hand
    if axis is None:
        np.add.at(want.reshape(-1), indices, g)
    else:
        idx = list(np.indices(g.shape, sparse=True))
        idx = [i % max(shape[d], 1) if d != axis else indices for d, i in enumerate(idx)]
        np.add.at(want, tuple(np.broadcast_arrays(*idx)), g)
    np.testing.assert_allclose(helpers.take_along_axis_grad(g, shape, indices, axis), want, rtol=1e-12)


def test_scatter_rows_writes_through_a_view_and_keeps_float32():
    out = np.zeros((2, 5, 3), np.float32)
    view = np.moveaxis(out, 1, 0)
    helpers.scatter_rows(view, np.array([4, 4, 0]), np.ones((3, 2, 3), np.float32))
    assert out.dtype == np.float32 and out[:, 4].tolist() == [[2.0] * 3] * 2 and out[:, 0].sum() == 6


def embed(W, idx, V):
    return np.sum(np.tanh(W[idx]) * V) + np.sum(W.T[:, idx[0]] ** 2)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_compiled_embedding_gradient_matches_autograd(dtype):
    W = RNG.normal(size=(10, 4)).astype(dtype)
    idx = np.array([[3, 3, 9], [0, 3, -1]])
    V = RNG.normal(size=(2, 3, 4)).astype(dtype)
    v, (dW, _, dV) = fc.grad(embed, W, idx, V)
    aW = autograd.grad(lambda W: anp.sum(anp.tanh(W[idx]) * V) + anp.sum(W.T[:, idx[0]] ** 2))(W.astype(np.float64))
    assert dW.dtype == dtype
    np.testing.assert_allclose(dW, aW, rtol=1e-5 if dtype is np.float32 else 1e-12, atol=1e-6)


class _NoAddAt:
    """NumPy with ``np.add.at`` forbidden (the helpers' module global ``np`` is swapped)."""

    class add:
        reduceat = staticmethod(np.add.reduceat)

        @staticmethod
        def at(*args):
            raise AssertionError("np.add.at called")

    def __getattr__(self, name):
        return getattr(np, name)


WIDE = [i for i in INDEXES if "np.add.at" not in i[0] and "one column" not in i[0]]


@pytest.mark.parametrize("name, shape, index", WIDE, ids=[i[0] for i in WIDE])
def test_one_index_array_or_mask_into_wide_rows_needs_no_np_add_at(monkeypatch, name, shape, index):
    g = RNG.normal(size=np.zeros(shape)[helpers_shape._index_arrays(index)].shape)
    want = _reference_getitem(g, shape, helpers_shape._index_arrays(index))
    monkeypatch.setattr(helpers_shape, "np", _NoAddAt())
    np.testing.assert_allclose(helpers.getitem_grad(g, shape, index), want, rtol=1e-12)


def test_take_along_an_axis_of_wide_rows_needs_no_np_add_at(monkeypatch):
    idx = np.array([[0, 3, 3], [1, 1, 1], [-1, 2, 0]])
    want_take = np.zeros((3, 4))
    g3 = RNG.normal(size=(3, 3, 3))
    np.add.at(want_take, (slice(None), idx), g3)
    monkeypatch.setattr(helpers_shape, "np", _NoAddAt())
    np.testing.assert_allclose(helpers.take_grad(g3, (3, 4), idx, axis=1), want_take, rtol=1e-12)
