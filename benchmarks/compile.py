"""Compile time of a 5-layer MLP (``fc.Chain`` of five ``fc.Dense``): cold, warm, and from
the disk cache; the same for ``fc.train_step``. A target, not a test (issue 12): a 5-layer
model compiles in < 50 ms, a disk-cache hit loads in < 5 ms.

Every "fresh process" figure is a new Python process (with .pyc files, as an installed
package has them) timing only the call named, after ``import flux_compile``; each is run
``--runs`` times and the median is printed; ``--against DIR`` times another checkout in
the same run (taking turns) and prints the ratios. The warm figures are medians of
``--repeats`` compiles in one process, with the time per pipeline stage.

    python benchmarks/compile.py [--runs 5] [--repeats 20] [--against ../main]
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
               "from_disk": getattr(next(iter(fc.trainstep._SHARED.values()))[0], "origin", "") == "disk"}
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
    r = subprocess.run([sys.executable, "-c", PROGRAM, what, *extra], capture_output=True, text=True, env=env,
                       cwd=tempfile.gettempdir())          # not a checkout: PYTHONPATH picks the package
    if r.returncode:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout.splitlines()[-1])


def environments(root, tmp):
    """(without, with) the disk cache, for the checkout at ``root``; .pyc files on."""
    base = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
                PYTHONPYCACHEPREFIX=os.path.join(tmp, "pyc"), XDG_CONFIG_HOME=os.path.join(tmp, "config"),
                OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    base.pop("PYTHONDONTWRITEBYTECODE", None)
    base.pop("FLUX_COMPILE_CACHE_DIR", None)
    return base, dict(base, FLUX_COMPILE_CACHE_DIR=os.path.join(tmp, "cache"))


ROWS = [("cold compile, fresh process (compile_model)", "cold", "compile"),
        ("  first pullback + back, fresh process", "cold", "first_pullback"),
        ("warm compile, every layer again (compile_model)", "warm", "warm"),
        ("disk hit, fresh process (compile_model)", "hit", "compile"),
        ("  first pullback + back, fresh process", "hit", "first_pullback"),
        ("fc.train_step first step, fresh process, no disk", "cold_step", "first_step"),
        ("fc.train_step first step, warm process", "warm", "step"),
        ("fc.train_step first step, disk hit, fresh process", "hit_step", "first_step")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--against", help="another checkout (its directory) timed in the same run, "
                                      "taking turns with this one")
    a = ap.parse_args()
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    roots = [("this", here)] + ([("against", os.path.abspath(a.against))] if a.against else [])
    envs, results = {}, {}
    for label, root in roots:
        envs[label] = environments(root, tempfile.mkdtemp(prefix="fc-compile-bench-"))
        base, disk = envs[label]
        run("model", base)                      # writes the .pyc files
        run("model", disk), run("step", disk)   # stores the entries
        results[label] = {"cold": [], "hit": [], "cold_step": [], "hit_step": [], "warm": []}
    for _ in range(a.runs):                     # the contenders take turns
        for label, _root in roots:
            base, disk = envs[label]
            r = results[label]
            r["cold"].append(run("model", base))
            r["hit"].append(run("model", disk))
            r["cold_step"].append(run("step", base))
            r["hit_step"].append(run("step", disk))
    for label, _root in roots:
        results[label]["warm"].append(run("warm", envs[label][0], str(a.repeats)))
    print("5-layer MLP: fc.Chain of 4 fc.Dense(64, 64, relu) and fc.Dense(64, 10), batch 32, float64")
    print("medians in ms (fresh processes: of --runs; warm: of --repeats in one process)")
    print(f"{'':52}" + "".join(f"{label:>10}" for label, _ in roots) + ("     ratio" if a.against else ""))
    for title, kind, field in ROWS:
        values = []
        for label, _ in roots:
            r = results[label][kind]
            ok = kind not in ("hit", "hit_step") or all(x.get("from_disk") for x in r)
            values.append(statistics.median(x[field] for x in r) * 1e3 if ok else None)
        cells = "".join(f"{v:10.1f}" if v is not None else f"{'no hit':>10}" for v in values)
        ratio = f"{values[0] / values[1]:9.2f}x" if a.against and None not in values else ""
        print(f"{title:52}{cells}{ratio}")
    stages = results["this"]["warm"][0]["stages"]
    print("warm compile, share of the time per stage (cProfile; trace includes the sub-models' builds): "
          + ", ".join(f"{k} {100 * v:.0f}%" for k, v in stages.items()))


if __name__ == "__main__":
    main()
