"""The training loop: ``train(model, loss, data, opt, epochs=1, callbacks=())``.

Per batch ``(x, y)``::

    yhat, back = model.pullback(x)          # one forward, saving what backward needs
    l, (dl, _) = fc.grad(loss, yhat, y)     # the loss and its gradient wrt yhat
    back(dl)                                # accumulate every Param.grad
    model.update(opt)                       # optimiser step, gradients zeroed

A NaN or infinite loss stops training with :class:`TrainingError` (a
``FloatingPointError``) naming the epoch and step, before that batch's update.

>>> import numpy as np, flux_compile as fc                   # doctest: +SKIP
>>> m = fc.Dense(4, 1)                                        # doctest: +SKIP
>>> data = fc.data.batches(np.random.rand(64, 4), np.random.rand(64, 1), 16)  # doctest: +SKIP
>>> history = fc.train(m, fc.mse, data, fc.optim.Adam(1e-2), epochs=3)     # doctest: +SKIP
>>> len(history), len(history.epochs)                         # doctest: +SKIP
(12, 3)
"""
from __future__ import annotations

import math
import sys
import time

__all__ = ["train", "History", "TrainingError", "ProgressBar"]


class TrainingError(FloatingPointError):
    """The loss became NaN or infinite; ``.epoch``, ``.step`` (1-based) and ``.loss`` say where."""

    def __init__(self, epoch, step, loss, total_step):
        self.epoch, self.step, self.loss, self.total_step = epoch, step, loss, total_step
        super().__init__(
            f"loss is {loss} at epoch {epoch}, step {step} (step {total_step} overall); "
            f"training stopped before updating on this batch. Try a lower learning rate, "
            f"check the data for NaN or inf, or compute the loss from logits "
            f"(fc.logitcrossentropy) rather than from probabilities")


class History(list):
    """The loss of every step, in order (a list), plus ``.epochs``: the mean loss of each epoch.

    ``.stopped`` is true when a callback ended training early.
    """

    def __init__(self):
        super().__init__()
        self.epochs = []
        self.stopped = False

    def __repr__(self):
        last = f", last {self[-1]:.4g}" if self else ""
        return f"History({len(self)} steps, {len(self.epochs)} epochs{last})"


class ProgressBar:
    """One line on ``stream`` (stderr), redrawn with ``\\r`` at most every ``interval`` seconds::

        epoch 1/3 [##########----------]  120/240  loss 0.3121  85.2 batches/s
    """

    def __init__(self, total, epoch, epochs, stream=None, width=20, interval=0.1):
        self.total, self.epoch, self.epochs = total, epoch, epochs
        self.stream = stream if stream is not None else sys.stderr
        self.width, self.interval = width, interval
        self.start = self.last = time.perf_counter()
        self.shown = 0
        self.step, self.loss, self.drawn = 0, float("nan"), None

    def text(self):
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        head = f"epoch {self.epoch}/{self.epochs}"
        if self.total:
            done = min(self.width, self.width * self.step // self.total)
            head += f" [{'#' * done}{'-' * (self.width - done)}]  {self.step}/{self.total}"
        else:
            head += f"  {self.step}"
        return f"{head}  loss {self.loss:.4g}  {self.step / elapsed:.1f} batches/s"

    def draw(self):
        line = self.text()
        self.stream.write("\r" + line + " " * max(0, self.shown - len(line)))
        self.stream.flush()
        self.shown, self.drawn = len(line), self.step
        self.last = time.perf_counter()

    def update(self, step, loss):
        self.step, self.loss = step, loss
        if time.perf_counter() - self.last >= self.interval or step == self.total:
            self.draw()

    def close(self):
        if self.drawn != self.step:
            self.draw()
        self.stream.write("\n")
        self.stream.flush()


def _show_progress(progress):
    if progress is not None:
        return bool(progress)
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def train(model, loss, data, opt, epochs=1, callbacks=(), progress=None):
    """Train ``model`` on ``data`` for ``epochs`` passes; returns a :class:`History`.

    - ``loss(model_output, target)``: any function ``fc.grad`` can compile
      (``fc.mse``, ``fc.logitcrossentropy``, or your own).
    - ``data``: an iterable of ``(x, y)`` batches, iterated once per epoch (a
      list, or ``fc.data.batches(...)`` which reshuffles each time). ``x`` may
      be a tuple for a model with several inputs.
    - ``opt``: a learning rate (SGD) or an optimiser from ``fc.optim``.
    - ``callbacks``: functions called as ``cb(epoch=e, step=s, loss=l)`` after
      every step (``epoch`` and ``step`` count from 1, ``step`` within the
      epoch, ``loss`` that step's loss). A callback that returns ``"stop"``
      or raises ``StopIteration`` ends training early.
    - ``progress``: ``None`` shows a progress bar on stderr only when it is a
      terminal; ``True`` always, ``False`` never.
    """
    import flux_compile                       # the package is loaded by the time train runs

    if callable(callbacks):
        callbacks = (callbacks,)
    if epochs > 1 and iter(data) is data:
        raise TypeError(f"data is a one-shot iterator but epochs={epochs}: pass a list or "
                        f"fc.data.batches(...), which can be iterated once per epoch")
    try:
        total = len(data)
    except TypeError:
        total = None
    show = _show_progress(progress)
    history = History()
    for epoch in range(1, epochs + 1):
        bar = ProgressBar(total, epoch, epochs) if show else None
        epoch_total, epoch_steps = 0.0, 0
        try:
            for step, (x, y) in enumerate(data, start=1):
                yhat, back = model.pullback(*x) if isinstance(x, tuple) else model.pullback(x)
                value, grads = flux_compile.grad(loss, yhat, y)
                value = float(value)
                if not math.isfinite(value):
                    raise TrainingError(epoch, step, value, len(history) + 1)
                back(grads[0], input_grads=False)       # only the parameters are trained
                model.update(opt)
                history.append(value)
                epoch_total, epoch_steps = epoch_total + value, epoch_steps + 1
                if bar is not None:
                    bar.update(step, epoch_total / epoch_steps)
                if _run_callbacks(callbacks, epoch, step, value):
                    history.stopped = True
                    break
        finally:
            if bar is not None:
                bar.close()
        if epoch_steps:
            history.epochs.append(epoch_total / epoch_steps)
        if history.stopped:
            break
    return history


def _run_callbacks(callbacks, epoch, step, value):
    """True when a callback asks to stop."""
    stop = False
    for cb in callbacks:
        try:
            result = cb(epoch=epoch, step=step, loss=value)
            if isinstance(result, str) and result == "stop":
                stop = True
        except StopIteration:
            stop = True
    return stop
