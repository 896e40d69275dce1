"""Buffers kept across calls (flux_compile/buffers.py): the same generated code timed with the
pool on and off, interleaved in one run, next to hand-written NumPy.

Off means every ``buffers.matmul`` / ``buffers.like`` allocates a fresh array, as before the
pool existed (the helper call itself stays, so this isolates what reuse saves).

    OPENBLAS_NUM_THREADS=1 python benchmarks/prealloc.py [--repeats 20]
"""
import argparse
import time

import numpy as np

import flux_compile as fc
from flux_compile import buffers

from mlp import MLP, fc_step, numpy_step


def pool(on):
    buffers.REUSE = on
    buffers._FREE = FREE if on else -1


FREE = buffers._FREE


def race(contenders, repeats, rounds=7):
    best = {name: float("inf") for name in contenders}
    for name, (fn, on) in contenders.items():
        pool(on)
        fn()
    for _ in range(rounds):
        for name, (fn, on) in contenders.items():
            pool(on)
            fn()                                # one warm call in this mode
            t = time.perf_counter()
            for _ in range(repeats):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t) / repeats)
    pool(True)
    return best


def run(sizes, batch, repeats):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, sizes[0]))
    labels = rng.integers(0, sizes[-1], batch)
    m, m2 = MLP(sizes, np.random.default_rng(0)), MLP(sizes, np.random.default_rng(0))
    Ws = [l.W.value.copy() for l in m.layers]
    bs = [l.b.value.copy() for l in m.layers]
    step = fc.train_step(m2, fc.logitcrossentropy, fc.optim.SGD(0.01))
    best = race({"numpy": (lambda: numpy_step(Ws, bs, x, labels, 0.01), True),
                 "train_step kept": (lambda: step(x, target=labels), True),
                 "train_step fresh": (lambda: step(x, target=labels), False),
                 "pullback kept": (lambda: fc_step(m, x, labels, 0.01), True),
                 "pullback fresh": (lambda: fc_step(m, x, labels, 0.01), False)}, repeats)
    print(f"MLP {'-'.join(map(str, sizes))}, batch {batch}")
    for name, t in best.items():
        print(f"  {name:18s}: {t * 1e6:9.1f} us/step   ratio to NumPy {t / best['numpy']:5.2f}x")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args(argv)
    run((784, 128, 10), 32, a.repeats * 5)
    run((784, 512, 512, 10), 256, max(3, a.repeats // 2))


if __name__ == "__main__":
    main()
