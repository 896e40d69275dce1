"""Saving and loading parameters: ``save(path, m)`` / ``load(path, m)``.

The file is a NumPy ``.npz`` with one array per Param, keyed by its field
path (``"first.W"``, ``"layers[0].b"``), frozen Params included. Only Params
are stored: constants (``fc.const``) and other attributes are part of the
model's code and construction, not its learned state. A Param shared by two
sub-models is stored once, under its first path. (Pickling a whole model
works too; this format survives changes to the code.)

>>> import numpy as np, tempfile, os
>>> from flux_compile.params import Param
>>> class Toy:
...     __flux_net__ = True
...     def __init__(self, w): self.W = Param(np.full(2, w))
>>> path = os.path.join(tempfile.mkdtemp(), "toy")
>>> save(path, Toy(1.0)); m = load(path, Toy(0.0)); m.W.value
array([1., 1.])
"""
from __future__ import annotations

import os
import zipfile

import numpy as np

from .params import named_params, path_str

__all__ = ["save", "load", "LoadError"]


class LoadError(ValueError):
    """The file does not fit the model; ``.problems`` lists every mismatch."""

    def __init__(self, path, problems):
        self.path, self.problems = path, list(problems)
        super().__init__(f"cannot load {path}: {len(self.problems)} mismatch"
                         f"{'es' if len(self.problems) != 1 else ''}\n  "
                         + "\n  ".join(self.problems))


def _npz(path):
    path = os.fspath(path)
    return path if path.endswith(".npz") else path + ".npz"


def save(path, m):
    """Write every Param of ``m`` to ``path`` (``.npz`` is added when missing)."""
    # the same layout as np.savez, written by hand so that no field name can
    # collide with savez's own keyword arguments (``file``, ``allow_pickle``)
    # (written to a temporary file first, so an interrupted save leaves the old file intact)
    target = _npz(path)
    tmp = target + ".tmp"
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for q, p in named_params(m):
                with zf.open(path_str(q) + ".npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asarray(p.value), allow_pickle=False)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load(path, m):
    """Read Params saved by :func:`save` into ``m`` and return ``m``.

    Every name and shape is checked first; a missing, unexpected or
    differently shaped entry raises :class:`LoadError` listing all of them,
    and then nothing has been changed. Values are copied into the existing
    arrays in each Param's own dtype. ``path`` may omit ``.npz``.
    """
    path = os.fspath(path)
    if not os.path.exists(path) and os.path.exists(_npz(path)):
        path = _npz(path)
    with np.load(path, allow_pickle=False) as f:
        stored = {k: f[k] for k in f.files}
    wanted = {path_str(q): p for q, p in named_params(m)}
    problems = []
    for key, p in wanted.items():
        if key not in stored:
            problems.append(f"missing in file: {key} (model shape {p.value.shape})")
        elif stored[key].shape != p.value.shape:
            problems.append(f"shape differs: {key} is {stored[key].shape} in the file, "
                            f"{p.value.shape} in the model")
    for key in stored:
        if key not in wanted:
            problems.append(f"unexpected in file: {key} (shape {stored[key].shape})")
    if problems:
        raise LoadError(path, problems)
    for key, p in wanted.items():
        p.value[...] = stored[key].astype(p.value.dtype, copy=False)
    return m
