"""The pieces of the fast disk-cache hit: state names from bytecode agree with the source
scan, code digests tell every edit apart (but comments) and do not depend on the hash seed,
the library fingerprint follows every file, stored module code is refused from another
Python."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

from flux_compile import diskcache, statehooks
from flux_compile.parsing import code_digest

FORWARDS = {
    "plain": "def forward(self, x):\n    return x * 2\n",
    "assign": "def forward(self, x):\n    self.h = x\n    return x\n",
    "augassign": "def forward(self, x):\n    self.h += x\n    return self.h\n",
    "tuple": "def forward(self, x):\n    self.a, self.b = x, x\n    return x\n",
    "bare annotation": "def forward(self, x):\n    self.h: float\n    return x\n",
    "annotated": "def forward(self, x):\n    self.h: float = x\n    return x\n",
    "nested def": "def forward(self, x):\n    def f(y):\n        self.c = y\n    return x\n",
    "other object": "def forward(self, x):\n    other = x\n    other.attr = 1\n    return x\n",
    "reads only": "def forward(self, x):\n    y = self.W\n    return y.T @ x\n",
    "comprehension": "def forward(self, x):\n    return [self.W for _ in range(2)]\n",
    "expression statement": "def forward(self, x):\n    x\n    return x\n",
    "item of an attribute": "def forward(self, x):\n    self.buf[0] = x\n    return x\n",
    "slice of an attribute": "def forward(self, x):\n    self.buf[1:2] = x\n    return x\n",
    "item augassign": "def forward(self, x):\n    self.buf[0] += x\n    return x\n",
    "attribute in an index": "def forward(self, x):\n    y = [0]\n    y[self.i] = x\n    return x\n",
    "bare annotated item": "def forward(self, x):\n    self.buf[0]: int\n    return x\n",
    "bare annotated computed item": "def forward(self, x, i):\n    self.buf[i + 1]: int\n    return x\n",
    "bare annotated nested attribute": "def forward(self, x):\n    self.a.b: int\n    return x\n",
    "starred target": "def forward(self, x):\n    *self.rest, y = x\n    return y\n",
    "lambda body": "def forward(self, x):\n    f = lambda: setattr(self, 'h', x)\n    return x\n",
    "loop and conditional": "def forward(self, x):\n    for layer in self.layers:\n        x = layer(x) if layer else x\n    return x\n",
    "class in forward": "def forward(self, x):\n    class C:\n        h: int = 1\n    return x\n",
}


@pytest.mark.parametrize("name", sorted(FORWARDS))
def test_state_names_from_bytecode_agree_with_the_source_scan(tmp_path, name, monkeypatch):
    path = tmp_path / f"fwd_{name.replace(' ', '_')}.py"
    path.write_text(FORWARDS[name])
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fn = mod.forward
    fast = statehooks._scan_state_names(fn)
    monkeypatch.setattr(statehooks, "_assigns_no_attribute", lambda code: False)
    assert fast == statehooks._scan_state_names(fn)        # the source scan, always


def test_a_forward_without_attribute_stores_needs_no_source(monkeypatch):
    def forward(self, x):
        return x @ self.W + self.b
    monkeypatch.setattr(statehooks, "get_source", lambda fn: (_ for _ in ()).throw(AssertionError("read")))
    assert statehooks._scan_state_names(forward) == []


def _compiled(text, name="f", filename="m.py"):
    ns = {}
    exec(compile(textwrap.dedent(text), filename, "exec"), ns)
    return ns[name].__code__


def test_code_digest_tells_edits_apart_but_not_comments():
    base = _compiled("def f(x):\n    return x * 2.0\n")
    assert code_digest(base) == code_digest(_compiled("def f(x):\n    return x * 2.0  # twice\n"))
    for other in ("def f(x):\n    return x * 2.5\n", "def f(x):\n    return x + 2.0\n",
                  "def f(y):\n    return y * 2.0\n", "\ndef f(x):\n    return x * 2.0\n",
                  "def f(x):\n    return x *  2.0\n", "def f(x):\n    return x * -0.0\n"):
        assert code_digest(_compiled(other)) != code_digest(base), other
    assert code_digest(_compiled("def f(x):\n    return x * 2.0\n", filename="n.py")) != code_digest(base)
    zero, neg = (code_digest(_compiled(f"def f(x):\n    return x * {z}\n")) for z in ("0.0", "-0.0"))
    assert zero != neg
    nested = "def f(x):\n    def g(y):\n        return y * {k}\n    return g(x)\n"
    assert code_digest(_compiled(nested.format(k=1))) != code_digest(_compiled(nested.format(k=2)))


def test_code_digest_does_not_depend_on_the_hash_seed(tmp_path):
    prog = textwrap.dedent('''
        from flux_compile.parsing import code_digest
        def f(x):
            if x in {"a", "b", "c", 1.5, (1, "z")}:
                return {k: k for k in ("p", "q")}
            return x
        print(code_digest(f.__code__))
    ''')
    (tmp_path / "seedprog.py").write_text(prog)
    outs = {subprocess.run([sys.executable, str(tmp_path / "seedprog.py")], capture_output=True, text=True,
                           check=True, env=dict(os.environ, PYTHONHASHSEED=str(seed))).stdout
            for seed in (0, 1, 2, 3)}
    assert len(outs) == 1


def test_the_library_fingerprint_follows_size_and_time_of_every_file(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("A = 1\n")
    (pkg / "sub" / "b.py").write_text("B = 1\n")
    monkeypatch.setattr(diskcache, "_PACKAGE_DIR", str(pkg))

    def fingerprint():
        diskcache._fingerprint.clear()
        return diskcache._library_fingerprint()
    seen = {fingerprint()}
    (pkg / "sub" / "b.py").write_text("B = 2\n")            # same size
    os.utime(pkg / "sub" / "b.py", ns=(1, 10 ** 18))
    seen.add(fingerprint())
    (pkg / "a.py").write_text("A = 10\n")                  # another size
    os.utime(pkg / "a.py", ns=(1, 10 ** 18))
    seen.add(fingerprint())
    (pkg / "sub" / "c.py").write_text("")                  # a new file
    seen.add(fingerprint())
    assert len(seen) == 4
    diskcache._fingerprint.clear()


def test_stored_code_is_refused_from_another_python_or_when_malformed():
    code = compile("x = 1\n", "<t>", "exec")
    import base64
    import marshal
    good = [importlib.util.MAGIC_NUMBER.hex(), base64.b64encode(marshal.dumps(code)).decode()]
    assert diskcache.stored_code({"code": good}).co_consts == code.co_consts
    for bad in (None, [], ["00000000", good[1]], [good[0], "!!"], [good[0], base64.b64encode(b"\x00").decode()],
                [good[0], base64.b64encode(marshal.dumps((1, 2))).decode()]):
        assert diskcache.stored_code({"code": bad}) is None, bad
    assert diskcache.stored_code({}) is None


def test_only_library_files_untouched_since_import_skip_the_edit_check(tmp_path, monkeypatch):
    """A file of the package last modified before it began importing is the code that runs;
    any other file, or a library file modified since, is compiled and compared (edits found)."""
    from flux_compile import parsing
    lib = tmp_path / "lib"
    lib.mkdir()
    path = lib / "mod.py"
    path.write_text("def f(x):\n    return x * 2\n")
    monkeypatch.setattr(parsing, "_PACKAGE_DIR", str(lib))
    monkeypatch.setattr(parsing, "IMPORTED_NS", 10 ** 18 + 10 ** 10)
    os.utime(path, ns=(10 ** 18, 10 ** 18))                             # before the import
    assert parsing._unchanged_since_import(str(path))
    os.utime(path, ns=(10 ** 18 + 10 ** 10, 10 ** 18 + 10 ** 10 - 10 ** 9))   # within the margin
    assert not parsing._unchanged_since_import(str(path))
    os.utime(path, ns=(2 * 10 ** 18, 2 * 10 ** 18))                      # after it
    assert not parsing._unchanged_since_import(str(path))
    outside = tmp_path / "user.py"
    outside.write_text("x = 1\n")
    os.utime(outside, ns=(10 ** 18, 10 ** 18))
    assert not parsing._unchanged_since_import(str(outside))
    assert not parsing._unchanged_since_import(str(lib) + "x/mod.py")   # a sibling directory's name


def test_library_sources_are_trusted_only_when_older_than_the_import():
    import flux_compile
    from flux_compile import parsing
    from flux_compile._version import IMPORTED_NS
    layers = os.path.join(os.path.dirname(flux_compile.__file__), "layers.py")
    want = os.stat(layers).st_mtime_ns < IMPORTED_NS - parsing._MTIME_MARGIN_NS
    assert parsing._unchanged_since_import(layers) is want


def test_the_code_kept_for_an_entry_is_that_of_its_own_text():
    from flux_compile.sourcecache import code_of, compile_source, unique_filename
    name = unique_filename("kept code")
    compile_source("def f():\n    return 1\n", name, {})
    assert code_of(name, "def f():\n    return 1\n") is not None
    assert code_of(name, "def f():\n    return 2\n") is None
    assert code_of(unique_filename("never compiled"), "") is None


def test_stored_code_runs_under_the_new_filename_with_its_text_in_linecache():
    import linecache
    import traceback
    from flux_compile.sourcecache import code_of, compile_source
    text = "def f(x):\n    return 1 / x\n"
    compile_source(text, "<fc test a>", {})
    ns = compile_source(text, "<fc test b>", {}, code=code_of("<fc test a>", text))
    assert ns["f"].__code__.co_filename == "<fc test b>"
    try:
        ns["f"](0)
    except ZeroDivisionError as e:
        frame = traceback.extract_tb(e.__traceback__)[-1]
        assert (frame.filename, frame.lineno, frame.line) == ("<fc test b>", 2, "return 1 / x")
    assert linecache.getline("<fc test b>", 2).strip() == "return 1 / x"


def test_the_entry_name_changes_with_every_kind_of_registration(monkeypatch):
    """The user-rule walk is kept between registrations; each registration is seen."""
    import numpy as np
    from flux_compile import rules
    from flux_compile.rules import registry

    class Probe:
        pass
    monkeypatch.setattr(registry, "RULES", dict(registry.RULES))
    monkeypatch.setattr(rules, "RULES", registry.RULES)
    monkeypatch.setattr(registry, "NONDIFF", set(registry.NONDIFF))
    monkeypatch.setattr(rules, "NONDIFF", registry.NONDIFF)
    monkeypatch.setattr(registry, "COMPLEX_OUTPUT", set(registry.COMPLEX_OUTPUT))
    monkeypatch.setattr(rules, "COMPLEX_OUTPUT", registry.COMPLEX_OUTPUT)
    monkeypatch.setattr(registry, "GENERATION", registry.GENERATION)

    def key():
        return diskcache.entry_key(Probe, ("k",))
    seen = [key()]
    assert key() == seen[0]                         # kept: the same name again

    def fn_a(x):
        return x
    registry.RULES[fn_a] = _rule_a
    registry.GENERATION[0] += 1
    seen.append(key())
    def fn_b(x):
        return x
    registry.NONDIFF.add(fn_b)
    registry.GENERATION[0] += 1
    seen.append(key())
    assert np.sqrt not in registry.COMPLEX_OUTPUT
    registry.COMPLEX_OUTPUT.add(np.sqrt)
    registry.GENERATION[0] += 1
    seen.append(key())
    assert len(set(seen)) == 4


def _rule_a(dy, y, x):
    return dy


def test_a_rules_signature_is_kept_only_while_its_code_and_defaults_stay():
    from flux_compile import rules

    def rule(dy, y, x, *, axis=None):
        return dy
    assert rules.rule_signature(rule) == (["x"], {"axis": None})
    got = rules.rule_signature(rule)
    got[0].append("mutated")
    got[1]["axis"] = "mutated"
    assert rules.rule_signature(rule) == (["x"], {"axis": None})     # callers get copies
    rule.__kwdefaults__ = {"axis": 1}
    assert rules.rule_signature(rule) == (["x"], {"axis": 1})

    def other(dy, y, a, b, *rest):
        return dy
    rule.__code__ = other.__code__
    rule.__kwdefaults__ = None
    assert rules.rule_signature(rule) == (["a", "b", "*rest"], {})


def test_names_read_equal_ast_walks_on_every_module_of_the_package():
    import ast
    import pathlib
    from flux_compile.codegen import _names_read
    root = pathlib.Path(diskcache.__file__).parent
    for path in sorted(root.rglob("*.py")):
        defs = ast.parse(path.read_text()).body
        want = {n.id for d in defs for n in ast.walk(d) if isinstance(n, ast.Name)}
        assert _names_read(defs) == want, path


def test_source_segments_equal_ast_get_source_segment():
    import ast
    import flux_compile as fc
    from flux_compile.parsing import get_source
    for fn in (fc.LSTM.forward, fc.GRU.forward, fc.BatchNorm.forward, fc.Chain.forward, fc.softmax,
               fc.logsumexp, fc.gelu):
        src = get_source(fn)
        for node in ast.walk(src.tree):
            if hasattr(node, "lineno"):
                assert src.segment(node) == ast.get_source_segment(src.text, node)
        assert src.loc(src.tree.body[0]) is src.loc(src.tree.body[0])       # kept
