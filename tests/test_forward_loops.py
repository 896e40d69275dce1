"""Forward mode through loop regions (issue 11 with issue 13): ``fc.jvp`` runs the tangent in
the same real loop as the primal (``h_dot`` carried beside ``h``), checked against ``jax.jvp``
and central differences in float64; ``fc.hvp`` / ``fc.hessian`` (forward over reverse) against
``jax.hessian`` and mixed second differences."""
import numpy as np
import pytest

import flux_compile as fc
from flux_compile import cache as fc_cache
from tests.numeric import mixed_second_difference

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy


# ------------------------------------------------------------------------------
# programs, each written once for a NumPy-like module (np for flux_compile, jnp for JAX)

def rnn_range(xnp):
    def f(x, W):
        h = xnp.zeros((x.shape[0], W.shape[1]))
        for t in range(x.shape[1]):
            h = xnp.tanh(x[:, t] @ W + h)
        return xnp.sum(h * h)
    return f


def rnn_rows(xnp):
    def f(x, W, h0):
        h = h0
        for row in x:
            h = xnp.tanh(row @ W + 0.5 * h)
        return xnp.sum(xnp.sin(h))
    return f


def while_on_data(xnp):
    def f(x, a):
        y = x
        while xnp.sum(y * y) < 40.0:
            y = y * a + xnp.sin(y)
        return xnp.sum(y ** 3)
    return f


def stacked_list(xnp):
    def f(x, W, U):
        h = xnp.zeros((x.shape[0], W.shape[1]))
        hs = []
        for t in range(x.shape[1]):
            h = xnp.tanh(x[:, t] @ W + h @ U)
            hs.append(h * h)
        return xnp.sum(xnp.stack(hs, axis=1) * xnp.cos(xnp.stack(hs)).sum())
    return f


def cond_in_loop(xnp):
    def f(x, w):
        h = x[0] * w
        for t in range(x.shape[0]):
            if xnp.sum(h) > 0:
                h = xnp.sin(h) * w + x[t]
            else:
                h = h - 0.3 * h * h + x[t] * w
        return xnp.sum(h * h)
    return f


def nested(xnp):
    def f(x, w):
        acc = 0.0
        for i in range(x.shape[0]):
            s = w * 0.5
            for j in range(x.shape[1]):
                s = xnp.tanh(s * x[i, j] + w)
            acc = acc + xnp.sum(s * s) * x[i, 0]
        return acc
    return f


def carried_from_input(xnp):
    def f(x, h0):
        h = h0
        for t in range(x.shape[0]):
            h = h * x[t] + xnp.exp(-h * h)
        return xnp.sum(h)
    return f


def jumps(xnp):
    def f(x, w):
        acc = 0.0
        for t in range(x.shape[0]):
            if xnp.sum(x[t] * w) > 1.0:
                break
            if xnp.sin(xnp.sum(x[t])) > 0.5:
                acc = acc + 0.1 * xnp.sum(w)
                continue
            acc = acc + xnp.sum(xnp.tanh(x[t] * w))
        return acc
    return f


PROGRAMS = {
    "rnn_range": (rnn_range, lambda r: (r.normal(size=(3, 7, 2)), 0.6 * r.normal(size=(2, 4)))),
    "rnn_rows": (rnn_rows, lambda r: (r.normal(size=(40, 3)), 0.5 * r.normal(size=(3, 3)), r.normal(size=(2, 3)))),
    "while_on_data": (while_on_data, lambda r: (0.3 * r.normal(size=5), 1.2 + 0.1 * r.random())),
    "stacked_list": (stacked_list, lambda r: (r.normal(size=(2, 6, 3)), 0.5 * r.normal(size=(3, 3)),
                                              0.5 * r.normal(size=(3, 3)))),
    "cond_in_loop": (cond_in_loop, lambda r: (r.normal(size=(9, 4)), 0.8 * r.normal(size=4))),
    "nested": (nested, lambda r: (r.normal(size=(4, 5)), 0.7 * r.normal(size=3))),
    "jumps": (jumps, lambda r: (r.normal(size=(50, 3)), r.normal(size=3))),
    "carried_from_input": (carried_from_input, lambda r: (0.5 * r.normal(size=(6, 3)), r.normal(size=3))),
}


def central_jvp(f, primals, tangents, eps=1e-6):
    plus = [p + eps * t for p, t in zip(primals, tangents)]
    minus = [p - eps * t for p, t in zip(primals, tangents)]
    return (f(*plus) - f(*minus)) / (2 * eps)


def _trips_are_regions(f, args):
    """The jvp compiled a real loop (not an unrolled copy per trip)."""
    src = fc.jvp_source(f, args)
    assert "for " in src or "while " in src, src
    return src


@pytest.mark.parametrize("name", sorted(PROGRAMS))
@pytest.mark.parametrize("seed", range(3))
def test_jvp_through_loops_matches_jax_and_central_differences(name, seed):
    make, inputs = PROGRAMS[name]
    r = np.random.default_rng(seed)
    primals = inputs(r)
    tangents = tuple(r.normal(size=np.shape(p)) for p in primals)
    f = make(np)
    value, tangent = fc.jvp(f, primals, tangents)
    jvalue, jtangent = jax.jvp(make(jnp), tuple(map(jnp.asarray, primals)), tuple(map(jnp.asarray, tangents)))
    assert np.allclose(value, f(*primals), rtol=1e-12, atol=1e-12)
    assert np.allclose(tangent, np.asarray(jtangent), rtol=1e-8, atol=1e-8)
    assert np.allclose(tangent, central_jvp(f, primals, tangents), rtol=1e-5, atol=1e-6)
    _trips_are_regions(f, primals)


def test_jvp_source_carries_the_tangent_beside_the_value():
    f = rnn_range(np)
    r = np.random.default_rng(0)
    src = _trips_are_regions(f, PROGRAMS["rnn_range"][1](r))
    assert "h_dot = np.zeros_like(h)" in src
    assert "for t in range(" in src and "# line" in src
    loop = src[src.index("for t in range("):]
    assert "h_dot = " in loop and "x_W_all_dot" in src      # the hoisted projection's tangent


def test_zero_trips():
    r = np.random.default_rng(1)
    f = rnn_range(np)
    x, W = np.zeros((3, 0, 2)), r.normal(size=(2, 4))
    value, tangent = fc.jvp(f, (x, W), (np.ones_like(x), r.normal(size=W.shape)))
    assert value == 0.0 and tangent == 0.0
    g = carried_from_input(np)
    x, h0, th = np.zeros((0, 3)), r.normal(size=3), r.normal(size=3)
    value, tangent = fc.jvp(g, (x, h0), (np.zeros_like(x), th))
    assert np.isclose(value, h0.sum()) and np.isclose(tangent, th.sum())


def test_float32_stays_float32():
    r = np.random.default_rng(2)
    x, W = r.normal(size=(3, 40, 2)).astype(np.float32), (0.5 * r.normal(size=(2, 4))).astype(np.float32)
    tx, tW = np.ones_like(x), np.ones_like(W)
    def f(x, W):
        h = np.zeros((x.shape[0], W.shape[1]), dtype=x.dtype)
        hs = []
        for t in range(x.shape[1]):
            h = np.tanh(x[:, t] @ W + h)
            hs.append(h)
        return np.sum(np.stack(hs) ** 2)
    value, tangent = fc.jvp(f, (x, W), (tx, tW))
    assert np.asarray(value).dtype == np.float32 and np.asarray(tangent).dtype == np.float32
    ref = fc.jvp(f, (x.astype(np.float64), W.astype(np.float64)), (tx.astype(np.float64), tW.astype(np.float64)))
    assert np.allclose(tangent, ref[1], rtol=1e-3)


def _variants(f):
    entries = fc_cache._function_cache(f).entries.values()
    return len({id(a) for variants in entries for c in variants for a in [c] + list(getattr(c, "alternatives", []))})


def test_two_hundred_trip_counts_compile_once():
    def f(x, W):
        h = np.zeros((x.shape[0], W.shape[1]))
        for t in range(x.shape[1]):
            h = np.tanh(x[:, t] @ W + h)
        return np.sum(h * h)
    r = np.random.default_rng(3)
    W = 0.5 * r.normal(size=(2, 3))
    for n in range(2, 202):     # (an axis of size 1 is part of the cache key: another variant)
        x = r.normal(size=(2, n, 2))
        tx = r.normal(size=x.shape)
        _, tangent = fc.jvp(f, (x, W), (tx, np.zeros_like(W)))
        if n in (2, 7, 201):
            assert np.isclose(tangent, central_jvp(f, (x, W), (tx, np.zeros_like(W))), rtol=1e-5, atol=1e-7)
    assert _variants(f) == 1


# ------------------------------------------------------------------------------
# second order: forward over reverse (loops unrolled in those plans, one variant per trip count)

SECOND_ORDER = ["rnn_range", "cond_in_loop", "nested", "carried_from_input", "while_on_data"]


@pytest.mark.parametrize("name", SECOND_ORDER)
def test_hvp_and_hessian_through_loops(name):
    make, inputs = PROGRAMS[name]
    r = np.random.default_rng(5)
    primals = inputs(r)
    f, fj = make(np), make(jnp)
    x0, rest = primals[0], primals[1:]
    H = fc.hessian(f)(*primals)
    Hj = jax.hessian(fj)(*map(jnp.asarray, primals))
    assert np.allclose(H, np.asarray(Hj), rtol=1e-8, atol=1e-8)
    u, v = r.normal(size=np.shape(x0)), r.normal(size=np.shape(x0))

    def L(x):
        return f(x, *rest)
    uHv = mixed_second_difference(L, x0, u, v, 1e-4)
    assert np.isclose(np.sum(u * np.tensordot(H, v, axes=np.ndim(x0))), uHv, rtol=1e-4, atol=1e-5)
    tangents = tuple(r.normal(size=np.shape(p)) for p in primals)
    hv = fc.hvp(f, primals, tangents)
    _, hvj = jax.jvp(jax.grad(fj, argnums=tuple(range(len(primals)))), tuple(map(jnp.asarray, primals)),
                     tuple(map(jnp.asarray, tangents)))
    for a, b in zip(hv, hvj):
        assert np.allclose(a, np.asarray(b), rtol=1e-8, atol=1e-8)


def test_hvp_through_a_long_loop_at_the_default_recursion_limit():
    """The unrolled fallback of forward over reverse: 400 trips (an inlined expression nests at
    most codegen.MAX_INLINE_DEPTH deep; the adjoint's chain of sums is walked without recursion)."""
    def make(xnp):
        def f(x, w):
            h = w
            for t in range(x.shape[0]):
                h = xnp.tanh(h * x[t] + 0.1)
            return xnp.sum(h * h)
        return f
    r = np.random.default_rng(6)
    x, w = 0.5 * r.normal(size=(400, 2)), r.normal(size=2)
    tx, tw = r.normal(size=x.shape), r.normal(size=w.shape)
    f = make(np)
    hv = fc.hvp(f, (x, w), (tx, tw))
    grad = fc.gradient(f, argnums=(0, 1))           # first order: a real loop, checked above
    e = 1e-5
    plus, minus = grad(x + e * tx, w + e * tw), grad(x - e * tx, w - e * tw)
    for a, p, m in zip(hv, plus, minus):
        assert np.allclose(a, (p - m) / (2 * e), rtol=1e-5, atol=1e-7)


def test_jvp_of_a_model_calling_a_sub_model_in_a_loop():
    @fc.net
    class Cell:
        def __init__(self):
            self.W = np.random.default_rng(0).normal(size=(3, 3)) * 0.5

        def forward(self, x):
            return np.tanh(x @ self.W)

    @fc.net
    class Seq:
        def __init__(self):
            self.cell = Cell()
            self.U = np.random.default_rng(1).normal(size=(3, 3)) * 0.5

        def forward(self, x):
            h = np.zeros((x.shape[0], 3))
            for t in range(x.shape[1]):
                h = self.cell(x[:, t] + h @ self.U)
            return np.sum(h * h)
    m = Seq()
    r = np.random.default_rng(2)
    for n in (40, 3, 0):
        x, tx = r.normal(size=(2, n, 3)), r.normal(size=(2, n, 3))
        value, tangent = fc.jvp(m, (x,), (tx,))
        e = 1e-6
        assert np.isclose(value, m(x)) and np.isclose(tangent, (m(x + e * tx) - m(x - e * tx)) / (2 * e),
                                                      rtol=1e-5, atol=1e-8)
    assert "for t in range(" in fc.jvp_source(m, (x,))


def test_a_break_flag_gets_no_tangent():
    """A cond region merges a loop's break flag: no zeros are made for its tangent each trip."""
    f = jumps(np)
    r = np.random.default_rng(7)
    x, w = r.normal(size=(50, 3)), r.normal(size=3)
    src = fc.jvp_source(f, (x, w))
    assert "running" in src and "running_dot" not in src and "zeros_like(running" not in src
