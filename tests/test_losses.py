"""Losses: values against hand NumPy, the logitcrossentropy rule, dtypes, and fc.grad through each."""
import numpy as np
import pytest

from flux_compile import rules
from flux_compile.losses import (binarycrossentropy, crossentropy, logitcrossentropy,
                                 logitcrossentropy_grad, mse)

rng = np.random.default_rng(0)
LOGITS = rng.normal(size=(5, 4)) * 3
LABELS = np.array([0, 3, 1, 1, 2])
ONEHOT = np.eye(4)[LABELS]


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_mse():
    a, b = rng.normal(size=(3, 2)), rng.normal(size=(3, 2))
    assert mse(a, b) == pytest.approx(((a - b) ** 2).sum() / 6)


def test_crossentropy():
    p = softmax(LOGITS)
    want = -np.log(p[np.arange(5), LABELS] + 1e-7).mean()
    assert crossentropy(p, ONEHOT) == pytest.approx(want)
    assert np.isfinite(crossentropy(np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]])))
    assert crossentropy(p, ONEHOT, eps=0.0) == pytest.approx(-np.log(p[np.arange(5), LABELS]).mean())


def test_binarycrossentropy():
    p, y = np.array([0.9, 0.2, 0.6]), np.array([1.0, 0.0, 0.0])
    want = -np.mean(y * np.log(p + 1e-7) + (1 - y) * np.log(1 - p + 1e-7))
    assert binarycrossentropy(p, y) == pytest.approx(want)
    assert np.isfinite(binarycrossentropy(np.array([0.0, 1.0]), np.array([1.0, 0.0])))


def test_logitcrossentropy_int_and_onehot_labels():
    want = -np.log(softmax(LOGITS)[np.arange(5), LABELS]).mean()
    assert logitcrossentropy(LOGITS, LABELS) == pytest.approx(want)
    assert logitcrossentropy(LOGITS, ONEHOT) == pytest.approx(want)
    assert logitcrossentropy(LOGITS, LABELS.astype(np.float64)) == pytest.approx(want)
    assert logitcrossentropy(LOGITS[0], LABELS[0]) == pytest.approx(-np.log(softmax(LOGITS[0])[0]))


def test_logitcrossentropy_is_stable():
    big = np.array([[1000.0, -1000.0, 0.0], [-5000.0, 5000.0, 0.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        value = logitcrossentropy(big, np.array([2, 1]))
        grad = logitcrossentropy_grad(big, np.array([2, 1]))
    assert value == pytest.approx(500.0)
    assert np.isfinite(grad).all()


def test_logitcrossentropy_bad_labels():
    with pytest.raises(ValueError, match="fit neither"):
        logitcrossentropy(LOGITS, np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="out of range"):
        logitcrossentropy(LOGITS, np.array([0, 1, 2, 3, 4]))


def numeric_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        g[i] = (f(xp) - f(xm)) / (2 * h)
    return g


@pytest.mark.parametrize("labels", [LABELS, ONEHOT, softmax(rng.normal(size=(5, 4))) * 2],
                         ids=["classes", "onehot", "soft-unnormalised"])
def test_logitcrossentropy_grad_finite_differences(labels):
    num = numeric_grad(lambda z: logitcrossentropy(z, labels), LOGITS)
    np.testing.assert_allclose(logitcrossentropy_grad(LOGITS, labels), num, rtol=1e-6, atol=1e-8)


def test_logitcrossentropy_rule_registered():
    rule = rules.get_rule(logitcrossentropy)
    assert rule is not None
    g, none = rule(2.0, None, LOGITS, LABELS)
    assert none is None
    np.testing.assert_allclose(g, 2 * logitcrossentropy_grad(LOGITS, LABELS))


@pytest.mark.parametrize("loss, args", [
    (mse, lambda x: (x, np.zeros_like(x))),
    (crossentropy, lambda x: (softmax(x).astype(np.float32), ONEHOT.astype(np.float32))),
    (binarycrossentropy, lambda x: (1 / (1 + np.exp(-x)), (x > 0).astype(np.float32))),
    (logitcrossentropy, lambda x: (x, LABELS)),
])
def test_float32_kept(loss, args):
    x = LOGITS.astype(np.float32)
    assert np.asarray(loss(*args(x))).dtype == np.float32
    assert logitcrossentropy_grad(x, LABELS).dtype == np.float32


# -- through the compiler: fc.grad differentiates each loss ----------------------

def fc_grad(loss, *args):
    import flux_compile as fc
    return fc.grad(loss, *args)


def test_grad_mse():
    yhat, y = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    value, (g, _) = fc_grad(mse, yhat, y)
    assert value == pytest.approx(mse(yhat, y))
    np.testing.assert_allclose(g, 2 * (yhat - y) / 12, rtol=1e-10)


def test_grad_crossentropy():
    p = softmax(LOGITS)
    value, (g, _) = fc_grad(crossentropy, p, ONEHOT)
    assert value == pytest.approx(crossentropy(p, ONEHOT))
    np.testing.assert_allclose(g, numeric_grad(lambda q: crossentropy(q, ONEHOT), p), rtol=1e-5)


def test_grad_binarycrossentropy():
    p, y = np.array([[0.9, 0.2], [0.6, 0.5]]), np.array([[1.0, 0.0], [0.0, 1.0]])
    value, (g, _) = fc_grad(binarycrossentropy, p, y)
    np.testing.assert_allclose(g, numeric_grad(lambda q: binarycrossentropy(q, y), p), rtol=1e-5)


@pytest.mark.parametrize("labels", [LABELS, ONEHOT], ids=["classes", "onehot"])
def test_grad_logitcrossentropy(labels):
    value, (g, _) = fc_grad(logitcrossentropy, LOGITS, labels)
    assert value == pytest.approx(logitcrossentropy(LOGITS, labels))
    np.testing.assert_allclose(g, logitcrossentropy_grad(LOGITS, labels), rtol=1e-12)


def test_grad_of_a_user_loss_using_the_losses():
    def loss(yhat, y):
        return logitcrossentropy(yhat, y) + 0.5 * mse(yhat, np.zeros_like(yhat))

    value, (g, _) = fc_grad(loss, LOGITS, LABELS)
    want = logitcrossentropy_grad(LOGITS, LABELS) + LOGITS / LOGITS.size
    np.testing.assert_allclose(g, want, rtol=1e-10)
