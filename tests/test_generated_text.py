"""Properties of the generated text, checked on every golden model (tests/golden_models.py).

The goldens pin the exact text; these say what the text must never do, so a new
model or a new rule cannot bring a fixed defect back unnoticed.
"""
import ast
import inspect

import numpy as np
import pytest

import flux_compile as fc
from flux_compile.params import is_model
from golden_models import MODELS


def _source(name):
    target, args = MODELS[name]()
    if is_model(target):
        target(*args)
        return str(fc.source(target, "all")), target, args
    return str(fc.source(target, "all", args=args)), target, args


def _calls(text):
    return [n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Call)]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_no_positional_boolean_flag(name):
    text = _source(name)[0]
    bare = [ast.unparse(c) for c in _calls(text)
            if any(isinstance(a, ast.Constant) and isinstance(a.value, bool) for a in c.args)]
    assert not bare, f"boolean flags passed positionally: {bare}"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pullback_named_from_attribute(name):
    """``y, fc2_back = self.fc2._pullback(h)``: the back is named for the sub-model, never for
    the variable its output is assigned to."""
    text = _source(name)[0]
    for line in text.splitlines():
        if "._pullback(" in line:
            target = line.split("=")[0]
            attr = line.split("._pullback(")[0].split(".")[-1]
            attr = attr.replace("]", "").replace("layers[", "layer")
            assert f"{attr}_back" in target, line


def test_helper_lines_say_whose_they_are():
    text = _source("encoder")[0]
    assert "# line 44 (in squash, golden_models.py): return z / (1.0 + np.abs(z))" in text
    assert "# line 56: return np.sum(y * y, axis=1, keepdims=True)" in text   # the model's own: no note
    assert "# line 44 (in self.fc1: Affine.forward, layers.py): return x @ self.W + self.b" in text
    text = _source("softmax_loss")[0]
    assert "(in crossentropy, losses.py): return np.mean(" in text
    assert "# line" in _source("grad_function")[0] and " (in " not in _source("grad_function")[0]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shown_source_runs_as_shown(name):
    """``exec`` of the text ``fc.source`` shows, in an empty namespace, gives the same
    forward and the same input gradient as the compiled model (its imports are all there).
    Recurrent state enters the shown forward as trailing arguments: the model's current state."""
    text, target, args = _source(name)
    assert "# bound by flux_compile" not in text
    ns = {}
    exec(compile(text, f"<shown {name}>", "exec"), ns)
    model = is_model(target)
    self_args = (target,) if model else ()
    n_fixed = len(self_args) + len(args)
    state_names = list(inspect.signature(ns["forward"]).parameters)[n_fixed:]
    if model:
        target.reset()
    state = tuple(np.array(getattr(target, s)) for s in state_names)
    shown_y = ns["forward"](*self_args, *args, *state)
    y_train, saved = ns["forward_train"](*self_args, *args, *state)
    expected = target(*args)
    first = (lambda v: v[0]) if state else (lambda v: v)
    np.testing.assert_allclose(first(shown_y), expected, rtol=1e-12)
    np.testing.assert_allclose(first(y_train), expected, rtol=1e-12)
    dy = tuple(np.ones_like(np.asarray(v)) for v in y_train) if state else np.ones_like(np.asarray(y_train))
    shown = ns["backward"](*self_args, saved, dy)
    shown = shown if isinstance(shown, tuple) else (shown,)
    if model:
        target.reset()
        target.zero_grad()
        compiled = target.back(dy[0] if state else dy, *args)
        target.zero_grad()
    else:
        compiled = fc.grad(target, *args)[1]
    compiled = compiled if isinstance(compiled, tuple) else (compiled,)
    if state:       # the state's own adjoint (dy[1:]) feeds only the shown backward: compare dx alone
        dy_x = (dy[0],) + tuple(np.zeros_like(d) for d in dy[1:])
        shown = ns["backward"](*self_args, saved, dy_x)
        shown = shown if isinstance(shown, tuple) else (shown,)
    for a, b in zip(shown, compiled):
        if b is not None:
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_no_numbered_anonymous_adjoints(name):
    """``dz_3`` says nothing: adjoints are named for their value (``dfc1_out``, ``dt_h``)."""
    import re
    assert not re.findall(r"\bdz_\d+\b", _source(name)[0])


@pytest.mark.parametrize("name", ["encoder", "lstm", "tanh_cell", "shared_param"])
def test_no_numbered_temporaries_where_a_variable_is_fed(name):
    """``t_5`` says nothing: an unnamed value feeding a variable is named for it (``t_h``), a
    part of an adjoint for the adjoint (``dh_part``). (Values feeding only the returned value,
    as inside ``crossentropy``, keep ``t``, ``t_1``...: they feed no variable.)"""
    import re
    assert not re.findall(r"\bt_\d+\b", _source(name)[0])


def test_encoder_names_read_like_the_model():
    text = _source("encoder")[0]
    for piece in ("t_h = 1.0 + np.absolute(fc1_out)", "dh = dy_1 @ self.fc2.W.value.T",
                  "dfc1_out_part = dh / t_h", "dfc1_out = dfc1_out_part + dfc1_out_part_1",
                  "dx = dfc1_out @ self.fc1.W.value.T"):
        assert piece in text, piece


def test_fed_variables_follows_unnamed_chains_to_the_earliest_user_variable():
    from flux_compile import naming
    from flux_compile.ir import Graph, Node
    g = Graph("t")
    x = g.add(Node("input", name="x"))
    a = g.add(Node("call", (x,), fn=np.abs))
    b = g.add(Node("call", (a,), fn=np.tanh))
    h = g.add(Node("call", (b,), fn=np.exp, name="h"))
    k = g.add(Node("call", (a,), fn=np.exp, name="k"))
    anon = g.add(Node("call", (h,), fn=np.exp, name="y"))
    anon.meta["anon"] = True         # an output's made-up name
    c = g.add(Node("call", (k,), fn=np.exp))
    g.add(Node("call", (c,), fn=np.exp, name="y_1")).meta["anon"] = True
    fed = naming.fed_variables(g.nodes)
    assert fed[b.id] == "h" and fed[a.id] == "h"       # the earliest consumer decides
    assert c.id not in fed                             # feeds only a made-up name
    assert naming.temporary(fed[a.id]) == "t_h" and naming.partial("dh") == "dh_part"


@fc.net
class Hostile:
    """A user's variables named like the kernels the backward calls."""

    def __init__(self):
        self.W = np.linspace(-1, 1, 12).reshape(3, 4)

    def forward(self, x):
        sum_grad = x @ self.W
        unbroadcast = np.sum(sum_grad * sum_grad, axis=1, keepdims=True)
        return unbroadcast + 1.0


def test_shown_source_runs_when_kernels_are_renamed():
    m, x = Hostile(), np.linspace(-2, 2, 6).reshape(2, 3)
    y = m(x)
    text = str(fc.source(m, "all"))
    assert "import sum_grad as sum_grad_1" in text
    ns = {}
    exec(compile(text, "<hostile>", "exec"), ns)
    out, saved = ns["forward_train"](m, x)
    np.testing.assert_allclose(out, y)
    m.zero_grad()
    dx = ns["backward"](m, saved, np.ones_like(y))
    W = np.asarray(m.W.value)
    np.testing.assert_allclose(dx, 2 * (x @ W) @ W.T, rtol=1e-12)
    np.testing.assert_allclose(m.W.grad, x.T @ (2 * (x @ W)), rtol=1e-12)
