"""Loops as IR regions: a ``for`` over ``range(...)`` whose trip count is known only at run
time (or is long) is traced once into a body graph, a ``loop`` node, instead of unrolled.

The body graph's inputs are the loop index, the carried variables (names the body assigns
that exist before the loop) and the values it captures from outside (made explicit after
the body is traced, so every graph is closed). Its outputs are the carried values after one
trip. An ``if`` on data inside is a cond region of the body (``tracecond.py``). A body the
region cannot hold (an ``if`` a cond region cannot express, a ``return``, a list appended to
other than once per trip) falls back to unrolling, as before, when the trip count is known.
"""
from __future__ import annotations

import ast

from .errors import CompileError
from .ir import CALL, INPUT, ITEM, LOOP, PURE_OPS, Graph, Node, is_reread
from .tracecore import Static

GO = "<go>"         # the carried flag of a while loop (no user's name can clash with it)
RUNNING = "<running>"   # the carried flag of a loop with a 'break': 1.0 until it breaks
# a range with constant bounds is unrolled up to this many trips (a region above it)
UNROLL_UP_TO = 32


class RegionUnsupported(Exception):
    """The loop body cannot be a region; the caller unrolls it instead."""


MUTATORS = {"append", "extend", "insert", "pop", "remove", "clear", "update", "setdefault"}


class Collector:
    """A list a loop body appends to once per trip (``hs.append(h)``): its item this trip."""

    def __init__(self, name):
        self.name, self.items = name, []


class Stacked:
    """A list filled by a loop region, after it: ``np.stack(hs)`` is the node ``node``."""

    def __init__(self, node, name):
        self.node, self.name = node, name


def _appended_lists(body):
    """Names ``X`` of the statements ``X.append(v)`` in ``body``."""
    names = []
    for stmt in body:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "append" and isinstance(node.func.value, ast.Name) \
                    and node.func.value.id not in names:
                names.append(node.func.value.id)
    return names


def _is_empty_list(v):
    return isinstance(v, Static) and isinstance(v.value, (list, tuple)) and not v.value \
        or type(v).__name__ == "Seq" and not v.items


def _assigned_names(body):
    """Names the statements ``body`` assign (in any nested statement), ``y`` of ``y[i] = v``
    too. A region cannot hold a write to an attribute (recurrent state) or a list mutated in
    place (``hs.append(h)``): :class:`RegionUnsupported`."""
    names = []
    for stmt in body:
        for node in ast.walk(stmt):
            base = node
            while isinstance(base, ast.Subscript) and isinstance(base.ctx, ast.Store):
                base = base.value
                base = ast.Name(id=base.id, ctx=ast.Store()) if isinstance(base, ast.Name) else base
            if isinstance(base, ast.Name) and isinstance(base.ctx, ast.Store) and base.id not in names:
                names.append(base.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                raise RegionUnsupported("an attribute written inside the loop")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in MUTATORS and not (node.func.attr == "append"
                                                             and isinstance(node.func.value, ast.Name)):
                raise RegionUnsupported("a container changed in place inside the loop")
    return names


def _jumps(stmt):
    """Does ``stmt`` hold a ``break``/``continue`` of the loop around it (not of a loop
    nested in it)?"""
    if isinstance(stmt, (ast.Break, ast.Continue)):
        return True
    if isinstance(stmt, (ast.For, ast.While, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return False
    return any(_jumps(c) for c in ast.iter_child_nodes(stmt) if isinstance(c, ast.stmt))


def _has_jump(loop):
    """Does the loop ``loop`` hold a ``break``/``continue`` of its own? (A short loop that
    does is a region too: unrolling cannot express a jump.)"""
    return any(_jumps(st) for st in loop.body)


def _has_break(stmts):
    return any(isinstance(st, ast.Break) or not isinstance(st, (ast.For, ast.While)) and
               _has_break([c for c in ast.iter_child_nodes(st) if isinstance(c, ast.stmt)])
               for st in stmts)


def _lowered(stmts, cont=()):
    """``stmts`` then ``cont`` with their ``break``/``continue`` turned into plain ``if``/
    ``else``: what follows a jump moves into the other branch of each ``if`` around it, and
    ``break`` also sets the carried flag :data:`RUNNING` to 0.0 (later trips do nothing). A
    jump anywhere but under ``if`` is :class:`RegionUnsupported`."""
    stmts = list(stmts)
    for i, st in enumerate(stmts):
        if isinstance(st, (ast.Break, ast.Continue)):
            stop = [ast.copy_location(ast.Assign(targets=[ast.Name(id=RUNNING, ctx=ast.Store())],
                                                 value=ast.Constant(0.0)), st)]
            return stmts[:i] + (stop if isinstance(st, ast.Break) else [])
        if _jumps(st):
            if not isinstance(st, ast.If):
                raise RegionUnsupported("break/continue inside a statement other than 'if'")
            tail = _lowered(stmts[i + 1:], cont)
            branch = ast.copy_location(ast.If(test=st.test, body=_lowered(st.body, tail) or [ast.Pass()],
                                              orelse=_lowered(st.orelse, tail)), st)
            return stmts[:i] + [branch]
    return stmts + list(cont)


STATE_PREFIX = "<self."     # a recurrent state written in the body, carried as "<self.h>"
SUB_PREFIX = "<sub."        # an inlined sub-model's state (fc.unroll), carried as "<sub.h>"


def _state_written(body):
    """Attributes ``X`` of the statements ``self.X = v`` in ``body``."""
    attrs = []
    for stmt in body:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                    and isinstance(node.value, ast.Name) and node.value.id == "self" \
                    and node.attr not in attrs:
                attrs.append(node.attr)
    return attrs


class _StateAsLocal(ast.NodeTransformer):
    """``self.X`` (read or written) becomes the carried local ``<self.X>``."""

    def __init__(self, attrs):
        self.attrs = attrs

    def visit_Attribute(self, node):
        if isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr in self.attrs:
            return ast.copy_location(ast.Name(id=STATE_PREFIX + node.attr + ">", ctx=node.ctx), node)
        return self.generic_visit(node)


def _region_body(s, attrs=()):
    """The loop's body as the region traces it: recurrent state ``attrs`` read and written as
    carried locals, jumps lowered, and under ``if RUNNING:`` when it can ``break``."""
    body = s.body
    if attrs:
        import copy
        body = [_StateAsLocal(attrs).visit(copy.deepcopy(st)) for st in body]
        if any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)
               and n.func.value.id == "self" for st in body for n in ast.walk(st)):
            raise RegionUnsupported("a call on self in a loop that writes state (it might read it)")
    if not any(_jumps(st) for st in body):
        return body
    lowered = _lowered(body)
    if not _has_break(body):
        return lowered
        return body
    if isinstance(s, ast.While):
        raise RegionUnsupported("break inside a while region")
    return [ast.copy_location(ast.If(test=ast.Name(id=RUNNING, ctx=ast.Load()), body=lowered, orelse=[]),
                              s.body[0])]


def _range_call(s):
    """``for t in range(...)`` with a plain name as target: the call's argument nodes."""
    it = s.iter
    if isinstance(s.target, ast.Name) and isinstance(it, ast.Call) and isinstance(it.func, ast.Name) \
            and it.func.id == "range" and not it.keywords and 1 <= len(it.args) <= 3 \
            and not any(isinstance(a, ast.Starred) for a in it.args):
        return it.args
    return None


class Loops:
    """The tracer's loop regions (mixed into Tracer)."""

    def collect_append(self, s):
        """``hs.append(v)`` in a loop region's body: ``v`` is this trip's item of ``hs``."""
        call = s.value
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) \
                and call.func.attr == "append" and isinstance(call.func.value, ast.Name) \
                and isinstance(self.frame.env.get(call.func.value.id), Collector) \
                and len(call.args) == 1 and not call.keywords:
            self.frame.env[call.func.value.id].items.append(self.eval(call.args[0]))
            return True
        return False

    def stacked_call(self, f, args, kwargs, e):
        """``np.stack(hs)`` / ``np.stack(hs, axis=k)`` / ``np.array(hs)`` of a list a loop
        region filled: the loop's stacked output (moved to axis ``k``)."""
        import numpy as np
        fn = f.value if isinstance(f, Static) else None
        stacked = args[0]
        axis = kwargs.get("axis", args[1] if len(args) > 1 else Static(0))
        if fn in (np.stack, np.array, np.asarray) and isinstance(axis, Static) and len(args) <= 2 \
                and set(kwargs) <= {"axis"}:
            if axis.value == 0:
                return stacked.node
            return self.call_primitive(np.moveaxis, [stacked.node, Static(0), axis], {}, e)
        self.error(f"the list {stacked.name!r} filled in a loop can only be stacked here", e,
                   hint=f"use np.stack({stacked.name}) or np.stack({stacked.name}, axis=k) after the loop")

    def try_loop_region(self, s):
        """Trace ``for t in range(...)`` as a region when its bounds are run-time values or
        its trip count is above :data:`UNROLL_UP_TO`. Returns True when done."""
        if self.ctx.mode != "forward" or not _regions_allowed(self.ctx):
            return False
        args = _range_call(s)
        if args is None:
            return self._try_rows_region(s)
        fn = self.eval(s.iter.func)
        if not (isinstance(fn, Static) and fn.value is range):
            return False
        bounds = [self.eval(a) for a in args]
        if all(isinstance(b, Static) for b in bounds):
            try:
                if len(range(*[b.value for b in bounds])) <= UNROLL_UP_TO and not _has_jump(s):
                    return False
            except TypeError:
                return False
        elif not all(isinstance(b, Node) or isinstance(b, Static) and isinstance(b.value, int)
                     for b in bounds):
            return False
        return self._attempt(lambda: self._trace_loop(s, [self.as_node(b) for b in bounds]),
                             (self.ctx.guards, dict(self.frame.env)))

    def _attempt(self, trace, snapshot):
        """Run ``trace`` (a region's tracing). When the region is not supported, put the guard
        count and the frame back as ``snapshot`` holds them and return False."""
        try:
            trace()
        except (RegionUnsupported, CompileError):
            self.ctx.guards, env = snapshot
            self.frame.env.clear()
            self.frame.env.update(env)
            return False
        return True

    def _try_rows_region(self, s):
        """``for row in x`` over an array's first axis: a region over ``range(len(x))`` whose
        body reads ``x[t]``."""
        if not isinstance(s.target, ast.Name):
            return False
        snapshot = (self.ctx.guards, dict(self.frame.env))
        it = self.eval(s.iter)
        if not isinstance(it, Node) or it.arity is not None:
            return False
        count = self.call_primitive(len, [it], {}, s.iter)
        if isinstance(count, Static) and (not isinstance(count.value, int)
                                          or count.value <= UNROLL_UP_TO and not _has_jump(s)):
            return False
        return self._attempt(lambda: self._trace_loop(s, [self.as_node(count)], rows_of=it), snapshot)

    def try_while_region(self, s):
        """``while <test on data>:`` as a region: the test is computed before the loop and
        again at the end of each trip (a carried flag); the loop runs in the generated code,
        never while compiling. Returns True when done."""
        if self.ctx.mode != "forward" or not _regions_allowed(self.ctx):
            return False
        snapshot = (self.ctx.guards, dict(self.frame.env))
        test = self.eval(s.test)
        if not isinstance(test, Node):
            return False
        return self._attempt(lambda: self._trace_loop(s, [], test=(s.test, test)), snapshot)

    def _trace_loop(self, s, bounds, test=None, rows_of=None):
        env = self.frame.env
        target = "<trip>" if test is not None else "<t>" if rows_of is not None else s.target.id
        attrs = _state_written(s.body) if "self" in env else []
        stmts = _region_body(s, attrs)
        if _has_break(s.body):
            env[RUNNING] = self.as_node(Static(1.0))
        for attr in attrs:          # the state's value before the loop: its first carried value
            env[STATE_PREFIX + attr + ">"] = self.eval(ast.copy_location(ast.Attribute(
                value=ast.Name(id="self", ctx=ast.Load()), attr=attr, ctx=ast.Load()), s))
        carried = [n for n in _assigned_names(stmts) if n in env and n != target]
        subs = self._sub_state_carried()
        for name, key in subs.items():  # a sub-model's state (fc.unroll): carried, whoever writes it
            env[name] = self.ctx.state.read_sub(*key)
            carried.append(name)
        lists = _appended_lists(stmts)
        if any(name in carried or not _is_empty_list(env.get(name)) for name in lists):
            raise RegionUnsupported("append to a list that is not empty before the loop")
        for name in carried:
            v = env[name]
            if not isinstance(v, Node) and not (isinstance(v, Static) and isinstance(v.value, (int, float))
                                                and not isinstance(v.value, bool)):
                raise RegionUnsupported(name)
        inits = [self.as_node(env[name]) for name in carried]
        if test is not None:            # the test's value: a carried flag, computed again each trip
            carried.append(GO)
            inits.append(test[1])
        diff = [n.diff for n in inits]
        shapes = [_shape_of(n) for n in inits]      # assumed to stay, until a trip changes it
        for _ in range(3 + len(carried)):   # until gradients and kept shapes settle
            body, outs = self._trace_body(s, stmts, target, carried, diff, test, rows_of, lists, shapes)
            now = [d or o.diff for d, o in zip(diff, outs)]
            kept = [sh if _same_shape(sh, _shape_of(o)) else None for sh, o in zip(shapes, outs)]
            if now == diff and kept == shapes:
                break
            diff, shapes = now, kept
        else:                   # not settled: assume no shape, with the gradients found so far
            shapes = [None] * len(carried)
            body, outs = self._trace_body(s, stmts, target, carried, diff, test, rows_of, lists, shapes)
        _hoist(body, self.ctx.graph)
        self._hoist_projections(body)
        _drop_unused_reads(body)
        captured = _close(body)
        self.ctx.loc = self.frame.source.loc(s)
        loop = self.ctx.add(Node(LOOP, tuple(bounds) + tuple(inits) + tuple(captured),
                                 diff=any(diff) or any(o.diff for o in body.outputs[len(carried):]),
                                 arity=len(carried) + len(lists)))
        loop.meta.update(body=body, n_bounds=len(bounds), carried=carried, target=target,
                         kind="for" if test is None else "while", lists=lists)
        for j, name in enumerate(lists):
            item = self.ctx.add(Node(ITEM, (loop,), index=len(carried) + j,
                                     diff=body.outputs[len(carried) + j].diff, name=name))
            item.meta["shape"] = _stacked_shape(body.outputs[len(carried) + j])
            env[name] = Stacked(item, name)
        env.pop(RUNNING, None)
        for i, name in enumerate(carried):
            if name in (GO, RUNNING):
                continue
            state = name.startswith(STATE_PREFIX)
            attr = name[len(STATE_PREFIX):-1] if state else None
            item = self.ctx.add(Node(ITEM, (loop,), index=i, diff=diff[i], name=attr or name))
            item.meta["shape"] = shapes[i]          # kept by every trip (or None)
            env[name] = item
            if state:       # written back once, after the loop
                del env[name]
                self.assign(ast.copy_location(ast.Attribute(value=ast.Name(id="self", ctx=ast.Load()),
                                                            attr=attr, ctx=ast.Store()), s), item, s)
        for attr in attrs:
            env.pop(STATE_PREFIX + attr + ">", None)
        for name, key in subs.items():  # written back once, after the loop
            self.ctx.state.current[key] = env.pop(name)

    def _sub_state_carried(self):
        """``{carried name: (path, attr)}`` of the inlined sub-models' state, or {}."""
        hooks = self.ctx.state
        if not getattr(hooks, "inline_stateful", False):
            return {}
        return {SUB_PREFIX + name + ">": key for name, key in zip(hooks.names, hooks.keys)}

    def _hoist_projections(self, body):
        """All steps' ``x[:, t] @ W`` as one matmul before the loop (see loophoist)."""
        from .loophoist import hoist_projections

        def make(fn, args, loc):
            self.ctx.loc = loc
            return self.as_node(self.call_primitive(fn, args, {}, None))

        def copy_reread(a):
            copy = Node(a.op, name=a.name, fn=a.fn, value=a.value, base=a.base, path=a.path,
                        attr=a.attr, diff=a.diff)
            copy.meta.update(a.meta)
            return self.ctx.add(copy, a.loc)
        hoist_projections(body, make, copy_reread)

    def _trace_body(self, s, stmts, target, carried, diff, test=None, rows_of=None, lists=(), shapes=None):
        """The body traced once into a graph of its own; (graph, carried values after it)."""
        ctx, env = self.ctx, self.frame.env
        subs = self._sub_state_carried()
        hooks_before = dict(ctx.state.current) if subs else None
        outer_graph = ctx.graph
        body = Graph(f"{outer_graph.name} line {s.lineno}")
        root = getattr(ctx, "root_graph", None)
        ctx.root_graph = root or outer_graph
        ctx.graph = body
        saved_env = dict(env)
        try:
            t = body.add(Node(INPUT, name=target.strip("<>"), diff=False))
            t.meta.update(shape=(), region_input=True, loop_index=test is None)
            env[target] = t
            if rows_of is not None:         # for row in x: row = x[t]
                from .rules.helpers import getitem
                row = self.call_primitive(getitem, [rows_of, t], {}, s.target)
                if isinstance(row, Node) and row.name is None:
                    row.name = s.target.id
                env[s.target.id] = row
            for name, d, shape in zip(carried, diff, shapes or [None] * len(carried)):
                shown = name[len(SUB_PREFIX):-1] if name.startswith(SUB_PREFIX) else name
                n = body.add(Node(INPUT, name=shown, diff=d))
                n.meta.update(region_input=True, shape=shape)
                n.meta["initial"] = saved_env.get(name)     # what the first trip sees (traceinplace)
                env[name] = n
            collectors = [Collector(name) for name in lists]
            env.update((c.name, c) for c in collectors)
            for name, key in subs.items():
                ctx.state.current[key] = env[name]
            self.exec_body(stmts)
            for name, key in subs.items():
                env[name] = ctx.state.current[key]
            if self.frame.returned:
                raise RegionUnsupported("return inside the loop")
            outs = [self.as_node(env[name] if name != GO else self.eval(test[0])) for name in carried]
            if any(len(c.items) != 1 for c in collectors):
                raise RegionUnsupported("a list appended to other than once per trip")
            extra = [self.as_node(c.items[0]) for c in collectors]
        finally:
            if subs:
                ctx.state.current.clear()
                ctx.state.current.update(hooks_before)
            ctx.graph = outer_graph
            if root is None:
                del ctx.root_graph
            env.clear()
            env.update(saved_env)
        body.outputs = outs + extra
        return body, outs


def _regions_allowed(ctx):
    """False in a forward-over-reverse plan (``fc.hvp``, ``fc.hessian``): the backward of a
    loop region has no tangent yet, so the loop is unrolled there, one variant per trip count."""
    return getattr(ctx, "cond_regions", True)


def _shape_of(n):
    from .tracecore import shape_of
    shape = shape_of(n)
    return shape if isinstance(shape, tuple) else None


def _stacked_shape(out):
    """The shape of the stack of a list the loop fills with ``out`` once per trip: the trip
    count (a size of its own), then ``out``'s shape, when known. Every trip's item has that
    shape: it is computed from values whose shapes all trips keep."""
    from .shapeinfer import fresh
    shape = _shape_of(out)
    return None if shape is None else (fresh(),) + shape


def _same_shape(a, b):
    from .shapeinfer import same
    return a is not None and same(a, b)


def _invariant(n, moved, inside):
    """Is ``n`` pure work on values that do not change from trip to trip?"""
    if n.op == INPUT or n.op not in PURE_OPS or n.meta.get("effect") or n.meta.get("region_input"):
        return False
    if n.op == CALL and ((getattr(n.fn, "__module__", "") or "").startswith("numpy.random")
                           or getattr(n.fn, "__flux_impure__", False)):
        return False
    return all(id(a) in moved or id(a) not in inside for a in n.inputs())


def _hoist(body, outer):
    """Move the body's loop-invariant work (pure, reading only values from outside or other
    invariant work) before the loop, into ``outer``: it runs once, not once per trip."""
    inside = set(map(id, body.nodes))
    moved = set()
    for n in body.nodes:
        if _invariant(n, moved, inside) and not any(n is o for o in body.outputs):
            moved.add(id(n))
    # a Param or constant read moves only with work that uses it (the body reads its own)
    used = {id(a) for n in body.nodes if id(n) in moved for a in n.inputs()}
    moved = {id(n) for n in body.nodes if id(n) in moved and (id(n) in used or not is_reread(n))}
    keep = []
    for n in body.nodes:
        if id(n) in moved:
            outer.add(n)
        else:
            keep.append(n)
    if moved:
        body.renumber(keep)


def _drop_unused_reads(body):
    """Drop the body's Param and constant reads nothing in it uses any more (their work was
    hoisted out of the loop)."""
    used = {id(a) for n in body.nodes for a in n.inputs()} | set(map(id, body.outputs))
    kept = [n for n in body.nodes if id(n) in used or not is_reread(n)]
    if len(kept) < len(body.nodes):
        body.renumber(kept)


def _close(body):
    """Make the body graph closed: each outside value it reads becomes an input of its own
    (placed first, SSA order kept). Returns the outside values, in the inputs' order."""
    captured = []
    close_into(body, captured)
    return captured


def close_into(body, captured):
    """Close ``body`` as :func:`_close` does, its outside values appended to ``captured`` (a
    list shared by a cond region's two branches, each value once). Returns the positions in
    ``captured`` of the body's new inputs, in order."""
    inside = set(map(id, body.nodes))
    inputs, positions = {}, []
    where = {id(c): j for j, c in enumerate(captured)}

    def local(a):
        if id(a) in inside:
            return a
        if id(a) not in inputs:
            if is_reread(a):        # a constant or Param: read again inside the body
                copy = Node(a.op, name=a.name, fn=a.fn, value=a.value, base=a.base, path=a.path,
                            attr=a.attr, diff=a.diff)
                copy.meta.update(a.meta)
            else:
                copy = Node(INPUT, name=a.name or "t", diff=a.diff)
                copy.meta.update(region_input=True, shape=a.meta.get("shape"),
                                 complex=a.meta.get("complex"))
                if id(a) not in where:
                    where[id(a)] = len(captured)
                    captured.append(a)
                positions.append(where[id(a)])
            copy.loc = a.loc
            inputs[id(a)] = copy
        return inputs[id(a)]

    for n in body.nodes:
        n.args = tuple(local(a) for a in n.args)
        n.kwargs = {k: local(v) for k, v in n.kwargs.items()}
    body.outputs = [local(o) for o in body.outputs]
    new = list(inputs.values())
    own_inputs = [n for n in body.nodes if n.op == INPUT]
    rest = [n for n in body.nodes if n.op != INPUT]
    body.renumber(own_inputs + [c for c in new if c.op == INPUT] + [c for c in new if c.op != INPUT] + rest)
    return positions
