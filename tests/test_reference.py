"""The API reference (issue 15, item 7): mkdocstrings renders it from the docstrings, one page
per area; every public name is filed on a page, documented, and shown with a runnable example
(``tests/test_doctests.py`` runs the examples); one rule count, computed.
The built site itself is checked by ``tests/test_docs.py::test_mkdocs_build_strict``."""
import importlib.util
import inspect
import pathlib
import re
import sys

import pytest

import flux_compile as fc

ROOT = pathlib.Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"

# names whose example needs a torchrun process group; docs/scaling.md shows them at work
NO_EXAMPLE = {
    "fc.distributed.init": "joins a torchrun process group",
    "fc.distributed.DistributedError": "raised only when ranks disagree",
    "fc.distributed.DataParallel": "made by fc.train(..., distributed=True) under torchrun",
    "fc.distributed.all_reduce_sum": "needs a process group",
    "fc.distributed.broadcast_from_main": "needs a process group",
}


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = load_tool("mkdocs_hooks")
NAMES = hooks.public_names()


def own_doc(obj):
    """The object's own docstring (a class's not inherited from a base)."""
    return obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__


def label_id(value):
    return value if isinstance(value, str) and not value.startswith("flux_compile") else ""


@pytest.mark.parametrize("area, label, path, obj", NAMES, ids=label_id)
def test_every_public_name_has_a_docstring_with_an_example(area, label, path, obj):
    doc = own_doc(obj)
    assert doc and doc.strip(), f"{label} has no docstring"
    if label not in NO_EXAMPLE:
        assert ">>>" in doc, f"{label}: add a short runnable example (>>>) to its docstring"


@pytest.mark.parametrize("label", sorted(NO_EXAMPLE))
def test_the_names_without_an_example_are_real_and_still_lack_one(label):
    (obj,) = [obj for _, lab, _, obj in NAMES if lab == label]
    assert ">>>" not in own_doc(obj), f"{label} has an example now: drop it from NO_EXAMPLE"


def test_every_name_of_fc_all_is_filed_on_an_area_page():
    filed = {label: area for area, label, _, _ in NAMES}
    for name in fc.__all__:
        obj = getattr(fc, name)
        if name == "__version__" or inspect.ismodule(obj):
            continue
        area = filed[f"fc.{name}"]
        assert area != "unfiled", (f"fc.{name} (defined in {obj.__module__}) is on no reference page: "
                                   f"file its module in MODULE_AREAS of tools/mkdocs_hooks.py")


@pytest.mark.parametrize("module", sorted(hooks.SUBMODULES))
def test_every_public_name_of_the_submodules_is_listed(module):
    mod = getattr(fc, module)
    listed = {label for _, label, _, _ in NAMES}
    public = getattr(mod, "__all__", None) or [n for n, v in vars(mod).items() if not n.startswith("_") and (
        inspect.isfunction(v) or inspect.isclass(v)) and v.__module__ == mod.__name__]
    for name in public:
        if inspect.isfunction(getattr(mod, name)) or inspect.isclass(getattr(mod, name)):
            assert f"fc.{module}.{name}" in listed


@pytest.mark.parametrize("name", ["cast", "gelu", "elu", "leakyrelu", "softplus", "flatten", "glorot_normal",
                                  "dropout", "Dropout", "crossentropy"])
def test_names_the_issue_found_undocumented_have_examples(name):
    assert ">>>" in own_doc(getattr(fc, name))
    assert ">>>" in own_doc(fc.optim.clip_grad_norm)


def test_input_grads_is_documented():
    assert "input_grads=False" in fc.Dense.pullback.__doc__


def test_mkdocstrings_finds_each_name_where_it_is_defined():
    """``fc.params`` and ``fc.train`` are also modules: the block must name the function."""
    paths = {label: path for _, label, path, _ in NAMES}
    assert paths["fc.params"] == "flux_compile.params.params"
    assert paths["fc.train"] == "flux_compile.train.train"
    assert paths["m.pullback"] == "flux_compile.model.Model.pullback"
    for _, label, path, obj in NAMES:
        parts, target = path.split("."), None
        for i in range(len(parts) - 1, 0, -1):           # the longest prefix that is a module
            module = sys.modules.get(".".join(parts[:i]))
            if module is not None:
                target = module
                for part in parts[i:]:
                    target = getattr(target, part)
                break
        assert target is obj, label


def test_each_area_page_holds_its_marker_and_lists_its_names_once():
    for area, (page, _) in hooks.AREAS.items():
        assert f"<!-- api: {area} -->" in (REFERENCE / page).read_text(), page
    text = hooks.area_markdown("functions")
    assert text.count("::: flux_compile.functions.sigmoid\n") == 1
    assert '      heading: "fc.sigmoid"' in text
    assert "`fc.σ` is `fc.sigmoid`." in text
    models = hooks.area_markdown("models")
    assert '::: flux_compile.init.initn\n' in models and "`fc.init.initn` is `fc.initn`." in models
    assert hooks.area_markdown("unfiled") == ""


def test_a_name_of_an_unknown_module_goes_to_the_unfiled_list():
    assert hooks.area_of_module("flux_compile.someday") == "unfiled"
    assert hooks.area_of_module("flux_compile.rules.conv") == "functions"
    assert hooks.area_of_module("flux_compile.rules.registry") == "transforms"
    assert hooks.area_of_module("flux_compile.optimx") == "unfiled"


def test_the_cli_page_has_every_command_s_help():
    text = hooks.cli_markdown()
    for command in ("show", "graph", "shapes", "check"):
        assert f"## `flux-compile {command} --help`" in text
        assert f"usage: flux-compile {command}" in text


def test_the_reference_index_and_the_home_page_link_every_page():
    index = (REFERENCE / "index.md").read_text()
    for page, _ in hooks.AREAS.values():
        assert page == "index.md" or f"]({page})" in index
    home = (ROOT / "docs" / "index.md").read_text()
    nav = re.findall(r"^\s*-\s*(?:[^:\n]+:\s*)?([\w/-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)
    assert "reference/models.md" in nav and "cli.md" in nav
    for page in nav:
        if page != "index.md" and not page.startswith("reference/") or page == "reference/index.md":
            assert f"]({page})" in home, f"docs/index.md does not link {page}"
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert pages == set(nav), "every page of docs/ is in mkdocs.yml's nav"


def test_docstrings_become_markdown():
    ext = load_tool("griffe_docstrings")
    doc = "Apply :func:`freeze` to :class:`~flux_compile.Dense`.\n\n>>> 1 + 1\n2\n\nAfter."
    assert ext.markdown_of(doc) == ("Apply `freeze` to `flux_compile.Dense`.\n\n\n```pycon\n>>> 1 + 1\n2\n```\n\n"
                                    "After.")
    assert ext.markdown_of(">>> x = 1").endswith("```pycon\n>>> x = 1\n```")


def test_the_rule_count_is_the_package_s_rules_only():
    from flux_compile.rules import RULES
    n = hooks.rule_count()
    assert 100 < n <= len(RULES)

    def mine(x):
        return x

    @fc.diffrule(mine)
    def _(dy, y, x):
        return dy
    try:
        assert hooks.rule_count() == n
    finally:
        from flux_compile.rules import _key
        RULES.pop(_key(mine), None)


def test_the_hook_fills_in_the_rule_count_and_the_areas():
    page = hooks.on_page_markdown(f"x {hooks.RULE_COUNT} y\n<!-- api: training -->\n", None, None, None)
    assert page.startswith(f"x {hooks.rule_count()} y\n::: flux_compile.train.train\n")
    assert "<!-- api:" not in page


def test_no_rule_count_is_typed_in_the_docs():
    typed = re.compile(r"\b(?:about |~)?\d+ (?:NumPy )?(?:primitives with|derivative rules)")
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        assert not typed.search(path.read_text()), f"{path.name} types a rule count: use {{{{ rule_count }}}}"
