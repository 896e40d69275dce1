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
    assert "unbroadcast(" in src      # b (n, 1) meets a (n, 4): that sum must stay


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
