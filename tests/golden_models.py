"""The models whose generated text tests/test_golden.py pins (one function per model).

Each returns ``(target, args)``: ``fc.source(target, "all", args=args)`` and
``fc.graph(target, args=args)`` are the golden texts. Models are run once on
``args`` first so the shown variant is the one compiled for those inputs.
Line numbers of this file appear in the goldens: append new models at the end.
"""
import numpy as np

import flux_compile as fc


def _x(*shape, dtype=np.float64):
    return np.linspace(-1.0, 1.0, int(np.prod(shape))).reshape(shape).astype(dtype)


def mlp():
    m = fc.Chain(fc.Dense(4, 8, act=np.tanh), fc.Dense(8, 3))
    return m, (_x(5, 4),)


@fc.net
class TanhCell:
    def __init__(self, n_in, n_h):
        self.Wx = fc.initn(n_in, n_h)
        self.Wh = fc.initn(n_h, n_h)
        self.b = fc.initn(1, n_h)
        self.h = np.zeros((1, n_h))

    def forward(self, x):
        self.h = np.tanh(x @ self.Wx + self.h @ self.Wh + self.b)
        return self.h


def tanh_cell():
    return TanhCell(3, 4), (_x(2, 3),)


def lstm():
    return fc.LSTM(3, 2), (_x(2, 3),)


def squash(z):
    return z / (1.0 + np.abs(z))


@fc.net
class Encoder:
    def __init__(self):
        self.fc1 = fc.Affine(4, 6)
        self.fc2 = fc.Affine(6, 2)

    def forward(self, x):
        h = squash(self.fc1(x))
        y = self.fc2(h)
        return np.sum(y * y, axis=1, keepdims=True)


def encoder():
    return Encoder(), (_x(3, 4),)


@fc.net
class Gate:
    def __init__(self):
        self.W = np.full((3, 3), 0.5)

    def forward(self, x):
        h = x @ self.W
        if np.sum(h) > 0:
            out = np.tanh(h)
        else:
            out = h * 2.0
        return out


def data_if():
    return Gate(), (_x(2, 3) + 1.0,)     # sum(h) > 0: the tanh branch


@fc.net
class GuardedSteps:
    """An if on data in every trip of a loop region: a domain guard (log of a positive sum)."""

    def __init__(self):
        self.W = np.full((3, 3), 0.25)

    def forward(self, x):
        h = np.zeros((1, 3))
        for t in range(x.shape[0]):
            s = np.sum(x[t])
            if s > 0:
                h = np.tanh(x[t:t + 1] @ self.W + h) * np.log(s)
            else:
                h = h * 0.5
        return h


def cond_loop():
    return GuardedSteps(), (_x(40, 3),)


def plain_loss(W, x):
    return np.sum(np.tanh(x @ W) ** 2)


def grad_function():
    args = (_x(3, 2), _x(4, 3))
    fc.grad(plain_loss, *args)
    return plain_loss, args


def halve(z):
    return z * 0.5


def chain_with_function():
    return fc.Chain(fc.Affine(3, 4), halve, fc.relu, fc.Affine(4, 2)), (_x(2, 3),)


@fc.net
class Shared:
    def __init__(self):
        self.W = fc.initn(3, 3)
        self.first = fc.Affine(3, 3)
        self.second = fc.Affine(3, 3)
        self.second.W = self.first.W

    def forward(self, x):
        return self.second(self.first(x)) @ self.W


def shared_param():
    return Shared(), (_x(2, 3),)


@fc.net
class Classifier:
    def __init__(self):
        self.layer = fc.Affine(4, 3)

    def forward(self, x, target):
        probs = fc.softmax(self.layer(x))
        return fc.crossentropy(probs, target)


def softmax_loss():
    target = np.eye(3)[[0, 2]]
    return Classifier(), (_x(2, 4), target)


@fc.net
class Small32:
    def __init__(self):
        self.W = _x(3, 2, dtype=np.float32)
        self.b = np.zeros((1, 2), np.float32)

    def forward(self, x):
        return np.tanh(x @ self.W + self.b) * 0.5


def float32_model():
    return Small32(), (_x(2, 3, dtype=np.float32),)


@fc.net
class Cube:
    def __init__(self):
        self.W = fc.initn(3, 2)

    def forward(self, x):
        z = x @ self.W
        return z ** 3


def cube():
    return Cube(), (_x(2, 3),)


@fc.net
class Pieces:
    def __init__(self):
        self.W = fc.initn(3, 4)

    def forward(self, x):
        z = x @ self.W
        a = np.tanh(z[:, :2])
        b = fc.sigmoid(z[:, 2:])
        return np.concatenate([a, b], axis=1)[0]


def indexing():
    return Pieces(), (_x(2, 3),)


@fc.net
class LoopRNN:
    """A recurrence over time written as a loop: its input projection is hoisted."""

    def __init__(self):
        self.Wx = fc.initn(3, 4)
        self.Wh = fc.initn(4, 4)
        self.b = fc.initn(1, 4)

    def forward(self, x):
        h = np.zeros((x.shape[0], 4))
        for t in range(x.shape[1]):
            h = np.tanh(x[:, t] @ self.Wx + h @ self.Wh + self.b)
        return h


def rnn_loop():
    return LoopRNN(), (_x(2, 5, 3),)


MODELS = {f.__name__: f for f in (mlp, tanh_cell, lstm, encoder, data_if, cond_loop, grad_function,
                                  chain_with_function, shared_param, softmax_loss, float32_model,
                                  cube, indexing, rnn_loop)}
