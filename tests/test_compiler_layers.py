"""The pipeline's lower half in its layers (issue 10): ``Compiled`` with one constructor,
``compiler`` that only builds, ``cache`` that keys and reuses, run-time state apart from
compile-time state, one walker of constants (``tokens``), the update step below the
models and one walker of the model tree."""
import ast
import enum
import hashlib
import pathlib

import numpy as np
import pytest

import flux_compile as fc
from flux_compile import cache, compiled, compiler, diskcache, readonly, tokens
from flux_compile.guards import value_token
from flux_compile.params import Param, children, is_model, restore_states, snapshot_states, submodels, walk
from flux_compile.pytree import TreeDef

PACKAGE = pathlib.Path(fc.__file__).resolve().parent


@fc.net
class Cell:
    def __init__(self, n=3):
        self.W = fc.initn(n, n) * 100
        self.h = np.zeros((1, n))

    def forward(self, x):
        self.h = np.tanh(x @ self.W + self.h)
        return self.h


# ------------------------------------------------------------------------------
# Compiled: one constructor


def _assignments_to(attrs):
    """(file, line) of every ``obj.attr = ...`` of one of ``attrs`` in the package."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else []
            for t in targets:
                for sub in ast.walk(t):
                    if isinstance(sub, ast.Attribute) and sub.attr in attrs:
                        found.append((path.name, node.lineno))
    return found


def test_compiled_is_assembled_by_its_constructor_only():
    """No module sets a Compiled's functions, text or sections by hand (three places did)."""
    fields = {"forward_train", "backward_params", "sections", "input_names", "state_names", "n_outputs",
              "linemap"}
    outside = [(f, line) for f, line in _assignments_to(fields) if f != "compiled.py"]
    assert outside == []


def _check_complete(c):
    assert set(c.sections) >= {"forward", "forward_train", "backward", "backward_params"}
    for name in compiled.FUNCTIONS:
        assert callable(getattr(c, name))
        assert f"def {name}(" in c.sections[name]
    assert isinstance(c.input_names, list) and isinstance(c.state_names, list)
    assert c.alternatives == [c] or c in c.alternatives
    assert c.current()


def test_every_producer_gives_a_complete_compiled():
    x = np.random.default_rng(0).normal(size=(2, 3))
    m = Cell()
    c_model = cache.compile_model(m, (x, np.zeros((1, 3))))
    _check_complete(c_model)
    assert c_model.state_names == ["h"] and c_model.input_names == ["x", "h"]
    c_fn = cache.compile_function(lambda a: np.sum(np.sin(a)), (x,))
    _check_complete(c_fn)
    assert c_fn.state_names == [] and c_fn.inlined == []
    seq = fc.unroll(fc.RNN(3, 2), 4)
    c_loop = cache.compile_model(seq, (np.ones((2, 4, 3)),))
    _check_complete(c_loop)         # one loop, the step inlined: its lines are mapped
    assert c_loop.input_names == ["xs"] and c_loop.step_model is None
    assert c_loop.state_names == [] and c_loop.linemap
    template = seq._template(None)  # the per-step template (the fallback)
    _check_complete(template)
    assert template.input_names == ["xs"] and template.step_model is seq.model
    assert template.state_names == [] and template.linemap == {}


def test_the_unrolled_template_still_matches_finite_differences():
    rng = np.random.default_rng(1)
    seq = fc.unroll(fc.RNN(2, 3), 3)
    xs = rng.normal(size=(2, 3, 2))
    fc.gradcheck(seq, xs)


# ------------------------------------------------------------------------------
# compiler builds, cache reuses


def test_compiler_builds_anew_and_the_cache_reuses():
    x = np.ones((2, 3))
    m = Cell()
    ikey = compiler.input_key((x, np.zeros((1, 3))))
    a = compiler.build_model(Cell, m, ikey, arity_of=cache._arity_of)
    b = compiler.build_model(Cell, m, ikey, arity_of=cache._arity_of)
    assert a is not b and a.source == b.source
    assert cache.compile_model(m, (x, np.zeros((1, 3)))) is cache.compile_model(m, (x, np.zeros((1, 3))))
    assert not hasattr(compiler, "VariantCache") and not hasattr(compiler, "compile_model")
    y1, _ = a.forward(m, x, np.zeros((1, 3)))
    y2, _ = cache.compile_model(m, (x, np.zeros((1, 3)))).forward(m, x, np.zeros((1, 3)))
    np.testing.assert_array_equal(y1, y2)


def test_symbolic_shape_lives_in_shapeinfer():
    from flux_compile.shapeinfer import Sym, symbolic_shape
    shape = symbolic_shape("x", (3, True, (False, True, False)))
    assert shape[1] == 1 and isinstance(shape[0], Sym) and isinstance(shape[2], Sym)
    assert symbolic_shape("x", None) is None and symbolic_shape("x", (None, True, None)) is None


# ------------------------------------------------------------------------------
# run-time state


def test_old_recurrent_names_are_the_new_ones():
    from flux_compile import recurrent, runstate, sequences, statehooks
    assert recurrent.snapshot_states is runstate.snapshot_states is snapshot_states
    assert recurrent.state_names is statehooks.state_names
    assert recurrent.unroll is sequences.unroll and recurrent.reset is runstate.reset is fc.reset


def test_snapshot_and_restore_put_every_layer_back():
    rng = np.random.default_rng(2)
    m = fc.Chain(fc.RNN(3, 4), fc.GRU(4, 2))
    xs = [rng.normal(size=(2, 3)) for _ in range(4)]
    for x in xs[:2]:
        m(x)
    snap = snapshot_states(m)
    after = [m(x) for x in xs[2:]]
    restore_states(snap)
    again = [m(x) for x in xs[2:]]
    for a, b in zip(after, again):
        np.testing.assert_array_equal(a, b)
    fc.reset(m)
    restore_states(snapshot_states(m))
    assert all("_fc_state" not in x.__dict__ for x in submodels(m))


# ------------------------------------------------------------------------------
# tokens: the three old functions, as they were, for a differential test


class _OldUncacheable:
    def __eq__(self, other):
        return False

    def __hash__(self):
        return id(self)


def old_freeze(obj):
    if isinstance(obj, dict):
        return ("dict",) + tuple(sorted(((old_freeze(k), old_freeze(v)) for k, v in obj.items()), key=repr))
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__,) + tuple(old_freeze(v) for v in obj)
    if isinstance(obj, float) and obj != obj:
        return ("nan",)
    try:
        hash(obj)
    except TypeError:
        return _OldUncacheable()
    return (type(obj), obj)


_SCALARS = (type(None), bool, int, str, bytes, complex)


def old_value_token(v):
    t = type(v)
    if t in _SCALARS:
        return (t, v)
    if t is float:
        return (t, repr(v))
    if isinstance(v, np.generic):
        return (t, repr(v.item()))
    if isinstance(v, np.dtype):
        return (np.dtype, v.str)
    if v is Ellipsis:
        return ("...",)
    if t is slice:
        parts = (old_value_token(v.start), old_value_token(v.stop), old_value_token(v.step))
        return None if None in parts else (t,) + parts
    if t in (tuple, list, frozenset):
        parts = tuple(old_value_token(x) for x in v)
        return None if None in parts else (t,) + parts
    if t is dict:
        parts = tuple((old_value_token(k), old_value_token(x)) for k, x in v.items())
        return None if any(None in p for p in parts) else (t,) + parts
    return None


def old_canonical(obj):
    if obj is None or obj is Ellipsis or isinstance(obj, (bool, int, str, bytes, complex)):
        return f"{type(obj).__name__}:{obj!r}"
    if isinstance(obj, float):
        return "float:" + repr(obj)
    if isinstance(obj, (tuple, list)):
        return f"{type(obj).__name__}({','.join(old_canonical(v) for v in obj)})"
    if isinstance(obj, dict):
        return "dict(" + ",".join(sorted(old_canonical(k) + ":" + old_canonical(v) for k, v in obj.items())) + ")"
    if isinstance(obj, (frozenset, set)):
        return f"{type(obj).__name__}(" + ",".join(sorted(old_canonical(v) for v in obj)) + ")"
    if isinstance(obj, slice):
        return f"slice({old_canonical(obj.start)},{old_canonical(obj.stop)},{old_canonical(obj.step)})"
    if isinstance(obj, np.dtype):
        return "dtype:" + repr(obj)
    if isinstance(obj, TreeDef):
        cls = old_canonical(obj.cls) if obj.cls is not None else ""
        return (f"tree:{obj.kind}:{cls}:[{','.join(old_canonical(k) for k in obj.keys)}]"
                f"({','.join(old_canonical(c) for c in obj.children)})")
    if isinstance(obj, (np.ndarray, np.generic)):
        a = np.asarray(obj)
        if a.dtype.hasobject:
            raise diskcache.Uncacheable("an object array")
        return f"{type(obj).__name__}:{a.dtype!r}:{a.shape}:" + \
            hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
    if isinstance(obj, type) or callable(obj):
        return "ref:" + ".".join(diskcache.locate(obj))
    raise diskcache.Uncacheable(f"cannot digest a {type(obj).__qualname__}")


class Color(enum.IntEnum):
    RED = 1


def _helper(a):
    return a


SENTINEL = object()
ARRAY = np.arange(3.0)


def hostile_values():
    nan = float("nan")
    return [
        None, True, False, 0, 1, -1, 2 ** 70, 1.0, 0.0, -0.0, nan, float("inf"), -float("inf"), 0.1,
        1 + 2j, "a", "", b"a", Ellipsis, np.float32(0.1), np.float64(0.1), np.float64(-0.0), np.int64(1),
        np.bool_(True), np.dtype("f8"), np.dtype("f4"), np.dtype(">f8"), slice(None), slice(1, 5, 2),
        slice(1, 5, None), (), (1,), [1], (1, 2), (2, 1), [1, 2.0], (1, (2, [3])), frozenset({1, 2}),
        frozenset({2, 1, 3}), {"a": 1, "b": 2}, {"b": 2, "a": 1}, {1: (2, 3)}, {"x": [1, {"y": nan}]},
        Color.RED, _helper, np.sin, int, SENTINEL, ARRAY, [ARRAY], {"k": ARRAY}, {1, 2}, (0.0, 1), (-0.0, 1),
        [nan], (nan, 1.0),
    ]


def _signed_zero_differs(a, b):
    return repr(a).replace("-0.0", "0.0") == repr(b).replace("-0.0", "0.0") and repr(a) != repr(b)


def _dict_order_differs(a, b):
    return type(a) is dict and type(b) is dict and a == b and list(a) != list(b)


def test_value_token_is_unchanged_exactly():
    for v in hostile_values():
        assert value_token(v) == old_value_token(v), v
        assert tokens.value_token(v) == old_value_token(v), v


def test_freeze_equates_what_it_did_and_now_tells_signed_zeros_apart():
    values = hostile_values()
    for a in values:
        for b in values:
            new, old = tokens.freeze(a) == tokens.freeze(b), old_freeze(a) == old_freeze(b)
            if new != old:      # signed zeros and dict orders now differ; equal slices now agree
                assert old and not new and (_signed_zero_differs(a, b) or _dict_order_differs(a, b)) or \
                    new and not old and type(a) is slice and a == b, (a, b)
    assert tokens.freeze((0.0, 1)) != tokens.freeze((-0.0, 1))
    assert tokens.freeze({"a": 1, "b": 2}) != tokens.freeze({"b": 2, "a": 1})
    assert tokens.freeze([ARRAY]) != tokens.freeze([ARRAY])
    for v in values:
        hash(tokens.freeze(v))


def _canon(f, v):
    try:
        return f(v)
    except diskcache.Uncacheable:
        return diskcache.Uncacheable


def test_canonical_equates_what_it_did():
    values = hostile_values() + [np.ones((2, 2)), np.ones((2, 2)), np.zeros(4), np.array([None], dtype=object),
                                 object(), TreeDef("tuple", (), ()),
                                 fc.pytree.flatten({"a": (1.0, 2.0)})[1], fc.pytree.flatten({"b": (1.0, 2.0)})[1]]
    old = [_canon(old_canonical, v) for v in values]
    new = [_canon(diskcache.canonical, v) for v in values]
    for i, a in enumerate(values):
        assert (old[i] is diskcache.Uncacheable) == (new[i] is diskcache.Uncacheable), a
        for j in range(len(values)):
            if diskcache.Uncacheable in (old[i], old[j]):
                continue
            same_old, same_new = old[i] == old[j], new[i] == new[j]
            if same_old != same_new:   # old canonical equated np.float64 and 1-element arrays by bytes
                assert same_old and isinstance(values[i], np.generic) and values[i] == values[j], (a, values[j])


def test_the_policies_are_parameters_of_one_walker():
    d1, d2 = {"a": 1, "b": 2}, {"b": 2, "a": 1}
    assert tokens.token(d1) != tokens.token(d2)
    assert tokens.token(d1, ordered=False) == tokens.token(d2, ordered=False)
    assert tokens.token([SENTINEL]) is None
    assert tokens.token([SENTINEL], other=tokens.by_identity) == tokens.token([SENTINEL], other=tokens.by_identity)
    assert tokens.token([ARRAY], other=tokens.by_identity) != tokens.token([ARRAY], other=tokens.by_identity)


# ------------------------------------------------------------------------------
# the update step below the models


def test_a_number_is_sgd_without_the_optimiser_library():
    import flux_compile.model as model_module
    rng = np.random.default_rng(3)
    a, b = fc.Affine(3, 2), fc.Affine(3, 2)
    b.W.value[...] = a.W.value
    b.b.value[...] = a.b.value
    x = rng.normal(size=(4, 3))
    a.back(np.ones((4, 2)), x)
    b.back(np.ones((4, 2)), x)
    expected = a.W.value - 0.1 * a.W.grad
    a.update(0.1)
    b.update(fc.optim.SGD(0.1))
    np.testing.assert_array_equal(a.W.value, expected)
    np.testing.assert_array_equal(a.W.value, b.W.value)
    assert "optim" not in vars(model_module)
    assert "lr * g" in fc.source(a, "update")


# ------------------------------------------------------------------------------
# one walker of the model tree


def old_model_arrays(m):
    seen, out, lists = set(), [], []

    def walk(obj, path):
        if isinstance(obj, (Param, np.ndarray)):
            if id(obj) not in seen:
                seen.add(id(obj))
                out.append((path, obj))
        elif is_model(obj):
            for name, value in children(obj):
                walk(value, path + (name,))
        elif isinstance(obj, (list, tuple)):
            if isinstance(obj, list):
                lists.append(path)
            for i, value in enumerate(obj):
                walk(value, path + (i,))
        elif isinstance(obj, dict):
            lists.append(path)
            for k, value in obj.items():
                walk(value, path + (k,))

    walk(m, ())
    return out, bool(lists)


@fc.net
class Bag:
    def __init__(self, **fields):
        for k, v in fields.items():
            setattr(self, k, v)

    def forward(self, x):
        return x


def hostile_trees():
    shared = Param(np.ones(2))
    mask = np.array([1, 0, 1])
    inner = Bag(w=shared, mask=mask)
    yield Bag(a=inner, b=inner, c=shared)
    yield Bag(items=[inner, Param(np.zeros(3)), (mask, mask)], n=3)
    yield Bag(table={"x": Param(np.ones(1)), "y": (inner,)}, t=(np.ones(2), np.ones(2)))
    yield Bag(tup=(Param(np.ones(1)), Bag(z=np.zeros((2, 2)))))
    yield fc.Chain(fc.Affine(2, 3), fc.relu, fc.Dense(3, 1))
    yield Bag()


@pytest.mark.parametrize("i", range(6))
def test_model_arrays_is_the_old_walk(i):
    tree = list(hostile_trees())[i]
    new, new_lists = readonly.model_arrays(tree)
    old, old_lists = old_model_arrays(tree)
    assert new_lists == old_lists
    assert [(p, id(x)) for p, x in new] == [(p, id(x)) for p, x in old]


def test_walk_keeps_its_default_answer():
    m = Bag(a=np.arange(2), p=Param(np.ones(1)), items=[Param(np.ones(1))])
    assert [p for p, _ in walk(m)] == [(), ("p",), ("items", 0)]
    seen = []
    assert [p for p, _ in walk(m, arrays=True, containers=seen)] == [(), ("a",), ("p",), ("items", 0)]
    assert seen == [("items",)]


# ------------------------------------------------------------------------------
# sizes


MODULES = sorted(str(p.relative_to(PACKAGE).with_suffix("")) for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("name", MODULES)
def test_module_and_class_sizes(name):
    """Every module of the package (rules/ too) within ~600 lines, every class within 300."""
    text = (PACKAGE / f"{name}.py").read_text()
    assert len(text.splitlines()) <= 600, f"{name}.py has {len(text.splitlines())} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            size = node.end_lineno - node.lineno + 1
            assert size <= 300, f"{name}.{node.name} has {size} lines"


# ------------------------------------------------------------------------------
# the hook for transforms (fc.jvp): trace, make one Compiled, cache it like fc.grad's


def _interpreting(label, graph, arity, ctx, specs):
    """A transform that runs the traced graph itself (its 'generated code' is the interpreter)."""
    from flux_compile.interp import run_graph

    def forward(*xs):
        values = run_graph(graph, None, xs)
        return values[graph.outputs[0].id]
    c = compiled.Compiled(label, label, {"forward": forward}, "def forward(*xs):\n    ...\n", label,
                          n_outputs=arity, graph=graph, deps=ctx.deps, guarded=ctx.guards > 0)
    c.set_guards(ctx.baked, ctx.free)
    return c


def test_compile_transform_caches_and_guards_like_grad():
    scale = {"k": 3}

    def f(x):
        return np.sin(x) * scale["k"]
    x = np.linspace(-1.0, 1.0, 5)
    c = cache.compile_transform(f, (x,), "probe", _interpreting)
    assert cache.compile_transform(f, (x,), "probe", _interpreting) is c
    np.testing.assert_allclose(c.forward(x, *c.read_free(f, (x,))), np.sin(x) * 3)
    assert c.backward is None and c.label == "probe of " + f.__qualname__
    scale["k"] = 5                       # a baked constant changed: the guard sends it to a new build
    assert not c.current(f, (x,))
    c2 = cache.compile_transform(f, (x,), "probe", _interpreting)
    assert c2 is not c and c2 in c2.alternatives
    np.testing.assert_allclose(c2.forward(x, *c2.read_free(f, (x,))), np.sin(x) * 5)
    assert cache.compile_function(f, (x,)) is not c2       # another kind: another key
    with pytest.raises(TypeError, match="fc.probe needs a Python function"):
        cache.compile_transform(np.sin, (x,), "probe", _interpreting)


def test_a_dict_argument_in_another_order_is_another_compile():
    """Was a bug: the key sorted a dict argument, so ``for k in d`` ran in the first call's order."""
    def weighted(x, d):
        out = 0.0
        for k in d:
            out = out * 2.0 + np.sum(x * d[k])
        return out
    x = np.random.default_rng(4).normal(size=3)
    for d in ({"a": 3, "b": -2}, {"b": -2, "a": 3}, {"a": 3, "b": -2}):     # ints: a constant argument
        value, (grad, _) = fc.grad(weighted, x, d)
        weights = list(d.values())
        expected = weights[0] * 2.0 + weights[1]
        np.testing.assert_allclose(value, expected * x.sum())
        np.testing.assert_allclose(grad, np.full(3, expected))


def test_a_signed_zero_in_a_constant_argument_is_kept():
    def f(x, c):
        return np.sum(x * np.arctan2(c[1], -1.0))
    x = np.ones(3)
    for c in ((1, 0.0), (1, -0.0), (1, 0.0)):
        value, (grad, _) = fc.grad(f, x, c)
        np.testing.assert_allclose(grad, np.full(3, np.arctan2(c[1], -1.0)))
        np.testing.assert_allclose(value, 3 * np.arctan2(c[1], -1.0))
