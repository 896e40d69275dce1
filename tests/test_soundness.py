"""Soundness of the in-memory caches: compiled code is never reused for values it did not
bake in (closure cells, globals, defaults, attributes, ``Class.forward``, inlined helpers),
and the caches stay bounded and never keep alive what the user dropped.

Every result is compared with plain NumPy evaluation or central finite differences.
"""
import gc
import importlib
import os
import sys
import textwrap
import time
import tracemalloc
import types
import weakref

import numpy as np
import pytest

import flux_compile as fc
from flux_compile import cache as fc_cache
from numeric import numgrad


def check_grad(f, x, rtol=1e-5, atol=1e-7):
    value, (g,) = fc.grad(f, x)
    assert np.allclose(value, f(x), rtol=rtol, atol=atol)
    assert np.allclose(g, numgrad(f, x), rtol=1e-4, atol=1e-6)


def load_module(tmp_path, name, text):
    """Write ``text`` to ``tmp_path/name.py`` and import it (fresh)."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(text))
    sys.path.insert(0, str(tmp_path))
    try:
        sys.modules.pop(name, None)
        importlib.invalidate_caches()
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(tmp_path))


def edit_file(path, text):
    path.write_text(textwrap.dedent(text))
    later = time.time() + 10                 # a different mtime even on coarse file systems
    os.utime(path, (later, later))


def loss(w, xb, yb):
    return np.sum((np.tanh(xb @ w) - yb) ** 2)


rng = np.random.default_rng(0)


# ---------------------------------------------------------------------------
# class 2: closures


def test_lambda_closures_per_minibatch_each_see_their_own_batch():
    w = rng.normal(size=3)
    compiled = set()
    for _ in range(6):
        xb, yb = rng.normal(size=(5, 3)), rng.normal(size=5)
        f = lambda w: loss(w, xb, yb)        # noqa: E731 - the ordinary per-minibatch call
        check_grad(f, w)
        compiled.add(id(fc_cache.compile_function(f, (w,))))
    assert len(compiled) == 1                # one compile serves every minibatch


def make_def_loss(xb, yb):
    def batch_loss(w):
        return np.sum((xb @ w - yb) ** 2) / len(yb)
    return batch_loss


def test_def_closures_capturing_different_arrays():
    w = rng.normal(size=4)
    for n in (3, 7, 7, 2):                   # different batch sizes too
        xb, yb = rng.normal(size=(n, 4)), rng.normal(size=n)
        check_grad(make_def_loss(xb, yb), w)


def make_nested(a, b):
    def inner(x):
        return np.sin(x * a)

    def outer(x):
        return np.sum(inner(x) * b)
    return outer


def test_nested_closures_read_the_innermost_cells():
    x = rng.normal(size=3)
    for _ in range(4):
        a, b = rng.normal(size=3), rng.normal(size=3)
        check_grad(make_nested(a, b), x)


def test_closure_rebinding_a_cell_with_nonlocal():
    scale = np.array([1.0, 2.0])

    def f(x):
        return np.sum(x * scale)

    def set_scale(v):
        nonlocal scale
        scale = v
    x = np.array([0.5, -1.5])
    check_grad(f, x)
    set_scale(np.array([-3.0, 4.0]))
    check_grad(f, x)


@pytest.mark.parametrize("values", [(2.0, 3.0, -0.5), (1, 4, 2), (True, False, True)])
def test_closure_capturing_python_scalars(values):
    x = rng.normal(size=3)
    for v in values:
        f = (lambda v: lambda x: np.sum(x ** 2 * v))(v)
        check_grad(f, x)


def test_closure_int_controls_a_loop():
    x = rng.normal(size=3)

    def make(n):
        def f(x):
            y = x
            for _ in range(n):
                y = np.sin(y)
            return np.sum(y)
        return f
    for n in (1, 3, 2, 3, 0):
        check_grad(make(n), x)


def test_closure_capturing_a_function():
    x = rng.normal(size=3)

    def make(act):
        return lambda x: np.sum(act(x))
    for act in (np.tanh, np.sin, lambda z: z ** 3, lambda z: np.exp(z)):
        check_grad(make(act), x)


def test_closure_capturing_a_dict_of_arrays():
    x = rng.normal(size=3)
    for _ in range(3):
        cfg = {"a": rng.normal(size=3), "s": float(rng.normal())}
        check_grad(lambda x: np.sum(x * cfg["a"]) * cfg["s"], x)


def test_closure_captured_array_mutated_in_place():
    a = np.ones(3)
    f = lambda x: np.sum(x * a)              # noqa: E731
    x = rng.normal(size=3)
    check_grad(f, x)
    a[:] = [2.0, -1.0, 5.0]
    check_grad(f, x)


def test_gradcheck_of_closures():
    x = rng.normal(size=(2, 3))
    for _ in range(3):
        W = rng.normal(size=(3, 3))
        fc.gradcheck(lambda x: np.sum(np.tanh(x @ W)), x)


def test_closure_shape_change_of_captured_array():
    x = rng.normal(size=3)
    for a in (rng.normal(size=3), rng.normal(size=(2, 3)), rng.normal(size=(1, 3)), np.float64(2.0) * np.ones(())):
        check_grad(lambda x: np.sum(np.tanh(x * a)), x)


# ---------------------------------------------------------------------------
# class 2: module globals


GLOBALS_SRC = """
import numpy as np

S = 2.0
A = np.array([1.0, 2.0, 3.0])
N = 2
CFG = {"s": 1.5}

def act(z):
    return np.tanh(z)

def f_scalar(x):
    return np.sum(x ** 2) * S

def f_array(x):
    return np.sum(x * A)

def f_fn(x):
    return np.sum(act(x))

def f_loop(x):
    y = x
    for _ in range(N):
        y = np.sin(y)
    return np.sum(y)

def f_dict(x):
    return np.sum(x) * CFG["s"]

def helper(x, k=2.0):
    return x * k

def f_helper_default(x):
    return np.sum(helper(x) ** 2)

def f_branch(x):
    if np.sum(x) > 0:
        return np.sum(x ** 2) * S
    return np.sum(x)
"""


@pytest.fixture
def gmod(tmp_path):
    return load_module(tmp_path, "fc_sound_globals", GLOBALS_SRC)


@pytest.mark.parametrize("fname,name,new", [
    ("f_scalar", "S", -3.0),
    ("f_array", "A", np.array([-1.0, 0.5, 4.0])),
    ("f_loop", "N", 4),
    ("f_fn", "act", np.sin),
])
def test_global_rebound_after_first_compile(gmod, fname, name, new):
    f = getattr(gmod, fname)
    x = rng.normal(size=3)
    check_grad(f, x)
    setattr(gmod, name, new)
    check_grad(f, x)


def cube(z):
    return z ** 3


def test_global_function_redefined(gmod):
    x = rng.normal(size=3)
    check_grad(gmod.f_fn, x)
    gmod.act = cube
    check_grad(gmod.f_fn, x)


def test_global_dict_mutated_in_place(gmod):
    x = rng.normal(size=3)
    check_grad(gmod.f_dict, x)
    gmod.CFG["s"] = -7.0
    check_grad(gmod.f_dict, x)


def test_global_array_mutated_in_place(gmod):
    x = rng.normal(size=3)
    check_grad(gmod.f_array, x)
    gmod.A *= -2
    check_grad(gmod.f_array, x)


def test_default_of_an_inlined_helper_changed(gmod):
    x = rng.normal(size=3)
    check_grad(gmod.f_helper_default, x)
    gmod.helper.__defaults__ = (-0.5,)
    check_grad(gmod.f_helper_default, x)


def test_module_attribute_of_a_user_module(tmp_path):
    load_module(tmp_path, "fc_sound_consts", "import numpy as np\nK = 2.0\nV = np.ones(3)\n")
    m = load_module(tmp_path, "fc_sound_user", """
        import numpy as np
        import fc_sound_consts as consts
        def f(x):
            return np.sum(x * consts.V) * consts.K
    """)
    x = rng.normal(size=3)
    check_grad(m.f, x)
    sys.modules["fc_sound_consts"].K = 5.0
    sys.modules["fc_sound_consts"].V = np.array([3.0, -1.0, 0.0])
    check_grad(m.f, x)


# ---------------------------------------------------------------------------
# class 2: defaults


def test_default_of_the_function_changed():
    def f(x, s=2.0):
        return np.sum(x ** 2) * s
    x = rng.normal(size=3)
    check_grad(f, x)
    f.__defaults__ = (5.0,)
    check_grad(f, x)


def test_array_default_is_read_at_run_time():
    def f(x, w=np.array([1.0, 2.0, 3.0])):
        return np.sum(x * w)
    x = rng.normal(size=3)
    check_grad(f, x)
    f.__defaults__[0][:] = [-1.0, 0.0, 7.0]
    check_grad(f, x)
    f.__defaults__ = (np.array([4.0, 4.0, -4.0]),)
    check_grad(f, x)


def test_keyword_only_default_changed():
    def f(x, *, p=2):
        return np.sum(x ** p)
    x = rng.normal(size=3)
    check_grad(f, x)
    f.__kwdefaults__ = {"p": 3}
    check_grad(f, x)


def test_default_of_forward_changed():
    @fc.net
    class Scale:
        def __init__(self):
            self.W = rng.normal(size=(3, 3))

        def forward(self, x, s=2.0):
            return (x @ self.W) * s
    m = Scale()
    x = rng.normal(size=(2, 3))
    assert np.allclose(m(x), x @ m.W.value * 2.0)
    Scale.forward.__defaults__ = (-3.0,)
    assert np.allclose(m(x), x @ m.W.value * -3.0)


# ---------------------------------------------------------------------------
# class 2: attributes of models


@fc.net
class Configured:
    def __init__(self):
        self.W = rng.normal(size=(3, 3))
        self.cfg = {"s": 2.0, "shift": rng.normal(size=3)}
        self.opts = types.SimpleNamespace(t=1.5, bias=rng.normal(size=3), act=np.tanh)

    def forward(self, x):
        h = (x @ self.W + self.cfg["shift"]) * self.cfg["s"]
        return self.opts.act(h * self.opts.t + self.opts.bias)


def configured_numpy(m, x):
    h = (x @ m.W.value + m.cfg["shift"]) * m.cfg["s"]
    return m.opts.act(h * m.opts.t + m.opts.bias)


@pytest.mark.parametrize("change", [
    lambda m: m.cfg.__setitem__("s", -1.0),
    lambda m: m.cfg.__setitem__("shift", rng.normal(size=3)),
    lambda m: m.cfg["shift"].__imul__(3.0),
    lambda m: setattr(m.opts, "t", 0.25),
    lambda m: setattr(m.opts, "bias", rng.normal(size=3)),
    lambda m: setattr(m.opts, "act", np.sin),
    lambda m: setattr(m, "cfg", {"s": 4.0, "shift": np.zeros(3)}),
], ids=["dict-scalar", "dict-array", "dict-array-inplace", "obj-scalar", "obj-array", "obj-fn", "dict-rebound"])
def test_model_attribute_changed_in_place(change):
    m = Configured()
    x = rng.normal(size=(4, 3))
    assert np.allclose(m(x), configured_numpy(m, x))
    change(m)
    assert np.allclose(m(x), configured_numpy(m, x))
    # the gradient too, by finite differences of the NumPy version
    _, back = m.pullback(x)
    gx = back(np.ones((4, 3)))
    assert np.allclose(gx, numgrad(lambda z: np.sum(configured_numpy(m, z)), x), atol=1e-6)


def test_list_attribute_appended():
    @fc.net
    class Steps:
        def __init__(self):
            self.scales = [1.0, 2.0]

        def forward(self, x):
            for s in self.scales:
                x = np.sin(x) * s
            return x
    m = Steps()
    x = rng.normal(size=(2, 3))

    def ref(x):
        for s in m.scales:
            x = np.sin(x) * s
        return x
    assert np.allclose(m(x), ref(x))
    m.scales.append(-3.0)
    assert np.allclose(m(x), ref(x))
    m.scales[0] = 0.5
    assert np.allclose(m(x), ref(x))


def test_class_attribute_changed():
    @fc.net
    class WithClassConst:
        K = 2.0

        def __init__(self):
            self.W = rng.normal(size=(3, 3))

        def forward(self, x):
            return x @ self.W * self.K
    m = WithClassConst()
    x = rng.normal(size=(2, 3))
    assert np.allclose(m(x), x @ m.W.value * 2.0)
    WithClassConst.K = -1.5
    assert np.allclose(m(x), x @ m.W.value * -1.5)


def test_function_attribute_closures_of_one_def():
    def scaled(k):
        return lambda z: z * k

    @fc.net
    class Act:
        def __init__(self, act):
            self.act = act

        def forward(self, x):
            return self.act(x)
    x = rng.normal(size=(2, 3))
    m = Act(scaled(2.0))
    assert np.allclose(m(x), 2 * x)
    m.act = scaled(-4.0)
    assert np.allclose(m(x), -4 * x)
    assert np.allclose(Act(scaled(7.0))(x), 7 * x)


def test_grad_of_a_function_of_a_model_with_a_dict_attribute():
    m = Configured()
    x = rng.normal(size=(2, 3))

    def f(m, x):
        return np.sum(m(x) * m.cfg["s"])
    v1, _ = fc.grad(f, m, x)
    assert np.allclose(v1, np.sum(configured_numpy(m, x) * m.cfg["s"]))
    m.cfg["s"] = -2.5
    v2, (_, gx) = fc.grad(f, m, x)
    assert np.allclose(v2, np.sum(configured_numpy(m, x) * m.cfg["s"]))
    assert np.allclose(gx, numgrad(lambda z: np.sum(configured_numpy(m, z) * m.cfg["s"]), x), atol=1e-6)


# ---------------------------------------------------------------------------
# class 2: Class.forward, methods, the forward's closure


def test_class_forward_reassigned_after_instances_compiled():
    @fc.net
    class Re:
        def __init__(self):
            self.W = rng.normal(size=(3, 3))

        def forward(self, x):
            return np.tanh(x @ self.W)
    m = Re()
    x = rng.normal(size=(2, 3))
    assert np.allclose(m(x), np.tanh(x @ m.W.value))

    def forward(self, x):
        return np.sin(x @ self.W) * 3
    Re.forward = forward
    assert np.allclose(m(x), np.sin(x @ m.W.value) * 3)
    assert np.allclose(Re()(x).shape, (2, 3))
    _, back = m.pullback(x)
    gx = back(np.ones((2, 3)))
    assert np.allclose(gx, numgrad(lambda z: np.sum(np.sin(z @ m.W.value) * 3), x), atol=1e-6)


def test_class_forward_reassigned_to_a_closure_of_the_same_def():
    def make(k):
        def forward(self, x):
            return x @ self.W * k
        return forward

    @fc.net
    class Re2:
        def __init__(self):
            self.W = rng.normal(size=(3, 3))
        forward = make(2.0)
    m = Re2()
    x = rng.normal(size=(2, 3))
    assert np.allclose(m(x), x @ m.W.value * 2.0)
    Re2.forward = make(-5.0)
    assert np.allclose(m(x), x @ m.W.value * -5.0)


def test_helper_method_reassigned():
    @fc.net
    class Helped:
        def __init__(self):
            self.W = rng.normal(size=(3, 3))

        def act(self, h):
            return np.tanh(h)

        def forward(self, x):
            return self.act(x @ self.W)
    m = Helped()
    x = rng.normal(size=(2, 3))
    assert np.allclose(m(x), np.tanh(x @ m.W.value))
    Helped.act = lambda self, h: h ** 2
    assert np.allclose(m(x), (x @ m.W.value) ** 2)


def test_forward_closure_cell_rebound():
    def factory():
        scale = np.array([1.0, 2.0, 3.0])
        k = 2

        @fc.net
        class Cl:
            def __init__(self):
                self.W = rng.normal(size=(3, 3))

            def forward(self, x):
                return (x @ self.W) * scale * k

        def set_values(s, kk):
            nonlocal scale, k
            scale, k = s, kk
        return Cl, set_values
    Cl, set_values = factory()
    m = Cl()
    x = rng.normal(size=(2, 3))
    assert np.allclose(m(x), (x @ m.W.value) * np.array([1.0, 2.0, 3.0]) * 2)
    s = rng.normal(size=3)
    set_values(s, 3)
    assert np.allclose(m(x), (x @ m.W.value) * s * 3)
    _, back = m.pullback(x)
    assert np.allclose(back(np.ones((2, 3))), numgrad(lambda z: np.sum((z @ m.W.value) * s * 3), x), atol=1e-6)


def test_model_reading_a_global_array_of_its_module(tmp_path):
    mod = load_module(tmp_path, "fc_sound_model_glob", """
        import numpy as np
        import flux_compile as fc
        SHIFT = np.array([1.0, 2.0, 3.0])
        GAIN = 2.0

        @fc.net
        class G:
            def __init__(self):
                self.W = np.eye(3)

            def forward(self, x):
                return np.tanh(x @ self.W + SHIFT) * GAIN
    """)
    m = mod.G()
    x = rng.normal(size=(2, 3))
    assert np.allclose(m(x), np.tanh(x + mod.SHIFT) * 2.0)
    mod.SHIFT = np.array([-1.0, 0.0, 4.0])
    mod.GAIN = 0.5
    assert np.allclose(m(x), np.tanh(x + mod.SHIFT) * 0.5)
    assert "SHIFT" in fc.source(m, "forward")        # read by name, at run time
    shapes = fc.shapes(m, x)
    assert "float64[2, 3]" in shapes


# ---------------------------------------------------------------------------
# class 2: the source file edited after import


def test_function_source_edited_after_import_is_a_clear_error(tmp_path):
    mod = load_module(tmp_path, "fc_sound_edit_fn", """
        import numpy as np
        def f(x):
            return np.sum(x * 2)
    """)
    edit_file(tmp_path / "fc_sound_edit_fn.py", """
        import numpy as np
        def f(x):
            return np.sum(x * 3)
    """)
    with pytest.raises(fc.CompileError) as err:
        fc.grad(mod.f, np.ones(3))
    assert "edited after it was imported" in str(err.value)
    assert "reload" in str(err.value)
    assert err.value.filename.endswith("fc_sound_edit_fn.py")
    sys.path.insert(0, str(tmp_path))
    try:
        mod = importlib.reload(mod)               # the advice works
    finally:
        sys.path.remove(str(tmp_path))
    value, (g,) = fc.grad(mod.f, np.ones(3))
    assert np.isclose(value, 9.0) and np.allclose(g, 3.0)


def test_model_source_edited_after_import_is_a_clear_error(tmp_path):
    src = """
        import numpy as np
        import flux_compile as fc

        @fc.net
        class E:
            def __init__(self):
                self.W = np.eye(2)

            def forward(self, x):
                return x @ self.W * {k}
    """
    mod = load_module(tmp_path, "fc_sound_edit_model", src.format(k=2))
    m = mod.E()
    edit_file(tmp_path / "fc_sound_edit_model.py", src.format(k=5))
    with pytest.raises(fc.CompileError, match="edited after it was imported"):
        m(np.ones((1, 2)))


def test_unedited_sources_compile(tmp_path):
    """No false alarm: nested functions, methods using super(), multi-line docstrings, decorators."""
    mod = load_module(tmp_path, "fc_sound_unedited", '''
        from __future__ import annotations
        import functools
        import numpy as np
        import flux_compile as fc

        def deco(f):
            @functools.wraps(f)
            def wrapper(*a):
                return f(*a)
            return wrapper

        @deco
        def f(x: np.ndarray) -> float:
            """Doc
                indented."""
            return np.sum(np.tanh(x))

        class Base:
            def scale(self):
                return 2.0

        @fc.net
        class Sub(Base):
            def __init__(self):
                super().__init__()
                self.W = np.eye(3)

            def forward(self, x):
                """Multi-line
                docstring."""
                def inner(z):
                    return z * 2
                return inner(x @ self.W)
    ''')
    x = rng.normal(size=3)
    check_grad(mod.f, x)
    assert np.allclose(mod.Sub()(x[None]), 2 * x[None])


# ---------------------------------------------------------------------------
# class 6: bounded memory


def test_closures_over_big_arrays_are_freed():
    w = np.zeros(8)
    refs = []
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(300):
            big = np.full((1 << 17,), 1.0 / (i + 1))     # 1 MB
            small = big[:8]
            f = lambda w: np.sum(w * small)             # noqa: E731 - captures a view of 1 MB
            value, (g,) = fc.grad(f, w + 1.0)
            assert np.isclose(value, np.sum((w + 1.0) * small)) and np.allclose(g, small)
            refs.append(weakref.ref(big))
        del big, small, f
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert sum(r() is not None for r in refs) == 0
    assert grown < 20 * 2 ** 20, f"{grown / 2 ** 20:.0f} MB kept"


def test_dropped_model_classes_are_freed():
    refs = []
    x = rng.normal(size=(2, 3))
    for i in range(20):
        @fc.net
        class Tmp:
            def __init__(self):
                self.W = np.eye(3) * (i + 1)

            def forward(self, x):
                return x @ self.W
        m = Tmp()
        assert np.allclose(m(x), x * (i + 1))
        m.pullback(x)[1](np.ones((2, 3)))
        refs.append((weakref.ref(Tmp), weakref.ref(m)))
    del Tmp, m
    gc.collect()
    assert sum(c() is not None or i() is not None for c, i in refs) == 0


def test_variants_per_function_are_bounded_and_recompiled_on_demand():
    x = rng.normal(size=3)

    def make(n):
        def f(x):
            y = x
            for _ in range(n):
                y = y * 1.1
            return np.sum(y)
        return f
    for n in range(100):
        check_grad(make(n), x)
    cache = fc_cache._function_cache(make(0))
    assert cache.count <= fc_cache.MAX_VARIANTS
    check_grad(make(0), x)               # evicted long ago: compiled again, correctly


def test_variants_per_model_are_bounded():
    @fc.net
    class Loop:
        def __init__(self):
            self.W = np.eye(3) * 0.5

        def forward(self, x, n):
            for _ in range(n):
                x = x @ self.W
            return x
    m = Loop()
    x = rng.normal(size=(2, 3))
    for n in range(80):
        assert np.allclose(m(x, n), x * 0.5 ** n)
    assert len(m.__dict__["_fc_compiled"]) <= fc_cache.MAX_VARIANTS
    assert fc_cache._class_caches[Loop].count <= fc_cache.MAX_VARIANTS
    assert np.allclose(m(x, 1), x * 0.5)


def test_branch_variants_are_bounded():
    def f(x, k):
        y = x
        for i in range(k):
            if np.sum(y) > i:
                y = y * 0.5
            else:
                y = y + 1.0
        return np.sum(y)
    c = None
    for i in range(60):
        x = rng.normal(size=3) * 5
        value, (g, _) = fc.grad(f, x, 6)
        assert np.isclose(value, f(x, 6))
        assert np.allclose(g, numgrad(lambda z: f(z, 6), x), atol=1e-5)
        c = fc_cache.compile_function(f, (x, 6))
    assert len(c.alternatives) <= fc_cache.MAX_VARIANTS


def test_guards_are_a_plain_list():
    """``c.guards`` is a list of (path, kind, expected), for the disk cache to persist."""
    a = np.ones(3)
    f = lambda x: np.sum(x * a) * 2.0          # noqa: E731
    c = fc_cache.compile_function(f, (np.ones(3),))
    assert isinstance(c.guards, list)
    assert all(isinstance(p, tuple) and isinstance(k, str) for p, k, _ in c.guards)
    assert c.free_paths == [(("cell", 0, "a"),)]


# ---------------------------------------------------------------------------
# more shapes of the same classes


def test_captured_array_decides_a_branch():
    x = rng.normal(size=3)
    for sign in (1.0, -1.0, 1.0, -1.0):
        a = sign * np.abs(rng.normal(size=3))

        def f(x):
            if np.sum(a) > 0:
                return np.sum(np.sin(x) * a)
            return np.sum(np.cos(x) * a)
        check_grad(f, x)


def test_captured_list_of_arrays():
    x = rng.normal(size=3)
    for n in (2, 3, 3, 1):
        ws = [rng.normal(size=3) for _ in range(n)]
        check_grad(lambda x: sum(np.sum(np.tanh(x * w)) for w in ws), x)


def test_captured_shape_tuple():
    x = rng.normal(size=6)
    for shape in ((2, 3), (3, 2), (6, 1)):
        check_grad(lambda x: np.sum(np.tanh(x.reshape(shape))[0]), x)


def test_global_helper_closure_rebound(gmod):
    def make(a):
        def scaled(z):
            return z * a
        return scaled
    gmod.act = make(np.array([1.0, -2.0, 3.0]))
    x = rng.normal(size=3)
    check_grad(gmod.f_fn, x)
    gmod.act = make(np.array([0.5, 0.5, -7.0]))
    check_grad(gmod.f_fn, x)


def test_dict_of_functions_mutated():
    acts = {"a": np.tanh}
    x = rng.normal(size=3)
    f = lambda x: np.sum(acts["a"](x))      # noqa: E731
    check_grad(f, x)
    acts["a"] = np.sin
    check_grad(f, x)


def test_sub_model_dict_read_by_the_parent():
    @fc.net
    class Parent:
        def __init__(self):
            self.child = Configured()

        def forward(self, x):
            return self.child(x) * self.child.cfg["s"]
    m = Parent()
    x = rng.normal(size=(2, 3))
    assert np.allclose(m(x), configured_numpy(m.child, x) * m.child.cfg["s"])
    m.child.cfg["s"] = -0.75
    assert np.allclose(m(x), configured_numpy(m.child, x) * -0.75)


def test_recurrent_model_with_a_dict_array_attribute():
    @fc.net
    class Acc:
        def __init__(self):
            self.cfg = {"g": np.array([1.0, 2.0, 3.0])}
            self.h = np.zeros((1, 3))

        def forward(self, x):
            self.h = np.tanh(self.h + x * self.cfg["g"])
            return self.h
    m = Acc()
    xs = [rng.normal(size=(1, 3)) for _ in range(3)]

    def ref(g):
        h = np.zeros((1, 3))
        out = []
        for x in xs:
            h = np.tanh(h + x * g)
            out.append(h)
        return out
    for g in (np.array([1.0, 2.0, 3.0]), np.array([-1.0, 0.5, 0.0])):
        m.cfg["g"] = g
        m.reset()
        for y, want in zip([m(x) for x in xs], ref(g)):
            assert np.allclose(y, want)


def test_user_derivative_rule_reading_globals(tmp_path):
    mod = load_module(tmp_path, "fc_sound_rule", """
        import numpy as np
        import flux_compile as fc
        K = 2.0
        G = np.array([1.0, 1.0, 1.0])

        def myfn(x):
            return x * 3.0

        @fc.diffrule(myfn)
        def _(dy, y, x):
            return dy * K * G        # deliberately not 3: shows which values the rule used

        def f(x):
            return np.sum(myfn(x))
    """)
    x = rng.normal(size=3)
    for k, g in ((2.0, None), (5.0, None), (5.0, np.array([1.0, -2.0, 3.0]))):
        mod.K = k
        if g is not None:
            mod.G = g
        value, (dx,) = fc.grad(mod.f, x)
        assert np.isclose(value, np.sum(x * 3.0))
        assert np.allclose(dx, mod.K * mod.G)


def test_primitive_rebound_to_another_closure_of_its_def(tmp_path):
    mod = load_module(tmp_path, "fc_sound_prim", """
        import numpy as np
        import flux_compile as fc

        def make(k):
            def prim(x):
                return x * k

            @fc.diffrule(prim)
            def _(dy, y, x):
                return dy * k
            return prim
        P = make(2.0)

        def f(x):
            return np.sum(P(x))
    """)
    x = rng.normal(size=3)
    for k in (2.0, -3.0, 0.5):
        mod.P = mod.make(k)
        check_grad(mod.f, x)


def test_branch_variants_each_check_their_own_guards(gmod):
    """A variant for the other branch read a global the first one did not: switching branches
    after the global changed must not reuse it."""
    pos, neg = np.abs(rng.normal(size=3)), -np.abs(rng.normal(size=3))
    for s in (2.0, 3.0, -1.0):
        gmod.S = s
        for x in (neg, pos, neg, pos):
            check_grad(gmod.f_branch, x)


def test_int_attributes_of_the_model_its_class_and_its_child():
    @fc.net
    class Child:
        def __init__(self):
            self.k = 2

        def forward(self, x):
            return x * self.k

    @fc.net
    class Reps:
        N = 2

        def __init__(self):
            self.m = 1
            self.child = Child()

        def forward(self, x):
            for _ in range(self.N + self.m + self.child.k):
                x = np.sin(x)
            return self.child(x)

    def ref(r, x):
        for _ in range(Reps.N + r.m + r.child.k):
            x = np.sin(x)
        return x * r.child.k
    r = Reps()
    x = rng.normal(size=(2, 3))
    assert np.allclose(r(x), ref(r, x))
    r.m = 3                                   # the instance's own attribute
    assert np.allclose(r(x), ref(r, x))
    Reps.N = 0                                # the class's
    assert np.allclose(r(x), ref(r, x))
    r.child.k = 4                             # a child's, read by the parent
    assert np.allclose(r(x), ref(r, x))


def test_list_of_closure_layers_replaced():
    def scale(k):
        return lambda z: z * k

    def shift(b):
        return lambda z: z + b

    @fc.net
    class Pipe:
        def __init__(self, *fns):
            self.fns = list(fns)

        def forward(self, x):
            for f in self.fns:
                x = f(x)
            return np.tanh(x)

    def ref(m, x):
        for f in m.fns:
            x = f(x)
        return np.tanh(x)
    m = Pipe(scale(2.0), shift(rng.normal(size=3)))
    x = rng.normal(size=(2, 3))
    assert np.allclose(m(x), ref(m, x))
    m.fns[0] = scale(-1.0)
    assert np.allclose(m(x), ref(m, x))
    m.fns[1] = shift(rng.normal(size=3))         # same code, another captured array
    assert np.allclose(m(x), ref(m, x))
    m.fns.append(scale(0.5))
    assert np.allclose(m(x), ref(m, x))
    _, back = m.pullback(x)
    assert np.allclose(back(np.ones((2, 3))), numgrad(lambda z: np.sum(ref(m, z)), x), atol=1e-6)


def test_tuple_literal_of_closure_attributes():
    def scale(k):
        return lambda z: z * k

    @fc.net
    class Two:
        def __init__(self):
            self.f, self.g = scale(2.0), scale(3.0)

        def forward(self, x):
            for h in (self.f, self.g):
                x = np.sin(h(x))
            return x

    def ref(m, x):
        for h in (m.f, m.g):
            x = np.sin(h(x))
        return x
    m = Two()
    x = rng.normal(size=(2, 3))
    assert np.allclose(m(x), ref(m, x))
    m.g = scale(-0.5)
    assert np.allclose(m(x), ref(m, x))


def test_zip_and_enumerate_over_closure_attributes():
    def scale(k):
        return lambda z: z * k

    @fc.net
    class Zipped:
        def __init__(self):
            self.fns = [scale(2.0), scale(3.0)]
            self.ws = (1.0, -1.0)

        def forward(self, x):
            for i, (f, w) in enumerate(zip(self.fns, self.ws)):
                x = np.sin(f(x)) * w + i
            return x

    def ref(m, x):
        for i, (f, w) in enumerate(zip(m.fns, m.ws)):
            x = np.sin(f(x)) * w + i
        return x
    m = Zipped()
    x = rng.normal(size=(2, 3))
    assert np.allclose(m(x), ref(m, x))
    m.fns[1] = scale(-4.0)
    assert np.allclose(m(x), ref(m, x))


def test_dict_get_on_a_model_attribute():
    @fc.net
    class Getter:
        def __init__(self):
            self.cfg = {"s": 2.0}

        def forward(self, x):
            return x * self.cfg.get("s", 1.0)
    m = Getter()
    x = rng.normal(size=(2, 3))
    assert np.allclose(m(x), 2.0 * x)
    m.cfg["s"] = -3.0
    assert np.allclose(m(x), -3.0 * x)
    c1 = fc_cache.compile_model(m, (x,))
    m(x)
    assert fc_cache.compile_model(m, (x,)) is c1          # the guard holds between calls


def test_captured_arrays_are_named_inputs_in_the_generated_source():
    xb, yb = rng.normal(size=(4, 3)), rng.normal(size=4)
    w = rng.normal(size=3)
    text = fc.source(lambda w: loss(w, xb, yb), "forward", args=(w,))
    assert "def forward(w, xb, yb):" in text
    m = Configured()
    m(rng.normal(size=(2, 3)))
    assert "cfg_shift" in fc.source(m, "forward") and "opts_bias" in fc.source(m, "forward")


def test_numpy_scalar_global_keeps_its_dtype_and_is_guarded(tmp_path):
    mod = load_module(tmp_path, "fc_sound_npscalar", """
        import numpy as np
        C = np.float32(2.0)

        def f(x):
            return np.sum(x * C)
    """)
    x = rng.normal(size=3).astype(np.float32)
    value, (g,) = fc.grad(mod.f, x)
    assert g.dtype == np.float32 and np.allclose(g, 2.0)
    mod.C = np.float32(-0.5)
    value, (g,) = fc.grad(mod.f, x)
    assert np.isclose(value, np.sum(x * np.float32(-0.5)), rtol=1e-6) and np.allclose(g, -0.5)


def test_captured_python_floats_are_read_at_run_time():
    w = rng.normal(size=3)
    xb, yb = rng.normal(size=(5, 3)), rng.normal(size=5)
    compiled = set()
    for lam in (0.1, 0.01, 0.5, 2.0):
        f = lambda w: loss(w, xb, yb) + lam * np.sum(w ** 2)      # noqa: E731
        check_grad(f, w)
        compiled.add(id(fc_cache.compile_function(f, (w,))))
    assert len(compiled) == 1


def test_captured_float_deciding_a_branch_and_a_loop():
    x = rng.normal(size=3)
    for t in (0.7, -0.2, 2.9, 0.3, -1.0):
        def f(x):
            if t > 0:
                for _ in range(int(t) + 1):
                    x = np.sin(x) * t
                return np.sum(x)
            return np.sum(np.cos(x)) * t
        check_grad(f, x)


def test_hasattr_and_getattr_default_on_an_object_attribute():
    @fc.net
    class Opt:
        def __init__(self):
            self.opts = types.SimpleNamespace()

        def forward(self, x):
            if hasattr(self.opts, "shift"):
                x = x + self.opts.shift
            return x * getattr(self.opts, "scale", 1.0)

    def ref(m, x):
        if hasattr(m.opts, "shift"):
            x = x + m.opts.shift
        return x * getattr(m.opts, "scale", 1.0)
    m = Opt()
    x = rng.normal(size=(2, 3))
    assert np.allclose(m(x), ref(m, x))
    m.opts.scale = -2.0
    assert np.allclose(m(x), ref(m, x))
    m.opts.shift = rng.normal(size=3)
    assert np.allclose(m(x), ref(m, x))
    del m.opts.scale
    assert np.allclose(m(x), ref(m, x))
