"""What any reuse of arrays between calls must never break: results handed to the user
(outputs, input gradients, Param gradients, fc.grad's gradients) and values a pullback holds
are never overwritten by a later call, whatever the order of calls. Every check holds the
results of one call, runs others, and compares with copies and with autograd (float64) or
with the same computation on a fresh model."""
import autograd
import autograd.numpy as anp
import numpy as np
import pytest

import flux_compile as fc

RNG = np.random.default_rng(3)


@fc.net
class Block:
    """Broadcast bias, a cube (products after the passes), gelu, a sum of two uses of ``h``."""

    def __init__(self, n_in, n_out, dtype=np.float64):
        self.W = (RNG.normal(size=(n_in, n_out)) / n_in).astype(dtype)
        self.b = RNG.normal(size=(1, n_out)).astype(dtype)

    def forward(self, x):
        z = x @ self.W + self.b
        h = np.tanh(z)
        a = np.exp(h * 0.5)
        out = fc.gelu(h) * h + h ** 3 * 0.5 + (h * h + 1) ** -0.5 + a
        return out * 0.5 + a


def block_ref(W, b, x):
    h = anp.tanh(x @ W + b)
    g = 0.5 * h * (1 + anp.tanh(0.7978845608028654 * (h + 0.044715 * h * h * h)))
    a = anp.exp(h * 0.5)
    return (g * h + h ** 3 * 0.5 + (h * h + 1) ** -0.5 + a) * 0.5 + a


def _inputs(batch, n, dtype):
    return [RNG.normal(size=(batch, n)).astype(dtype) for _ in range(3)]


def _model(dtype):
    return fc.Chain(Block(5, 4, dtype), Block(4, 3, dtype))


def _reference_chain(m, x, dy):
    """Output, input gradient and Param gradients of the chain by autograd, in float64."""
    ps = [np.asarray(p.value, np.float64) for p in fc.params(m)]

    def f(ps, x):
        return block_ref(ps[2], ps[3], block_ref(ps[0], ps[1], x))
    y = f(ps, x.astype(np.float64))
    vjp_ps = autograd.grad(lambda ps, x: anp.sum(f(ps, x) * dy), 0)(ps, x.astype(np.float64))
    dx = autograd.grad(lambda x: anp.sum(f(ps, x) * dy))(x.astype(np.float64))
    return y, dx, vjp_ps


TOL = {np.float64: 1e-10, np.float32: 2e-4}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batch", [1, 6])
def test_outputs_of_one_call_survive_later_calls(dtype, batch):
    m = _model(dtype)
    xs = _inputs(batch, 5, dtype)
    first = m(xs[0])
    kept = first.copy()
    for x in xs[1:] + xs[:1] + xs[1:]:
        m(x)
        m.pullback(x)
    np.testing.assert_array_equal(first, kept)
    assert first.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_interleaved_pullbacks_each_give_their_own_gradients(dtype):
    m = _model(dtype)
    x1, x2, x3 = _inputs(4, 5, dtype)
    dys = [RNG.normal(size=(4, 3)).astype(dtype) for _ in range(3)]
    y1, back1 = m.pullback(x1)
    y2, back2 = m.pullback(x2)
    y1_kept, y2_kept = y1.copy(), y2.copy()
    dx2 = back2(dys[1])
    y3, back3 = m.pullback(x3)
    dx1 = back1(dys[0], retain=True)
    dx1_kept, dx2_kept = dx1.copy(), dx2.copy()
    dx3 = back3(dys[2])
    m(x3)
    dx1_again = back1(dys[0])          # a pullback may run twice: what it holds is intact
    for got, kept in ((y1, y1_kept), (y2, y2_kept), (dx1, dx1_kept), (dx2, dx2_kept)):
        np.testing.assert_array_equal(got, kept)
    np.testing.assert_array_equal(dx1_again, dx1_kept)
    for x, y, dx, dy in ((x1, y1, dx1, dys[0]), (x2, y2, dx2, dys[1]), (x3, y3, dx3, dys[2])):
        y_ref, dx_ref, _ = _reference_chain(m, x, dy)
        np.testing.assert_allclose(y, y_ref, rtol=TOL[dtype], atol=TOL[dtype])
        np.testing.assert_allclose(dx, dx_ref, rtol=TOL[dtype], atol=TOL[dtype])
        assert dx.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_param_gradients_accumulate_exactly_over_interleaved_calls(dtype):
    m = _model(dtype)
    x1, x2, _ = _inputs(3, 5, dtype)
    dy1, dy2 = (RNG.normal(size=(3, 3)).astype(dtype) for _ in range(2))
    _, back1 = m.pullback(x1)
    _, back2 = m.pullback(x2)
    back2(dy2)
    m(x1)
    back1(dy1)
    want = [a + b for a, b in zip(_reference_chain(m, x1, dy1)[2], _reference_chain(m, x2, dy2)[2])]
    for p, w in zip(fc.params(m), want):
        assert p.grad.dtype == dtype
        np.testing.assert_allclose(p.grad, w, rtol=TOL[dtype], atol=TOL[dtype])


def loss(W, b, x):
    return np.sum(np.tanh(x @ W + b) ** 3) + np.sum(W ** -2 * 1e-3)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fc_grad_results_survive_later_calls(dtype):
    W, b = RNG.normal(size=(4, 2)).astype(dtype) + 2, RNG.normal(size=(1, 2)).astype(dtype)
    xs = _inputs(5, 4, dtype)
    first = fc.grad(loss, W, b, xs[0])
    kept = [first[0]] + [g.copy() for g in first[1]]
    later = [fc.grad(loss, W, b, x) for x in xs[1:]]
    for got, k in zip(first[1], kept[1:]):
        np.testing.assert_array_equal(got, k)
    for x, (v, grads) in zip(xs, [first] + later):
        want = autograd.grad(lambda W, b: anp.sum(anp.tanh(x @ W + b) ** 3) + anp.sum(W ** -2 * 1e-3), (0, 1))(
            W.astype(np.float64), b.astype(np.float64))
        for g, w in zip(grads, want):
            assert g.dtype == dtype
            np.testing.assert_allclose(g, w, rtol=TOL[dtype] * 10, atol=TOL[dtype])


# -- the plan: which elementwise results are written into a dead operand's buffer ------------
from flux_compile import bufferplan, passes                      # noqa: E402
from flux_compile.ir import Graph, Node                          # noqa: E402


def _nodes(*spec):
    """Build nodes from ``(op, args, fn, shape)`` tuples (args index earlier nodes)."""
    g, nodes = Graph("t"), []
    for op, args, fn, shape in spec:
        kw = {"diff": True} if op == "input" else {}
        n = g.add(Node(op, [nodes[i] for i in args], fn=fn, value=fn if op == "const" else None,
                       path=("m",) if op == "model" else (), base="self" if op == "model" else None, **kw))
        if op == "const":
            n.fn = None
        if shape is not None:
            n.meta["shape"] = shape
        nodes.append(n)
    return nodes


def _plan(nodes, keep=(), inline=()):
    plan = bufferplan.plan_buffers(nodes, {nodes[i].id for i in keep}, {nodes[i].id for i in inline})
    return {nodes.index(n): (nodes.index(b), None if o is None else nodes.index(o))
            for n in nodes for k, (b, o) in plan.items() if k == n.id}


S, ROW = (4, 3), (1, 3)


def test_a_dead_temporary_takes_the_result():
    nodes = _nodes(("input", [], None, S), ("call", [0], np.tanh, S), ("const", [], 2.0, ()),
                   ("call", [1, 2], np.multiply, S))
    assert _plan(nodes) == {3: (1, None)}


def test_against_another_array_the_dtypes_are_checked_at_run_time():
    nodes = _nodes(("input", [], None, S), ("call", [0], np.tanh, S), ("input", [], None, S),
                   ("call", [2, 1], np.add, S))
    assert _plan(nodes) == {3: (1, 2)}


@pytest.mark.parametrize("case", ["kept", "read later", "viewed", "held by a sub-model", "inlined"])
def test_a_temporary_still_needed_is_never_the_buffer(case):
    spec = [("input", [], None, S), ("call", [0], np.tanh, S), ("const", [], 2.0, ()),
            ("call", [1, 2], np.multiply, S)]
    if case == "read later":
        spec.append(("call", [1], np.exp, S))
    if case == "viewed":
        spec.insert(2, ("call", [1], np.transpose, S[::-1]))
        spec[-1] = ("call", [1, 3], np.multiply, S)
    if case == "held by a sub-model":
        spec.insert(2, ("model", [1], None, S))
        spec[-1] = ("call", [1, 3], np.multiply, S)
    nodes = _nodes(*spec)
    keep = [1] if case == "kept" else []
    inline = [1] if case == "inlined" else []
    # read later: only that last reader may take the buffer
    assert _plan(nodes, keep, inline) == ({4: (1, None)} if case == "read later" else {})


def test_no_buffer_that_broadcasting_would_outgrow_or_that_may_hold_integers():
    grows = _nodes(("input", [], None, ROW), ("call", [0], np.tanh, ROW), ("input", [], None, S),
                   ("call", [1, 2], np.add, S))
    assert _plan(grows) == {}
    ints = _nodes(("input", [], None, S), ("call", [0, 0], np.add, S), ("const", [], 2.0, ()),
                  ("call", [1, 2], np.multiply, S))
    ints[0].diff = False                      # an integer input: x + x may be integers
    assert _plan(ints) == {}


def mixed(x, y):
    t = np.tanh(x)
    s = np.sum(t)
    u = t * y
    return np.sum(u) + s


def test_a_float32_buffer_never_receives_a_float64_result():
    x32, y64 = RNG.normal(size=(3, 4)).astype(np.float32), RNG.normal(size=(3, 4))
    value, (dx, dy) = fc.grad(mixed, x32, y64)
    assert "reuse(t, y)" in fc.source(mixed, "forward", args=(x32, y64))
    t = np.tanh(x32)
    assert value == np.sum(t * y64) + np.sum(t)        # float64 arithmetic, as NumPy does it
    assert dx.dtype == np.float32 and dy.dtype == np.float64
    np.testing.assert_allclose(dy, t, rtol=0)
    y32 = y64.astype(np.float32)
    v32, _ = fc.grad(mixed, x32, y32)
    assert np.float32(v32) == np.float32(np.sum(t * y32) + np.sum(t))


def test_the_block_writes_into_dead_temporaries_in_both_forwards():
    m = Block(5, 4)
    m.pullback(np.ones((2, 5)))
    for which in ("forward", "forward_train"):
        assert "h = np.tanh(z, out=z)" in fc.source(m, which)     # so the tests above exercise it


# -- random elementwise programs: the same code with and without the plan, bit for bit --------
import importlib  # noqa: E402
import sys  # noqa: E402

OPS = ["np.tanh({a})", "np.exp({a} * 0.1)", "{a} * {b}", "{a} + {b}", "{a} - {b}", "{a} / (1.5 + {b} * {b})",
       "np.maximum({a}, {b})", "{a} * 0.5", "-{a}", "np.sqrt({a} * {a} + 1.0)"]


def _program(rng, n_statements=9):
    """Source of ``f(x, y, z)``: named temporaries used several times, so some die mid-way."""
    names, lines = ["x", "y", "z"], []
    for i in range(n_statements):
        a, b = (names[int(j)] for j in rng.integers(0, len(names), 2))
        lines.append(f"    t{i} = " + OPS[int(rng.integers(len(OPS)))].format(a=a, b=b))
        names.append(f"t{i}")
    picks = sorted({names[int(j)] for j in rng.integers(3, len(names), 3)} | {names[-1]})
    lines.append("    return " + " + ".join(f"np.sum({p})" for p in picks))
    return "import numpy as np\n\ndef f(x, y, z):\n" + "\n".join(lines) + "\n"


def _load(tmp_path, name, text):
    (tmp_path / f"{name}.py").write_text(text)
    sys.path.insert(0, str(tmp_path))
    try:
        importlib.invalidate_caches()
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(tmp_path))


DTYPES = [(np.float64, np.float64, np.float64), (np.float32, np.float32, np.float32),
          (np.float32, np.float64, np.float32)]


@pytest.mark.parametrize("seed", range(12))
def test_random_programs_give_the_same_bits_with_and_without_the_plan(tmp_path, monkeypatch, seed):
    rng = np.random.default_rng(seed)
    text = _program(rng)
    planned, plain = _load(tmp_path, f"prog_on_{seed}", text), _load(tmp_path, f"prog_off_{seed}", text)
    dx, dy, dz = DTYPES[seed % 3]
    args = (rng.normal(size=(3, 4)).astype(dx), rng.normal(size=(1, 4) if seed % 2 else (3, 4)).astype(dy),
            rng.normal(size=(4,)).astype(dz))
    v_on, g_on = fc.grad(planned.f, *args)
    v_on2, g_on2 = fc.grad(planned.f, *[a * 2 for a in args])          # a second call, same variant
    monkeypatch.setattr(fc.codegen.FunctionEmitter, "PLAN_BUFFERS", False)
    v_off, g_off = fc.grad(plain.f, *args)
    v_off2, g_off2 = fc.grad(plain.f, *[a * 2 for a in args])
    assert "out=" not in fc.source(plain.f, "all", args=args)
    for on, off in [(v_on, v_off), (v_on2, v_off2)] + list(zip(g_on + g_on2, g_off + g_off2)):
        assert np.asarray(on).dtype == np.asarray(off).dtype
        np.testing.assert_array_equal(on, off)
    for a, g in zip(args, g_on):
        assert g.dtype == a.dtype and g.shape == a.shape


def test_some_random_programs_do_write_into_buffers(tmp_path):
    sources = []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        mod = _load(tmp_path, f"prog_src_{seed}", _program(rng))
        args = (np.ones((3, 4)), np.ones((3, 4)), np.ones(4))
        fc.grad(mod.f, *args)
        sources.append(fc.source(mod.f, "all", args=args))
    assert sum("out=" in s for s in sources) >= 6
