"""Kept importable until the merge: the interpreter lives in :mod:`flux_compile.interp`."""
from __future__ import annotations

from .interp import UNKNOWN, Concrete  # noqa: F401
