"""Issue 10, the finish: the helpers split into parts behind one public face, the shown
sections of generated source run as shown, saved shapes once per symbolic dimension."""
import numpy as np

import flux_compile as fc
from flux_compile import sourceimports
from flux_compile.rules import helpers, helpers_coverage, helpers_linalg, helpers_shape


def test_helpers_has_every_part_under_its_own_name():
    parts = helpers_shape.__all__ + helpers_linalg.__all__ + helpers_coverage.__all__
    assert len(parts) == len(set(parts)) == len(helpers.__all__)
    for name in parts:
        assert callable(getattr(helpers, name))


def test_generated_code_names_a_helper_by_its_public_face():
    for fn in (helpers.matmul_grad_a, helpers.sum_grad, helpers.svd_grad, helpers.unbroadcast):
        assert sourceimports.library_path(fn) == ("flux_compile.rules.helpers", fn.__name__)


def test_a_linalg_helper_is_imported_from_the_face_and_runs_as_shown():
    def f(a, b):
        return np.sum(np.tanh(a @ b))
    a = np.random.default_rng(0).normal(size=(2, 3, 4))
    b = np.random.default_rng(1).normal(size=(4,))
    value, (da, db) = fc.grad(f, a, b)
    text = str(fc.source(f, "all", args=(a, b)))
    assert "from flux_compile.rules.helpers import" in text and "helpers_" not in text
    ns = {}
    exec(compile(text, "<shown>", "exec"), ns)


def _run_alone(text, name):
    """Execute one shown section in a fresh namespace; returns its function."""
    ns = {}
    exec(compile(str(text), f"<shown {name}>", "exec"), ns)
    return ns[name]


def squash(v):
    return v / (1.0 + np.abs(v))


def loss_with_helper(a, b):
    h = squash(np.tanh(a @ b))
    return np.sum(h * h) + np.linalg.norm(a)


def test_each_shown_section_of_a_function_runs_as_shown():
    """``fc.source(f, which)`` for each section, executed alone, gives fc.grad's numbers, and
    those agree with autograd."""
    import autograd
    import autograd.numpy as anp
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(3, 4)), rng.normal(size=(4, 2))
    value, (da, db) = fc.grad(loss_with_helper, a, b)
    forward = _run_alone(fc.source(loss_with_helper, "forward", args=(a, b)), "forward")
    forward_train = _run_alone(fc.source(loss_with_helper, "forward_train", args=(a, b)), "forward_train")
    backward = _run_alone(fc.source(loss_with_helper, "backward", args=(a, b)), "backward")
    assert np.allclose(forward(a, b), value)
    y, saved = forward_train(a, b)
    got = backward(saved, np.ones_like(y))
    assert np.allclose(got[0], da) and np.allclose(got[1], db)

    def reference(a, b):
        t = anp.tanh(anp.dot(a, b))
        h = t / (1.0 + anp.abs(t))
        return anp.sum(h * h) + anp.sqrt(anp.sum(a * a))
    ra, rb = autograd.grad(reference, (0, 1))(a, b)
    assert np.allclose(got[0], ra) and np.allclose(got[1], rb)


@fc.net
class Encoder:
    def __init__(self):
        self.fc1 = fc.Dense(3, 5, act=np.tanh)
        self.fc2 = fc.Affine(5, 2)

    def forward(self, x):
        return fc.softmax(self.fc2(squash(self.fc1(x))))


def test_each_shown_section_of_a_model_with_submodels_runs_as_shown():
    m = Encoder()
    x = np.random.default_rng(4).normal(size=(6, 3))
    dy = np.random.default_rng(5).normal(size=(6, 2))
    y, back = m.pullback(x)
    dx = back(dy)
    grads = {k: p.grad.copy() for k, p in dict(fc.named_params(m)).items()}
    m.zero_grad()
    shown = {which: fc.source(m, which, inputs=(x,)) for which in ("forward", "backward")}
    for which, text in shown.items():
        lines = str(text).splitlines()
        body = lines.index(next(line for line in lines if line.startswith("def ")))
        assert all(line.startswith(("#", "import ", "from ")) or not line for line in lines[:body]), text
    forward = _run_alone(shown["forward"], "forward")
    assert np.allclose(forward(m, x), y)
    out, saved = _compiled_of(m, x).forward_train(m, x)
    backward = _run_alone(shown["backward"], "backward")
    got = backward(m, saved, dy)
    assert np.allclose(got, dx)
    for k, p in dict(fc.named_params(m)).items():
        assert np.allclose(p.grad, grads[k]), k


def _compiled_of(m, x):
    from flux_compile.cache import compile_model
    return compile_model(m, (x,))
