"""IDX files (MNIST format): round trip raw and gzip, bad magic, load_mnist."""
import gzip

import numpy as np
import pytest

from flux_compile.datasets import load_idx, load_mnist, save_idx


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1], dtype=np.uint8)
    suffix = ".gz" if gz else ""
    save_idx(tmp_path / f"img{suffix}", images)
    save_idx(tmp_path / f"lab{suffix}", labels)
    np.testing.assert_array_equal(load_idx(tmp_path / f"img{suffix}"), images)
    np.testing.assert_array_equal(load_idx(tmp_path / f"lab{suffix}"), labels)


def test_standard_magic_numbers(tmp_path):
    save_idx(tmp_path / "img", np.zeros((2, 28, 28), np.uint8))
    save_idx(tmp_path / "lab", np.zeros(2, np.uint8))
    assert int.from_bytes((tmp_path / "img").read_bytes()[:4], "big") == 2051
    assert int.from_bytes((tmp_path / "lab").read_bytes()[:4], "big") == 2049


def test_hand_written_file_and_other_types(tmp_path):
    # header 00 00 08 01, one dimension of 3, then the bytes
    (tmp_path / "raw").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
    np.testing.assert_array_equal(load_idx(tmp_path / "raw"), [7, 8, 9])
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    save_idx(tmp_path / "f", x)
    got = load_idx(tmp_path / "f")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, x)


def test_bad_magic(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"PK\x03\x04" + bytes(20))
    with pytest.raises(ValueError, match="bad IDX magic number 50 4b 03 04"):
        load_idx(path)
    gz = tmp_path / "bad.gz"
    with gzip.open(gz, "wb") as f:
        f.write(bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 0]))
    with pytest.raises(ValueError, match="bad IDX magic"):
        load_idx(gz)


def test_truncated(tmp_path):
    (tmp_path / "t").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        load_idx(tmp_path / "t")


def test_load_mnist(tmp_path):
    rng = np.random.default_rng(0)
    save_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (6, 28, 28), dtype=np.uint8))
    save_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(6, dtype=np.uint8))
    save_idx(tmp_path / "t10k-images-idx3-ubyte", np.full((2, 28, 28), 255, np.uint8))
    save_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([4, 2], np.uint8))
    (xtr, ytr), (xte, yte) = load_mnist(tmp_path)
    assert xtr.shape == (6, 784) and xtr.dtype == np.float32 and 0 <= xtr.min() and xtr.max() <= 1
    assert ytr.dtype == np.int64 and ytr.tolist() == list(range(6))
    assert (xte == 1).all() and yte.tolist() == [4, 2]


def test_load_mnist_missing(tmp_path):
    save_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte, t10k-images-idx3-ubyte"):
        load_mnist(tmp_path)


def test_load_digits():
    pytest.importorskip("sklearn")
    from flux_compile.datasets import load_digits
    (xtr, ytr), (xte, yte) = load_digits()
    assert xtr.shape[1] == 64 and xtr.dtype == np.float32 and xtr.max() == 1.0
    assert len(xtr) + len(xte) == 1797 and abs(len(xte) - 359) <= 1
    assert set(ytr.tolist()) == set(range(10))
