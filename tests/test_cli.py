"""The ``flux-compile`` command line: every subcommand, exit codes and error messages."""
import os
import subprocess
import sys
import textwrap

import pytest

from flux_compile.cli import main

MODELS = textwrap.dedent('''
    import numpy as np
    import flux_compile as fc

    @fc.net
    class Affine:
        def __init__(self, n_in, n_out, init=fc.initn):
            self.W = init(n_in, n_out)
            self.b = init(1, n_out)
        def forward(self, x):
            return x @ self.W + self.b

    @fc.net
    class TLP:
        def __init__(self, first, second):
            self.first, self.second = first, second
        def forward(self, x):
            l1 = fc.sigmoid(self.first(x))
            return fc.softmax(self.second(l1))

    @fc.net
    class Tanh3:
        def __init__(self):
            self.W = np.random.default_rng(0).standard_normal((3, 4))
        def forward(self, x):
            return np.tanh(x @ self.W)

    def cube(x):
        return x ** 3

    @fc.diffrule(cube)
    def _(dy, y, x):
        return dy * 2 * x ** 2          # wrong on purpose: d(x^3) = 3 x^2

    @fc.net
    class Cuber:
        def __init__(self, n):
            self.W = np.full((n, n), 0.5)
        def forward(self, x):
            return cube(x @ self.W)

    @fc.net
    class Careful:
        def __init__(self):
            self.W = np.ones((3, 3))
        def forward(self, x):
            try:
                return np.log(x @ self.W)
            except FloatingPointError:
                return x

    def not_a_model(x):
        return x
''')


@pytest.fixture
def models(tmp_path):
    path = tmp_path / "models.py"
    path.write_text(MODELS)
    return str(path)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- show ------------------------------------------------------------------------------


def test_show_backward_is_the_default(capsys, models):
    code, out, err = run(capsys, "show", f"{models}:Affine")
    assert code == 0 and err == ""
    assert "def backward(self, saved, dy):" in out
    assert "def forward(" not in out
    assert "# line 11: return x @ self.W + self.b" in out
    assert "\x1b[" not in out            # not a terminal: no colour


@pytest.mark.parametrize("which, present, absent", [
    ("forward", ["def forward(self, x):"], ["def backward", "def forward_train"]),
    ("backward", ["def backward(self, saved, dy):"], ["def forward("]),
    ("all", ["def forward(self, x):", "def forward_train(self, x):", "def backward("], []),
])
def test_show_passes(capsys, models, which, present, absent):
    code, out, _ = run(capsys, "show", f"{models}:Affine", "--pass", which)
    assert code == 0
    for text in present:
        assert text in out
    for text in absent:
        assert text not in out


def test_show_all_without_instance_says_why_update_is_missing(capsys, models):
    code, out, _ = run(capsys, "show", f"{models}:Affine", "--pass", "all")
    assert code == 0
    assert "update: generated per instance" in out


def test_show_update_needs_an_instance(capsys, models):
    code, out, err = run(capsys, "show", f"{models}:Affine", "--pass", "update")
    assert code == 2 and out == ""
    assert "per model instance" in err and "--args" in err
    assert "Traceback" not in err


def test_show_update_constructs_a_no_argument_class(capsys, models):
    code, out, _ = run(capsys, "show", f"{models}:Tanh3", "--pass", "update")
    assert code == 0
    assert "def update(" in out and "# W" in out


def test_show_update_with_constructor_arguments(capsys, models):
    code, out, _ = run(capsys, "show", f"{models}:Affine", "--pass", "update", "--args", "3, 2")
    assert code == 0
    assert "# W" in out and "# b" in out


def test_show_class_with_submodels_without_and_with_arguments(capsys, models):
    code, out, err = run(capsys, "show", f"{models}:TLP")
    assert code == 0, err                # generic: called attributes are sub-models
    assert "first_back" in out and "Traceback" not in err
    code, out, err = run(capsys, "show", f"{models}:TLP", "--args", "Affine(3, 4), Affine(4, 2)")
    assert code == 0, err               # an instance: its sub-models are inlined (one backward)
    assert "first_back" not in out and "self.first.W.grad +=" in out


def test_show_module_target(capsys, models, monkeypatch):
    monkeypatch.syspath_prepend(os.path.dirname(models))
    sys.modules.pop("models", None)
    code, out, err = run(capsys, "show", "models:Affine", "--pass", "forward")
    assert code == 0, err
    assert "def forward(self, x):" in out


def test_show_colour_always(capsys, models):
    pytest.importorskip("pygments")
    code, out, _ = run(capsys, "show", f"{models}:Affine", "--color", "always")
    assert code == 0 and "\x1b[" in out


# -- graph -----------------------------------------------------------------------------


def test_graph_listing_and_dot(capsys, models):
    code, out, _ = run(capsys, "graph", f"{models}:Affine")
    assert code == 0
    assert out.startswith("graph Affine(x):") and "np.matmul" in out
    code, out, _ = run(capsys, "graph", f"{models}:Affine", "--dot")
    assert code == 0
    assert out.startswith('digraph "Affine"') and "->" in out


# -- shapes ----------------------------------------------------------------------------


def test_shapes(capsys, models):
    code, out, err = run(capsys, "shapes", models, "TLP(Affine(4, 3), Affine(3, 2))", "--input", "5x4")
    assert code == 0, err
    assert "float64[5, 3]" in out and "float64[5, 2]" in out


def test_shapes_dtype(capsys, models):
    make = "Affine(4, 3, init=lambda *s: np.ones(s, np.float32))"
    code, out, _ = run(capsys, "shapes", models, make, "--input", "5x4", "--dtype", "float32")
    assert code == 0
    assert "float32[5, 3]" in out


def test_shapes_mismatch_names_the_user_line(capsys, models):
    code, out, err = run(capsys, "shapes", models, "Affine(4, 3)", "--input", "5x7")
    assert code == 2
    assert "models.py:11" in err and "Traceback" not in err


# -- check -----------------------------------------------------------------------------


def test_check_passes(capsys, models):
    code, out, err = run(capsys, "check", models, "TLP(Affine(4, 3), Affine(3, 2))", "--input", "5x4")
    assert code == 0, err
    for column in ("value", "shape", "max abs err", "max rel err", "ok"):
        assert column in out
    assert "first.W" in out and "second.b" in out and " NO" not in out


def test_check_fails_on_a_wrong_rule(capsys, models):
    code, out, _ = run(capsys, "check", models, "Cuber(3)", "--input", "4x3", "--seed", "3")
    assert code == 1
    assert "NO" in out and "FAIL" in out


def test_check_two_inputs(capsys, tmp_path):
    path = tmp_path / "two.py"
    path.write_text(textwrap.dedent('''
        import numpy as np
        import flux_compile as fc

        @fc.net
        class Bilinear:
            def __init__(self, n):
                self.W = fc.initn(n, n) * 100
            def forward(self, x, z):
                return np.sum((x @ self.W) * z, axis=1)
    '''))
    code, out, err = run(capsys, "check", str(path), "Bilinear(3)", "--input", "4x3", "--input", "4x3")
    assert code == 0, err
    assert "input 0" in out and "input 1" in out


# -- errors ----------------------------------------------------------------------------


def test_missing_file(capsys, tmp_path):
    code, out, err = run(capsys, "show", f"{tmp_path}/nope.py:Affine")
    assert code == 2 and "no such file" in err
    assert err.count("\n") == 1
    code, out, err = run(capsys, "check", f"{tmp_path}/nope.py", "A()", "--input", "2x2")
    assert code == 2 and "no such file" in err


def test_missing_class(capsys, models):
    code, out, err = run(capsys, "show", f"{models}:Nope")
    assert code == 2 and "has no 'Nope'" in err and err.count("\n") == 1
    code, out, err = run(capsys, "show", f"{models}:not_a_model")
    assert code == 2 and "not a @fc.net class" in err


def test_missing_module(capsys):
    code, out, err = run(capsys, "show", "no_such_module_xyz:Affine")
    assert code == 2 and "cannot import" in err


def test_bad_target(capsys):
    code, out, err = run(capsys, "show", "models.py")
    assert code == 2 and "ClassName" in err


def test_compile_error_shows_line_caret_and_hint(capsys, models):
    code, out, err = run(capsys, "show", f"{models}:Careful")
    assert code == 2 and out == ""
    lines = err.splitlines()
    lineno = MODELS.splitlines().index("        try:") + 1
    assert f"models.py:{lineno}:" in lines[0] and "'try'" in lines[0]
    assert lines[1].strip() == "try:"
    assert lines[2].strip() == "^"
    assert lines[3].startswith("hint:")
    assert "Traceback" not in err


def test_traceback_flag(capsys, models):
    code, out, err = run(capsys, "show", "--traceback", f"{models}:Careful")
    assert code == 2 and "Traceback" in err


@pytest.mark.parametrize("shape", ["5xq", "", "5x-1", "x"])
def test_bad_input_shape(capsys, models, shape):
    code, out, err = run(capsys, "check", models, "Affine(4, 3)", "--input", shape)
    assert code == 2 and "--input" in err and "5x4" in err
    assert err.count("\n") == 1


def test_missing_input(capsys, models):
    code, out, err = run(capsys, "shapes", models, "Affine(4, 3)")
    assert code == 2 and "--input" in err


def test_bad_expression(capsys, models):
    code, out, err = run(capsys, "check", models, "Affine(4,", "--input", "2x4")
    assert code == 2 and "cannot parse" in err
    code, out, err = run(capsys, "check", models, "Nope(4)", "--input", "2x4")
    assert code == 2 and "NameError" in err


def test_syntax_error_in_file(capsys, tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("def f(:\n    pass\n")
    code, out, err = run(capsys, "show", f"{path}:f")
    assert code == 2 and "broken.py:1" in err and "syntax error" in err


def test_help_on_every_subcommand(capsys):
    for cmd in ("show", "graph", "shapes", "check"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert "usage: flux-compile " + cmd in capsys.readouterr().out


# -- python -m flux_compile --------------------------------------------------------------


def test_python_dash_m(models):
    r = subprocess.run([sys.executable, "-m", "flux_compile", "show", f"{models}:Affine", "--pass", "forward"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "def forward(self, x):" in r.stdout
    r = subprocess.run([sys.executable, "-m", "flux_compile", "check", models, "Cuber(3)", "--input", "4x3"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
