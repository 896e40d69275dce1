"""What an uncaught CompileError / ModelError shows (issue 15, item 1).

A user file is run in a subprocess and its whole stderr compared: the user's
frames, file:line, caret, hint and model trace, no frame of the library, the
original exception's type as the label.
"""
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_user_file(tmp_path, code, env=None, runner=None):
    path = tmp_path / "user.py"
    path.write_text(textwrap.dedent(code))
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    full_env.pop("FLUX_COMPILE_TRACEBACK", None)
    full_env.update(env or {})
    args = [sys.executable, str(path)] if runner is None else [sys.executable, "-c", runner, str(path)]
    p = subprocess.run(args, capture_output=True, text=True, env=full_env, cwd=tmp_path, timeout=120)
    return p.returncode, p.stderr.replace(str(path), "USER")


COMPILE_ERROR = """\
    import numpy as np
    import flux_compile as fc

    @fc.net
    class M:
        def __init__(self):
            self.W = fc.initn(3, 2)
        def forward(self, x):
            try:
                y = x @ self.W
            except Exception:
                y = x
            return y

    m = M()
    m(np.ones((4, 3)))
"""

CHAIN_SHAPE_ERROR = """\
    import numpy as np
    import flux_compile as fc

    m = fc.Chain(fc.Dense(3, 4), fc.Dense(5, 2))
    y = m(np.ones((4, 3)))
"""


def test_uncaught_compile_error_shows_line_caret_and_hint_only(tmp_path):
    code, err = run_user_file(tmp_path, COMPILE_ERROR)
    assert code == 1
    assert err.splitlines() == [
        "Traceback (most recent call last):",
        '  File "USER", line 16, in <module>',
        "    m(np.ones((4, 3)))",
        '  File "USER", line 9',
        "    try:",
        "    ^",
        "flux_compile.CompileError: 'try' is not supported inside a compiled function",
        "hint: try/except is not supported inside forward; validate inputs before calling the model",
    ]


def test_uncaught_shape_error_in_chain_names_user_line_and_layer(tmp_path):
    code, err = run_user_file(tmp_path, CHAIN_SHAPE_ERROR)
    lines = err.splitlines()
    assert code == 1
    assert lines[:4] == ["Traceback (most recent call last):", '  File "USER", line 5, in <module>',
                         "    y = m(np.ones((4, 3)))", "        ^^^^^^^^^^^^^^^^^^"]
    assert lines[4].startswith("ValueError: matmul: ") and "(size 5 is different from 4)" in lines[4]
    assert lines[5].startswith("  in Dense (forward) at ") and lines[5].endswith(": y = x @ self.W + self.b")
    assert lines[6].startswith("  in Chain (forward) at ") and lines[6].endswith("x = layer(x)  [self.layers[1]]")
    assert len(lines) == 7
    assert "flux_compile.errors" not in err and "direct cause" not in err


def test_full_traceback_on_request(tmp_path):
    code, err = run_user_file(tmp_path, CHAIN_SHAPE_ERROR, env={"FLUX_COMPILE_TRACEBACK": "full"})
    assert code == 1
    assert "model.py" in err and "direct cause" in err


def test_other_errors_are_shown_as_before(tmp_path):
    code, err = run_user_file(tmp_path, "import flux_compile\nraise KeyError('k')\n")
    assert code == 1
    assert err.splitlines() == ["Traceback (most recent call last):", '  File "USER", line 2, in <module>',
                                "    raise KeyError('k')", "KeyError: 'k'"]


def test_caught_model_error_keeps_type_cause_and_frames():
    import numpy as np
    import flux_compile as fc
    m = fc.Chain(fc.Dense(3, 4), fc.Dense(5, 2))
    with pytest.raises(ValueError) as info:
        m(np.ones((4, 3)))
    e = info.value
    assert isinstance(e, fc.ModelError) and type(e).__name__ == "ValueError"
    assert isinstance(e.__cause__, ValueError) and not isinstance(e.__cause__, fc.ModelError)
    assert not str(e).startswith("ValueError: ")
    assert e.trace[-1][2].endswith("[self.layers[1]]")


def test_compile_error_keeps_hint_as_note_in_sync():
    import flux_compile as fc
    e = fc.CompileError("bad", hint="do this")
    assert e.__notes__ == ["hint: do this"] and str(e).endswith("hint: do this")
    e.hint = "do that"
    assert e.__notes__ == ["hint: do that"]
    e.hint = None
    assert e.__notes__ == []


IPYTHON_RUNNER = """\
import sys
from IPython.core.interactiveshell import InteractiveShell
sh = InteractiveShell.instance()
sh.run_cell("%colors nocolor")
sh.run_cell("import flux_compile as fc")
sh.run_cell(open(sys.argv[1]).read())
"""


@pytest.mark.parametrize("code, expect, hidden", [
    (COMPILE_ERROR, ["    try:", "    ^", "CompileError: 'try' is not supported inside a compiled function",
                     "hint: try/except is not supported inside forward; validate inputs before calling the model"],
     "frontend.py"),
    (CHAIN_SHAPE_ERROR, ["----> 5 y = m(np.ones((4, 3)))", "x = layer(x)  [self.layers[1]]"], "model.py"),
])
def test_ipython_shows_the_same(tmp_path, code, expect, hidden):
    pytest.importorskip("IPython")
    path = tmp_path / "user.py"
    path.write_text(textwrap.dedent(code))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    env.pop("FLUX_COMPILE_TRACEBACK", None)
    p = subprocess.run([sys.executable, "-c", IPYTHON_RUNNER, str(path)], capture_output=True, text=True,
                       env=env, timeout=120)
    out = p.stdout + p.stderr
    for line in expect:
        assert line in out
    assert hidden not in out and "direct cause" not in out
    assert len(out.strip().splitlines()) <= 12
