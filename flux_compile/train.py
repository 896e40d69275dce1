"""The training loop: ``train(model, loss, data, opt, epochs=1, callbacks=())``.

Per batch ``(x, y)``::

    yhat, back = model.pullback(x)          # one forward, saving what backward needs
    l, (dl, _) = fc.grad(loss, yhat, y)     # the loss and its gradient wrt yhat
    back(dl)                                # accumulate every Param.grad
    model.update(opt)                       # optimiser step, gradients zeroed

A step is all or nothing: every step starts from zero gradients, and if it
stops part way (Ctrl-C, an error in the model or the loss, a NaN) the model
is left as it was before the step: parameters, optimiser state and recurrent
state unchanged, gradients zero. Once the update is committed the step is
complete. So ``fc.train`` can simply be called again to go on.

A NaN or infinite loss stops training with :class:`TrainingError` (a
``FloatingPointError``) naming the epoch and step, before that batch's update;
a NaN or infinite gradient with :class:`GradientError` (a ``TrainingError``),
which also names the first Param whose gradient is not finite.

>>> import numpy as np, flux_compile as fc                   # doctest: +SKIP
>>> m = fc.Dense(4, 1)                                        # doctest: +SKIP
>>> data = fc.data.batches(np.random.rand(64, 4), np.random.rand(64, 1), 16)  # doctest: +SKIP
>>> history = fc.train(m, fc.mse, data, fc.optim.Adam(1e-2), epochs=3)     # doctest: +SKIP
>>> len(history), len(history.epochs)                         # doctest: +SKIP
(12, 3)
"""
from __future__ import annotations

import math
import signal
import sys
import threading
import time

from . import api
from .optim import NonFiniteGradient, prepare_update
from .trainstep import NonFiniteLoss, TrainStep
from .updatestep import _as_optimiser
from .params import named_params
from .readonly import refuse_if_held
from .runstate import reset, restore_states, snapshot_states

__all__ = ["train", "History", "TrainingError", "GradientError", "ProgressBar"]


class TrainingError(FloatingPointError):
    """The loss became NaN or infinite; ``.epoch``, ``.step`` (1-based) and ``.loss`` say where."""

    def __init__(self, epoch, step, loss, total_step):
        self.epoch, self.step, self.loss, self.total_step = epoch, step, loss, total_step
        super().__init__(
            f"loss is {loss} at epoch {epoch}, step {step} (step {total_step} overall); "
            f"training stopped before updating on this batch. Try a lower learning rate, "
            f"check the data for NaN or inf, or compute the loss from logits "
            f"(fc.logitcrossentropy) rather than from probabilities")


class GradientError(TrainingError):
    """A gradient became NaN or infinite; ``.path`` names the first such Param.

    Raised before the update: parameters and optimiser state are as before
    the step, gradients zeroed.
    """

    def __init__(self, epoch, step, loss, total_step, path, detail):
        self.epoch, self.step, self.loss, self.total_step = epoch, step, loss, total_step
        self.path = path
        FloatingPointError.__init__(
            self, f"at epoch {epoch}, step {step} (step {total_step} overall; loss {loss}): {detail}. "
                  f"Training stopped before updating on this batch: the parameters and the "
                  f"optimiser state are as before this step, the gradients zeroed")


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
    """One line on ``stream`` (stderr), redrawn with ``\\r`` at most every ``interval`` seconds
    (the bar used when tqdm is not installed)::

        epoch 1/3 [##########----------]  120/240  loss 0.3121  85.2 batches/s  ETA 0:01
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
        rate = self.step / elapsed
        tail = ""
        if self.total and self.step < self.total and rate > 0:
            tail = f"  ETA {_clock((self.total - self.step) / rate)}"
        elif self.total and self.step >= self.total:
            tail = f"  in {_clock(elapsed)}"
        return f"{head}  loss {self.loss:.4g}  {rate:.1f} batches/s{tail}"

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


def _clock(seconds):
    """``1:05`` for 65 seconds, ``1:01:05`` past an hour."""
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class TqdmBar:
    """The same interface over a ``tqdm.auto`` bar (a widget in Jupyter, text elsewhere)."""

    def __init__(self, tqdm, total, epoch, epochs):
        self.bar = tqdm(total=total, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=True)
        self.step = 0

    def update(self, step, loss):
        self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        self.bar.update(step - self.step)
        self.step = step

    def close(self):
        self.bar.close()


def progress_bar(total, epoch, epochs):
    """A tqdm bar when tqdm is installed (``tqdm.auto``: a notebook widget in Jupyter),
    else :class:`ProgressBar`."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return ProgressBar(total, epoch, epochs)
    return TqdmBar(tqdm, total, epoch, epochs)


def _in_notebook():
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return getattr(shell, "kernel", None) is not None


def _show_progress(progress):
    if progress is not None:
        return bool(progress)
    if _in_notebook():
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def train(model, loss, data, opt, epochs=1, callbacks=(), progress=None, stateful=False,
          distributed=False):
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
    - ``progress``: ``None`` shows a progress bar when stderr is a terminal or in
      Jupyter; ``True`` always, ``False`` never. The bar is tqdm's (``tqdm.auto``)
      when tqdm is installed, else a line with the loss, speed and ETA.
    - ``stateful``: recurrent models start every batch from their initial state
      (batches are unrelated, and the last one may be smaller); ``True`` carries
      the state from one batch to the next instead (truncated backpropagation
      through time over consecutive chunks of long sequences, of one batch size).
    - ``distributed``: in a program started by ``torchrun`` after
      ``fc.distributed.init()``, each rank trains on its share of every batch
      with the global batch's gradient, from rank 0's parameters; rank 0
      alone shows progress (see ``flux_compile.distributed``).

    >>> import numpy as np, flux_compile as fc
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((64, 3)); y = x @ np.array([[1.0], [-2.0], [0.5]])
    >>> m = fc.Dense(3, 1)
    >>> history = fc.train(m, fc.mse, fc.data.batches(x, y, 16, rng=0), fc.optim.Adam(0.1),
    ...                    epochs=30, progress=False)
    >>> bool(fc.mse(m(x), y) < 1e-2)
    True
    """
    if callable(callbacks):
        callbacks = (callbacks,)
    if epochs > 1 and iter(data) is data:
        raise TypeError(f"data is a one-shot iterator but epochs={epochs}: pass a list or "
                        f"fc.data.batches(...), which can be iterated once per epoch")
    try:
        total = len(data)
    except TypeError:
        total = None
    on_backend = getattr(model, "__fc_backend__", False)      # a model moved by fc.to (torch, JAX)
    if on_backend:
        _refuse_jax_distributed(model, distributed)
    else:
        refuse_if_held(model, "fc.train")
        _zero_grads(model)          # fused steps write no .grad: it stays zero (no stale gradient)
    show = _show_progress(progress)
    parallel = None
    if distributed:
        from .distributed import DataParallel
        parallel = DataParallel(model)          # rank 0's parameters on every rank
        show = show and parallel.is_main
    guard = InterruptGuard().install()
    try:
        run_step = _backend_runner(model, loss, opt, parallel) if on_backend else None
        return _epochs(model, loss, data, opt, epochs, callbacks, show, total, guard,
                       api.grad, stateful, parallel, run_step)
    finally:
        guard.remove()


def _epochs(model, loss, data, opt, epochs, callbacks, show, total, guard, grad, stateful=False,
            parallel=None, run_step=None):
    history = History()
    if run_step is None:
        step_fn = TrainStep(model, loss, _as_optimiser(opt))

        def run_step(x, y, where):
            return train_one_step(model, loss, x, y, opt, where, grad, guard, stateful, step_fn, parallel)
    for epoch in range(1, epochs + 1):
        bar = progress_bar(total, epoch, epochs) if show else None
        epoch_total, epoch_steps = 0.0, 0
        try:
            for step, (x, y) in enumerate(data, start=1):
                value = run_step(x, y, (epoch, step, len(history) + 1))
                history.append(value)
                epoch_total, epoch_steps = epoch_total + value, epoch_steps + 1
                if bar is not None:
                    bar.update(step, epoch_total / epoch_steps)
                stop = _run_callbacks(callbacks, epoch, step, value)
                if parallel is not None and callbacks:
                    stop = parallel.agree_to_stop(stop)     # every rank stops at the same step
                if stop:
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


def _refuse_jax_distributed(model, distributed):
    if distributed and model._fc_backend.name == "jax":
        raise ValueError("fc.train(..., distributed=True) works for the NumPy and torch backends; "
                         "JAX arrays cannot be all-reduced in place by torch.distributed: train "
                         "fc.to(m2, 'torch') or fc.to(m2, 'numpy'), or use JAX's own pmap/sharding")


def _backend_runner(model, loss, opt, parallel):
    """``run_step(x, y, where)`` for a model moved by ``fc.to``: the backend's step (one
    ``jax.jit`` program on JAX, torch kernels on torch), data-parallel with ``parallel``;
    a NaN loss or gradient stops training before the update, as on NumPy. Every batch
    starts from the initial recurrent state."""
    from .trainstep import train_step
    step = train_step(model, loss, opt)

    def run_step(x, y, where):
        try:
            if parallel is not None:
                return step.parallel_run(x, y, parallel)
            return float(step.run(x if isinstance(x, tuple) else (x,), y))
        except NonFiniteLoss as e:
            raise TrainingError(*where[:2], e.loss, where[2]) from None
        except NonFiniteGradient as e:
            raise GradientError(*where[:2], step.last_loss, where[2], e.path, str(e).split(";")[0]) from None
    return run_step


class InterruptGuard:
    """Ctrl-C while ``fc.train`` runs: delivered at once while a step can still be
    undone; held back while a step is being committed or undone, and delivered
    right after. Installed in the main thread only (where Python raises
    ``KeyboardInterrupt``), and only over a Python-level SIGINT handler, which
    it calls to deliver the interrupt. A guard whose ``train`` call has ended
    without removing it (Ctrl-C in the last lines of its cleanup) removes
    itself at the next SIGINT and passes it on."""

    def __init__(self):
        self.critical = False
        self.held = False
        self.previous = None
        self.owner = None           # the frame of the call that installed the guard

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        try:
            previous = signal.getsignal(signal.SIGINT)
            if callable(previous):
                self.previous = previous                # before the handler that calls it
                self.owner = sys._getframe(1)
                signal.signal(signal.SIGINT, self._handle)
        except (ValueError, OSError):           # e.g. a sub-interpreter
            self.previous = self.owner = None
        except BaseException:                   # Ctrl-C right here: leave no handler behind
            self.remove()
            raise
        return self

    def remove(self):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        self.owner = None

    def _stale(self):
        frame = sys._getframe(2)
        while frame is not None:
            if frame is self.owner:
                return False
            frame = frame.f_back
        return True

    def _handle(self, signum, frame):
        if self._stale():
            self.remove()
            self.critical = False
        if self.critical:
            self.held = (signum, frame)
            return
        self.critical = True            # the undo that follows must not be interrupted
        (self.previous or signal.default_int_handler)(signum, frame)
        self.critical = False           # the previous handler chose not to raise

    def enter_critical(self):
        self.critical = True

    def release(self):
        """Leave the critical part; deliver an interrupt held back meanwhile."""
        self.critical = False
        held, self.held = self.held, False
        if held and self.previous is not None:
            self.previous(*held)


def train_one_step(model, loss, x, y, opt, where, grad=None, guard=None, stateful=True, step=None,
                   parallel=None):
    """One step, all or nothing; returns the loss. ``where`` is (epoch, step, overall step).

    ``step``: the :class:`~flux_compile.trainstep.TrainStep` to run (made here when None):
    one generated function computes the loss and every new value and optimiser state;
    only when all of them are finite is the step committed. If anything stops it before
    (an error, a NaN, Ctrl-C) the recurrent state is put back and the gradients a
    sub-model call accumulated are zeroed, so the model is exactly as before the step.
    With ``guard`` (an :class:`InterruptGuard`), Ctrl-C during the commit or the undo
    waits for it. Unless ``stateful``, the step starts from the model's initial
    recurrent state. With ``parallel`` (a ``distributed.DataParallel``) this rank runs
    its share of the batch through pullback and back, the loss and gradients become the
    global batch's by all-reduce, then the update runs (``grad`` computes the loss's
    gradient there).
    """
    guard = guard or InterruptGuard()
    if parallel is not None:
        return _parallel_step(model, loss, x, y, opt, where, grad or api.grad, guard, stateful, parallel)
    step = step or TrainStep(model, loss, _as_optimiser(opt))
    inputs = x if isinstance(x, tuple) else (x,)
    try:
        return step.run(inputs, y, reset_state=not stateful, guard=guard)
    except NonFiniteLoss as e:
        raise TrainingError(*where[:2], e.loss, where[2]) from None
    except NonFiniteGradient as e:
        raise GradientError(*where[:2], step.last_loss, where[2], e.path, str(e).split(";")[0]) from None


def _parallel_step(model, loss, x, y, opt, where, grad, guard, stateful, parallel):
    """A data-parallel step: gradients are complete only after the all-reduce, so the
    update cannot be fused into the backward; all or nothing as :func:`train_one_step`."""
    snapshot = snapshot_states(model)
    value, pending = float("nan"), None
    try:
        if not stateful:
            reset(model)
        _zero_grads(model)
        x, y = parallel.share(x, y)
        if parallel.has_rows:
            # the internal pullback: nothing but this step runs between forward and backward,
            # so the inputs and Params need no read-only hold (readonly.py)
            yhat, back = model._pullback(*x) if isinstance(x, tuple) else model._pullback(x)
            value, grads = grad(loss, yhat, y)
            value = float(value)
            back(grads[0], input_grads=False)   # only the parameters are trained
        value = parallel.reduce(value)          # the global batch's loss and gradients
        _stop_if_not_finite(value, where)
        pending = prepare_update(model, opt)    # checks the gradients; changes nothing
        guard.enter_critical()                  # from here on the step completes
        pending.commit()
    except NonFiniteGradient as e:
        guard.enter_critical()
        _undo(model, snapshot)
        guard.release()
        raise GradientError(*where[:2], value, where[2], e.path, str(e).split(";")[0]) from None
    except BaseException:
        guard.enter_critical()
        if pending is None or not pending.done:
            _undo(model, snapshot)
        guard.release()
        raise
    guard.release()
    return value


def _stop_if_not_finite(value, where):
    if not math.isfinite(value):
        raise TrainingError(*where[:2], value, where[2])


def _zero_grads(model):
    for _, p in named_params(model):
        p.grad[...] = 0


def _undo(model, snapshot):
    """Back to the state before the step: zero gradients, the recurrent state as it was."""
    _zero_grads(model)
    restore_states(snapshot)


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
