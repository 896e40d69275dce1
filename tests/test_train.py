"""fc.train and the pieces around it, on real compiled models (needs the compiler core)."""
import sys

import numpy as np
import pytest

import flux_compile as fc
from flux_compile.train import History, TrainingError


@fc.net
class Affine:
    def __init__(self, n_in, n_out):
        self.W = fc.initn(n_in, n_out, rng=0)
        self.b = fc.zeros(1, n_out)

    def forward(self, x):
        return x @ self.W + self.b


def regression(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    return x, x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3


def test_train_reduces_loss_and_returns_history():
    x, y = regression()
    m = Affine(3, 1)
    data = fc.data.batches(x, y, 16, rng=0)
    h = fc.train(m, fc.mse, data, fc.optim.Adam(0.05), epochs=20, progress=False)
    assert isinstance(h, History) and isinstance(h, list)
    assert len(h) == 20 * 4 and len(h.epochs) == 20
    assert h.epochs[-1] < 0.01 * h.epochs[0]
    assert not h.stopped
    np.testing.assert_allclose(m.W.value.ravel(), [1.0, -2.0, 0.5], atol=0.05)
    assert not m.W.grad.any()                        # the last update zeroed the gradients


def test_train_with_a_learning_rate_and_a_list_of_batches():
    x, y = regression()
    m = Affine(3, 1)
    h = fc.train(m, fc.mse, [(x, y)] * 50, 0.1, progress=False)
    assert h[-1] < h[0]


def test_classifier_with_logitcrossentropy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(90, 2))
    labels = np.argmax(x @ np.array([[2.0, 0.0, -1.0], [0.0, 2.0, -1.0]]), axis=1)   # separable
    m = Affine(2, 3)
    fc.train(m, fc.logitcrossentropy, fc.data.batches(x, labels, 30, rng=0),
             fc.optim.Adam(0.1), epochs=30, progress=False)
    acc = np.mean(fc.data.onecold(m(x)) == labels)
    assert acc > 0.9


def test_nan_loss_names_the_step_and_skips_the_update():
    x, y = regression(32)
    bad = x.copy()
    bad[5] = np.nan
    batches = [(x, y), (x, y), (bad, y), (x, y)]
    m = Affine(3, 1)
    seen = []
    with pytest.raises(TrainingError, match="epoch 1, step 3") as err:
        fc.train(m, fc.mse, batches, 0.01, progress=False,
                 callbacks=[lambda **kw: seen.append(m.W.value.copy())])
    assert isinstance(err.value, FloatingPointError)
    assert err.value.epoch == 1 and err.value.step == 3 and np.isnan(err.value.loss)
    np.testing.assert_array_equal(m.W.value, seen[-1])     # not updated after step 2
    assert np.isfinite(m.W.value).all()


def test_infinite_loss_on_a_later_epoch():
    x, y = regression(16)
    count = {"n": 0}

    def loss(yhat, y):
        return fc.mse(yhat, y)

    class Data:
        def __len__(self):
            return 2

        def __iter__(self):
            count["n"] += 1
            yield x, y
            yield x, (y * np.inf if count["n"] == 2 else y)

    with pytest.raises(FloatingPointError, match=r"loss is (inf|nan) at epoch 2, step 2 \(step 4 overall\)"):
        fc.train(Affine(3, 1), loss, Data(), 0.01, epochs=3, progress=False)


def test_callbacks_and_early_stop():
    x, y = regression(32)
    calls = []

    def record(epoch, step, loss):
        calls.append((epoch, step, loss))

    def stop_at_5(epoch, step, loss):
        if len(calls) == 5:
            return "stop"

    h = fc.train(Affine(3, 1), fc.mse, fc.data.batches(x, y, 8), 0.01, epochs=10,
                 callbacks=(record, stop_at_5), progress=False)
    assert [c[:2] for c in calls] == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1)]
    assert [c[2] for c in calls] == list(h)
    assert h.stopped and len(h.epochs) == 2

    def raise_stop(**kw):
        raise StopIteration

    h = fc.train(Affine(3, 1), fc.mse, [(x, y)] * 5, 0.01, callbacks=raise_stop, progress=False)
    assert len(h) == 1 and h.stopped


def test_progress_bar(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)      # the own bar, also where tqdm is installed
    x, y = regression(32)
    fc.train(Affine(3, 1), fc.mse, fc.data.batches(x, y, 8), 0.01, epochs=2, progress=True)
    err = capsys.readouterr().err
    assert "\r" in err and "epoch 1/2" in err and "epoch 2/2" in err
    assert "4/4" in err and "loss " in err and "batches/s" in err
    fc.train(Affine(3, 1), fc.mse, fc.data.batches(x, y, 8), 0.01, epochs=1)   # not a terminal
    fc.train(Affine(3, 1), fc.mse, fc.data.batches(x, y, 8), 0.01, progress=False)
    assert capsys.readouterr().err == ""


def test_one_shot_iterator_with_several_epochs():
    x, y = regression(8)
    with pytest.raises(TypeError, match="one-shot iterator"):
        fc.train(Affine(3, 1), fc.mse, iter([(x, y)]), 0.01, epochs=2, progress=False)
    fc.train(Affine(3, 1), fc.mse, iter([(x, y)]), 0.01, epochs=1, progress=False)


def test_frozen_params_are_not_trained():
    x, y = regression(32)
    m = Affine(3, 1)
    m.b.trainable = False
    before = m.b.value.copy()
    fc.train(m, fc.mse, [(x, y)] * 5, fc.optim.Momentum(0.01), progress=False)
    np.testing.assert_array_equal(m.b.value, before)
    assert not m.b.grad.any()
    assert all(p is not m.b for p in fc.params(m))


def test_update_source_through_the_model():
    m = fc.Chain(Affine(3, 4), Affine(4, 1))
    src = fc.source(m, "update")
    assert src.count("p = p - lr * g") == 4 and "\n    # " in src and ".W\n" in src
    assert src == fc.source(fc.Chain(Affine(3, 4), Affine(4, 1)), "update")


def test_model_update_and_fc_update():
    x, y = regression(16)
    m = Affine(3, 1)
    _, back = m.pullback(x)
    back(np.ones((16, 1)))
    g = m.W.grad.copy()
    w = m.W.value.copy()
    m.update(fc.optim.SGD(0.5))
    np.testing.assert_allclose(m.W.value, w - 0.5 * g)
    fc.update(m, {("W",): np.ones((3, 1)), ("b",): np.ones((1, 1))}, lambda v, g: v - 0.1 * g)
    np.testing.assert_allclose(m.W.value, w - 0.5 * g - 0.1)
    with pytest.raises(KeyError, match="nope"):
        fc.update(m, {("nope",): 1.0}, lambda v, g: v)


def test_save_load_trained_model(tmp_path):
    x, y = regression(32)
    m = fc.Chain(Affine(3, 4), Affine(4, 1))
    fc.train(m, fc.mse, [(x, y)] * 5, 0.01, progress=False)
    fc.save(tmp_path / "model", m)
    fresh = fc.Chain(Affine(3, 4), Affine(4, 1))
    for p in fc.params(fresh):
        p.value[...] = 0
    fc.load(tmp_path / "model.npz", fresh)
    np.testing.assert_allclose(fresh(x), m(x))
    with pytest.raises(ValueError, match="mismatch"):
        fc.load(tmp_path / "model", fc.Chain(Affine(3, 5), Affine(5, 1)))


def test_float32_training_keeps_float32():
    x, y = regression(32)
    m = Affine(3, 1)
    for p in fc.params(m):
        p.value = p.value.astype(np.float32)
        p.grad = np.zeros_like(p.value)
    h = fc.train(m, fc.mse, [(x.astype(np.float32), y.astype(np.float32))] * 3,
                 fc.optim.Adam(0.01), progress=False)
    assert m.W.value.dtype == np.float32 and m.W.grad.dtype == np.float32
    assert len(h) == 3
