"""``fc.jvp``: forward mode by generated tangent code, against ``jax.jvp``, autograd's
``make_jvp`` and central finite differences (float64, 1e-8), on functions with helpers,
sub-models, broadcasting, pytrees and float32."""
from __future__ import annotations

import numpy as np
import pytest

import flux_compile as fc

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy
import autograd  # noqa: E402
import autograd.numpy as anp  # noqa: E402

rng = np.random.default_rng(0)


def fd(f, primals, tangents, eps=1e-6):
    up = f(*[p + eps * t for p, t in zip(primals, tangents)])
    down = f(*[p - eps * t for p, t in zip(primals, tangents)])
    return (np.asarray(up) - np.asarray(down)) / (2 * eps)


def close(a, b, tol=1e-8):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


# ---------------------------------------------------------------- the same function, three ways

def _scale(h):
    return h * (1 + h * h)


def mlp(np):
    def f(W1, b, W2, x):
        h = np.tanh(x @ W1 + b)             # broadcasting: b is a row
        z = _scale(h) @ W2                   # a helper, inlined
        return np.sum(np.exp(-z * z), axis=1) / np.sqrt(1 + np.sum(x * x, axis=1))
    return f


def functions():
    return {"mlp": (mlp, [(4, 5), (5,), (5, 3), (6, 4)]),
            "pow_div": (lambda np: lambda a, b: np.sum(a ** 3 / (1 + b * b), axis=0), [(3, 4), (4,)]),
            "max_log": (lambda np: lambda a, b: np.log(1 + np.maximum(a, b) ** 2) * np.sin(a), [(3, 1), (1, 4)]),
            "reductions": (lambda np: lambda a: np.mean(np.cumsum(a, axis=1) * np.max(a, axis=0), axis=-1), [(3, 4)]),
            "shapes": (lambda np: lambda a, b: np.concatenate([np.transpose(a), b], axis=0)[1:, ::2].sum(),
                       [(3, 2), (4, 3)]),
            "linalg": (lambda np: lambda a: np.linalg.inv(a + 4 * np.eye(3)) @ a, [(3, 3)])}


NO_AUTOGRAD_JVP = {"linalg"}        # autograd defines no forward rule for inv


@pytest.mark.parametrize("name", list(functions()))
def test_jvp_matches_jax_autograd_and_finite_differences(name):
    make, shapes = functions()[name]
    primals = tuple(rng.standard_normal(s) for s in shapes)
    tangents = tuple(rng.standard_normal(s) for s in shapes)
    value, tangent = fc.jvp(make(np), primals, tangents)
    jvalue, jtangent = jax.jvp(make(jnp), primals, tangents)
    close(value, jvalue)
    close(tangent, jtangent)
    close(tangent, fd(make(np), primals, tangents), tol=1e-6)
    # autograd: one argument at a time (make_jvp differentiates one argnum); tangents add up
    if name in NO_AUTOGRAD_JVP:
        return
    total = 0
    for i in range(len(primals)):
        total = total + autograd.make_jvp(make(anp), i)(*primals)(tangents[i])[1]
    close(tangent, total)


def test_zero_tangents_are_pruned_from_the_code():
    f = mlp(np)
    x = rng.standard_normal((6, 4))
    src = fc.jvp_source(f, (rng.standard_normal((4, 5)), rng.standard_normal(5), rng.standard_normal((5, 3)), x))
    assert "def jvp(W1, b, W2, x, W1_dot, b_dot, W2_dot, x_dot):" in src
    assert "h_dot" in src and "zeros" not in src


def test_source_is_readable_and_names_tangents_x_dot():
    def f(x):
        h = np.tanh(x)
        return h * h
    src = fc.jvp_source(f, (np.ones(3),))
    assert "h_dot = x_dot * (1 - " in src and "_dot = h_dot * h + h * h_dot" in src
    assert "# line" in src


# ---------------------------------------------------------------- models and sub-models

def test_jvp_of_a_model_and_of_a_function_calling_one():
    m = fc.Chain(fc.Dense(4, 5, act=np.tanh), fc.Dense(5, 3))
    x, tx = rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    value, tangent = fc.jvp(m, (x,), (tx,))
    close(value, m(x))
    close(tangent, fd(m, (x,), (tx,)), tol=1e-6)

    def loss(model, x):
        return np.sum(model(x) ** 2)
    v2, t2 = fc.jvp(loss, (m, x), (None, tx))
    close(v2, loss(m, x))
    close(t2, fd(lambda x: loss(m, x), (x,), (tx,)), tol=1e-6)
    # against JAX on the same weights
    W1, b1 = m.layers[0].W.value, m.layers[0].b.value
    W2, b2 = m.layers[1].W.value, m.layers[1].b.value
    _, jt = jax.jvp(lambda x: jnp.tanh(x @ W1 + b1) @ W2 + b2, (x,), (tx,))
    close(tangent, jt)


# ---------------------------------------------------------------- pytrees, floats, float32

def test_pytree_primals_and_python_floats():
    def f(params, scale):
        return scale * np.sum(np.tanh(params["x"] @ params["W"]) ** 2) + params["c"][0] * params["c"][1]
    params = {"W": rng.standard_normal((3, 2)), "x": rng.standard_normal((4, 3)),
              "c": (rng.standard_normal(2), rng.standard_normal(2))}
    tparams = {"W": rng.standard_normal((3, 2)), "x": rng.standard_normal((4, 3)),
               "c": (rng.standard_normal(2), rng.standard_normal(2))}
    value, tangent = fc.jvp(f, (params, 0.5), (tparams, 2.0))

    def jf(p, s):
        return s * jnp.sum(jnp.tanh(p["x"] @ p["W"]) ** 2) + p["c"][0] * p["c"][1]
    jv, jt = jax.jvp(jf, (params, 0.5), (tparams, 2.0))
    close(value, jv)
    close(tangent, jt)


def test_float32_stays_float32():
    def f(x, w):
        return np.tanh(x * w + 0.5) / (1 + x * x)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    w = rng.standard_normal(4).astype(np.float32)
    tx, tw = np.ones_like(x), np.ones_like(w)
    value, tangent = fc.jvp(f, (x, w), (tx, tw))
    assert value.dtype == np.float32 and tangent.dtype == np.float32
    _, want = fc.jvp(f, (x.astype(np.float64), w.astype(np.float64)), (tx.astype(np.float64), tw.astype(np.float64)))
    np.testing.assert_allclose(tangent, want, rtol=1e-5, atol=1e-5)


def test_several_outputs_give_several_tangents():
    def f(a):
        return np.sin(a), np.sum(a * a)
    a, t = rng.standard_normal(3), rng.standard_normal(3)
    (s, q), (ts, tq) = fc.jvp(f, (a,), (t,))
    close(ts, np.cos(a) * t)
    close(tq, np.sum(2 * a * t))


def test_compiled_once_per_signature():
    from flux_compile.transforms import compile_jvp

    def f(x):
        return np.exp(x) * x
    x = rng.standard_normal(3)
    c1 = compile_jvp(f, (x,))
    fc.jvp(f, (x,), (x,))
    assert compile_jvp(f, (x + 1,)) is c1                        # same kind of argument: reused
    assert compile_jvp(f, (x.reshape(1, 3),)) is not c1           # another rank: another variant


def test_a_primitive_without_forward_rule_is_a_clear_compile_error():
    def opaque(x):
        return x * 2.0

    @fc.diffrule(opaque)
    def _(dy, y, x):
        return dy * 2.0

    def f(x):
        return opaque(np.sin(x))
    with pytest.raises(fc.CompileError, match=r"no forward-mode \(jvp\) rule for opaque") as info:
        fc.jvp(f, (np.ones(2),), (np.ones(2),))
    assert info.value.lineno is not None and "fc.jvprule" in str(info.value)

    @fc.jvprule(opaque)
    def _(dx, y, x):
        return dx * 2.0
    _, t = fc.jvp(f, (np.ones(2),), (np.ones(2),))
    close(t, 2 * np.cos(np.ones(2)))


def test_mismatched_tangents_are_errors():
    with pytest.raises(ValueError, match="shape"):
        fc.jvp(lambda x: x * 2, (np.ones(3),), (np.ones(4),))
    with pytest.raises(ValueError, match="tangents"):
        fc.jvp(lambda x: x * 2, (np.ones(3),), ())


# ---------------------------------------------------------------- forward over reverse

def _hvp_by_forward_over_reverse(f, names, primals, tangents):
    """The tangent of the generated backward graph (forward mode over reverse mode), run by
    the IR interpreter: the Hessian-vector product."""
    from flux_compile import compiler
    from flux_compile.autodiff import differentiate
    from flux_compile.forward import tangent_graph
    from flux_compile.interp import run_graph
    specs = compiler._arg_specs(names, primals)
    g, _, ctx = compiler._trace("f", f, None, specs, True, values=compiler.flat_inputs(specs, primals))
    joint = differentiate(g, traced=ctx)
    used = {h for n in g.nodes if n.op == "call" for h in [n.fn]}
    for s in joint.seeds:                   # a scalar function: the seed is 1
        s.op, s.value = "const", 1.0
    g.outputs = list(joint.input_grads)
    t = tangent_graph(g, g.inputs[:len(primals)])
    env = run_graph(g, None, tuple(primals) + tuple(tangents))
    return [env[n.id] for n in t.tangents], used


def test_forward_over_reverse_is_the_hessian_vector_product():
    from flux_compile.rules.jvp_helpers import BILINEAR_HELPERS, LINEAR_HELPERS

    def f(x, W, v):
        h = np.tanh(x @ W) ** 2 * x[:, :1]
        return np.sum(h @ v) + np.sum(x[:, [0, 2]] * np.mean(x, axis=0)[:2])

    def fa(x, W, v):
        h = anp.tanh(x @ W) ** 2 * x[:, :1]
        return anp.sum(h @ v) + anp.sum(x[:, [0, 2]] * anp.mean(x, axis=0)[:2])
    primals = (rng.standard_normal((3, 4)), rng.standard_normal((4, 2)), rng.standard_normal(2))
    tangents = tuple(rng.standard_normal(np.shape(p)) for p in primals)
    got, used = _hvp_by_forward_over_reverse(f, ["x", "W", "v"], primals, tangents)

    def gdot(*ps):
        return sum(anp.sum(autograd.grad(fa, i)(*ps) * t) for i, t in enumerate(tangents))
    want = autograd.grad(gdot, (0, 1, 2))(*primals)
    for a, b in zip(got, want):
        close(a, b)
    helpers = set(LINEAR_HELPERS) | set(BILINEAR_HELPERS)
    assert len(used & helpers) >= 4, "the backward should exercise the helpers' forward rules"


# ---------------------------------------------------------------- control flow and captured arrays

CAPTURED = {"W": rng.standard_normal((3, 3))}


def test_loops_data_dependent_branches_and_captured_arrays():
    W = CAPTURED["W"]

    def f(x):
        y = x
        for _ in range(3):
            y = np.tanh(y @ W)
        if np.sum(x) > 0:
            return np.sum(y * y)
        return np.sum(np.sin(y))

    def jf(x):
        y = x
        for _ in range(3):
            y = jnp.tanh(y @ W)
        return jnp.where(jnp.sum(x) > 0, jnp.sum(y * y), jnp.sum(jnp.sin(y)))
    for sign in (1.0, -1.0, 1.0):
        x, t = sign * np.abs(rng.standard_normal((2, 3))), rng.standard_normal((2, 3))
        value, tangent = fc.jvp(f, (x,), (t,))
        jv, jt = jax.jvp(jf, (x,), (t,))
        close(value, jv)
        close(tangent, jt)
    W[...] = rng.standard_normal((3, 3))          # changed in place: read at run time
    value, tangent = fc.jvp(f, (x,), (t,))
    close(tangent, jax.jvp(jf, (x,), (t,))[1])
    src = fc.jvp_source(f, (x,))
    assert "y_dot_1 = y_dot @ W" in src           # one tangent statement per user variable


def test_outputs_that_are_inputs_constants_or_integers():
    x, t = np.arange(3.0), np.ones(3)
    close(fc.jvp(lambda x: x, (x,), (t,))[1], t)

    def g(x, n):
        return x ** n, np.ones(2)                 # n: a compile-time int; a constant output
    (v, c), (tv, tc) = fc.jvp(g, (x, 3), (t, None))
    close(tv, 3 * x ** 2 * t)
    close(tc, np.zeros(2))
    _, ti = fc.jvp(lambda x: np.argmax(x), (x,), (t,))
    assert not np.any(ti)
