"""Name hygiene: no generated name captures another (the invariants of flux_compile.naming).

Programs here name their inputs and locals after what generated code uses (``y``, ``dy``,
``saved``, ``self``, ``np``, ``sum_grad``, ``unbroadcast``, ``t_1``, ``first_back``...).
Their gradients are compared with central finite differences in float64 and, for plain
functions, with autograd running the very same source; the generated modules are
scanned with ``ast`` for parameters that get assigned, names given twice and locals
that shadow a module name. Each program's source is written to a module whose NumPy is
``xp``, so ``np`` and ``fc`` are free to be the user's names.
"""
import ast
import builtins
import functools
import importlib.util
import itertools
import keyword
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flux_compile as fc
from flux_compile import cache as fc_cache, naming

GENERATED_FUNCTIONS = set(naming.FUNCTIONS)

# names generated code uses: parameters, seeds, temporaries, adjoints, helpers, globals
HOSTILE = ["y", "dy", "dx", "saved", "self_", "self_1", "np_", "np", "fc", "unbroadcast", "sum_grad", "t",
           "t_1", "t_2", "dz", "dz_1", "d", "back", "grad", "dy0", "dy1", "dy_1", "y_1", "y1", "y2", "Retrace",
           "forward", "backward", "forward_train", "backward_params", "slice", "first_out", "first_back",
           "layer0_out", "x_1_back", "ndarray", "x_shape", "t_shape", "W", "b", "dW", "db", "dself", "state"]


# -- loading a program written as text --------------------------------------------------

_counter = itertools.count()


def load(tmp_path, source, numpy_module="numpy"):
    """The module made from ``source`` with ``xp`` bound to ``numpy_module``."""
    name = f"naming_prog_{next(_counter)}"
    path = tmp_path / f"{name}.py"
    path.write_text(source.replace("import numpy as xp", f"import {numpy_module} as xp"))
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# -- references: central differences in float64, autograd -----------------------------

def central_differences(value, arrays, eps=1e-6):
    """d value() / d array for each array (changed in place and restored)."""
    grads = []
    for a in arrays:
        g = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            old = a[i]
            a[i] = old + eps
            up = value()
            a[i] = old - eps
            down = value()
            a[i] = old
            g[i] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


def check_function(tmp_path, source, shapes, seed=0):
    """fc.grad of ``program`` in ``source`` equals autograd's and central differences."""
    f = load(tmp_path, source).program
    rng = np.random.default_rng(seed)
    args = [rng.standard_normal(s) for s in shapes]
    value, grads = fc.grad(f, *[a.copy() for a in args])
    np.testing.assert_allclose(value, f(*args), rtol=1e-12, err_msg=source)
    autograd = pytest.importorskip("autograd")
    f_ag = load(tmp_path, source, "autograd.numpy").program
    for i, g in enumerate(grads):
        np.testing.assert_allclose(g, autograd.grad(f_ag, i)(*args), rtol=1e-9, atol=1e-12,
                                   err_msg=f"argument {i} vs autograd\n{source}")
    numeric = central_differences(lambda: float(np.sum(f(*args))), args)
    for i, (g, n) in enumerate(zip(grads, numeric)):
        np.testing.assert_allclose(g, n, rtol=1e-5, atol=1e-7, err_msg=f"argument {i} vs differences\n{source}")
    scan_generated(fc.source(f, "all", args=tuple(args)), names_bound_in(fc_cache.compile_function(f, tuple(args))))


def check_model(m, shapes, seed=0):
    """Input and Param gradients of ``m`` (pullback with a random dy) equal central differences
    of its inference forward, each evaluation starting from the initial recurrent state."""
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal(s) for s in shapes]
    m.reset()
    out = m(*xs)
    outs = out if isinstance(out, tuple) else (out,)
    dys = [rng.standard_normal(np.shape(o)) for o in outs]

    def value():
        m.reset()
        got = m(*xs)
        got = got if isinstance(got, tuple) else (got,)
        return sum(float(np.sum(o * d)) for o, d in zip(got, dys))

    params = fc.params(m)
    m.zero_grad()
    m.reset()
    _, back = m.pullback(*[x.copy() for x in xs])
    gin = back(tuple(dys) if isinstance(out, tuple) else dys[0])
    gin = gin if isinstance(gin, tuple) else (gin,)
    grads = list(gin) + [p.grad.copy() for p in params]
    numeric = central_differences(value, xs + [p.value for p in params])
    labels = [f"input {i}" for i in range(len(xs))] + [f"param {i}" for i in range(len(params))]
    text = fc.source(m, "all")
    for label, g, n in zip(labels, grads, numeric):
        np.testing.assert_allclose(g, n, rtol=1e-5, atol=1e-7, err_msg=f"{label}\n{text}")
    m.reset()
    scan_generated(text, names_bound_in(fc_cache.compile_model(m)))


# -- the scan: invariants read off the generated text -------------------------------------

def _stored(fdef):
    return [n.id for n in ast.walk(fdef) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]


def _stores_on_one_path(node):
    """How often each name is assigned on the path that assigns it most: the two branches of
    an ``if`` are alternatives (a cond region sets its merged variables in both)."""
    from collections import Counter
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
        return Counter([node.id])
    if isinstance(node, ast.If):
        then, other = Counter(), Counter()
        for st in node.body:
            then += _stores_on_one_path(st)
        for st in node.orelse:
            other += _stores_on_one_path(st)
        return _stores_on_one_path(node.test) + (then | other)
    total = Counter()
    for child in ast.iter_child_nodes(node):
        total += _stores_on_one_path(child)
    return total


def _loaded(fdef):
    return {n.id for n in ast.walk(fdef) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def names_bound_in(compiled):
    """The names bound in the namespace of a compiled model's (or function's) module."""
    compiled = getattr(compiled, "inner", compiled)     # fc.unroll: the generated module it runs
    return {k for k in compiled.forward.__globals__ if not k.startswith("__")}


def scan_generated(text, module_names):
    """Check every generated function of ``text`` (an ``fc.source(..., "all")``) whose module
    binds ``module_names``: no parameter is assigned; no name is assigned twice; a name read is
    a parameter, a local, or bound in the module; no parameter or local is a module name."""
    tree = ast.parse(text)
    defs = [d for d in tree.body if isinstance(d, ast.FunctionDef)]
    assert {d.name for d in defs} >= GENERATED_FUNCTIONS, text
    for fdef in defs:
        params = [a.arg for a in fdef.args.args]
        stored = _stored(fdef)
        where = f"in {fdef.name}:\n{text}"
        assert len(set(params)) == len(params), where
        assert not set(params) & set(stored), f"a parameter is assigned {where}"
        if fdef.name not in GENERATED_FUNCTIONS:
            continue                    # the optimiser's update (its own module, no user names)
        carried = {n for loop in ast.walk(fdef) if isinstance(loop, (ast.For, ast.While))
                   for n in _stored(loop)}       # a loop region's carried values: set again each trip
        twice = {n for n, count in _stores_on_one_path(fdef).items() if count > 1} - carried
        assert not twice, f"{sorted(twice)} assigned twice {where}"
        local = set(params) | set(stored)
        assert not local & module_names, f"{sorted(local & module_names)} shadow module names {where}"
        free = _loaded(fdef) - local
        unbound = {n for n in free if n not in module_names and not hasattr(builtins, n)}
        assert not unbound, f"{sorted(unbound)} are bound nowhere {where}"
        assert not free & GENERATED_FUNCTIONS, where


# -- (a) hostile programs, written by hand ----------------------------------------------------

FUNCTIONS = {
    # the case: the adjoint of y is dy, the seed is dy
    "input_y": ("""\
import numpy as xp


def program(y):
    z = xp.sin(y) * y
    return xp.sum(z * y) + xp.sum(xp.tanh(z))
""", [(3, 4)]),
    "locals_named_like_the_backward": ("""\
import numpy as xp


def program(x, y):
    dy = xp.tanh(x * y)
    saved = dy * x + y
    dx = xp.sin(saved) * dy
    t = dx[:, 1:3].sum(axis=1, keepdims=True) * saved
    t_1 = t + dy
    return xp.sum(t_1 * x) + xp.sum(dx ** 2)
""", [(3, 4), (4,)]),
    "inputs_named_self_saved_dy": ("""\
import numpy as xp


def program(self, saved, dy):
    y = xp.tanh(self @ saved) + dy
    return xp.sum(y * y) + xp.sum(saved * 0.5)
""", [(3, 4), (4, 4), (4,)]),
    "names_of_globals": ("""\
import numpy as xp


def program(np, fc):
    unbroadcast = xp.tanh(np) + fc
    sum_grad = xp.sum(unbroadcast, axis=0, keepdims=True) * unbroadcast
    slice = sum_grad[:, 1:3]
    Retrace = xp.max(unbroadcast, axis=1)
    forward = xp.exp(-slice ** 2)
    backward = xp.mean(forward) + xp.sum(Retrace)
    return backward + xp.sum(np * sum_grad)
""", [(3, 4), (4,)]),
    "helper_with_hostile_names": ("""\
import numpy as xp


def dy(y, saved):
    t = xp.tanh(y) * saved
    return t * y + xp.sin(t)


def program(y, dz):
    d = dy(y, dz)
    back = dy(d, y) + dz
    return xp.sum(back * d)
""", [(3, 4), (3, 4)]),
    "several_outputs_names_like_seeds": ("""\
import numpy as xp


def program(dy0, dy1):
    y1 = xp.tanh(dy0 * dy1)
    y2 = xp.sum(y1 * dy0, axis=1)
    return xp.sum(y1) + xp.sum(y2 * y2)
""", [(3, 4), (3, 4)]),
    "guard_and_constant_names_taken": ("""\
import numpy as xp

C = xp.linspace(0.0, 1.0, 12).reshape(3, 4)


def program(Retrace, ndarray):
    if xp.sum(Retrace) > 0:
        slice = Retrace * C + ndarray
    else:
        slice = Retrace - C * ndarray
    return xp.sum(slice[:, 1:] ** 2)
""", [(3, 4), (4,)]),
    "derived_names_taken": ("""\
import numpy as xp


def program(x, dx, dx_1):
    x_1 = x * dx
    dx_2 = xp.tanh(x_1) + dx_1
    t = xp.sum(dx_2, axis=1, keepdims=True)
    x_shape = t * x
    dz = x_shape ** 2
    return xp.sum(dz + dx_2)
""", [(3, 4), (3, 4), (4,)]),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_hostile_function(tmp_path, name):
    source, shapes = FUNCTIONS[name]
    check_function(tmp_path, source, shapes)


MODELS = """\
import numpy as xp
import flux_compile as fc


@fc.net
class Hostile:
    '''The issue's case in a model: an input y, locals dy, saved, t.'''
    def __init__(self):
        self.W = fc.initn(4, 4) * 100
        self.b = fc.initn(1, 4) * 100

    def forward(self, y):
        dy = xp.tanh(y @ self.W + self.b)
        saved = dy * y
        t = xp.sin(saved) + dy
        return xp.sum(t * y, axis=1)


@fc.net
class Inner:
    def __init__(self):
        self.W = fc.initn(4, 4) * 100

    def forward(self, x):
        return xp.tanh(x @ self.W)


@fc.net
class Outer:
    '''Sub-model outputs and pullbacks (first_out, first_back) taken by the user's names.'''
    def __init__(self):
        self.first = Inner()
        self.second = Inner()

    def forward(self, first_back, dy):
        first_out = self.first(first_back)
        second_back = self.second(first_out * dy)
        dz = second_back * first_back
        return dz, xp.sin(dy) * first_out


@fc.net
class Globals:
    '''Inputs and locals named after module names of the generated code.'''
    def __init__(self):
        self.W = fc.initn(4, 4) * 100

    def forward(self, np, unbroadcast):
        sum_grad = xp.tanh(np @ self.W) + unbroadcast
        Retrace = xp.sum(sum_grad * sum_grad, axis=-1, keepdims=True)
        return Retrace * np


@fc.net
class StateDy:
    '''Recurrent state named dy, an input named saved.'''
    def __init__(self):
        self.W = fc.initn(4, 4) * 100
        self.dy = fc.initn(1, 4) * 100

    def forward(self, saved):
        self.dy = xp.tanh(saved @ self.W + self.dy)
        return self.dy * saved


@fc.net
class StateSaved:
    '''Recurrent state named saved, an input named dy, a local named y.'''
    def __init__(self):
        self.W = fc.initn(4, 4) * 100
        self.saved = fc.initn(1, 4) * 100

    def forward(self, dy):
        y = xp.tanh(dy @ self.W) * self.saved
        self.saved = y + dy
        return y


@fc.net
class TwoOutputs:
    '''Two outputs (seeds dy0, dy1) with an input dy0 and locals dy1, dy, y1.'''
    def __init__(self):
        self.W = fc.initn(4, 4) * 100

    def forward(self, dy0):
        dy1 = xp.tanh(dy0 @ self.W)
        dy = xp.sum(dy1 * dy0, axis=1)
        y1 = dy1 * dy[:, None]
        return y1, dy


@fc.net
class OddSelf:
    '''The model's own parameter is called m; its input is called self.'''
    def __init__(self):
        self.W = fc.initn(4, 4) * 100

    def forward(m, self):
        saved = xp.tanh(self @ m.W)
        return saved * self


def backward(x):
    '''An opaque primitive named like a generated function.'''
    return x * 2.0 + xp.sin(x)


@fc.diffrule(backward)
def _(dy, y, x):
    return dy * (2.0 + xp.cos(x))


def unbroadcast(x):
    '''An opaque primitive named like the library's helper (both end up in one module).'''
    return xp.tanh(x) * 3.0


@fc.diffrule(unbroadcast)
def _(dy, y, x):
    return dy * 3.0 * (1.0 - xp.tanh(x) ** 2)


@fc.net
class TwoUnbroadcasts:
    def __init__(self):
        self.b = fc.initn(1, 4) * 100

    def forward(self, sum_grad):
        unbroadcast_1 = unbroadcast(sum_grad + self.b)
        return xp.sum(unbroadcast_1, axis=0) * self.b


@fc.net
class CallsBackward:
    def __init__(self):
        self.W = fc.initn(4, 4) * 100

    def forward(self, forward_train):
        t = backward(forward_train @ self.W)
        return backward(t) * forward_train
"""


@pytest.fixture(scope="module")
def hostile_models(tmp_path_factory):
    return load(tmp_path_factory.mktemp("models"), MODELS)


@pytest.mark.parametrize("name, shapes", [
    ("Hostile", [(3, 4)]), ("Outer", [(3, 4), (3, 4)]), ("Globals", [(3, 4), (3, 4)]),
    ("StateDy", [(3, 4)]), ("StateSaved", [(3, 4)]), ("TwoOutputs", [(3, 4)]), ("CallsBackward", [(3, 4)]),
    ("TwoUnbroadcasts", [(3, 4)]), ("OddSelf", [(3, 4)])])
def test_hostile_model(hostile_models, name, shapes):
    check_model(getattr(hostile_models, name)(), shapes)


@pytest.mark.parametrize("name", ["StateDy", "StateSaved"])
def test_hostile_state_names_through_time(hostile_models, name):
    """Backprop through time over three steps of a model whose state is called dy or saved."""
    check_model(fc.unroll(getattr(hostile_models, name)(), 3), [(2, 3, 4)])


def test_fc_grad_of_a_model_argument_named_like_a_global(hostile_models, tmp_path):
    """A model passed to fc.grad under the name np, next to an input named self."""
    m = hostile_models.Inner()
    f = load(tmp_path, "import numpy as xp\n\n\ndef program(np, self):\n    return xp.sum(np(self) * self)\n").program
    x = np.random.default_rng(1).standard_normal((3, 4))
    value, (gm, gx) = fc.grad(f, m, x)
    numeric_x, numeric_W = central_differences(lambda: float(f(m, x)), [x, m.W.value])
    np.testing.assert_allclose(gx, numeric_x, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gm[("W",)], numeric_W, rtol=1e-5, atol=1e-7)
    scan_generated(fc.source(f, "all", args=(m, x)), names_bound_in(fc_cache.compile_function(f, (m, x))))


def test_seed_keeps_its_name_when_nothing_collides(tmp_path):
    """Ordinary names print as before: the seed is dy, the adjoint of x is dx."""
    f = load(tmp_path, "import numpy as xp\n\n\ndef program(x):\n    h = xp.tanh(x)\n"
                       "    return xp.sum(h * h)\n").program
    text = fc.source(f, "backward", args=(np.ones(3),))
    assert re.search(r"^def backward\(saved, dy\):", text, re.M), text
    assert re.search(r"^\s+dx = ", text, re.M), text


def test_colliding_names_get_fresh_variants(tmp_path):
    """An input y: its adjoint is dy_1, the seed stays dy. An input dy: the seed is dy_1."""
    f = load(tmp_path, "import numpy as xp\n\n\ndef program(y):\n    return xp.sum(xp.sin(y) * y)\n").program
    text = fc.source(f, "backward", args=(np.ones(3),))
    assert re.search(r"^def backward\(saved, dy\):", text, re.M) and "dy_1 = " in text, text
    g = load(tmp_path, "import numpy as xp\n\n\ndef program(dy):\n    return xp.sum(xp.sin(dy) * dy)\n").program
    text = fc.source(g, "backward", args=(np.ones(3),))
    assert re.search(r"^def backward\(saved, dy_1\):", text, re.M), text


# -- (b) the scan over ordinary and library models --------------------------------------------

def _library_models():
    return [
        (fc.Dense(4, 3, act=fc.relu), [(2, 4)]),
        (fc.Chain(fc.Dense(4, 5, act=np.tanh), fc.Dense(5, 3), fc.softmax), [(2, 4)]),
        (fc.RNN(4, 3), [(2, 4)]),
        (fc.GRU(4, 3), [(2, 4)]),
        (fc.LSTM(4, 3), [(2, 4)]),
        (fc.unroll(fc.GRU(4, 3), 2), [(2, 2, 4)]),
    ]


@pytest.mark.parametrize("index", range(6))
def test_scan_library_models(index):
    m, shapes = _library_models()[index]
    rng = np.random.default_rng(index)
    m(*[rng.standard_normal(s) for s in shapes])
    scan_generated(fc.source(m, "all"), names_bound_in(fc_cache.compile_model(m)))


def test_scan_catches_a_clobbered_parameter():
    """The scan itself: the text of the defect it guards against fails it."""
    bad = ("def forward(x):\n    return x\n\ndef forward_train(x):\n    return x, (x,)\n\n"
           "def backward(saved, dy):\n    y, = saved\n    dy = dy * y\n    return dy\n\n"
           "def backward_params(saved, dy):\n    return None\n")
    with pytest.raises(AssertionError, match="a parameter is assigned"):
        scan_generated(bad, {"np", "unbroadcast"})
    shadow = bad.replace("    dy = dy * y\n    return dy", "    unbroadcast = dy * y\n    return unbroadcast")
    with pytest.raises(AssertionError, match="shadow module names"):
        scan_generated(shadow, {"np", "unbroadcast"})


# -- (c) hypothesis: names drawn from everything generated code uses -----------------------------

REFERENCE = """\
import numpy as xp


def helper(u, w):
    v = xp.tanh(u) * w
    return v * u + xp.sin(v)


def program(x, w):
    h = xp.tanh(x * w) + x
    z = helper(h, w) * w
    s = z[:, 1:3].sum(axis=1, keepdims=True) * h
    h = s + xp.exp(-z ** 2)
    return xp.sum(h * z) + xp.sum(s ** 2)
"""


@functools.lru_cache(maxsize=None)
def generated_names():
    """Every identifier in the generated source of the reference program, a model with
    sub-models and state, and the library's recurrent layers."""
    import tempfile
    import pathlib
    texts = []
    with tempfile.TemporaryDirectory() as d:
        f = load(pathlib.Path(d), REFERENCE).program
        args = (np.ones((3, 4)), np.ones(4))
        texts.append(fc.source(f, "all", args=args))
        models = load(pathlib.Path(d), MODELS)
        for m, shapes in [(models.Outer(), [(3, 4), (3, 4)])] + _library_models():
            m(*[np.ones(s) for s in shapes])
            texts.append(fc.source(m, "all"))
    names = set()
    for text in texts:
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Name):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.FunctionDef):
                names.add(node.name)
    return sorted(names)


def name_pool():
    reserved = {"xp", "helper", "program", "Inner", "Step"}
    pool = set(generated_names()) | set(HOSTILE)
    return sorted(n for n in pool if n.isidentifier() and not keyword.iskeyword(n) and n not in reserved
                  and n not in ("None", "True", "False") and not n.startswith("__"))


def test_pool_holds_the_generated_names():
    pool = name_pool()
    for name in ("dy", "saved", "self", "unbroadcast", "sum_grad", "t", "t_1", "first_out", "first_back",
                 "backward", "np"):
        assert name in pool


TEMPLATE = """\
import numpy as xp


def {helper}({u}, {w}):
    {v} = xp.tanh({u}) * {w}
    return {v} * {u} + xp.sin({v})


def program({x}, {y}):
    {h} = xp.tanh({x} * {y}) + {x}
    {z} = {helper}({h}, {y}) * {y}
    {s} = {z}[:, 1:3].sum(axis=1, keepdims=True) * {h}
    {h} = {s} + xp.exp(-{z} ** 2)
    return xp.sum({h} * {z}) + xp.sum({s} ** 2)
"""

SLOTS = ("helper", "u", "w", "v", "x", "y", "h", "z", "s")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_drawn_names_function(tmp_path, data):
    names = data.draw(st.lists(st.sampled_from(name_pool()), min_size=len(SLOTS), max_size=len(SLOTS),
                               unique=True), label="names")
    source = TEMPLATE.format(**dict(zip(SLOTS, names)))
    check_function(tmp_path, source, [(3, 4), (4,)])


MODEL_TEMPLATE = """\
import numpy as xp
import flux_compile as fc


@fc.net
class Inner:
    def __init__(self):
        self.W = fc.initn(4, 4) * 100

    def forward(self, {u}):
        return xp.tanh({u} @ self.W)


@fc.net
class Step:
    def __init__(self):
        self.first = Inner()
        self.W = fc.initn(4, 4) * 100
        self.{state} = fc.initn(1, 4) * 100

    def forward(self, {x}, {y}):
        {h} = self.first({x}) + self.{state}
        {z} = xp.tanh({h} @ self.W) * {y}
        self.{state} = xp.tanh({z} + {h})
        return {z} * self.{state}, xp.sum({h} * {x}, axis=1)
"""

MODEL_SLOTS = ("u", "x", "y", "h", "z")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_drawn_names_model(tmp_path, data):
    pool = [n for n in name_pool() if n != "self"]
    names = data.draw(st.lists(st.sampled_from(pool), min_size=len(MODEL_SLOTS), max_size=len(MODEL_SLOTS),
                               unique=True), label="names")
    # the state is an attribute too: not one the model already has (W, first, forward, reset...)
    attrs = [n for n in pool if n not in names and n not in ("first", "W") and not hasattr(fc.Dense, n)]
    state = data.draw(st.sampled_from(attrs), label="state")
    source = MODEL_TEMPLATE.format(state=state, **dict(zip(MODEL_SLOTS, names)))
    mod = load(tmp_path, source)
    check_model(mod.Step(), [(3, 4), (3, 4)])


# -- the policy itself --------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(HOSTILE + ["lambda", "None", "3d", "a-b", "", "x"])),
                max_size=40))
def test_policy_invariants(requests):
    """Any interleaving of requests (3: a module name; 0-2: a local of that scope):
    names are identifiers, no keyword; unique in a scope; no local is a module name."""
    module = naming.ModuleNames()
    scopes = [module.scope() for _ in range(3)]
    given_names = {k: [] for k in range(3)}
    module_names = []
    for which, hint in requests:
        if which == 3:
            module_names.append(module.module_name(hint))
        else:
            given_names[which].append(scopes[which].fresh(hint))
    everything = module_names + [n for names in given_names.values() for n in names]
    assert all(n.isidentifier() and not keyword.iskeyword(n) for n in everything)
    assert len(set(module_names)) == len(module_names)
    fixed = set(naming.FIXED) | set(naming.FUNCTIONS)
    assert not fixed & set(module_names)
    for names in given_names.values():
        assert len(set(names)) == len(names)
        assert not set(names) & (set(module_names) | fixed)


def test_policy_derived_names():
    assert naming.adjoint("h") == "dh" and naming.adjoint(None) == "dz"
    assert [naming.seed(i, 2) for i in range(2)] == ["dy0", "dy1"] and naming.seed(0, 1) == "dy"
    assert naming.pullback("first_out") == "first_back"
    assert naming.identifier("lambda") == "lambda_" and naming.identifier("3d") == "v3d"
    scope = naming.ModuleNames().scope()
    assert [scope.fresh("h") for _ in range(3)] == ["h", "h_1", "h_2"]


# -- the disk cache re-binds the module names it stored -------------------------------------------

DISK_MODEL = """\
import numpy as xp
import flux_compile as fc


@fc.net
class Sliced:
    def __init__(self):
        self.W = xp.linspace(-1.0, 1.0, 16).reshape(4, 4)

    def forward(self, np, slice):
        unbroadcast = xp.tanh(np @ self.W) + slice
        sum_grad = unbroadcast[:, 1:3] * unbroadcast[:, :2]
        return xp.sum(sum_grad, axis=1, keepdims=True) * np
"""

DISK_RUN = """\
import sys, numpy as np
sys.path.insert(0, {path!r})
from naming_disk_model import Sliced
from flux_compile.cache import compile_model
m = Sliced()
x, s = np.linspace(-1, 1, 12).reshape(3, 4), np.linspace(0, 1, 4)
y, back = m.pullback(x, s)
dx, ds = back(np.ones_like(y))
print(compile_model(m, (x, s)).from_disk, repr(float(y.sum())), repr(float(m.W.grad.sum())),
      repr(float(dx.sum())), repr(float(ds.sum())))
"""


def test_disk_cache_hit_of_a_module_with_aliased_names(tmp_path):
    """``slice`` and ``np`` are the user's, so the builtin and NumPy are bound under other names;
    a second process loads that module from the disk cache and computes the same gradients."""
    import os
    import subprocess
    import sys
    (tmp_path / "naming_disk_model.py").write_text(DISK_MODEL)
    env = dict(os.environ, FLUX_COMPILE_CACHE_DIR=str(tmp_path / "cache"))

    def run():
        out = subprocess.run([sys.executable, "-c", DISK_RUN.format(path=str(tmp_path))], capture_output=True,
                             text=True, env=env, check=True).stdout.split()
        return out[0], [float(v) for v in out[1:]]
    (hit1, first), (hit2, second) = run(), run()
    assert (hit1, hit2) == ("False", "True")
    assert first == second
    mod = load(tmp_path, DISK_MODEL)
    check_model(mod.Sliced(), [(3, 4), (4,)])
