"""fc.train is all or nothing per step: interrupted anywhere, the model (parameters,
gradients, optimiser state, recurrent state) is exactly as before the step or after it.

Interrupts are real SIGINTs, sent from a trace function at the k-th line executed
inside flux_compile (and its generated code) during training, for every k; and
KeyboardInterrupt raised by monkeypatching each stage (forward, loss, backward,
each Param's new value, the optimiser-state commit) and from a callback.
"""
import gc
import os
import signal
import sys

import numpy as np
import pytest

import flux_compile as fc
from flux_compile import api, optim, trainstep, updatestep
from flux_compile.params import named_params
from flux_compile.recurrent import snapshot_states
from flux_compile.train import GradientError, TrainingError

@pytest.fixture(autouse=True)
def python_handles_ctrl_c():
    """Ctrl-C raises KeyboardInterrupt here even when the suite runs in the background (where
    the shell starts it with SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


OPTIMISERS = {
    "SGD": lambda: optim.SGD(0.1), "Momentum": lambda: optim.Momentum(0.05),
    "Nesterov": lambda: optim.Nesterov(0.05), "Adam": lambda: optim.Adam(0.01),
    "AdamW": lambda: optim.AdamW(0.01), "RMSProp": lambda: optim.RMSProp(0.01),
}


def seeded(seed):
    rng = np.random.default_rng(seed)
    return lambda *shape: fc.glorot_uniform(*shape, rng=rng)


def dense_model():
    return fc.Chain(fc.Dense(3, 4, act=np.tanh, init=seeded(0)), fc.Dense(4, 2, init=seeded(1)))


def frozen_model():
    m = dense_model()
    fc.freeze(m[0])
    return m


def rnn_model():
    return fc.RNN(3, 2, init=seeded(2))


def batches(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(5, 3)), rng.normal(size=(5, 2))) for _ in range(n)]


MODELS = {"dense": dense_model, "frozen": frozen_model, "rnn": rnn_model}


# -- the state of a run, compared exactly ---------------------------------------

def capture(model, opt):
    """Everything a step may change, copied: values, grads, optimiser entries, recurrent state."""
    out = []
    for path, p in named_params(model):
        entry = opt.state.get(p)
        out.append((path, p.value.copy(), p.grad.copy(),
                    None if entry is None else (entry.step, [s.copy() for s in entry.slots])))
    for x, st, *_ in snapshot_states(model):
        out.append((type(x).__name__, None if st is None else {k: np.array(v) for k, v in st.items()}))
    return out


def same(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def grads_zero(model):
    return all(not p.grad.any() for _, p in named_params(model))


# -- a real Ctrl-C at the k-th line run inside flux_compile -----------------------

class Interrupter:
    """A trace function counting lines executed in flux_compile's files and generated code;
    at line ``at`` it sends this process a real SIGINT."""

    def __init__(self, at=None, where="flux_compile"):
        self.at, self.count, self.where = at, 0, where
        self.paused = False

    def global_trace(self, frame, event, arg):
        return self.local if self.where in frame.f_code.co_filename and not self.paused else None

    def local(self, frame, event, arg):
        if event == "line" and not self.paused:
            self.count += 1
            if self.count == self.at:
                signal.raise_signal(signal.SIGINT)
        return self.local

    def run(self, fn):
        gc.disable()        # no garbage collection (and weakref callbacks) at a random line
        sys.settrace(self.global_trace)
        try:
            fn()
            return True
        except KeyboardInterrupt:
            return False
        finally:
            sys.settrace(None)
            gc.enable()


def reference(make, make_opt, data, where):
    """States S_0..S_n after each step of an uninterrupted run, and the line count at each."""
    model, opt = make(), make_opt()
    states, marks = [capture(model, opt)], [0]
    counter = Interrupter(None, where)

    def after_step(epoch, step, loss):
        counter.paused = True
        states.append(capture(model, opt))
        marks.append(counter.count)
        counter.paused = False
    assert counter.run(lambda: fc.train(model, fc.mse, data, opt, callbacks=[after_step],
                                        progress=False))
    return states, marks, counter.count


def ctrl_c_still_works():
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
    return signal.getsignal(signal.SIGINT) is signal.default_int_handler


def check_interrupt_points(make, make_opt, data, stride=1, offset=0, where="flux_compile"):
    """Interrupt at every ``stride``-th line run in files whose name contains ``where``;
    returns (points tried, ended before the step, ended after it, lines in the run)."""
    fc.train(make(), fc.mse, data, make_opt(), progress=False)       # compile everything first
    states, marks, total = reference(make, make_opt, data, where)
    assert reference(make, make_opt, data, where)[2] == total        # the count is deterministic
    tried = before = after = 0
    for at in range(1 + offset % stride, total + 1, stride):
        model, opt = make(), make_opt()
        finished = Interrupter(at, where).run(
            lambda: fc.train(model, fc.mse, data, opt, callbacks=[lambda **_: None],
                             progress=False))          # the same lines as the reference run
        assert not finished, at
        assert ctrl_c_still_works(), at
        j = sum(1 for m in marks[1:] if m < at)          # steps whose callback ran before line `at`
        got = capture(model, opt)
        if same(got, states[j]):
            done, before = j, before + 1
        else:
            assert j + 1 < len(states) and same(got, states[j + 1]), \
                f"interrupt at line {at} (step {j + 1}) left a state that is neither before nor after"
            done, after = j + 1, after + 1
        assert grads_zero(model)
        fc.train(model, fc.mse, data[done:], opt, progress=False)     # go on: the same end
        assert same(capture(model, opt), states[-1]), at
        tried += 1
    return tried, before, after, total


# Every line run in flux_compile during training is ~1400 lines a step; FC_EXHAUSTIVE=1 tries
# each of them, the default every STRIDE-th with a different offset per case.
STRIDE = 1 if os.environ.get("FC_EXHAUSTIVE") else 11


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_sigint_anywhere_in_training(name, kind):
    offset = list(OPTIMISERS).index(name) * 5 + list(MODELS).index(kind)
    tried, before, after, total = check_interrupt_points(MODELS[kind], OPTIMISERS[name], batches(2),
                                                         STRIDE, offset)
    assert tried >= total // STRIDE and before > 0 and after > 0


@pytest.mark.parametrize("name, kind", [("Adam", "dense"), ("SGD", "rnn")] + (
    [("Adam", "rnn"), ("SGD", "dense"), ("RMSProp", "frozen")] if os.environ.get("FC_EXHAUSTIVE") else []))
def test_sigint_at_every_line_of_the_update_and_commit(name, kind):
    """Every line of the update machinery (updatestep.py, trainstep.py) and of the generated
    step (forward, backward and the fused update), in both steps."""
    for where in ("updatestep.py", "trainstep.py", ".train_step ("):   # the update runs in the step
        tried, before, after, total = check_interrupt_points(MODELS[kind], OPTIMISERS[name],
                                                             batches(2), where=where)
        assert tried == total > 10 and before > 0


# -- KeyboardInterrupt from each stage, by monkeypatching -------------------------

def interrupted_run(monkeypatch, kind, name, patch):
    """Train 3 steps with ``patch(monkeypatch)`` applied before step 2; returns
    (state after the interrupt, S_1, S_2)."""
    make, make_opt, data = MODELS[kind], OPTIMISERS[name], batches(3)
    fc.train(make(), fc.mse, data, make_opt(), progress=False)     # compiled
    model, opt = make(), make_opt()
    states = [capture(model, opt)]
    fc.train(model, fc.mse, data[:1], opt, progress=False)
    states.append(capture(model, opt))
    ref_model, ref_opt = make(), make_opt()
    fc.train(ref_model, fc.mse, data[:2], ref_opt, progress=False)
    states.append(capture(ref_model, ref_opt))
    fc.train(ref_model, fc.mse, data[2:], ref_opt, progress=False)
    states.append(capture(ref_model, ref_opt))
    with monkeypatch.context() as mp:
        patch(mp)
        with pytest.raises(KeyboardInterrupt):
            fc.train(model, fc.mse, data[1:], opt, progress=False)
    got = capture(model, opt)
    done = 2 if same(got, states[2]) else 1
    fc.train(model, fc.mse, data[done:], opt, progress=False)    # and it goes on as if nothing happened
    assert same(capture(model, opt), states[3])
    return got, states[1], states[2]


def raise_after(fn):
    def wrapped(*args, **kwargs):
        fn(*args, **kwargs)
        raise KeyboardInterrupt
    return wrapped


def nth_call_raises(fn, n):
    calls = [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            raise KeyboardInterrupt
        return fn(*args, **kwargs)
    return wrapped


# fc.train runs fc.train_step: one generated function (forward, loss, backward, the new value
# of every Param); a recurrent model keeps its own call (_pullback and its back closure).
STAGES = {
    "step computed": lambda mp, m: mp.setattr(trainstep.TrainStep, "call", raise_after(trainstep.TrainStep.call)),
    "gradient check": lambda mp, m: mp.setattr(trainstep, "_finite", raise_after(trainstep._finite)),
    "new values": lambda mp, m: mp.setattr(trainstep.TrainStep, "pending", raise_after(trainstep.TrainStep.pending)),
    "forward": lambda mp, m: mp.setattr(type(m), "_pullback", raise_after(type(m)._pullback)),
    "backward": lambda mp, m: mp.setattr(type(m), "_pullback", backward_then_interrupt(type(m)._pullback)),
}
CALLED_ONLY_BY_RECURRENT = {"forward", "backward"}      # a flattened model calls no _pullback


def backward_then_interrupt(pullback):
    def patched(self, *args, **kwargs):
        out, back = pullback(self, *args, **kwargs)

        def interrupted_back(*a, **k):
            back(*a, **k)                   # every Param.grad accumulated, then Ctrl-C
            raise KeyboardInterrupt
        return out, interrupted_back
    return patched


@pytest.mark.parametrize("kind, stage", [(k, s) for k in ["dense", "rnn"] for s in STAGES
                                         if k == "rnn" or s not in CALLED_ONLY_BY_RECURRENT])
def test_interrupt_in_a_stage_leaves_the_state_before_the_step(monkeypatch, stage, kind):
    got, before, _ = interrupted_run(monkeypatch, kind, "Adam",
                                     lambda mp: STAGES[stage](mp, MODELS[kind]()))
    assert same(got, before)


@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_interrupt_while_computing_any_params_new_value(monkeypatch, name):
    """``_like`` is called once per Param value and slot array: interrupt at each call."""
    n_arrays = len(fc.params(dense_model())) * (1 + len(OPTIMISERS[name]().slots))
    for n in range(1, n_arrays + 1):
        got, before, _ = interrupted_run(monkeypatch, "dense", name,
                                         lambda mp: mp.setattr(updatestep, "_like", nth_call_raises(updatestep._like, n)))
        assert same(got, before), n


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_an_error_while_committing_puts_everything_back(monkeypatch, name):
    for n in range(1, len(fc.params(dense_model())) + 1):
        got, before, _ = interrupted_run(
            monkeypatch, "dense", name,
            lambda mp: mp.setattr(optim.ParamState, "install", nth_call_raises(optim.ParamState.install, n)))
        assert same(got, before), n


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_ctrl_c_while_committing_completes_the_step(monkeypatch, name):
    def sigint_then_install(self, record):
        signal.raise_signal(signal.SIGINT)          # a real Ctrl-C, in the middle of the commit
        return original(self, record)
    original = optim.ParamState.install
    got, _, after = interrupted_run(monkeypatch, "dense", name,
                                    lambda mp: mp.setattr(optim.ParamState, "install", sigint_then_install))
    assert same(got, after)


def test_interrupt_from_a_callback_keeps_the_completed_steps():
    data = batches(4)
    model, opt = dense_model(), optim.Adam(0.01)

    def stop_after_two(epoch, step, loss):
        if step == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        fc.train(model, fc.mse, data, opt, callbacks=[stop_after_two], progress=False)
    ref_model, ref_opt = dense_model(), optim.Adam(0.01)
    fc.train(ref_model, fc.mse, data[:2], ref_opt, progress=False)
    assert same(capture(model, opt), capture(ref_model, ref_opt))
    assert ctrl_c_still_works()


def test_stale_gradients_do_not_leak_into_the_next_step():
    data = batches(2)
    model, opt = dense_model(), optim.Adam(0.01)
    for p in fc.params(model):
        p.grad[...] = 1e3                       # left over, say, by an interrupted back()
    fc.train(model, fc.mse, data, opt, progress=False)
    ref_model, ref_opt = dense_model(), optim.Adam(0.01)
    fc.train(ref_model, fc.mse, data, ref_opt, progress=False)
    assert same(capture(model, opt), capture(ref_model, ref_opt))


# -- non-finite gradients ---------------------------------------------------------

@fc.net
class Root:
    """sqrt(x @ W): finite at x @ W == 0, but its gradient there is infinite."""
    def __init__(self):
        self.b = fc.zeros(1, 1)
        self.W = np.full((2, 1), 0.5)

    def forward(self, x):
        return np.sqrt(x @ self.W) + self.b


def root_batches():
    good = (np.array([[1.0, 2.0], [3.0, 1.0]]), np.ones((2, 1)))
    bad = (np.array([[0.0, 0.0], [3.0, 1.0]]), np.ones((2, 1)))       # x @ W = 0 in row 0
    return [good, bad, good]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_non_finite_gradient_stops_before_the_update(name):
    model, opt = Root(), OPTIMISERS[name]()
    with pytest.raises(GradientError) as err:
        fc.train(model, fc.mse, root_batches(), opt, progress=False)
    e = err.value
    assert isinstance(e, TrainingError) and isinstance(e, FloatingPointError)
    assert (e.epoch, e.step, e.path) == (1, 2, "W") and np.isfinite(e.loss)
    assert "epoch 1, step 2" in str(e) and "gradient of W is not finite" in str(e)
    ref_model, ref_opt = Root(), OPTIMISERS[name]()
    fc.train(ref_model, fc.mse, root_batches()[:1], ref_opt, progress=False)
    assert same(capture(model, opt), capture(ref_model, ref_opt))          # as after step 1
    assert np.isfinite(model.W.value).all() and grads_zero(model)


def test_update_with_a_non_finite_gradient_changes_nothing():
    model, opt = Root(), optim.Adam()
    model.b.grad[...] = 1.0
    model.W.grad[...] = [[np.inf], [np.nan]]
    before = capture(model, opt)
    with pytest.raises(optim.NonFiniteGradient, match=r"gradient of W is not finite \(1 NaN and 1 inf"):
        model.update(opt)
    assert same(capture(model, opt), before) and model.b.grad[0, 0] == 1.0
