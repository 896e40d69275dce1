"""Wrong semantics and crashes on valid code (issue 8, classes 3 and 5).

Each defect gets a differential test: the compiled value and gradients against the very same
source run by autograd (``np`` bound to ``autograd.numpy``) where autograd has the function,
and against central finite differences in float64; float32 inputs keep float32 gradients.
"""
import importlib.util
import textwrap

import numpy as np
import pytest

import flux_compile as fc

autograd = pytest.importorskip("autograd")
anp = pytest.importorskip("autograd.numpy")

EPS = 1e-6


def load(tmp_path, name, source, numpy=np):
    """The function ``f`` defined in ``source``, with ``np`` bound to ``numpy``."""
    source = textwrap.dedent(source)
    path = tmp_path / f"{name}_{numpy.__name__.replace('.', '_')}.py"
    path.write_text(f"import {numpy.__name__} as np\n" + source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.f


def central_diff(f, args, i):
    """d f / d args[i] by central differences (float64)."""
    args = [np.array(a, dtype=float) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a
            for a in args]
    x = args[i]
    out = np.zeros_like(x)
    for k in np.ndindex(x.shape):
        old = x[k]
        x[k] = old + EPS
        up = float(f(*args))
        x[k] = old - EPS
        down = float(f(*args))
        x[k] = old
        out[k] = (up - down) / (2 * EPS)
    return out


def check(tmp_path, name, source, *args, diff=(0,), use_autograd=True, rtol=1e-6, atol=1e-7):
    """Compiled value and gradients of ``f`` equal NumPy's value, central differences and
    autograd's gradients; float32 floats in give float32 gradients out."""
    f = load(tmp_path, name, source)
    value, grads = fc.grad(f, *[a.copy() if isinstance(a, np.ndarray) else a for a in args])
    grads = grads if isinstance(grads, tuple) else (grads,)
    np.testing.assert_allclose(value, f(*args), rtol=1e-12, atol=1e-12)
    g_ag = load(tmp_path, name, source, anp) if use_autograd else None
    for i in diff:
        np.testing.assert_allclose(grads[i], central_diff(f, args, i), rtol=1e-5, atol=1e-6,
                                   err_msg=f"finite differences, argument {i}")
        if use_autograd:
            np.testing.assert_allclose(grads[i], autograd.grad(g_ag, i)(*args), rtol=rtol, atol=atol,
                                       err_msg=f"autograd, argument {i}")
    args32 = [a.astype(np.float32) if isinstance(a, np.ndarray) and a.dtype == np.float64 else a
              for a in args]
    v32, g32 = fc.grad(f, *args32)
    g32 = g32 if isinstance(g32, tuple) else (g32,)
    for i in diff:
        assert g32[i].dtype == np.float32, f"argument {i}: {g32[i].dtype}"
        np.testing.assert_allclose(g32[i], grads[i], rtol=2e-3, atol=2e-4)
    return grads


rng = np.random.default_rng(8)
X = rng.standard_normal((4, 5))
X3 = rng.standard_normal((3, 4, 5))


# ---------------------------------------------------------------- class 5: Node ordering

def test_slices_with_equal_spans_do_not_compare_nodes():
    """Two slices covering the same span (``W[:, 0:2]`` and ``W[:, :2]``) made the adjoint
    sum sort tuples holding Nodes: TypeError '<' not supported between 'Node' and 'Node'."""
    @fc.net
    class TwoViews:
        def __init__(self):
            self.W = rng.standard_normal((3, 4))

        def forward(self, x):
            a = self.W[:, 0:2]
            b = self.W[:, :2]
            return np.sum(np.sin(a) * np.cos(b)) + np.sum(self.W[:, 2:] ** 2) + np.sum(x * 0.0)

    m = TwoViews()
    m.back(np.array(1.0), np.ones(2))
    W = m.W.value

    def loss(W):
        return anp.sum(anp.sin(W[:, 0:2]) * anp.cos(W[:, :2])) + anp.sum(W[:, 2:] ** 2)
    np.testing.assert_allclose(m.W.grad, autograd.grad(loss)(W), rtol=1e-12)


# ---------------------------------------------------------------- class 3: list indexing

LIST_INDEXES = {
    "list": "x[[0, 1]]",
    "list-repeats-negative": "x[[-1, 0, -1, 3]]",
    "nested-list": "x[[[0, 1], [3, 3]]]",
    "list-and-list": "x[[[0], [2]], [1, 1, 4]]",
    "list-then-slice": "x[[2, 0], 1:4]",
    "slice-then-list": "x[:, [4, 4, 0]]",
    "bool-list": "x[[True, False, True, True]]",
    "bool-list-columns": "x[:, [True, False, False, True, True]]",
    "none-and-list": "x[None, [1, 1]]",
    "ellipsis-list": "x[..., [0, -1, 0]]",
    "empty-list": "x[[]]",
}


@pytest.mark.parametrize("name", list(LIST_INDEXES))
def test_list_index_is_advanced_indexing(tmp_path, name):
    expr = LIST_INDEXES[name]
    check(tmp_path, "listidx", f"""
        def f(x):
            return np.sum(np.sin({expr}) * np.cos({expr}) ** 2)
        """, X.copy(), use_autograd=name != "empty-list" and "bool" not in name)  # autograd fails on these


def test_list_index_of_run_time_values(tmp_path):
    check(tmp_path, "rtlist", """
        def f(x, i):
            return np.sum(x[[i, 0, i]] ** 3) + np.sum(x[[i, 1], 2:] ** 2)
        """, X.copy(), 3)


def test_list_index_in_3d_with_arrays_and_masks(tmp_path):
    check(tmp_path, "idx3", """
        def f(x, i, m):
            return np.sum(x[i, :, [1, 1]] ** 2) + np.sum(x[:, m] ** 3) + np.sum(x[[0, 2], [3, 3]] * 2.0)
        """, X3.copy(), np.array([2, 0]), np.array([True, False, True, True]))


@pytest.mark.parametrize("index", ["[0, 0, 2]", "[[1], [1]], [2, 4]", "[-1, -1], 1:3", ":, [True, False, True, False, True]"])
def test_setitem_with_a_list_index_keeps_the_last_write(tmp_path, index):
    """``y[[0, 0]] = v`` writes v[1] into row 0 (NumPy keeps the last write): v[0]'s gradient is
    zero, and the overwritten entries of x get none."""
    check(tmp_path, "setidx", f"""
        def f(x, v):
            y = x * 1.0
            y[{index}] = v * 2.0
            return np.sum(np.sin(y) * y)
        """, X.copy(), rng.standard_normal(X[eval(f"np.s_[{index}]")].shape), diff=(0, 1), use_autograd=False)
