"""The IR: a ``Graph`` of ``Node``s in SSA order that prints itself as a tape.

Node kinds (``node.op``) are the entries of :data:`OPS`, the one op table: each
entry says how the op prints (tape and DOT), how it evaluates (the one interpreter,
:mod:`flux_compile.interp`, dispatches on it), what shape it has when the op alone
decides, and its flags (leaf, re-read, pure, statement). Modules spell op names with
the constants below (``ir.CALL``); they are plain strings, so ``node.op == "call"``
still holds.

=========== ===================================================================
input       an argument of the compiled function (``x``)
const       a compile-time constant (``node.value``)
param       a Param's value, ``self.W.value`` (``node.base`` + ``node.path``)
attr        any other attribute read at run time, ``self.alpha``
seed        the adjoint of an output, an argument of the backward (``dy``)
call        a primitive call ``fn(*args, **kwargs)``; ``node.fn`` is the callable
getattr     ``x.shape``, ``x.ndim``, ``x.dtype`` (``node.attr``)
model       a sub-model call ``self.first(x)`` (``node.target`` is its path)
model_back  the backward of a sub-model call (``node.meta["model"]``)
pack        a tuple built from nodes ``(a, b)``
item        ``t[i]`` of a tuple-valued node (unpacking)
accum       ``target.grad += value`` (backward only; a statement)
state       ``self.h = value`` (a recurrent state write; a statement)
guard       the generated code checks ``bool(arg) == node.value`` (a statement)
loop        a ``for`` loop region: ``node.meta["body"]`` is a Graph run once per trip
            (args: range bounds, carried initial values, captured values; a tuple of
            the carried values after the last trip)
loop_back   the backward of a loop region: the body's backward run in reverse
cond        an ``if``/``else`` region on a run-time test: ``node.meta["branches"]`` are two
            closed Graphs (then, else) with the same outputs, the names the ``if`` assigns
            (args: the test, then the values the branches capture; a tuple of the merged
            values); only the taken branch runs
cond_back   the backward of a cond region: only the taken branch's backward runs
=========== ===================================================================

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
from typing import Callable, Optional

import numpy as np

from .richtext import graph_html


@dataclass(frozen=True)
class Loc:
    """Where a node came from: the user's file, line, column and statement text."""
    filename: str
    lineno: int
    col: int
    text: str
    owner: str = ""          # the class or function whose source this is
    via: tuple = ()          # an inlined sub-model's line: (its expression, the caller's Loc)

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


# -- the op table ---------------------------------------------------------------
# Op names: plain strings, named once here.
INPUT, CONST, PARAM, ATTR, SEED = "input", "const", "param", "attr", "seed"
CALL, GETATTR, MODEL, MODEL_BACK = "call", "getattr", "model", "model_back"
PACK, ITEM, ACCUM, STATE, GUARD = "pack", "item", "accum", "state", "guard"
LOOP, LOOP_BACK = "loop", "loop_back"
COND, COND_BACK = "cond", "cond_back"
REGION_OPS = frozenset((LOOP, LOOP_BACK, COND, COND_BACK))
BACK_EFFECT_OPS = (ACCUM, MODEL_BACK, LOOP_BACK, COND_BACK)   # backward work kept for its effect


@dataclass(frozen=True)
class OpSpec:
    """One IR op: how it prints, evaluates and behaves. The one place that knows it.

    ``text(node, args)`` is the right-hand side of the tape line (``args`` the
    formatted inputs); ``label(node)`` the DOT box text; ``evaluate(node, args,
    kwargs, env)`` its value from its inputs' values (``env`` answers ``input(name)``,
    ``read(base, path)`` and ``call_model(node, args)``), or ``None`` when the op has
    no value outside generated code; ``shape(node)`` the symbolic shape when the op
    alone decides it, else ``None``.
    """
    name: str
    doc: str
    text: Callable
    label: Callable
    evaluate: Optional[Callable] = None
    shape: Optional[Callable] = None
    leaf: bool = False        # no graph inputs: its value comes from outside the graph
    reread: bool = False      # a leaf generated code reads afresh at every use: never saved
    pure: bool = False        # no effect: CSE may merge it, DCE may drop it (calls: see passes)
    statement: bool = False   # generated as a statement of its own


def _loop_text(n, args):
    """``loop(%1, %7 h) for t in range(%1): carry h`` and the body's tape, indented, below
    (the body's inputs: the index, the carried values, then the captured values in order)."""
    nb = n.meta["n_bounds"]
    bounds = ", ".join(repr(a) for a in n.args[:nb])
    carried = ", ".join(n.meta["carried"]) or "nothing"
    body = n.meta["body"].format().splitlines()[1:]
    head = "while <go>" if n.meta.get("kind") == "while" else f"for {n.meta['target']} in range({bounds})"
    return (f"loop({args}) {head}: carry {carried}\n" +
            "\n".join("    " + line for line in body))


def run_loop(n, args, env):
    """The value of a loop region: its body's graph run once per trip (the interpreter)."""
    nb, nc = n.meta["n_bounds"], len(n.meta["carried"])
    body = n.meta["body"]
    is_while = n.meta.get("kind") == "while"
    if is_while and getattr(env, "lenient", True):
        raise RuntimeError("a while loop runs in the generated code, not while compiling")
    carried, captured = list(args[nb:nb + nc]), list(args[nb + nc:])
    lists = [[] for _ in n.meta.get("lists", ())]

    def trips():
        t = 0
        while carried[-1] if is_while else t < len(range(*args[:nb])):
            yield t if is_while else range(*args[:nb])[t]
            t += 1
    for t in trips():
        values = {}
        for node, v in zip(body.inputs, [t] + carried + captured):
            values[node.id] = v
        outs = list(env.run_body(body, values))
        carried[:] = outs[:nc]
        for items, v in zip(lists, outs[nc:]):
            items.append(v)
    return tuple(carried) + tuple(np.stack(items) for items in lists)


def _cond_text(n, args):
    """``cond(%3, %1 x) if %3: merge y`` and both branches' tapes, indented, below."""
    names = ", ".join(n.meta["names"]) or "nothing"
    lines = [f"cond({args}) if {n.args[0]!r}: merge {names}"]
    for label, body in zip(("then", "else"), n.meta["branches"]):
        lines.append(f"    {label}:")
        lines += ["      " + line for line in body.format().splitlines()[1:]]
    return "\n".join(lines)


def run_cond(n, args, env):
    """The value of a cond region: the taken branch's graph run on the captured values."""
    taken = 0 if args[0] else 1
    body = n.meta["branches"][taken]
    captured = args[1:]
    values = {node.id: captured[j] for node, j in zip(body.inputs, n.meta["captures"][taken])}
    return tuple(env.run_body(body, values))


def value_shape(v):
    """The shape of a compile-time constant (a tuple), or ``None`` for a non-array value."""
    if isinstance(v, (int, float, complex, bool, np.generic, np.ndarray)):
        return tuple(np.shape(v))
    return None


def _generic_text(n, args):
    return f"{n.op}({args})"


def _op_label(n):
    return n.op


def _leaf_text(n, args):
    """``param self.W``; a called attribute (a sub-model seen without an instance) says so."""
    return f"{'submodel' if n.meta.get('submodel') else n.op} {path_expr(n.base, n.path)}"


def _leaf_label(n):
    return ("submodel " if n.meta.get("submodel") else "") + path_expr(n.base, n.path)


def _read_param(n, args, kwargs, env):
    return env.read(n.base, n.path).value


def _read_attr(n, args, kwargs, env):
    return env.read(n.base, n.path)


def _getattr_shape(n):
    if n.attr in ("ndim", "size"):
        return ()
    return None


OPS = {spec.name: spec for spec in (
    OpSpec(INPUT, "an argument of the compiled function",
           text=lambda n, a: f"input {n.name}", label=lambda n: f"input {n.name}",
           evaluate=lambda n, a, k, env: env.input(n.name), leaf=True),
    OpSpec(CONST, "a compile-time constant, node.value",
           text=lambda n, a: f"const {n.value!r}", label=lambda n: repr(n.value),
           evaluate=lambda n, a, k, env: n.value, shape=lambda n: value_shape(n.value),
           leaf=True, reread=True, pure=True),
    OpSpec(PARAM, "a Param's value, read at run time",
           text=_leaf_text, label=_leaf_label,
           evaluate=_read_param, leaf=True, reread=True, pure=True),
    OpSpec(ATTR, "any other attribute, read at run time",
           text=_leaf_text, label=_leaf_label,
           evaluate=_read_attr, leaf=True, reread=True, pure=True),
    OpSpec(SEED, "the adjoint of an output: an argument of the backward",
           text=_generic_text, label=_op_label, leaf=True),
    OpSpec(CALL, "a primitive call fn(*args, **kwargs)",
           text=lambda n, a: f"{describe_fn(n.fn)}({a})", label=lambda n: describe_fn(n.fn),
           evaluate=lambda n, a, k, env: n.fn(*a, **k), pure=True),
    OpSpec(GETATTR, "x.shape, x.ndim, x.dtype (node.attr)",
           text=lambda n, a: f"{n.args[0]!r}.{n.attr}", label=lambda n: f".{n.attr}",
           evaluate=lambda n, a, k, env: getattr(a[0], n.attr), shape=_getattr_shape, pure=True),
    OpSpec(MODEL, "a sub-model call self.first(x)",
           text=lambda n, a: f"model {n.target}({a})", label=lambda n: f"{n.target}(…)",
           evaluate=lambda n, a, k, env: env.call_model(n, a), statement=True),
    OpSpec(MODEL_BACK, "the backward of a sub-model call (node.meta['model'])",
           text=_generic_text, label=_op_label, statement=True),
    OpSpec(PACK, "a tuple of nodes (a, b)",
           text=lambda n, a: f"({a}{',' if len(n.args) == 1 else ''})", label=_op_label,
           evaluate=lambda n, a, k, env: tuple(a), pure=True),
    OpSpec(ITEM, "t[i] of a tuple-valued node",
           text=lambda n, a: f"{n.args[0]!r}[{n.index}]", label=lambda n: f"[{n.index}]",
           evaluate=lambda n, a, k, env: a[0][n.index], pure=True),
    OpSpec(ACCUM, "target.grad += value (backward only)",
           text=lambda n, a: f"{n.target}.grad += {a}", label=_op_label, statement=True),
    OpSpec(STATE, "self.h = value, a recurrent state write",
           text=lambda n, a: f"{n.target} <- {a}", label=_op_label,
           evaluate=lambda n, a, k, env: a[0], statement=True),
    OpSpec(GUARD, "generated code checks bool(arg) == node.value",
           text=_generic_text, label=_op_label, statement=True),
    OpSpec(LOOP, "a for-loop region; node.meta['body'] is the body's Graph",
           text=lambda n, a: _loop_text(n, a), label=lambda n: "for …",
           evaluate=lambda n, a, k, env: run_loop(n, a, env), statement=True),
    OpSpec(LOOP_BACK, "the backward of a loop region, run in reverse",
           text=_generic_text, label=_op_label, statement=True),
    OpSpec(COND, "an if/else region; node.meta['branches'] are the two branches' Graphs",
           text=lambda n, a: _cond_text(n, a), label=lambda n: "if …",
           evaluate=lambda n, a, k, env: run_cond(n, a, env), statement=True),
    OpSpec(COND_BACK, "the backward of a cond region: the taken branch's backward",
           text=_generic_text, label=_op_label, statement=True),
)}

LEAF_OPS = frozenset(name for name, spec in OPS.items() if spec.leaf)
STATEMENT_OPS = frozenset(name for name, spec in OPS.items() if spec.statement)
PURE_OPS = frozenset(name for name, spec in OPS.items() if spec.pure)


def op_spec(op):
    """The table entry of ``op`` (a name). An op not in the table (one being added on a
    branch) prints as ``op(args)`` and has no value; ``tests/test_op_table.py`` fails until
    it has an entry."""
    spec = OPS.get(op)
    return spec if spec is not None else OpSpec(op, "not in the op table", _generic_text, _op_label)


def _op_of(x):
    return x.op if isinstance(x, Node) else x


def is_leaf(x):
    """A node (or op name) without graph inputs whose value comes from outside the graph:
    an input, a constant, a Param, an attribute or a seed. Leaves keep their own names."""
    return _op_of(x) in LEAF_OPS


def is_reread(x):
    """A leaf that generated code reads afresh wherever it is used (constant, Param,
    attribute): a backward never saves it from the forward."""
    spec = OPS.get(_op_of(x))
    return spec is not None and spec.reread


def is_statement(x):
    """An op generated as a statement of its own (sub-model calls and effects)."""
    return _op_of(x) in STATEMENT_OPS


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
        if node.op == INPUT:
            self.inputs.append(node)
        return node

    def renumber(self, nodes):
        """Make ``nodes`` (in SSA order) the graph's nodes, ids and inputs given anew."""
        self.nodes, self.inputs = [], []
        for n in nodes:
            self.add(n)

    # -- printing -------------------------------------------------------
    def format_node(self, n, shapes=None):
        kw = ", ".join(f"{k}={v!r}" for k, v in n.kwargs.items())
        args = ", ".join(repr(a) for a in n.args) + (", " + kw if kw and n.args else kw)
        rhs = op_spec(n.op).text(n, args)
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
            if n.op == INPUT:
                continue
            if n.loc is not None and n.loc != last and n.loc.text:
                owner = n.loc.owner if ": " in (n.loc.owner or "") else ""     # an inlined sub-model's
                where = f" (in {owner.rpartition('<locals>.')[2]})" if owner else ""
                lines.append(f"  # line {n.loc.lineno}{where}: {n.loc.text}")
                last = n.loc
            lines.append(self.format_node(n, shapes))
        lines.append("  return " + ", ".join(repr(o) for o in self.outputs))
        return "\n".join(lines)

    def __repr__(self):
        return f"<Graph {self.name}: {len(self.nodes)} nodes>"

    def _repr_html_(self):
        return graph_html(self)

    def to_dot(self):
        """Graphviz DOT text: one box per node, edges from inputs to users."""
        out = [f'digraph "{self.name}" {{', "  rankdir=TB;", '  node [shape=box, fontname="monospace"];']
        for n in self.nodes:
            label = op_spec(n.op).label(n)
            if n.name:
                label = f"{n.name} = {label}"
            label = label.replace("\\", "\\\\").replace('"', '\\"')
            style = ', style=filled, fillcolor="#e8f0fe"' if n.op in (INPUT, PARAM) else ""
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
