"""The IR: a ``Graph`` of ``Node``s in SSA order that prints itself as a tape.

Node kinds (``node.op``):

========== ====================================================================
input      an argument of the compiled function (``x``)
const      a compile-time constant (``node.value``)
param      a Param's value, ``self.W.value`` (``node.base`` + ``node.path``)
attr       any other attribute read at run time, ``self.alpha``
call       a primitive call ``fn(*args, **kwargs)``; ``node.fn`` is the callable
getattr    ``x.shape``, ``x.ndim``, ``x.dtype`` (``node.attr``)
model      a sub-model call ``self.first(x)`` (``node.target`` is its path)
pack       a tuple built from nodes ``(a, b)``
item       ``t[i]`` of a tuple-valued node (unpacking)
accum      ``target.grad += value`` (backward only; a statement)
state      ``self.h = value`` (a recurrent state write; a statement)
========== ====================================================================

>>> g = Graph("demo")
>>> x = g.add(Node("input", name="x"))
>>> import numpy as np
>>> y = g.add(Node("call", fn=np.tanh, args=(x,), name="y"))
>>> g.outputs = [y]
>>> print(g)
graph demo(x):
  %1 y = np.tanh(%0 x)
  return %1 y
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Loc:
    """Where a node came from: the user's file, line, column and statement text."""
    filename: str
    lineno: int
    col: int
    text: str
    owner: str = ""          # the class or function whose source this is

    def __str__(self):
        return f"{self.filename}:{self.lineno}"


class Node:
    """One value in the graph. ``args`` are Nodes; ``kwargs`` map names to Nodes."""

    __slots__ = ("id", "op", "args", "kwargs", "name", "loc", "fn", "value", "base", "path",
                 "attr", "target", "index", "diff", "arity", "meta")

    def __init__(self, op, args=(), kwargs=None, name=None, loc=None, fn=None, value=None,
                 base=None, path=(), attr=None, target=None, index=None, diff=False, arity=None):
        self.id = -1
        self.op = op
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.name = name          # hint from the user's variable name
        self.loc = loc
        self.fn = fn
        self.value = value
        self.base = base          # 'self' or an input's name, for param/attr/model/accum/state
        self.path = tuple(path)
        self.attr = attr
        self.target = target
        self.index = index
        self.diff = diff          # carries a gradient
        self.arity = arity        # number of items when the value is a tuple
        self.meta = {}

    def inputs(self):
        return list(self.args) + list(self.kwargs.values())

    def __repr__(self):
        return f"%{self.id}" + (f" {self.name}" if self.name else "")


def path_expr(base, path):
    """``self.layers[0].W`` from base ``"self"`` and field path ``("layers", 0, "W")``."""
    s = base
    for p in path:
        s += f"[{p}]" if isinstance(p, int) else f".{p}"
    return s


def describe_fn(fn):
    """Short readable name for a primitive: ``np.tanh``, ``np.linalg.inv``, ``fc.relu``."""
    mod = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__name__", None) or repr(fn)
    if mod.startswith("numpy.linalg") or mod == "numpy.linalg":
        return f"np.linalg.{name}"
    if mod.startswith("numpy") or type(fn).__name__ == "ufunc":
        return f"np.{name}"
    if mod.startswith("flux_compile"):
        return f"fc.{name}" if not mod.startswith("flux_compile.rules") else name
    if mod == "builtins":
        return name
    return name


class Graph:
    """Nodes in SSA order, plus inputs and outputs."""

    def __init__(self, name="graph"):
        self.name = name
        self.nodes: list[Node] = []
        self.inputs: list[Node] = []
        self.outputs: list[Node] = []

    def add(self, node):
        node.id = len(self.nodes)
        self.nodes.append(node)
        if node.op == "input":
            self.inputs.append(node)
        return node

    # -- printing -------------------------------------------------------
    def format_node(self, n, shapes=None):
        def ref(a):
            return repr(a)
        kw = ", ".join(f"{k}={ref(v)}" for k, v in n.kwargs.items())
        args = ", ".join(ref(a) for a in n.args) + (", " + kw if kw and n.args else kw)
        if n.op == "call":
            rhs = f"{describe_fn(n.fn)}({args})"
        elif n.op == "const":
            rhs = f"const {n.value!r}"
        elif n.op in ("param", "attr"):
            rhs = f"{'submodel' if n.meta.get('submodel') else n.op} {path_expr(n.base, n.path)}"
        elif n.op == "getattr":
            rhs = f"{ref(n.args[0])}.{n.attr}"
        elif n.op == "model":
            rhs = f"model {n.target}({args})"
        elif n.op == "pack":
            rhs = f"({args}{',' if len(n.args) == 1 else ''})"
        elif n.op == "item":
            rhs = f"{ref(n.args[0])}[{n.index}]"
        elif n.op == "accum":
            rhs = f"{n.target}.grad += {args}"
        elif n.op == "state":
            rhs = f"{n.target} <- {args}"
        else:
            rhs = f"{n.op}({args})"
        line = f"  {n!r} = {rhs}"
        if shapes is not None and n.id in shapes:
            line = f"{line:<52} # {shapes[n.id]}"
        return line

    def __str__(self):
        return self.format()

    def format(self, shapes=None):
        ins = ", ".join((n.name or repr(n)) + (f": {shapes[n.id]}" if shapes and n.id in shapes else "")
                        for n in self.inputs)
        lines = [f"graph {self.name}({ins}):"]
        last = None
        for n in self.nodes:
            if n.op == "input":
                continue
            if n.loc is not None and n.loc != last and n.loc.text:
                lines.append(f"  # line {n.loc.lineno}: {n.loc.text}")
                last = n.loc
            lines.append(self.format_node(n, shapes))
        lines.append("  return " + ", ".join(repr(o) for o in self.outputs))
        return "\n".join(lines)

    def __repr__(self):
        return f"<Graph {self.name}: {len(self.nodes)} nodes>"

    def _repr_html_(self):
        from .display import graph_html
        return graph_html(self)

    def to_dot(self):
        """Graphviz DOT text: one box per node, edges from inputs to users."""
        out = [f'digraph "{self.name}" {{', "  rankdir=TB;", '  node [shape=box, fontname="monospace"];']
        for n in self.nodes:
            if n.op == "call":
                label = describe_fn(n.fn)
            elif n.op == "input":
                label = f"input {n.name}"
            elif n.op in ("param", "attr"):
                label = ("submodel " if n.meta.get("submodel") else "") + path_expr(n.base, n.path)
            elif n.op == "const":
                label = repr(n.value)
            elif n.op == "model":
                label = f"{n.target}(…)"
            elif n.op == "getattr":
                label = f".{n.attr}"
            elif n.op == "item":
                label = f"[{n.index}]"
            else:
                label = n.op
            if n.name:
                label = f"{n.name} = {label}"
            label = label.replace("\\", "\\\\").replace('"', '\\"')
            style = ', style=filled, fillcolor="#e8f0fe"' if n.op in ("input", "param") else ""
            if n.meta.get("submodel"):
                style = ', shape=component'
            out.append(f'  n{n.id} [label="{label}"{style}];')
            for a in n.inputs():
                out.append(f"  n{a.id} -> n{n.id};")
        for i, o in enumerate(self.outputs):
            out.append(f'  out{i} [label="output {i}", shape=oval];')
            out.append(f"  n{o.id} -> out{i};")
        out.append("}")
        return "\n".join(out)
