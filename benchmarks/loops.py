"""Loops as IR regions (issue 11): compile time and source length against the trip count, a
long data-dependent while at the default recursion limit, 200 calls with random trip counts
(variants and memory), and warm calls of the real loop against the unrolled code.

    OPENBLAS_NUM_THREADS=1 python benchmarks/loops.py
"""
import gc
import sys
import time
import tracemalloc

import numpy as np

import flux_compile as fc
from flux_compile import cache as fc_cache
from flux_compile import traceloop

RNN = """
def rnn(x, Wx, Wh):
    h = np.zeros((x.shape[0], Wh.shape[0]))
    for t in range({n}):
        h = np.tanh(x[:, t % x.shape[1]] @ Wx + h @ Wh)
    return np.sum(h * h)
"""


def make(n):
    """A fresh function (nothing cached) with the constant trip count ``n``."""
    ns = {"np": np}
    exec(compile(RNN.format(n=n), f"<rnn {n}>", "exec"), ns)    # noqa: S102 - a benchmark's own text
    import linecache
    linecache.cache[f"<rnn {n}>"] = (0, None, RNN.format(n=n).splitlines(True), f"<rnn {n}>")
    return ns["rnn"]


def args(rng, t=8):
    return rng.normal(size=(4, t, 8)), rng.normal(size=(8, 16)) * 0.3, rng.normal(size=(16, 16)) * 0.3


def compile_curve(rng):
    print("compile time and source length (for t in range(n), a region above "
          f"{traceloop.UNROLL_UP_TO} trips):")
    print(f"{'n':>8} {'compile s':>10} {'source chars':>13}")
    sizes = {}
    for n in (10, 100, 1_000, 10_000):
        f = make(n)
        a = args(rng)
        start = time.perf_counter()
        c = fc_cache.compile_function(f, a)
        took = time.perf_counter() - start
        sizes[n] = len(c.source)
        print(f"{n:>8} {took:>10.3f} {sizes[n]:>13}")
    print(f"source at 10,000 / source at 10: {sizes[10_000] / sizes[10]:.2f} (target <= 2)")


def long_while():
    def f(x):
        h = x
        while np.max(h) > 1.0:
            h = h * 0.999
        return np.sum(h * h)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        x = np.full(4, 1.0) / 0.999 ** 4999.5
        start = time.perf_counter()
        value, (g,) = fc.grad(f, x)
        took = time.perf_counter() - start
        print(f"while with 5,000 trips at recursion limit 1000: first call (compile + run) {took:.3f} s, "
              f"value {value:.6f}")
    finally:
        sys.setrecursionlimit(limit)


def random_trip_counts(rng):
    @fc.net
    class Recurrent:
        def __init__(self):
            self.Wx = fc.initn(8, 16) * 30
            self.Wh = fc.initn(16, 16) * 30

        def forward(self, x):
            h = np.zeros((x.shape[0], 16))
            for t in range(x.shape[1]):
                h = np.tanh(x[:, t] @ self.Wx + h @ self.Wh)
            return h
    m = Recurrent()
    m(rng.normal(size=(4, 5, 8)))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    for _ in range(200):
        x = rng.normal(size=(4, int(rng.integers(2, 201)), 8))
        y, back = m.pullback(x)
        back(np.ones_like(y))
    took = time.perf_counter() - start
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    print(f"200 calls, trip counts 2..200: {fc_cache._class_caches[Recurrent].count} variant(s), "
          f"memory {grown / 1e6:+.2f} MB, {took:.2f} s")


def best_of(fn, rounds=7, reps=20):
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - start) / reps)
    return best


def warm_calls(rng):
    print("warm fc.grad call, real loop / unrolled:")
    for n in (10, 30, 100):
        a = args(rng)
        saved = traceloop.UNROLL_UP_TO
        try:
            traceloop.UNROLL_UP_TO = 0
            loop = make(n)
            fc.grad(loop, *a)
            traceloop.UNROLL_UP_TO = 10 ** 6
            unrolled = make(n)
            limit = sys.getrecursionlimit()
            sys.setrecursionlimit(max(limit, 20 * n + 1000))
            fc.grad(unrolled, *a)
            sys.setrecursionlimit(limit)
        finally:
            traceloop.UNROLL_UP_TO = saved
        v1, g1 = fc.grad(loop, *a)
        v2, g2 = fc.grad(unrolled, *a)
        assert np.isclose(v1, v2) and all(np.allclose(p, q) for p, q in zip(g1, g2))
        t_loop = best_of(lambda: fc.grad(loop, *a))
        t_unrolled = best_of(lambda: fc.grad(unrolled, *a))
        print(f"  n={n:>4}: loop {t_loop * 1e3:.3f} ms, unrolled {t_unrolled * 1e3:.3f} ms, "
              f"ratio {t_loop / t_unrolled:.2f} (target <= 1.5)")


def main():
    rng = np.random.default_rng(0)
    compile_curve(rng)
    long_while()
    random_trip_counts(rng)
    warm_calls(rng)


if __name__ == "__main__":
    main()
