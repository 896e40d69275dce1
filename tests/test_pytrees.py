"""Structured arguments (pytrees): ``fc.grad`` and models take tuples, lists and dicts of
arrays and floats, nested; every gradient has the argument's structure. Each gradient is
compared with autograd running the same function (``np`` bound to ``autograd.numpy``) and
with central finite differences in float64."""
import importlib.util
import itertools
import types

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flux_compile as fc
from flux_compile import pytree

autograd = pytest.importorskip("autograd")
anp = pytest.importorskip("autograd.numpy")

rng = np.random.default_rng(0)


def randn(*shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


# ------------------------------------------------------------------------------
# references, written without flux_compile.pytree (dict values in insertion order)


def twin(f):
    """``f`` with ``np`` bound to autograd.numpy (the same code object)."""
    return types.FunctionType(f.__code__, {**f.__globals__, "np": anp}, f.__name__, f.__defaults__,
                              f.__closure__)


def autograd_grads(f, args):
    g = twin(f)
    return tuple(autograd.grad(g, i)(*args) for i in range(len(args)))


def _float_leaves(t):
    """Every float64 array leaf (float32 leaves are not differenced: None in the reference)."""
    if isinstance(t, dict):
        return [x for k in t for x in _float_leaves(t[k])]
    if isinstance(t, (tuple, list)):
        return [x for v in t for x in _float_leaves(v)]
    if isinstance(t, np.ndarray) and t.dtype == np.float64:
        return [t]
    return []


def _replace_floats(t, fn):
    if isinstance(t, dict):
        return {k: _replace_floats(v, fn) for k, v in t.items()}
    if isinstance(t, (tuple, list)):
        return type(t)(_replace_floats(v, fn) for v in t)
    if type(t) is float:
        return fn(t)
    return t


def finite_difference_grads(f, args, eps=1e-6):
    """Central differences in float64 for every float leaf of every argument."""
    args = [_replace_floats(a, lambda v: np.array(v)) for a in args]   # floats as 0-d arrays, in place
    out = []
    for a in args:
        grads = []
        for arr in _float_leaves(a):
            g = np.zeros_like(arr)
            for i in np.ndindex(arr.shape):
                old = arr[i]
                arr[i] = old + eps
                up = float(np.sum(f(*args)))
                arr[i] = old - eps
                down = float(np.sum(f(*args)))
                arr[i] = old
                g[i] = (up - down) / (2 * eps)
            grads.append(g)
        it = iter(grads)
        out.append(_rebuild_floats(a, it))
    return tuple(out)


def _rebuild_floats(t, it):
    if isinstance(t, dict):
        return {k: _rebuild_floats(v, it) for k, v in t.items()}
    if isinstance(t, (tuple, list)):
        return type(t)(_rebuild_floats(v, it) for v in t)
    if isinstance(t, np.ndarray) and t.dtype == np.float64:
        return next(it)
    return None


def assert_same_tree(got, want, rtol=1e-7, atol=1e-9, where="grad"):
    """Same containers (exact types, same keys), leaves close; None in ``want`` is skipped."""
    if isinstance(want, dict):
        assert type(got) is dict and list(got) == list(want), f"{where}: {got!r} vs {want!r}"
        for k in want:
            assert_same_tree(got[k], want[k], rtol, atol, f"{where}[{k!r}]")
    elif isinstance(want, (tuple, list)):
        assert type(got) is type(want) and len(got) == len(want), f"{where}: {got!r} vs {want!r}"
        for i, (a, b) in enumerate(zip(got, want)):
            assert_same_tree(a, b, rtol, atol, f"{where}[{i}]")
    elif want is not None:
        assert got is not None, f"{where} is None"
        np.testing.assert_allclose(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64),
                                   rtol=rtol, atol=atol, err_msg=where)
        assert np.shape(got) == np.shape(want), where


def check(f, *args, fd=True):
    """fc.grad against f itself (value), autograd and finite differences; returns the grads."""
    value, grads = fc.grad(f, *args)
    np.testing.assert_allclose(value, f(*args), rtol=1e-12)
    assert len(grads) == len(args)
    assert_same_tree(grads, autograd_grads(f, args))
    if fd:
        assert_same_tree(grads, finite_difference_grads(f, args), rtol=1e-5, atol=1e-6)
    return grads


# ------------------------------------------------------------------------------
# the containers


def first_of_three(abc):
    a, b, c = abc
    return np.sum(a * 2.0)


def test_tuple_unpacked_gives_full_tuple_with_zeros():
    args = (randn(2), randn(3), randn(1, 2))
    (g,) = check(first_of_three, args)
    assert type(g) is tuple and len(g) == 3
    assert np.all(g[1] == 0) and g[1].shape == (3,) and np.all(g[2] == 0) and g[2].shape == (1, 2)


def list_loop(xs, w):
    total = 0.0
    for i, x in enumerate(xs):
        total = total + np.sum(np.sin(x * w)) * (i + 1)
    return total * len(xs) + np.sum(xs[-1] ** 2)


def test_list_iteration_enumerate_len_and_negative_index():
    (gxs, gw) = check(list_loop, [randn(3), randn(3), randn(3)], randn(3))
    assert type(gxs) is list and len(gxs) == 3


def mlp_dict(p, x):
    h = np.tanh(x @ p["W"] + p["b"])
    return np.sum(h ** 2) + np.sum(p["W"] ** 2) * 0.1


def test_dict_indexing_and_a_leaf_used_twice_accumulates():
    p = {"W": randn(3, 2), "b": randn(2), "unused": randn(4)}
    gp, gx = check(mlp_dict, p, randn(5, 3))
    assert list(gp) == ["W", "b", "unused"] and np.all(gp["unused"] == 0)


def dict_methods(d):
    total = 0.0
    for k, v in d.items():
        total = total + np.sum(np.cos(v)) * len(k)
    for k in d.keys():
        total = total + np.sum(d[k] * d[k])
    for v in d.values():
        total = total + np.sum(np.tanh(v))
    if "missing" in d:
        total = total * 100.0
    extra = d.get("missing", 0.5)
    for k in sorted(d):
        total = total + np.sum(d[k]) * extra
    for k in d:
        total = total + np.sum(d[k] ** 3)
    return total * len(d)


def test_dict_items_keys_values_get_in_sorted_and_iteration():
    check(dict_methods, {"zeta": randn(2), "alpha": randn(2, 2), "mid": randn(1)})


def nested_mlp(params, x):
    h = x
    for W, b in params["layers"]:
        h = np.tanh(h @ W + b)
    return np.sum(h) * params["scale"] + params["meta"]["bias"][0]


def test_dict_of_lists_of_tuples_with_float_leaves():
    params = {"layers": [(randn(3, 4), randn(4)), (randn(4, 2), randn(2))], "scale": 0.7,
              "meta": {"bias": [1.5, randn(2)]}}
    gp, gx = check(nested_mlp, params, randn(5, 3))
    assert type(gp["scale"]) is float and type(gp["meta"]["bias"][0]) is float
    assert gp["meta"]["bias"][0] == 1.0
    assert np.all(gp["meta"]["bias"][1] == 0)
    assert type(gp["layers"]) is list and type(gp["layers"][0]) is tuple


def floats_only(ab):
    a, b = ab
    return a * a * b + 3.0 * b


def test_python_float_leaves_get_float_gradients():
    (g,) = check(floats_only, (1.5, -2.0))
    assert type(g) is tuple and all(type(v) is float for v in g)
    assert g == pytest.approx((2 * 1.5 * -2.0, 1.5 ** 2 + 3.0))


def unused_leaves(t, x):
    return np.sum(x * 2.0)


def test_unused_leaves_get_zeros_never_none():
    t = {"a": 1.0, "b": [randn(2, 3), (np.float64(2.0), 3.0)], "c": randn(4).astype(np.float32)}
    (gt, gx) = check(unused_leaves, t, randn(2))
    assert gt["a"] == 0.0 and type(gt["a"]) is float
    assert np.array_equal(gt["b"][0], np.zeros((2, 3)))
    assert gt["b"][1][0] == 0.0 and gt["b"][1][1] == 0.0
    assert gt["c"].dtype == np.float32 and np.all(gt["c"] == 0)


def same_array_twice(pair):
    a, b = pair
    return np.sum(np.sin(a) * 3.0) + np.sum(b ** 2)


def test_one_array_object_in_two_leaves_gets_a_gradient_per_leaf():
    x = randn(3)
    (g,) = check(same_array_twice, (x, x), fd=False)       # differencing x would move both leaves
    np.testing.assert_allclose(g[0], 3 * np.cos(x))
    np.testing.assert_allclose(g[1], 2 * x)


def mixed(W, batch, scale):
    x, y = batch["x"], batch["y"]
    return np.sum((np.tanh(x @ W) - y) ** 2) * scale


def test_mixture_of_plain_arrays_structures_and_floats():
    gW, gbatch, gscale = check(mixed, randn(3, 2), {"x": randn(4, 3), "y": randn(4, 2)}, 0.3)
    assert type(gscale) is float and set(gbatch) == {"x", "y"}


def with_statics(t):
    x, n, name, nothing = t
    if nothing is None and name == "cube":
        return np.sum(x ** n) * 2.0
    return np.sum(x ** n)


def test_static_leaves_are_compile_time_constants_and_part_of_the_key():
    x = randn(3)
    for n, name in [(2, "cube"), (3, "cube"), (3, "square"), (2, "cube")]:
        t = (x, n, name, None)
        value, (g,) = fc.grad(with_statics, t)
        assert value == pytest.approx(with_statics(t))
        np.testing.assert_allclose(g[0], (2.0 if name == "cube" else 1.0) * n * x ** (n - 1))
        assert g[1:] == (None, None, None)


def structure_sensitive(t):
    total = 0.0
    for v in t:
        total = total + np.sum(np.sin(v))
    return total * len(t)


def test_structure_change_between_calls_compiles_another_variant():
    x, y, z = randn(2), randn(3), randn(1)
    for t in [(x, y), [x, y], (x, y, z), (x,), [x, y, z], (x, y)]:
        (g,) = check(structure_sensitive, t, fd=False)
        assert type(g) is type(t) and len(g) == len(t)
    srcs = {fc.source(structure_sensitive, "forward", args=(t,)) for t in [(x, y), (x, y, z), (x,)]}
    assert len(srcs) == 3


def keyed(d):
    return np.sum(d["a"] * 2.0) + np.sum(d["b"] * 5.0)


def test_dict_key_order_shares_code_but_gradient_follows_the_argument():
    a, b = randn(2), randn(2)
    _, (g1,) = fc.grad(keyed, {"a": a, "b": b})
    _, (g2,) = fc.grad(keyed, {"b": b, "a": a})
    assert list(g1) == ["a", "b"] and list(g2) == ["b", "a"]
    np.testing.assert_allclose(g2["b"], 5.0 * np.ones(2))
    _, tree1 = pytree.flatten({"a": a, "b": b})
    _, tree2 = pytree.flatten({"b": b, "a": a})
    assert tree1 == tree2 and hash(tree1) == hash(tree2)


def test_float32_leaves_keep_their_dtype():
    p = {"W": randn(3, 2, dtype=np.float32), "b": randn(2, dtype=np.float32), "unused": randn(2, dtype=np.float32)}
    x = randn(5, 3, dtype=np.float32)
    value, (gp, gx) = fc.grad(mlp_dict, p, x)
    assert all(v.dtype == np.float32 for v in gp.values()) and gx.dtype == np.float32
    ref = autograd_grads(mlp_dict, ({k: v.astype(np.float64) for k, v in p.items()}, x.astype(np.float64)))
    assert_same_tree(gp, ref[0], rtol=1e-4, atol=1e-5)


def test_leaf_names_in_generated_source():
    src = fc.source(nested_mlp, "forward", args=({"layers": [(randn(3, 4), randn(4))], "scale": 0.7,
                                                  "meta": {"bias": [1.5, randn(2)]}}, randn(5, 3)))
    assert "def forward(params_layers_0_0, params_layers_0_1, params_meta_bias_0, params_meta_bias_1, " \
           "params_scale, x):" in " ".join(src.split())


def missing_key(d):
    return np.sum(d["nope"])


def test_missing_key_is_a_compile_error_naming_the_line():
    with pytest.raises(fc.CompileError) as info:
        fc.grad(missing_key, {"a": randn(2)})
    assert "nope" in str(info.value) and info.value.lineno == missing_key.__code__.co_firstlineno + 1


def returns_the_dict(d):
    return d


def test_returning_a_dict_is_a_clear_error():
    with pytest.raises(fc.CompileError, match="dict"):
        fc.grad(returns_the_dict, {"a": randn(2)})


# ------------------------------------------------------------------------------
# models


@fc.net
class DictNet:
    def __init__(self):
        self.W = randn(3, 2) * 0.5
        self.b = randn(2) * 0.1

    def forward(self, inp):
        h = np.tanh(inp["x"] @ self.W + self.b)
        return h * inp["gain"][0] + inp["gain"][1]


def dictnet_fn(W, b, inp):
    h = np.tanh(inp["x"] @ W + b)
    return h * inp["gain"][0] + inp["gain"][1]


def test_model_with_dict_input_pullback_back_and_grad():
    m = DictNet()
    inp = {"x": randn(4, 3), "gain": (1.3, randn(2))}
    np.testing.assert_allclose(m(inp), dictnet_fn(m.W.value, m.b.value, inp))
    y, back = m.pullback(inp)
    dy = randn(*y.shape)
    m.zero_grad()
    gin = back(dy)

    def scalar(W, b, inp):
        return np.sum(dictnet_fn(W, b, inp) * dy)
    gW, gb, ginp = autograd_grads(scalar, (m.W.value, m.b.value, inp))
    assert_same_tree(gin, ginp)
    assert type(gin["gain"][0]) is float
    np.testing.assert_allclose(m.W.grad, gW)
    np.testing.assert_allclose(m.b.grad, gb)
    m.zero_grad()
    assert_same_tree(m.back(dy, inp), ginp)
    fd = finite_difference_grads(scalar, (m.W.value.copy(), m.b.value.copy(), inp))
    assert_same_tree(gin, fd[2], rtol=1e-5, atol=1e-6)
    _, (gm, ginp2) = fc.grad(m, inp)
    assert_same_tree(ginp2, autograd_grads(lambda W, b, inp: np.sum(dictnet_fn(W, b, inp)),
                                           (m.W.value, m.b.value, inp))[2])


@fc.net
class PairNet:
    def __init__(self):
        self.W = randn(3, 3) * 0.5

    def forward(self, pair, scale):
        a, b = pair
        return np.tanh(a @ self.W) * b * scale


def test_model_structure_change_recompiles_and_mixes_with_plain_inputs():
    m = PairNet()
    a, b = randn(2, 3), randn(2, 3)
    for pair in [(a, b), [a, b], (a, 2.0)]:
        y = m(pair, 0.5)
        np.testing.assert_allclose(y, np.tanh(a @ m.W.value) * pair[1] * 0.5)
        gpair, gscale = m.back(np.ones_like(y), pair, 0.5)
        assert type(gpair) is type(pair) and isinstance(gscale, float)

        def f(W, pair, scale):
            return np.sum(np.tanh(pair[0] @ W) * pair[1] * scale)
        _, gp, gs = autograd_grads(f, (m.W.value, pair, 0.5))
        assert_same_tree(gpair, gp)
        assert gscale == pytest.approx(gs)


def uses_a_model(net, batch):
    return np.sum((net(batch["x"]) - batch["y"]) ** 2)


def test_a_function_of_a_model_and_a_batch_dict():
    net = fc.Affine(3, 2)
    batch = {"x": randn(4, 3), "y": randn(4, 2)}
    _, (gnet, gbatch) = fc.grad(uses_a_model, net, batch)

    def ref(W, b, batch):
        return np.sum((batch["x"] @ W + b - batch["y"]) ** 2)
    gW, gb, gbr = autograd_grads(ref, (net.W.value, net.b.value, batch))
    assert_same_tree(gbatch, gbr)
    np.testing.assert_allclose(gnet[("W",)], gW)
    np.testing.assert_allclose(gnet[("b",)], gb)


def model_in_a_dict(t):
    return np.sum(t["net"](t["x"]) ** 2)


def test_a_model_inside_a_structure_gets_its_param_dict():
    net = fc.Affine(3, 2)
    x = randn(4, 3)
    _, (g,) = fc.grad(model_in_a_dict, {"net": net, "x": x})

    def ref(W, b, x):
        return np.sum((x @ W + b) ** 2)
    gW, gb, gx = autograd_grads(ref, (net.W.value, net.b.value, x))
    np.testing.assert_allclose(g["x"], gx)
    np.testing.assert_allclose(g["net"][("W",)], gW)
    np.testing.assert_allclose(g["net"][("b",)], gb)


# ------------------------------------------------------------------------------
# random structures: the function's source is generated for the tree, then compiled


class Leaf:
    """A leaf to be: a float64 array of ``shape``, or a Python float when ``shape`` is None."""

    def __init__(self, shape):
        self.shape = shape

    def __repr__(self):
        return f"Leaf({self.shape})"


def containers(kids):
    keys = st.sampled_from(["a", "b", "W", "bias", "x1", "zz"])
    return st.one_of(st.lists(kids, min_size=1, max_size=3).map(tuple),
                     st.lists(kids, min_size=1, max_size=3),
                     st.dictionaries(keys, kids, min_size=1, max_size=3))


def trees():
    shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)
    leaf = st.one_of(shapes.map(Leaf), st.just(Leaf(None)))
    return containers(st.recursive(leaf, containers, max_leaves=6))


LEAF_OPS = ["np.sum(np.sin({}) * {c})", "np.sum({} * {} * {c})", "np.sum(np.tanh({})) + {c}",
            "np.sum(np.exp({} * 0.3))", None]


def _paths(tree, prefix=""):
    """(access expression, leaf) pairs, in insertion order."""
    if isinstance(tree, dict):
        return [p for k, v in tree.items() for p in _paths(v, f"{prefix}[{k!r}]")]
    if isinstance(tree, (tuple, list)):
        return [p for i, v in enumerate(tree) for p in _paths(v, f"{prefix}[{i}]")]
    return [(prefix, tree)]


def _materialise(tree, r):
    if isinstance(tree, dict):
        return {k: _materialise(v, r) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(_materialise(v, r) for v in tree)
    return float(r.standard_normal()) if tree.shape is None else r.standard_normal(tree.shape)


_counter = itertools.count()


@pytest.fixture(scope="module")
def srcdir(tmp_path_factory):
    return tmp_path_factory.mktemp("pytree_programs")


def load(directory, source, numpy_name="numpy"):
    path = directory / f"tree_prog_{next(_counter)}.py"
    path.write_text(f"import {numpy_name} as np\n\n" + source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.program


@pytest.mark.filterwarnings("ignore:Output seems independent of input")
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=trees(), picks=st.lists(st.integers(0, len(LEAF_OPS) - 1), min_size=8, max_size=8),
       seed=st.integers(0, 2 ** 16), unpack=st.booleans())
def test_random_trees_match_autograd_and_finite_differences(srcdir, shape, picks, seed, unpack):
    r = np.random.default_rng(seed)
    t = _materialise(shape, r)
    x = r.standard_normal(2)
    lines, terms = [], ["np.sum(x * 0.5)"]
    if unpack and type(t) in (tuple, list):
        names = [f"part{i}" for i in range(len(t))]
        lines.append(f"    {', '.join(names)}{',' if len(names) == 1 else ''} = t")
        access = [(f"{names[int(p[1:].split(']')[0])]}{p[p.index(']') + 1:]}", v) for p, v in _paths(t)]
    else:
        access = [(f"t{p}", v) for p, v in _paths(t)]
    for i, (expr, _) in enumerate(access):
        op = LEAF_OPS[picks[i % len(picks)]]
        if op is not None:
            terms.append(op.format(expr, expr, c=round(0.5 + i * 0.25, 2)))
    lines.append("    return " + " + ".join(terms))
    source = "def program(t, x):\n" + "\n".join(lines) + "\n"
    f = load(srcdir, source)
    value, (gt, gx) = fc.grad(f, t, x)
    np.testing.assert_allclose(value, f(t, x), rtol=1e-12, err_msg=source)
    ref = autograd_grads(f, (t, x))
    assert_same_tree(gt, ref[0], where=source)
    assert_same_tree(gt, finite_difference_grads(f, (t, x))[0], rtol=1e-5, atol=1e-6, where=source)
    for (_, leaf), (_, g) in zip(_paths(t), _paths(gt)):       # a float for a float, never None
        assert g is not None
        if type(leaf) is float:
            assert type(g) is float
        else:
            assert g.shape == leaf.shape and g.dtype == leaf.dtype


def test_flatten_unflatten_round_trip_and_names():
    t = {"b": [1.0, (2.0, None)], "a": {"z": 3, "y": "s"}, 10: ()}
    leaves, tree = pytree.flatten(t)
    assert pytree.unflatten(tree, leaves) == t
    assert leaves == ["s", 3, 1.0, 2.0, None]          # keys that do not compare: by type name, repr
    assert pytree.leaf_names("p", tree) == ["p_a_y", "p_a_z", "p_b_0", "p_b_1_0", "p_b_1_1"]
    names = pytree.leaf_names("p", tree, taken={"p_a_y"})
    assert len(set(names)) == len(names) and "p_a_y" not in names
    with pytest.raises(ValueError):
        pytree.unflatten(tree, leaves + [0])


def test_gradcheck_walks_the_leaves_of_structured_inputs():
    report = fc.gradcheck(nested_mlp, {"layers": [(randn(3, 4), randn(4))], "scale": 0.7,
                                       "meta": {"bias": [1.5, randn(2)]}}, randn(5, 3))
    names = [r.name for r in report.rows]
    assert "input 0['layers'][0][0]" in names and "input 0['meta']['bias'][1]" in names and "input 1" in names


def wrong_square(x):
    return x * x


def uses_wrong_rule(d):
    return np.sum(wrong_square(d["bad"])) + np.sum(d["good"] ** 2)


def test_gradcheck_names_the_leaf_with_a_wrong_gradient():
    @fc.diffrule(wrong_square)
    def _(dy, y, x):
        return dy * 3.0 * x          # wrong on purpose: 2x is right

    report = fc.gradcheck(uses_wrong_rule, {"good": randn(3), "bad": randn(3)}, raise_on_fail=False)
    assert {r.name: r.ok for r in report.rows} == {"input 0['bad']": False, "input 0['good']": True}


def affine_helper(x, scale=1.0, shift=0.0):
    return x * scale + shift


def star_star_dict(x, opts):
    return np.sum(np.sin(affine_helper(x, **opts)))


def test_a_dict_argument_spread_as_keywords_into_a_helper():
    (gx, gopts) = check(star_star_dict, randn(3), {"scale": 1.7, "shift": randn(3)})
    assert type(gopts["scale"]) is float


def branch_on_structure(t):
    x, rest = t[0], t[1:]
    if isinstance(t, list):
        return np.sum(x * 3.0) + len(rest)
    if isinstance(t, tuple) and isinstance(t[1], dict):
        return np.sum(x * t[1]["k"])
    return np.sum(x * 5.0)


def test_isinstance_tells_tuples_lists_and_dicts_apart():
    x = randn(2)
    for t, factor in [([x, 1.0], 3.0), ((x, {"k": 2.0}), 2.0), ((x, 1.0), 5.0), ([x, x.copy()], 3.0)]:
        value, (g,) = fc.grad(branch_on_structure, t)     # autograd boxes lists: no isinstance there
        assert value == pytest.approx(branch_on_structure(t))
        assert_same_tree(g, finite_difference_grads(branch_on_structure, (t,))[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g[0], factor * np.ones(2))


def branch_on_a_float_leaf(hp, x):
    if hp["lr"] > 0.5:
        return np.sum(x ** 2) * hp["lr"]
    return np.sum(np.sin(x)) * hp["lr"]


def test_data_dependent_branch_on_a_float_leaf_is_guarded():
    x = randn(3)
    for lr in [0.9, 0.1, 0.7, 0.2]:
        check(branch_on_a_float_leaf, {"lr": lr}, x)


def odd_keys(d, d_1):
    return np.sum(d[1] * 2.0) + np.sum(d["a-b"] * 3.0) + np.sum(d["a_b"] * 4.0) + np.sum(d[""] * d_1) \
        + np.sum(d[("t", 2)] ** 2)


def test_keys_that_are_not_identifiers_and_name_clashes():
    d = {1: randn(2), "a-b": randn(2), "a_b": randn(2), "": randn(2), ("t", 2): randn(2)}
    check(odd_keys, d, randn(2))
    src = fc.source(odd_keys, "forward", args=(d, randn(2)))
    header = " ".join(src.split()).split("def forward(")[1].split(")")[0].split(", ")
    assert len(set(header)) == len(header) == 6 and "d_1" in header


@fc.net
class TakesDict:
    def __init__(self):
        self.inner = fc.Affine(2, 2)

    def forward(self, d):
        return self.inner(d)


def test_a_dict_passed_on_to_a_sub_model_is_a_clear_error():
    with pytest.raises(fc.CompileError, match="sub-model"):
        TakesDict()({"x": randn(3, 2)})


def test_a_model_inside_a_model_input_is_a_clear_error():
    with pytest.raises(TypeError, match="structured input"):
        PairNet()((randn(2, 3), fc.Affine(3, 3)), 1.0)


@fc.net
class DecayCell:
    def __init__(self):
        self.W = randn(3, 3) * 0.4
        self.h = randn(1, 3) * 0.3

    def forward(self, inp):
        self.h = np.tanh(inp["x"] @ self.W + self.h * inp["decay"])
        return self.h


def test_recurrent_model_with_a_dict_input_matches_finite_differences():
    m = DecayCell()
    first = {"x": randn(2, 3), "decay": 0.3}
    second = {"x": randn(2, 3), "decay": 0.8}
    dy = randn(2, 3)

    def loss(x, decay):           # the second step's output, from the same first step
        m.reset()
        m(first)
        return np.sum(m({"x": x, "decay": float(decay)}) * dy)
    m.reset()
    m(first)
    _, back = m.pullback(second)
    g = back(dy)
    fd = finite_difference_grads(loss, (second["x"].copy(), np.array(second["decay"])))
    np.testing.assert_allclose(g["x"], fd[0], rtol=1e-5, atol=1e-7)
    assert type(g["decay"]) is float and g["decay"] == pytest.approx(float(fd[1]), rel=1e-5)


@fc.net
class PowerNet:
    def __init__(self):
        self.W = randn(3, 3) * 0.5

    def forward(self, t):
        x, n = t
        return (x @ self.W) ** n


def test_model_input_with_a_static_leaf_compiles_per_value():
    m = PowerNet()
    x = randn(2, 3)
    for n in (2, 3, 2):
        y = m((x, n))
        np.testing.assert_allclose(y, (x @ m.W.value) ** n)
        gx, gn = m.back(np.ones_like(y), (x, n))
        ref = autograd.grad(lambda x: anp.sum(anp.dot(x, m.W.value) ** n))(x)
        np.testing.assert_allclose(gx, ref)
        assert gn is None


DISK = '''
import sys, numpy as np, flux_compile as fc
sys.path.insert(0, {path!r})
from treemod import Net
from flux_compile.cache import compile_model
m = Net()
inp = {{"x": np.ones((2, 3)), "gain": (0.5, np.full(2, 2.0))}}
y, back = m.pullback(inp)
g = back(np.ones_like(y))
c = compile_model(m, (inp,))
print(c.from_disk, float(m.W.grad.sum()), float(y.sum()), g["gain"][0], float(g["x"].sum()))
'''


def test_structured_model_input_through_the_disk_cache(tmp_path):
    import os
    import subprocess
    import sys
    (tmp_path / "treemod.py").write_text(
        "import numpy as np, flux_compile as fc\n\n"
        "@fc.net\nclass Net:\n    def __init__(self):\n        self.W = np.full((3, 2), 0.5)\n\n"
        "    def forward(self, inp):\n        return np.tanh(inp['x'] @ self.W) * inp['gain'][0] + inp['gain'][1]\n")
    env = dict(os.environ, FLUX_COMPILE_CACHE_DIR=str(tmp_path / "cache"))

    def run():
        return subprocess.run([sys.executable, "-c", DISK.format(path=str(tmp_path))], capture_output=True,
                              text=True, env=env, check=True).stdout.split()
    first, second = run(), run()
    assert first[0] == "False" and second[0] == "True" and first[1:] == second[1:]
    assert float(first[3]) == pytest.approx(4 * np.tanh(1.5))      # 2x2 outputs, each tanh(1.5)


def sorted_items(d):
    total = 0.0
    for i, (k, v) in enumerate(sorted(d.items())):
        total = total + np.sum(np.sin(v)) * (i + 1) * len(k)
    return total


def test_sorted_items_of_a_dict():
    (g,) = check(sorted_items, {"ccc": randn(2), "a": randn(3), "bb": randn(1)})
    assert list(g) == ["ccc", "a", "bb"]


def test_shapes_of_a_model_with_a_structured_input():
    text = fc.shapes(DictNet(), {"x": randn(4, 3), "gain": (1.3, randn(2))})
    assert "%0 inp_gain_0" in text and "float64[4, 2]" in text


def uses_a_param_leaf(p, x):
    return np.sum(np.tanh(x @ p["W"]))


def test_a_param_as_a_leaf():
    W = fc.Param(randn(3, 2))
    x = randn(4, 3)
    _, (gp, gx) = fc.grad(uses_a_param_leaf, {"W": W}, x)
    ref = autograd_grads(uses_a_param_leaf, ({"W": W.value}, x))
    assert_same_tree(gp, ref[0])
    assert_same_tree(gx, ref[1])


def gather(d):
    return np.sum(d["x"][d["idx"]] ** 2) * d["n"]


def test_integer_array_and_int_leaves_are_inputs_without_gradients():
    for idx, n in [(np.array([0, 2, 2]), 3), (np.array([1]), 3), (np.array([1]), 2)]:
        d = {"x": randn(4), "idx": idx, "n": n}
        value, (g,) = fc.grad(gather, d)
        assert value == pytest.approx(gather(d))
        assert g["idx"] is None and g["n"] is None
        assert_same_tree(g["x"], finite_difference_grads(gather, (d,))[0]["x"], rtol=1e-5, atol=1e-6)


STATIC_LEAVES = [1, 2, 3, None, "s", True]


def _materialise_with_statics(tree, r, statics):
    if isinstance(tree, dict):
        return {k: _materialise_with_statics(v, r, statics) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(_materialise_with_statics(v, r, statics) for v in tree)
    if tree.shape == "static":
        return statics.pop(0) if statics else 2
    return float(r.standard_normal()) if tree.shape is None else r.standard_normal(tree.shape)


def trees_with_statics():
    shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)
    leaf = st.one_of(shapes.map(Leaf), st.just(Leaf(None)), st.just(Leaf("static")))
    return containers(st.recursive(leaf, containers, max_leaves=6))


@pytest.mark.filterwarnings("ignore:Output seems independent of input")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=trees_with_statics(), statics=st.lists(st.sampled_from(STATIC_LEAVES), min_size=6, max_size=6),
       seed=st.integers(0, 2 ** 16))
def test_random_trees_with_constant_leaves(srcdir, shape, statics, seed):
    """Constants (ints, None, strings, bools) inside the structure are baked in per value: every
    float leaf is scaled by the constant next to it (or 1), so reusing code compiled for other
    constants gives a wrong value."""
    r = np.random.default_rng(seed)
    t = _materialise_with_statics(shape, r, list(statics))
    x = r.standard_normal(2)
    paths = _paths(t)
    consts = [(p, v) for p, v in paths if not isinstance(v, (float, np.ndarray))]
    scale = " * ".join(f"(t{p} if isinstance(t{p}, int) else 1)" for p, _ in consts) or "1"
    terms = ["np.sum(x * 0.5)"] + [f"np.sum(np.sin(t{p}) * {i + 1}) * ({scale})"
                                   for i, (p, v) in enumerate(paths) if isinstance(v, (float, np.ndarray))]
    source = "def program(t, x):\n    return " + " + ".join(terms) + "\n"
    f = load(srcdir, source)
    value, (gt, gx) = fc.grad(f, t, x)
    np.testing.assert_allclose(value, f(t, x), rtol=1e-12, err_msg=source)
    fd = finite_difference_grads(f, (t, x))
    assert_same_tree(gt, fd[0], rtol=1e-5, atol=1e-6, where=source)
    for (_, leaf), (_, g) in zip(paths, _paths(gt)):
        assert (g is None) == (not isinstance(leaf, (float, np.ndarray))), source


def reshape_to(x, shape):
    return np.sum(np.reshape(x, shape) * np.arange(6.0).reshape(2, 3))


def test_a_structure_of_constants_gets_its_structure_of_none():
    x = randn(6)
    for shape in [(2, 3), [2, 3], {"rows": 2}]:
        shp = (shape["rows"], 3) if isinstance(shape, dict) else shape
        value, (gx, gshape) = fc.grad(reshape_to, x, shp)
        np.testing.assert_allclose(gx, np.arange(6.0))
        assert gshape == type(shp)(None for _ in shp)
    _, (gd,) = fc.grad(lambda_free_const, {"rows": 2, "name": "a"})
    assert gd == {"rows": None, "name": None}


def lambda_free_const(d):
    return np.float64(d["rows"]) * 2.0


@fc.net
class GatedNet:
    def __init__(self):
        self.W = randn(3, 3) * 0.5

    def forward(self, inp, scale=2.0):
        if inp["gate"] > 0:
            return np.tanh(inp["x"] @ self.W) * scale
        return inp["x"] * inp["gate"]


def test_model_branch_on_a_leaf_of_a_structured_input_with_a_default():
    m = GatedNet()
    x = randn(2, 3)
    for gate in (0.5, -0.5, 0.7, -2.0):
        inp = {"x": x, "gate": gate}
        y, back = m.pullback(inp)
        g = back(np.ones_like(y))

        def f(W, inp):
            return np.sum(np.tanh(inp["x"] @ W) * 2.0) if inp["gate"] > 0 else np.sum(inp["x"] * inp["gate"])
        np.testing.assert_allclose(np.sum(y), f(m.W.value, inp))
        assert_same_tree(g, autograd_grads(f, (m.W.value, inp))[1])


Layer = __import__("collections").namedtuple("Layer", ["W", "b"])


def namedtuple_mlp(layers, x):
    h = x
    for layer in layers:
        h = np.tanh(h @ layer.W + layer[1])
    if isinstance(layers[0], tuple) and isinstance(layers[0], Layer):
        return np.sum(h ** 2)
    return np.sum(h)


def test_named_tuples_are_containers_with_fields():
    layers = [Layer(randn(3, 4), randn(4)), Layer(randn(4, 2), randn(2))]
    x = randn(5, 3)
    value, (gl, gx) = fc.grad(namedtuple_mlp, layers, x)
    assert value == pytest.approx(namedtuple_mlp(layers, x))
    assert type(gl) is list and all(type(g) is Layer for g in gl)
    as_tuples = [tuple(layer) for layer in layers]       # autograd knows plain tuples only

    def ref(layers, x):
        h = x
        for W, b in layers:
            h = np.tanh(h @ W + b)
        return np.sum(h ** 2)
    assert_same_tree([tuple(g) for g in gl], autograd_grads(ref, (as_tuples, x))[0])
    src = fc.source(namedtuple_mlp, "forward", args=(layers, x))
    assert "layers_0_W" in src and "layers_1_b" in src
    _, tree = pytree.flatten(layers)
    assert "Layer(W=*, b=*)" in repr(tree)


def slice_kind(t):
    rest = t[1:]
    return np.sum(t[0]) * (2.0 if isinstance(rest, list) else 3.0) + np.sum(rest[0])


def test_a_slice_of_a_list_is_a_list_and_of_a_tuple_a_tuple():
    x, y = randn(2), randn(2)
    for t, factor in [([x, y], 2.0), ((x, y), 3.0)]:
        _, (g,) = fc.grad(slice_kind, t)
        np.testing.assert_allclose(g[0], factor * np.ones(2))
        np.testing.assert_allclose(g[1], np.ones(2))


def test_gradcheck_of_a_model_with_a_structured_input():
    report = fc.gradcheck(DictNet(), {"x": randn(4, 3), "gain": (1.3, randn(2))})
    names = {r.name for r in report.rows}
    assert {"input 0['x']", "input 0['gain'][1]", "W", "b"} <= names and report.ok
