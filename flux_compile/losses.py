"""Losses: ``mse``, ``crossentropy``, ``logitcrossentropy``, ``binarycrossentropy``.

They are plain NumPy written in the compiler's subset, so ``fc.grad`` and
compiled models inline them and their derivatives show in the generated code.
``logitcrossentropy`` is the exception: whether ``labels`` are class indices
or one-hot rows is decided by shape, so it is a *primitive* with its own
derivative rule (:func:`logitcrossentropy_grad`, called by name from the
generated backward code).

Each returns a scalar of the input's dtype (float32 in, float32 out) as long
as the target has the same dtype (NumPy promotion applies otherwise).

>>> import numpy as np
>>> float(mse(np.array([1.0, 2.0]), np.array([1.0, 0.0])))
2.0
>>> logits = np.array([[2.0, 0.0, -1.0]])
>>> bool(np.isclose(logitcrossentropy(logits, np.array([0])),
...                 crossentropy(np.exp(logits) / np.exp(logits).sum(), np.array([[1.0, 0, 0]]))))
True
"""
from __future__ import annotations

import numpy as np

from .rules import diffrule, jvprule

__all__ = ["mse", "crossentropy", "logitcrossentropy", "binarycrossentropy",
           "logitcrossentropy_grad"]


def mse(yhat, y):
    """Mean squared error, the mean over every element of ``(yhat - y) ** 2``.

    >>> float(mse(np.zeros((2, 2)), np.ones((2, 2))))
    1.0
    """
    return np.mean((yhat - y) ** 2)


def crossentropy(probs, onehot, *, eps=1e-7):
    """Cross-entropy of probabilities ``probs`` against one-hot (or soft) targets,
    or integer class indices of ``probs``' batch shape.

    ``-sum(onehot * log(probs + eps))`` along the last axis, averaged over the
    batch. ``eps`` keeps ``log`` finite where a probability is 0; it is added
    (as Flux does) rather than clipped, so the gradient never vanishes.

    >>> p = np.array([[0.5, 0.5], [0.9, 0.1]])
    >>> round(float(crossentropy(p, np.array([[1.0, 0.0], [1.0, 0.0]]))), 4)
    0.3993
    >>> round(float(crossentropy(p, np.array([0, 0]))), 4)      # class indices
    0.3993
    """
    if np.issubdtype(onehot.dtype, np.integer):        # class indices: one-hot rows
        assert onehot.ndim == probs.ndim - 1, (
            "fc.crossentropy(probs, labels): integer labels must have probs' batch shape "
            "(one class index per row of probs)")
        onehot = np.eye(probs.shape[-1], dtype=probs.dtype)[onehot]
    return np.mean(-np.sum(onehot * np.log(probs + eps), axis=-1))


def binarycrossentropy(p, y, *, eps=1e-7):
    """Binary cross-entropy of probabilities ``p`` against 0/1 targets ``y``, the mean over elements.

    ``-(y * log(p + eps) + (1 - y) * log(1 - p + eps))``.

    >>> round(float(binarycrossentropy(np.array([0.9, 0.2]), np.array([1.0, 0.0]))), 4)
    0.1643
    """
    return np.mean(-(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)))


# -- logitcrossentropy: a primitive with a rule ----------------------------------

def _logsoftmax(x):
    z = x - np.max(x, axis=-1, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def _targets(logits, labels):
    """Labels as one-hot (or soft) rows shaped like ``logits``, in ``logits``' dtype."""
    labels = np.asarray(labels)
    if labels.shape == logits.shape:
        return labels.astype(logits.dtype, copy=False)
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels of shape {labels.shape} fit neither logits {logits.shape} "
                         f"(one-hot) nor its batch shape {logits.shape[:-1]} (class indices)")
    n = logits.shape[-1]
    if labels.dtype.kind == "f":
        if not np.all(labels == np.round(labels)):
            raise ValueError("class-index labels must be whole numbers")
        labels = labels.astype(np.int64)
    bad = labels[(labels < 0) | (labels >= n)]
    if bad.size:
        raise ValueError(f"labels out of range 0..{n - 1}: {sorted(set(bad.tolist()))}")
    out = np.zeros(logits.shape, dtype=logits.dtype)
    np.put_along_axis(out, labels[..., None].astype(np.intp), 1, axis=-1)
    return out


def _batch_size(logits):
    return max(1, logits.size // max(1, logits.shape[-1])) if logits.ndim else 1


def logitcrossentropy(logits, labels):
    """Cross-entropy straight from logits, stable through log-sum-exp.

    ``labels`` are integer classes (shape ``logits.shape[:-1]``, e.g. ``(N,)``)
    or one-hot rows (shape of ``logits``). The mean over the batch of
    ``-sum(onehot * logsoftmax(logits))``; never overflows, even for huge logits.

    >>> round(float(logitcrossentropy(np.array([[1000.0, 0.0]]), np.array([1]))), 1)
    1000.0
    """
    logits = np.asarray(logits)
    if logits.dtype.kind != "f":
        logits = logits.astype(np.float64)
    targets = _targets(logits, labels)
    loss = -np.sum(targets * _logsoftmax(logits)) / _batch_size(logits)
    return logits.dtype.type(loss)


def logitcrossentropy_grad(logits, labels):
    """Gradient of :func:`logitcrossentropy` with respect to ``logits``.

    ``(softmax(logits) * sum(onehot) - onehot) / batch``, which is
    ``(softmax - onehot) / batch`` for proper one-hot rows.

    >>> logitcrossentropy_grad(np.zeros((1, 2)), np.array([0]))
    array([[-0.5,  0.5]])
    """
    logits = np.asarray(logits)
    if logits.dtype.kind != "f":
        logits = logits.astype(np.float64)
    targets = _targets(logits, labels)
    probs = np.exp(_logsoftmax(logits))
    g = probs * np.sum(targets, axis=-1, keepdims=True) - targets
    return (g / _batch_size(logits)).astype(logits.dtype, copy=False)


def logitcrossentropy_value_and_grad(logits, labels):
    """``(logitcrossentropy(logits, labels), logitcrossentropy_grad(logits, labels))`` from
    one log-softmax: ``fc.train_step`` computes both in the forward (the rule alone would
    compute the softmax a second time)."""
    logits = np.asarray(logits)
    if logits.dtype.kind != "f":
        logits = logits.astype(np.float64)
    targets = _targets(logits, labels)
    logp = _logsoftmax(logits)
    n = _batch_size(logits)
    loss = logits.dtype.type(-np.sum(targets * logp) / n)
    g = np.exp(logp, out=logp)
    g *= np.sum(targets, axis=-1, keepdims=True)
    g -= targets
    g /= n
    return loss, g.astype(logits.dtype, copy=False)


@diffrule(logitcrossentropy)
def _(dy, y, logits, labels):
    return dy * logitcrossentropy_grad(logits, labels), None


@jvprule(logitcrossentropy)
def _(dlogits, dlabels, y, logits, labels):
    # a scalar: the gradient contracted with the tangent of the logits
    return np.sum(logitcrossentropy_grad(logits, labels) * dlogits)


@jvprule(logitcrossentropy_grad)
def _(dlogits, dlabels, g, logits, labels):
    # forward over reverse; the labels are constants (the reverse rule gives them no gradient)
    return None if dlogits is None else logitcrossentropy_grad_tangent(dlogits, logits, labels)


def logitcrossentropy_grad_tangent(dlogits, logits, labels):
    """The tangent of :func:`logitcrossentropy_grad` along ``dlogits``: the softmax's tangent
    ``p (dl - <p, dl>)`` times each row's label mass, over the batch."""
    logits = np.asarray(logits)
    if logits.dtype.kind != "f":
        logits = logits.astype(np.float64)
    targets = _targets(logits, labels)
    probs = np.exp(_logsoftmax(logits))
    dprobs = probs * (dlogits - np.sum(probs * dlogits, axis=-1, keepdims=True))
    dg = dprobs * np.sum(targets, axis=-1, keepdims=True)
    return (dg / _batch_size(logits)).astype(logits.dtype, copy=False)
