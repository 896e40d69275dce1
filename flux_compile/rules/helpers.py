"""Run-time helpers called by name from generated backward code.

Rules must be straight-line code; whatever depends on shapes, ``ndim`` or data
values lives here as plain NumPy. Helpers are never differentiated. They keep
the gradient's dtype (float32 in, float32 out) and accept 0-d inputs.

Also here: *primitive shims*, small functions standing for Python operations
that are not NumPy functions, so a rule has something to hang on:
``getitem(x, index)`` is ``x[index]``, ``astype(x, dtype)`` and ``identity(x)``.

The helpers live in three parts (``helpers_shape``: shims, broadcasting, reductions,
shape and indexing; ``helpers_linalg``: linear algebra and later shims;
``helpers_coverage``: FFT, svd, eig and the rest of autograd's coverage). This module
is their one public face: rules import helpers from here, and generated code's import
lines name this module.
"""
from __future__ import annotations

from . import helpers_coverage, helpers_linalg, helpers_shape
from .helpers_coverage import *  # noqa: F401,F403
from .helpers_linalg import *  # noqa: F401,F403
from .helpers_shape import *  # noqa: F401,F403

__all__ = helpers_shape.__all__ + helpers_linalg.__all__ + helpers_coverage.__all__
