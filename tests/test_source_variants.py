"""What fc.source and `flux-compile show` display is what runs (issue 15, item 4)."""
import ast
import pathlib
import textwrap

import numpy as np
import pytest

import flux_compile as fc
from flux_compile.cli import main

ROOT = pathlib.Path(__file__).resolve().parent.parent


@fc.net
class Loop:
    """Its code depends on the data: up to two steps, each taken while the sum is below 10
    (a ``while`` on data is one real loop and an ``if`` on data one real ``if`` for every
    input since loop and cond regions; a ``return`` inside a branch still compiles the path
    taken, with a guard)."""

    def __init__(self):
        self.W = fc.initn(3, 3)

    def forward(self, x):
        h = x
        if np.sum(h) >= 10.0:
            return h @ self.W
        h = h * 2.0 + 1.0
        if np.sum(h) >= 10.0:
            return h @ self.W
        h = h * 2.0 + 1.0
        return h @ self.W


def doublings(text):
    return sum(1 for l in text.splitlines() if "* 2.0 + 1.0" in l and not l.strip().startswith("#"))


def steps_taken(x):
    n = 0
    while np.sum(x) < 10.0:
        x, n = x * 2.0 + 1.0, n + 1
    return n


def body(text):
    """The source without its comment header lines."""
    return "\n".join(l for l in text.splitlines() if not l.startswith("# generated") and not l.startswith("# the ")
                     and not l.startswith("# no call"))


def test_inputs_show_the_path_those_values_take_before_any_call():
    m = Loop()
    big, small = np.full((1, 3), 5.0), np.full((1, 3), 0.1)
    shown_big = fc.source(m, "forward", inputs=(big,))
    shown_small = fc.source(m, "forward", inputs=(small,))
    assert shown_big.splitlines()[1] == "# the variant for inputs x: float64[1, 3]"
    assert doublings(shown_big) == 0
    assert doublings(shown_small) == 2 == steps_taken(small)
    assert "_fc_last" not in m.__dict__            # showing is not running
    m(small)
    assert body(fc.source(m, "forward")) == body(shown_small)
    m(big)
    assert body(fc.source(m, "forward")) == body(shown_big)


def test_data_dependent_model_before_a_call_points_at_inputs():
    with pytest.raises(fc.CompileError) as info:
        fc.source(Loop(), "forward")
    assert info.value.hint.endswith("fc.source(m, which, inputs=(x,)) shows the code for inputs x")
    assert info.value.__notes__[-1].endswith("shows the code for inputs x")


def test_args_is_an_alias_of_inputs():
    m, x = Loop(), np.full((2, 3), 5.0)
    assert fc.source(m, "backward", args=(x,)) == fc.source(m, "backward", inputs=(x,))
    assert fc.source(m, "backward", inputs=x) == fc.source(m, "backward", inputs=(x,))
    with pytest.raises(TypeError, match="not both"):
        fc.source(m, inputs=(x,), args=(x,))


def test_without_inputs_the_header_names_the_variant_that_ran_last():
    m = fc.Dense(3, 2)
    m(np.ones((4, 3)))
    m(np.ones(3))
    assert fc.source(m, "forward").splitlines()[1] == "# the variant that ran last, for inputs x: 1-d float"
    m(np.ones((4, 3)))                  # a cached variant running again is the last one too
    assert fc.source(m, "forward").splitlines()[1] == "# the variant that ran last, for inputs x: 2-d float"


def test_a_single_variant_needs_no_note():
    m = fc.Dense(3, 2)
    m(np.ones((4, 3)))
    assert not any("variant" in line for line in fc.source(m, "forward").splitlines())


def test_showing_leaves_recurrent_state_alone():
    cell = fc.RNN(3, 4)
    cell(np.ones((2, 3)))
    h = cell.h.copy() if hasattr(cell.h, "copy") else np.array(cell.h)
    fc.source(cell, "backward", inputs=(np.ones((5, 3)),))      # another batch size: no error
    np.testing.assert_array_equal(np.asarray(cell.h), h)
    assert cell(np.ones((2, 3))).shape == (2, 4)


MODEL_FILE = """\
import numpy as np
import flux_compile as fc

@fc.net
class Affine:
    def __init__(self, n_in=4, n_out=3):
        self.W = fc.initn(n_in, n_out)
        self.b = fc.initn(1, n_out)
    def forward(self, x):
        return x @ self.W + self.b

@fc.net
class Two:
    def __init__(self, first, second):
        self.first, self.second = first, second
    def forward(self, x):
        return self.second(np.tanh(self.first(x)))
"""


@pytest.fixture
def model_file(tmp_path):
    p = tmp_path / "models.py"
    p.write_text(MODEL_FILE)
    return p


def test_cli_show_input_prints_what_runs(model_file, capsys):
    assert main(["show", f"{model_file}:Affine", "--input", "8x4", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "# the variant for inputs x: float64[8, 4]"
    assert "unbroadcast" not in out and "matmul_grad" not in out and "np.sum(dy, axis=0" in out
    assert main(["show", f"{model_file}:Affine", "--color", "never"]) == 0
    generic = capsys.readouterr().out
    assert generic.startswith("# generic code (input shapes unknown); add --input") and "unbroadcast" in generic


def test_cli_show_input_needs_an_instance(model_file, capsys):
    assert main(["show", f"{model_file}:Two", "--input", "8x4"]) == 2
    assert "--args" in capsys.readouterr().err
    assert main(["show", f"{model_file}:Two", "--args", "Affine(4, 3), Affine(3, 2)", "--input", "8x4",
                 "--pass", "all", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "def forward(" in out and "def backward(" in out and "def update(" in out


def test_pass_all_keeps_every_statement_on_one_line(model_file, capsys):
    assert main(["show", f"{model_file}:Affine", "--pass", "all", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "self.W.value.shape)" in out
    for line in out.splitlines():
        assert not line.rstrip().endswith((".", "(", ",")), line
    ast.parse(textwrap.dedent(out.split("# update")[0]))


def test_class_graph_shows_sub_models_as_sub_models(model_file):
    from flux_compile.cli import load_target
    _, cls = load_target(f"{model_file}:Two")
    g = fc.graph(cls)
    text = str(g)
    assert "submodel self.first" in text and "param self.first" not in text
    assert "shape=component" in g.to_dot()
