"""Hoisting a recurrence's input projection out of its loop region.

A loop body that reads one step of an array from outside and multiplies it by a
loop-invariant matrix (``x[:, t] @ Wx``, ``x[t] @ Wx``, ``row @ Wx`` for ``for row in x``,
``Wx @ x[t]``, optionally ``+ b``) computes the same product for every step: the pass
computes it for all steps at once, as ONE matmul before the loop, and the body indexes
the result per trip::

    x_Wx_all = x @ self.Wx.value              # before the loop, once
    for t in range(n):
        h = np.tanh(x_Wx_all[:, t] + h @ self.Wh.value)

The backward follows from the graph: the body's adjoint of ``x_Wx_all[:, t]`` is written
into one array (see ``emitloops``) and ``dWx`` / ``dx`` are one matmul each after the loop.

The rewrite runs on the body graph while it is still open (reading outside nodes
directly), before it is closed into a region. ``make(fn, args, loc)`` adds a call node to
the graph before the loop (the tracer's ``call_primitive``).
"""
from __future__ import annotations

import numpy as np

from .ir import CALL, CONST, PACK, is_reread

FULL = slice(None)


def hoist_projections(body, make, copy_reread):
    """Rewrite every hoistable ``step @ W`` (and ``W @ step``) of ``body`` in place; returns
    how many were hoisted. ``copy_reread(node)`` gives an outside copy of a Param read."""
    from .rules.helpers import getitem
    inside = {id(n) for n in body.nodes}
    users = _users(body)
    count, dropped = 0, set()
    for mm in list(body.nodes):
        if id(mm) in dropped:
            continue
        plan = _projection_plan(mm, inside, getitem)
        if plan is None:
            continue
        x, w, index, order, step = plan
        bias, target = _bias_of(mm, users, inside, _product_dims(x, w, order))
        if is_reread(w):            # a Param read: the body's node is not in the outer graph
            w = copy_reread(w)
        if bias is not None and is_reread(bias):
            bias = copy_reread(bias)
        whole = _whole_product(x, w, order, make, mm.loc)
        if bias is not None:
            whole = make(np.add, [whole, bias], mm.loc)
        whole.name = f"{x.name or 'x'}_{w.name or 'W'}_all"
        _become_getitem(target, whole, index, getitem, _step_axis(index, inside))
        gone = {id(mm)} if target is not mm else set()
        if all(u is mm for u in users.get(id(step), [])):       # the step itself is read no more
            gone.add(id(step))
        dropped |= gone
        body.nodes = [n for n in body.nodes if id(n) not in gone]
        count += 1
    return count


def _users(body):
    users = {}
    for n in body.nodes:
        for a in n.inputs():
            users.setdefault(id(a), []).append(n)
    for o in body.outputs:
        users.setdefault(id(o), []).append(None)
    return users


def _shape(n):
    if n.op == CONST:
        return np.shape(n.value)
    s = n.meta.get("shape")
    return s if isinstance(s, tuple) else None


def _step_axis(index, inside):
    """The axis a per-trip index picks, when it is ``t`` or ``(:, ..., :, t[, :, ...])``
    with ``t`` a scalar that changes from trip to trip; else None."""
    if index.op == PACK:
        items = list(index.args)
        scalars = [i for i, a in enumerate(items) if not (a.op == CONST and a.value == FULL)]
        if len(scalars) != 1:
            return None
        k = scalars[0]
        return k if _is_trip_scalar(items[k], inside) else None
    return 0 if _is_trip_scalar(index, inside) else None


def _is_trip_scalar(n, inside):
    return id(n) in inside and n.op != CONST and _shape(n) == ()


def _invariant(n, inside):
    return id(n) not in inside or is_reread(n)


def _projection_plan(mm, inside, getitem):
    """``(x, W, index, order, step)`` when ``mm`` is ``x[index] @ W`` (order "xw") or
    ``W @ x[index]`` ("wx"; "xwT" when it must be written ``x @ W.T``) with ``x`` and ``W``
    loop-invariant, ``W`` a matrix and the picked axis a batch axis of the product."""
    if mm.op != CALL or mm.fn is not np.matmul or len(mm.args) != 2 or mm.kwargs:
        return None
    for pos in (0, 1):
        step, w = mm.args[pos], mm.args[1 - pos]
        if step.op != CALL or step.fn is not getitem or len(step.args) != 2 or id(step) not in inside:
            continue
        x, index = step.args
        if not _invariant(w, inside) or id(x) in inside or _shape(w) is None or len(_shape(w)) != 2:
            continue
        xs = _shape(x)
        k = _step_axis(index, inside)
        if xs is None or k is None or len(xs) < 2:
            continue
        d = len(xs)
        if pos == 0 and k <= d - 2:
            return x, w, index, "xw", step
        if pos == 1 and (k <= d - 3 or k == d - 1):
            return x, w, index, "wx", step
        if pos == 1 and d == 2 and k == 0:
            return x, w, index, "xwT", step
    return None


def _product_dims(x, w, order):
    """(ndim, last dimension) of one step's product, when the pass knows them ("xw")."""
    return (len(_shape(x)) - 1, _shape(w)[1]) if order == "xw" else None


def _bias_of(mm, users, inside, dims):
    """``(b, add)`` when the product's one use is ``+ b`` with ``b`` invariant and shaped
    ``(n,)`` or ``(1, ..., 1, n)`` (it broadcasts over all steps alike); else ``(None, mm)``.
    ``x_t @ Wx + h @ Wh + b`` is first regrouped as ``(x_t @ Wx + b) + h @ Wh``."""
    add = _one_add_user(mm, users)
    if add is None or dims is None:
        return None, mm
    other = add.args[1] if add.args[0] is mm else add.args[0]
    if other is not mm and _is_row_bias(other, dims, inside):
        return other, add
    outer = _one_add_user(add, users)
    if outer is None or other is mm:
        return None, mm
    b = outer.args[1] if outer.args[0] is add else outer.args[0]
    if b is add or not _is_row_bias(b, dims, inside):
        return None, mm
    add.args, outer.args = (mm, b), (add, other)        # (x_t @ Wx + b) + h @ Wh
    return b, add


def _one_add_user(n, users):
    us = users.get(id(n), [])
    if len(us) != 1 or us[0] is None:
        return None
    add = us[0]
    if add.op != CALL or add.fn is not np.add or len(add.args) != 2 or add.kwargs:
        return None
    return add


def _is_row_bias(b, dims, inside):
    """Does ``b`` broadcast over every step's product alike: shaped ``(n,)`` or ``(1, ..., 1, n)``
    with no more dimensions than one step's product (``n`` is its last dimension or 1, or
    the addition fails in both forms)?"""
    bs, (ndim, _) = _shape(b), dims
    return _invariant(b, inside) and bs is not None and 0 < len(bs) <= ndim \
        and all(isinstance(d, int) and d == 1 for d in bs[:-1])


def _whole_product(x, w, order, make, loc):
    if order == "xw":
        return make(np.matmul, [x, w], loc)
    if order == "wx":
        return make(np.matmul, [w, x], loc)
    return make(np.matmul, [x, make(np.transpose, [w], loc)], loc)


def _become_getitem(node, whole, index, getitem, axis):
    """``node`` (the body's product) becomes ``whole[index]``: its readers are unchanged; its
    shape is ``whole``'s without the picked axis, when known."""
    node.fn, node.args, node.kwargs = getitem, (whole, index), {}
    node.diff = whole.diff
    shape = _shape(whole)
    node.meta["shape"] = shape[:axis] + shape[axis + 1:] if shape is not None and axis < len(shape) else None
