"""What the compiler can prove about dtypes: enough to compile ``v += w`` without a cast.

The cache key fixes only each input's float-ness, so one variant serves float32 and float64
alike: a value's exact dtype is rarely known when compiling. What is known is where it
comes from. :func:`float_sources` names the float leaves (inputs, Params, float constant
arrays) whose dtypes decide a value's dtype by promotion (``np.result_type`` of them all),
following only ops that keep float dtypes that way. Since promotion of float dtypes is a
join, ``v op w`` has ``v``'s dtype whenever ``w``'s sources are among ``v``'s.

>>> import numpy as np
>>> from flux_compile.ir import Node
>>> x = Node("input", name="x", diff=True)
>>> x.meta["shape"] = (3, 4)              # an input the key specialises: a float array
>>> y = Node("call", fn=np.tanh, args=(x,))
>>> float_sources(y) == frozenset([x])
True
"""
from __future__ import annotations

import numpy as np

from . import functions
from .ir import CALL, CONST, INPUT, PARAM
from .rules import helpers

_FIRST_ARG = {np.transpose, np.reshape, np.swapaxes, np.expand_dims, np.squeeze, np.copy, np.ravel,
              helpers.getitem, helpers.identity, functions.relu, functions.sigmoid, functions.softmax,
              functions.logsoftmax, functions.logsumexp, functions.nodiff}
_REDUCTIONS = {np.sum, np.mean, np.max, np.min, np.amax, np.amin, np.prod, np.var, np.std}
_ALL_ARGS = {np.matmul, np.dot}


def _keeps_float(fn):
    """A ufunc whose float64 loop returns float64 (not bool, not int): arithmetic, exp, tanh..."""
    return isinstance(fn, np.ufunc) and fn.nout == 1 and ("d" * fn.nin + "->d") in fn.types \
        and fn is not np.absolute          # complex in, float out


def is_weak_number(value):
    """A Python int, float or bool: NumPy 2 gives the array operand's dtype (NEP 50)."""
    return isinstance(value, (bool, int, float)) and not isinstance(value, np.generic)


def float_sources(node, memo=None):
    """The float leaves whose promoted dtype is ``node``'s dtype, or None when unknown."""
    memo = {} if memo is None else memo
    if id(node) not in memo:
        memo[id(node)] = None           # a cycle (never in SSA) or unknown
        memo[id(node)] = _sources(node, memo)
    return memo[id(node)]


def _sources(node, memo):
    if node.op == INPUT:
        shape = node.meta.get("shape")     # known for an input the key specialises (a float array)
        known = node.diff and shape is not None and len(shape) > 0 and not node.meta.get("complex") \
            and not node.meta.keys() & {"state", "free", "region_input"}
        return frozenset([node]) if known else None
    if node.op == PARAM:
        return frozenset([node])
    if node.op == CONST:
        return _const_sources(node.value)
    if node.op != CALL or node.kwargs.keys() & {"dtype", "out"}:
        return None
    fn = node.fn
    if fn is helpers.inplace_result and node.args[1].meta.get("shape"):
        return float_sources(node.args[1], memo)    # an array target keeps its dtype
    if fn in _FIRST_ARG or fn in _REDUCTIONS:
        return (float_sources(node.args[0], memo) or None) if node.args else None
    if fn is np.where and len(node.args) == 3:
        return _union(node.args[1:], memo)
    if fn in _ALL_ARGS or _keeps_float(fn):
        return _union(node.args, memo)
    return None


def _const_sources(value):
    if is_weak_number(value):
        return frozenset()              # takes the other operand's dtype
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return frozenset([("dtype", value.dtype.str)])
    return None


def _union(args, memo):
    out = frozenset()
    for a in args:
        s = float_sources(a, memo)
        if s is None:
            return None
        out |= s
    return out or None                  # only Python numbers: their own dtype, not known here


def keeps_dtype(target, value):
    """True when ``target op value`` certainly has ``target``'s dtype (``value`` a Node or a
    Python number)."""
    mine = float_sources(target)
    if not mine:
        return False
    if not hasattr(value, "op"):
        return is_weak_number(value)
    theirs = float_sources(value)
    return theirs is not None and theirs <= mine
