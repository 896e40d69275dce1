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

The library face of recurrence (layer 6). The compile-time side lives in
:mod:`flux_compile.statehooks`, the run-time side in :mod:`flux_compile.runstate`;
their names stay importable from here.

>>> import numpy as np, flux_compile as fc
>>> rnn = fc.RNN(3, 4)
>>> seq = fc.unroll(rnn, 5)
>>> seq(np.ones((2, 5, 3))).shape
(2, 5, 4)
"""
from __future__ import annotations

from .runstate import (_INITIAL, Link, accumulate_initial, check_batch, current_state, initial_value,  # noqa: F401
                       input_batch, reset, restore_states, set_state, snapshot_states)
from .sequences import unroll, unroll1  # noqa: F401
from .statehooks import StateHooks, state_factory, state_names  # noqa: F401
