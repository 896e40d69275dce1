"""Concrete values while tracing: decide data-dependent control flow, guarded.

When the compiler has the actual arguments (every real call does), an ``if``,
``while``, ``and``/``or`` or a loop bound that depends on array data is decided by
evaluating it on those arguments. The taken path is compiled, and a *guard* in the
generated code checks the same decision on every later call::

    # line 5: if a > 0:
    if not a > 0:
        raise Retrace('line 5')

A failed guard makes the model run (or compile) the variant for the other path;
each variant is plain straight-line code (like TorchDynamo's guards, unlike
Yota's silently frozen trace).
"""
from __future__ import annotations

from .params import get_path, is_model

UNKNOWN = object()


class Concrete:
    """Lazily evaluates graph nodes on the real arguments (memoised)."""

    def __init__(self, self_obj, inputs):
        self.self_obj = self_obj
        self.inputs = inputs            # input name -> value
        self.memo = {}

    def value(self, node):
        if node.id in self.memo:
            return self.memo[node.id]
        v = self._eval(node)
        self.memo[node.id] = v
        return v

    def _base(self, base):
        return self.self_obj if base == "self" else self.inputs.get(base, UNKNOWN)

    def _eval(self, n):
        op = n.op
        if op == "input":
            return self.inputs.get(n.name, UNKNOWN)
        if op == "const":
            return n.value
        if op in ("param", "attr"):
            base = self._base(n.base)
            if base is UNKNOWN or base is None:
                return UNKNOWN
            v = get_path(base, n.path)
            return v.value if op == "param" else v
        args = [self.value(a) for a in n.args]
        kwargs = {k: self.value(v) for k, v in n.kwargs.items()}
        if any(a is UNKNOWN for a in args) or any(v is UNKNOWN for v in kwargs.values()):
            return UNKNOWN
        try:
            if op == "call":
                return n.fn(*args, **kwargs)
            if op == "getattr":
                return getattr(args[0], n.attr)
            if op == "pack":
                return tuple(args)
            if op == "item":
                return args[0][n.index]
            if op == "model":
                from .params import restore_states, snapshot_states
                target = get_path(self._base(n.base), n.path)
                if not is_model(target):
                    return target(*args)
                snap = snapshot_states(target)
                try:
                    return target(*args)
                finally:
                    restore_states(snap)
        except Exception:      # noqa: BLE001 - the real run will raise it at the user's line
            return UNKNOWN
        return UNKNOWN
