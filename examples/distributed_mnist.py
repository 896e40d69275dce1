"""Handwritten digits trained data-parallel: every process takes its share of each batch.

    torchrun --nproc_per_node=2 examples/distributed_mnist.py              # 2 processes, this machine
    torchrun --nproc_per_node=2 examples/distributed_mnist.py --data DIR   # the real MNIST IDX files
    python examples/distributed_mnist.py                                   # one process, same result

The model and the training call are examples/mnist.py's with
``distributed=True``: each of the N processes runs forward and backward on
1/N of every global batch of ``--batch-size`` rows, the gradients are
averaged by all-reduce (gloo on CPU, NCCL for CUDA tensors), and every
process applies the same update, so the result equals one process training
on the whole batches. Rank 0 alone prints and saves. docs/scaling.md says
more (GPUs, several machines, resuming).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import flux_compile as fc
import flux_compile.init
from flux_compile.datasets import load_digits, load_mnist


def build(n_in, n_classes=10):
    return fc.Chain(fc.Dense(n_in, 128, fc.relu),
                    fc.Dense(128, 64, fc.relu),
                    fc.Dense(64, n_classes))


def accuracy(model, x, y):
    return float(np.mean(fc.data.onecold(model(x)) == y))


def say(*args):
    if fc.distributed.is_main():
        print(*args, flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", metavar="DIR", help="MNIST IDX files (default: scikit-learn's digits)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64, help="global batch, split over the processes")
    ap.add_argument("--limit", type=int, metavar="N", help="only the first N training and test images")
    ap.add_argument("--save", metavar="PATH", help="checkpoint written by rank 0 after training")
    ap.add_argument("--resume", metavar="PATH", help="checkpoint to start from (read by every rank)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    world = fc.distributed.init()               # joins torchrun's group (one process without it)
    (x_train, y_train), (x_test, y_test) = (load_mnist(args.data) if args.data
                                            else load_digits(seed=args.seed))
    if args.limit:
        x_train, y_train, x_test, y_test = (a[:args.limit] for a in (x_train, y_train, x_test, y_test))
    processes = "1 process" if world == 1 else f"{world} processes"
    say(f"{processes}, {len(x_train)} training images, global batch {args.batch_size}")

    flux_compile.init.seed(args.seed + fc.distributed.rank())   # rank 0's weights are broadcast
    model = build(x_train.shape[1])
    opt = fc.optim.Adam(1e-3)
    if args.resume:
        fc.load(args.resume, model, opt)        # every rank reads the same file
    data = fc.data.batches(x_train, y_train, args.batch_size, rng=args.seed)   # one seed: same batches

    start = time.perf_counter()
    history = fc.train(model, fc.logitcrossentropy, data, opt, epochs=args.epochs, distributed=True)
    say(f"{len(history)} steps in {time.perf_counter() - start:.1f}s; final epoch loss "
        f"{history.epochs[-1]:.4f}")
    if args.save:
        fc.save(args.save, model, opt)          # rank 0 writes; a no-op on the others
        fc.distributed.barrier()
        say(f"saved to {args.save}")
    say(f"test accuracy: {accuracy(model, x_test, y_test):.2f}")
    fc.distributed.shutdown()


if __name__ == "__main__":
    main()
