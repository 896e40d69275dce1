"""How models, generated source and graphs show themselves (terminal and Jupyter).

The pieces lower layers need (:class:`SourceText`, ``highlight_html``, ``graph_html``)
live in :mod:`flux_compile.richtext`; they are importable from here as well.
"""
from __future__ import annotations

import html

import numpy as np

from .params import Param, children, is_model
from .richtext import SourceText, graph_html, highlight_html  # noqa: F401 - shown from here too


def _short(value):
    if isinstance(value, Param):
        shape = "×".join(map(str, value.shape)) or "scalar"
        flag = "" if value.trainable else ", frozen"
        return f"Param({shape}, {value.dtype}{flag})"
    if isinstance(value, np.ndarray):
        return f"array({'×'.join(map(str, value.shape))}, {value.dtype})"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_short(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    if callable(value) and not is_model(value):
        return getattr(value, "__qualname__", None) or repr(value)
    return repr(value)


def model_repr(m):
    """``Affine(W=Param(3×2, float64), b=Param(1×2, float64))``; sub-models nest."""
    parts = [f"{k}={_short(v)}" for k, v in children(m)]
    text = f"{type(m).__name__}({', '.join(parts)})"
    if len(text) <= 100:
        return text
    inner = ",\n".join("  " + p.replace("\n", "\n  ") for p in parts)
    return f"{type(m).__name__}(\n{inner})"


def params_table_html(m):
    """An HTML table of a model's Params: path, shape, dtype, trainable."""
    from .params import named_params, path_str
    rows = []
    total = 0
    for path, p in named_params(m):
        total += p.value.size
        shape = "×".join(map(str, p.shape)) or "scalar"
        rows.append(f"<tr><td><code>{html.escape(path_str(path))}</code></td><td>{shape}</td>"
                    f"<td>{p.dtype}</td><td>{'yes' if p.trainable else 'frozen'}</td></tr>")
    if not rows:
        return "<i>no parameters</i>", 0
    head = "<tr><th>parameter</th><th>shape</th><th>dtype</th><th>trainable</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>", total


def model_html(m):
    """A model in Jupyter: its repr, a parameter table and the generated source, folded."""
    from .api import source
    table, total = params_table_html(m)
    parts = [f"<div><b>{html.escape(type(m).__name__)}</b> &nbsp;<small>{total:,} parameter values</small>",
             f"<pre>{html.escape(model_repr(m))}</pre>", table]
    for which in ("forward", "backward"):
        try:
            code = source(m, which)
        except Exception as e:  # noqa: BLE001 - display must never fail
            code = f"# could not compile: {e}"
        parts.append(f"<details><summary>generated {which}</summary>{highlight_html(code)}</details>")
    return "".join(parts) + "</div>"
