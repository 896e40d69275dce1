"""Issue 10, the finish: the helpers split into parts behind one public face, the shown
sections of generated source run as shown, saved shapes once per symbolic dimension."""
import numpy as np

import flux_compile as fc
from flux_compile import codegen
from flux_compile.rules import helpers, helpers_coverage, helpers_linalg, helpers_shape


def test_helpers_has_every_part_under_its_own_name():
    parts = helpers_shape.__all__ + helpers_linalg.__all__ + helpers_coverage.__all__
    assert len(parts) == len(set(parts)) == len(helpers.__all__)
    for name in parts:
        assert callable(getattr(helpers, name))


def test_generated_code_names_a_helper_by_its_public_face():
    for fn in (helpers.matmul_grad_a, helpers.sum_grad, helpers.svd_grad, helpers.unbroadcast):
        assert codegen._library_path(fn) == ("flux_compile.rules.helpers", fn.__name__)


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
