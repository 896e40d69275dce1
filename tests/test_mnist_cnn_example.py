"""examples/mnist_cnn.py end to end: the full digits run reaches 0.98, a short run writes
its plot, and tiny 28x28 IDX files written here train through ``--data``."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flux_compile.datasets import save_idx

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mnist_cnn.py"


def run(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(EXAMPLE), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"test accuracy: [01]\.\d\d\d", last), proc.stdout
    return proc, float(last.split()[-1])


def test_digits_full_run_reaches_098(tmp_path):
    pytest.importorskip("sklearn")
    proc, acc = run("--plot", "", cwd=tmp_path)
    assert "scikit-learn digits (8x8)" in proc.stdout and "of 8x8 pixels" in proc.stdout
    assert acc >= 0.98, proc.stdout


def test_digits_short_run_writes_the_curve(tmp_path):
    pytest.importorskip("sklearn")
    plot = tmp_path / "curve.png"
    proc, acc = run("--limit", "300", "--epochs", "3", "--plot", str(plot), cwd=tmp_path)
    assert acc > 0.3
    try:
        import matplotlib  # noqa: F401
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    except ImportError:
        assert "matplotlib is not installed" in proc.stderr


def test_tiny_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "mnist"
    data.mkdir()

    def digits(n):
        # each class lights up its own band of rows: learnable in a few steps
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(labels):
            images[i, 2 * k + 4:2 * k + 6, :] = 255
        return images, labels

    x, y = digits(120)
    save_idx(data / "train-images-idx3-ubyte.gz", x)
    save_idx(data / "train-labels-idx1-ubyte.gz", y)
    x, y = digits(30)
    save_idx(data / "t10k-images-idx3-ubyte", x)
    save_idx(data / "t10k-labels-idx1-ubyte", y)
    proc, acc = run("--data", str(data), "--epochs", "10", "--batch-size", "16", "--plot", "",
                    cwd=tmp_path)
    assert "120 training, 30 test images of 28x28 pixels" in proc.stdout
    assert acc >= 0.8
