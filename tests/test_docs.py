"""Every ```python block in docs/ runs, page by page, and ``mkdocs build --strict`` passes.

The blocks of one page run in order in one namespace (later blocks use earlier
names). Each block is written to a real ``.py`` file first and executed under
that filename, so ``inspect.getsource`` and therefore ``@fc.net`` work for
classes and functions defined in the docs. A block is skipped when its fence
says ```python no-run or the line before it is ``<!-- no-run -->``; output is
shown in ```text blocks.
"""
import contextlib
import glob
import importlib.util
import io
import os
import re
import subprocess
import sys
import types

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
DOCS = os.path.join(ROOT, "docs")
PAGES = sorted(glob.glob(os.path.join(DOCS, "*.md")))

FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)


def code_blocks(text):
    """``[(line, info, body, runnable)]`` for every fenced block of a Markdown page."""
    out = []
    for m in FENCE.finditer(text):
        info = m.group("info").strip()
        line = text.count("\n", 0, m.start()) + 1
        before = text[:m.start()].rstrip().rsplit("\n", 1)[-1].strip()
        runnable = info == "python" and before != "<!-- no-run -->"
        out.append((line, info, m.group("body"), runnable))
    return out


def shown_output(text):
    """Output as compared: trailing spaces and blank lines at either end ignored."""
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).strip("\n")


BLOCK_FILE = re.compile(r"\S*?[\\/]\w+_line\d+\.py")


def output_matches(expected, printed):
    """``printed`` (with the docs' block files shown as ``/path/to/model.py``) equals
    ``expected``, where a line ``...`` stands for any lines and ``...`` inside a line
    for any text (doctest's ELLIPSIS)."""
    printed = BLOCK_FILE.sub("/path/to/model.py", printed)
    parts = []
    for line in expected.splitlines():
        if line.strip() == "...":
            parts.append(r"(?:.*\n)*?")
        else:
            parts.append(".*".join(map(re.escape, line.split("..."))) + r"\n")
    return re.fullmatch("".join(parts), printed + "\n") is not None


def run_page(path, workdir, mismatches=None):
    """Run the page's python blocks in one fresh module namespace; returns how many ran.

    A block that prints, followed at once by a ```text block, must print that text
    (see :func:`output_matches`); each difference is appended to ``mismatches`` as ``(line, expected, printed)``
    (or raised when ``mismatches`` is None)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    name = f"_docs_{re.sub(r'[^0-9a-zA-Z_]', '_', stem)}"
    module = types.ModuleType(name)
    sys.modules[name] = module
    ran = 0
    try:
        with open(path, encoding="utf-8") as f:
            blocks = code_blocks(f.read())
        for i, (line, _, body, runnable) in enumerate(blocks):
            if not runnable:
                continue
            block_file = os.path.join(workdir, f"{stem}_line{line}.py")
            with open(block_file, "w", encoding="utf-8") as f:
                f.write(body)
            printed = io.StringIO()
            try:
                with contextlib.redirect_stdout(printed):
                    exec(compile(body, block_file, "exec"), module.__dict__)
            except Exception as e:
                raise AssertionError(f"docs/{stem}.md, the block at line {line} failed: "
                                     f"{type(e).__name__}: {e}") from e
            ran += 1
            following = blocks[i + 1] if i + 1 < len(blocks) else None
            if printed.getvalue() and following is not None and following[1] == "text":
                expected, got = shown_output(following[2]), shown_output(printed.getvalue())
                if not output_matches(expected, got):
                    if mismatches is None:
                        raise AssertionError(f"docs/{stem}.md, the output at line {following[0]} differs from "
                                             f"what the block at line {line} prints:\n{got}")
                    mismatches.append((following[0], expected, got))
    finally:
        sys.modules.pop(name, None)
    return ran


def test_there_are_pages():
    names = {os.path.basename(p) for p in PAGES}
    assert {"index.md", "cli.md", "internals.md", "comparison.md"} <= names


@pytest.mark.parametrize("path", PAGES, ids=os.path.basename)
def test_page_code_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)          # blocks may write files (fc.save)
    run_page(path, str(tmp_path))


def test_the_harness_compiles_classes_defined_in_a_block(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "Text.\n\n```python\nimport numpy as np\nimport flux_compile as fc\n\n"
        "@fc.net\nclass Scale:\n    def __init__(self):\n        self.w = np.ones(3)\n"
        "    def forward(self, x):\n        return x * self.w\n```\n\n"
        "<!-- no-run -->\n```python\nraise SystemExit('skipped')\n```\n\n"
        "```python no-run\nraise SystemExit('skipped')\n```\n\n"
        "```python\nout = Scale()(np.arange(3.0))\nassert 'def backward' in fc.source(Scale(), 'backward')\n"
        "assert fc.gradcheck(Scale(), np.arange(3.0)).ok\n```\n")
    assert run_page(str(page), str(tmp_path)) == 2


def test_mkdocs_build_strict(tmp_path):
    """The site builds with ``--strict`` whenever mkdocs is installed (``pip install -e ".[docs]"``);
    the API reference lists every public name on its area's page, examples highlighted at
    build time, the rule count computed, and no page loads anything from another host."""
    pytest.importorskip("mkdocs")
    for needed in ("mkdocstrings", "mkdocstrings_handlers.python", "pygments"):
        if importlib.util.find_spec(needed.split(".")[0]) is None or importlib.util.find_spec(needed) is None:
            pytest.fail(f"mkdocs is installed without {needed}: pip install -e '.[docs]'")
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                        "-f", os.path.join(ROOT, "mkdocs.yml"), "-d", str(site)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=os.path.abspath(ROOT)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (site / "index.html").exists()
    check_reference_pages(site)
    for page in site.rglob("*.html"):
        html = page.read_text()
        assert "{{ rule_count }}" not in html and "<!-- api:" not in html, page
        assert not re.search(r'<(?:script|link)[^>]*(?:src|href)="(?:https?:)?//', html), f"{page} loads from a CDN"


def check_reference_pages(site):
    """Each public name is a heading on its area's page (id: where it is defined), shown as users
    write it; examples are Pygments-highlighted ``pycon``; the rule count is the package's."""
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", os.path.join(ROOT, "tools", "mkdocs_hooks.py"))
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    html = {area: (site / "reference" / page.replace(".md", "") / "index.html").read_text()
            if page != "index.md" else (site / "reference" / "index.html").read_text()
            for area, (page, _) in hooks.AREAS.items()}
    seen = set()
    for area, label, path, obj in hooks.public_names():
        if id(obj) in seen:
            assert f"<code>{label}</code>" in html[area], label
            continue
        seen.add(id(obj))
        assert f'id="{path}"' in html[area], f"{label} ({path}) is missing from the {area} page"
        assert re.search(rf'id="{re.escape(path)}".*?>\s*(?:<[^>]+>\s*)*{re.escape(label)}', html[area], re.S), label
    assert '<span class="gp">&gt;&gt;&gt; </span>' in html["models"]       # a highlighted prompt
    assert "usage: flux-compile check" in html["cli"]
    fresh = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, 'tools'); import mkdocs_hooks; "
                            "print(mkdocs_hooks.rule_count())"], capture_output=True, text=True, cwd=ROOT,
                           env=dict(os.environ, PYTHONPATH=os.path.abspath(ROOT)), timeout=120)
    assert f"{int(fresh.stdout)} derivative rules are registered" in html["unfiled"]


def test_readme_code_runs_and_prints_what_it_shows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_page(os.path.join(ROOT, "README.md"), str(tmp_path)) >= 1


def test_the_harness_compares_printed_output(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```python\nprint('a')\nprint('b')\n```\n\n```text\na\nc\n```\n")
    mismatches = []
    run_page(str(page), str(tmp_path), mismatches)
    assert mismatches == [(6, "a\nc", "a\nb")]
    with pytest.raises(AssertionError, match="the output at line 6 differs"):
        run_page(str(page), str(tmp_path))


@pytest.mark.parametrize("expected, printed, ok", [
    ("a\n...\nd", "a\nb\nc\nd", True),
    ("a\n...\nd", "a\nd", True),
    ("x = ...e-10 yes", "x = 1.33e-10 yes", True),
    ("x = ...e-10 yes", "x = 1.33e-09 yes", False),
    ("/path/to/model.py:8: bad", "/tmp/abc/debugging_line40.py:8: bad", True),
    ("a", "a\nb", False),
])
def test_output_matching_rules(expected, printed, ok):
    assert output_matches(expected, printed) is ok
