"""The IR's one op table (``ir.OPS``) and the one interpreter (``interp``).

Walks the table like the rule registry walk: every op needs a case here, and for
every case the printed tape, read back as Python by a small reader that knows only
the tape's text, computes what the interpreter computes. Ops with no value outside
generated code print as statements or opaque forms, and the interpreter gives them
no value.
"""
import re

import numpy as np
import pytest

import flux_compile as fc
from flux_compile import codegen, interp, ir, passes
from flux_compile.ir import Graph, Node
from flux_compile.params import call_keeping_state
from flux_compile.recurrent import current_state, state_names


class Holder:
    """A stand-in ``self``: a Param, an attribute, a callable sub-model."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.W = fc.Param(rng.standard_normal((3, 2)))
        self.alpha = -0.75
        self.first = fc.Affine(3, 2)
        self.h = None


def _graph(*specs):
    """A graph from ``(op, kwargs)`` pairs; ``args`` given as indices of earlier nodes."""
    g = Graph("case")
    for op, kw in specs:
        kw = dict(kw)
        kw["args"] = [g.nodes[i] for i in kw.get("args", ())]
        kw["kwargs"] = {k: g.nodes[i] for k, i in kw.get("kwargs", {}).items()}
        g.add(Node(op, **kw))
    g.outputs = [g.nodes[-1]]
    return g


def _x():
    return ("input", dict(name="x"))


CASES = {
    "input": lambda: _graph(_x()),
    "const": lambda: _graph(("const", dict(value=np.array([[1.5, -np.inf], [np.nan, 0.0]])))),
    "param": lambda: _graph(("param", dict(base="self", path=("W",), name="W"))),
    "attr": lambda: _graph(("attr", dict(base="self", path=("alpha",), name="alpha"))),
    "seed": lambda: _graph(("seed", dict(name="dy", index=0))),
    "call": lambda: _graph(_x(), ("const", dict(value=-1)), ("call", dict(fn=np.sum, args=(0,),
                                                                            kwargs={"axis": 1}))),
    "getattr": lambda: _graph(_x(), ("getattr", dict(args=(0,), attr="shape"))),
    "model": lambda: _graph(_x(), ("model", dict(args=(0,), base="self", path=("first",),
                                                 target="self.first"))),
    "model_back": lambda: _graph(_x(), ("model", dict(args=(0,), base="self", path=("first",),
                                                      target="self.first")),
                                 ("model_back", dict(args=(1,), target="self.first"))),
    "pack": lambda: _graph(_x(), ("const", dict(value=2.0)), ("pack", dict(args=(0, 1)))),
    "item": lambda: _graph(_x(), ("const", dict(value=(4, 5))), ("pack", dict(args=(0, 1))),
                           ("item", dict(args=(2,), index=1))),
    "accum": lambda: _graph(_x(), ("accum", dict(args=(0,), base="self", path=("W",), target="self.W"))),
    "state": lambda: _graph(_x(), ("call", dict(fn=np.tanh, args=(0,))),
                            ("state", dict(args=(1,), base="self", path=("h",), target="self.h"))),
    "guard": lambda: _graph(_x(), ("const", dict(value=0.0)), ("call", dict(fn=np.greater, args=(0, 1))),
                            ("guard", dict(args=(2,), value=False))),
    "loop": lambda: _loop_case(),
    "loop_back": lambda: _graph(_x(), ("loop_back", dict(args=(0,)))),
    "cond": lambda: _cond_case(),
    "cond_back": lambda: _graph(_x(), ("cond_back", dict(args=(0,)))),
}


def _cond_case():
    """``if np.sum(x) > 0: y = np.log(x * x) else: y = x * 2.0`` as a cond region."""
    then, other = Graph("then"), Graph("else")
    a = then.add(Node("input", name="x"))
    sq = then.add(Node("call", fn=np.multiply, args=(a, a)))
    then.outputs = [then.add(Node("call", fn=np.log, args=(sq,)))]
    b = other.add(Node("input", name="x"))
    two = other.add(Node("const", value=2.0))
    other.outputs = [other.add(Node("call", fn=np.multiply, args=(b, two)))]
    g = _graph(_x(), ("call", dict(fn=np.sum, args=(0,))), ("const", dict(value=0.0)),
               ("call", dict(fn=np.greater, args=(1, 2))))
    cond = g.add(Node("cond", args=(g.nodes[3], g.nodes[0]), arity=1))
    cond.meta.update(branches=(then, other), captures=([0], [0]), names=["y"])
    g.outputs = [g.add(Node("item", args=(cond,), index=0))]
    return g


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_cond_region_runs_the_taken_branch_only_and_prints_both(sign):
    g = _cond_case()
    x = sign * np.abs(np.random.default_rng(1).standard_normal((4, 3)))
    values = interp.Interpreter(Holder(), {"x": x}).run(g)
    assert np.allclose(values[g.outputs[0].id], np.log(x * x) if sign > 0 else x * 2.0)
    text = str(g)
    assert "cond(%3, %0 x) if %3: merge y" in text
    assert "    then:" in text and "    else:" in text and "np.log(%1)" in text


def _loop_case():
    """``for t in range(3): acc = acc * x + t`` as a loop region over a body graph."""
    body = Graph("body")
    t = body.add(Node("input", name="t"))
    acc = body.add(Node("input", name="acc"))
    x = body.add(Node("input", name="x"))
    mul = body.add(Node("call", fn=np.multiply, args=(acc, x)))
    body.outputs = [body.add(Node("call", fn=np.add, args=(mul, t)))]
    g = _graph(_x(), ("const", dict(value=3)), ("const", dict(value=0.5)))
    loop = g.add(Node("loop", args=(g.nodes[1], g.nodes[2], g.nodes[0]), arity=1))
    loop.meta.update(body=body, n_bounds=1, carried=["acc"], target="t")
    g.outputs = [g.add(Node("item", args=(loop,), index=0))]
    return g


def test_loop_region_evaluates_its_body_per_trip_and_prints_it_indented():
    g = _loop_case()
    x = np.random.default_rng(1).standard_normal((4, 3))
    values = interp.Interpreter(Holder(), {"x": x}).run(g)
    acc = 0.5
    for t in range(3):
        acc = acc * x + t
    assert np.allclose(values[g.outputs[0].id], acc)
    text = str(g)
    assert "loop(%1, %2, %0 x) for t in range(%1): carry acc" in text
    assert "      %3 = np.multiply(%1 acc, %2 x)" in text


# -- a reader of the tape's text, independent of the table ------------------------
REF = re.compile(r"%(\d+)(?: [A-Za-z_]\w*)?")
LINE = re.compile(r"^  %(\d+)(?: \w+)? = (.*)$")


def read_tape_line(rhs):
    """``("value", python expression)``, ``("statement", python statement)`` or ``("opaque", op)``."""
    py = REF.sub(lambda m: f"v[{m.group(1)}]", rhs)
    for prefix, fmt in (("const ", "{}"), ("param ", "{}.value"), ("attr ", "{}"), ("model ", "{}"),
                        ("input ", "inputs[{!r}]")):
        if py.startswith(prefix):
            return "value", fmt.format(py[len(prefix):])
    if " <- " in py:                       # a state write: its value is the value written
        return "value", py.split(" <- ", 1)[1]
    if ".grad += " in py:
        return "statement", py
    opaque = re.match(r"^(\w+)\(", py)
    if opaque and opaque.group(1) in ir.OPS:
        return "opaque", opaque.group(1)
    return "value", py


def tape_lines(graph):
    """``{node id: right-hand side}`` from ``str(graph)`` (inputs from ``format_node``)."""
    rhs, last = {}, None
    for line in str(graph).splitlines()[1:]:
        m = LINE.match(line)
        if m:
            last = int(m.group(1))
            rhs[last] = m.group(2)
        elif not line.startswith(("  #", "  return")):      # a constant's repr over several lines
            rhs[last] += "\n" + line
    for n in graph.inputs:
        rhs[n.id] = graph.format_node(n).split(" = ", 1)[1]
    return rhs


def same(a, b):
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True) \
        and np.shape(a) == np.shape(b)


def test_every_op_in_the_table_has_a_case():
    assert sorted(ir.OPS) == sorted(CASES), "add a case for each new op (and remove old ones)"


@pytest.mark.parametrize("op", sorted(ir.OPS))
def test_printing_and_evaluation_agree(op):
    g = CASES[op]()
    holder = Holder()
    x = np.random.default_rng(1).standard_normal((4, 3))
    inputs = {"x": x}
    values = interp.Interpreter(holder, inputs).run(g)
    namespace = {"np": np, "fc": fc, "self": holder, "inputs": inputs, "v": {},
                 "array": np.array, "inf": np.inf, "nan": np.nan}
    rhs = tape_lines(g)
    for n in g.nodes:
        kind, text = read_tape_line(rhs[n.id])
        if kind == "value":
            namespace["v"][n.id] = eval(f"({text})", namespace)          # noqa: S307 - the tape read as Python
            assert n.id in values, f"{n.op}: the tape shows a value the interpreter does not give"
            assert same(values[n.id], namespace["v"][n.id]), f"{n.op}: {rhs[n.id]}"
        elif n.op in ir.REGION_OPS:     # a region's tape holds its body (see the loop test)
            if n.id in values:
                namespace["v"][n.id] = values[n.id]
        else:
            assert n.id not in values, f"{n.op}: printed as a {kind}, but the interpreter gives it a value"
            assert ir.OPS[n.op].evaluate is None
            if kind == "statement":
                compile(text, "<tape>", "exec")
            else:
                assert text == n.op
    assert g.nodes[-1].op == op or g.nodes[-2].op == op      # a region, then its item


@pytest.mark.parametrize("op", sorted(ir.OPS))
def test_dot_label_comes_from_the_table(op):
    g = CASES[op]()
    dot = g.to_dot()
    for n in g.nodes:
        label = ir.OPS[n.op].label(n)
        assert label.replace('"', '\\"') in dot
        assert f"n{n.id} [label=" in dot


def test_the_stages_read_their_op_sets_from_the_table():
    assert ir.LEAF_OPS == {"input", "const", "param", "attr", "seed"}
    assert codegen.ALWAYS_INLINE is ir.LEAF_OPS
    assert passes.PURE_OPS is ir.PURE_OPS
    assert codegen.STATEMENT_OPS is ir.STATEMENT_OPS
    assert {op for op, s in ir.OPS.items() if s.reread} == {"const", "param", "attr"}
    assert all(ir.OPS[op].leaf for op in ir.OPS if ir.OPS[op].reread)


def test_predicates_take_nodes_or_names():
    for op, spec in ir.OPS.items():
        node = Node(op)
        assert ir.is_leaf(node) == ir.is_leaf(op) == spec.leaf
        assert ir.is_reread(node) == spec.reread and ir.is_statement(node) == spec.statement
    assert not ir.is_leaf("no such op") and not ir.is_reread("no such op")


def test_op_constants_are_the_table_names_and_compare_as_strings():
    constants = {getattr(ir, name) for name in dir(ir) if name.isupper() and isinstance(getattr(ir, name), str)}
    assert set(ir.OPS) <= constants
    assert ir.CALL == "call" and Node(ir.CALL).op == "call"


def test_every_op_the_package_builds_is_in_the_table():
    import pathlib
    root = pathlib.Path(fc.__file__).parent
    built = set()
    for path in root.rglob("*.py"):
        built |= set(re.findall(r'Node\("(\w+)"', path.read_text()))
    assert built and built <= set(ir.OPS), sorted(built - set(ir.OPS))


def test_an_op_not_yet_in_the_table_prints_generically_and_has_no_value():
    g = _graph(_x(), ("call", dict(fn=np.tanh, args=(0,))))
    g.add(Node("frobnicate", (g.nodes[1],), name="f"))
    assert "  %2 f = frobnicate(%1)" in str(g) and 'n2 [label="f = frobnicate"]' in g.to_dot()
    values = interp.run_graph(g, None, (np.ones(2),))
    assert 2 not in values and same(values[1], np.tanh(np.ones(2)))
    assert interp.Concrete(None, {"x": np.ones(2)}).value(g.nodes[2]) is interp.UNKNOWN


def test_const_shape_rule_is_the_shape_inference_of_constants():
    from flux_compile import shapeinfer
    for v in (np.zeros((2, 0, 3)), 1.5, np.float32(2), True, (1, 2), "s", None, np.zeros(())):
        assert ir.OPS["const"].shape(Node("const", value=v)) == shapeinfer.of_value(v) \
            == (tuple(np.shape(v)) if not isinstance(v, (tuple, str, type(None))) else None)


# -- the one interpreter ------------------------------------------------------------

def _tanh_sum_graph():
    return _graph(_x(), ("call", dict(fn=np.tanh, args=(0,))), ("const", dict(value=0)),
                  ("call", dict(fn=np.sum, args=(1,), kwargs={"axis": 2})))


def test_strict_interpreter_raises_and_lenient_one_says_unknown():
    g = _tanh_sum_graph()
    with pytest.raises(KeyError):
        interp.run_graph(g, None, ())
    conc = interp.Concrete(None, {})
    assert conc.value(g.nodes[-1]) is interp.UNKNOWN          # no input given
    x = np.ones((2, 3))
    assert same(interp.run_graph(g, None, (x,))[3], np.tanh(x).sum(axis=0))
    bad = _graph(_x(), ("const", dict(value=5)), ("call", dict(fn=np.sum, args=(0,), kwargs={"axis": 1})))
    with pytest.raises(np.exceptions.AxisError):
        interp.run_graph(bad, None, (np.ones(3),))
    assert interp.Concrete(None, {"x": np.ones(3)}).value(bad.nodes[-1]) is interp.UNKNOWN


def test_lenient_interpreter_sees_inputs_added_while_tracing():
    g = _tanh_sum_graph()
    inputs = {}
    conc = interp.Concrete(None, inputs)
    inputs["x"] = x = np.arange(6.0).reshape(2, 3) - 2
    assert same(conc.value(g.nodes[-1]), np.tanh(x).sum(axis=0))
    assert conc.memo[g.nodes[1]] is not interp.UNKNOWN          # memoised on the way (by node)


def test_a_param_of_a_missing_base_is_unknown_not_an_error():
    g = _graph(("param", dict(base="m", path=("W",))))
    assert interp.Concrete(None, {}).value(g.nodes[0]) is interp.UNKNOWN
    assert interp.Concrete(None, {"m": None}).value(g.nodes[0]) is interp.UNKNOWN
    with pytest.raises(KeyError):
        interp.run_graph(g, None, ())


def test_tracing_a_stateful_sub_model_keeps_its_state():
    rnn = fc.RNN(3, 4)
    x = np.random.default_rng(2).standard_normal((2, 3))
    rnn(x)                                          # some state to keep
    names = state_names(type(rnn))
    before = [np.array(s) for s in current_state(rnn, names)[0]]
    holder = Holder()
    holder.first = rnn
    g = CASES["model"]()
    got = interp.Concrete(holder, {"x": x}, call_keeping_state).value(g.nodes[-1])
    after = [np.array(s) for s in current_state(rnn, names)[0]]
    assert all(same(a, b) for a, b in zip(before, after))
    assert same(got, rnn(x))                        # the value one real step gives
    plain = interp.Concrete(holder, {"x": x}).value(g.nodes[-1])   # a plain call advances it
    assert not same(plain, got)


def test_concrete_module_is_the_interpreter():
    from flux_compile import concrete
    assert concrete.Concrete is interp.Concrete and concrete.UNKNOWN is interp.UNKNOWN


def test_shapes_output_for_a_model_with_state_and_sub_model_is_annotated():
    m = fc.Chain(fc.Dense(3, 4, act=np.tanh), fc.Affine(4, 2))
    text = fc.shapes(m, np.ones((5, 3)))
    assert "float64[5, 4]" in text and "float64[5, 2]" in text


# -- the rules registry at layer 0 ----------------------------------------------------

def test_the_package_re_exports_the_registry():
    from flux_compile import rules
    from flux_compile.rules import registry
    for name in ("diffrule", "nondiff_primitive", "get_rule", "is_nondiff", "rule_signature", "known",
                 "RULES", "NONDIFF", "GENERATION"):
        assert getattr(rules, name) is getattr(registry, name)
    assert fc.diffrule is registry.diffrule


def test_a_rule_registered_through_the_package_is_in_the_registry():
    from flux_compile.rules import registry

    def cube(x):
        return x ** 3

    gen = registry.GENERATION[0]

    @fc.diffrule(cube)
    def _(dy, y, x):
        return dy * 3 * x ** 2

    try:
        assert registry.get_rule(cube) is _ and registry.GENERATION[0] == gen + 1
        value, (g,) = fc.grad(lambda x: np.sum(cube(x)), np.array([1.0, -2.0, 0.5]))
        assert same(g, 3 * np.array([1.0, -2.0, 0.5]) ** 2)
    finally:
        registry.RULES.pop(cube, None)


# -- display decoupled -----------------------------------------------------------------

def test_graph_html_and_source_text_live_below_display():
    from flux_compile import display, richtext
    assert display.SourceText is richtext.SourceText and display.graph_html is richtext.graph_html
    g = CASES["call"]()
    html = g._repr_html_()
    assert "np.sum" in html
    assert isinstance(fc.source(fc.Affine(2, 3)), richtext.SourceText)


@fc.net
class _Gate:
    def __init__(self, cell):
        self.cell = cell

    def forward(self, x):
        h = self.cell(x)
        if h.sum() > 0:           # decided on the real arguments: tracing evaluates self.cell(x)
            return h * 2.0
        return h - 1.0


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_deciding_on_a_recurrent_sub_model_advances_its_state_once_per_call(sign):
    fc.init.seed(7)
    cell = fc.RNN(3, 4)
    fc.init.seed(7)
    reference = fc.RNN(3, 4)
    m = _Gate(cell)
    xs = sign * np.random.default_rng(3).standard_normal((3, 2, 3))
    for x in xs:
        h = reference(x)
        want = h * 2.0 if h.sum() > 0 else h - 1.0
        np.testing.assert_allclose(m(x), want, rtol=1e-12, atol=1e-14)
