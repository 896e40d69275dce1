"""Codegen: IR nodes → Python ``ast`` → ``astor.to_source`` → compiled functions.

Names come from the user's variables (``h``, ``h_1``; adjoints ``dh``) and are
all made by :mod:`flux_compile.naming`, the one naming policy (its docstring
lists the invariants); each user statement gets one comment with its line;
single-use temporaries are inlined into the expression that uses them, so rules
read like the math.
"""
from __future__ import annotations

import ast
import copy
import inspect
import math
import os
import re
import sys

import astor
import numpy as np

from . import emitcond, emitloops, naming
from ._version import __version__
from .errors import Retrace
from .ir import (
    ACCUM, ATTR, CALL, COND, CONST, GETATTR, GUARD, ITEM, LEAF_OPS, MODEL, MODEL_BACK, PACK, PARAM, STATE,
    STATEMENT_OPS, REGION_OPS, Loc, Node, path_expr)
from .sourcecache import compile_source, unique_filename


REGION_EMITTERS = {**emitloops.EMITTERS, **emitcond.EMITTERS}


_number_after_loop = emitloops.number_after_region
from .sourceimports import import_lines

OPERATORS = {
    np.add: ast.Add, np.subtract: ast.Sub, np.multiply: ast.Mult, np.divide: ast.Div,
    np.true_divide: ast.Div, np.power: ast.Pow, np.matmul: ast.MatMult, np.floor_divide: ast.FloorDiv,
    np.mod: ast.Mod,
}
COMPARISONS = {
    np.greater: ast.Gt, np.greater_equal: ast.GtE, np.less: ast.Lt, np.less_equal: ast.LtE,
    np.equal: ast.Eq, np.not_equal: ast.NotEq,
}
UNARY = {np.negative: ast.USub, np.positive: ast.UAdd}
ALWAYS_INLINE = LEAF_OPS
MAX_INLINE_DEPTH = 60       # deepest nesting of single-use expressions written as one expression
MARK = re.compile(r"""^(\s*)(?:'|"|\"\"\")@@LOC (\d+)@@(?:'|"|\"\"\")\s*$""")


def _parse_expr(text):
    return ast.parse(text, mode="eval").body


def _path_ast(base, path):
    return _parse_expr(path_expr(base, path))


class Namespace:
    """Globals of the generated module: ``np``, ``fc`` and any other object, each bound once
    under a module name from ``names`` (a :class:`naming.ModuleNames`)."""

    def __init__(self, names=None):
        self.fc = _package()
        self.names = names if names is not None else naming.ModuleNames()
        self.objects = {"np": np, "fc": self.fc, "Retrace": Retrace}
        self.by_id = {id(obj): name for name, obj in self.objects.items()}

    def name_of(self, obj):
        """How the generated code spells ``obj``: ``np.tanh``, ``fc.relu``, or a module name
        bound to it (a builtin keeps its own name unless a local took it)."""
        key = id(obj)
        if key in self.by_id:
            return self.by_id[key]
        name = self._public_name(obj)
        if name is None or "." not in name:
            name = self.names.module_name(name or _object_hint(obj))
            self.objects[name] = obj
        self.by_id[key] = name
        return name

    def name_ast(self, obj):
        return _parse_expr(self.name_of(obj))

    def _public_name(self, obj):
        name = getattr(obj, "__name__", None)
        if not isinstance(name, str):
            return None
        mod = getattr(obj, "__module__", None) or ""
        if type(obj) is np.ufunc or mod.startswith("numpy"):
            for prefix, space in (("np", np), ("np.linalg", np.linalg), ("np.fft", np.fft)):
                if getattr(space, name, None) is obj:
                    return f"{prefix}.{name}"
        if isinstance(obj, type) and issubclass(obj, np.generic) and getattr(np, name, None) is obj:
            return f"np.{name}"
        if mod.startswith("flux_compile") and not mod.startswith("flux_compile.rules") \
                and getattr(self.fc, name, None) is obj:
            return f"fc.{name}"
        if mod == "builtins" and getattr(__builtins__ if isinstance(__builtins__, dict) else
                                         __builtins__.__dict__, "get", lambda k: None)(name) is obj:
            return name
        import builtins
        if getattr(builtins, name, None) is obj:
            return name
        return None


def _flags_as_keywords(fn, args):
    """``(n, names)``: keep the first ``n`` arguments positional and pass the rest by the
    parameter ``names``, so that a boolean flag reads ``keepdims=True``, never a bare
    ``True``. Only Python functions whose parameters can be named are rewritten."""
    first = next((i for i, a in enumerate(args) if a.op == CONST and isinstance(a.value, bool)), None)
    if first is None or not inspect.isfunction(fn):
        return len(args), []
    params = list(inspect.signature(fn).parameters.values())[:len(args)]
    if len(params) < len(args) or any(p.kind is not p.POSITIONAL_OR_KEYWORD for p in params[first:]):
        return len(args), []
    return first, [p.name for p in params[first:]]


def _package():
    """The ``flux_compile`` package the generated code calls ``fc``, without importing it:
    a submodule is only ever imported after its package, so the package is loaded already
    (importing it here would make the bottom of the pipeline depend on its top)."""
    return sys.modules[__name__.rpartition(".")[0]]


def _object_hint(obj):
    name = getattr(obj, "__name__", None)
    base = name if isinstance(name, str) else type(obj).__name__.lower()
    base = re.sub(r"\W", "_", base).strip("_") or "const"
    return "fn_" + base if base[0].isdigit() else base


class FunctionEmitter:
    """Turns an ordered list of nodes into the body of one generated function.

    ``scope`` (a :class:`naming.Scope`) names every value; ``bases`` maps the base of a
    field path (``self``, or a model argument's name) to the parameter that holds it."""

    PLAN_BUFFERS = True     # elementwise results written into dead temporaries (bufferplan.plan_buffers)

    def __init__(self, ns, names, locs, mode, scope, back_names=None, bases=None):
        self.ns = ns
        self.scope = scope
        self.names = names          # node id -> name (materialized nodes)
        self.locs = locs            # list of Loc, index = marker id
        self.mode = mode            # "infer" | "train" | "backward"
        self.inline = set()
        self.back_names = back_names if back_names is not None else {}
        self.bases = bases or {}
        self.plan_buffers = self.PLAN_BUFFERS
        self.buffers = {}           # node id -> (buffer node, other operand or None)
        self.kept_buffers = None    # name of the module's Buffers (arrays kept across calls), if any
        self.pooled = set()         # ids of the matmuls written into kept arrays
        self.on_accum = None        # fc.train_step: accum node, value ast -> statements
        self.region_vars = {}       # loop node id -> the variables its items are
        self.aliases = {}           # a loop body's input id -> the outside expression it reads
        self.loose = set()          # ids of values that may be Python numbers: np.shape(v), not v.shape

    def path(self, base, path):
        return _path_ast(self.bases.get(base, base), path)

    # -- expressions ---------------------------------------------------------
    def expr(self, n):
        if n.id in self.aliases:
            return copy.deepcopy(self.aliases[n.id])
        if n.id in self.names and n.id not in self.inline:
            return ast.Name(id=self.names[n.id], ctx=ast.Load())
        op = n.op
        if op == CONST:
            return self.const(n.value)
        if op == PARAM:
            return self.path(n.base, n.path + ("value",))
        if op == ATTR:
            return self.path(n.base, n.path)
        if op == GETATTR and n.attr in ("shape", "ndim") and (n.args[0].id in self.loose
                                                              or _number_after_loop(n.args[0])):
            return ast.Call(func=_parse_expr(f"np.{n.attr}"), args=[self.expr(n.args[0])], keywords=[])
        if op == GETATTR:
            return ast.Attribute(value=self.expr(n.args[0]), attr=n.attr, ctx=ast.Load())
        if op == ITEM:
            return ast.Subscript(value=self.expr(n.args[0]), slice=ast.Constant(n.index), ctx=ast.Load())
        if op == PACK:
            return ast.Tuple(elts=[self.expr(a) for a in n.args], ctx=ast.Load())
        if op == CALL:
            return self.call(n)
        if op == MODEL:
            return ast.Call(func=self.path(n.base, n.path), args=[self.expr(a) for a in n.args], keywords=[])
        if op == MODEL_BACK:
            return ast.Call(func=ast.Name(id=self.back_names[n.meta["model"].id], ctx=ast.Load()),
                            args=[self.expr(a) for a in n.args], keywords=[])
        raise AssertionError(f"cannot render {op}")

    def call(self, n):
        from .rules import helpers
        fn = n.fn
        args = n.args
        if not n.kwargs:
            if fn is np.matmul and len(args) == 2 and n.id in self.pooled:
                return ast.Call(func=_parse_expr(f"{self.kept_buffers}.matmul"),
                                args=[ast.Constant(n.id)] + [self.expr(a) for a in args], keywords=[])
            if fn in OPERATORS and len(args) == 2:
                return ast.BinOp(left=self.expr(args[0]), op=OPERATORS[fn](), right=self.expr(args[1]))
            if fn in COMPARISONS and len(args) == 2:
                return ast.Compare(left=self.expr(args[0]), ops=[COMPARISONS[fn]()],
                                   comparators=[self.expr(args[1])])
            if fn in UNARY and len(args) == 1:
                return ast.UnaryOp(op=UNARY[fn](), operand=self.expr(args[0]))
            if fn is getattr(helpers, "getitem", None) and len(args) == 2:
                return ast.Subscript(value=self.expr(args[0]), slice=self.index(args[1]), ctx=ast.Load())
            if fn is np.transpose and len(args) == 1:
                return ast.Attribute(value=self.expr(args[0]), attr="T", ctx=ast.Load())
            if fn is slice:
                return ast.Call(func=self.ns.name_ast(slice),
                                args=[self.expr(a) for a in args], keywords=[])
        if fn is getattr(helpers, "astype", None) and len(args) == 2 and not n.kwargs:
            return ast.Call(func=ast.Attribute(value=self.expr(args[0]), attr="astype", ctx=ast.Load()),
                            args=[self.expr(args[1])], keywords=[])
        func = self.ns.name_ast(fn)
        npos, names = _flags_as_keywords(fn, args)
        return ast.Call(func=func, args=[self.expr(a) for a in args[:npos]],
                        keywords=[ast.keyword(arg=k, value=self.expr(v)) for k, v in zip(names, args[npos:])]
                        + [ast.keyword(arg=k, value=self.expr(v)) for k, v in n.kwargs.items()])

    def index(self, n):
        if n.op == CONST:
            return self.index_const(n.value)
        if n.op == PACK and (n.id not in self.names or n.id in self.inline):
            return ast.Tuple(elts=[self.index(a) for a in n.args], ctx=ast.Load())
        if n.op == CALL and n.fn is slice and (n.id not in self.names or n.id in self.inline):
            parts = [None if (a.op == CONST and a.value is None) else self.expr(a) for a in n.args]
            return ast.Slice(lower=parts[0], upper=parts[1], step=parts[2])
        return self.expr(n)

    def index_const(self, v):
        if isinstance(v, slice):
            conv = lambda x: None if x is None else self.const(x)  # noqa: E731
            return ast.Slice(lower=conv(v.start), upper=conv(v.stop), step=conv(v.step))
        if isinstance(v, tuple):
            return ast.Tuple(elts=[self.index_const(x) for x in v], ctx=ast.Load())
        return self.const(v)

    def const(self, v):
        if v is None or isinstance(v, (bool, str)) or v is Ellipsis:
            return ast.Constant(v)
        if isinstance(v, int):
            return ast.Constant(v) if v >= 0 else ast.UnaryOp(op=ast.USub(), operand=ast.Constant(-v))
        if isinstance(v, float):
            if math.isnan(v):
                return _parse_expr("np.nan")
            if math.isinf(v):
                return _parse_expr("np.inf" if v > 0 else "-np.inf")
            return ast.Constant(v) if v >= 0 or math.copysign(1, v) > 0 else \
                ast.UnaryOp(op=ast.USub(), operand=ast.Constant(-v))
        if isinstance(v, complex):
            return ast.Constant(v)
        if isinstance(v, tuple):
            return ast.Tuple(elts=[self.const(x) for x in v], ctx=ast.Load())
        if isinstance(v, list):
            return ast.List(elts=[self.const(x) for x in v], ctx=ast.Load())
        if isinstance(v, slice):
            return ast.Call(func=self.ns.name_ast(slice),
                            args=[self.const(v.start), self.const(v.stop), self.const(v.step)], keywords=[])
        if isinstance(v, np.dtype):
            return ast.Call(func=_parse_expr("np.dtype"), args=[ast.Constant(v.name)], keywords=[])
        if isinstance(v, np.bool_):
            return self.const(v.item())
        if isinstance(v, np.generic):
            # a NumPy scalar keeps its type (np.float32(0.5), np.float64(0.5)): under NumPy's
            # promotion rules it is not a "weak" Python number, so float32 * it is not float32
            return ast.Call(func=_parse_expr(f"np.{v.dtype.type.__name__}"), args=[self.const(v.item())],
                            keywords=[])
        if isinstance(v, np.ndarray) and v.ndim <= 1 and v.size <= 8:
            return ast.Call(func=_parse_expr("np.array"), args=[self.const(v.tolist())],
                            keywords=[ast.keyword(arg="dtype", value=self.const(v.dtype))])
        return self.ns.name_ast(v)

    # -- statements ------------------------------------------------------------
    def statements(self, nodes, keep):
        """Render ``nodes`` (already ordered); ``keep`` = ids that must be named statements."""
        uses = {}
        for n in nodes:
            for a in n.inputs():
                uses[a.id] = uses.get(a.id, 0) + 1
        consumer_loc = {}
        for n in nodes:
            for a in n.inputs():
                consumer_loc.setdefault(a.id, set()).add(n.loc)
        fed = naming.fed_variables(nodes)
        self.uses, self.kept = uses, keep          # a loop may take over a value used only by it
        self.items_read = {}                        # region node id -> the indices of its items in use
        for n in nodes:
            if n.op == ITEM and n.args[0].op in REGION_OPS:
                self.items_read.setdefault(n.args[0].id, set()).add(n.index)
        region_args = {a.id for n in nodes if n.op in REGION_OPS for a in n.inputs()[n.op == COND:]
                       if a.op != PACK}       # a cond's test is read once: it may be inlined

        depth = {}              # nesting of an inlined expression: capped, so text stays readable
                                # and the recursive emitter stays far from the recursion limit

        def inlined(n):
            ok = n.op not in STATEMENT_OPS and n.id not in keep and uses.get(n.id, 0) == 1 \
                and not n.meta.get("effect") and not (n.name and not n.meta.get("anon")) \
                and n.id not in region_args and n.op not in REGION_OPS \
                and not (consumer_loc.get(n.id) and consumer_loc[n.id] != {n.loc})
            if n.id not in depth:
                d = 1 + max((depth.get(a.id, 0) for a in n.inputs()), default=0)
                depth[n.id] = d if ok and d <= MAX_INLINE_DEPTH else 0
            return ok and depth[n.id] > 0
        if self.plan_buffers:
            from .bufferplan import plan_buffers
            self.buffers = plan_buffers(nodes, keep, {n.id for n in nodes
                                                      if n.op not in ALWAYS_INLINE and inlined(n)})
        self.pooled |= _pooled_matmuls(nodes, inlined) if self.kept_buffers is not None else set()
        body = []
        for n in nodes:
            if n.op in ALWAYS_INLINE:
                continue
            if n.op in REGION_OPS:
                body.extend(REGION_EMITTERS[n.op](self, n))
                continue
            if n.op == ITEM and n.args[0].op in REGION_OPS:
                var = self.region_vars[n.args[0].id][n.index]
                if var is not None:
                    self.names[n.id] = var
                continue
            if inlined(n):
                self.inline.add(n.id)
                continue
            if n.id not in self.names and (uses.get(n.id, 0) > 0 or n.id in keep or n.op == MODEL):
                self.names[n.id] = self.scope.fresh(_hint(n, self.names, fed))
            if n.op == MODEL and self.mode == "train" and n.meta.get("needs_back"):
                self.back_names[n.id] = self.scope.fresh(naming.pullback(_model_hint(n)))
            body.extend(self.statement(n, uses, unused=uses.get(n.id, 0) == 0 and n.id not in keep))
        return body

    def statement(self, n, uses, unused=False):
        out = self.markers(n.loc)
        name = None if unused and n.op != MODEL else self.names.get(n.id)
        if n.op == ACCUM and self.on_accum is not None:
            out.extend(self.on_accum(n, self.expr(n.args[0])))
            return out
        if n.op == ACCUM:
            target = self.path(n.base, n.path + ("grad",))
            target.ctx = ast.Store()
            out.append(ast.AugAssign(target=target, op=ast.Add(), value=self.expr(n.args[0])))
            return out
        if n.op == GUARD:
            cond = self.expr(n.args[0])
            test = ast.UnaryOp(op=ast.Not(), operand=cond) if n.value else cond
            where = f"line {n.loc.lineno}" if n.loc else "a guard"
            out.append(ast.If(test=test, body=[ast.Raise(exc=ast.Call(
                func=self.ns.name_ast(Retrace), args=[ast.Constant(where)], keywords=[]),
                cause=None)], orelse=[]))
            return out
        if n.op == STATE:
            out.append(ast.Assign(targets=[ast.Subscript(value=ast.Name(id="state", ctx=ast.Load()),
                                                         slice=ast.Constant(n.target), ctx=ast.Store())],
                                  value=self.expr(n.args[0])))
            return out
        if n.op == MODEL and self.mode == "train" and n.meta.get("needs_back"):
            back = self.back_names[n.id]
            call = ast.Call(func=ast.Attribute(value=self.path(n.base, n.path), attr="_pullback", ctx=ast.Load()),
                            args=[self.expr(a) for a in n.args], keywords=[])
            out.append(ast.Assign(targets=[ast.Tuple(elts=[ast.Name(id=name, ctx=ast.Store()),
                                                           ast.Name(id=back, ctx=ast.Store())], ctx=ast.Store())],
                                  value=call))
            return out
        value = self.expr_body(n)
        if name is None:
            if n.op == MODEL_BACK:       # its input gradient is not needed here
                value.keywords.append(ast.keyword(arg="input_grads", value=ast.Constant(False)))
            out.append(ast.Expr(value=value))
        else:
            out.append(ast.Assign(targets=[ast.Name(id=name, ctx=ast.Store())], value=value))
        return out

    def expr_body(self, n):
        if n.id in self.buffers:
            return self.into_buffer(n, *self.buffers[n.id])
        saved = n.id in self.names
        if saved:
            name = self.names.pop(n.id)
        try:
            return self.expr(n)
        finally:
            if saved:
                self.names[n.id] = name

    def into_buffer(self, n, buffer, other):
        """``np.multiply(t, u, out=t)``: the ufunc writes into ``buffer``, dead after this use;
        ``out=reuse(t, u)`` where only the run-time dtypes can say whether they agree."""
        from .rules.helpers import reuse
        out = self.expr(buffer) if other is None else ast.Call(
            func=self.ns.name_ast(reuse), args=[self.expr(buffer), self.expr(other)], keywords=[])
        return ast.Call(func=self.ns.name_ast(n.fn), args=[self.expr(a) for a in n.args],
                        keywords=[ast.keyword(arg="out", value=out)])

    def markers(self, loc):
        """``[the line comment marker for loc]``, or ``[]`` when loc is unknown or the same as
        the last one emitted: the first statements of a user line's code."""
        marker = self.marker(loc)
        return [] if marker is None else [marker]

    def marker(self, loc):
        if loc is None or not loc.text:
            return None
        if getattr(self, "_last_loc", None) == loc:
            return None
        self._last_loc = loc
        self.locs.append(loc)
        return ast.Expr(value=ast.Constant(f"@@LOC {len(self.locs) - 1}@@"))


def _hint(n, names=None, fed=None):
    """What to call node ``n``: the user's name, else one derived by :mod:`naming` (an unnamed
    value after the user variable it feeds, ``fed``: node id -> name)."""
    if n.name:
        return n.name
    if n.op == GETATTR and names and n.args[0].id in names:
        return naming.attribute(names[n.args[0].id], n.attr)
    if n.op == MODEL:
        return _model_hint(n)
    if n.op == GETATTR and n.args and n.args[0].name:
        return naming.attribute(n.args[0].name, n.attr)
    if n.op == MODEL_BACK:
        return naming.adjoint(None)
    dim = _shape_item(n)
    if dim is not None:             # x.shape[0], the one size not known at compile time
        of, i = dim
        base = (names or {}).get(of.id) or of.name
        if base:
            return naming.attribute(base, f"shape{i}")
    return naming.temporary((fed or {}).get(n.id))


def _shape_item(n):
    """``(x, i)`` when ``n`` is ``x.shape[i]``, else None."""
    if n.op != ITEM or len(n.args) != 1 or type(n.index) is not int:
        return None
    shape = n.args[0]
    if shape.op != GETATTR or shape.attr != "shape":
        return None
    return shape.args[0], n.index


def _model_hint(n):
    """A sub-model call's output hint from its attribute: ``self.fc2(h)`` -> ``fc2_out``."""
    return naming.model_output(n.path[-1] if n.path else n.base)


def render(defs, locs, header, home=None):
    """Module text from function ASTs; the ``@@LOC n@@`` markers become ``# line N: ...``
    comments. Returns the text and a map from generated line number to the user's Loc."""
    # one statement a line: astor's wrapping can break inside ``self.W.value.shape``
    src = astor.to_source(ast.Module(body=list(defs), type_ignores=[]), pretty_source="".join)
    out, linemap, current = header.rstrip("\n").split("\n"), {}, None    # one entry a line
    for line in src.splitlines():
        m = MARK.match(line)
        if m:
            current = locs[int(m.group(2))]
            out.append(f"{m.group(1)}# {describe_loc(current, home)}")
            continue
        if line.startswith("def "):
            current = None
            if out and out[-1].strip():
                out.append("")
        out.append(line)
        if current is not None:
            linemap[len(out)] = current
    return "\n".join(out) + "\n", linemap


def describe_loc(loc, home=None):
    """``line 9: h = np.tanh(x @ self.W + self.b)`` (long statements shortened); a line of
    an inlined helper says whose it is: ``line 4 (in squash, util.py): return ...``.
    ``home``: the qualified name of the compiled class or function, whose lines need no
    such note."""
    text = loc.text if len(loc.text) <= 100 else loc.text[:97] + "..."
    owner = getattr(loc, "owner", "") or ""
    if home is None or not owner or owner in (home, home + ".forward"):
        return f"line {loc.lineno}: {text}"
    return f"line {loc.lineno} (in {owner.rpartition('<locals>.')[2]}, {basename(loc.filename)}): {text}"


def _pooled_matmuls(nodes, inlined):
    """Matmuls worth a kept array: a result of its own statement, or one a gradient
    accumulation or a function call takes. Inside arithmetic (``x @ W + b``) NumPy already
    adds into the product's fresh array, so the line stays as the user wrote it."""
    consumer = {a.id: n for n in nodes for a in n.inputs()}
    out = set()
    for n in nodes:
        if n.op != CALL or n.fn is not np.matmul or len(n.args) != 2 or n.kwargs:
            continue
        user = consumer.get(n.id)
        if not inlined(n) or user is None or user.op == ACCUM or (
                user.op == CALL and user.fn not in OPERATORS and user.fn not in UNARY
                and user.fn not in COMPARISONS):
            out.add(n.id)
    return out


def build_module(label, funcs, ns):
    """Compile a :class:`FuncSet`; returns (source, namespace, linemap, filename)."""
    header = f"# generated by flux_compile {__version__} for {label}; do not edit\n"
    imports = import_lines(ns.objects, _names_read(funcs.defs))
    if imports:
        header += "".join(line + "\n" for line in imports)
    home = label.rpartition(" of ")[2]      # a transform's label: "jvp of f"; f's own lines need no note
    source, linemap = render(funcs.defs, funcs.locs, header, home=home)
    filename = unique_filename(label)
    namespace = compile_source(source, filename, dict(ns.objects))
    return source, namespace, linemap, filename


def _names_read(defs):
    """Every name the functions read (the module globals among them are what they need).
    ``ast.walk``'s visit, without its generator per node (it is on every compile's path)."""
    out, stack, node_type, name_type = set(), list(defs), ast.AST, ast.Name
    while stack:
        node = stack.pop()
        if type(node) is name_type:
            out.add(node.id)
            continue
        for field in node._fields:
            value = getattr(node, field, None)
            if isinstance(value, list):
                stack.extend(v for v in value if isinstance(v, node_type))
            elif isinstance(value, node_type):
                stack.append(value)
    return out


class FuncSet:
    def __init__(self):
        self.defs = []
        self.locs = []


def make_function(name, params, body, returns):
    body = list(body)
    if returns is not None:
        body.append(ast.Return(value=returns))
    if not body:
        body = [ast.Pass()]
    return ast.FunctionDef(name=name, args=ast.arguments(
        posonlyargs=[], args=[ast.arg(arg=p) for p in params], vararg=None, kwonlyargs=[],
        kw_defaults=[], kwarg=None, defaults=[]), body=body, decorator_list=[], returns=None,
        type_comment=None)


def tuple_or_single(exprs):
    if len(exprs) == 1:
        return exprs[0]
    return ast.Tuple(elts=list(exprs), ctx=ast.Load())


def basename(path):
    return os.path.basename(path) if path and not path.startswith("<") else path
