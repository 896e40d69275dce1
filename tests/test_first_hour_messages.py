"""Common habits get messages that say what to do (issue 15, item 2: integer labels to
fc.crossentropy, a keyword that names no input, a user file that calls sys.exit)."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import flux_compile as fc
from numeric import numgrad

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4)])
def test_crossentropy_takes_integer_class_indices(dtype, shape):
    rng = np.random.default_rng(3)
    probs = fc.softmax(rng.standard_normal(shape))
    labels = rng.integers(0, shape[-1], size=shape[:-1]).astype(dtype)
    onehot = np.eye(shape[-1])[labels]
    direct = fc.crossentropy(probs, labels)
    assert direct == pytest.approx(float(fc.crossentropy(probs, onehot)), rel=1e-12)
    value, (dp, dl) = fc.grad(fc.crossentropy, probs, labels)
    assert float(value) == pytest.approx(float(direct), rel=1e-12) and dl is None
    expected = numgrad(lambda p: float(fc.crossentropy(p, onehot)), probs)
    np.testing.assert_allclose(dp, expected, rtol=1e-6, atol=1e-8)


def test_crossentropy_with_labels_of_no_fitting_shape_says_so():
    probs = fc.softmax(np.ones((4, 3)))
    with pytest.raises(fc.CompileError, match="integer labels must have probs' batch shape"):
        fc.grad(fc.crossentropy, probs, np.zeros((2, 4), dtype=int))


def test_crossentropy_under_train_with_integer_labels():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 4))
    labels = (x[:, 0] > 0).astype(int)
    model = fc.Chain(fc.Dense(4, 2), fc.softmax)
    h = fc.train(model, fc.crossentropy, fc.data.batches(x, labels, 8), fc.optim.Adam(0.05), epochs=5,
                 progress=False)
    assert h.epochs[-1] < h.epochs[0]


@pytest.mark.parametrize("call", ["__call__", "pullback"])
def test_a_keyword_that_names_no_input_is_named(call):
    m = fc.Dense(3, 2)
    with pytest.raises(TypeError, match=r"Dense\(\.\.\.\) got no input named 'z': Dense.forward takes \(x\)"):
        getattr(m, call)(z=np.ones((2, 3)))
    with pytest.raises(TypeError, match=r"missing a required argument: 'x': Dense.forward takes \(x\)"):
        getattr(m, call)()
    assert m(x=np.ones((2, 3))).shape == (2, 2)


def test_cli_says_when_the_user_file_calls_sys_exit(tmp_path):
    f = tmp_path / "exits.py"
    f.write_text("import sys\nimport flux_compile as fc\n\n@fc.net\nclass A:\n    def __init__(self):\n"
                 "        self.W = fc.initn(3, 2)\n    def forward(self, x):\n        return x @ self.W\n\n"
                 "sys.exit(7)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "flux_compile", "show", f"{f}:A"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip() == (f"flux-compile: error: running {f} to load it called sys.exit(7); put the "
                                f"script's own code under `if __name__ == \"__main__\":` so that loading it "
                                f"only defines the models")
