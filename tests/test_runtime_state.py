"""Run-time state: what ``back`` reads after ``pullback``, threads, recurrent state and batch size.

1. ``back`` uses the values ``forward`` saw, or raises: the arrays passed to ``pullback`` and
   every Param value are read-only until ``back`` has run; replacing a value is detected.
2. Concurrent ``back`` calls on one model lose no gradient; concurrent compiles are safe.
3. Recurrent state carried from a step at one batch size is never silently broadcast to
   (or crashed on by) an input of another batch size: a clear error names ``reset()``.
"""
import gc
import threading

import numpy as np
import pytest

import flux_compile as fc

rng = np.random.default_rng(11)


@fc.net
class Lin:
    def __init__(self, n_in, n_out):
        self.W = rng.standard_normal((n_in, n_out))
        self.b = rng.standard_normal((1, n_out))

    def forward(self, x):
        return np.tanh(x @ self.W + self.b) * self.W[0]


@fc.net
class Elman:
    def __init__(self, n_in, n_h):
        self.Wx = rng.standard_normal((n_in, n_h)) * 0.5
        self.Wh = rng.standard_normal((n_h, n_h)) * 0.5
        self.h = np.zeros((1, n_h))

    def forward(self, x):
        self.h = np.tanh(x @ self.Wx + self.h @ self.Wh)
        return self.h


def reference_grads(m, x, dy):
    """Gradients from a fresh copy of the model and input (what back must reproduce)."""
    import copy
    m2 = copy.deepcopy(m)
    m2.zero_grad()
    dx = m2.back(dy, x.copy())
    return dx, [p.grad.copy() for p in fc.params(m2)]


# -- 1. back sees what forward saw ---------------------------------------------------


def test_the_issue_example_mutating_the_input_does_not_change_the_gradient():
    m = fc.Affine(1, 1)
    m.W.value[...] = 2.0
    x = np.array([[4.0]])
    _, back = m.pullback(x)
    x[...] = 0.0                          # on the old main: W.grad 0 instead of 4
    back(np.ones((1, 1)))
    assert m.W.grad[0, 0] == 4.0
    assert x.flags.writeable and x[0, 0] == 0.0     # the caller's array is the caller's


@pytest.mark.parametrize("how", ["inplace", "add", "ufunc_out", "structured"])
def test_inputs_changed_between_pullback_and_back_are_read_as_forward_saw_them(how):
    m = Lin(3, 2)
    x = rng.standard_normal((4, 3))
    dy = rng.standard_normal((4, 2))
    dx_ref, g_ref = reference_grads(m, x, dy)
    _, back = m.pullback(x)
    assert x.flags.writeable                         # never made read-only
    if how == "inplace":
        x[0, 0] = 99.0
    elif how == "add":
        x += 1.0
    elif how == "ufunc_out":
        np.multiply(x, 2.0, out=x)
    else:
        x[...] = np.flip(x, axis=0)
    dx = back(dy)
    np.testing.assert_array_equal(dx, dx_ref)
    for p, g in zip(fc.params(m), g_ref):
        np.testing.assert_array_equal(p.grad, g)


def test_param_write_between_pullback_and_back_raises():
    m = Lin(3, 2)
    x = rng.standard_normal((4, 3))
    _, back = m.pullback(x)
    with pytest.raises(ValueError, match="read-only"):
        m.W.value[...] = 0.0
    back(np.ones((4, 2)))
    m.W.value[...] = 0.0                  # fine afterwards
    assert (m.W.value == 0).all()


@pytest.mark.parametrize("opt", [0.1, "adam"])
def test_update_between_pullback_and_back_is_a_clear_error(opt):
    m = fc.Chain(Lin(3, 4), Lin(4, 2))
    x = rng.standard_normal((5, 3))
    before = [p.value.copy() for p in fc.params(m)]
    _, back = m.pullback(x)
    o = fc.optim.Adam(0.01) if opt == "adam" else opt
    with pytest.raises(RuntimeError, match=r"back\(dy\)"):
        m.update(o)
    for p, v in zip(fc.params(m), before):          # nothing half-updated
        np.testing.assert_array_equal(p.value, v)
    back(np.ones((5, 2)))
    m.update(o)                                       # after back: fine
    assert any((p.value != v).any() for p, v in zip(fc.params(m), before))


def test_replacing_a_param_value_between_pullback_and_back_raises():
    m = fc.Chain(Lin(3, 4), Lin(4, 2))
    x = rng.standard_normal((5, 3))
    _, back = m.pullback(x)
    m.layers[1].W.value = np.zeros((4, 2))
    with pytest.raises(RuntimeError, match=r"layers\[1\]\.W"):
        back(np.ones((5, 2)))


def test_replacing_a_param_between_pullback_and_back_raises():
    m = fc.Chain(Lin(3, 4), Lin(4, 2))
    x = rng.standard_normal((5, 3))
    _, back = m.pullback(x)
    m.layers[0].W = rng.standard_normal((3, 4))
    with pytest.raises(RuntimeError, match=r"layers\[0\]\.W"):
        back(np.ones((5, 2)))


def test_dropped_back_releases_the_arrays():
    m = Lin(3, 2)
    x = rng.standard_normal((4, 3))
    y, back = m.pullback(x)
    assert x.flags.writeable and not y.flags.writeable and not m.W.value.flags.writeable
    del back
    gc.collect()
    assert y.flags.writeable and m.W.value.flags.writeable
    m.update(0.1)


def test_back_runs_once_unless_retained():
    m = Lin(3, 2)
    x = rng.standard_normal((4, 3))
    dy = rng.standard_normal((4, 2))
    _, g_ref = reference_grads(m, x, dy)
    _, back = m.pullback(x)
    back(dy, retain=True)
    assert not m.W.value.flags.writeable             # still held for the second call
    back(dy)
    for p, g in zip(fc.params(m), g_ref):
        np.testing.assert_array_equal(p.grad, 2 * g)
    assert m.W.value.flags.writeable
    with pytest.raises(RuntimeError, match="already ran"):
        back(dy)


def test_read_only_inputs_stay_read_only_and_still_work():
    m = Lin(3, 2)
    x = rng.standard_normal((4, 3))
    x.flags.writeable = False
    _, back = m.pullback(x)
    back(np.ones((4, 2)))
    assert not x.flags.writeable                     # we never make the user's array writable


def test_two_pending_pullbacks_share_the_params():
    m = Lin(3, 2)
    x1, x2 = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    _, b1 = m.pullback(x1)
    _, b2 = m.pullback(x2)
    b1(np.ones((4, 2)))
    assert not m.W.value.flags.writeable            # b2 still needs it
    b2(np.ones((4, 2)))
    assert m.W.value.flags.writeable


def test_unroll_pullback_protects_the_sequence_and_the_cell():
    seq = fc.unroll(fc.LSTM(3, 4), 5)
    xs = rng.standard_normal((2, 5, 3))
    dy = rng.standard_normal((2, 5, 4))
    dx_ref, g_ref = reference_grads(seq, xs, dy)
    seq.reset()
    _, back = seq.pullback(xs)
    xs[:, 2] = 0.0                        # the sequence was copied: no effect on back
    with pytest.raises(ValueError, match="read-only"):
        seq.model.Wh.value *= 2
    np.testing.assert_allclose(back(dy), dx_ref, rtol=1e-12, atol=1e-14)
    for p, g in zip(fc.params(seq), g_ref):
        np.testing.assert_allclose(p.grad, g, rtol=1e-12, atol=1e-14)


def test_back_method_and_inference_leave_arrays_writable():
    m = Lin(3, 2)
    x = rng.standard_normal((4, 3))
    m(x)
    m.back(np.ones((4, 2)), x)
    assert x.flags.writeable and m.W.value.flags.writeable


# -- 2. threads ------------------------------------------------------------------------


@fc.net
class IntLin:
    def __init__(self, n_in, n_out):
        self.W = np.arange(n_in * n_out, dtype=np.float64).reshape(n_in, n_out) % 5 - 2
        self.b = np.ones((1, n_out))

    def forward(self, x):
        return x @ self.W + self.b


N_THREADS, CALLS = 8, 200


@pytest.mark.parametrize("way", ["back", "pullback"])
def test_concurrent_back_loses_no_gradient(way):
    """8 threads x 200 back() calls on one model; small integers in float64, so every sum
    is exact and the accumulated gradient must equal the serial total bit for bit."""
    m = fc.Chain(IntLin(256, 256), IntLin(256, 64))
    xs = [np.asarray(rng.integers(-3, 4, (8, 256)), np.float64) for _ in range(N_THREADS)]
    dy = np.asarray(rng.integers(-2, 3, (8, 64)), np.float64)
    m(xs[0])                                        # compile once before the race
    for x in xs:
        m.back(dy, x)
    serial = [p.grad * CALLS for p in fc.params(m)]
    m.zero_grad()
    barrier = threading.Barrier(N_THREADS)
    errors = []

    def work(x):
        try:
            barrier.wait()
            for _ in range(CALLS):
                if way == "back":
                    m.back(dy, x)
                else:
                    _, back = m.pullback(x)
                    back(dy)
        except Exception as e:                        # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(x,)) for x in xs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for p, s in zip(fc.params(m), serial):
        np.testing.assert_array_equal(p.grad, s)
    assert all(x.flags.writeable for x in xs)


def test_concurrent_first_compile_of_one_model():
    """Threads compiling the same (fresh) model at once all get correct results."""
    for trial in range(5):
        m = fc.Chain(Lin(3, 4), Lin(4, 2))
        x = rng.standard_normal((5, 3))
        ref = __import__("copy").deepcopy(m)
        expected = ref(x)
        dx_ref = ref.back(np.ones((5, 2)), x)
        barrier = threading.Barrier(4)
        results, errors = [], []

        def work():
            try:
                barrier.wait()
                results.append((m(x), fc.source(m, "backward")))
            except Exception as e:                    # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for y, src in results:
            np.testing.assert_array_equal(y, expected)
            assert src == results[0][1]
        np.testing.assert_array_equal(m.back(np.ones((5, 2)), x), dx_ref)


# -- 3. recurrent state and batch size -----------------------------------------------


CELLS = {
    "RNN": lambda: fc.RNN(3, 4),
    "GRU": lambda: fc.GRU(3, 4),
    "LSTM": lambda: fc.LSTM(3, 4),
    "user": lambda: Elman(3, 4),
}


def _step(m, x, how):
    if how == "call":
        return m(x)
    if how == "pullback":
        y, back = m.pullback(x)
        back(np.ones_like(y))
        return y
    seq = fc.unroll(m, 2)
    return seq(np.stack([x, x], axis=1))


@pytest.mark.parametrize("new_batch", [1, 3])
@pytest.mark.parametrize("how", ["call", "pullback", "unroll"])
@pytest.mark.parametrize("kind", list(CELLS))
def test_batch_change_without_reset_is_a_clear_error(kind, how, new_batch):
    m = CELLS[kind]()
    _step(m, rng.standard_normal((4, 3)), how)
    name = type(m).__name__
    with pytest.raises(ValueError, match=rf"{name} carries state of batch 4 .*batch {new_batch}.*reset\(\)"):
        _step(m, rng.standard_normal((new_batch, 3)), how)
    m.reset()                                        # the remedy the message names
    fresh = CELLS[kind]()
    fresh.__dict__.update({k: v for k, v in m.__dict__.items() if not k.startswith("_")})
    x = rng.standard_normal((new_batch, 3))
    y = _step(m, x, how)
    assert y.shape[0] == new_batch
    fresh.reset()
    np.testing.assert_allclose(y, _step(fresh, x, how), rtol=1e-12)


@pytest.mark.parametrize("kind", list(CELLS))
def test_batch_change_inside_a_chain_names_the_cell_and_reset(kind):
    m = fc.Chain(fc.Affine(3, 3), CELLS[kind](), fc.Affine(4, 2))
    m(rng.standard_normal((4, 3)))
    with pytest.raises(ValueError, match=r"carries state of batch 4.*batch 1.*reset\(\)"):
        m(rng.standard_normal((1, 3)))
    m.reset()
    assert m(rng.standard_normal((1, 3))).shape == (1, 2)


def test_same_batch_and_state_from_init_keep_working():
    m = fc.RNN(3, 4)
    for b in (1, 4):                                  # the (1, n) initial state broadcasts
        m.reset()
        assert m(rng.standard_normal((b, 3))).shape == (b, 4)
        assert m(rng.standard_normal((b, 3))).shape == (b, 4)
    m.reset()
    m(rng.standard_normal((1, 3)))
    assert m(rng.standard_normal((4, 3))).shape == (4, 4)   # batch-1 state, as at the start


def test_state_whose_shape_never_depends_on_batch_is_not_checked():
    @fc.net
    class Counter:
        def __init__(self):
            self.n = np.zeros((1, 1))

        def forward(self, x):
            self.n = self.n + 1.0
            return x * self.n

    m = Counter()
    m(np.ones((4, 2)))
    assert m(np.ones((1, 2)))[0, 0] == 2.0


def test_output_written_in_place_before_back_raises():
    """tanh's backward reads its output: an in-place edit of y (a loss computed in place)
    would change the gradient silently."""
    @fc.net
    class Tanh:
        def __init__(self):
            self.W = rng.standard_normal((3, 2))

        def forward(self, x):
            return np.tanh(x @ self.W)

    m = Tanh()
    x = rng.standard_normal((4, 3))
    dx_ref, g_ref = reference_grads(m, x, np.ones((4, 2)))
    y, back = m.pullback(x)
    with pytest.raises(ValueError, match="read-only"):
        y -= 1.0
    np.testing.assert_array_equal(back(np.ones((4, 2))), dx_ref)
    np.testing.assert_array_equal(m.W.grad, g_ref[0])
    y -= 1.0                                          # the caller's again after back


def test_concurrent_compiles_get_distinct_source_files(monkeypatch):
    """Generated code is registered in linecache under a per-compile name; two threads
    compiling the same class at once must not share one (tracebacks would show the other's
    code). The counter's read is slowed down so that the threads interleave there."""
    import linecache
    import time

    from flux_compile import sourcecache
    from flux_compile.cache import compile_model

    class SlowDict(dict):
        def get(self, *a):
            v = dict.get(self, *a)
            time.sleep(0.01)
            return v

    monkeypatch.setattr(sourcecache, "_counter", SlowDict())

    @fc.net
    class Fresh:                # not fc.Dense: its variants from other tests would be found in the cache
        def __init__(self, act):
            self.W = rng.standard_normal((3, 2))
            self.act = act

        def forward(self, x):
            y = x @ self.W
            return y if self.act is None else self.act(y)

    acts = [None, fc.relu, np.tanh, fc.sigmoid]
    models = [Fresh(a) for a in acts]
    compiled = [None] * len(models)
    barrier = threading.Barrier(len(models))

    def work(i):                # compile_model itself: calling the model would hold COMPILE_LOCK
        barrier.wait()
        compiled[i] = compile_model(models[i], (np.ones((2, 3)),))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(models))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({c.filename for c in compiled}) == len(compiled)
    for c in compiled:
        assert "".join(linecache.getlines(c.filename)) == c.source


def test_concurrent_function_compiles_get_distinct_source_files(monkeypatch):
    """The same for ``fc.grad`` of one function compiled for different argument kinds."""
    import linecache
    import time

    from flux_compile import cache as fc_cache, sourcecache

    class SlowDict(dict):
        def get(self, *a):
            v = dict.get(self, *a)
            time.sleep(0.01)
            return v

    monkeypatch.setattr(sourcecache, "_counter", SlowDict())

    def f(x, k):
        return np.sum(np.tanh(x) * k)

    ks = [1, 2, 3, 4]                                 # ints: compile-time constants
    x = rng.standard_normal((3, 2))
    grads = [None] * len(ks)
    barrier = threading.Barrier(len(ks))

    def work(i):
        barrier.wait()
        grads[i] = fc.grad(f, x, ks[i])[1][0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(ks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, g in zip(ks, grads):
        np.testing.assert_allclose(g, k * (1 - np.tanh(x) ** 2), rtol=1e-12)
    compiled = [c for variants in fc_cache._function_cache(f).entries.values() for c in variants]
    assert len({c.filename for c in compiled}) == len(compiled) == len(ks)
    for c in compiled:
        assert "".join(linecache.getlines(c.filename)) == c.source


@fc.net
class Masked:
    def __init__(self):
        self.W = rng.standard_normal((3, 2))
        self.mask = fc.const(np.array([[1.0, 0.5]]))
        self.idx = np.array([0, 2])

    def forward(self, x):
        return np.tanh(x[:, self.idx] @ self.W[:2] * self.mask)


@pytest.mark.parametrize("field", ["mask", "idx"])
def test_constant_arrays_backward_reads_are_held_too(field):
    """backward reads self.mask and the index array when it runs: they are held as well."""
    m = Masked()
    x = rng.standard_normal((4, 3))
    dy = rng.standard_normal((4, 2))
    dx_ref, g_ref = reference_grads(m, x, dy)
    _, back = m.pullback(x)
    with pytest.raises(ValueError, match="read-only"):
        getattr(m, field)[...] = 1 if field == "idx" else 0.0
    np.testing.assert_array_equal(back(dy), dx_ref)
    np.testing.assert_array_equal(m.W.grad, g_ref[0])


def test_replacing_a_constant_array_between_pullback_and_back_raises():
    m = Masked()
    _, back = m.pullback(rng.standard_normal((4, 3)))
    m.mask = fc.const(np.array([[0.0, 0.0]]))
    with pytest.raises(RuntimeError, match=r"Masked\.mask was replaced"):
        back(np.ones((4, 2)))


@fc.net
class ListNet:
    def __init__(self):
        self.blocks = [Lin(3, 3), Lin(3, 2)]
        self.scales = {"out": np.array([[2.0, 3.0]])}

    def forward(self, x):
        return self.blocks[1](self.blocks[0](x)) @ self.blocks[1].W.T * self.scales["out"][:, :1]


@pytest.mark.parametrize("edit", ["list", "dict"])
def test_replacing_inside_a_list_or_dict_between_pullback_and_back_raises(edit):
    """Lists and dicts are edited in place, without setattr: back still finds it."""
    m = ListNet()
    _, back = m.pullback(rng.standard_normal((4, 3)))
    if edit == "list":
        m.blocks[1] = Lin(3, 2)
    else:
        m.scales["out"] = np.array([[0.0, 0.0]])
    with pytest.raises(RuntimeError, match=r"ListNet\.(blocks\[1\]\.W|scales\.out) was replaced"):
        back(np.ones((4, 3)))


def test_list_model_gradients_are_unchanged_by_holding():
    m = ListNet()
    x = rng.standard_normal((4, 3))
    dy = rng.standard_normal((4, 3))
    dx_ref, g_ref = reference_grads(m, x, dy)
    _, back = m.pullback(x)
    np.testing.assert_array_equal(back(dy), dx_ref)
    for p, g in zip(fc.params(m), g_ref):
        np.testing.assert_array_equal(p.grad, g)


def test_a_param_set_after_an_earlier_pullback_is_held_by_the_next():
    m = fc.Chain(Lin(3, 4), Lin(4, 2))
    x = rng.standard_normal((5, 3))
    m.pullback(x)[1](np.ones((5, 2)))
    m.layers[1].W = rng.standard_normal((4, 2))          # after the first walk
    _, back = m.pullback(x)
    assert not m.layers[1].W.value.flags.writeable
    back(np.ones((5, 2)))
    assert m.layers[1].W.value.flags.writeable
