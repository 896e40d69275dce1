"""The evaluator's expressions: names, attributes, indexing, operators, comparisons and
comprehensions, each an ``eval_<ast node>`` method."""
from __future__ import annotations

import ast
import builtins
import operator
import types

import numpy as np

from . import guards, shapeinfer
from .ir import CALL, GETATTR, ITEM, PACK, Node
from .tracecore import (ARRAY_ATTRS, BINOPS, BITWISE, CMPOPS, DICT_METHODS, FORBIDDEN_EXPR_HINTS,
                        METHODS, PYCMP, PYOPS, _MISSING, BoundMethod, Seq, Static, SymDict, _as_list,
                        _static, shape_of)


class Expressions:
    """One method per supported expression (``eval_Name``, ``eval_BinOp``, ...)."""

    def eval(self, e):
        m = getattr(self, "eval_" + type(e).__name__, None)
        if m is None:
            hint = FORBIDDEN_EXPR_HINTS.get(type(e), "this expression is not in the supported subset")
            self.error(f"{type(e).__name__} expressions are not supported inside a compiled function", e,
                       hint=hint)
        return m(e)

    def eval_Constant(self, e):
        return Static(e.value)

    def eval_Name(self, e):
        fr = self.frame
        while fr is not None:
            if e.id in fr.env:
                return fr.env[e.id]
            fr = fr.outer
        fr = self.frame
        if e.id in fr.glob:
            value = fr.glob[e.id]
            if fr.module_globals is not None and fr.module_globals.get(e.id, _MISSING) is value:
                self.ctx.depend(fr.module_globals, e.id, value)
            return self.outside(value, fr.name_path(e.id), e.id)
        if hasattr(builtins, e.id):
            return Static(getattr(builtins, e.id))
        self.error(f"name {e.id!r} is not defined", e)

    def eval_Tuple(self, e):
        items = [self.eval(x) for x in e.elts]
        if any(isinstance(x, ast.Starred) for x in e.elts):
            self.error("starred expressions are not supported", e)
        if all(isinstance(v, Static) for v in items):
            outside = any(v.src is not None or v.parts is not None for v in items)
            return Static(tuple(v.value for v in items), parts=items if outside else None)
        return Seq(items)

    eval_List = eval_Tuple

    def eval_Attribute(self, e):
        return self.attribute(self.eval(e.value), e.attr, e)

    def attribute(self, base, name, e):
        """``base.name`` for an evaluated ``base`` (``e`` locates errors)."""
        if isinstance(base, Static):
            if name in ARRAY_ATTRS and isinstance(base.value, (int, float, complex, bool, np.generic)):
                return _static(getattr(np.asarray(base.value), name))
            try:
                value = getattr(base.value, name)
            except AttributeError:
                value = _MISSING
            if value is not _MISSING:
                if isinstance(base.value, types.ModuleType):
                    self.ctx.depend(vars(base.value), name, value)
                if guards.stable(base.value) or base.src is None:
                    return Static(value)
                return self.outside(value, base.src + (("attr", name),), name)
            self.error(f"{type(base.value).__name__!s} has no attribute {name!r}", e)
        if isinstance(base, Node):
            if name in ARRAY_ATTRS:
                return self.array_attr(base, name)
            if name == "T":
                return self.call_primitive(np.transpose, [base], {}, e)
            if name in METHODS or name in ("astype",):
                return BoundMethod(base, name)
            if name in ("real",):
                return self.call_primitive(np.real, [base], {}, e)
            self.error(f"array attribute or method {name!r} is not supported", e,
                       hint=f"use the NumPy function form, e.g. np.{name}(x, ...), if NumPy has one")
        if isinstance(base, SymDict):
            if name in DICT_METHODS:
                return BoundMethod(base, name)
            self.error(f"a dict has no attribute {name!r} here", e,
                       hint="use d[key], d.items(), d.keys(), d.values() or d.get(key)")
        if isinstance(base, Seq) and base.kind is not None and name in getattr(base.kind, "_fields", ()):
            return base.items[base.kind._fields.index(name)]        # a named tuple's field
        if isinstance(base, Seq):
            self.error(f"a tuple has no attribute {name!r}", e)
        self.error(f"cannot take attribute {name!r} here", e)

    def array_attr(self, base, name):
        shp = shape_of(base)
        if shp is not None:
            shp = tuple(shapeinfer.find(d) for d in shp)
            if name == "ndim":
                return Static(len(shp))
            if name == "shape":
                if all(isinstance(d, int) for d in shp):
                    return Static(tuple(shp))
                node = self.ctx.add(Node(GETATTR, (base,), attr="shape"))
                items = []
                for i, d in enumerate(shp):
                    items.append(Static(d) if isinstance(d, int) else
                                 self.ctx.add(Node(ITEM, (node,), index=i)))
                seq = Seq(items)
                seq.sym = shp
                return seq
            if name == "size" and all(isinstance(d, int) for d in shp):
                return Static(int(np.prod(shp)))
        return self.ctx.add(Node(GETATTR, (base,), attr=name))

    def eval_BinOp(self, e):
        return self.binop(e.op, self.eval(e.left), self.eval(e.right), e)

    def binop(self, op, a, b, e):
        if isinstance(a, Static) and isinstance(b, Static):
            try:
                return _static(PYOPS[type(op)](a.value, b.value))
            except Exception as err:
                self.error(f"constant expression failed: {err}", e)
        if isinstance(a, Seq) or isinstance(b, Seq):
            if isinstance(op, ast.Add) and isinstance(a, (Seq, Static)) and isinstance(b, (Seq, Static)):
                return Seq(self.seq_items(a) + self.seq_items(b))
            self.error("arithmetic on tuples is not supported", e)
        fn = BINOPS.get(type(op)) or BITWISE.get(type(op))
        if fn is None:
            self.error(f"operator {type(op).__name__} is not supported on arrays", e)
        return self.call_primitive(fn, [a, b], {}, e)

    def eval_UnaryOp(self, e):
        v = self.eval(e.operand)
        if isinstance(v, Static):
            try:
                return _static({ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_,
                                ast.Invert: operator.invert}[type(e.op)](v.value))
            except Exception as err:
                self.error(f"constant expression failed: {err}", e)
        if isinstance(e.op, ast.USub):
            return self.call_primitive(np.negative, [v], {}, e)
        if isinstance(e.op, ast.UAdd):
            return v
        if isinstance(e.op, ast.Invert):
            return self.call_primitive(np.logical_not, [v], {}, e)
        self.error("'not' on an array cannot be compiled", e, hint="use np.logical_not(x)")

    def eval_BoolOp(self, e):
        is_and = isinstance(e.op, ast.And)
        result = None
        for x in e.values:
            v = self.eval(x)
            if not isinstance(v, Static) and self.ctx.concrete is None:
                self.error("'and'/'or' on arrays cannot be compiled", x,
                           hint="use np.logical_and / np.logical_or, or & and |")
            result = v
            if self.decide(v, x, "'and'/'or'") != is_and:
                return v
        return result

    def eval_Compare(self, e):
        left = self.eval(e.left)
        result = None
        for op, comp in zip(e.ops, e.comparators):
            right = self.eval(comp)
            if isinstance(op, (ast.Is, ast.IsNot)):
                if isinstance(left, Static) and isinstance(right, Static):
                    r = Static(PYCMP[type(op)](left.value, right.value))
                else:
                    same = left is right
                    r = Static(same if isinstance(op, ast.Is) else not same)
            elif isinstance(op, (ast.In, ast.NotIn)) and isinstance(left, Static) \
                    and isinstance(right, SymDict):
                r = Static((left.value in right.items) == isinstance(op, ast.In))
            elif isinstance(left, Static) and isinstance(right, Static):
                try:
                    r = _static(PYCMP[type(op)](left.value, right.value))
                except Exception as err:
                    self.error(f"constant comparison failed: {err}", e)
            elif isinstance(op, (ast.Eq, ast.NotEq)) and _is_sequence(left) and _is_sequence(right):
                r = self.sequence_equality(left, right, e, negate=isinstance(op, ast.NotEq))
            elif type(op) in CMPOPS:
                r = self.call_primitive(CMPOPS[type(op)], [left, right], {}, e)
            else:
                self.error("'in' on arrays cannot be compiled", e)
            if len(e.ops) > 1:
                if not isinstance(r, Static):
                    self.error("chained comparisons of arrays are not supported", e,
                               hint="write (a < b) & (b < c)")
                if not r.value:
                    return r
            result, left = r, right
        return result

    def sequence_equality(self, left, right, e, negate=False):
        """``a == b`` for tuples or lists (``x.shape == (3, 4)``): Python's one bool, not NumPy's
        elementwise comparison; a symbolic dimension gives a scalar bool value (guarded where decided)."""
        if _kind(left) != _kind(right):             # a tuple never equals a list
            return Static(negate)
        if _run_time_shape(left) or _run_time_shape(right):
            same = self.call_primitive(np.array_equal, [left, right], {}, e)
            return self.call_primitive(np.logical_not, [same], {}, e) if negate else same
        a, b = self.seq_items(left), self.seq_items(right)
        parts = []
        if len(a) == len(b):
            for x, y in zip(a, b):
                if _is_sequence(x) and _is_sequence(y):
                    parts.append(self.sequence_equality(x, y, e))
                elif isinstance(x, Static) and isinstance(y, Static):
                    parts.append(Static(bool(np.all(x.value == y.value))))
                else:
                    parts.append(self.call_primitive(np.equal, [x, y], {}, e))
        if len(a) != len(b) or any(isinstance(p, Static) and not p.value for p in parts):
            return Static(negate)
        symbolic = [p for p in parts if not isinstance(p, Static)]
        if not symbolic:
            return Static(not negate)
        result = symbolic[0]
        for p in symbolic[1:]:
            result = self.call_primitive(np.logical_and, [result, p], {}, e)
        return self.call_primitive(np.logical_not, [result], {}, e) if negate else result

    def eval_IfExp(self, e):
        taken = self.decide(self.eval(e.test), e.test, "'a if c else b'")
        return self.eval(e.body if taken else e.orelse)

    def eval_ListComp(self, e):
        """``[f(x) for x in xs if c]``: unrolled at compile time (xs known, or guarded by length)."""
        items = []
        outer = self.frame
        self.frame = outer.nested(outer.source, {})
        try:
            self._comprehend(e.generators, 0, lambda: items.append(self.eval(e.elt)))
        finally:
            self.frame = outer
        return Seq(items)

    eval_GeneratorExp = eval_ListComp

    def _comprehend(self, gens, k, emit):
        if k == len(gens):
            emit()
            return
        g = gens[k]
        if g.is_async:
            self.error("async comprehensions are not supported", g)
        for item in self.iter_values(self.eval(g.iter), g.iter):
            self.assign(g.target, item, g)
            if all(self.decide(self.eval(c), c, "a comprehension's 'if'") for c in g.ifs):
                self._comprehend(gens, k + 1, emit)

    def eval_Starred(self, e):
        self.error("starred expressions are only supported as call arguments", e)


def _is_sequence(v):
    """A tuple or list value: a Seq, a constant tuple / list, or ``x.shape`` read at run time."""
    return isinstance(v, Seq) or isinstance(v, Static) and isinstance(v.value, (tuple, list)) \
        or _run_time_shape(v)


def _run_time_shape(v):
    return isinstance(v, Node) and v.op == GETATTR and v.attr == "shape"


def _kind(v):
    """``list`` or ``tuple``: which sequence type a value is (equality needs the same one)."""
    if isinstance(v, Static):
        return list if isinstance(v.value, list) else tuple
    if isinstance(v, Seq):
        return list if v.kind is list else tuple
    return tuple


def _python_scalar(v):
    return isinstance(v, Static) and type(v.value) in (int, float, bool)


class Subscripts:
    """Subscripts and slices: ``x[i]``, ``x[:, idx]``, ``np.r_[...]`` (a mixin of the Tracer)."""

    def eval_Subscript(self, e):
        base = self.eval(e.value)
        index = self.eval_index(e.slice)
        if isinstance(base, Static) and isinstance(index, Static):
            try:
                got = base.value[index.value]
            except Exception as err:
                self.error(f"indexing failed at compile time: {err}", e)
            if base.src is not None and guards.value_token(index.value) is not None:
                return self.outside(got, base.src + (("item", index.value),),
                                    index.value if isinstance(index.value, str) else None, scalar=True)
            return _static(got)
        if isinstance(base, SymDict):
            if not isinstance(index, Static):
                self.error("a dict can only be indexed by a key known at compile time", e)
            if index.value not in base.items:
                self.error(f"KeyError: {index.value!r} (the keys are {list(base.items)!r})", e)
            return base.items[index.value]
        if isinstance(base, Seq):
            if not isinstance(index, Static):
                self.error("a tuple can only be indexed by a constant", e)
            try:
                got = base.items[index.value]
            except (IndexError, TypeError) as err:
                self.error(f"bad tuple index: {err}", e)
            return Seq(got, base.kind if base.kind in (tuple, list) else None) if isinstance(got, list) else got
        if isinstance(base, Node):
            if base.arity is not None and isinstance(index, Static) and isinstance(index.value, int):
                if base.op == PACK:
                    return base.args[index.value]
                return self.ctx.add(Node(ITEM, (base,), index=index.value % base.arity, diff=base.diff))
            if base.arity is not None and isinstance(index, Static) and isinstance(index.value, slice):
                return Seq(self.node_items(base)[index.value])
            from .rules.helpers import getitem
            return self.call_primitive(getitem, [base, index], {}, e)
        if isinstance(base, Static) and (base.value is np.r_ or base.value is np.c_):
            return self.concatenate_trick(base.value, index, e)
        if isinstance(base, Static) and isinstance(index, Node):
            self.error("indexing a constant with a run-time value is not supported", e)
        self.error("cannot index this value", e)

    def concatenate_trick(self, trick, index, e):
        """``np.r_[a, b, 2.0]`` is ``np.concatenate`` of the items made at least 1-D;
        ``np.c_[a, b]`` is ``np.column_stack`` (arrays, scalars; no slices or directives)."""
        items = index.items if isinstance(index, Seq) else \
            list(index.args) if isinstance(index, Node) and index.op == PACK else [index]
        if any(isinstance(i, Static) and isinstance(i.value, (slice, str)) for i in items):
            self.error(f"np.{'r_' if trick is np.r_ else 'c_'}[...] with slices or string directives "
                       "is not supported in compiled code", e,
                       hint="build the pieces with np.arange / np.linspace and call np.concatenate")
        if trick is np.c_:
            return self.call_primitive(np.column_stack, [Seq(items, list)], {}, e)
        arrays = [i for i in items if isinstance(i, Node)]
        parts = [self.weak_scalar_part(i, arrays[0], e) if arrays and _python_scalar(i)
                 else self.call_primitive(np.atleast_1d, [i], {}, e) for i in items]
        return self.call_primitive(np.concatenate, [Seq(parts, list)], {}, e)

    def weak_scalar_part(self, item, array, e):
        """A Python number in ``np.r_[a, 0.5]`` as NumPy makes it: one element of the result
        type of ``a`` and the number (float32 stays float32), ``np.zeros(1, a.dtype) + 0.5``."""
        zeros = self.call_primitive(np.zeros, [Static(1)], {"dtype": self.array_attr(array, "dtype")}, e)
        return self.call_primitive(np.add, [zeros, item], {}, e)

    def eval_index(self, s):
        if isinstance(s, ast.Slice):
            parts = [self.eval(p) if p is not None else Static(None) for p in (s.lower, s.upper, s.step)]
            if all(isinstance(p, Static) for p in parts):
                return Static(slice(*(p.value for p in parts)))
            return self.ctx.add(Node(CALL, [self.as_node(p) for p in parts], fn=slice))
        if isinstance(s, ast.Tuple):
            parts = [self.eval_index(p) for p in s.elts]
            if all(isinstance(p, Static) for p in parts):
                return Static(tuple(p.value for p in parts))
            return Seq(parts)
        if isinstance(s, ast.List):
            return self.eval_list_index(s)
        return self.eval(s)

    def eval_list_index(self, s):
        """``x[[0, 1]]`` is advanced indexing by an array, never the tuple ``x[0, 1]``: a constant
        list stays a list in the generated code; one holding run-time values is passed as the
        one-element tuple ``((i, j),)``, which NumPy reads the same way."""
        items = [self.eval(e) for e in s.elts]
        if all(isinstance(v, Static) for v in items):
            return Static([_as_list(v.value) for v in items])
        return Seq([Seq(items)])

    def eval_Slice(self, e):
        return self.eval_index(e)
