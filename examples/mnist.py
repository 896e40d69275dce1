"""Handwritten digits with a three-layer perceptron, trained with Adam.

    python examples/mnist.py                  # scikit-learn's 8x8 digits: offline, a few seconds
    python examples/mnist.py --data DIR       # the real MNIST IDX files in DIR (raw or .gz)
    python examples/mnist.py --limit 500 --epochs 3 --plot curve.png

The model is an ordinary Chain of Dense layers; its forward, backward and
update are generated Python source (print them with ``fc.source(model, "all")``).
It outputs logits: training uses ``fc.logitcrossentropy`` on them and
prediction a softmax. The run shows a progress bar (in a terminal), writes a
training-curve plot and ends with ``test accuracy: 0.xx``.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import flux_compile as fc
import flux_compile.init
from flux_compile.datasets import load_digits, load_mnist


def build(n_in, n_classes=10):
    """784-style input (64 for the 8x8 digits), two hidden ReLU layers, 10 logits."""
    return fc.Chain(fc.Dense(n_in, 128, fc.relu),
                    fc.Dense(128, 64, fc.relu),
                    fc.Dense(64, n_classes))


def accuracy(model, x, y):
    probs = fc.softmax(model(x))
    return float(np.mean(fc.data.onecold(probs) == y))


def plot(history, path):
    """Loss per step and mean loss per epoch, as a PNG."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed, no plot written "
              "(pip install 'flux_compile[examples]')", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = np.arange(1, len(history) + 1)
    ax.plot(steps, list(history), lw=0.8, alpha=0.6, label="loss per step")
    if history.epochs:
        per_epoch = len(history) / len(history.epochs)
        ax.plot(per_epoch * np.arange(1, len(history.epochs) + 1), history.epochs,
                "o-", label="mean per epoch")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_yscale("log")
    ax.set_title("training curve")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def arguments(argv, epochs_help, plot_default, extra=()):
    """The command line both MNIST examples take (``extra``: more ``(flags, options)``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", metavar="DIR", help="directory with the MNIST IDX files "
                    "(default: scikit-learn's digits)")
    ap.add_argument("--epochs", type=int, default=None, help=epochs_help)
    ap.add_argument("--batch-size", type=int, default=32)
    for flags, options in extra:
        ap.add_argument(*flags, **options)
    ap.add_argument("--limit", type=int, metavar="N", help="use only the first N training "
                    "and N test examples")
    ap.add_argument("--plot", default=plot_default, metavar="PATH",
                    help=f"training-curve PNG (default {plot_default}; '' for none)")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def load_data(args):
    """``(x_train, y_train), (x_test, y_test), source``: MNIST from ``--data`` or the digits,
    cut to ``--limit``."""
    if args.data:
        (x_train, y_train), (x_test, y_test) = load_mnist(args.data)
        source = f"MNIST from {args.data}"
    else:
        (x_train, y_train), (x_test, y_test) = load_digits(seed=args.seed)
        source = "scikit-learn digits (8x8)"
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
        x_test, y_test = x_test[:args.limit], y_test[:args.limit]
    return (x_train, y_train), (x_test, y_test), source


def main(argv=None):
    args = arguments(argv, "default 40 for digits, 5 for MNIST", "mnist_curve.png")
    (x_train, y_train), (x_test, y_test), source = load_data(args)
    epochs = args.epochs or (5 if args.data else 40)
    print(f"{source}: {len(x_train)} training, {len(x_test)} test images of {x_train.shape[1]} pixels")

    flux_compile.init.seed(args.seed)            # the layers' initial weights
    model = build(x_train.shape[1])
    fit_and_report(model, fc.optim.Adam(1e-3), (x_train, y_train), (x_test, y_test), args, epochs)


def fit_and_report(model, opt, train, test, args, epochs, digits=2):
    """Train ``model`` with ``fc.logitcrossentropy`` on batches of ``train``, print the time,
    the losses and the accuracies (``digits`` decimals), and write the training curve."""
    (x_train, y_train), (x_test, y_test) = train, test
    data = fc.data.batches(x_train, y_train, args.batch_size, rng=args.seed)
    start = time.perf_counter()
    history = fc.train(model, fc.logitcrossentropy, data, opt, epochs=epochs)
    took = time.perf_counter() - start
    print(f"{epochs} epochs, {len(history)} steps in {took:.1f}s; final epoch loss "
          f"{history.epochs[-1]:.4f}, train accuracy {accuracy(model, x_train, y_train):.{digits}f}")
    if args.plot and plot(history, args.plot):
        print(f"training curve written to {args.plot}")
    print(f"test accuracy: {accuracy(model, x_test, y_test):.{digits}f}")
    return history


if __name__ == "__main__":
    main()
