"""The API reference, generated from docstrings when mkdocs builds the site.

mkdocs.yml names this file under ``hooks:``. ``docs/reference.md`` holds a
marker that is replaced by :func:`reference_markdown`: every public name of
``flux_compile`` (``fc.__all__``), the model methods ``@fc.net`` adds, and the
public names of ``fc.optim`` and ``fc.data``, each with its signature and
docstring (examples as ``pycon`` blocks; ``tests/test_doctests.py`` runs them).
``{{ rule_count }}`` on any page becomes the number of registered derivative
rules, so the count is computed, never typed.
"""
from __future__ import annotations

import inspect
import re

MARKER = "<!-- the API reference is generated here -->"
RULE_COUNT = "{{ rule_count }}"


def rule_count():
    """The derivative rules the package registers (a user's ``fc.diffrule`` not counted)."""
    from flux_compile.rules import RULES
    return sum(1 for rule in RULES.values() if getattr(rule, "__module__", "").startswith("flux_compile"))


def public_names():
    """``[(section, qualified name, object)]`` in the order the reference lists them."""
    import flux_compile as fc
    from flux_compile.model import Model
    out = []
    for name in fc.__all__:
        obj = getattr(fc, name)
        if name == "__version__" or inspect.ismodule(obj):
            continue
        out.append(("flux_compile", f"fc.{name}", obj))
    for name in ("__call__", "pullback", "back", "update", "zero_grad", "reset"):
        out.append(("model methods", f"m.{name}" if name != "__call__" else "m(x)", getattr(Model, name)))
    for module, names in (("optim", fc.optim.__all__ + ["clip_grad_norm"]), ("data", _module_public(fc.data))):
        mod = getattr(fc, module)
        for name in names:
            obj = getattr(mod, name, None)
            if obj is not None and (inspect.isfunction(obj) or inspect.isclass(obj)):
                out.append((f"fc.{module}", f"fc.{module}.{name}", obj))
    return out


def _module_public(mod):
    return [n for n, v in vars(mod).items() if not n.startswith("_") and (inspect.isfunction(v) or inspect.isclass(v))
            and getattr(v, "__module__", None) == mod.__name__]


def _signature(label, obj):
    try:
        sig = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return label
    if label == "m(x)":
        return "m" + sig.replace("(self, ", "(").replace("(self)", "()")
    return label + sig.replace("(self, ", "(").replace("(self)", "()")


def _markdown_of(doc):
    """A docstring as Markdown: ``>>>`` examples fenced as ``pycon``, reST roles as code."""
    doc = re.sub(r":(?:class|func|meth|mod|attr):`~?([^`]+)`", r"`\1`", doc)
    doc = doc.replace("``", "`")
    out, in_example = [], False
    for line in doc.splitlines():
        starts = line.lstrip().startswith(">>>")
        if starts and not in_example:
            out += ["", "```pycon"]
            in_example = True
        elif in_example and not line.strip():
            out += ["```", ""]
            in_example = False
            continue
        out.append(line)
    if in_example:
        out.append("```")
    return "\n".join(out)


def reference_markdown():
    sections, current = [], None
    for section, label, obj in public_names():
        if section != current:
            sections.append(f"## `{section}`\n" if section != "model methods" else
                            "## Model methods\n\nWhat `@fc.net` adds to a class (`m` is an instance).\n")
            current = section
        doc = inspect.getdoc(obj) or ""
        sections.append(f"### `{label}`\n\n```python\n{_signature(label, obj)}\n```\n\n"
                        f"{_markdown_of(doc)}\n")
    head = (f"{rule_count()} derivative rules are registered (`flux_compile.rules.RULES`); "
            f"`fc.diffrule` adds your own.\n")
    return head + "\n" + "\n".join(sections)


def on_page_markdown(markdown, page, config, files):
    """mkdocs hook: fill in the reference and the rule count."""
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, reference_markdown())
    return markdown.replace(RULE_COUNT, str(rule_count()))
