"""The evaluator's statements and inlining: binding arguments, running a function body,
assignments, ``if`` / ``for`` / ``while`` unrolled at compile time (data-dependent branches
decided on the real arguments, with a guard)."""
from __future__ import annotations

import ast
import linecache
import types

import numpy as np

from . import guards
from .errors import CompileError
from .ir import CALL, CONST, GETATTR, GUARD, ITEM, PACK, Node, is_leaf
from .parsing import get_source
from .traceinplace import inplace_value
from .tracecore import (FORBIDDEN_HINTS, MAX_UNROLL, Frame, LocalFunction, Seq, Static, SymDict,
                        _as_load, _static, _stmt_name)


class Inlining:
    """Errors at the user's line, values read from outside, and inlining of function calls."""

    # -- errors ----------------------------------------------------------
    def error(self, msg, node=None, hint=None):
        fr = self.frame
        if fr is None:
            raise CompileError(msg, hint=hint)
        loc = fr.source.loc(node) if node is not None else self.ctx.loc
        text = None
        if loc is not None:
            text = linecache.getline(loc.filename, loc.lineno).rstrip("\n") or None
        raise CompileError(msg, loc.filename if loc else None, loc.lineno if loc else None,
                           loc.col if loc else None, text, hint=hint)

    # -- values from outside the traced code ---------------------------------
    def outside(self, value, path, name=None, scalar=False):
        """A value read from a closure cell, global, default or attribute at ``path``: an array
        becomes an input read at run time; anything else a constant with a guard."""
        if path is None or guards.stable(value):
            return _static(value) if scalar else Static(value)
        if isinstance(value, np.ndarray) or type(value) is float:
            return self.ctx.free_input(path, value, name)      # data: read at run time
        g = guards.guard_for(value)
        if g is not None:
            self.ctx.guard(path, *g)
        if scalar and isinstance(value, np.generic):
            value = value.item()        # as _static: an item of a constant is a Python number
        return Static(value, path)

    def look_up(self, fn, args, e):
        """``hasattr(obj, name)`` / ``getattr(obj, name[, default])`` on an object read from
        outside: whether it has the attribute is guarded too."""
        base, name = args[0], args[1].value
        present = hasattr(base.value, name)
        self.ctx.guard(base.src + (("attr", name),), "has", (name, present))
        if fn is hasattr:
            return Static(present)
        if present or len(args) == 2:
            return self.attribute(base, name, e)
        return args[2]

    def baked_callee(self, fn, path):
        """``fn`` is called by the generated code itself (not inlined): that very object."""
        if path is not None and isinstance(fn, types.FunctionType):
            self.ctx.guard(path, "is", guards._ref(fn))

    def seq_items(self, v):
        """The items of a tuple value (a Seq, or a constant whose items keep their paths)."""
        return list(v.items) if isinstance(v, Seq) else self.items_of(v)

    def structure(self, v):
        """The code depends on how many items (or which keys) the container ``v`` has."""
        if isinstance(v, Static) and v.src is not None:
            g = guards.structure_guard(v.value)
            if g is not None:
                self.ctx.guard(v.src, *g)

    def items_of(self, v):
        """The items of a constant list or tuple, each with its own path."""
        if v.parts is not None:
            return list(v.parts)
        self.structure(v)
        if v.src is None or not isinstance(v.value, (list, tuple)):
            return [x if isinstance(x, Static) else Static(x) for x in v.value]
        return [self.outside(x, v.src + (("item", i),)) for i, x in enumerate(v.value)]

    # -- entry points ------------------------------------------------------
    def call_function(self, fn, args, kwargs, selfval=None, node=None, path=None):
        """Inline ``fn(*args, **kwargs)``; returns its value. ``path``: where ``fn`` was read
        from (its cells, globals and defaults are then guarded or read at run time)."""
        src = get_source(fn)
        code = getattr(fn, "__code__", None)
        owner = getattr(selfval, "obj", None)
        if owner is not None:           # a method of one model instance (a Chain inside a Chain
            code = (code, id(owner))    # is no recursion: model trees have no cycles)
        if code in self.ctx.stack:
            self.error(f"recursive call of {src.owner} cannot be inlined", node,
                       hint="rewrite it without recursion, or register it as a primitive with @fc.diffrule")
        self.ctx.inlined.append(fn)
        if (getattr(fn, "__module__", "") or "").startswith("flux_compile"):
            path = None                 # the library's own globals and defaults are not guarded
        fdef = src.tree
        env = self._bind(fdef.args, fn, args, kwargs, node, selfval, path=path)
        glob = dict(getattr(fn, "__globals__", {}))
        if getattr(fn, "__closure__", None):
            for name, cell in zip(fn.__code__.co_freevars, fn.__closure__):
                try:
                    glob[name] = cell.cell_contents
                except ValueError:
                    pass
        frame = Frame(src, env, glob, selfval, getattr(fn, "__globals__", None), fn, path)
        frame.owner = self.ctx.__dict__.pop("next_owner", None)   # an inlined sub-model's label
        frame.prefix = self.ctx.__dict__.pop("next_prefix", "")  # and the prefix of its names
        frame.via = self.ctx.__dict__.pop("next_via", ())        # and where it was called
        outer, self.frame = self.frame, frame
        saved_loc = self.ctx.loc
        self.ctx.stack.append(code)
        try:
            self.exec_body(fdef.body)
        finally:
            self.ctx.stack.pop()
            self.frame = outer
            self.ctx.loc = saved_loc
        return frame.retval if frame.returned else Static(None)

    def call_local(self, lf, args, kwargs, node):
        key = id(lf.fdef)
        if key in self.ctx.stack:
            self.error(f"recursive call of {lf.fdef.name} cannot be inlined", node)
        fake = types.SimpleNamespace(__defaults__=None, __kwdefaults__=None, __qualname__=lf.fdef.name)
        env = self._bind(lf.fdef.args, fake, args, kwargs, node, None,
                         defaults=lf.defaults, kwdefaults=lf.kwdefaults)
        frame = lf.frame.nested(lf.frame.source, env)
        outer, self.frame = self.frame, frame
        saved_loc = self.ctx.loc
        self.ctx.stack.append(key)
        try:
            self.exec_body(lf.fdef.body)
        finally:
            self.ctx.stack.pop()
            self.frame = outer
            self.ctx.loc = saved_loc
        return frame.retval if frame.returned else Static(None)

    def _bind(self, a, fn, args, kwargs, node, selfval, defaults=None, kwdefaults=None, path=None):
        env = {}
        params = [p.arg for p in a.posonlyargs + a.args]
        args = list(args)
        if selfval is not None:
            args = [selfval] + args
        if defaults is None:
            def step(*s):
                return None if path is None else path + (s,)
            raw = getattr(fn, "__defaults__", None) or ()
            names = params[len(params) - len(raw):]
            defaults = [self.outside(d, step("default", i), names[i] if i < len(names) else None)
                        for i, d in enumerate(raw)]
            kwdefaults = {k: self.outside(v, step("kwdefault", k), k)
                          for k, v in (getattr(fn, "__kwdefaults__", None) or {}).items()}
        ndef = len(defaults)
        if len(args) > len(params) and a.vararg is None:
            self.error(f"{get_source(fn).owner}() takes {len(params)} positional arguments "
                       f"but {len(args)} were given", node)
        for name, value in zip(params, args):
            env[name] = value
        if a.vararg is not None:
            env[a.vararg.arg] = Seq(args[len(params):])
        extra = {}
        for k, v in kwargs.items():
            if k in params or any(k == p.arg for p in a.kwonlyargs):
                if k in env:
                    self.error(f"got multiple values for argument {k!r}", node)
                env[k] = v
            elif a.kwarg is not None:
                extra[k] = v
            else:
                self.error(f"{get_source(fn).owner}() got an unexpected keyword argument {k!r}", node)
        for i, name in enumerate(params):
            if name not in env:
                j = i - (len(params) - ndef)
                if j < 0:
                    self.error(f"{get_source(fn).owner}() missing argument {name!r}", node)
                env[name] = defaults[j]
        for p in a.kwonlyargs:
            if p.arg not in env:
                if p.arg not in kwdefaults:
                    self.error(f"{get_source(fn).owner}() missing keyword argument {p.arg!r}", node)
                env[p.arg] = kwdefaults[p.arg]
        if a.kwarg is not None:
            env[a.kwarg.arg] = Static(extra) if all(isinstance(v, Static) for v in extra.values()) \
                else self.error("**kwargs with array values are not supported", node)
        return env



class Statements:
    """One method per supported statement (``exec_Assign``, ``exec_For``, ...)."""

    def exec_body(self, body):
        for stmt in body:
            if self.frame.returned:
                return
            self.exec_stmt(stmt)

    def exec_stmt(self, s):
        self.ctx.loc = self.frame.source.loc(s, self.frame.owner, self.frame.via)
        handler = getattr(self, "exec_" + type(s).__name__, None)
        if handler is None:
            hint = FORBIDDEN_HINTS.get(type(s), "this statement is not in the supported subset")
            self.error(f"{_stmt_name(s)} is not supported inside a compiled function", s, hint=hint)
        handler(s)

    def exec_Assign(self, s):
        value = self.eval(s.value)
        for target in s.targets:
            self.assign(target, value, s)

    def exec_AnnAssign(self, s):
        if s.value is not None:
            self.assign(s.target, self.eval(s.value), s)

    def exec_AugAssign(self, s):
        target, operand = self.eval(_as_load(s.target)), self.eval(s.value)
        value = self.binop(s.op, target, operand, s)
        if not isinstance(s.target, ast.Subscript):     # v[i] += w assigns an item: setitem casts
            value = inplace_value(self, target, operand, value, s)
        self.assign(s.target, value, s)

    def exec_Return(self, s):
        self.frame.retval = self.eval(s.value) if s.value is not None else Static(None)
        self.frame.returned = True

    def exec_Expr(self, s):
        if isinstance(s.value, ast.Constant):
            return      # docstring or bare constant
        if self.collect_append(s):
            return      # hs.append(h) inside a loop region
        if isinstance(s.value, ast.Call) and isinstance(s.value.func, ast.Name) \
                and s.value.func.id == "print":
            self.error("print is not supported inside forward", s,
                       hint="use fc.shapes(model, x) to see every value's shape, or print outside the model")
        v = self.eval(s.value)
        if isinstance(v, Node) and v.op == CALL and self.ctx.mode == "forward":
            v.meta["effect"] = True

    def exec_If(self, s):
        test = self.eval(s.test)
        if self.try_cond_region(s, test):
            return
        taken = self.decide(test, s.test, "'if'")
        self.exec_body(s.body if taken else s.orelse)

    def exec_For(self, s):
        if s.orelse:
            self.error("for/else is not supported", s)
        if self.try_loop_region(s):
            return
        items = self.iter_values(self.eval(s.iter), s.iter)
        for item in items:
            self.assign(s.target, item, s)
            self.exec_body(s.body)
            if self.frame.returned:
                return

    def exec_While(self, s):
        if s.orelse:
            self.error("while/else is not supported", s)
        if self.try_while_region(s):
            return
        for _ in range(MAX_UNROLL):
            if not self.decide(self.eval(s.test), s.test, "'while'"):
                break
            self.exec_body(s.body)
            if self.frame.returned:
                return
        else:
            self.error(f"'while' ran more than {MAX_UNROLL} times while compiling", s,
                       hint="loops are unrolled for the inputs given; use vectorised NumPy for long loops")

    def exec_FunctionDef(self, s):
        if s.decorator_list:
            self.error("decorated nested functions are not supported", s)
        defaults = [self.eval(d) for d in s.args.defaults]
        kwdefaults = {a.arg: self.eval(d) for a, d in zip(s.args.kwonlyargs, s.args.kw_defaults)
                      if d is not None}
        self.frame.env[s.name] = LocalFunction(s, self.frame, defaults, kwdefaults)

    def exec_Pass(self, s):
        pass

    def exec_Assert(self, s):
        """An assert on values known when compiling (constants, shapes) is checked then; on
        shapes, for these inputs with a guard (other shapes recompile and check again)."""
        test = self.eval(s.test)
        if isinstance(test, Node) and _reads_array_data(test):
            self.error("assert on array data cannot be compiled", s,
                       hint="an assert in forward may test what is known when compiling, such as shapes "
                            "(assert x.shape[1] == 3); check data before calling the model")
        if not self.decide(test, s.test, "assert"):
            msg = self.eval(s.msg).value if s.msg is not None else "assertion failed"
            self.error(f"assertion failed at compile time: {msg}", s,
                       hint="the inputs given do not satisfy this assert in forward")

    def exec_Raise(self, s):
        exc = self.eval(s.exc) if s.exc is not None else None
        if self.ctx.guards and isinstance(exc, Static) and (
                isinstance(exc.value, BaseException) or
                isinstance(exc.value, type) and issubclass(exc.value, BaseException)):
            raise exc.value     # these inputs took the user's own error branch: raise it, as Python would
        self.error("'raise' reached at compile time", s, hint=FORBIDDEN_HINTS[ast.Raise])

    def decide(self, test, node, what):
        """The truth of ``test``: a constant, or a data value decided on the real
        arguments with a guard added to the generated code."""
        if isinstance(test, Static):
            return bool(test.value)
        if isinstance(test, (Seq, SymDict)):
            return bool(test.items)
        if not isinstance(test, Node):
            return True
        conc = self.ctx.concrete
        value = conc.value(test) if conc is not None else None
        from .concrete import UNKNOWN
        if conc is None or value is UNKNOWN:
            self.error(f"{what} on an array value needs example inputs to compile", node,
                       hint="call the model (or fc.grad) with real inputs: the path taken is compiled "
                            "with a guard; or use np.where(cond, a, b) for an elementwise choice")
        try:
            taken = bool(value)
        except ValueError:
            self.error(f"{what} on an array with several elements is ambiguous", node,
                       hint="reduce it first (np.any, np.all, x.sum() > 0) or use np.where(cond, a, b)")
        g = Node(GUARD, (test,), value=taken)
        self.ctx.add(g)
        self.ctx.guards += 1
        return taken

    def concrete_int(self, v, node, what):
        """An int known at compile time: a constant, or a run-time int guarded to its value."""
        if isinstance(v, Static):
            return v.value
        conc = self.ctx.concrete
        from .concrete import UNKNOWN
        value = conc.value(v) if conc is not None and isinstance(v, Node) else UNKNOWN
        if value is UNKNOWN:
            self.error(f"{what} needs a value known at compile time", node,
                       hint="loops are unrolled: iterate over range(<constant>), a list of layers, a tuple, "
                            "or call with real inputs so the trip count is compiled with a guard")
        value = int(value)
        cond = self.call_primitive(np.equal, [v, Static(value)], {}, node)
        self.ctx.add(Node(GUARD, (cond,), value=True))
        self.ctx.guards += 1
        return value

    def node_items(self, node):
        """The outputs of a multi-output node (``np.split``, ``np.linalg.eigh``, ...), one value each."""
        if node.op == PACK:
            return list(node.args)
        return [self.ctx.add(Node(ITEM, (node,), index=i, diff=node.diff)) for i in range(node.arity)]

    def iter_values(self, it, node):
        if isinstance(it, Seq):
            return list(it.items)
        if isinstance(it, SymDict):
            return [Static(k) for k in it.items]
        if isinstance(it, Node) and it.arity is not None:
            return self.node_items(it)
        if isinstance(it, Node) and it.arity is None:
            n = self.concrete_int(self.call_primitive(len, [it], {}, node), node, "'for' over an array")
            from .rules.helpers import getitem
            return [self.call_primitive(getitem, [it, Static(i)], {}, node) for i in range(n)]
        if isinstance(it, Static):
            try:
                return self.items_of(it)
            except TypeError:
                self.error(f"cannot iterate over {type(it.value).__name__}", node)
        self.error("'for' over an array or a run-time value cannot be compiled", node,
                   hint="loops are unrolled at compile time: iterate over range(<constant>), "
                        "a list of layers, or a tuple; use vectorised NumPy for data")

    def assign(self, target, value, stmt):
        t = type(target)
        if t is ast.Name:
            if isinstance(value, Node) and not is_leaf(value) and (
                    value.name is None or value.meta.pop("inlined_out", False)):
                value.name = self.frame.prefix + target.id
            self.frame.env[target.id] = value
        elif t in (ast.Tuple, ast.List):
            elts = target.elts
            if any(isinstance(e, ast.Starred) for e in elts):
                self.error("starred assignment is not supported", target)
            items = self.unpack(value, len(elts), target)
            for e, v in zip(elts, items):
                self.assign(e, v, stmt)
        elif t is ast.Attribute:
            self.assign_attribute(self.eval(target.value), target, value)
        elif t is ast.Subscript:
            if not isinstance(target.value, ast.Name) or target.value.id not in self.frame.env:
                self.error("item assignment is only supported on local arrays (y[i] = v)", target,
                           hint="build a new array instead: np.where, np.concatenate or np.pad")
            base = self.frame.env[target.value.id]
            if not isinstance(base, Node):
                self.error("item assignment needs an array", target,
                           hint="make it an array first, e.g. y = np.zeros_like(x)")
            from .rules.helpers import setitem
            index = self.eval_index(target.slice)
            new = self.call_primitive(setitem, [base, index, value], {}, target)
            new.name = target.value.id
            self.frame.env[target.value.id] = new
        else:
            self.error("unsupported assignment target", target)

    def assign_attribute(self, base, target, value):
        """``base.name = value``; the frontend supports ``self.name = ...`` (recurrent state)."""
        self.error("attribute assignment is not supported inside a compiled function", target)

    def unpack(self, value, n, node):
        if isinstance(value, SymDict):
            value = Static(tuple(value.items))
        if isinstance(value, Seq):
            if len(value.items) != n:
                self.error(f"cannot unpack {len(value.items)} values into {n} names", node)
            return value.items
        if isinstance(value, Static):
            try:
                items = self.items_of(value)
            except TypeError:
                self.error(f"cannot unpack {type(value.value).__name__}", node)
            if len(items) != n:
                self.error(f"cannot unpack {len(items)} values into {n} names", node)
            return items
        if isinstance(value, Node):
            if value.arity is not None and value.arity != n:
                self.error(f"cannot unpack {value.arity} values into {n} names", node)
            if value.op == PACK:
                return list(value.args)
            return [self.ctx.add(Node(ITEM, (value,), index=i, diff=value.diff)) for i in range(n)]
        self.error("cannot unpack this value", node)



SHAPE_ATTRS = ("shape", "ndim", "size", "dtype")


def _reads_array_data(node, seen=None):
    """Does ``node`` depend on the contents of an array (not only on shapes and constants)?"""
    seen = set() if seen is None else seen
    if node.id in seen:
        return False
    seen.add(node.id)
    if node.op == GETATTR and node.attr in SHAPE_ATTRS:
        return False
    if node.op == CONST:
        return False
    args = node.inputs()
    return not args or any(_reads_array_data(a, seen) for a in args)
