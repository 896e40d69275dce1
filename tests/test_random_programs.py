"""Randomly generated programs: straight-line NumPy with broadcasting, reductions, matmul,
indexing, helper functions, branches and loops on data. Each program's source is written to a
module, compiled by flux_compile, and its gradients compared with autograd running the very
same source (``np`` bound to ``autograd.numpy``) and with finite differences."""
import importlib.util
import random
import textwrap

import numpy as np
import pytest

import flux_compile as fc

UNARY = ["np.tanh({})", "np.sin({})", "np.cos({})", "np.exp(np.tanh({}))", "({}) ** 2", "np.sqrt(1.0 + ({}) ** 2)",
         "-({})", "np.log1p(({}) ** 2)", "1.0 / (1.0 + np.exp(-({})))", "np.arctan({})", "np.abs({}) + 0.1 * ({})"]
BINARY = ["({}) + ({})", "({}) - ({})", "({}) * ({})", "({}) / (1.5 + np.cos({}))", "np.maximum({}, {})",
          "np.minimum({}, {})", "np.hypot({}, 1.0 + ({}) ** 2)"]


class Gen:
    def __init__(self, seed):
        self.r = random.Random(seed)
        self.lines = []
        self.vars = {"x": (3, 4), "W": (4, 4), "b": (4,)}
        self.n = 0

    def fresh(self):
        self.n += 1
        return f"v{self.n}"

    def pick(self, shape=None):
        names = [k for k, s in self.vars.items() if shape is None or s == shape]
        return self.r.choice(names)

    def stmt(self, indent="    "):
        r = self.r
        kind = r.choice(["unary", "binary", "binary", "bcast", "reduce", "matmul", "index", "helper"])
        out = self.fresh()
        if kind == "unary":
            a = self.pick()
            expr, shape = r.choice(UNARY).format(a, a), self.vars[a]
        elif kind == "binary":
            a = self.pick()
            b = self.pick(self.vars[a])
            expr, shape = r.choice(BINARY).format(a, b), self.vars[a]
        elif kind == "bcast":
            a = self.pick((3, 4)) if any(s == (3, 4) for s in self.vars.values()) else "x"
            b = self.pick((4,))
            expr, shape = r.choice(BINARY).format(a, b), (3, 4)
        elif kind == "reduce":
            a = self.pick((3, 4)) if any(s == (3, 4) for s in self.vars.values()) else "x"
            axis = r.choice([0, 1])
            fn = r.choice(["np.sum", "np.mean", "np.max"])
            expr, shape = f"{a} * {fn}({a}, axis={axis}, keepdims=True)", (3, 4)
        elif kind == "matmul":
            a = self.pick((3, 4)) if any(s == (3, 4) for s in self.vars.values()) else "x"
            expr, shape = f"np.tanh({a} @ W)", (3, 4)
        elif kind == "index":
            a = self.pick((3, 4)) if any(s == (3, 4) for s in self.vars.values()) else "x"
            expr, shape = r.choice([f"{a}[:, 1:3].sum(axis=1, keepdims=True) * {a}",
                                    f"{a}[::-1]", f"np.concatenate([{a}[:, :2], {a}[:, 2:] * 2.0], axis=1)",
                                    f"{a}.T.T * {a}[0]"]), (3, 4)
        else:
            a = self.pick()
            expr, shape = f"helper({a})", self.vars[a]
        self.lines.append(f"{indent}{out} = {expr}")
        self.vars[out] = shape
        return out

    def program(self):
        r = self.r
        for _ in range(r.randint(2, 5)):
            self.stmt()
        if r.random() < 0.4:
            cond = self.pick()
            before = dict(self.vars)
            self.lines.append(f"    if np.sum({cond}) > 0:")
            then = self.stmt("        ")
            self.lines.append("    else:")
            alt = self.fresh()
            other = self.r.choice([k for k, s in before.items() if s == self.vars[then]] or ["x"])
            self.lines.append(f"        {alt} = {other} * 0.5")
            self.lines.append(f"        {then} = {alt}")
        if r.random() < 0.3:
            a = self.pick((3, 4)) if any(s == (3, 4) for s in self.vars.values()) else "x"
            self.lines.append(f"    for _ in range({r.randint(1, 3)}):")
            self.lines.append(f"        {a} = np.tanh({a}) + 0.1 * {a}")
        for _ in range(r.randint(1, 3)):
            self.stmt()
        last = [k for k in self.vars if k.startswith("v")][-1]
        terms = [f"np.sum({last} ** 2)"] + [f"np.sum({k})" for k in r.sample(list(self.vars), 2)]
        self.lines.append(f"    return {' + '.join(terms)}")
        body = "\n".join(self.lines)
        return textwrap.dedent('''\
            import numpy as np


            def helper(u):
                return np.tanh(u) * 0.5 + u * 0.25


            def program(x, W, b):
            ''') + body + "\n"


def load(tmp_path, name, source, numpy):
    path = tmp_path / f"{name}_{numpy.__name__.replace('.', '_')}.py"
    path.write_text(source.replace("import numpy as np", f"import {numpy.__name__} as np"))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.program


@pytest.mark.filterwarnings("ignore:Output seems independent of input")
@pytest.mark.parametrize("seed", range(80))
def test_random_program(tmp_path, seed):
    source = Gen(seed).program()
    f = load(tmp_path, f"prog{seed}", source, np)
    rng = np.random.default_rng(seed)
    args = (rng.standard_normal((3, 4)), rng.standard_normal((4, 4)) * 0.5, rng.standard_normal(4))
    value, grads = fc.grad(f, *[a.copy() for a in args])
    np.testing.assert_allclose(value, f(*args), rtol=1e-10, err_msg=source)
    autograd = pytest.importorskip("autograd")
    anp = pytest.importorskip("autograd.numpy")
    g_ref = load(tmp_path, f"prog{seed}", source, anp)
    for i, g in enumerate(grads):
        ref = autograd.grad(g_ref, i)(*args)
        np.testing.assert_allclose(g, ref, rtol=1e-7, atol=1e-9, err_msg=f"argument {i}\n{source}")
    assert fc.gradcheck(f, *args, atol=1e-5).ok, source


@pytest.mark.parametrize("seed", range(5))
def test_random_program_float32(tmp_path, seed):
    source = Gen(100 + seed).program()
    f = load(tmp_path, f"prog32_{seed}", source, np)
    rng = np.random.default_rng(seed)
    args = [a.astype(np.float32) for a in (rng.standard_normal((3, 4)), rng.standard_normal((4, 4)) * 0.5,
                                           rng.standard_normal(4))]
    value, grads = fc.grad(f, *args)
    assert all(g.dtype == np.float32 for g in grads), source
