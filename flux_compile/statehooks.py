"""Recurrent state at compile time: state attributes become inputs and outputs.

An attribute assigned inside ``forward`` (``self.h = ...``) is state. While one step is
traced, :class:`StateHooks` turns each state attribute into an extra input of the step
(the state before it) and an extra output (the state after it). The run-time side
(current state, links between steps) is :mod:`flux_compile.runstate`.
"""
from __future__ import annotations

import ast
import dis
import types

from .errors import CompileError
from .frontend import Seq, Static, get_source
from .ir import INPUT, Node, is_leaf
from .shapeinfer import symbolic_shape


def state_names(cls):
    """Attributes assigned as ``self.NAME = ...`` (or ``+=``) in ``forward``, in order.
    Kept on the class (it goes when the class goes), per code of ``forward``."""
    fn = getattr(cls, "forward", None)
    code = getattr(fn, "__code__", None)
    known = cls.__dict__.get("_fc_state_names")
    if known is None or known[0] is not code:
        known = (code, _scan_state_names(fn))
        type.__setattr__(cls, "_fc_state_names", known)
    return known[1]


def _scan_state_names(fn):
    if fn is None:
        return []
    if _assigns_no_attribute(getattr(fn, "__code__", None)):
        return []           # what the source scan below finds, without reading the file
    try:
        tree = get_source(fn).tree
    except CompileError:
        return []
    selfname = tree.args.args[0].arg if tree.args.args else "self"
    names = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for t in targets:
            for sub in ast.walk(t):
                if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) \
                        and sub.value.id == selfname and sub.attr not in names:
                    names.append(sub.attr)
    return names


# What an assignment to an attribute or an item compiles to; POP_TOP ends a bare annotated
# target (``self.h: float`` evaluates ``self`` and drops it). None of them: no such statement.
_SUSPECT = frozenset(dis.opmap[name] for name in ("STORE_ATTR", "STORE_SUBSCR", "STORE_SLICE", "POP_TOP")
                     if name in dis.opmap)


def _bytecode_may_assign(code):
    """Could ``code`` (or a function nested in it) hold ``obj.NAME = ...``, ``obj[i] = ...``,
    ``+=`` or a bare annotated target? Any store into an attribute or item, or any value
    dropped, says yes (the source scan then decides)."""
    if any(ins.opcode in _SUSPECT for ins in dis.get_instructions(code)):
        return True
    return any(_bytecode_may_assign(c) for c in code.co_consts if isinstance(c, types.CodeType))


def _probe_attribute(self):
    self.h: float


def _probe_item(self, i):
    self.h[i + 1]: float


# else this Python compiles bare annotations to nothing: always read the source
_BYTECODE_EXACT = _bytecode_may_assign(_probe_attribute.__code__) and _bytecode_may_assign(_probe_item.__code__)


def _assigns_no_attribute(code):
    """True when ``forward``'s code surely assigns no attribute (most models): its state names
    are then known without reading and parsing its source file."""
    return _BYTECODE_EXACT and isinstance(code, types.CodeType) and not _bytecode_may_assign(code)


class StateHooks:
    """Reads and writes of state attributes while one step is being traced."""

    def __init__(self, names, inst, specs=None):
        self.names = names
        self.inst = inst
        self.specs = specs
        self.inputs = {}
        self.current = {}

    def begin(self, b):
        g = b.ctx.graph
        for i, name in enumerate(self.names):
            n = g.add(Node(INPUT, name=name, diff=True))
            n.meta["shape"] = symbolic_shape(name, self.specs[i]) if self.specs else None
            n.meta["state"] = name
            self.inputs[name] = n

    def read(self, b, name, e):
        if name in self.current:
            return self.current[name]
        if name in self.inputs:
            return self.inputs[name]
        return None

    def write(self, b, name, value, e):
        if isinstance(value, Seq) or not isinstance(value, (Node, Static)):
            b.error(f"state attribute self.{name} must hold one array", e,
                    hint="keep one array per state attribute (self.h = ..., self.c = ...)")
        node = b.as_node(value, e)
        if not is_leaf(node) and (node.name is None or node.meta.get("anon")):
            node.name = name
            node.meta.pop("anon", None)
        self.current[name] = node

    def end(self, b):
        outs = []
        for name in self.names:
            out = self.current.get(name, self.inputs[name])
            outs.append(out)
        return outs


def state_factory(cls, inst, specs=None):
    names = state_names(cls)
    if not names:
        return None
    return lambda: StateHooks(names, inst, specs)


class SubStateHooks(StateHooks):
    """The recurrent state of sub-models inlined into a caller (``fc.unroll``'s time loop).

    ``keys`` are ``(path, attr)`` pairs: ``(("model",), "h")`` is ``self.model.h``. Each is an
    extra input of the caller (the state before the call) and an extra output (after it);
    reads and writes of ``self.h`` in the inlined sub-model at ``path`` go through here, and a
    loop region carries them from trip to trip (traceloop.py)."""

    inline_stateful = True

    def __init__(self, keys, specs=None):
        super().__init__([sub_state_name(p, a) for p, a in keys], None, specs)
        self.keys = list(keys)

    def begin(self, b):
        super().begin(b)
        self.inputs = {key: self.inputs[name] for key, name in zip(self.keys, self.names)}

    def read(self, b, name, e):
        return None         # the caller itself has no state of its own

    def read_sub(self, path, attr):
        key = (tuple(path), attr)
        return self.current.get(key, self.inputs.get(key))

    def has_sub(self, path, attr):
        return (tuple(path), attr) in self.inputs

    def write_sub(self, b, path, attr, value, e):
        StateHooks.write(self, b, attr, value, e)
        self.current[(tuple(path), attr)] = self.current.pop(attr)

    def end(self, b):
        return [self.current.get(key, self.inputs[key]) for key in self.keys]


def sub_state_name(path, attr):
    """The input name of sub-model state ``self.<path>.<attr>``: ``layers_0_h`` for
    ``self.model.layers[0].h`` (the leading step model's field is dropped)."""
    parts = [str(p) for p in path[1:]] + [attr]
    return "_".join(parts)
