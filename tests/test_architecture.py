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
          locks sourcecache sourceimports _version guards richtext tokens buffers""",
    1: """shapeinfer rules rules.helpers rules.helpers_shape rules.helpers_linalg rules.helpers_coverage
          rules.elementwise rules.linalg rules.nn
          rules.reductions rules.shape rules.fft rules.conv trace builtins interp concrete
          parsing tracecore tracestmt traceexpr tracecall traceloop tracecond traceinplace dtypeinfer
          rules.jvp_elementwise rules.jvp_linalg rules.jvp_nn rules.jvp_reductions rules.jvp_shape
          rules.jvp_helpers rules.jvp_more loophoist""",
    2: "frontend autodiff forward passes bufferplan codegen assemble emitters torchnumpy statehooks emitloops emitcond",
    3: "compiler compiled",
    4: "cache diskcache diskdigest diskguards diskstep runstate readonly updatestep updatebuffers",
    5: "model api display",
    6: """layers rnn sequences unrolled recurrent optim train data io losses init gradcheck
          distributed datasets transforms derivatives derivplan backends trainstep
          backendcore backendstep""",
    7: "cli __main__ flux_compile",
}
LAYER_OF = {name: layer for layer, names in LAYERS.items() for name in names.split()}

# Known debt: (importer, imported) pairs that break the table today. The list
# only shrinks; the architecture issue is done when it is empty.
KNOWN_VIOLATIONS = set()


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


def test_the_table_has_no_known_debt_left():
    """Issue 10 is done for imports: no exception to the table remains."""
    assert KNOWN_VIOLATIONS == set()


def _spelled_op_names(tree):
    """Lines where an op name is a bare string: ``n.op == "call"``, ``op in ("pack", ...)``,
    ``Node("item", ...)``."""
    from flux_compile.ir import OPS
    def bare(expr):
        elts = expr.elts if isinstance(expr, (ast.Tuple, ast.List, ast.Set)) else [expr]
        return any(isinstance(e, ast.Constant) and e.value in OPS for e in elts)
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            left = node.left
            is_op = (isinstance(left, ast.Attribute) and left.attr == "op") or \
                (isinstance(left, ast.Name) and left.id == "op")
            if is_op and any(bare(c) for c in node.comparators):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Node":
            if node.args and bare(node.args[0]):
                lines.append(node.lineno)
    return lines


def test_ops_are_spelled_with_the_ir_constants():
    """Modules name ops with ``ir.CALL`` and friends (or ask ``ir.is_leaf``...), never as bare
    strings: the op table in ``ir.py`` is the one place that spells them."""
    found = {}
    for name, path in module_files().items():
        if name == "ir":
            continue
        lines = _spelled_op_names(ast.parse(path.read_text()))
        if lines:
            found[name] = lines
    assert not found, f"bare op strings (use the ir constants): {found}"


def test_the_op_spelling_check_sees_each_form():
    tree = ast.parse('if n.op == "call": pass\nif op in ("pack", "item"): pass\nNode("const", value=1)\n'
                     'if n.op == CALL: pass\nif kind == "model": pass\n')
    assert _spelled_op_names(tree) == [1, 2, 3]


def test_the_pipeline_module_only_builds():
    """Function emission (``ast`` assembly, ``compile``/``exec``) lives in codegen, not in the
    module that runs the pipeline."""
    tree = ast.parse((PACKAGE / "compiler.py").read_text())
    imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not imports & {"ast", "astor"}
    assert not calls & {"compile", "exec", "compile_source"}


@pytest.mark.parametrize("stage", ["autodiff", "forward", "passes", "codegen"])
def test_the_stages_after_tracing_do_not_use_model_facing_code(stage):
    """Derivative and tangent rules are inlined by the trace layer (``autodiff.RuleTracer``:
    ``Tracer`` plus the passes' tracing hooks), not by the frontend's model-facing ``Builder``."""
    assert "frontend" not in import_graph()[stage]
