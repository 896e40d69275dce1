"""The symbolic evaluator of the supported subset of Python (layer 1 of the package).

:class:`Tracer` runs a function body on symbolic values (see tracecore.py) and records
run-time work as nodes of an IR graph: statements (tracestmt.py), expressions
(traceexpr.py), calls (tracecall.py) and builtins (builtins.py). User functions and
derivative rules are inlined: their source is parsed (parsing.py) and evaluated the same way.
It knows nothing of models; the frontend adds ``self.attr`` reads, sub-models and state.
"""
from __future__ import annotations

from .tracecall import Calls
from .traceexpr import Expressions, Subscripts
from .tracecond import Conds
from .traceloop import Loops
from .tracestmt import Inlining, Statements


class Tracer(Inlining, Statements, Loops, Conds, Expressions, Subscripts, Calls):
    """Evaluates function bodies into the context's graph (``ctx``: a tracecore.Context)."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.frame = None
