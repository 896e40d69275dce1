"""Messages for common habits (issue 15, item 2): each names the user's file:line and says
what to do. Models live in a temporary module so file and line numbers are exact."""
import importlib.util
import textwrap

import numpy as np
import pytest

import flux_compile as fc

SOURCE = '''
import numpy as np
import flux_compile as fc


class Plain:                        # forgot @fc.net
    def __init__(self):
        self.W = np.ones((3, 2))

    def forward(self, x):
        return x @ self.W


class CallableOnly:                 # forgot @fc.net, computes in __call__
    def __call__(self, x):
        return x * 2.0


@fc.net
class CallsCallable:
    def __init__(self):
        self.inner = CallableOnly()

    def forward(self, x):
        return self.inner(x)


@fc.net
class Base:
    def __init__(self):
        self.W = fc.initn(3, 2)

    def forward(self, x):
        return x @ self.W


@fc.net
class UsesSuper(Base):
    def forward(self, x):
        return np.tanh(super().forward(x))


@fc.net
class UsesParentByName(Base):
    def forward(self, x):
        return np.tanh(Base.forward(self, x))


@fc.net
class TorchSize:
    def __init__(self):
        self.W = fc.initn(3, 2)

    def forward(self, x):
        n = x.size(0)
        return x @ self.W / n


@fc.net
class CallsUnmarked:
    def __init__(self):
        self.inner = Plain()

    def forward(self, x):
        return self.inner(x)


@fc.net
class CallsUnmarkedForward:
    def __init__(self):
        self.inner = Plain()

    def forward(self, x):
        return self.inner.forward(x)


@fc.net
class FloatInForward:
    def __init__(self):
        self.W = fc.initn(3, 2)

    def forward(self, x):
        return np.tanh(x @ self.W) * float(np.sum(x * x))


@fc.net
class StaticAssert:
    def __init__(self):
        self.W = fc.initn(3, 2)

    def forward(self, x):
        assert x.shape[1] == 3, "need 3 features"
        assert x.ndim == 2
        return x @ self.W


@fc.net
class DataAssert:
    def __init__(self):
        self.W = fc.initn(3, 2)

    def forward(self, x):
        assert x.sum() > 0
        return x @ self.W


def call_with_a_list(m):
    return m([[1.0, 2.0, 3.0]])
'''


@pytest.fixture(scope="module")
def mod(tmp_path_factory):
    path = tmp_path_factory.mktemp("messages") / "user_models.py"
    path.write_text(textwrap.dedent(SOURCE))
    spec = importlib.util.spec_from_file_location("user_models_messages", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.PATH = str(path)
    return module


def line_of(mod, text, after=""):
    """The line number of the first line holding ``text`` after the line holding ``after``."""
    lines = open(mod.PATH).read().splitlines()
    start = next(i for i, line in enumerate(lines) if after in line)
    return next(i for i, line in enumerate(lines, 1) if i > start and text in line)


def compile_error(mod, thunk, at, after=""):
    with pytest.raises(fc.CompileError) as info:
        thunk()
    err = info.value
    assert err.filename == mod.PATH and err.lineno == line_of(mod, at, after), str(err)
    assert err.hint, str(err)
    return err


X = np.random.default_rng(0).normal(size=(4, 3))


def test_super_forward_says_call_the_parent_by_name(mod):
    err = compile_error(mod, lambda: mod.UsesSuper()(X), "super().forward(x)")
    assert "super()" in err.msg and "Base.forward(self, x)" in err.hint
    assert "np.forward" not in str(err)
    # and what the hint suggests works, with the right gradient
    m = mod.UsesParentByName()
    np.testing.assert_allclose(m(X), np.tanh(X @ m.W.value))
    fc.gradcheck(m, X)


def test_torch_size_says_it_is_an_attribute(mod):
    err = compile_error(mod, lambda: mod.TorchSize()(X), "x.size(0)")
    assert "attribute" in err.msg and "x.shape[0]" in err.hint
    assert "store functions" not in str(err)


@pytest.mark.parametrize("cls, at", [("CallsUnmarked", "return self.inner(x)"),
                                     ("CallsCallable", "return self.inner(x)"),
                                     ("CallsUnmarkedForward", "return self.inner.forward(x)")])
def test_sub_model_without_net_says_decorate_it(mod, cls, at):
    err = compile_error(mod, lambda: getattr(mod, cls)()(X), at, after=f"class {cls}:")
    assert ("Plain" in err.msg or "CallableOnly" in err.msg) and "@fc.net" in err.msg and "@fc.net" in err.hint
    assert "not callable" not in err.msg and "derivative rule" not in err.msg


def test_python_list_input_says_pass_an_array(mod):
    err = compile_error(mod, lambda: mod.call_with_a_list(fc.Affine(3, 2)), "return m([[1.0, 2.0, 3.0]])")
    assert "Python list" in err.msg and "np.asarray" in err.hint
    assert "ndim" not in str(err) and "derivative rule" not in str(err)
    with pytest.raises(fc.CompileError, match="Python list"):
        fc.Affine(3, 2).back(np.ones((1, 2)), [[1.0, 2.0, 3.0]])


def test_float_in_forward_works_in_pullback(mod):
    m = mod.FloatInForward()
    y, back = m.pullback(X)
    s = float(np.sum(X * X))
    np.testing.assert_allclose(y, np.tanh(X @ m.W.value) * s)
    dy = np.random.default_rng(1).normal(size=y.shape)
    dx = back(dy)
    # reference by central differences in float64
    def f(x):
        return np.sum(np.tanh(x @ m.W.value) * float(np.sum(x * x)) * dy)
    eps, ref = 1e-6, np.zeros_like(X)
    for i in np.ndindex(X.shape):
        d = np.zeros_like(X)
        d[i] = eps
        ref[i] = (f(X + d) - f(X - d)) / (2 * eps)
    np.testing.assert_allclose(dx, ref, rtol=1e-6, atol=1e-8)


def test_static_assert_is_checked_when_compiling(mod):
    m = mod.StaticAssert()
    np.testing.assert_allclose(m(X), X @ m.W.value)
    fc.gradcheck(m, X)
    err = compile_error(mod, lambda: m(np.ones((4, 5))), 'assert x.shape[1] == 3')
    assert "need 3 features" in err.msg
    np.testing.assert_allclose(m(X[:2]), X[:2] @ m.W.value)     # another batch size still runs


def test_data_dependent_assert_says_what_is_allowed(mod):
    err = compile_error(mod, lambda: mod.DataAssert()(np.abs(X)), "assert x.sum() > 0")
    assert "data" in err.msg and "shape" in err.hint
