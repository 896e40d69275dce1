"""``if``/``else`` on run-time data as IR regions: a ``cond`` node holding both branches.

Each branch is traced into a graph of its own; the names either branch assigns become the
node's outputs (one merged value each). The generated forward is a real ``if``: only the
taken branch runs, so a guard like ``if x > 0: y = np.log(x)`` never evaluates the log of
a negative number, nor its derivative. One compile serves every branch pattern.

What a region cannot express falls back to compile-time specialisation (the taken branch
compiled, with a guard; another pattern compiles again): a test on shapes only (cheap and
bounded, so it stays baked), a ``return``/``raise``/``assert``/``break``/``continue``/
``yield`` inside a branch (outside a loop region, where jumps are lowered to flags first),
a name bound in one branch only and read after the ``if``, merged values that are not
arrays or numbers in both branches (tuples, lists, functions, None), arrays whose ranks or
known sizes differ between branches, a list appended to under the ``if``, a call on
``self`` in an ``if`` that writes recurrent state. In a loop region such an ``if`` makes
the loop unroll (:class:`RegionUnsupported`). Recurrent state written in a branch
(``self.h = ...``) is merged like a local (``<self.h>``) and written back once, after it.
"""
from __future__ import annotations

import ast

from .errors import CompileError
from .ir import COND, CONST, GETATTR, ITEM, Graph, Node
from .tracecore import Static
from .traceloop import (STATE_PREFIX, Collector, RegionUnsupported, _assigned_names, _state_written,
                        _StateAsLocal, close_into)

SHAPE_ONLY_ATTRS = ("shape", "ndim", "size", "dtype")
FALLBACK_STATEMENTS = (ast.Return, ast.Raise, ast.Assert, ast.Break, ast.Continue, ast.Yield,
                       ast.YieldFrom, ast.Global, ast.Nonlocal)


def reads_data(node, seen=None):
    """Does ``node`` depend on an array's contents (not only on shapes and constants)?
    (Keyed by the node objects: a region's graph numbers its nodes from 0 too.)"""
    seen = set() if seen is None else seen
    if id(node) in seen:
        return False
    seen.add(id(node))
    if node.op == GETATTR and node.attr in SHAPE_ONLY_ATTRS or node.op == CONST:
        return False
    args = node.inputs()
    return not args or any(reads_data(a, seen) for a in args)


def _read_outside(tree, s, name):
    """Does the function ``tree`` read ``name`` anywhere outside the statement ``s``? (True
    when ``s`` is not part of it: a statement the tracer rewrote.)"""
    found, inside = [False], [False]

    def walk(node):
        if node is s:
            inside[0] = True
            return
        if isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Load):
            found[0] = True
        for child in ast.iter_child_nodes(node):
            walk(child)
    walk(tree)
    return found[0] or not inside[0]


def _is_number(v):
    return isinstance(v, Static) and isinstance(v.value, (int, float)) and not isinstance(v.value, bool)


def _shape(v):
    return () if _is_number(v) else v.meta.get("shape")


def _differ(sa, sb):
    """Are two inferred shapes certainly different (ranks, or two known sizes)? A symbolic
    size may equal anything."""
    if sa is None or sb is None:
        return False
    return len(sa) != len(sb) or any(isinstance(p, int) and isinstance(q, int) and p != q
                                     for p, q in zip(sa, sb))


class Conds:
    """The tracer's cond regions (mixed into Tracer)."""

    def try_cond_region(self, s, test):
        """``if <test on data>: ... else: ...`` as a ``cond`` region. Returns True when done,
        False to decide the test at compile time instead (see the module's docstring); in a
        loop region's body an ``if`` a region cannot hold raises :class:`RegionUnsupported`."""
        if self.ctx.mode != "forward" or not getattr(self.ctx, "cond_regions", True) \
                or not isinstance(test, Node) or test.arity is not None or not reads_data(test):
            return False
        shape = test.meta.get("shape")
        if shape is not None and any(d != 1 for d in shape):
            return False        # Python's 'ambiguous truth value' error, said at compile time
        in_loop = getattr(self.ctx, "root_graph", None) is not None
        if any(isinstance(n, FALLBACK_STATEMENTS) for st in s.body + s.orelse for n in ast.walk(st)):
            if in_loop:
                raise RegionUnsupported("return/raise/assert inside an 'if' in a loop")
            return False
        snapshot = (self.ctx.guards, dict(self.frame.env))
        try:
            self._trace_cond(s, test)
        except (RegionUnsupported, CompileError):
            if in_loop:
                raise
            self.ctx.guards, env = snapshot
            self.frame.env.clear()
            self.frame.env.update(env)
            return False
        return True

    def _trace_cond(self, s, test):
        env = self.frame.env
        s, attrs = self._state_as_locals(s)
        names = _assigned_names(s.body + s.orelse)
        before = dict(env)
        appended = [(c, len(c.items)) for c in env.values() if isinstance(c, Collector)]
        branches, envs = [], []
        for which, stmts in (("then", s.body), ("else", s.orelse)):
            env.clear()
            env.update(before)
            branches.append(self._trace_branch(stmts, f"{self.ctx.graph.name} line {s.lineno} {which}"))
            envs.append(dict(env))
        env.clear()
        env.update(before)
        if any(len(c.items) != count for c, count in appended):
            raise RegionUnsupported("a list appended to under an 'if' on data")
        merged = [(name, envs[0].get(name), envs[1].get(name)) for name in names
                  if not self._local_to_a_branch(name, before, envs, s)]
        merged = [(name, a, b) for name, a, b in merged if not self._same(name, a, b)]
        for body, k in zip(branches, (1, 2)):
            self._set_outputs(body, [m[k] for m in merged])
        captured = []
        captures = [close_into(body, captured) for body in branches]
        self.ctx.loc = self.frame.source.loc(s, self.frame.owner)
        outs = list(zip(branches[0].outputs, branches[1].outputs))
        if test.name is None:           # saved for the backward as ``cond`` (inlined when read once)
            test.name = "cond"
            test.meta["anon"] = True
        node = self.ctx.add(Node(COND, (test,) + tuple(captured), arity=len(merged),
                                 diff=any(a.diff or b.diff for a, b in outs)))
        node.meta.update(branches=tuple(branches), captures=tuple(captures), names=[m[0] for m in merged])
        for i, ((name, a, b), (oa, ob)) in enumerate(zip(merged, outs)):
            item = self.ctx.add(Node(ITEM, (node,), index=i, diff=oa.diff or ob.diff, name=name.strip("<>")))
            sa, sb = _shape(a), _shape(b)
            item.meta["shape"] = sa if sa == sb else None
            env[name] = item
        for attr in attrs:          # recurrent state: written back once, after the if
            value = env.pop(STATE_PREFIX + attr + ">")
            self.assign(ast.copy_location(ast.Attribute(value=ast.Name(id="self", ctx=ast.Load()), attr=attr,
                                                        ctx=ast.Store()), s), value, s)

    def _state_as_locals(self, s):
        """Recurrent state written in a branch (``self.h = ...``) as the local ``<self.h>``,
        starting from the state's value before the ``if``: (the rewritten ``if``, the
        attributes). A branch that also calls a method on ``self`` (which might read the
        state) is :class:`RegionUnsupported`."""
        attrs = _state_written(s.body + s.orelse) if "self" in self.frame.env else []
        if not attrs:
            return s, attrs
        import copy
        s = _StateAsLocal(attrs).visit(copy.deepcopy(s))
        if any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)
               and n.func.value.id == "self" for st in s.body + s.orelse for n in ast.walk(st)):
            raise RegionUnsupported("a call on self in an 'if' that writes state (it might read it)")
        for attr in attrs:
            self.frame.env[STATE_PREFIX + attr + ">"] = self.eval(ast.copy_location(ast.Attribute(
                value=ast.Name(id="self", ctx=ast.Load()), attr=attr, ctx=ast.Load()), s))
        return s, attrs

    def _local_to_a_branch(self, name, before, envs, s):
        """Is ``name`` a temporary of one branch (bound there only, unbound before the ``if``
        and read nowhere outside it)? Such a name is not merged."""
        if name in before or (name in envs[0]) == (name in envs[1]):
            return False
        tree = getattr(self.frame.source, "tree", None)
        return tree is not None and not _read_outside(tree, s, name)

    def _same(self, name, a, b):
        """Is ``name`` the same value after both branches (nothing to merge)? Raises
        :class:`RegionUnsupported` when the two values cannot be merged into one."""
        if a is b:
            return True
        if a is None or b is None:
            raise RegionUnsupported(f"{name!r} is bound in one branch only")
        if _is_number(a) and _is_number(b) and type(a.value) is type(b.value) and a.value == b.value:
            return True
        ok = (lambda v: isinstance(v, Node) and v.arity is None or _is_number(v))
        if not (ok(a) and ok(b)):
            raise RegionUnsupported(f"{name!r} is not an array or a number in both branches")
        sa, sb = _shape(a), _shape(b)
        if isinstance(a, Node) and isinstance(b, Node) and _differ(sa, sb):
            raise RegionUnsupported(f"{name!r} has different shapes in the two branches")
        return False

    def _trace_branch(self, stmts, label):
        """One branch traced into a graph of its own (outside values still read directly:
        :func:`close_into` makes them inputs once both branches are traced)."""
        ctx = self.ctx
        outer = ctx.graph
        body = Graph(label)
        root = getattr(ctx, "root_graph", None)
        ctx.root_graph = root or outer
        ctx.graph = body
        try:
            self.exec_body(stmts)
            if self.frame.returned:
                raise RegionUnsupported("return inside a branch")
        finally:
            ctx.graph = outer
            if root is None:
                del ctx.root_graph
        return body

    def _set_outputs(self, body, values):
        outer = self.ctx.graph
        self.ctx.graph = body
        try:
            body.outputs = [self.as_node(v) for v in values]
        finally:
            self.ctx.graph = outer
