"""Ctrl-C at any line of a backward pass must not leave the model locks held: CPython may
deliver a signal between a ``with`` block's last line and its ``__exit__``, and a lock left
held by the main thread makes every other thread wait forever."""
import signal
import sys
import threading

import numpy as np
import pytest

import flux_compile as fc
from flux_compile import model as model_module
from flux_compile.locks import InterruptSafeLock


def free_for_another_thread(lock):
    got = []

    def probe():
        with_timeout = lock._lock.acquire(timeout=1.0)
        got.append(with_timeout)
        if with_timeout:
            lock._lock.release()
    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return got[0]


def interrupt_at_line(fn, at):
    """Run ``fn`` with a real SIGINT sent at the ``at``-th line run in flux_compile; True if
    it ran to the end."""
    count = [0]

    def local(frame, event, arg):
        if event == "line":
            count[0] += 1
            if count[0] == at:
                signal.raise_signal(signal.SIGINT)
        return local

    def trace(frame, event, arg):
        return local if "flux_compile" in frame.f_code.co_filename else None
    sys.settrace(trace)
    try:
        fn()
        return True
    except KeyboardInterrupt:
        return False
    finally:
        sys.settrace(None)


def test_a_plain_with_block_would_leak_the_lock_here():
    """The premise: an RLock in a ``with`` block stays held after this interrupt."""
    lock = threading.RLock()

    def body():
        with lock:
            x = 1
        return x
    count = [0]

    def local(frame, event, arg):
        if event == "line":
            count[0] += 1
            if count[0] == 3:               # the with line again, before __exit__
                signal.raise_signal(signal.SIGINT)
        return local
    sys.settrace(lambda f, e, a: local if f.f_code is body.__code__ else None)
    try:
        body()
    except KeyboardInterrupt:
        pass
    finally:
        sys.settrace(None)
    got = []
    t = threading.Thread(target=lambda: got.append(lock.acquire(timeout=0.2)))
    t.start()
    t.join()
    assert got == [False]                   # held by the main thread for good
    while lock._is_owned():
        lock.release()


def test_ctrl_c_at_every_line_of_back_leaves_the_locks_free():
    m = fc.Chain(fc.Dense(3, 4, fc.relu), fc.Dense(4, 2))
    x = np.linspace(-1, 1, 15).reshape(5, 3)
    dy = np.ones((5, 2))
    m.back(dy, x)                            # compiled before the run
    at, stopped = 1, 0
    while not interrupt_at_line(lambda: m.back(dy, x), at):
        stopped += 1
        for lock in (model_module.GRAD_LOCK, model_module.COMPILE_LOCK):
            assert free_for_another_thread(lock), f"held after Ctrl-C at line {at}"
        at += 1
    assert stopped > 20                     # every line of the call was tried
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_ctrl_c_inside_is_delivered_on_release():
    lock = InterruptSafeLock()
    order = []
    try:
        with lock:
            signal.raise_signal(signal.SIGINT)
            order.append("after the signal, still inside")
    except KeyboardInterrupt:
        order.append("raised on release")
    assert order == ["after the signal, still inside", "raised on release"]
    assert not lock.held_by_anyone()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_threads_still_exclude_each_other():
    lock = InterruptSafeLock()
    inside, most = [0], [0]

    def work():
        for _ in range(200):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
                inside[0] -= 1
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1 and not lock.held_by_anyone()


def test_a_nested_deferral_hands_ctrl_c_to_the_outer_one():
    """``interrupts_held`` inside a held lock (an update's commit inside ``m.update``) installs
    no handler of its own: a Ctrl-C in the inner block comes when the outer one ends, once."""
    from flux_compile.locks import interrupts_held
    lock = InterruptSafeLock()
    before = signal.getsignal(signal.SIGINT)
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with lock:
            with interrupts_held():
                signal.raise_signal(signal.SIGINT)
                reached.append("inner")
            reached.append("after inner")           # not interrupted at the inner block's end
    assert reached == ["inner", "after inner"]
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(KeyboardInterrupt):          # alone, it still defers and delivers
        with interrupts_held():
            signal.raise_signal(signal.SIGINT)
            reached.append("alone")
    assert reached[-1] == "alone" and signal.getsignal(signal.SIGINT) is before
