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


# ---------------------------------------------------------------- class 3: casts

def test_cast_to_int_or_bool_has_no_gradient(tmp_path):
    """``x.astype(int)`` is piecewise constant: it passed the gradient through."""
    x = rng.uniform(-3, 3, (4, 5))
    x = np.where(np.abs(x - np.round(x)) < 0.1, x + 0.3, x)     # away from the jumps
    check(tmp_path, "castint", """
        def f(x):
            return np.sum(x * x.astype(int)) + np.sum(x.astype(bool) * x ** 2) + np.sum(np.astype(x, np.int32) * 2.0)
        """, x, use_autograd=False)


def test_cast_to_int_leaves_nothing_to_differentiate(tmp_path):
    f = load(tmp_path, "castonly", """
        def f(x):
            return np.sum(x.astype(np.int64)) * 1.0
        """)
    np.testing.assert_array_equal(fc.grad(f, X.copy())[1][0], np.zeros_like(X))


def test_float_to_float_cast_keeps_the_gradient_in_the_input_dtype(tmp_path):
    f = load(tmp_path, "castf", """
        def f(x):
            return np.sum(np.sin(x.astype(np.float32)) * 2.0)
        """)
    _, (g,) = fc.grad(f, X.copy())
    assert g.dtype == np.float64
    np.testing.assert_allclose(g, 2 * np.cos(X), rtol=1e-6)
    _, (g32,) = fc.grad(f, X.astype(np.float32))
    assert g32.dtype == np.float32


# ---------------------------------------------------------------- class 3: creation functions

def test_linspace_differentiates_start_and_stop(tmp_path):
    check(tmp_path, "linspace", """
        def f(a, b):
            return np.sum(np.sin(np.linspace(a, b, 7)) * np.arange(7.0)) + np.sum(np.linspace(a * 2.0, b, num=4) ** 2)
        """, np.array(-0.3), np.array(1.7), diff=(0, 1))


def test_linspace_without_endpoint_and_with_array_ends(tmp_path):
    check(tmp_path, "linspace2", """
        def f(a, b):
            return np.sum(np.cos(np.linspace(a, b, 5, endpoint=False))) + np.sum(np.linspace(a, b, 3, axis=1) ** 2)
        """, rng.standard_normal(4), rng.standard_normal((2, 4)), diff=(0, 1), use_autograd=False)


def test_full_differentiates_fill_value(tmp_path):
    check(tmp_path, "full", """
        def f(v, x):
            return np.sum(np.full((3, 4), v) * x) + np.sum(np.full((2, 4), x[0] * v) ** 2)
        """, np.array(0.8), rng.standard_normal((3, 4)), diff=(0, 1), use_autograd=False)
    check(tmp_path, "full_ag", """
        def f(v):
            return np.sum(np.sin(np.full((3, 4), v)))
        """, np.array(0.8))


# ---------------------------------------------------------------- class 3: kinks at zero

ZERO_POINTS = {
    "std-equal-values": ("np.std(x * 0.0 + 1.5)", "np.sum(np.std(x * 0.0 + 1.5, axis=1))"),
    "std-axis-zero-row": ("np.sum(np.std(x * np.array([[0.0], [1.0], [1.0], [0.0]]), axis=1))",),
    "var-equal-values": ("np.var(x * 0.0 + 2.0)",),
    "power-zero-exponent": ("np.sum(np.power(x * 0.0, 0.0))", "np.sum((x * 0.0) ** 0)"),
    "square-at-zero": ("np.sum((x * 0.0) ** 2)", "np.sum(np.power(x * 0.0, 2.0))"),
    "abs-at-zero": ("np.sum(np.abs(x * 0.0))",),
    "norm-at-zero": ("np.linalg.norm(x * 0.0)", "np.sum(np.linalg.norm(x * np.array([[0.0], [1.0], [1.0], [0.0]]), axis=1))",
                     "np.linalg.norm(x * 0.0, 'fro')"),
}


@pytest.mark.parametrize("name", list(ZERO_POINTS))
def test_kinks_at_zero_follow_autograd_and_finite_differences(tmp_path, name):
    """np.std at zero spread, np.power(x, 0) at 0 and norms at 0 gave NaN; autograd and central
    differences give 0 (autograd's std and norm divide by zero for several equal values; the
    compiled rule takes the zero subgradient there, as central differences do)."""
    body = " + ".join(ZERO_POINTS[name])
    f = load(tmp_path, "kink", f"""
        def f(x):
            return {body}
        """)
    value, (g,) = fc.grad(f, X.copy())
    assert np.all(np.isfinite(g)), g
    np.testing.assert_allclose(g, central_diff(f, [X.copy()], 0), atol=1e-6)
    if name in ("power-zero-exponent", "square-at-zero", "abs-at-zero", "var-equal-values"):
        np.testing.assert_allclose(g, autograd.grad(load(tmp_path, "kink", f"""
            def f(x):
                return {body}
            """, anp))(X.copy()), atol=1e-12)


def test_power_with_a_run_time_zero_exponent(tmp_path):
    f = load(tmp_path, "pw", """
        def f(x, p):
            return np.sum(np.power(x, p)) + np.sum(np.float_power(x, p))
        """)
    x = np.array([0.0, 1.5, 0.0, 2.0])
    _, (g, gp) = fc.grad(f, x, np.array(0.0))
    np.testing.assert_array_equal(g, np.zeros(4))
    ag = autograd.grad(lambda x, p: anp.sum(anp.power(x, p)) * 2, (0, 1))(x, np.array(0.0))
    np.testing.assert_allclose(g, ag[0])
    np.testing.assert_allclose(gp, ag[1])


# ---------------------------------------------------------------- class 3: eigh reads one triangle

@pytest.mark.parametrize("uplo", ["L", "U"])
def test_eigh_gradient_flows_only_to_the_triangle_read(tmp_path, uplo):
    q = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    a = (q * np.array([0.5, 1.5, 3.0, 4.5])) @ q.T + 0.4 * np.triu(rng.standard_normal((4, 4)), 1)
    a = a if uplo == "L" else a.T.copy()        # the triangle read is symmetric-positive
    g, = check(tmp_path, f"eigh{uplo}", f"""
        def f(a):
            w, v = np.linalg.eigh(a, UPLO="{uplo}")
            return np.sum(w ** 2) + np.sum(np.abs(v[:, 0]) * np.arange(4.0))
        """, a, rtol=1e-6, atol=1e-8)
    g2, = check(tmp_path, f"eigvalsh{uplo}", f"""
        def f(a):
            return np.sum(np.linalg.eigvalsh(a, "{uplo}") ** 3)
        """, a, use_autograd=False)              # autograd has no eigvalsh
    for grad in (g, g2):
        unread = np.triu(grad, 1) if uplo == "L" else np.tril(grad, -1)
        assert np.all(unread == 0)


# ---------------------------------------------------------------- class 5: einsum forms

EINSUMS = {
    "ellipsis-matmul": "np.einsum('...j,jk->...k', x, w)",
    "ellipsis-implicit": "np.einsum('...ij,...jk', x, w[None])",
    "ellipsis-reduce": "np.einsum('i...->...', x)",
    "ellipsis-broadcast": "np.einsum('...k,...k->...', x, w[:, 0])",
    "sublist": "np.einsum(x, [0, 1, 2], w, [2, 3], [0, 3])",
    "sublist-implicit": "np.einsum(x, [0, 1, 2], w, [2, 3])",
    "sublist-ellipsis": "np.einsum(x, [Ellipsis, 2], w, [2, 3], [Ellipsis, 3])",
}


@pytest.mark.parametrize("name", list(EINSUMS))
def test_einsum_with_ellipsis_and_sublists(tmp_path, name):
    check(tmp_path, "einsum", f"""
        def f(x, w):
            return np.sum(np.sin({EINSUMS[name]}))
        """, X3.copy(), rng.standard_normal((5, 2)), diff=(0, 1), use_autograd="sublist" not in name)


# ---------------------------------------------------------------- class 5: take_along_axis

@pytest.mark.parametrize("shape, indices, axis", [
    ((3, 4), [[0, 3, 3]], 1),                      # indices broadcast over rows
    ((3, 4), [[2], [0]], 0),                       # ... over columns
    ((1, 4), [[0, 3], [1, 1], [2, 0]], 1),         # arr broadcast over rows
    ((2, 3, 4), [[[1], [0], [3]]], 2),
])
def test_take_along_axis_with_broadcast_indices(tmp_path, shape, indices, axis):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(shape)
    idx = np.array(indices)
    g = check(tmp_path, "tala", f"""
        def f(x, i):
            return np.sum(np.take_along_axis(x, i, axis={axis}) ** 3)
        """, x, idx, use_autograd=False)[0]
    # torch.gather does not broadcast: expand both off the axis first
    off = [max(a, b) for a, b in zip(x.shape, idx.shape)]
    xt = torch.tensor(x, requires_grad=True)
    xs = xt.expand(*[x.shape[k] if k == axis else off[k] for k in range(x.ndim)])
    it = torch.tensor(idx).expand(*[idx.shape[k] if k == axis else off[k] for k in range(x.ndim)])
    (torch.gather(xs, axis, it) ** 3).sum().backward()
    np.testing.assert_allclose(g, xt.grad.numpy(), rtol=1e-12)


# ---------------------------------------------------------------- class 5: lists from np.split & co.

SPLITS = {
    "vsplit-index": "return np.sum(np.vsplit(x, 2)[1] ** 2)",
    "hsplit-index-twice": "return np.sum(np.hsplit(x, 3)[0] * np.hsplit(x, 3)[-1])",
    "split-indices-negative": "return np.sum(np.split(x, [1, 3], axis=1)[-1] ** 2)",
    "array_split-unpack": "a, b, c = np.array_split(x, 3, axis=1)\n    return np.sum(b ** 2 * a[:, :1]) + np.sum(c)",
    "vsplit-loop": "t = 0.0\n    for p in np.vsplit(x, 2):\n        t = t + np.sum(p ** 2)\n    return t",
    "hsplit-slice-len": "ps = np.hsplit(x, 3)\n    return np.sum(ps[1:][0] * 2.0) * len(ps)",
    "dsplit-index": "return np.sum(np.dsplit(x[:, :, None] * np.ones(4), 2)[1] ** 2)",
}


@pytest.mark.parametrize("name", list(SPLITS))
def test_pieces_of_a_split_can_be_indexed_sliced_and_iterated(tmp_path, name):
    check(tmp_path, "splits", "def f(x):\n    " + SPLITS[name] + "\n", rng.standard_normal((4, 6)))


@pytest.mark.skipif(not hasattr(np, "unstack"), reason="np.unstack is NumPy >= 2.1")
def test_unstack_pieces_by_run_time_size(tmp_path):
    check(tmp_path, "unstack", """
        def f(x):
            a, b, c, d = np.unstack(x)
            return np.sum(np.unstack(x, axis=1)[2] * d[:4]) + np.sum(b ** 2) + len(np.unstack(x, axis=1))
        """, rng.standard_normal((4, 6)), use_autograd=False)


# ---------------------------------------------------------------- class 5: sub-model needing its inputs

@fc.net
class RankLoop:
    """A sub-model whose forward depends on its input's rank, returning two values."""
    def __init__(self):
        self.w = np.linspace(0.5, 1.5, 4)

    def forward(self, x):
        t = x
        for i in range(x.ndim):
            t = np.sin(t) * self.w[i]
        return t, np.sum(t ** 2)


@fc.net
class UsesRankLoop:
    def __init__(self):
        self.inner = RankLoop()

    def forward(self, x):
        a, b = self.inner(x)
        return np.sum(a * x) + b


def _rank_loop_reference(w, x):
    t = x
    for i in range(x.ndim):
        t = anp.sin(t) * w[i]
    return anp.sum(t * x) + anp.sum(t ** 2)


@pytest.mark.parametrize("first", ["inference", "training", "sub-model-alone"])
def test_range_of_ndim_in_a_sub_model_compiles_whichever_mode_comes_first(first):
    x = rng.standard_normal((3, 4))
    m = UsesRankLoop()
    if first == "inference":
        m(x)
    elif first == "sub-model-alone":
        m.inner(x)
    dx = m.back(np.array(1.0), x)
    np.testing.assert_allclose(m(x), _rank_loop_reference(m.inner.w.value, x), rtol=1e-12)
    np.testing.assert_allclose(dx, autograd.grad(_rank_loop_reference, 1)(m.inner.w.value, x), rtol=1e-10)
    np.testing.assert_allclose(m.inner.w.grad, autograd.grad(_rank_loop_reference, 0)(m.inner.w.value, x),
                               rtol=1e-10)
    assert fc.gradcheck(m, x).ok


# ---------------------------------------------------------------- class 5: models that contain themselves

@fc.net
class Holder:
    def __init__(self):
        self.w = np.ones(3)

    def forward(self, x):
        return x * self.w


@fc.net
class Outer:
    def __init__(self):
        self.inner = Holder()

    def forward(self, x):
        return self.inner(x) * 2.0


def _self_cycle():
    m = Holder()
    m.child = m
    return m, r"Holder\.child is the Holder model itself"


def _long_cycle():
    m = Outer()
    m.inner.up = m
    return m, r"Outer\.inner\.up is the Outer model itself"


def _inner_cycle():
    m = Outer()
    m.inner.layers = [Holder(), m.inner]
    return m, r"Outer\.inner\.layers\[1\] is Outer\.inner"


OPERATIONS = {
    "call": lambda m, x: m(x),
    "back": lambda m, x: m.back(np.ones(3), x),
    "params": lambda m, x: fc.params(m),
    "update": lambda m, x: m.update(0.1),
    "grad": lambda m, x: fc.grad(lambda model, x: np.sum(model(x)), m, x),
}


@pytest.mark.parametrize("make", [_self_cycle, _long_cycle, _inner_cycle])
@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_a_model_that_contains_itself_is_a_clear_error(make, operation):
    m, message = make()
    with pytest.raises(ValueError, match=message) as info:
        OPERATIONS[operation](m, np.ones(3))
    assert type(info.value).__name__ == "ModelCycleError"
    assert "private name" in str(info.value)


def test_a_private_back_reference_is_fine():
    m = Outer()
    m.inner._parent = m
    x = rng.standard_normal(3)
    np.testing.assert_allclose(m.back(np.ones(3), x), 2.0 * np.ones(3))
    np.testing.assert_allclose(m.inner.w.grad, 2.0 * x)


SPANS = ["0:2", ":2", "0:2:1", "2:", "2:4", "1:3", "0:4", "3:"]
FUNCS = ["np.sin", "np.cos", "np.tanh", "np.exp"]


def _sliced_param_program(seed):
    """A model whose Param is read only through slices, several with equal spans."""
    r = np.random.default_rng(seed)
    terms = []
    rows = bool(r.integers(2))          # one axis per program: the pieces may tile it
    for _ in range(r.integers(2, 6)):
        span = SPANS[r.integers(len(SPANS))]
        index = span if rows else f":, {span}"
        terms.append(f"np.sum({FUNCS[r.integers(len(FUNCS))]}(W[{index}]) * {r.integers(1, 4)}.0)")
    return " + ".join(terms)


@pytest.mark.parametrize("seed", range(30))
def test_random_slices_of_a_param_with_equal_spans(tmp_path, seed):
    body = _sliced_param_program(seed)
    path = tmp_path / f"sliced{seed}.py"
    path.write_text(textwrap.dedent(f"""\
        import numpy as np
        import flux_compile as fc


        @fc.net
        class Sliced:
            def __init__(self, W):
                self.W = W

            def forward(self, x):
                W = self.W
                return {body} + np.sum(x)
        """))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    W = rng.standard_normal((4, 4))
    m = mod.Sliced(W.copy())
    m.back(np.array(1.0), np.ones(2))
    ref = autograd.grad(eval("lambda W: " + body.replace("np.", "anp."), {"anp": anp}))(W)
    np.testing.assert_allclose(m.W.grad, ref, rtol=1e-12, err_msg=body)


SETITEM_INDEXES = {
    "int-array-repeats": ("i", np.array([0, 2, 0, 3])),
    "bool-mask": ("m", np.array([True, False, True, True])),
    "array-pair": ("i, j", (np.array([1, 1, 3]), np.array([4, 4, 0]))),
    "ellipsis-array": ("..., j", np.array([0, -1, 0])),
    "slice-and-negative-array": ("1:, i", np.array([-1, 2, -1])),
}


@pytest.mark.parametrize("name", list(SETITEM_INDEXES))
def test_setitem_and_getitem_with_run_time_index_arrays(tmp_path, name):
    index, values = SETITEM_INDEXES[name]
    names = [n.strip() for n in index.split(",") if n.strip() not in ("...", "1:")]
    arrays = values if isinstance(values, tuple) else (values,)
    shape = X[eval(f"np.s_[{index}]", {"np": np}, dict(zip(names, arrays)))].shape
    check(tmp_path, "setarr", f"""
        def f(x, v, {', '.join(names)}):
            y = np.tanh(x)
            y[{index}] = v * y[{index}]
            return np.sum(y ** 3) + np.sum(x[{index}] ** 2)
        """, X.copy(), rng.standard_normal(shape), *arrays, diff=(0, 1), use_autograd=False)


ROW_INDEXES = ["1", "-1", "1:3", ":", "::-1", "[0, 2, 2]", "[-1, 0]", "[[1], [3]]", "None",
               "[True, False, True, True]", "-3:"]
COL_INDEXES = ["0", "-2", "2:", ":", "[4, 4, 1]", "[0, -1, 0]", "[[0, 1]]", "None",
               "[True, True, False, False, True]", "::2"]


def _random_indexes(n):
    r = np.random.default_rng(11)
    out = []
    while len(out) < n:
        row, col = ROW_INDEXES[r.integers(len(ROW_INDEXES))], COL_INDEXES[r.integers(len(COL_INDEXES))]
        index = [f"{row}, {col}", f"..., {col}", row, f"{row}, ..."][r.integers(4)]
        try:
            X[eval(f"np.s_[{index}]", {"np": np})]
        except IndexError:
            continue
        if index not in out:
            out.append(index)
    return out


@pytest.mark.parametrize("index", _random_indexes(40))
def test_random_index_forms_read_and_assign(tmp_path, index):
    """Reads and item assignment with every index form mixed (ints, negative ints, slices,
    lists, nested lists, boolean lists, None, Ellipsis): values and gradients against NumPy
    and central differences (this caught a backward that overwrote its own dy)."""
    check(tmp_path, "anyidx", f"""
        def f(x):
            y = x * 1.0
            y[{index}] = np.sin(x[{index}]) * 2.0
            return np.sum(x[{index}] ** 3) + np.sum(y ** 2)
        """, X.copy(), use_autograd=False)
