"""Recurrent models under fc.train (issue 15, item 3): the docs' sequence classifier
trains with a ragged last batch; each batch starts from the initial state unless
``stateful=True`` asks for truncated BPTT across batches."""
import copy

import numpy as np
import pytest

import flux_compile as fc


def last_step(hs):
    return hs[:, -1, :]


def classifier(cell, seed=0):
    np.random.seed(seed)
    return fc.Chain(fc.unroll(cell(3, 5), 6), last_step, fc.Dense(5, 2))


def sequence_data(n, seed=1):
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((n, 6, 3))
    labels = (xs[:, :, 0].sum(axis=1) > 0).astype(int)
    return xs, fc.data.onehot(labels, 2)


def manual_loss(model, x, y):
    """The loss of one batch from the initial state, computed outside fc.train."""
    probe = copy.deepcopy(model)
    fc.reset(probe)
    return float(fc.logitcrossentropy(probe(x), y))


@pytest.mark.parametrize("cell", [fc.LSTM, fc.GRU, fc.RNN])
def test_docs_classifier_trains_with_ragged_last_batch(cell):
    xs, ys = sequence_data(37)                      # batches of 8: the last one has 5
    model = classifier(cell)
    data = fc.data.batches(xs, ys, 8)
    history = fc.train(model, fc.logitcrossentropy, data, fc.optim.Adam(0.02), epochs=6, progress=False)
    assert len(history) == 6 * 5 and all(np.isfinite(history))
    assert history.epochs[-1] < history.epochs[0]


def test_each_batch_starts_from_the_initial_state():
    xs, ys = sequence_data(24)
    batches = [(xs[:8], ys[:8]), (xs[8:16], ys[8:16]), (xs[16:], ys[16:])]
    model = classifier(fc.LSTM)
    # the loss of each step equals the loss of that batch from the initial state,
    # with the parameters as they were before that step
    losses_before = []
    snapshots = []

    def snap(epoch, step, loss):
        snapshots.append(copy.deepcopy(model))
    start = copy.deepcopy(model)
    history = fc.train(model, fc.logitcrossentropy, batches, 0.1, callbacks=snap, progress=False)
    before = [start] + snapshots[:-1]
    for (x, y), m, got in zip(batches, before, history):
        losses_before.append(manual_loss(m, x, y))
    np.testing.assert_allclose(history, losses_before, rtol=1e-12)


def test_shuffled_order_does_not_change_a_batch_loss():
    xs, ys = sequence_data(16)
    a, b = (xs[:8], ys[:8]), (xs[8:], ys[8:])
    m1 = classifier(fc.GRU)
    m2 = copy.deepcopy(m1)
    h1 = fc.train(m1, fc.logitcrossentropy, [b, a], 0.0, progress=False)
    h2 = fc.train(m2, fc.logitcrossentropy, [a, b], 0.0, progress=False)
    assert h1[1] == pytest.approx(h2[0], rel=1e-12) and h1[0] == pytest.approx(h2[1], rel=1e-12)


def test_stateful_carries_state_across_batches():
    xs, ys = sequence_data(16)
    a, b = (xs[:8], ys[:8]), (xs[8:], ys[8:])
    model = classifier(fc.GRU)
    fresh = fc.train(copy.deepcopy(model), fc.logitcrossentropy, [a, b], 0.0, progress=False)
    carried = fc.train(copy.deepcopy(model), fc.logitcrossentropy, [a, b], 0.0, progress=False, stateful=True)
    assert fresh[0] == pytest.approx(carried[0], rel=1e-12)
    assert abs(fresh[1] - carried[1]) > 1e-9          # the second batch started from a's state
    # and what it started from is exactly a's final state
    m = copy.deepcopy(model)
    m(a[0])
    assert carried[1] == pytest.approx(float(fc.logitcrossentropy(m(b[0]), b[1])), rel=1e-12)


def test_stateful_with_ragged_batch_says_what_to_do():
    xs, ys = sequence_data(12)
    batches = [(xs[:8], ys[:8]), (xs[8:], ys[8:])]
    with pytest.raises(ValueError, match="reset"):
        fc.train(classifier(fc.GRU), fc.logitcrossentropy, batches, 0.1, progress=False, stateful=True)
