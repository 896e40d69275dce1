"""An optimiser's update block rewritten to write every array it computes into kept arrays.

``fc.train_step`` runs each Param's update (``p = p - lr * g``) with ``out=`` into arrays a
:class:`~flux_compile.buffers.Buffers` pool keeps across steps, never into ``p``, ``g`` or the
optimiser's state, so a step stays all or nothing (the commit swaps references):

>>> for line in buffered_block(["p = p - lr * g"], {"p", "g"}, "buffers"):
...     print(line)
p_new = buffers.like(k * 64 + 0, p)
np.multiply(lr, g, out=p_new)
np.subtract(p, p_new, out=p_new)
p = p_new
"""
from __future__ import annotations

import ast
import itertools

__all__ = ["buffered_block", "SLOTS_PER_PARAM"]


SLOTS_PER_PARAM = 64
"""Buffer slots of one Param's update (its key is ``k * SLOTS_PER_PARAM + j``)."""

_UFUNCS = {ast.Add: "add", ast.Sub: "subtract", ast.Mult: "multiply", ast.Div: "true_divide"}
_UNARY = {"sqrt", "exp", "log", "abs", "square", "sign", "negative"}


def buffered_block(lines, arrays, kept):
    """An optimiser block (``p = p - lr * g``, one assignment a line) rewritten so that every
    array it computes is written into a kept array (``out=``), e.g. ``p_new = kept.like(key, p);
    np.multiply(lr, g, out=p_new); np.subtract(p, p_new, out=p_new); p = p_new``. ``arrays``:
    the names that are arrays (the rest are numbers). A line it cannot rewrite stays as it is."""
    arrays, out, keys = set(arrays), [], itertools.count()     # past 64 slots share keys: still sound
    for line in lines:
        stmt = ast.parse(line).body[0]
        rewritten = None
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            rewritten = _into_buffers(stmt.targets[0].id, stmt.value, arrays, kept, keys)
        if rewritten is None:
            out.append(line)
            continue
        out += rewritten
        arrays.add(stmt.targets[0].id)
    return out


def _into_buffers(target, value, arrays, kept, keys):
    """Statements computing array expression ``value`` into kept arrays, ending ``target = ...``;
    None when ``value`` is not an array expression of + - * / and np.sqrt & co."""
    def is_array(e):
        return any(isinstance(n, ast.Name) and n.id in arrays for n in ast.walk(e))

    def supported(e):
        if not is_array(e):
            return True
        if isinstance(e, ast.Name):
            return True
        if isinstance(e, ast.BinOp):
            return type(e.op) in _UFUNCS and supported(e.left) and supported(e.right)
        if isinstance(e, ast.UnaryOp):
            return isinstance(e.op, ast.USub) and supported(e.operand)
        return isinstance(e, ast.Call) and ast.unparse(e.func) in {f"np.{u}" for u in _UNARY} \
            and len(e.args) == 1 and not e.keywords and supported(e.args[0])

    if not is_array(value) or isinstance(value, ast.Name) or not supported(value):
        return None
    stmts = []

    def fresh():
        key = next(keys)
        name = f"scratch_{key}" if stmts else f"{target}_new"
        stmts.append(f"{name} = {kept}.like(k * {SLOTS_PER_PARAM} + {key}, p)")
        return name

    def operand(e, into):
        if isinstance(e, ast.Name) or not is_array(e):
            return ast.unparse(e)
        compute(e, into)
        return into

    def compute(e, into):
        if isinstance(e, ast.BinOp):
            computed = [side for side in (e.left, e.right) if is_array(side) and not isinstance(side, ast.Name)]
            left = operand(e.left, into)
            right = operand(e.right, fresh() if len(computed) == 2 else into)
            stmts.append(f"np.{_UFUNCS[type(e.op)]}({left}, {right}, out={into})")
        elif isinstance(e, ast.UnaryOp):
            stmts.append(f"np.negative({operand(e.operand, into)}, out={into})")
        else:
            stmts.append(f"{ast.unparse(e.func)}({operand(e.args[0], into)}, out={into})")

    result = fresh()
    compute(value, result)
    stmts.append(f"{target} = {result}")
    return stmts
