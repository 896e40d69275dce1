"""The API reference (issue 15, item 7): every public name documented, the reference
generated from docstrings at build time, one rule count (computed), no CDN."""
import importlib.util
import inspect
import os
import pathlib
import re
import subprocess
import sys

import pytest

import flux_compile as fc

ROOT = pathlib.Path(__file__).resolve().parent.parent


def hooks():
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "tools" / "mkdocs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def own_doc(obj):
    """The object's own docstring (a class's not inherited from a base)."""
    return obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__


@pytest.mark.parametrize("section, label, obj", hooks().public_names(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_public_name_has_a_docstring(section, label, obj):
    doc = own_doc(obj)
    assert doc and doc.strip(), f"{label} has no docstring"


def test_the_reference_lists_every_name_of_fc_all():
    listed = {label for _, label, _ in hooks().public_names()}
    for name in fc.__all__:
        if name != "__version__" and not inspect.ismodule(getattr(fc, name)):
            assert f"fc.{name}" in listed


@pytest.mark.parametrize("obj", [fc.cast, fc.optim.clip_grad_norm, fc.gelu, fc.elu, fc.leakyrelu, fc.softplus,
                                 fc.flatten, fc.glorot_normal, fc.dropout, fc.Dropout, fc.crossentropy],
                         ids=lambda o: o.__name__)
def test_names_the_issue_found_undocumented_have_examples(obj):
    assert ">>>" in own_doc(obj)


def test_input_grads_is_documented():
    assert "input_grads=False" in fc.Dense.pullback.__doc__


def test_the_rule_count_is_the_package_s_rules_only():
    from flux_compile.rules import RULES
    n = hooks().rule_count()
    assert 100 < n <= len(RULES)

    def mine(x):
        return x

    @fc.diffrule(mine)
    def _(dy, y, x):
        return dy
    try:
        assert hooks().rule_count() == n
    finally:
        from flux_compile.rules import _key
        RULES.pop(_key(mine), None)


def test_reference_markdown_has_every_heading_and_the_computed_rule_count():
    h = hooks()
    text = h.reference_markdown()
    assert text.startswith(f"{hooks().rule_count()} derivative rules are registered")
    for _, label, _ in h.public_names():
        assert f"### `{label}`\n" in text
    page = h.on_page_markdown(f"x {h.RULE_COUNT} y\n{h.MARKER}\n", None, None, None)
    assert page.startswith(f"x {hooks().rule_count()} y\n{hooks().rule_count()} derivative rules")


def test_no_rule_count_is_typed_in_the_docs():
    typed = re.compile(r"\b(?:about |~)?\d+ (?:NumPy )?(?:primitives with|derivative rules)")
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        assert not typed.search(path.read_text()), f"{path.name} types a rule count: use {{{{ rule_count }}}}"


def test_built_reference_page_and_no_cdn(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("pygments")
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                        "-d", str(site)], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stdout + r.stderr
    ref = (site / "reference" / "index.html").read_text()
    assert "fc.glorot_normal" in ref and "fc.optim.clip_grad_norm" in ref and "codehilite" in ref
    # counted in a fresh process, as the build does (tests in this one may register rules)
    fresh = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, 'tools'); import mkdocs_hooks; "
                            "print(mkdocs_hooks.rule_count())"], capture_output=True, text=True, cwd=ROOT,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert f"{int(fresh.stdout)} derivative rules are registered" in ref
    for page in site.rglob("*.html"):
        html = page.read_text()
        assert "{{ rule_count }}" not in html
        assert not re.search(r'<(?:script|link)[^>]*(?:src|href)="https?://', html), f"{page} loads from a CDN"
