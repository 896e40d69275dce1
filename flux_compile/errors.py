"""Errors that point at the user's own line.

``CompileError`` is raised while reading source the compiler does not support;
``ModelError`` re-raises a failure inside generated code as the user's
statement (``Affine at model.py:8 / TLP at model.py:21``), with the original
exception chained.
"""
from __future__ import annotations

import linecache


class CompileError(SyntaxError):
    """Unsupported code: has ``filename``, ``lineno``, ``offset``, ``text`` and ``hint``."""

    def __init__(self, msg, filename=None, lineno=None, offset=None, text=None, hint=None):
        if text is None and filename and lineno:
            text = linecache.getline(filename, lineno).rstrip("\n") or None
        super().__init__(msg, (filename, lineno, offset, text))
        self.hint = hint

    def __str__(self):
        where = f"{self.filename}:{self.lineno}" if self.filename else "<unknown>"
        out = f"{where}: {self.msg}"
        if self.text:
            out += "\n    " + self.text.strip()
            if self.offset is not None:
                indent = len(self.text) - len(self.text.lstrip())
                out += "\n    " + " " * max(0, self.offset - 1 - indent) + "^"
        if self.hint:
            out += f"\nhint: {self.hint}"
        return out


class Retrace(Exception):
    """Raised by a guard in generated code: this call took a different path than the
    variant was compiled for. Caught by the model wrappers, never seen by users."""


class GradcheckError(AssertionError):
    """A gradient disagrees with finite differences; ``.report`` has the table."""

    def __init__(self, msg, report=None):
        super().__init__(msg)
        self.report = report


class ModelError(Exception):
    """An error inside generated code, re-raised at the user's statement.

    ``.trace`` lists ``(owner, "file:line", statement)`` from the innermost model
    outwards; ``__cause__`` is the original exception.
    """

    def __init__(self, msg, trace=()):
        super().__init__(msg)
        self.original_message = msg
        self.trace = list(trace)

    def __str__(self):
        lines = [self.original_message]
        for owner, where, text in self.trace:
            lines.append(f"  in {owner} at {where}: {text}")
        return "\n".join(lines)


_combined = {}


def model_error_type(exc_type):
    """A subclass of both ``ModelError`` and ``exc_type`` so ``except ValueError`` still works."""
    if issubclass(exc_type, ModelError):
        return exc_type
    try:
        return _combined[exc_type]
    except KeyError:
        try:
            t = type(exc_type.__name__, (ModelError, exc_type), {"__module__": "flux_compile.errors",
                                                                 "__str__": ModelError.__str__})
        except TypeError:
            t = ModelError
        _combined[exc_type] = t
        return t
