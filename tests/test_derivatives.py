"""``fc.gradient``, ``fc.vjp``, ``fc.hvp``, ``fc.jacobian``, ``fc.hessian``: each against
``jax`` and ``autograd`` on the same functions (float64, 1e-8; float32 looser), with helpers,
sub-models, data-dependent ``if``, loops and pytrees; composed with each other; cached
soundly (closures, globals and captured arrays); shown by ``fc.source``."""
from __future__ import annotations

import numpy as np
import pytest

import flux_compile as fc

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy
import autograd  # noqa: E402
import autograd.numpy as anp  # noqa: E402

rng = np.random.default_rng(3)


def close(a, b, tol=1e-8):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def close_tree(a, b, tol=1e-8):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        close(x, y, tol)


# ---------------------------------------------------------------- one network, three libraries

def _squash(h):
    return h * (1 + h * h)


def network(np):
    def f(W1, b, W2, x):
        h = np.tanh(x @ W1 + b)
        z = _squash(h) @ W2                 # a helper, inlined
        return np.sum(np.exp(-z * z)) + 0.1 * np.sum(W1 * W1)
    return f


f_fc, f_jax, f_ag = network(np), network(jnp), network(anp)


def _net_args(dtype=np.float64):
    return tuple(a.astype(dtype) for a in (rng.standard_normal((3, 4)), rng.standard_normal((1, 4)),
                                           rng.standard_normal((4, 2)), rng.standard_normal((5, 3))))


def test_gradient_matches_jax_and_autograd():
    args = _net_args()
    for argnums in (0, 2, (0, 1, 2, 3), (3, 1)):
        got = fc.gradient(f_fc, argnums)(*args)
        close_tree(got, jax.grad(f_jax, argnums)(*args))
        close_tree(got, autograd.grad(f_ag, argnums)(*args) if isinstance(argnums, int) else
                   tuple(autograd.grad(f_ag, a)(*args) for a in argnums))


def test_hvp_is_forward_over_reverse_and_matches_jax():
    args = _net_args()
    t = tuple(rng.standard_normal(a.shape) for a in args)
    got = fc.hvp(f_fc, args, t)
    want = jax.jvp(jax.grad(f_jax, (0, 1, 2, 3)), args, t)[1]
    close_tree(got, want)
    assert isinstance(got, tuple) and len(got) == 4


def test_hessian_and_jacobian_match_jax():
    args = _net_args()
    for argnums in (0, 3):
        close(fc.hessian(f_fc, argnums)(*args), jax.hessian(f_jax, argnums)(*args))
    W = args[0]

    def g(x):
        return np.tanh(x @ W) * np.sum(x)
    x = args[3]
    want = jax.jacobian(lambda x: jnp.tanh(x @ W) * jnp.sum(x))(x)
    for mode in (None, "forward", "reverse"):
        close(fc.jacobian(g, mode=mode)(x), want)
    close(fc.jacobian(lambda v: np.sum(np.sin(v)))(np.arange(3.0)), np.cos(np.arange(3.0)))


def test_vjp_matches_jax():
    args = _net_args()

    def g(W1, x):
        return np.tanh(x @ W1), np.sum(W1)
    value, pull = fc.vjp(g, args[0], args[3])
    jvalue, jpull = jax.vjp(lambda W1, x: (jnp.tanh(x @ W1), jnp.sum(W1)), args[0], args[3])
    close_tree(value, jvalue)
    ct = (rng.standard_normal(value[0].shape), 0.7)
    close_tree(pull(ct), jpull(ct))
    close_tree(pull(ct), jpull(ct))             # the saved forward is reused
    assert "def backward" in fc.source(pull)


def test_float32_stays_float32():
    args = _net_args(np.float32)
    g = fc.gradient(f_fc, 0)(*args)
    assert g.dtype == np.float32
    close(g, jax.grad(f_jax, 0)(*[a.astype(np.float64) for a in args]), tol=2e-4)
    h = fc.hvp(f_fc, args, args)
    assert all(x.dtype == np.float32 for x in h)
    close_tree(h, jax.jvp(jax.grad(f_jax, (0, 1, 2, 3)), tuple(a.astype(np.float64) for a in args),
                          tuple(a.astype(np.float64) for a in args))[1], tol=2e-3)


# ---------------------------------------------------------------- higher order

def test_gradient_of_gradient_to_fourth_order():
    def f(x):
        return np.sin(x) * x ** 3

    def j(x):
        return jnp.sin(x) * x ** 3
    d, jd = f, j
    for order in range(1, 5):
        d, jd = fc.gradient(d), jax.grad(jd)
        for x in (0.5, -1.3, np.float64(2.0)):
            close(d(x), jd(x))
    assert "def gradient" in fc.source(d, inputs=(0.5,))


def test_mixed_partials_and_pytrees():
    def f(a, p):
        return np.sum(np.sin(a * p["x"]) * p["w"][0]) + a ** 3 * p["w"][1]

    def j(a, p):
        return jnp.sum(jnp.sin(a * p["x"]) * p["w"][0]) + a ** 3 * p["w"][1]
    p = {"x": rng.standard_normal(4), "w": (rng.standard_normal(4), 0.5)}
    close_tree(fc.gradient(fc.gradient(f, 0), 1)(0.7, p), jax.grad(jax.grad(j, 0), 1)(0.7, p))
    close(fc.gradient(fc.gradient(f, 0), 0)(0.7, p), jax.grad(jax.grad(j, 0), 0)(0.7, p))
    g = fc.gradient(f, (0, 1))(0.7, p)
    assert isinstance(g[1], dict) and list(g[1]) == ["x", "w"] and isinstance(g[1]["w"], tuple)
    close_tree(g, jax.grad(j, (0, 1))(0.7, p))
    t = (0.3, {"x": rng.standard_normal(4), "w": (rng.standard_normal(4), 0.2)})
    close_tree(fc.hvp(f, (0.7, p), t), jax.jvp(jax.grad(j, (0, 1)), (0.7, p), t)[1])


def test_transforms_compose():
    def f(x):
        return np.sum(np.sin(x) ** 2 * x)

    def j(x):
        return jnp.sum(jnp.sin(x) ** 2 * x)
    x, t = rng.standard_normal(4), rng.standard_normal(4)
    value, tangent = fc.jvp(fc.gradient(f), (x,), (t,))
    close(value, jax.grad(j)(x))
    close(tangent, jax.jvp(jax.grad(j), (x,), (t,))[1])
    value, pull = fc.vjp(fc.gradient(f), x)
    close(pull(t)[0], jax.vjp(jax.grad(j), x)[1](t)[0])
    close(fc.jacobian(fc.gradient(f))(x), jax.hessian(j)(x))

    def s(a, x):
        return np.sum(np.sin(a * x) ** 2)

    def js(a, x):
        return jnp.sum(jnp.sin(a * x) ** 2)
    # the third derivative: hvp of a derivative along a scalar
    got = fc.hvp(fc.gradient(s, 0), (0.4, x), (0.0, t))
    want = jax.jvp(jax.grad(jax.grad(js, 0), (0, 1)), (0.4, x), (0.0, t))[1]
    close_tree(got, want)


# ---------------------------------------------------------------- control flow, models

def test_data_dependent_if_and_loops():
    def f(x, y):
        s = x * y
        if np.sum(x) > 0:
            s = np.sin(s) * x
        for _ in range(3):
            s = s * y + x
        return np.sum(s * s)

    def j(x, y):
        s = x * y
        s = jnp.where(jnp.sum(x) > 0, jnp.sin(s) * x, s)
        for _ in range(3):
            s = s * y + x
        return jnp.sum(s * s)
    for sign in (1.0, -1.0, 1.0):
        x, y = sign * np.abs(rng.standard_normal(3)), rng.standard_normal(3)
        close(fc.gradient(f, 1)(x, y), jax.grad(j, 1)(x, y))
        close(fc.hessian(f)(x, y), jax.hessian(j)(x, y))
        t = rng.standard_normal(3), rng.standard_normal(3)
        close_tree(fc.hvp(f, (x, y), t), jax.jvp(jax.grad(j, (0, 1)), (x, y), t)[1])


def test_gradient_through_a_model_leaves_its_params_alone():
    m = fc.Affine(3, 2)
    for p in fc.params(m):
        p.grad[...] = 7.0

    def f(m, x):
        return np.sum(np.tanh(m(x)) ** 2)
    x = rng.standard_normal((4, 3))
    W, b = np.asarray(m.W), np.asarray(m.b)
    close(fc.gradient(f, 1)(m, x), jax.grad(lambda x: jnp.sum(jnp.tanh(x @ W + b) ** 2))(x))
    assert all(np.all(p.grad == 7.0) for p in fc.params(m))
    with pytest.raises(fc.CompileError, match="sub-model's backward"):
        fc.hvp(f, (m, x), (None, x))


# ---------------------------------------------------------------- soundness of the cache

def _scaled(c):
    def f(x):
        return np.sum(x ** 3) * c
    return f


SCALE = 2.0
MATRIX = rng.standard_normal((3, 3))


def _global_scaled(x):
    return np.sum(x ** 3) * SCALE


def test_closures_globals_and_captured_arrays_are_not_baked_in():
    global SCALE
    x = np.array([1.0, 2.0])
    close(fc.gradient(_scaled(2.0))(x), 6 * x ** 2)
    close(fc.gradient(_scaled(3.0))(x), 9 * x ** 2)           # another closure cell: not reused
    close(fc.hessian(_scaled(3.0))(x), np.diag(18 * x))
    old = SCALE
    try:
        close(fc.hessian(_global_scaled)(x), np.diag(6 * SCALE * x))
        SCALE = 5.0                                           # a global changed: guarded
        close(fc.hessian(_global_scaled)(x), np.diag(30 * x))
        close(fc.gradient(fc.gradient(lambda v: _global_scaled(v)))(1.5), 30 * 1.5)
    finally:
        SCALE = old

    def quad(v):
        return v @ MATRIX @ v
    close(fc.hessian(quad)(np.ones(3)), MATRIX + MATRIX.T)
    saved = MATRIX.copy()
    MATRIX[...] = rng.standard_normal((3, 3))                 # changed in place: read at run time
    close(fc.hessian(quad)(np.ones(3)), MATRIX + MATRIX.T)
    MATRIX[...] = saved


def _cube(x):
    return x ** 3


def _square(x):
    return x ** 2


_power = _cube


def _uses_helper(x):
    return np.sum(_power(x))


def test_a_redefined_helper_recompiles():
    global _power
    x = np.array([1.0, 2.0])
    close(fc.gradient(_uses_helper)(x), 3 * x ** 2)
    try:
        _power = _square                                    # the inlined helper changed: guarded
        close(fc.gradient(_uses_helper)(x), 2 * x)
        close(fc.hessian(_uses_helper)(x), 2 * np.eye(2))
    finally:
        _power = _cube


# ---------------------------------------------------------------- source and errors

def test_source_of_transforms_reads_well():
    def net(W1, W2, x):
        h = np.tanh(x @ W1)
        return np.sum((h @ W2) ** 2)
    args = (np.ones((3, 4)), np.ones((4, 2)), np.ones((5, 3)))
    text = fc.hvp_source(net, args)
    assert text.splitlines()[0].startswith("# generated by flux_compile")
    assert "def hvp(W1, W2, x, W1_dot, W2_dot, x_dot):" in text
    assert "# line " in text and "h = np.tanh(x @ W1)" in text
    assert "return dW1_dot, dW2_dot, dx_dot" in text
    g = fc.gradient(net, (0, 1))
    g(*args)
    assert "return dW1, dW2" in fc.source(g)                 # the last call's variant
    assert fc.source(g, inputs=args) == fc.source(g)
    assert "def jvp" in fc.source(fc.jacobian(net, 0), inputs=args) or \
        "def hvp" in fc.source(fc.jacobian(net, 0), inputs=args)
    assert fc.jvp_source(lambda x: np.sin(x), (np.ones(2),)).count("def jvp") == 1


def test_errors_say_what_to_do():
    with pytest.raises(fc.CompileError, match="scalar function"):
        fc.gradient(lambda x: np.sin(x))(np.ones(3))
    with pytest.raises(TypeError, match="not a scalar function"):
        fc.gradient(fc.gradient(lambda x: np.sum(x ** 2)))(np.ones(3))
    with pytest.raises(TypeError, match="argnums"):
        fc.gradient(lambda x: x, argnums="0")
    with pytest.raises(TypeError, match="plain function"):
        fc.gradient(fc.Affine(2, 2))
    with pytest.raises(ValueError, match="tangent of shape"):
        fc.hvp(lambda x: np.sum(x ** 3), (np.ones(3),), (np.ones(2),))


# ---------------------------------------------------------------- the CLI shows transforms

NET_FILE = '''
import numpy as np


def net(W1, W2, x):
    h = np.tanh(x @ W1)
    return np.sum((h @ W2) ** 2)


def wave(x):
    return np.sin(x) * x ** 2
'''


@pytest.mark.parametrize("transform, argv, present", [
    ("hvp", ["--input", "3x4", "--input", "4x2", "--input", "5x3"], "def hvp(W1, W2, x, W1_dot, W2_dot, x_dot):"),
    ("gradient", ["--input", "3x4", "--input", "4x2", "--input", "5x3", "--argnums", "1"], "return dW2"),
    ("hessian", ["--input", "3x4", "--input", "4x2", "--input", "5x3"], "def jvp("),
    ("jvp", ["--input", "3x4", "--input", "4x2", "--input", "5x3"], "def jvp("),
    ("vjp", ["--input", "3x4", "--input", "4x2", "--input", "5x3"], "def backward("),
])
def test_cli_shows_a_transform(tmp_path, capsys, transform, argv, present):
    from flux_compile.cli import main
    path = tmp_path / "netfile.py"
    path.write_text(NET_FILE)
    code = main(["show", f"{path}:net", "--transform", transform, "--color", "never", *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert present in out and "# line " in out


def test_cli_transform_errors_name_the_line(tmp_path, capsys):
    from flux_compile.cli import main
    path = tmp_path / "netfile.py"
    path.write_text(NET_FILE)
    assert main(["show", f"{path}:wave", "--transform", "gradient", "--input", "scalar"]) == 0
    assert "def gradient(x):" in capsys.readouterr()[0]
    assert main(["show", f"{path}:wave", "--transform", "gradient", "--input", "3"]) == 2
    err = capsys.readouterr()[1]
    assert "netfile.py:11" in err and "scalar function" in err
    assert main(["show", f"{path}:wave", "--transform", "hvp"]) == 2
    assert "--input" in capsys.readouterr()[1]


def test_vjp_with_a_model_argument_gives_its_params_and_leaves_them_alone():
    m = fc.Affine(3, 2)
    for p in fc.params(m):
        p.grad[...] = 5.0

    def f(m, x):
        return np.tanh(m(x))
    x = rng.standard_normal((4, 3))
    value, pull = fc.vjp(f, m, x)
    ct = rng.standard_normal(value.shape)
    dm, dx = pull(ct)
    W, b = np.asarray(m.W), np.asarray(m.b)
    jW, jb, jx = jax.vjp(lambda W, b, x: jnp.tanh(x @ W + b), W, b, x)[1](ct)
    close(dx, jx)
    close(dm[("W",)], jW)
    close(dm[("b",)], jb)
    assert all(np.all(p.grad == 5.0) for p in fc.params(m))


_first = None


def _calls_a_derivative(x):
    return np.sum(_first(x) * x)


def test_calling_a_transformed_function_inside_compiled_code_is_a_clear_error():
    global _first
    _first = fc.gradient(lambda x: np.sum(np.sin(x) ** 2))
    with pytest.raises(fc.CompileError, match="transformed function") as err:
        fc.gradient(_calls_a_derivative)(np.ones(3))
    assert err.value.lineno is not None and "compose" in str(err.value.hint)


def test_second_order_against_autograd_and_finite_differences():
    args = _net_args()
    for argnums in (0, 2):
        H = fc.hessian(f_fc, argnums)(*args)
        close(H, autograd.hessian(f_ag, argnums)(*args))
        x = args[argnums]
        g = fc.gradient(f_fc, argnums)
        u = rng.standard_normal(x.shape)
        eps = 1e-6

        def at(xi):
            a = list(args)
            a[argnums] = xi
            return g(*a)
        fd = (at(x + eps * u) - at(x - eps * u)) / (2 * eps)
        close(np.tensordot(H, u, axes=u.ndim), fd, tol=1e-6)
        t = [np.zeros_like(a) for a in args]
        t[argnums] = u
        close(fc.hvp(f_fc, args, t)[argnums], fd, tol=1e-6)

    def s(x):
        return np.exp(np.sin(x)) * x ** 2
    d2, d3 = fc.gradient(fc.gradient(s)), fc.gradient(fc.gradient(fc.gradient(s)))
    d1 = fc.gradient(s)
    for x in (0.3, -1.1):
        close(d2(x), (d1(x + 1e-6) - d1(x - 1e-6)) / 2e-6, tol=1e-6)
        close(d3(x), (d2(x + 1e-6) - d2(x - 1e-6)) / 2e-6, tol=1e-6)
        close(d3(x), autograd.grad(autograd.grad(autograd.grad(lambda x: anp.exp(anp.sin(x)) * x ** 2)))(x))
