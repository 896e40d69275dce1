"""Recurrence: state attributes assigned in ``forward``, unrolling with backprop through time.

An attribute assigned inside ``forward`` (``self.h = ...``) is *state*: reads see the
previous step's value (the attribute set in ``__init__`` — a trainable Param — at the
first step). The compiler turns each state attribute into an explicit input and output
of the generated step functions::

    def forward(self, x, h):           # h: the state before this step
        ...
        return h_1, h_1                # the output, then the state after it

Calling the model advances its state; ``m.reset()`` restores the initial state. State
carried from a step belongs to that step's batch: an input of another batch size before
``m.reset()`` raises a ``ValueError`` naming ``reset()`` (it is not reset for you).
``fc.unroll(m, n)`` runs (batch, time, features) sequences with backprop through
time; gradients reach the initial state when a sequence began from it.

>>> import numpy as np, flux_compile as fc
>>> rnn = fc.RNN(3, 4)
>>> seq = fc.unroll(rnn, 5)
>>> seq(np.ones((2, 5, 3))).shape
(2, 5, 4)
"""
from __future__ import annotations

import ast

import numpy as np

from .errors import CompileError
from .frontend import Seq, Static, get_source
from .ir import Node, is_leaf
from .params import Param, is_model, submodels


# ------------------------------------------------------------------------------
# the compiler's side: state attributes become inputs and outputs


def state_names(cls):
    """Attributes assigned as ``self.NAME = ...`` (or ``+=``) in ``forward``, in order.
    Kept on the class (it goes when the class goes), per code of ``forward``."""
    fn = getattr(cls, "forward", None)
    code = getattr(fn, "__code__", None)
    known = cls.__dict__.get("_fc_state_names")
    if known is None or known[0] is not code:
        known = (code, _scan_state_names(fn))
        type.__setattr__(cls, "_fc_state_names", known)
    return known[1]


def _scan_state_names(fn):
    if fn is None:
        return []
    try:
        tree = get_source(fn).tree
    except CompileError:
        return []
    selfname = tree.args.args[0].arg if tree.args.args else "self"
    names = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for t in targets:
            for sub in ast.walk(t):
                if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) \
                        and sub.value.id == selfname and sub.attr not in names:
                    names.append(sub.attr)
    return names


class StateHooks:
    """Reads and writes of state attributes while one step is being traced."""

    def __init__(self, names, inst, specs=None):
        self.names = names
        self.inst = inst
        self.specs = specs
        self.inputs = {}
        self.current = {}

    def begin(self, b):
        g = b.ctx.graph
        from .compiler import symbolic_shape
        for i, name in enumerate(self.names):
            n = g.add(Node("input", name=name, diff=True))
            n.meta["shape"] = symbolic_shape(name, self.specs[i]) if self.specs else None
            n.meta["state"] = name
            self.inputs[name] = n

    def read(self, b, name, e):
        if name in self.current:
            return self.current[name]
        if name in self.inputs:
            return self.inputs[name]
        return None

    def write(self, b, name, value, e):
        if isinstance(value, Seq) or not isinstance(value, (Node, Static)):
            b.error(f"state attribute self.{name} must hold one array", e,
                    hint="keep one array per state attribute (self.h = ..., self.c = ...)")
        node = b.as_node(value, e)
        if not is_leaf(node) and (node.name is None or node.meta.get("anon")):
            node.name = name
            node.meta.pop("anon", None)
        self.current[name] = node

    def end(self, b):
        outs = []
        for name in self.names:
            out = self.current.get(name, self.inputs[name])
            outs.append(out)
        return outs


def state_factory(cls, inst, specs=None):
    names = state_names(cls)
    if not names:
        return None
    return lambda: StateHooks(names, inst, specs)


# ------------------------------------------------------------------------------
# the run-time side: current state, links between steps for backprop through time

_INITIAL = "initial"


def initial_value(m, name):
    v = m.__dict__.get(name, None)
    if v is None:
        return None
    return v.value if isinstance(v, Param) else v


def current_state(m, names):
    """(values, source): the state before this step, and where it came from."""
    st = m.__dict__.get("_fc_state")
    if st is None:
        values = []
        for name in names:
            if name not in m.__dict__:
                raise AttributeError(f"{type(m).__name__}.{name} is recurrent state but has no initial value: "
                                     f"set self.{name} in __init__")
            values.append(initial_value(m, name))
        return values, _INITIAL
    return [st[name] for name in names], m.__dict__.get("_fc_link")


class Link:
    """Carries the state gradient from step t+1's backward to step t's backward."""
    __slots__ = ("pending",)

    def __init__(self):
        self.pending = None

    def add(self, grads):
        if self.pending is None:
            self.pending = list(grads)
        else:
            self.pending = [a if b is None else (b if a is None else a + b) for a, b in zip(self.pending, grads)]


def set_state(m, names, values, link, args=()):
    """Store the state after a step, with the batch size of the step's inputs ``args``."""
    m.__dict__["_fc_state"] = dict(zip(names, values))
    m.__dict__["_fc_link"] = link
    m.__dict__["_fc_batch"] = input_batch(args)


def input_batch(args):
    """The batch size (axis 0) of each array input: what carried state was computed for."""
    return tuple(a.shape[0] for a in args if isinstance(a, (np.ndarray, Param)) and a.ndim >= 1)


def check_batch(m, names, values, args):
    """A clear error when state carried from a step at one batch size meets another.

    State whose shape never changed from its initial value (a (1, n) Param broadcast
    over the batch, a running statistic) fits any batch and is not checked."""
    before = m.__dict__.get("_fc_batch")
    if before is None:
        return
    now = input_batch(args)
    if now == before:
        return
    for name, v in zip(names, values):
        if np.shape(v) != np.shape(initial_value(m, name)):
            cls = type(m)
            label = f"fc.{cls.__name__}" if cls.__module__.startswith("flux_compile.") else cls.__name__
            raise ValueError(f"{label} carries state of batch {_batch_str(before)} from its last step "
                             f"(self.{name} has shape {np.shape(v)}); this input has batch "
                             f"{_batch_str(now)}: call reset() on the model before a new sequence "
                             f"(m.reset() resets every layer inside m)")


def _batch_str(batch):
    return str(batch[0]) if len(set(batch)) == 1 else str(batch)


def accumulate_initial(m, names, grads):
    """Add the gradient w.r.t. the initial state into the state attributes' Params."""
    from .rules.helpers import unbroadcast
    for name, g in zip(names, grads):
        p = m.__dict__.get(name)
        if g is not None and isinstance(p, Param) and p.trainable:
            p.grad += unbroadcast(np.asarray(g), p.shape)


def reset(m):
    """Restore the initial state of ``m`` and every model inside it."""
    for x in submodels(m):
        for key in ("_fc_state", "_fc_link", "_fc_batch"):
            x.__dict__.pop(key, None)
    return m


def snapshot_states(m):
    """The recurrent state of every model in the tree of ``m``, to restore later."""
    if not is_model(m):
        return []
    return [(x, dict(x.__dict__["_fc_state"]) if "_fc_state" in x.__dict__ else None,
             x.__dict__.get("_fc_link"), x.__dict__.get("_fc_batch")) for x in submodels(m)]


def restore_states(snapshot):
    for x, st, link, batch in snapshot:
        if st is None:
            for key in ("_fc_state", "_fc_link", "_fc_batch"):
                x.__dict__.pop(key, None)
        else:
            x.__dict__["_fc_state"] = dict(st)
            x.__dict__["_fc_link"] = link
            x.__dict__["_fc_batch"] = batch


def call_keeping_state(target, args):
    """``target(*args)`` with the recurrent state of a model target put back afterwards
    (how tracing evaluates a sub-model call on the real arguments)."""
    if not is_model(target):
        return target(*args)
    snap = snapshot_states(target)
    try:
        return target(*args)
    finally:
        restore_states(snap)
