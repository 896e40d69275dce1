"""Loops as IR regions: ``for t in range(...)`` over a run-time or long trip count is compiled
once into a real loop (forward, training forward, backward), whatever the trip count.

Every gradient is checked against central finite differences in float64 and against
autograd running the same function."""
import gc
import sys
import tracemalloc

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad as ag_grad

import flux_compile as fc
from numeric import numgrad
from flux_compile import cache as fc_cache

rng = np.random.default_rng(7)


def check(f, f_ag, *args, argnums=None):
    """fc.grad of ``f`` against autograd's gradient of ``f_ag`` and central differences."""
    argnums = range(len(args)) if argnums is None else argnums
    value, grads = fc.grad(f, *[a.copy() for a in args])
    assert np.allclose(value, f(*[a.copy() for a in args]))
    inference = fc_cache.compile_function(f, args).forward       # the forward without saves
    assert np.allclose(inference(*[a.copy() for a in args]), value)
    for i in argnums:
        want = ag_grad(f_ag, i)(*args)
        assert np.allclose(grads[i], want, atol=1e-8), i

        def fi(z, i=i):
            a = list(args)
            a[i] = z
            return f(*a)
        assert np.allclose(grads[i], numgrad(fi, args[i].copy()), atol=1e-5), i
    return value, grads


def rnn(xnp):
    def f(x, Wx, Wh):
        h = xnp.zeros((x.shape[0], Wh.shape[0]))
        for t in range(x.shape[1]):
            h = xnp.tanh(x[:, t] @ Wx + h @ Wh)
        return xnp.sum(h * h)
    return f


@pytest.mark.parametrize("T", [0, 1, 2, 7, 40])
def test_rnn_over_a_data_derived_trip_count(T):
    x = rng.normal(size=(2, T, 3))
    Wx, Wh = rng.normal(size=(3, 4)), rng.normal(size=(4, 4)) * 0.5
    check(rnn(np), rnn(anp), x, Wx, Wh)


def test_rnn_source_is_one_loop_whatever_the_trip_count():
    f = rnn(np)
    Wx, Wh = rng.normal(size=(3, 4)), rng.normal(size=(4, 4)) * 0.5
    fc.grad(f, rng.normal(size=(2, 5, 3)), Wx, Wh)
    src = fc.source(f, "all", inputs=(rng.normal(size=(2, 5, 3)), Wx, Wh))
    assert "for t in range(" in src and "in reversed(h_steps):" in src and "h_steps.append(" in src
    assert "Retrace" not in src
    assert "# line" in src


def static_long(xnp):
    def f(x, w):
        acc = x
        for i in range(50):             # a constant trip count above the unrolling limit
            acc = xnp.sin(acc * w) + 0.01 * i
        return xnp.sum(acc)
    return f


def test_static_long_range_is_a_region_with_correct_gradients():
    x, w = rng.normal(size=3), rng.normal(size=3)
    check(static_long(np), static_long(anp), x, w)
    src = fc.source(static_long(np), "backward", inputs=(x, w))
    assert "reversed(" in src


def nested(xnp):
    def f(x, W):
        acc = x
        for i in range(x.shape[0]):
            for j in range(W.shape[0]):
                acc = xnp.tanh(acc @ W + x[i])
        return xnp.sum(acc)
    return f


def test_nested_loops():
    x, W = rng.normal(size=(3, 4)), rng.normal(size=(4, 4)) * 0.4
    check(nested(np), nested(anp), x, W)


def swapping(xnp):
    def f(x, y):
        a, b = x, y
        for t in range(x.shape[0] * 20):
            a, b = b, xnp.tanh(a + 0.5 * b)
        return xnp.sum(a * b)
    return f


def late_reader(xnp):
    def f(x, W):
        h, c, d = x, x, x
        for t in range(x.shape[0] * 12):
            c = c + xnp.sin(h)
            h = xnp.tanh(h @ W)
            d = d + xnp.sin(h) + c
        return xnp.sum(h + c * d)
    return f


def test_old_and_new_values_of_a_carried_variable_in_one_trip():
    x, W = rng.normal(size=3), rng.normal(size=(3, 3)) * 0.5
    check(late_reader(np), late_reader(anp), x, W)


def test_carried_values_swapped_each_trip():
    x, y = rng.normal(size=3), rng.normal(size=3)
    check(swapping(np), swapping(anp), x, y)


def rows(xnp):
    def f(x, W):
        n = x.shape[0]
        h = xnp.zeros((n, W.shape[1]))
        acc = 0.0
        for t in range(n):
            acc = acc + xnp.sum(xnp.tanh(x[t] @ W) * t)
        return acc
    return f


def test_scalar_accumulator_starting_from_a_constant():
    x, W = rng.normal(size=(6, 3)), rng.normal(size=(3, 2))
    check(rows(np), rows(anp), x, W)


def test_item_assignment_inside_a_region():
    def f(x):
        y = np.zeros_like(x)
        for i in range(x.shape[0]):
            y[i] = x[i] * x[i]
        return np.sum(y * x)
    x = rng.normal(size=40)
    value, (g,) = fc.grad(f, x.copy())
    assert np.isclose(value, np.sum(x ** 3))
    assert np.allclose(g, 3 * x ** 2)


def test_float32_stays_float32():
    f = rnn(np)
    x = rng.normal(size=(2, 6, 3)).astype(np.float32)
    Wx = rng.normal(size=(3, 4)).astype(np.float32)
    Wh = (rng.normal(size=(4, 4)) * 0.5).astype(np.float32)
    value, grads = fc.grad(f, x, Wx, Wh)
    assert all(g.dtype == np.float32 for g in grads)
    want = ag_grad(rnn(anp), 2)(x.astype(float), Wx.astype(float), Wh.astype(float))
    assert np.allclose(grads[2], want, atol=1e-4)


@fc.net
class Cell:
    def __init__(self, n_in, n_h):
        self.Wx = fc.initn(n_in, n_h) * 50
        self.Wh = fc.initn(n_h, n_h) * 50
        self.b = fc.initn(1, n_h)

    def forward(self, x, h):
        return np.tanh(x @ self.Wx + h @ self.Wh + self.b)


@fc.net
class Encoder:
    def __init__(self, n_in, n_h):
        self.cell = Cell(n_in, n_h)
        self.Wo = fc.initn(n_h, 1) * 50
        self.n_h = n_h

    def forward(self, x):
        h = np.zeros((x.shape[0], self.n_h))
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
        return h @ self.Wo


@pytest.mark.parametrize("T", [0, 3, 35])
def test_sub_model_called_inside_a_loop(T):
    m = Encoder(3, 4)
    x = rng.normal(size=(2, T, 3))
    report = fc.gradcheck(m, x)
    assert report.ok


def test_model_loop_params_match_autograd():
    m = Encoder(3, 4)
    x = rng.normal(size=(2, 9, 3))
    fc.zero_grad(m) if hasattr(fc, "zero_grad") else m.zero_grad()
    y = m(x)
    m.back(np.ones_like(y), x)

    def f(Wx, Wh, b, Wo):
        h = anp.zeros((2, 4))
        for t in range(9):
            h = anp.tanh(x[:, t] @ Wx + h @ Wh + b)
        return anp.sum(h @ Wo)
    vals = [m.cell.Wx.value, m.cell.Wh.value, m.cell.b.value, m.Wo.value]
    for i, p in enumerate([m.cell.Wx, m.cell.Wh, m.cell.b, m.Wo]):
        assert np.allclose(p.grad, ag_grad(f, i)(*vals), atol=1e-8)


def test_random_trip_counts_compile_once_and_memory_stays_flat():
    @fc.net
    class RNN:
        def __init__(self):
            self.Wx = fc.initn(3, 4) * 30
            self.Wh = fc.initn(4, 4) * 30

        def forward(self, x):
            h = np.zeros((x.shape[0], 4))
            for t in range(x.shape[1]):
                h = np.tanh(x[:, t] @ self.Wx + h @ self.Wh)
            return h
    m = RNN()
    r = np.random.default_rng(3)
    m(r.normal(size=(2, 5, 3)))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(200):
        x = r.normal(size=(2, int(r.integers(2, 60)), 3))
        y, back = m.pullback(x)
        back(np.ones_like(y))
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert fc_cache._class_caches[RNN].count == 1
    assert len(m.__dict__["_fc_compiled"]) == 1
    assert after - before < 1_000_000


def test_ten_thousand_trips_at_the_default_recursion_limit():
    assert sys.getrecursionlimit() <= 1000 or True
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        def f(x):
            h = x
            for t in range(10_000):
                h = np.cos(h) * 0.5
            return np.sum(h)
        x = rng.normal(size=3)
        value, (g,) = fc.grad(f, x)
        h, d = x.copy(), np.ones(3)
        for _ in range(10_000):
            d = d * -np.sin(h) * 0.5
            h = np.cos(h) * 0.5
        assert np.isclose(value, np.sum(h))
        assert np.allclose(g, d)
    finally:
        sys.setrecursionlimit(limit)


def test_graph_prints_the_body_indented():
    f = rnn(np)
    x = rng.normal(size=(2, 4, 3))
    fc.grad(f, x, rng.normal(size=(3, 4)), rng.normal(size=(4, 4)))
    text = str(fc.graph(f, (x, rng.normal(size=(3, 4)), rng.normal(size=(4, 4)))))
    assert "for t in range(" in text and "carry h" in text
    assert "\n      " in text          # the body's nodes, indented under the loop


def test_data_dependent_if_inside_falls_back_to_unrolling_and_stays_correct():
    def f(x):
        y = x
        for i in range(x.shape[0]):
            if np.sum(y) > 0:
                y = y * 0.5
            else:
                y = y + 1.0
        return np.sum(y * y)

    def f_ag(x):
        y = x
        for i in range(x.shape[0]):
            y = y * 0.5 if anp.sum(y) > 0 else y + 1.0
        return anp.sum(y * y)
    check(f, f_ag, rng.normal(size=4))


def test_state_written_in_a_short_loop_stays_correct():
    @fc.net
    class Acc:
        def __init__(self):
            self.W = fc.initn(3, 3) * 50
            self.h = np.zeros((1, 3))

        def forward(self, x):
            for t in range(x.shape[0]):
                self.h = np.tanh(x[t:t + 1] @ self.W + self.h)
            return self.h
    m = Acc()
    assert fc.gradcheck(m, rng.normal(size=(3, 3))).ok


def halving(xnp):
    def f(x, w):
        h = x
        while xnp.sum(h * h) > 0.01:
            h = h * w
        return xnp.sum(h * x)
    return f


@pytest.mark.parametrize("scale", [0.05, 1.0, 30.0])
def test_while_on_data(scale):
    x, w = np.full(3, scale) + rng.normal(size=3) * 0.01, np.full(3, 0.9) + rng.normal(size=3) * 0.01
    check(halving(np), halving(anp), x, w)


def test_while_compiles_once_for_any_trip_count():
    f = halving(np)
    w = np.full(3, 0.8)
    for scale in (0.05, 1.0, 10.0, 100.0, 1e4):
        value, _ = fc.grad(f, np.full(3, scale), w)
        assert np.isclose(value, f(np.full(3, scale), w))
    c = fc_cache.compile_function(f, (np.ones(3), w))
    assert len(getattr(c, "alternatives", None) or [c]) == 1
    assert "    while go:" in fc.source(f, "forward", inputs=(np.ones(3), w))


def test_while_with_five_thousand_trips_at_the_default_recursion_limit():
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        def f(x):
            h = x
            while np.max(h) > 1.0:
                h = h * 0.999
            return np.sum(h * h)
        x = np.full(2, 1.0) / 0.999 ** 4999.5
        value, (g,) = fc.grad(f, x)
        h, trips = x.copy(), 0
        while np.max(h) > 1.0:
            h, trips = h * 0.999, trips + 1
        assert trips == 5000
        assert np.isclose(value, np.sum(h * h))
        assert np.allclose(g, 2 * h * 0.999 ** 5000)
    finally:
        sys.setrecursionlimit(limit)


def test_an_infinite_while_is_compiled_without_running_it():
    def f(x):
        while np.sum(x) > 0:
            x = x + 1.0
        return np.sum(x)
    c = fc_cache.compile_function(f, (np.ones(3),))       # returns: the loop is not run
    assert "while go" in c.source


def over_rows(xnp):
    def f(x, W):
        h = xnp.zeros(W.shape[1])
        for row in x:                   # the first axis of an array, its length from data
            h = xnp.tanh(row @ W + h)
        return xnp.sum(h * h)
    return f


@pytest.mark.parametrize("n", [0, 1, 40])
def test_for_over_an_arrays_first_axis(n):
    x, W = rng.normal(size=(n, 3)), rng.normal(size=(3, 2))
    if n == 40:
        src = fc.source(over_rows(np), "forward", inputs=(x, W))
        assert "for t in range(" in src and "Retrace" not in src
    check(over_rows(np), over_rows(anp), x, W)


def collected(xnp, axis):
    def f(x, W):
        hs = []
        h = xnp.tanh(x[0])
        for t in range(x.shape[0]):
            h = xnp.tanh(h @ W + x[t])
            hs.append(h * 2.0)
        H = xnp.stack(hs, axis=axis)
        return xnp.sum(H * H * xnp.arange(H.shape[1]))
    return f


@pytest.mark.parametrize("axis", [0, 1])
def test_list_filled_in_a_loop_then_stacked(axis):
    x, W = rng.normal(size=(37, 3)), rng.normal(size=(3, 3)) * 0.5
    check(collected(np, axis), collected(anp, axis), x, W)
    src = fc.source(collected(np, axis), "all", inputs=(x, W))
    assert ".append(" in src and "np.stack(" in src and "[::-1]" in src


@fc.net
class AllStates:
    def __init__(self):
        self.Wx = fc.initn(3, 4) * 40
        self.Wh = fc.initn(4, 4) * 40

    def forward(self, x):
        h = np.zeros((x.shape[0], 4))
        hs = []
        for t in range(x.shape[1]):
            h = np.tanh(x[:, t] @ self.Wx + h @ self.Wh)
            hs.append(h)
        return np.stack(hs, axis=1)


def test_model_returning_every_hidden_state():
    m = AllStates()
    for T in (3, 36):
        assert fc.gradcheck(m, rng.normal(size=(2, T, 3))).ok
    assert fc_cache._class_caches[AllStates].count == 1


@pytest.mark.parametrize("seed", range(12))
def test_fuzzed_programs_with_loop_regions(seed):
    """tests/fuzzgen.py's loops group: random programs with region loops (shape-derived and
    long trip counts, carried accumulators, lists stacked after the loop) against NumPy,
    autograd and finite differences."""
    import fuzzgen
    prog = fuzzgen.generate(seed, fuzzgen.GROUPS["loops"])
    result = fuzzgen.check(prog)
    assert result.outcome == "ok", result.message


def invariant_work(xnp):
    def f(x, W):
        h = x[0]
        for t in range(x.shape[0]):
            h = xnp.tanh(h @ (W.T * 2.0) + x[t])
        return xnp.sum(h)
    return f


def test_loop_invariant_work_is_hoisted_before_the_loop():
    x, W = rng.normal(size=(40, 3)), rng.normal(size=(3, 3)) * 0.4
    check(invariant_work(np), invariant_work(anp), x, W)
    src = fc.source(invariant_work(np), "forward", inputs=(x, W))
    before, loop = src.split("\n    for t in range(")
    code = [line for line in loop.splitlines() if not line.strip().startswith("#")]
    assert "= W.T * 2.0" in before and not any("W.T" in line for line in code)


@fc.net
class Shrink:
    def __init__(self):
        self.W = fc.initn(3, 3) * 40

    def forward(self, x):
        h = x @ self.W
        while np.max(np.abs(h)) > 1.0:
            h = h * 0.5
        hs = []
        for t in range(x.shape[0] + 40):
            h = np.tanh(h + 0.1)
            hs.append(h)
        return np.stack(hs, axis=1)


def test_shapes_runs_while_and_for_regions():
    m = Shrink()
    x = rng.normal(size=(2, 3)) * 100
    text = str(fc.shapes(m, x))
    assert "loop(" in text
    assert fc.gradcheck(m, x).ok


def test_while_whose_test_is_a_carried_value_itself():
    def f(x, w):
        n = np.sum(x * 0.0) + 6.0
        h = x
        while n:                        # the flag's first value is n itself
            h = h * w
            n = n - 1.0
        return np.sum(h)
    x, w = rng.normal(size=3), rng.normal(size=3)
    value, (gx, gw) = fc.grad(f, x, w)
    assert np.isclose(value, np.sum(x * w ** 6))
    assert np.allclose(gx, w ** 6) and np.allclose(gw, 6 * x * w ** 5)


def branchy(xnp):
    """An if/elif/else on data inside a loop whose trip count comes from a shape: the
    branch pattern changes with the data."""
    def f(x, s):
        y = x
        acc = 0.0
        for i in range(s.shape[0]):
            if xnp.sum(y) > s[i]:
                y = y * 0.5 - s[i]
                acc = acc + xnp.sum(y * y)
            elif xnp.max(y) > 0.3:
                y = xnp.sin(y) + s[i]
            else:
                y = xnp.tanh(y * 1.5) + 0.2
        return xnp.sum(y * y) + acc
    return f


def one_sided(xnp):
    """An if without else, a name assigned in one branch only, and a nested if."""
    def f(x, s):
        y = x
        for i in range(s.shape[0]):
            if s[i] > 0:
                y = y * s[i]
                if xnp.sum(y) < 0:
                    y = -y
            y = xnp.sin(y)
        return xnp.sum(y)
    return f


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("make", [branchy, one_sided])
def test_if_on_data_inside_a_loop_region_matches_autograd_and_differences(make, seed):
    r = np.random.default_rng(seed)
    check(make(np), make(anp), r.normal(size=5), r.normal(size=40))


def test_if_inside_a_loop_is_one_region_without_guards():
    f = branchy(np)
    x, s = rng.normal(size=5), rng.normal(size=40)
    fc.grad(f, x, s)
    text = str(fc.graph(f, (x, s)))
    assert text.count("loop(") == 1 and "cond(" in text and "choose(" not in text and "guard(" not in text


def test_if_inside_a_loop_keeps_float32():
    f = branchy(np)
    x, s = rng.normal(size=5), rng.normal(size=40)
    value, grads = fc.grad(f, x.astype(np.float32), s.astype(np.float32))
    assert all(g.dtype == np.float32 for g in grads)
    for i in range(2):
        want = ag_grad(branchy(anp), i)(x.astype(np.float32).astype(float), s.astype(np.float32).astype(float))
        assert np.allclose(grads[i], want, rtol=1e-3, atol=1e-3)


def test_random_branch_patterns_compile_once_and_memory_stays_flat():
    @fc.net
    class Gated:
        def __init__(self):
            self.W = fc.initn(3, 3) * 60

        def forward(self, x):
            h = np.zeros((1, 3))
            for t in range(x.shape[0]):
                if np.sum(x[t]) > 0:
                    h = np.tanh(x[t:t + 1] @ self.W + h)
                else:
                    h = h * 0.9
            return h
    m = Gated()
    r = np.random.default_rng(5)
    m(r.normal(size=(40, 3)))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    patterns = set()
    for _ in range(200):
        x = r.normal(size=(40, 3))
        patterns.add(tuple(x.sum(axis=1) > 0))
        y, back = m.pullback(x)
        back(np.ones_like(y))
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(patterns) == 200
    assert fc_cache._class_caches[Gated].count == 1
    assert len(m.__dict__["_fc_compiled"]) == 1
    assert after - before < 1_000_000
    assert fc.gradcheck(m, r.normal(size=(40, 3))).ok


def jumpy(xnp):
    """break and continue under ifs on data, an accumulator, a trip count from a shape."""
    def f(x, s):
        y = x
        acc = 0.0
        for i in range(s.shape[0]):
            if xnp.sum(y * y) > 30.0:
                acc = acc + 1.0
                break
            if s[i] < -0.5:
                continue
            elif s[i] > 1.0:
                y = y - s[i]
                continue
            y = y * 1.2 + xnp.sin(s[i] * y)
            acc = acc + xnp.sum(y)
        return xnp.sum(y * y) + acc
    return f


def continue_in_while(xnp):
    def f(x, s):
        y = x
        k = 0.0
        while xnp.sum(y * y) < 50.0:
            k = k + 1.0
            if xnp.sin(k * s) > 0.5:
                continue
            y = y * 1.3 + 0.1
        return xnp.sum(y) + k
    return f


@pytest.mark.parametrize("seed", range(8))
def test_break_and_continue_in_a_loop_region_match_autograd_and_differences(seed):
    r = np.random.default_rng(seed)
    check(jumpy(np), jumpy(anp), r.normal(size=4), r.normal(size=40))


@pytest.mark.parametrize("seed", range(4))
def test_continue_in_a_while_region(seed):
    r = np.random.default_rng(seed)
    check(continue_in_while(np), continue_in_while(anp), np.abs(r.normal(size=3)) * 0.3 + 0.1,
          np.array(r.normal()))


def test_break_is_a_flag_not_a_variant_and_keeps_float32():
    f = jumpy(np)
    r = np.random.default_rng(11)
    x, s = r.normal(size=4), r.normal(size=40)
    fc.grad(f, x, s)
    text = str(fc.graph(f, (x, s)))
    assert text.count("loop(") == 1 and "<running>" in text and "guard(" not in text
    value, grads = fc.grad(f, x.astype(np.float32), s.astype(np.float32))
    assert all(g.dtype == np.float32 for g in grads)
    want = ag_grad(jumpy(anp), 0)(x.astype(np.float32).astype(float), s.astype(np.float32).astype(float))
    assert np.allclose(grads[0], want, rtol=1e-3, atol=1e-3)


def test_break_in_an_unrolled_loop_says_what_to_do():
    def f(x):
        for layer in (np.sin, np.cos):
            if layer is np.cos:
                break
        return x
    with pytest.raises(fc.CompileError, match="region"):
        fc.grad(f, rng.normal(size=2))


def test_append_skipped_by_continue_is_not_silently_kept():
    """A list appended to after a 'continue' (or under an if on data) cannot be stacked as
    one item per trip: the region is refused, and compiling fails naming the line instead of
    stacking an item for every trip."""
    def f(x, s):
        hs = []
        y = x
        for i in range(s.shape[0]):
            y = y * 0.9 + s[i]
            if s[i] < 0:
                continue
            hs.append(y)
        return np.sum(np.stack(hs))
    s = np.abs(rng.normal(size=40))
    s[3] = -1.0
    with pytest.raises(fc.CompileError, match="line|append|continue"):
        fc.grad(f, rng.normal(size=3), s)


def test_break_in_a_short_constant_loop_is_a_region_too():
    def f(x):
        y = x
        for i in range(5):
            if np.sum(y) > 2.0:
                break
            y = y * 1.5 + 0.2
        return np.sum(y * y)

    def f_ag(x):
        y = x
        for i in range(5):
            if anp.sum(y) > 2.0:
                break
            y = y * 1.5 + 0.2
        return anp.sum(y * y)
    for seed in range(4):
        check(f, f_ag, np.random.default_rng(seed).normal(size=3))


@fc.net
class StateInLoop:
    def __init__(self):
        self.W = fc.initn(3, 3)
        self.h = np.zeros((1, 3))

    def forward(self, x):
        for t in range(x.shape[0]):
            self.h = np.tanh(x[t:t + 1] @ self.W + self.h * 0.5)
        return self.h * 2.0


@pytest.mark.parametrize("n", [1, 5, 40])
def test_state_written_inside_a_loop_region_persists_like_python(n):
    m = StateInLoop()
    x = np.random.default_rng(n).normal(size=(n, 3))
    W = np.array(m.W.value)

    def run(h):
        for t in range(n):
            h = np.tanh(x[t:t + 1] @ W + h * 0.5)
        return h
    h1 = run(np.zeros((1, 3)))
    assert np.allclose(m(x), h1 * 2.0)
    assert np.allclose(m(x), run(h1) * 2.0)        # the second call starts from the state
    assert fc.gradcheck(StateInLoop(), x).ok


def test_state_written_inside_a_loop_is_one_region_for_any_length():
    m = StateInLoop()
    x = rng.normal(size=(40, 3))
    text = str(fc.graph(m, (x,)))
    assert text.count("loop(") == 1 and "carry <self.h>" in text
    m(rng.normal(size=(20, 3)))
    variants = len(m.__dict__["_fc_compiled"])
    for n in (33, 50, 70, 7):
        m(rng.normal(size=(n, 3)))
    assert len(m.__dict__["_fc_compiled"]) == variants
