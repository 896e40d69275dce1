"""Loops as IR regions (issue 11): compile time and source length against the trip count, a
long data-dependent while at the default recursion limit, 200 calls with random trip counts
(variants and memory), 200 calls with random branch patterns (cond regions against the
guarded variants an if on data compiled to before), and warm calls of the real loop against
the unrolled code.

    OPENBLAS_NUM_THREADS=1 python benchmarks/loops.py
"""
import gc
import sys
import time
import tracemalloc

import numpy as np

import flux_compile as fc
from flux_compile import cache as fc_cache
from flux_compile import tracecond, traceloop

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


def make_gated():
    @fc.net
    class Gated:
        """A top-level if on data (a domain guard) and an if on data in every trip of a loop."""

        def __init__(self):
            self.W = fc.initn(3, 3) * 100

        def forward(self, x):
            h = np.zeros((1, 3))
            for t in range(x.shape[0]):
                if np.sum(x[t]) > 0:
                    h = np.tanh(x[t:t + 1] @ self.W + h)
                else:
                    h = h * 0.9
            s = np.sum(h * h)
            if s > 0.5:
                h = h * np.log(s)
            return h
    return Gated()


def _random_patterns(rng, m, calls=200, steps=20):
    """``calls`` pullbacks on inputs whose rows' signs (the branch pattern) are random:
    (distinct patterns, compiles, variants kept, memory grown, seconds)."""
    builds = [0]
    real_build = fc_cache.build_model

    def counting(*a, **k):
        builds[0] += 1
        return real_build(*a, **k)
    fc_cache.build_model = counting
    try:
        m(rng.normal(size=(steps, 3)))
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        patterns = set()
        start = time.perf_counter()
        for _ in range(calls):
            x = rng.normal(size=(steps, 3))
            patterns.add(tuple(x.sum(axis=1) > 0))
            y, back = m.pullback(x)
            back(np.ones_like(y))
        took = time.perf_counter() - start
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
    finally:
        fc_cache.build_model = real_build
    return len(patterns), builds[0], fc_cache._class_caches[type(m)].count, grown, took


def random_branch_patterns(rng):
    n, builds, kept, grown, took = _random_patterns(rng, make_gated())
    print(f"200 calls, {n} random branch patterns (20 trips): cond regions: {builds} compile(s), "
          f"{kept} variant(s) kept, memory {grown / 1e6:+.2f} MB, {took:.2f} s")
    real = tracecond.Conds.try_cond_region
    try:           # an if on data decided when compiling, with a guard (before cond regions)
        tracecond.Conds.try_cond_region = lambda self, s, test: False
        n, builds, kept, grown, took = _random_patterns(rng, make_gated(), calls=50)
    finally:
        tracecond.Conds.try_cond_region = real
    print(f"  guarded paths instead, 50 calls: {builds} compile(s), {kept} variant(s) kept "
          f"(at most {fc_cache.MAX_VARIANTS}), memory {grown / 1e6:+.2f} MB, {took:.2f} s")


def _branchy(x, W):
    h = x @ W
    if np.sum(h) > 0:
        h = np.log(np.sum(h)) * h
    else:
        h = h * 2.0
    return np.sum(np.tanh(h))


def with_cond(x, W):
    return _branchy(x, W)


def with_guard(x, W):
    return _branchy(x, W)


def warm_branch(rng):
    """One warm fc.grad with the real if against the guarded straight-line code of the same
    path (interleaved rounds)."""
    x, W = np.abs(rng.normal(size=(8, 16))), np.abs(rng.normal(size=(16, 16)))
    fc.grad(with_cond, x, W)
    real = tracecond.Conds.try_cond_region
    try:
        tracecond.Conds.try_cond_region = lambda self, s, test: False
        fc.grad(with_guard, x, W)
    finally:
        tracecond.Conds.try_cond_region = real
    assert "cond(" in str(fc.graph(with_cond, (x, W))) and "guard(" in str(fc.graph(with_guard, (x, W)))
    ratios = []
    for _ in range(3):
        t_cond = best_of(lambda: fc.grad(with_cond, x, W))
        t_guarded = best_of(lambda: fc.grad(with_guard, x, W))
        ratios.append(t_cond / t_guarded)
    print(f"warm fc.grad with a data if: real if {t_cond * 1e3:.3f} ms, guarded path "
          f"{t_guarded * 1e3:.3f} ms, ratio {min(ratios):.2f}..{max(ratios):.2f}")


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
    random_branch_patterns(rng)
    warm_branch(rng)
    warm_calls(rng)


if __name__ == "__main__":
    main()
