"""Small data loaders for the examples: IDX files (MNIST) and scikit-learn's digits.

Nothing here downloads anything: ``load_mnist`` reads files you already have,
``load_digits`` uses the 8x8 digits that ship inside scikit-learn.

>>> import numpy as np, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
>>> save_idx(path, np.array([3, 1, 4], dtype=np.uint8))
>>> load_idx(path)
array([3, 1, 4], dtype=uint8)
"""
from __future__ import annotations

import gzip
import os

import numpy as np

__all__ = ["load_idx", "save_idx", "load_mnist", "load_digits"]

# IDX type byte -> big-endian dtype
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_TYPES.items()}


def _open(path):
    """Open raw or gzip-compressed, decided by the file's first two bytes."""
    with open(path, "rb") as f:
        head = f.read(2)
    return gzip.open(path, "rb") if head == b"\x1f\x8b" else open(path, "rb")


def load_idx(path):
    """Read an IDX file (the MNIST format), gzip-compressed or not, into an array.

    The header is two zero bytes, a type byte (0x08 unsigned byte, 0x09 signed
    byte, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), the number of
    dimensions, then each dimension as a big-endian int32. MNIST images have
    magic 2051 (``00 00 08 03``), labels 2049 (``00 00 08 01``). A bad magic
    number or a truncated file is a ``ValueError`` naming the file.
    """
    with _open(path) as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(data)} bytes)")
    zero, kind, ndim = data[:2], data[2], data[3]
    if zero != b"\x00\x00" or kind not in _IDX_TYPES:
        raise ValueError(f"{path}: bad IDX magic number {data[:4].hex(' ')} "
                         f"(expected 00 00 <type> <ndim>, e.g. 00 00 08 03 for images, 00 00 08 01 for labels)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: IDX header truncated")
    shape = tuple(int(n) for n in np.frombuffer(data, ">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[kind])
    count = int(np.prod(shape)) if shape else 1
    if len(data) - header != count * dtype.itemsize:
        raise ValueError(f"{path}: IDX header says shape {shape} ({count * dtype.itemsize} bytes of data) "
                         f"but the file has {len(data) - header}")
    arr = np.frombuffer(data, dtype, count=count, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def save_idx(path, array):
    """Write ``array`` as an IDX file; gzip-compressed when ``path`` ends in ``.gz``."""
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _IDX_CODES:
        raise TypeError(f"IDX cannot store dtype {array.dtype}")
    head = bytes([0, 0, _IDX_CODES[native], array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
    body = array.astype(np.dtype(_IDX_TYPES[_IDX_CODES[native]])).tobytes()
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(head + body)


_MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def _find(directory, names):
    for name in names:
        for candidate in (name, name + ".gz"):
            path = os.path.join(directory, candidate)
            if os.path.exists(path):
                return path
    return None


def load_mnist(directory):
    """The four standard MNIST IDX files in ``directory`` (each raw or ``.gz``).

    Returns ``(x_train, y_train), (x_test, y_test)``: images as float32 rows
    of ``28*28`` pixels scaled to [0, 1], labels as int64.
    """
    found = {key: _find(directory, names) for key, names in _MNIST_FILES.items()}
    missing = [names[0] for key, names in _MNIST_FILES.items() if found[key] is None]
    if missing:
        raise FileNotFoundError(f"{directory}: no {', '.join(missing)} (with or without .gz)")

    def images(path):
        x = load_idx(path)
        return (x.reshape(len(x), -1) / np.float32(255)).astype(np.float32)

    def labels(path):
        return load_idx(path).astype(np.int64).reshape(-1)

    return ((images(found["train_images"]), labels(found["train_labels"])),
            (images(found["test_images"]), labels(found["test_labels"])))


def load_digits(test_size=0.2, seed=0):
    """scikit-learn's 1797 handwritten 8x8 digits, split into train and test.

    Returns ``(x_train, y_train), (x_test, y_test)`` like :func:`load_mnist`:
    images as float32 rows of 64 pixels scaled to [0, 1], labels as int64.
    The split is a seeded shuffle (``seed``), ``test_size`` the test fraction.
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as err:
        raise ImportError("load_digits needs scikit-learn: pip install 'flux_compile[examples]' "
                          "(or pass the MNIST files with --data DIR)") from err
    digits = sk_load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_size))
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])
