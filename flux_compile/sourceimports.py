"""The import lines of generated source, so that the source, and each function of it
shown alone (``fc.source(m, "backward")``), runs as shown.

``import_lines(objects, used)`` makes a generated module's lines (``import numpy as np``,
``from flux_compile.rules.helpers import sum_grad``); ``section_imports(header, text)``
narrows them to what one function reads.
"""
from __future__ import annotations

import ast
import sys

import numpy as np

BOUND_NOTE = "# bound by flux_compile when compiled: "
PUBLIC_FACES = ("flux_compile.rules.helpers",)    # modules that re-export their parts' names


def import_lines(objects, used):
    """The lines that bind the module names ``used`` reads, so the shown source runs as
    shown: ``import numpy as np``, ``from flux_compile.rules.helpers import sum_grad``.
    A value with no import path (an array, a user's closure) is named in a comment."""
    lines, froms, bound = [], {}, []
    for name in sorted(used & set(objects)):
        obj = objects[name]
        if obj is np:
            lines.append("import numpy as np" if name == "np" else f"import numpy as {name}")
        elif obj is sys.modules.get("flux_compile"):
            lines.append(f"import flux_compile as {name}")
        elif library_path(obj) is not None:
            module, qualname = library_path(obj)
            froms.setdefault(module, []).append(qualname if qualname == name else f"{qualname} as {name}")
        elif _is_builtin(obj, name):
            continue
        else:
            bound.append(f"{name} ({type(obj).__name__})")
    lines += [f"from {module} import {', '.join(names)}" for module, names in sorted(froms.items())]
    if bound:
        lines.append(BOUND_NOTE + ", ".join(bound))
    return lines


def library_path(obj):
    """``(module, name)`` of a flux_compile function or class importable by that name."""
    module, name = getattr(obj, "__module__", None), getattr(obj, "__name__", None)
    if not isinstance(module, str) or not isinstance(name, str) or not module.startswith("flux_compile"):
        return None
    for face in PUBLIC_FACES:           # a helper's one public face, not the part it lives in
        if getattr(sys.modules.get(face), name, None) is obj:
            return face, name
    return (module, name) if getattr(sys.modules.get(module), name, None) is obj else None



def _is_builtin(obj, name):
    import builtins
    return getattr(builtins, name, None) is obj


def section_imports(header, text):
    """The lines of a generated module's ``header`` that bind a name the function ``text``
    reads, narrowed to those names, so one function shown alone runs as shown."""
    try:
        used = {n.id for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Name)}
    except SyntaxError:
        return []
    out, assigned = [], []
    for line in header:                      # buffers = Buffers(): the module's kept arrays
        target, eq, value = line.strip().partition(" = ")
        if eq and target in used and value.endswith("()") and value[:-2].isidentifier():
            assigned.append(line.strip())
            used.add(value[:-2])
    for line in header:
        s = line.strip()
        if s.startswith("import "):          # import numpy as np / import flux_compile as fc
            bound = s.split(" as ")[-1] if " as " in s else s.split()[1].split(".")[0]
            if bound in used:
                out.append(s)
        elif s.startswith("from ") and " import " in s:
            module, names = s[len("from "):].split(" import ", 1)
            keep = [n for n in names.split(", ") if n.split(" as ")[-1] in used]
            if keep:
                out.append(f"from {module} import {', '.join(keep)}")
        elif s.startswith(BOUND_NOTE):
            keep = [b for b in s[len(BOUND_NOTE):].split(", ") if b.split(" ")[0] in used]
            if keep:
                out.append(BOUND_NOTE + ", ".join(keep))
    return [line + "\n" for line in out + assigned]

