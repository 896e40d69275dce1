"""Compile time of a 5-layer MLP (``fc.Chain`` of five ``fc.Dense``): cold, warm, and from
the disk cache; the same for ``fc.train_step``. A target, not a test (issue 12): a 5-layer
model compiles in < 50 ms, a disk-cache hit loads in < 5 ms.

Every "fresh process" figure is a new Python process (with .pyc files, as an installed
package has them) timing only the call named, after ``import flux_compile``; each is run
``--runs`` times and the median and the best are printed. The warm figures are medians of
``--repeats`` compiles in one process, with the time per pipeline stage.

    python benchmarks/compile.py [--runs 5] [--repeats 20]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap

PROGRAM = textwrap.dedent('''
    import json, sys, time
    import numpy as np, flux_compile as fc
    from flux_compile.cache import compile_model
    what = sys.argv[1]
    def mlp():
        return fc.Chain(*[fc.Dense(64, 64, act=fc.relu) for _ in range(4)], fc.Dense(64, 10))
    m = mlp()
    x = np.random.default_rng(0).standard_normal((32, 64))
    t = np.zeros((32, 10))
    out = {}
    if what == "model":
        t0 = time.perf_counter()
        c = compile_model(m, (x,))
        t1 = time.perf_counter()
        y, back = m.pullback(x)
        back(np.ones_like(y))
        t2 = time.perf_counter()
        out = {"compile": t1 - t0, "first_pullback": t2 - t0, "from_disk": c.from_disk}
    elif what == "step":
        step = fc.train_step(m, fc.mse, fc.optim.SGD(0.01))
        t0 = time.perf_counter()
        step(x, target=t)
        t1 = time.perf_counter()
        step(x, target=t)
        t2 = time.perf_counter()
        out = {"first_step": t1 - t0, "next_step": t2 - t1,
               "from_disk": next(iter(fc.trainstep._SHARED.values()))[0].origin == "disk"}
    elif what == "warm":
        import cProfile, pstats
        from flux_compile import trainstep
        compile_model(m, (x,))
        stages = {"trace": "compiler.py:%d(_trace)", "autodiff": "autodiff.py:%d(differentiate)",
                  "passes": "passes.py:%d(optimize)", "split": "autodiff.py:%d(split)",
                  "codegen": "assemble.py:%d(emit_module)"}
        times, prof = [], cProfile.Profile()
        from flux_compile import cache
        for i in range(int(sys.argv[2]) + 5):      # every layer compiled again: new instances, empty caches
            cache._class_caches.clear()
            m2 = mlp()
            if i >= int(sys.argv[2]):
                prof.enable()
            t0 = time.perf_counter()
            compile_model(m2, (x,))
            times.append(time.perf_counter() - t0)
        prof.disable()
        profiled = sum(times[int(sys.argv[2]):]) / 5
        times = times[:int(sys.argv[2])]
        step_times = []
        for i in range(max(3, int(sys.argv[2]) // 4)):
            trainstep._SHARED.clear()
            step = fc.train_step(m, fc.mse, fc.optim.SGD(0.01))
            t0 = time.perf_counter()
            step(x, target=t)
            step_times.append(time.perf_counter() - t0)
        st = pstats.Stats(prof).stats
        per_stage = {}
        for (file, line, fn), (cc, nc, tt, ct, callers) in st.items():
            for name, pattern in stages.items():
                if f"{file.rsplit('/', 1)[-1]}:{line}({fn})" == pattern % line:
                    per_stage[name] = per_stage.get(name, 0.0) + ct / 5 / profiled
        out = {"warm": sorted(times)[len(times) // 2], "warm_best": min(times),
               "step": sorted(step_times)[len(step_times) // 2], "stages": per_stage}
    print(json.dumps(out))
''')


def run(what, env, *extra):
    r = subprocess.run([sys.executable, "-c", PROGRAM, what, *extra], capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout.splitlines()[-1])


def summary(values):
    ms = [1e3 * v for v in values]
    return f"median {statistics.median(ms):6.1f} ms   best {min(ms):6.1f} ms"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="fc-compile-bench-")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    base = dict(os.environ, PYTHONPATH=here + os.pathsep + os.environ.get("PYTHONPATH", ""),
                PYTHONPYCACHEPREFIX=os.path.join(tmp, "pyc"), XDG_CONFIG_HOME=os.path.join(tmp, "config"),
                OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    base.pop("PYTHONDONTWRITEBYTECODE", None)
    base.pop("FLUX_COMPILE_CACHE_DIR", None)
    disk = dict(base, FLUX_COMPILE_CACHE_DIR=os.path.join(tmp, "cache"))
    run("model", base)                          # writes the .pyc files
    cold, hit, cold_step, hit_step = [], [], [], []
    run("model", disk), run("step", disk)     # stores the entries
    for _ in range(a.runs):                   # the contenders take turns
        cold.append(run("model", base))
        hit.append(run("model", disk))
        cold_step.append(run("step", base))
        hit_step.append(run("step", disk))
    assert all(h["from_disk"] for h in hit + hit_step) and not any(c["from_disk"] for c in cold + cold_step)
    warm = run("warm", base, str(a.repeats))
    print("5-layer MLP: fc.Chain of 4 fc.Dense(64, 64, relu) and fc.Dense(64, 10), batch 32, float64")
    print(f"cold compile, fresh process (compile_model)          {summary([c['compile'] for c in cold])}")
    print(f"  first pullback + back, fresh process                {summary([c['first_pullback'] for c in cold])}")
    print(f"warm compile, same process (compile_model)           median {1e3 * warm['warm']:6.1f} ms   "
          f"best {1e3 * warm['warm_best']:6.1f} ms")
    print("  share of the time per stage (under cProfile; trace includes the sub-models' own builds): "
          + ", ".join(f"{k} {100 * v:.0f}%" for k, v in warm["stages"].items()))
    print(f"disk hit, fresh process (compile_model)              {summary([h['compile'] for h in hit])}")
    print(f"  first pullback + back, fresh process                {summary([h['first_pullback'] for h in hit])}")
    print(f"fc.train_step first step, fresh process, no disk     {summary([c['first_step'] for c in cold_step])}")
    print(f"fc.train_step first step, warm process (median)      median {1e3 * warm['step']:6.1f} ms")
    print(f"fc.train_step first step, disk hit, fresh process    {summary([h['first_step'] for h in hit_step])}")
    print(f"  (a step once compiled)                              {summary([h['next_step'] for h in hit_step])}")


if __name__ == "__main__":
    main()
