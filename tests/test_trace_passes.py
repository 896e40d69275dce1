"""The passes the frontend applies while tracing (constant folding, unbroadcast
specialisation), one small test each (Tangent's optimization.py style), and the builtins
handler table (builtins.py). Each pass is checked against what it replaces."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import flux_compile as fc
from flux_compile import builtins as builtin_table
from flux_compile import passes, shapeinfer
from flux_compile.rules.helpers import unbroadcast


# -- constant folding -------------------------------------------------------------

def test_fold_computes_numpy_on_constants():
    assert passes.fold_constant_call(np.sqrt, [np.float64(16.0)], {}) == 4.0
    assert passes.fold_constant_call(len, [(1, 2, 3)], {}) == 3
    small = passes.fold_constant_call(np.arange, [3], {})
    np.testing.assert_array_equal(small, [0, 1, 2])


def test_fold_keeps_what_must_stay_a_call():
    assert passes.fold_constant_call(np.random.rand, [], {}) is passes.NOT_FOLDED       # impure
    assert passes.fold_constant_call(np.arange, [passes.MAX_FOLDED_ARRAY + 1], {}) is passes.NOT_FOLDED
    assert passes.fold_constant_call(np.ones, [(2, 2)], {}) is passes.NOT_FOLDED       # 2-d
    assert passes.fold_constant_call(np.reshape, [(1, 2, 3), (5,)], {}) is passes.NOT_FOLDED  # raises
    assert passes.fold_constant_call(sorted, [(3, 1)], {}) is passes.NOT_FOLDED        # not NumPy


def test_folded_constant_drives_compile_time_control_flow():
    """``n = int(np.prod(x.shape))`` folds to an int, so ``range(n)`` unrolls without a guard."""
    def f(x):
        total = x[0] * 0.0
        for i in range(int(np.prod((2, 2)))):
            total = total + x[i]
        return np.sum(total)

    x = np.arange(1.0, 6.0)
    value, (g,) = fc.grad(f, x)
    assert value == pytest.approx(1 + 2 + 3 + 4)
    np.testing.assert_array_equal(g, [1, 1, 1, 1, 0])


# -- unbroadcast specialisation ------------------------------------------------------

def test_unbroadcast_plan_same_shape_keeps_the_gradient():
    b = shapeinfer.Sym("b", nonone=True)
    assert passes.unbroadcast_plan((b, 3), (b, 3)) is passes.KEEP_AS_IS
    assert passes.unbroadcast_plan((2, 3), (2, 3)) is passes.KEEP_AS_IS


def test_unbroadcast_plan_unknown_stays_generic():
    b = shapeinfer.Sym("b", nonone=True)
    assert passes.unbroadcast_plan(None, (3,)) is None
    assert passes.unbroadcast_plan((b, 3), (b,)) is None          # a symbolic target
    assert passes.unbroadcast_plan((3,), (2, 3)) is None          # target bigger than g
    assert passes.unbroadcast_plan((4, 2, 3), (1, 3)) is None     # leading axes and ones at once


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=0, max_size=4), st.data())
def test_unbroadcast_plan_equals_unbroadcast(shape, data):
    """Whenever the plan is a sum, that sum is what the generic unbroadcast computes."""
    lead = data.draw(st.integers(0, 2))
    want = tuple(data.draw(st.sampled_from([1, d])) for d in shape)
    have = tuple(data.draw(st.integers(1, 3)) for _ in range(lead)) + tuple(shape)
    g = np.random.default_rng(len(have)).normal(size=have)
    plan = passes.unbroadcast_plan(have, want)
    if plan is passes.KEEP_AS_IS:
        assert have == want
    elif plan is not None:
        np.testing.assert_allclose(np.sum(g, **plan), unbroadcast(g, want), rtol=1e-12, atol=1e-12)


def test_affine_backward_uses_the_plain_sum():
    m = fc.Affine(3, 2)
    x = np.random.default_rng(1).normal(size=(5, 3))
    m.back(np.ones((5, 2)), x)
    text = fc.source(m, "backward")
    assert "keepdims=True" in text and "unbroadcast(" not in text
    np.testing.assert_allclose(m.b.grad, np.full((1, 2), 5.0))


# -- the builtins table ---------------------------------------------------------------

def test_every_builtin_has_one_handler_per_table():
    for table in (builtin_table.BEFORE_RULES, builtin_table.WITHOUT_RULES):
        assert all(callable(h) for h in table.values())
    for fn in (len, range, zip, enumerate, min, max, isinstance, sum, hasattr, getattr, np.asarray):
        assert fn in builtin_table.WITHOUT_RULES, fn


def test_dispatch_leaves_other_functions_alone():
    assert builtin_table.dispatch(builtin_table.WITHOUT_RULES, None, np.tanh, [], {}, None) \
        is builtin_table.NOT_HANDLED
    unhashable = [1, 2]
    assert builtin_table.dispatch(builtin_table.WITHOUT_RULES, None, unhashable, [], {}, None) \
        is builtin_table.NOT_HANDLED
    assert builtin_table.alias(abs) is np.abs and builtin_table.alias(len) is len


def test_builtins_in_forward_match_python():
    @fc.net
    class M:
        def __init__(self):
            self.layers = [fc.Affine(3, 3), fc.Affine(3, 3)]

        def forward(self, x):
            hs = [layer(x) for layer in self.layers]
            total = sum(hs)
            for i, h in enumerate(reversed(hs)):
                total = total + h * (i + 1)
            n = min(3, max(1, 2))
            return total * n + abs(x) * (not isinstance(x, tuple))

    m = M()
    x = np.random.default_rng(2).normal(size=(4, 3))
    h0, h1 = (np.asarray(x) @ lay.W.value + lay.b.value for lay in m.layers)
    expected = ((h0 + h1) + h1 * 1 + h0 * 2) * 2 + np.abs(x)
    np.testing.assert_allclose(m(x), expected, rtol=1e-12)
    fc.gradcheck(m, x)          # raises on a mismatch
