"""Augmented assignment on arrays, ``v += w``, with NumPy's in-place meaning.

NumPy writes the result into ``v``: it keeps ``v``'s dtype (a ``same_kind`` cast, so an
integer ``v`` with a float result raises) and ``v``'s shape (a right side that broadcasts
``v`` larger raises). The compiled code computes ``v + w`` as usual; the cast and the shape
check (:func:`~flux_compile.rules.helpers.inplace_result`) are added only where the compiler
cannot prove them unneeded, so the common same-dtype ``h += ...`` reads as before.

Compiled code never writes into an array, so ``v += w`` is refused where NumPy's write would
be seen elsewhere: ``v`` an input (the caller's array), a Param, an attribute, a captured
global, or a view of another array (a slice, ``reshape``, ``.T``).
"""
from __future__ import annotations

import numpy as np

from . import shapeinfer
from .dtypeinfer import keeps_dtype
from .ir import ATTR, CALL, CONST, INPUT, PARAM, Node
from .rules import helpers
from .tracecore import Static, shape_of

_VIEWS = {np.transpose, np.reshape, np.swapaxes, np.expand_dims, np.squeeze, np.ravel, np.moveaxis}
_HINT = "write v = v + w (a new array; the original is unchanged), or v = v.copy() before the +="


def inplace_value(tracer, target, operand, result, stmt):
    """The value ``target op= operand`` leaves in the target, given ``result = target op operand``."""
    if not isinstance(target, Node) or not isinstance(result, Node) or shape_of(target) == ():
        return result           # a number is rebound, as in Python: NumPy scalars are immutable
    _refuse_shared(tracer, target, stmt)
    shape_ok = _check_shape(tracer, target, result, stmt)
    value = operand.value if isinstance(operand, Static) else operand
    if shape_ok and keeps_dtype(target, value):
        return result
    return tracer.call_primitive(helpers.inplace_result, [result, target], {}, stmt)


def _refuse_shared(tracer, target, stmt):
    what = _shared_as(tracer, target)
    if what is not None:
        tracer.error(f"in-place '{_op_text(stmt)}=' on {what}: NumPy would write into that array, "
                     "compiled code does not", stmt, hint=_HINT)


def _shared_as(tracer, target):
    initial = target.meta.get("initial") if target.op == INPUT else None
    if isinstance(initial, Node):       # a loop's carried value: NumPy writes into its first value
        return _shared_as(tracer, initial)
    if target.op == INPUT and "state" not in target.meta:
        root = getattr(tracer.ctx, "root_graph", None) or tracer.ctx.graph
        if any(target is i for i in root.inputs):
            return "a captured array" if "free" in target.meta else "an input (the caller's array)"
    if target.op == PARAM:
        return "a Param"
    if target.op == ATTR:
        return "an attribute's array"
    if target.op == CALL and (target.fn in _VIEWS or target.fn is helpers.getitem and _basic_index(target)):
        return "a view of another array"
    return None


def _basic_index(node):
    """A subscript by ints, slices, None and ``...``: NumPy returns a view."""
    if len(node.args) < 2 or node.args[1].op != CONST:
        return False
    index = node.args[1].value
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(p, (int, slice)) or p is None or p is Ellipsis for p in parts)


def _check_shape(tracer, target, result, stmt):
    """True when the result certainly has the target's shape; a compile error when it certainly
    has not (NumPy raises); False when only the run time can tell."""
    mine, theirs = shape_of(target), shape_of(result)
    if shapeinfer.same(mine, theirs):
        return True
    if mine is not None and theirs is not None and _certainly_larger(mine, theirs):
        tracer.error(f"'{_op_text(stmt)}=' would broadcast the target to a larger shape "
                     f"({_fmt(theirs)} from {_fmt(mine)}): NumPy raises here", stmt,
                     hint="an in-place operation keeps the target's shape; write v = v + w for a new array")
    return False


def _certainly_larger(mine, theirs):
    """Broadcasting certainly made a dim larger: a higher rank, or a 1 grown to another size."""
    if len(theirs) != len(mine):
        return True
    for m, t in zip(mine, theirs):
        m, t = shapeinfer.find(m), shapeinfer.find(t)
        if isinstance(m, int) and (isinstance(t, int) and t != m or isinstance(t, shapeinfer.Sym)
                                   and m == 1 and t.nonone):
            return True
    return False


def _fmt(shape):
    dims = [shapeinfer.find(d) for d in shape]
    return "(" + ", ".join(str(d) if isinstance(d, int) else "?" for d in dims) + ")"


_OPS = {"Add": "+", "Sub": "-", "Mult": "*", "Div": "/", "FloorDiv": "//", "Mod": "%", "Pow": "**",
        "MatMult": "@", "BitAnd": "&", "BitOr": "|", "BitXor": "^", "LShift": "<<", "RShift": ">>"}


def _op_text(stmt):
    return _OPS.get(type(stmt.op).__name__, "op")
