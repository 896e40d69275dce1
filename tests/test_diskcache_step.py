"""The disk cache's fast hit and fc.train_step's entries: a later process reuses a stored step
only while everything it was generated from is unchanged, and a hit reads no source file.

Each scenario runs the user's program in fresh subprocesses sharing one cache directory; the
losses and trained parameters are compared with the same program run without the cache (the
two must be equal to the last bit) and with a hand-written NumPy step."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

MODULE = textwrap.dedent('''
    import numpy as np, flux_compile as fc
    SCALE = 2.0

    def myloss(yhat, y):
        return ((yhat - y) ** 2).sum() * SCALE

    @fc.net
    class Net:
        def __init__(self):
            self.W = np.linspace(-1, 1, 6).reshape(3, 2)
            self.b = np.linspace(0.1, 0.2, 2).reshape(1, 2)

        def forward(self, x):
            return np.tanh(x @ self.W + self.b)

    class MySGD(fc.optim.SGD):
        def block(self):
            return ["p = p - lr * g"]

    lamloss = lambda yhat, y: ((yhat - y) ** 2).sum() * SCALE

    @fc.net
    class Scaled:
        def __init__(self, inner, k):
            self.inner, self.k = inner, k

        def forward(self, x):
            return self.inner(x) * self.k
''')

RUN = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, {path!r})
    import numpy as np, flux_compile as fc
    import stepmod
    {prelude}
    x = np.linspace(-1, 1, 12).reshape(4, 3)
    t = np.linspace(0.5, -0.5, 8).reshape(4, 2)
    m = stepmod.Net()
    {setup}
    step = fc.train_step(m, {loss}, {opt})
    losses = [step(x, target=t) for _ in range(3)]
    module = next(iter(v for vs in fc.trainstep._SHARED.values() for v in vs))
    core = getattr(m, "inner", m)
    print(json.dumps({{"losses": losses, "W": core.W.value.tolist(), "b": core.b.value.tolist(),
                       "origin": module.origin}}))
''')


class StepProject:
    def __init__(self, tmp_path):
        self.root = tmp_path
        self.cache = tmp_path / "cache"
        self.config = tmp_path / "config"
        (tmp_path / "stepmod.py").write_text(MODULE)

    def run(self, loss="stepmod.myloss", opt="fc.optim.SGD(0.1)", prelude="", cached=True, setup=""):
        env = dict(os.environ, XDG_CONFIG_HOME=str(self.config), PYTHONDONTWRITEBYTECODE="1")
        if cached:
            env["FLUX_COMPILE_CACHE_DIR"] = str(self.cache)
        else:
            env.pop("FLUX_COMPILE_CACHE_DIR", None)
        code = RUN.format(path=str(self.root), loss=loss, opt=opt, prelude=prelude, setup=setup)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.splitlines()[-1])

    def edit(self, old, new):
        path = self.root / "stepmod.py"
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new))

    def entries(self):
        return sorted(p for p in self.cache.iterdir() if re.fullmatch(r"[0-9a-f]{40}\.py", p.name))

    def step_entry(self):
        hits = [p for p in self.entries() if "train_step" in p.read_text().split("\n", 3)[2]]
        assert len(hits) == 1, hits
        return hits[0]


def by_hand(scale=2.0, lr=0.1, steps=3):
    """Three SGD steps of loss = scale * sum((tanh(x W + b) - t)^2), in NumPy."""
    x = np.linspace(-1, 1, 12).reshape(4, 3)
    t = np.linspace(0.5, -0.5, 8).reshape(4, 2)
    W = np.linspace(-1, 1, 6).reshape(3, 2)
    b = np.linspace(0.1, 0.2, 2).reshape(1, 2)
    losses = []
    for _ in range(steps):
        y = np.tanh(x @ W + b)
        losses.append(float(((y - t) ** 2).sum() * scale))
        dz = 2 * scale * (y - t) * (1 - y * y)
        W, b = W - lr * x.T @ dz, b - lr * dz.sum(0, keepdims=True)
    return {"losses": losses, "W": W, "b": b}


def check(out, **kw):
    want = by_hand(**kw)
    np.testing.assert_allclose(out["losses"], want["losses"], rtol=1e-12)
    np.testing.assert_allclose(out["W"], want["W"], rtol=1e-12)
    np.testing.assert_allclose(out["b"], want["b"], rtol=1e-12)


@pytest.fixture
def project(tmp_path):
    return StepProject(tmp_path)


def test_a_train_step_is_stored_and_reused_with_identical_results(project):
    first = project.run()
    assert first["origin"] == "built"
    check(first)
    entry = project.step_entry()
    second = project.run()
    assert second["origin"] == "disk"
    assert second["losses"] == first["losses"] and second["W"] == first["W"] and second["b"] == first["b"]
    assert project.run(cached=False)["losses"] == first["losses"]
    assert project.step_entry() == entry


def test_an_edited_loss_function_is_a_miss(project):
    check(project.run())
    project.edit("((yhat - y) ** 2).sum() * SCALE", "((yhat - y) ** 2).sum() * SCALE * 0.5")
    out = project.run()
    assert out["origin"] == "built"
    check(out, scale=1.0)
    assert project.run()["origin"] == "disk"


def test_a_changed_global_read_by_the_loss_is_a_miss(project):
    check(project.run())
    project.edit("SCALE = 2.0", "SCALE = 3.0")
    out = project.run()
    assert out["origin"] == "built"
    check(out, scale=3.0)


def test_an_edited_model_class_is_a_miss(project):
    check(project.run())
    project.edit("return np.tanh(x @ self.W + self.b)", "return np.tanh(x @ self.W + self.b) * 1.0")
    out = project.run()
    assert out["origin"] == "built"
    check(out)


def test_a_new_learning_rate_reuses_the_step_and_an_edited_optimiser_does_not(project):
    check(project.run(opt="stepmod.MySGD(0.1)"))
    out = project.run(opt="stepmod.MySGD(0.05)")          # a hyper-parameter: read at run time
    assert out["origin"] == "disk"
    check(out, lr=0.05)
    project.edit('return ["p = p - lr * g"]', 'return ["p = p - 0.5 * lr * g"]')
    out = project.run(opt="stepmod.MySGD(0.1)")
    assert out["origin"] == "built"
    check(out, lr=0.05)


def test_another_optimiser_or_loss_is_another_entry(project):
    project.run()
    n = len(project.entries())
    out = project.run(loss="fc.mse")
    assert out["origin"] == "built"
    assert project.run(opt="fc.optim.Adam(0.01)")["origin"] == "built"
    assert len(project.entries()) == n + 2


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
def test_a_damaged_step_entry_is_a_miss_and_is_rewritten(project, damage):
    first = project.run()
    entry = project.step_entry()
    data = entry.read_bytes()
    entry.write_bytes({"truncate": data[: len(data) // 2], "flip": data.replace(b"tanh", b"sinh", 1),
                       "empty": b"", "garbage": os.urandom(300)}[damage])
    out = project.run()
    assert out["origin"] == "built"
    assert out["losses"] == first["losses"]
    assert project.run()["origin"] == "disk"


def test_a_rule_registered_after_the_store_is_a_miss(project):
    check(project.run())
    (project.root / "steprule.py").write_text(textwrap.dedent('''
        import numpy as np, flux_compile as fc

        @fc.diffrule(np.tanh)
        def _(dy, y, x):
            return dy * (1 - y * y) * 0.0
    '''))
    out = project.run(prelude="import steprule")
    assert out["origin"] == "built"
    np.testing.assert_allclose(out["W"], np.linspace(-1, 1, 6).reshape(3, 2))    # no gradient


NO_SOURCE_READS = textwrap.dedent('''
    import inspect, linecache, tokenize
    def refuse(*a, **k):
        raise AssertionError("a disk hit read a source file")
    linecache.getlines = linecache.updatecache = inspect.getsource = inspect.getsourcelines = refuse
    tokenize.open = refuse
    import builtins
    _compile = builtins.compile
    def compile_no_module(source, filename, *a, **k):
        if str(filename).startswith("<flux_compile: "):
            raise AssertionError("a disk hit compiled generated text")
        return _compile(source, filename, *a, **k)
    builtins.compile = compile_no_module
''')


def test_a_hit_reads_no_source_file_and_compiles_no_text(tmp_path):
    """The key of a library model and its step need no source text: a hit neither reads nor
    tokenises a file (the in-memory key hashes forward's code; state names come from bytecode),
    and runs the stored module code without compiling the generated text."""
    (tmp_path / "hitprog.py").write_text(textwrap.dedent('''
        import json, sys
        import numpy as np, flux_compile as fc
        from flux_compile.cache import compile_model
        np.random.seed(0)
        m = fc.Chain(*[fc.Dense(6, 6, act=fc.relu) for _ in range(4)], fc.Dense(6, 2))
        for i, p in enumerate(fc.params(m)):
            p.value[...] = np.linspace(-1, 1, p.value.size).reshape(p.value.shape) * (i + 1) / 5
        x = np.linspace(-1, 1, 18).reshape(3, 6)
        step = fc.train_step(m, fc.mse, fc.optim.SGD(0.1))
        if sys.argv[1] == "hit":
    ''') + textwrap.indent(NO_SOURCE_READS, "    ") + textwrap.dedent('''
        y, back = m.pullback(x)
        dx = back(np.ones_like(y))
        loss = step(x, target=np.zeros((3, 2)))
        print(json.dumps({"from_disk": compile_model(m, (x,)).from_disk, "y": y.tolist(),
                          "dx": dx.tolist(), "loss": loss}))
    '''))
    env = dict(os.environ, FLUX_COMPILE_CACHE_DIR=str(tmp_path / "cache"),
               XDG_CONFIG_HOME=str(tmp_path / "config"), PYTHONDONTWRITEBYTECODE="1")

    def run(mode):
        r = subprocess.run([sys.executable, str(tmp_path / "hitprog.py"), mode], capture_output=True,
                           text=True, env=env)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.splitlines()[-1])
    first, hit = run("store"), run("hit")
    assert first["from_disk"] is False and hit["from_disk"] is True
    assert hit["y"] == first["y"] and hit["dx"] == first["dx"] and hit["loss"] == first["loss"]


MODEL_RUN = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, {path!r})
    import numpy as np, flux_compile as fc
    from flux_compile.cache import compile_model
    import stepmod
    x = np.linspace(-1, 1, 12).reshape(4, 3)
    m = stepmod.Net()
    y, back = m.pullback(x)
    dx = back(np.ones_like(y))
    print(json.dumps({{"from_disk": compile_model(m, (x,)).from_disk, "y": y.tolist(), "dx": dx.tolist(),
                       "gW": m.W.grad.tolist(), "source": fc.source(m, "forward")}}))
''')


def test_model_entries_follow_forwards_code_a_trailing_comment_is_a_hit(project):
    env = dict(os.environ, XDG_CONFIG_HOME=str(project.config), PYTHONDONTWRITEBYTECODE="1",
               FLUX_COMPILE_CACHE_DIR=str(project.cache))

    def run():
        r = subprocess.run([sys.executable, "-c", MODEL_RUN.format(path=str(project.root))],
                           capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.splitlines()[-1])

    def by_hand(k=1.0):
        x = np.linspace(-1, 1, 12).reshape(4, 3)
        W = np.linspace(-1, 1, 6).reshape(3, 2)
        b = np.linspace(0.1, 0.2, 2).reshape(1, 2)
        y = np.tanh(x @ W + b) * k
        dz = k * (1 - np.tanh(x @ W + b) ** 2)
        return y, dz @ W.T, x.T @ dz

    def check(out, k=1.0):
        y, dx, gW = by_hand(k)
        np.testing.assert_allclose(out["y"], y, rtol=1e-13)
        np.testing.assert_allclose(out["dx"], dx, rtol=1e-13)
        np.testing.assert_allclose(out["gW"], gW, rtol=1e-13)

    first = run()
    assert first["from_disk"] is False
    check(first)
    assert run()["from_disk"] is True
    project.edit("return np.tanh(x @ self.W + self.b)", "return np.tanh(x @ self.W + self.b)  # squashed")
    out = run()
    assert out["from_disk"] is True         # the same code: the entry generated from it is right
    check(out)
    project.edit("return np.tanh(x @ self.W + self.b)  # squashed", "return np.tanh(x @ self.W + self.b) * 3")
    out = run()
    assert out["from_disk"] is False
    check(out, k=3.0)
    project.edit("return np.tanh(x @ self.W + self.b) * 3", "return np.tanh(x @ self.W + self.b) * 2")
    out = run()                             # same length, another constant
    assert out["from_disk"] is False
    check(out, k=2.0)
    project.edit("    def forward(self, x):", "\n    def forward(self, x):")     # moved a line down
    out = run()
    assert out["from_disk"] is False and "line 16" in out["source"]
    check(out, k=2.0)


def test_a_loss_without_a_name_is_never_stored_and_still_trains(project):
    loss = "stepmod.lamloss"
    first = project.run(loss=loss)
    second = project.run(loss=loss)
    assert first["origin"] == second["origin"] == "built"
    check(first)
    check(second)
    assert not [p for p in project.entries() if "train_step" in p.read_text().split("\n", 3)[2]]


def test_a_changed_int_setting_of_a_sub_model_holder_is_another_step(project):
    """``self.k`` (an int) is baked into the step: another value is another entry, never the
    code made for the first; the sub-model ``Net`` edited is a miss too."""
    scaled = "m = stepmod.Scaled(m, {k})"
    for k, origin in ((2, "built"), (3, "built"), (2, "disk"), (3, "disk")):
        out = project.run(setup=scaled.format(k=k))
        assert out["origin"] == origin, k
        np.testing.assert_allclose(out["losses"][0], _scaled_loss(k), rtol=1e-12)
    project.edit("return np.tanh(x @ self.W + self.b)", "return np.tanh(x @ self.W + self.b) * 1.0")
    out = project.run(setup=scaled.format(k=2))
    assert out["origin"] == "built"
    np.testing.assert_allclose(out["losses"][0], _scaled_loss(2), rtol=1e-12)


def _scaled_loss(k):
    x = np.linspace(-1, 1, 12).reshape(4, 3)
    t = np.linspace(0.5, -0.5, 8).reshape(4, 2)
    W = np.linspace(-1, 1, 6).reshape(3, 2)
    b = np.linspace(0.1, 0.2, 2).reshape(1, 2)
    return float(((np.tanh(x @ W + b) * k - t) ** 2).sum() * 2.0)


@pytest.mark.parametrize("prelude", ["import flux_compile.diskcache as dc; dc.__version__ = '99.0'",
                                     "np.__version__ = '0.0.1'"])
def test_another_library_or_numpy_version_is_a_miss(project, prelude):
    first = project.run()
    out = project.run(prelude=prelude)
    assert out["origin"] == "built"
    assert out["losses"] == first["losses"]


def _inject_into_text(entry, marker):
    text = entry.read_text()
    assert "def step(" in text
    entry.write_text(text.replace("def step(", f"open({str(marker)!r}, 'w').write('ran')\ndef step(", 1))


def _inject_into_code(entry, marker):
    import base64
    import importlib.util
    import marshal
    header, meta_line, source = entry.read_text().split("\n", 2)
    meta = json.loads(meta_line[2:])
    assert meta["code"][0] == importlib.util.MAGIC_NUMBER.hex()
    evil = compile(f"open({str(marker)!r}, 'w').write('ran')\n" + source, "<evil>", "exec")
    meta["code"][1] = base64.b64encode(marshal.dumps(evil)).decode()
    entry.write_text("\n".join([header, "# " + json.dumps(meta, separators=(",", ":")), source]))


def _rebind_update(entry, marker):
    header, meta_line, source = entry.read_text().split("\n", 2)
    meta = json.loads(meta_line[2:])
    meta["names"]["np"] = ["builtin", "builtins", "open", ""]
    entry.write_text("\n".join([header, "# " + json.dumps(meta, separators=(",", ":")), source]))


@pytest.mark.parametrize("tamper", [_inject_into_text, _inject_into_code, _rebind_update])
def test_a_tampered_step_entry_runs_nothing_and_is_replaced(project, tamper):
    marker = project.root / "MARKER"
    first = project.run()
    tamper(project.step_entry(), marker)
    out = project.run()
    assert not marker.exists()
    assert out["origin"] == "built" and out["losses"] == first["losses"]
    assert project.run()["origin"] == "disk"
