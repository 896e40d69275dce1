"""The package's import graph matches the layer table (DESIGN.md, docs/internals.md).

Every import of a package module counts, at any depth (inside functions too).
A module may import modules of its own layer or lower ones, never higher ones,
and the graph has no cycle. ``LAYERS`` is the table; a new module must be
placed in it, or this test fails and says so.
"""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "flux_compile"

LAYERS = {
    0: """errors params functions ir primitives rules.registry naming pytree
          locks sourcecache _version guards richtext tokens""",
    1: """shapeinfer rules rules.helpers rules.elementwise rules.linalg rules.nn
          rules.reductions rules.shape rules.fft rules.conv trace builtins interp concrete
          parsing tracecore tracestmt traceexpr tracecall traceloop
          rules.jvp_elementwise rules.jvp_linalg rules.jvp_nn rules.jvp_reductions rules.jvp_shape
          rules.jvp_helpers""",
    2: "frontend autodiff forward passes codegen emitters statehooks emitloops",
    3: "compiler compiled",
    4: "cache diskcache diskguards runstate readonly updatestep",
    5: "model api display",
    6: """layers rnn sequences recurrent optim train data io losses init gradcheck
          distributed datasets transforms backends""",
    7: "cli __main__ flux_compile",
}
LAYER_OF = {name: layer for layer, names in LAYERS.items() for name in names.split()}

# Known debt: (importer, imported) pairs that break the table today. The list
# only shrinks; the architecture issue is done when it is empty.
KNOWN_VIOLATIONS = {
    ("train", "flux_compile"),
}


def module_files():
    """Map dotted module names (without the package prefix) to their files."""
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts) or "flux_compile"] = path
    return files


def imported_modules(name, path, known):
    """The package modules that ``name`` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    here = [] if name == "flux_compile" else name.split(".")
    package = here if is_package else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("flux_compile"):
                module = node.module[len("flux_compile"):].lstrip(".")
            else:
                continue
            targets = []
            for alias in node.names:
                child = f"{module}.{alias.name}" if module else alias.name
                targets.append("flux_compile." + (child if child in known else module or ""))
        else:
            continue
        for target in targets:
            if target == "flux_compile" or target.startswith("flux_compile."):
                short = target[len("flux_compile"):].lstrip(".") or "flux_compile"
                while short not in known and "." in short:
                    short = short.rsplit(".", 1)[0]
                if short in known and short != name:
                    found.add(short)
    return found


def import_graph():
    files = module_files()
    return {name: imported_modules(name, path, files) for name, path in files.items()}


def test_every_module_has_a_layer():
    missing = sorted(set(module_files()) - set(LAYER_OF))
    assert not missing, f"place these modules in LAYERS (and docs/internals.md): {missing}"


def test_no_import_goes_up_a_layer():
    graph = import_graph()
    upward = {
        (a, b)
        for a, targets in graph.items()
        for b in targets
        if a in LAYER_OF and b in LAYER_OF and LAYER_OF[b] > LAYER_OF[a]
    }
    new = sorted(upward - KNOWN_VIOLATIONS)
    assert not new, "imports up the layer table: " + ", ".join(
        f"{a} (layer {LAYER_OF[a]}) -> {b} (layer {LAYER_OF[b]})" for a, b in new)
    edges = {(a, b) for a, targets in graph.items() for b in targets}
    fixed = sorted(KNOWN_VIOLATIONS - edges)
    assert not fixed, f"remove these from KNOWN_VIOLATIONS, they are fixed: {fixed}"


def find_cycle(graph):
    """One import cycle as a list of modules, or None."""
    state = {}
    stack = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle():
    graph = import_graph()
    cycle = find_cycle({a: {b for b in t if (a, b) not in KNOWN_VIOLATIONS} for a, t in graph.items()})
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    source = "def f():\n    from .compiler import build\n    import flux_compile.model\n"
    path = tmp_path / "mod.py"
    path.write_text(source)
    assert imported_modules("ir", path, {"compiler", "model", "ir"}) == {"compiler", "model"}


def test_find_cycle_reports_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
