"""examples/mnist.py end to end, on a small subset and on tiny IDX files written here."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flux_compile.datasets import save_idx

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mnist.py"


def run(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(EXAMPLE), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"test accuracy: [01]\.\d\d", last), proc.stdout
    return proc, float(last.split()[-1])


def has_matplotlib():
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        return False


def test_digits_subset(tmp_path):
    pytest.importorskip("sklearn")
    plot = tmp_path / "curve.png"
    proc, acc = run("--limit", "400", "--epochs", "8", "--plot", str(plot), cwd=tmp_path)
    assert "scikit-learn digits" in proc.stdout
    assert acc > 0.5
    if has_matplotlib():
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
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
    proc, acc = run("--data", str(data), "--epochs", "15", "--batch-size", "16", "--plot", "",
                    cwd=tmp_path)
    assert "MNIST from" in proc.stdout and "120 training, 30 test images of 784 pixels" in proc.stdout
    assert acc >= 0.8
    assert not (tmp_path / "mnist_curve.png").exists()
