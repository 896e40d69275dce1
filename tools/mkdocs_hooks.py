"""mkdocs hooks: which reference page lists each public name, and the rule count.

mkdocs.yml names this file under ``hooks:``. mkdocstrings renders the API
reference from the docstrings; this file only decides *what* each page of
``docs/reference/`` lists. A page holds a marker ``<!-- api: AREA -->`` that
becomes one ``::: flux_compile.name`` block per public name of that area: every
name of ``fc.__all__`` (filed by the module that defines it), the model methods
``@fc.net`` adds, and the public names of ``fc.optim``, ``fc.data``,
``fc.distributed`` and ``fc.init``. A name of a module no area claims is listed
on the reference's index page, and ``tests/test_reference.py`` names the module
to file. ``{{ rule_count }}`` on any page becomes the number of registered
derivative rules, so the count is computed, never typed.
"""
from __future__ import annotations

import inspect
import re

RULE_COUNT = "{{ rule_count }}"
MARKER = re.compile(r"<!-- api: (?P<area>[a-z-]+) -->")

# area -> (page, title); the pages live in docs/reference/
AREAS = {
    "models": ("models.md", "Models and layers"),
    "functions": ("functions.md", "Functions and losses"),
    "transforms": ("transforms.md", "Transforms, derivative rules, inspection and errors"),
    "training": ("training.md", "Training and optimisers"),
    "data-io": ("data-io.md", "Data, saving and loading"),
    "distributed": ("distributed.md", "Distributed training"),
    "backends": ("backends.md", "Backends: PyTorch and JAX"),
    "cli": ("cli.md", "Command line"),
    "unfiled": ("index.md", "Not yet filed"),
}

# the module that defines a name of fc.__all__ -> its area (the longest prefix wins)
MODULE_AREAS = {
    "flux_compile.model": "models", "flux_compile.params": "models", "flux_compile.layers": "models",
    "flux_compile.rnn": "models", "flux_compile.recurrent": "models", "flux_compile.runstate": "models",
    "flux_compile.sequences": "models", "flux_compile.init": "models",
    "flux_compile.functions": "functions", "flux_compile.losses": "functions", "flux_compile.rules.conv": "functions",
    "flux_compile.api": "transforms", "flux_compile.transforms": "transforms", "flux_compile.rules": "transforms",
    "flux_compile.derivatives": "transforms", "flux_compile.gradcheck": "transforms", "flux_compile.errors": "transforms", "flux_compile": "transforms",
    "flux_compile.train": "training", "flux_compile.optim": "training", "flux_compile.trainstep": "training",
    "flux_compile.updatestep": "training", "flux_compile.updatebuffers": "training", "flux_compile.backends": "backends", "flux_compile.backendstep": "backends",
    "flux_compile.backendcore": "backends",
    "flux_compile.data": "data-io", "flux_compile.io": "data-io",
    "flux_compile.distributed": "distributed",
    "flux_compile.cli": "cli",
}

# submodules documented name by name on an area's page, after fc.__all__'s names
SUBMODULES = {"optim": "training", "data": "data-io", "distributed": "distributed", "init": "models"}
MODEL_METHODS = ("__call__", "pullback", "back", "update", "zero_grad", "reset")


def rule_count():
    """The derivative rules the package registers (a user's ``fc.diffrule`` not counted)."""
    from flux_compile.rules import RULES
    return sum(1 for rule in RULES.values() if getattr(rule, "__module__", "").startswith("flux_compile"))


def area_of_module(module):
    """The area that files names defined in ``module`` (``"unfiled"`` when none does)."""
    best = max((prefix for prefix in MODULE_AREAS if module == prefix or
                (prefix != "flux_compile" and module.startswith(prefix + "."))), key=len, default=None)
    return MODULE_AREAS[best] if best else "unfiled"


def public_names():
    """``[(area, label, path, object)]``: every documented name, in the order the pages list them.

    ``label`` is how a user writes it (``fc.Dense``, ``m.pullback``, ``fc.optim.Adam``);
    ``path`` is where mkdocstrings finds it.
    """
    import flux_compile as fc
    from flux_compile.model import Model
    out = []
    for name in fc.__all__:
        obj = getattr(fc, name)
        if name == "__version__" or inspect.ismodule(obj):
            continue
        module = getattr(obj, "__module__", None) or "flux_compile"
        out.append((area_of_module(module), f"fc.{name}", _path(module, name, obj), obj))
    for name in MODEL_METHODS:
        out.append(("models", "m()" if name == "__call__" else f"m.{name}", f"flux_compile.model.Model.{name}",
                    getattr(Model, name)))
    for module, area in SUBMODULES.items():
        mod = getattr(fc, module)
        for name in _module_public(mod):
            obj = getattr(mod, name)
            out.append((area, f"fc.{module}.{name}", _path(obj.__module__, name, obj), obj))
    return out


def _path(module, name, obj):
    """Where griffe finds ``obj``: its defining module (``flux_compile.params`` is also a module)."""
    qualname = getattr(obj, "__qualname__", name)
    return f"{module}.{qualname}" if module != "flux_compile" and "<" not in qualname else f"flux_compile.{name}"


def _module_public(mod):
    """``mod.__all__``, else the functions and classes ``mod`` defines, plus ``clip_grad_norm`` of optim."""
    names = list(getattr(mod, "__all__", None) or
                 [n for n, v in vars(mod).items() if not n.startswith("_") and (inspect.isfunction(v) or
                  inspect.isclass(v)) and getattr(v, "__module__", None) == mod.__name__])
    if mod.__name__ == "flux_compile.optim" and "clip_grad_norm" not in names:
        names.append("clip_grad_norm")
    return [n for n in names if inspect.isfunction(getattr(mod, n, None)) or inspect.isclass(getattr(mod, n, None))]


def area_markdown(area):
    """The mkdocstrings blocks for one area: ``::: path`` under the user's spelling of the name."""
    blocks, seen = [], {}
    for where, label, path, obj in public_names():
        if where != area:
            continue
        if id(obj) in seen:                       # fc.σ is fc.sigmoid: say so, once
            blocks.append(f"`{label}` is `{seen[id(obj)]}`.\n")
            continue
        seen[id(obj)] = label
        blocks.append(f"::: {path}\n    options:\n      heading: \"{label}\"\n      toc_label: \"{label}\"\n")
    return "\n".join(blocks) if blocks else ""


def cli_markdown():
    """The ``--help`` of ``flux-compile`` and of each command, as argparse prints it (80 columns)."""
    import argparse
    import os
    from flux_compile.cli import build_parser
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "80"
    try:
        parser = build_parser()
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        parts = [("flux-compile --help", parser.format_help())]
        parts += [(f"flux-compile {name} --help", sub.format_help()) for name, sub in commands.items()]
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return "\n".join(f"## `{title}`\n\n```text\n{text.rstrip()}\n```\n" for title, text in parts)


def on_config(config):
    """mkdocs hook: document the package of this checkout (as mkdocstrings' ``paths: [.]`` does)."""
    import os
    import sys
    root = os.path.dirname(os.path.abspath(config.config_file_path))
    if root not in sys.path:
        sys.path.insert(0, root)
    return config


def on_page_markdown(markdown, page, config, files):
    """mkdocs hook: fill in each ``<!-- api: AREA -->`` and the rule count."""
    markdown = MARKER.sub(lambda m: area_markdown(m.group("area")) +
                          (cli_markdown() if m.group("area") == "cli" else ""), markdown)
    return markdown.replace(RULE_COUNT, str(rule_count()))
