"""fc.train's progress display (issue 15, item 8): tqdm when installed, its own bar with
an ETA otherwise, shown in Jupyter; the examples' output is quiet and reproducible."""
import io
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest

import flux_compile as fc
import importlib

train_mod = importlib.import_module("flux_compile.train")

ROOT = pathlib.Path(__file__).resolve().parent.parent


def regression(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    return x, x @ np.array([[1.0], [-2.0], [0.5]])


class FakeTqdm:
    made = []

    def __init__(self, total=None, desc=None, unit=None, leave=None):
        self.total, self.desc, self.n, self.postfix, self.closed = total, desc, 0, None, False
        FakeTqdm.made.append(self)

    def update(self, k):
        self.n += k

    def set_postfix(self, refresh=True, **kw):
        self.postfix = kw

    def close(self):
        self.closed = True


def test_uses_tqdm_auto_when_installed(monkeypatch):
    auto = types.ModuleType("tqdm.auto")
    auto.tqdm = FakeTqdm
    monkeypatch.setitem(sys.modules, "tqdm", types.ModuleType("tqdm"))
    monkeypatch.setitem(sys.modules, "tqdm.auto", auto)
    FakeTqdm.made = []
    x, y = regression(40)
    h = fc.train(fc.Dense(3, 1), fc.mse, fc.data.batches(x, y, 16), 0.01, epochs=2, progress=True)
    assert [(b.desc, b.total, b.n, b.closed) for b in FakeTqdm.made] == [
        ("epoch 1/2", 3, 3, True), ("epoch 2/2", 3, 3, True)]
    assert float(FakeTqdm.made[-1].postfix["loss"]) == pytest.approx(h.epochs[-1], rel=1e-3)


def test_own_bar_without_tqdm_shows_eta_then_elapsed(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    assert isinstance(train_mod.progress_bar(4, 1, 1), train_mod.ProgressBar)
    stream = io.StringIO()
    bar = train_mod.ProgressBar(4, 1, 2, stream=stream, interval=0)
    bar.start -= 2.0                                    # two seconds for the first step
    bar.update(1, 0.5)
    assert "1/4" in stream.getvalue() and "ETA 0:06" in stream.getvalue()
    bar.update(4, 0.25)
    bar.close()
    assert stream.getvalue().rstrip().endswith("in 0:02")


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (65, "1:05"), (3725, "1:02:05")])
def test_clock(seconds, text):
    assert train_mod._clock(seconds) == text


def test_progress_shown_in_a_notebook_kernel(monkeypatch):
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    assert train_mod._show_progress(None) is True
    ipython.get_ipython = lambda: types.SimpleNamespace()       # a terminal IPython: stderr decides
    assert train_mod._show_progress(None) is sys.stderr.isatty()
    assert train_mod._show_progress(False) is False


def run_example(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def test_quickstart_step0_loss_is_the_same_every_run():
    runs = [run_example("-c", "import sys; sys.argv=['q']; sys.path.insert(0, 'examples');"
                              "import quickstart; quickstart.main(steps=1)") for _ in range(2)]
    firsts = [next(l for l in r.stdout.splitlines() if l.startswith("step    0")) for r in runs]
    assert runs[0].returncode == 0 and firsts[0] == firsts[1]


def test_char_rnn_does_not_log_every_step(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    r = run_example("examples/char_rnn.py", "--text", str(text), "--steps", "12", "--hidden", "8",
                    "--seq-len", "8", "--batch-size", "4", "--save", "", "--sample", "0")
    assert r.returncode == 0, r.stderr
    step_lines = [l for l in r.stdout.splitlines() if l.startswith("step ")]
    assert len(step_lines) == 1 and step_lines[0].startswith("step     1 ")
