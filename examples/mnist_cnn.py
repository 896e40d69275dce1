"""Handwritten digits with a small convolutional network, trained with Adam.

    python examples/mnist_cnn.py                  # scikit-learn's 8x8 digits: offline, seconds
    python examples/mnist_cnn.py --data DIR       # the real MNIST IDX files in DIR (raw or .gz)
    python examples/mnist_cnn.py --limit 500 --epochs 3 --plot curve.png

Two 3x3 convolutions with ReLU, each followed by 2x2 max pooling, then a Dense layer to
10 logits: an ordinary ``fc.Chain`` in float32 (``dtype=np.float32`` on every layer), whose
forward, backward and update are generated Python source (``fc.source(model, "all")``).
Ends with ``test accuracy: 0.xxx`` (0.986 on the digits with the defaults).
"""
from __future__ import annotations

import os
import sys

import numpy as np

import flux_compile as fc
import flux_compile.init

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mnist import arguments, fit_and_report, load_data  # noqa: E402  (the MLP example's helpers)


def build(side, channels=(16, 32), n_classes=10, dtype=np.float32):
    """conv3x3-relu-pool twice, then two Dense layers to logits; ``side`` is the images' height = width."""
    c1, c2 = channels
    after = side // 2 // 2
    return fc.Chain(fc.Conv2d(1, c1, 3, padding=1, act=fc.relu, dtype=dtype), fc.MaxPool2d(2),
                    fc.Conv2d(c1, c2, 3, padding=1, act=fc.relu, dtype=dtype), fc.MaxPool2d(2),
                    fc.flatten,
                    fc.Dense(c2 * after * after, 64, fc.relu, dtype=dtype),
                    fc.Dense(64, n_classes, dtype=dtype))


def as_images(x):
    """Flat pixel rows (N, side * side) to one-channel images (N, 1, side, side), float32."""
    side = int(round(np.sqrt(x.shape[1])))
    return x.reshape(len(x), 1, side, side).astype(np.float32)


def main(argv=None):
    args = arguments(argv, "default 20 for digits, 2 for MNIST", "mnist_cnn_curve.png",
                     extra=[(("--lr",), {"type": float, "default": 2e-3})])
    (x_train, y_train), (x_test, y_test), source = load_data(args)
    x_train, x_test = as_images(x_train), as_images(x_test)
    epochs = args.epochs or (2 if args.data else 20)
    print(f"{source}: {len(x_train)} training, {len(x_test)} test images of "
          f"{x_train.shape[2]}x{x_train.shape[3]} pixels")

    flux_compile.init.seed(args.seed)            # the layers' initial weights
    model = build(x_train.shape[2])
    fit_and_report(model, fc.optim.Adam(args.lr), (x_train, y_train), (x_test, y_test), args, epochs, digits=3)


if __name__ == "__main__":
    main()
