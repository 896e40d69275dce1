"""A small interpreter for the IR: runs a graph node by node (``fc.shapes`` uses it)."""
from __future__ import annotations

from .params import get_path


def _base(self_obj, inputs_by_name, base):
    return self_obj if base == "self" else inputs_by_name[base]


def run_graph(graph, self_obj, inputs):
    """Evaluate ``graph`` for ``inputs``; returns ``{node id: value}``."""
    by_name = {n.name: v for n, v in zip(graph.inputs, inputs)}
    env = {}
    for n in graph.nodes:
        op = n.op
        if op == "input":
            env[n.id] = by_name[n.name]
        elif op == "const":
            env[n.id] = n.value
        elif op == "param":
            env[n.id] = get_path(_base(self_obj, by_name, n.base), n.path).value
        elif op == "attr":
            env[n.id] = get_path(_base(self_obj, by_name, n.base), n.path)
        elif op == "call":
            env[n.id] = n.fn(*[env[a.id] for a in n.args], **{k: env[v.id] for k, v in n.kwargs.items()})
        elif op == "getattr":
            env[n.id] = getattr(env[n.args[0].id], n.attr)
        elif op == "pack":
            env[n.id] = tuple(env[a.id] for a in n.args)
        elif op == "item":
            env[n.id] = env[n.args[0].id][n.index]
        elif op == "model":
            target = get_path(_base(self_obj, by_name, n.base), n.path)
            env[n.id] = target(*[env[a.id] for a in n.args])
        elif op == "state":
            env[n.id] = env[n.args[0].id]
    return env
