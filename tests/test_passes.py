"""One small test per graph pass (tests on hand-built graphs, Tangent's optimization tests'
style), then differential checks of the code the passes shape, against autograd."""
import autograd
import autograd.numpy as anp
import numpy as np
import pytest

import flux_compile as fc
from flux_compile import passes
from flux_compile.ir import Graph, Node
from flux_compile.rules import helpers


def _graph():
    g = Graph("t")
    return g, (lambda op, *args, **kw: g.add(Node(op, args, **kw)))


def _call(add, fn, *args, **kwargs):
    return add("call", *args, fn=fn, kwargs=kwargs)


def _model_output(add, x, name="fc1"):
    """A sub-model call: its output's shape is unknown to the caller."""
    return add("model", x, base="self", path=(name,), target=f"self.{name}")


# -- simplify -------------------------------------------------------------------
def test_simplify_drops_multiply_by_one_and_keeps_the_name():
    g, add = _graph()
    x = add("input", name="x")
    one = add("const", value=1)
    y = _call(add, np.multiply, x, one)
    y.name = "h"
    t = _call(add, np.tanh, y)
    g.outputs = [t]
    passes.simplify(g)
    assert t.args[0] is x


# -- cse -------------------------------------------------------------------------
def test_cse_merges_pure_calls_but_not_random_ones():
    g, add = _graph()
    x = add("input", name="x")
    a, b = _call(add, np.tanh, x), _call(add, np.tanh, x)
    r1, r2 = _call(add, np.random.normal, x), _call(add, np.random.normal, x)
    out = _call(add, np.add, a, b)
    g.outputs = [out, r1, r2]
    passes.cse(g)
    assert out.args == (a, a)
    assert g.outputs[1] is not g.outputs[2]


# -- same_shapes -----------------------------------------------------------------
def test_same_shapes_drops_unbroadcast_to_the_shape_of_its_own_class():
    g, add = _graph()
    x = add("input", name="x")
    z = _model_output(add, x)                          # shape unknown
    t = _call(add, np.add, add("const", value=1.0), _call(add, np.absolute, z))
    h = _call(add, np.divide, z, t)                    # same class as z
    dz = _call(add, helpers.unbroadcast, h, add("getattr", z, attr="shape"))
    g.outputs = [dz]
    passes.same_shapes(g)
    assert g.outputs == [h]


def test_same_shapes_keeps_unbroadcast_when_broadcasting_may_happen():
    g, add = _graph()
    x = add("input", name="x")
    z = _model_output(add, x)
    w = _model_output(add, x, "fc2")                   # another unknown shape: may broadcast
    s = _call(add, np.multiply, z, w)
    arr = add("const", value=np.ones((1, 3)))          # an array constant broadcasts too
    s2 = _call(add, np.multiply, z, arr)
    u1 = _call(add, helpers.unbroadcast, s, add("getattr", z, attr="shape"))
    u2 = _call(add, helpers.unbroadcast, s2, add("getattr", z, attr="shape"))
    g.outputs = [u1, u2]
    passes.same_shapes(g)
    assert g.outputs[0].fn is helpers.unbroadcast and g.outputs[1].fn is helpers.unbroadcast


def test_same_shapes_keeps_one_shape_per_class():
    g, add = _graph()
    x = add("input", name="x")
    z = _model_output(add, x)
    y = _call(add, np.multiply, z, z)
    s1, s2 = add("getattr", y, attr="shape"), add("getattr", z, attr="shape")
    g.outputs = [s1, s2]
    passes.same_shapes(g)
    assert g.outputs == [s1, s1]


def test_same_shapes_kernel_results_take_the_class_of_their_shape_argument():
    g, add = _graph()
    x = add("input", name="x")
    z = _model_output(add, x)
    dy = add("input", name="dy")
    spread = _call(add, helpers.sum_grad, dy, add("getattr", z, attr="shape"), add("const", value=1),
                   add("const", value=True))
    u = _call(add, helpers.unbroadcast, _call(add, np.multiply, spread, z), add("getattr", z, attr="shape"))
    g.outputs = [u]
    passes.same_shapes(g)
    assert g.outputs[0].fn is np.multiply


# -- differential: the passes keep the numbers ----------------------------------
def squash(z):
    return z / (1.0 + np.abs(z))


@fc.net
class Broadcasting:
    """Sub-model outputs (unknown shapes) combined with broadcasting: (n, 1) against (n, 4)."""

    def __init__(self):
        self.wide = fc.Affine(3, 4)
        self.narrow = fc.Affine(3, 1)

    def forward(self, x):
        a = squash(self.wide(x))
        b = np.tanh(self.narrow(x))
        return np.sum((a * b + b) ** 2, axis=0, keepdims=True) * a[:1]


def _reference(m, x):
    Ww, bw, Wn, bn = (np.asarray(p.value) for p in (m.wide.W, m.wide.b, m.narrow.W, m.narrow.b))

    def f(x, Ww, bw, Wn, bn):
        z = x @ Ww + bw
        a = z / (1.0 + anp.abs(z))
        b = anp.tanh(x @ Wn + bn)
        return anp.sum(anp.sum((a * b + b) ** 2, axis=0, keepdims=True) * a[:1])
    return [autograd.grad(f, i)(x, Ww, bw, Wn, bn) for i in range(5)]


@pytest.mark.parametrize("batch", [1, 2, 7])
def test_broadcasting_submodels_match_autograd(batch):
    rng = np.random.default_rng(batch)
    m = Broadcasting()
    for p in fc.params(m):
        p.value[...] = rng.normal(size=p.value.shape)
    x = rng.normal(size=(batch, 3)) * 3
    y = m(x)
    m.zero_grad()
    dx = m.back(np.ones_like(y), x)
    want = _reference(m, x)
    np.testing.assert_allclose(dx, want[0], rtol=1e-9, atol=1e-12)
    for p, w in zip((m.wide.W, m.wide.b, m.narrow.W, m.narrow.b), want[1:]):
        np.testing.assert_allclose(p.grad, w, rtol=1e-9, atol=1e-12)
    src = fc.source(m)
    # b (n, 1) meets a (n, 4): that sum must stay (a sum over axis 1 once the sub-models'
    # output shapes are known, inlined)
    assert "unbroadcast(" in src or "axis=1, keepdims=True)" in src


# -- slices_to_concatenate -----------------------------------------------------------
def _tile(add, g, shape, index):
    return _call(add, helpers.getitem_grad, g, shape, add("const", value=index))


def test_slices_tiling_an_axis_become_one_concatenate():
    g, add = _graph()
    a, b, c = (add("input", name=n) for n in "abc")
    shape = add("const", value=(2, 5))
    total = _call(add, np.add, _call(add, np.add, _tile(add, c, shape, (slice(None), slice(3, 5))),
                                     _tile(add, a, shape, (slice(None), slice(0, 1)))),
                  _tile(add, b, shape, (slice(None), slice(1, 3))))
    total.name = "dz"
    g.outputs = [total]
    passes.slices_to_concatenate(g)
    out = g.outputs[0]
    assert out.fn is np.concatenate and out.args[0].args == (a, b, c) and out.kwargs["axis"].value == 1
    assert out.name == "dz"
    order = [n.id for n in g.nodes]
    assert g.nodes.index(out.args[0]) < g.nodes.index(out) and len(set(order)) == len(order)


@pytest.mark.parametrize("indices", [
    [(slice(None), slice(0, 2)), (slice(None), slice(3, 5))],          # a gap
    [(slice(None), slice(0, 3)), (slice(None), slice(2, 5))],          # an overlap
    [(slice(None), slice(0, 2)), (slice(0, 1), slice(2, 5))],          # two axes
    [(slice(None), slice(0, 5, 2)), (slice(None), slice(1, 5, 2))],    # strided
])
def test_slices_that_do_not_tile_stay_a_sum(indices):
    g, add = _graph()
    a, b = add("input", name="a"), add("input", name="b")
    shape = add("const", value=(2, 5))
    total = _call(add, np.add, _tile(add, a, shape, indices[0]), _tile(add, b, shape, indices[1]))
    g.outputs = [total]
    passes.slices_to_concatenate(g)
    assert g.outputs[0] is total


# -- autodiff.split (the save/backward split, after the passes) ------------------
def test_split_saves_values_and_shapes_the_backward_reads():
    from flux_compile.autodiff import Joint, split
    g, add = _graph()
    x = add("input", name="x")
    W = add("param", base="self", path=("W",))
    z = _call(add, np.matmul, x, W)
    y = _call(add, np.tanh, z)
    g.outputs = [y]
    nf = len(g.nodes)
    seed = add("seed", name="dy", index=0)
    dz = _call(add, np.multiply, seed, _call(add, np.subtract, add("const", value=1),
                                             _call(add, np.multiply, y, y)))
    dz = _call(add, helpers.unbroadcast, dz, add("getattr", z, attr="shape"))
    add("accum", _call(add, np.matmul, _call(add, np.transpose, x), dz), base="self", path=("W",))
    dx = _call(add, np.matmul, dz, _call(add, np.transpose, W))
    sp = split(Joint(g, [seed], [dx], nf), lambda n: n)
    saved = [(n.op, n.attr or n.name) for n, _ in sp.saved]
    assert saved == [("input", "x"), ("call", None), ("getattr", "shape")]
    assert sp.saved[1][0] is y                          # y, not z: z's shape is all it needs
    assert z not in [n for n, _ in sp.saved] and any(n.op == "getattr" for n in sp.forward)
    assert all(n.id >= nf for n in sp.backward)


# -- powers_to_products ------------------------------------------------------------
def _power_graph(exponent, x_op="input"):
    g, add = _graph()
    x = add("input", name="x", diff=True) if x_op == "input" else add("input", name="n")
    y = _call(add, np.power, x, add("const", value=exponent))
    y.name = "y"
    g.outputs = [y]
    passes.powers_to_products(g)
    return g, x, y


def _ops(g, n):
    """``n`` as a nested tuple of function names and leaves, read back from the graph."""
    if n.op == "const":
        return n.value
    if n.op != "call":
        return n.name
    return (n.fn.__name__,) + tuple(_ops(g, a) for a in n.args)


@pytest.mark.parametrize("k, expected", [
    (2, ("multiply", "x", "x")),
    (3, ("multiply", ("multiply", "x", "x"), "x")),
    (4, ("multiply", ("multiply", "x", "x"), ("multiply", "x", "x"))),
    (-1, ("divide", 1.0, "x")),
    (-3, ("divide", 1.0, ("multiply", ("multiply", "x", "x"), "x"))),
    (0.5, ("sqrt", "x")),
    (-0.5, ("divide", 1.0, ("sqrt", "x"))),
    (1.5, ("multiply", "x", ("sqrt", "x"))),
    (-1.5, ("divide", 1.0, ("multiply", "x", ("sqrt", "x")))),
])
def test_powers_become_products_reciprocals_and_roots(k, expected):
    g, x, y = _power_graph(k)
    assert _ops(g, g.outputs[0]) == expected
    assert g.outputs[0] is y and y.name == "y"        # the node keeps its place and name
    order = {n.id: i for i, n in enumerate(g.nodes)}
    assert all(order[a.id] < order[n.id] for n in g.nodes for a in n.args)     # still SSA


@pytest.mark.parametrize("k", [2.5, 5, 2.0, -2.0, 0, True])
def test_other_powers_stay_pow(k):
    g, x, y = _power_graph(k)
    assert y.fn is np.power


@pytest.mark.parametrize("k", [-1, -2, 0.5, -0.5, 1.5])
def test_negative_and_root_powers_of_a_maybe_integer_value_stay_pow(k):
    g, x, y = _power_graph(k, x_op="int")      # an input that is not known to be a float
    assert y.fn is np.power


def _powers(x):
    return (np.sum(x ** 2) + np.sum(np.tanh(x) ** 3) + np.sum(x ** 4 / 7) + np.sum((x * x + 1) ** -1)
            + np.sum((x * x + 2) ** -3) + np.sum((x * x + 1) ** 0.5) + np.sum((x * x + 3) ** -0.5)
            + np.sum(x ** -2 * 0.01) + np.sum((x * x + 1) ** 1.5))


@pytest.mark.parametrize("x", [np.linspace(-3, 3, 7) + 0.05, np.array([-1e3, -2.5, 0.3, 1e-3, 40.0])])
def test_rewritten_powers_match_autograd_values_and_gradients(x):
    value, (dx,) = fc.grad(_powers, x)
    np.testing.assert_allclose(value, _powers(x), rtol=1e-12)
    np.testing.assert_allclose(dx, autograd.grad(lambda v: _apowers(v))(x), rtol=1e-10, atol=1e-14)
    src = fc.source(_powers, "all", args=(x,))
    body = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith("#"))
    assert "**" not in body                    # no pow left, forward or backward


def _apowers(x):
    return (anp.sum(x ** 2) + anp.sum(anp.tanh(x) ** 3) + anp.sum(x ** 4 / 7) + anp.sum((x * x + 1) ** -1)
            + anp.sum((x * x + 2) ** -3) + anp.sum((x * x + 1) ** 0.5) + anp.sum((x * x + 3) ** -0.5)
            + anp.sum(x ** -2 * 0.01) + anp.sum((x * x + 1) ** 1.5))


def test_rewritten_powers_keep_float32_and_integer_semantics():
    x32 = np.linspace(-2, 2, 5, dtype=np.float32) + np.float32(0.1)
    v, (dx,) = fc.grad(_powers, x32)
    assert dx.dtype == np.float32
    np.testing.assert_allclose(dx, autograd.grad(_apowers)(x32.astype(np.float64)), rtol=2e-5)
    n, x = np.array([3, -4, 5]), np.array([0.5, 1.0, 2.0])
    value, (dx, _) = fc.grad(_int_cube, x, n)
    assert value == np.sum(x * n ** 3) and dx.tolist() == [27.0, -64.0, 125.0]
    assert "n * n * n" in fc.source(_int_cube, "forward", args=(x, n))
    with pytest.raises(Exception, match="negative integer powers"):
        fc.grad(_int_reciprocal, x, n)      # NumPy's error, not a silently float result


def _int_cube(x, n):
    return np.sum(x * n ** 3)


def _int_reciprocal(x, n):
    return np.sum(x * n ** -1)


def test_zero_and_infinite_bases_follow_numpy():
    def f(x):
        return np.sum(x ** -2 + x ** 3 + x ** 0.5)
    x = np.array([0.0, np.inf, -np.inf, 4.0])
    with np.errstate(all="ignore"):
        expected = f(x)
        value, _ = fc.grad(f, x)
    np.testing.assert_equal(value, expected)


# -- simplify: self-inverse ops ----------------------------------------------------------
@pytest.mark.parametrize("fn", [np.negative, np.transpose])
def test_simplify_drops_double_negation_and_transpose_of_transpose(fn):
    g, add = _graph()
    x = add("input", name="x")
    y = _call(add, np.tanh, _call(add, fn, _call(add, fn, x)))
    g.outputs = [y]
    passes.simplify(g)
    assert y.args[0] is x


def test_double_negation_and_transposes_compiled_match_autograd():
    def f(W, x):
        return np.sum(-(-(x @ W.T.T)) * np.tanh(x).T.T @ W)
    W, x = np.random.default_rng(1).normal(size=(3, 3)), np.random.default_rng(2).normal(size=(4, 3))
    value, (dW, dx) = fc.grad(f, W, x)
    aW, ax = autograd.grad(lambda W, x: anp.sum(-(-(x @ W.T.T)) * anp.tanh(x).T.T @ W), (0, 1))(W, x)
    np.testing.assert_allclose(dW, aW, rtol=1e-10)
    np.testing.assert_allclose(dx, ax, rtol=1e-10)
    code = [line for line in fc.source(f, "forward", args=(W, x)).splitlines() if not line.lstrip().startswith("#")]
    assert not any(".T.T" in line or "-(-" in line for line in code)
