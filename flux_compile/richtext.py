"""Text that shows itself in Jupyter: highlighted source and graphs (layer 0).

The pieces the IR (``Graph._repr_html_``), the public functions (``fc.source``
returns a :class:`SourceText`) and :mod:`flux_compile.display` share; they know
nothing above them. Optional extras: pygments for highlighting, graphviz for SVG.
"""
from __future__ import annotations

import html


def highlight_html(code):
    """Code as HTML, highlighted by pygments when it is installed."""
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer
        return highlight(code, PythonLexer(), HtmlFormatter(noclasses=True, nowrap=False))
    except ImportError:
        return f"<pre>{html.escape(code)}</pre>"


def graph_html(g):
    """A graph as SVG (graphviz installed) or as its escaped tape listing."""
    try:
        import graphviz
        svg = graphviz.Source(g.to_dot()).pipe(format="svg").decode()
        return svg
    except Exception:  # noqa: BLE001 - no graphviz package or binary: text
        return f"<pre>{html.escape(str(g))}</pre>"


class SourceText(str):
    """A ``str`` of generated code that Jupyter shows highlighted."""

    def _repr_html_(self):
        return highlight_html(str(self))

    def _repr_pretty_(self, p, cycle):
        p.text(str(self))
