"""Memory planning, asked by codegen per generated function: an elementwise result is
written into a temporary that dies at that statement (``h = np.tanh(z, out=z)``), never into
anything returned, saved for the backward, held by a sub-model or visible to the user."""
from __future__ import annotations

import numpy as np

from .ir import ACCUM, CALL, CONST, GETATTR, PARAM
from .passes import ShapeClasses, _known_inexact

INTO_BUFFER = {np.add, np.subtract, np.multiply, np.true_divide, np.negative, np.tanh, np.exp,
               np.log, np.sqrt, np.square, np.reciprocal, np.expm1, np.log1p, np.sin, np.cos,
               np.maximum, np.minimum}
"""Ufuncs whose result has their inexact operands' common dtype (and an operand's shape when
no operand broadcasts it larger): they may write into an operand's buffer."""
FRESH = INTO_BUFFER | {np.matmul}
"""Calls whose result, of rank >= 1, is a new array that nothing else refers to."""
READS_ONLY = FRESH | {np.sum, np.mean, np.dot}
"""Calls that read an argument and keep no reference to it (nor return a view of it)."""


def plan_buffers(nodes, keep, inline):
    """``{node id: (buffer node, other operand or None)}``: which named elementwise results
    are written into an operand's buffer (``out=``). The buffer ``t`` must be a fresh array
    (rank >= 1) computed in this function by a call in ``FRESH``, never kept (an output,
    a saved value, a gradient returned), read elsewhere only by calls that keep no reference
    to it and only in statements that run before this one, of the result's shape class and
    certainly a float or complex. The result's dtype is ``t``'s when the other operand is a
    Python number or ``t`` itself; against another array the generated ``reuse(t, u)`` checks
    the dtypes at run time. ``inline``: ids of the nodes inlined into their consumer."""
    here = {n.id: n for n in nodes}
    users, classes = {}, ShapeClasses()
    for n in nodes:
        classes.visit(n)
        for a in n.inputs():
            users.setdefault(a.id, []).append(n)
    consumer = {a.id: n for n in nodes for a in n.inputs() if a.id in inline}
    position = {n.id: i for i, n in enumerate(nodes)}

    def statement_of(n):          # where an inlined node is evaluated: its consumer's statement
        while n.id in inline and n.id in consumer:
            n = consumer[n.id]
        return position[n.id]

    def buffer_ok(t, n):
        if t.id not in here or t.id in inline or t.id in keep or t.id in used or t.op != CALL \
                or t.fn not in FRESH or t.kwargs or not _rank_at_least_one(t) or not _known_inexact(t) \
                or classes.of(t) != classes.of(n):
            return False
        at = statement_of(n)
        return all(_reads_only(u) and (u is n or statement_of(u) < at or u.id in inline and u in _inside(n, inline))
                   for u in users.get(t.id, ()))

    plan, used = {}, set()
    for n in nodes:
        if n.id in inline or n.op != CALL or n.fn not in INTO_BUFFER or n.kwargs or n.meta.get("effect"):
            continue
        for t in n.args:
            if not buffer_ok(t, n):
                continue
            others = [a for a in n.args if a is not t]
            other = others[0] if others else None
            if other is None or other is t or _weak_number(other):
                plan[n.id] = (t, None)
            elif (other.id not in inline and other.op != CONST and _rank_at_least_one(other)) \
                    or other.op == PARAM:
                plan[n.id] = (t, other)
            else:
                continue
            used.add(t.id)
            break
    return plan


def _inside(n, inline):
    """The nodes inlined into ``n``'s expression (evaluated before ``n`` itself)."""
    out, stack = set(), [a for a in n.inputs() if a.id in inline]
    while stack:
        m = stack.pop()
        if m not in out:
            out.add(m)
            stack.extend(a for a in m.inputs() if a.id in inline)
    return out


def _reads_only(u):
    """Does ``u`` read its arguments without keeping a reference (or a view) to them?"""
    if u.op == CALL:
        return u.fn in READS_ONLY
    return u.op == ACCUM or u.op == GETATTR and u.attr in ("shape", "ndim", "dtype", "size")


def _rank_at_least_one(n):
    shape = n.meta.get("shape")
    return isinstance(shape, tuple) and len(shape) >= 1


def _weak_number(n):
    """A Python number constant: it never changes an inexact array's dtype."""
    return n.op == CONST and isinstance(n.value, (int, float)) and not isinstance(n.value, bool)
