"""Errors that point at the user's own line.

``CompileError`` is raised while reading source the compiler does not support;
``ModelError`` re-raises a failure inside generated code as the user's
statement (``Affine at model.py:8 / TLP at model.py:21``), with the original
exception chained.
"""
from __future__ import annotations

import linecache
import os
import re
import sys
import types


class CompileError(SyntaxError):
    """Unsupported code: has ``filename``, ``lineno``, ``offset``, ``text`` and ``hint``.

    >>> import numpy as np, flux_compile as fc
    >>> @fc.net
    ... class Loop:
    ...     def __init__(self):
    ...         self.W = np.ones((2, 2))
    ...     def forward(self, x):
    ...         with open("f"):
    ...             return x @ self.W
    >>> try:
    ...     Loop()(np.ones((1, 2)))
    ... except fc.CompileError as e:
    ...     print(e.lineno > 0, isinstance(e, SyntaxError), bool(e.hint))
    True True True
    """

    def __init__(self, msg, filename=None, lineno=None, offset=None, text=None, hint=None):
        if text is None and filename and lineno:
            text = linecache.getline(filename, lineno).rstrip("\n") or None
        super().__init__(msg, (filename, lineno, offset, text))
        self.hint = hint

    @property
    def hint(self):
        return self._hint

    @hint.setter
    def hint(self, value):
        """Kept as a note too: Python prints a SyntaxError from its fields, not ``str``,
        and shows notes after it, so an uncaught error still ends with its hint."""
        self._hint = value
        notes = [n for n in getattr(self, "__notes__", ()) if not n.startswith("hint: ")]
        self.__notes__ = notes + ([f"hint: {value}"] if value else [])

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


CompileError.__module__ = "flux_compile"       # its label: flux_compile.CompileError, as imported


class Retrace(Exception):
    """Raised by a guard in generated code: this call took a different path than the
    variant was compiled for. Caught by the model wrappers, never seen by users."""


class GradcheckError(AssertionError):
    """A gradient disagrees with finite differences; ``.report`` has the table.

    >>> import numpy as np, flux_compile as fc
    >>> def f(x): return x * x
    >>> @fc.diffrule(f)
    ... def _(dy, y, x):
    ...     return dy * 3 * x                   # wrong: should be 2 * x
    >>> try:
    ...     fc.gradcheck(lambda x: f(x).sum(), np.ones(3))
    ... except fc.GradcheckError as e:
    ...     print(e.report.ok)
    False
    """

    def __init__(self, msg, report=None):
        super().__init__(msg)
        self.report = report


class ModelError(Exception):
    """An error inside generated code, re-raised at the user's statement.

    ``.trace`` lists ``(owner, "file:line", statement)`` from the innermost model
    outwards; ``__cause__`` is the original exception.

    >>> import numpy as np, flux_compile as fc
    >>> m = fc.Chain(fc.Dense(3, 2), fc.Dense(4, 1))        # 2 outputs feed 4 inputs
    >>> try:
    ...     m(np.ones((5, 3)))
    ... except fc.ModelError as e:
    ...     print(len(e.trace) >= 1, isinstance(e, ValueError))
    True True
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


ModelError.__module__ = "flux_compile"


_combined = {}


def model_error_type(exc_type):
    """A subclass of both ``ModelError`` and ``exc_type`` so ``except ValueError`` still works."""
    if issubclass(exc_type, ModelError):
        return exc_type
    try:
        return _combined[exc_type]
    except KeyError:
        try:
            # labelled as the original type (``ValueError: ...``) in a traceback
            t = type(exc_type.__name__, (ModelError, exc_type), {"__module__": exc_type.__module__,
                                                                 "__qualname__": exc_type.__qualname__,
                                                                 "__str__": ModelError.__str__})
        except TypeError:
            t = ModelError
        _combined[exc_type] = t
        return t


def error_message(exc):
    """The message a ModelError made from ``exc`` starts with: the text alone when the
    error keeps ``exc``'s type (its label says the type), else ``Type: text``."""
    if model_error_type(type(exc)) is ModelError and not isinstance(exc, ModelError):
        return f"{type(exc).__name__}: {exc}"
    return str(exc)


def bad_call_message(owner, sig, kwargs, error):
    """Why a call of a model does not fit ``forward``'s signature ``sig``, naming the keyword
    that fits no input before any missing one (Python names the missing one first)."""
    inputs = [name for name in sig.parameters][1:]
    takes = f"{owner}.forward takes ({', '.join(inputs)})"
    unknown = [k for k in kwargs if k not in inputs]
    if unknown:
        return f"{owner}(...) got no input named {', '.join(map(repr, unknown))}: {takes}"
    return f"{owner}(...): {error}: {takes}"


_CALL = re.compile(r"\bself((?:\.\w+|\[\d+\])+)\(")


def called_submodel(filename, lineno):
    """``self.layers[1]`` when generated line ``lineno`` calls a sub-model, else None."""
    m = _CALL.search(linecache.getline(filename, lineno))
    return "self" + m.group(1) if m else None


# --------------------------------------------------------------------------------
# uncaught errors: the user's frames only

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
FULL_TRACEBACK = "FLUX_COMPILE_TRACEBACK"       # =full shows the library's frames too


def is_library_frame(frame):
    """A frame of this package's own files or of generated code."""
    name = frame.f_code.co_filename
    return name.startswith("<flux_compile") or os.path.abspath(name).startswith(PACKAGE_DIR + os.sep)


def user_traceback(tb):
    """``tb`` rebuilt without library frames (None when no frame is the user's)."""
    kept = []
    while tb is not None:
        if not is_library_frame(tb.tb_frame):
            kept.append(tb)
        tb = tb.tb_next
    out = None
    for t in reversed(kept):
        out = types.TracebackType(out, t.tb_frame, t.tb_lasti, t.tb_lineno)
    return out


def _ours(value):
    return isinstance(value, (CompileError, ModelError)) and os.environ.get(FULL_TRACEBACK) != "full"


class _Trimmed:
    """While shown: the error with the user's frames only and without its chained cause
    (its text already says what the cause said); put back afterwards."""

    def __init__(self, value):
        self.value = value

    def __enter__(self):
        v = self.value
        self.saved = (v.__traceback__, v.__cause__, v.__suppress_context__)
        v.__traceback__ = user_traceback(v.__traceback__)
        v.__cause__, v.__suppress_context__ = None, True
        return v.__traceback__

    def __exit__(self, *exc):
        v = self.value
        v.__traceback__, v.__cause__, v.__suppress_context__ = self.saved
        return False


def _excepthook(etype, value, tb):
    previous = _excepthook.previous
    if not _ours(value):
        return previous(etype, value, tb)
    value.__traceback__ = tb
    with _Trimmed(value) as shown:
        previous(etype, value, shown)


def _ipython_handler(shell, etype, value, tb, tb_offset=None):
    if not _ours(value):
        return shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
    value.__traceback__ = tb
    with _Trimmed(value) as shown:
        if isinstance(value, SyntaxError):      # IPython would list the frames it came through
            shell._showtraceback(etype, value, shell.InteractiveTB.get_exception_only(etype, value))
        else:
            shell.showtraceback((etype, value, shown), tb_offset=tb_offset)


def install_error_display():
    """An uncaught CompileError / ModelError shows the user's frames, file:line, caret, hint
    and model trace, without the library's frames (set ``FLUX_COMPILE_TRACEBACK=full``
    to see them). Other errors are shown as before."""
    if sys.excepthook is not _excepthook:
        _excepthook.previous = sys.excepthook
        sys.excepthook = _excepthook
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    if shell is not None and not getattr(shell, "custom_exceptions", ()):
        shell.set_custom_exc((CompileError, ModelError), _ipython_handler)
