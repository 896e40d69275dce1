"""A griffe extension (mkdocs.yml loads it for mkdocstrings): the package's docstrings as Markdown.

The docstrings are written for ``help()`` and doctest: ``>>>`` examples and reST roles
(``:class:`Dense```). This fences each example as a ``pycon`` block, so Pygments highlights
it at build time, and turns a role into inline code. The docstrings themselves are unchanged.
"""
from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`~?([^`]+)`")


def markdown_of(doc):
    """A docstring as Markdown: ``>>>`` examples fenced as ``pycon``, reST roles as code."""
    out, in_example = [], False
    for line in ROLE.sub(r"`\1`", doc).splitlines():
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


class DocstringsAsMarkdown(griffe.Extension):
    def on_instance(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = markdown_of(obj.docstring.value)
