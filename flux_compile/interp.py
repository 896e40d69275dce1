"""The one interpreter of the IR: evaluates graph nodes on real values.

Two users, one dispatch point (:meth:`Interpreter.run_node`, which asks the op
table :data:`flux_compile.ir.OPS` how each op evaluates):

* ``fc.shapes`` runs a whole graph (:func:`run_graph`); errors propagate.
* Tracing with the actual arguments (every real call does) decides data-dependent
  control flow: an ``if``, ``while``, ``and``/``or`` or a loop bound that depends on
  array data is decided by evaluating just the nodes it needs, lazily and memoised
  (:class:`Concrete`). A value it cannot know (an input not given, an error the real
  run will raise at the user's line) is :data:`UNKNOWN`. The taken path is compiled,
  and a *guard* in the generated code checks the same decision on every later call::

      # line 5: if a > 0:
      if not a > 0:
          raise Retrace('line 5')

  A failed guard makes the model run (or compile) the variant for the other path;
  each variant is plain straight-line code (like TorchDynamo's guards, unlike Yota's
  silently frozen trace).

Sub-model calls go through ``call_model(target, args)``, given by the caller (the
compiler passes one that keeps recurrent state untouched); by default the target is
called.
"""
from __future__ import annotations

from .ir import op_spec
from .params import get_path

UNKNOWN = object()


class _Unknown(Exception):
    """A value the lenient interpreter cannot know."""


def call_plainly(target, args):
    return target(*args)


class Interpreter:
    """Evaluates nodes on real values: ``self_obj`` for ``self``, ``inputs`` by name.

    ``lenient`` turns a missing value or an exception into :data:`UNKNOWN` (tracing);
    otherwise they propagate (``fc.shapes``). Values are memoised per node id;
    ``inputs`` may grow while a graph is being built."""

    def __init__(self, self_obj, inputs, call_model=None, lenient=False):
        self.self_obj = self_obj
        self.inputs = inputs                # input name -> value
        self.call_target = call_model or call_plainly
        self.lenient = lenient
        self.memo = {}

    # -- what the op table's evaluators ask for --------------------------------
    def input(self, name):
        if self.lenient and name not in self.inputs:
            raise _Unknown(name)
        return self.inputs[name]

    def read(self, base, path):
        obj = self.self_obj if base == "self" else self.inputs.get(base, UNKNOWN)
        if obj is UNKNOWN or obj is None:
            raise _Unknown(base) if self.lenient else KeyError(base)
        return get_path(obj, path)

    def call_model(self, node, args):
        return self.call_target(self.read(node.base, node.path), args)

    # -- the one dispatch point ------------------------------------------------
    def run_node(self, node):
        """The value of ``node`` from its inputs' (memoised) values; UNKNOWN when it has none."""
        spec = op_spec(node.op)
        if spec.evaluate is None or node.meta.get("region_input"):
            return UNKNOWN      # a loop body's input has a value only while the loop runs
        args = [self.value(a) for a in node.args]
        kwargs = {k: self.value(v) for k, v in node.kwargs.items()}
        if not self.lenient:
            return spec.evaluate(node, args, kwargs, self)
        if any(a is UNKNOWN for a in args) or any(v is UNKNOWN for v in kwargs.values()):
            return UNKNOWN
        try:
            return spec.evaluate(node, args, kwargs, self)
        except _Unknown:
            return UNKNOWN
        except Exception:      # noqa: BLE001 - the real run will raise it at the user's line
            return UNKNOWN

    def value(self, node):
        if node not in self.memo:       # keyed by the node itself: loop bodies number from 0 too
            self.memo[node] = self.run_node(node)
        return self.memo[node]

    def run_body(self, body, values):
        """One trip of a loop body: its graph run with its inputs' ``values`` (by node id)."""
        inner = Interpreter(self.self_obj, self.inputs, self.call_target, self.lenient)
        for node in body.inputs:
            inner.memo[node] = values[node.id]
        return [inner.value(o) for o in body.outputs]

    def run(self, graph):
        """Evaluate every node in order; ``{node id: value}`` for the nodes that have one."""
        for n in graph.nodes:
            self.value(n)
        return {k.id: v for k, v in self.memo.items() if v is not UNKNOWN and k.id < len(graph.nodes)
                and graph.nodes[k.id] is k}


class Concrete(Interpreter):
    """The lenient interpreter tracing uses: ``Concrete(self_obj, inputs_by_name, call_model)``."""

    def __init__(self, self_obj, inputs, call_model=None):
        super().__init__(self_obj, inputs, call_model, lenient=True)


def run_graph(graph, self_obj, inputs, call_model=None):
    """Evaluate ``graph`` for ``inputs`` (positional, one per graph input); returns
    ``{node id: value}``."""
    by_name = {n.name: v for n, v in zip(graph.inputs, inputs)}
    return Interpreter(self_obj, by_name, call_model).run(graph)
