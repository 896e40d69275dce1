"""A re-entrant lock that Ctrl-C cannot leave held.

CPython may deliver a signal between a ``with`` block's last line and the call of its
``__exit__``: a ``KeyboardInterrupt`` raised there skips the release, and the main thread
keeps the lock for good, so every other thread that needs it waits forever. While this lock
is held by the main thread, SIGINT is only recorded; it is delivered as soon as the lock is
released (so Ctrl-C still stops a long backward pass, right after it).

>>> lock = InterruptSafeLock()
>>> with lock:
...     with lock:                  # re-entrant
...         pass
>>> lock.held_by_anyone()
False
"""
from __future__ import annotations

import contextlib
import signal
import threading

try:                # the C functions behind ``signal.signal``, without its enum conversions
    from _signal import signal as _set_handler     # (a third of a tiny model's step otherwise)
except ImportError:                                 # pragma: no cover - other Pythons
    _set_handler = signal.signal

_SIGINT = int(signal.SIGINT)


class InterruptSafeLock:
    """``with lock:`` runs one thread at a time (re-entrant); see the module docstring."""

    def __init__(self):
        self._lock = threading.RLock()
        self._local = threading.local()

    def __enter__(self):
        stack = self._local.__dict__.setdefault("deferred", [])
        if stack:                       # re-entered: the outermost entry already defers SIGINT
            self._lock.acquire()
            stack.append(None)
            return self
        deferred = _defer_sigint()
        try:
            self._lock.acquire()
        except BaseException:
            _deliver(deferred)
            raise
        stack.append(deferred)
        return self

    def __exit__(self, *exc):
        deferred = self._local.deferred.pop()
        self._lock.release()
        _deliver(deferred)              # a Ctrl-C that came while held is raised here
        return False

    def held_by_anyone(self):
        """True while some thread holds the lock (for tests and diagnostics)."""
        if self._lock.acquire(blocking=False):
            owned_before = bool(getattr(self._local, "deferred", None))
            self._lock.release()
            return owned_before
        return True


@contextlib.contextmanager
def interrupts_held():
    """Hold Ctrl-C (SIGINT) back while the block runs; deliver it right after.

    For the few assignments that commit a step: either all of them happen or,
    if the interrupt came earlier, none. Outside the main thread (where Python
    delivers no KeyboardInterrupt) it does nothing.

    >>> from flux_compile.optim import interrupts_held
    >>> with interrupts_held():
    ...     done = True                                  # Ctrl-C here waits until the block ends
    >>> done
    True
    """
    deferred = _defer_sigint()
    try:
        yield
    finally:
        _deliver(deferred)


_deferring = [0]        # deferrals active in the main thread (only it receives SIGINT)


def _defer_sigint():
    """Record SIGINT instead of raising it; None where Python delivers none (other threads)
    or where an enclosing deferral records it already (delivered when that one ends)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if _deferring[0]:
        return None
    received = []
    try:
        previous = _set_handler(_SIGINT, lambda signum, frame: received.append(signum))
    except (ValueError, OSError):       # e.g. a sub-interpreter
        return None
    _deferring[0] += 1
    return previous, received


def _deliver(deferred):
    """Put the previous SIGINT handler back, then run it for a SIGINT recorded meanwhile."""
    if deferred is None:
        return
    previous, received = deferred
    _deferring[0] -= 1
    _set_handler(_SIGINT, previous if previous is not None else signal.SIG_DFL)
    if received:
        signal.raise_signal(signal.SIGINT)
