"""The functional interface: ``source``, ``graph``, ``grad``, ``update``, ``shapes``.

>>> import numpy as np, flux_compile as fc
>>> def loss(W, x):
...     return np.sum(np.tanh(x @ W) ** 2)
>>> value, (dW, dx) = fc.grad(loss, np.ones((3, 2)) * 0.1, np.ones((4, 3)))
>>> dW.shape, dx.shape
((3, 2), (4, 3))
"""
from __future__ import annotations

import numpy as np

from . import pytree
from .cache import compile_function, compile_model
from .errors import CompileError
from .ir import CONST
from .richtext import SourceText
from .params import Param, is_model, named_params, path_str
from .runstate import restore_states, snapshot_states

WHICH = ("forward", "backward", "update", "all", "forward_train")


def _compiled(m_or_f, args=None):
    if is_model(m_or_f) or (isinstance(m_or_f, type) and getattr(m_or_f, "__flux_net__", False)):
        return compile_model(m_or_f)
    if args is None:
        raise TypeError("fc.source/fc.graph of a plain function need example arguments: "
                        "fc.source(f, 'backward', args=(x,))")
    return compile_function(m_or_f, args)


def source(m_or_cls, which="backward", inputs=None, args=None):
    """Generated source of a model, model class or function, as a string.

    ``which`` is ``"forward"``, ``"backward"``, ``"update"`` (models only) or ``"all"``.
    ``inputs=(x, ...)``: the variant compiled for those inputs (compiled if needed; for a
    model whose code depends on the data, the variant those values take). Without
    ``inputs``, a model shows the variant that ran last; when it has several, the header
    comment says which. ``args=`` is an alias of ``inputs=``.

    >>> import numpy as np, flux_compile as fc
    >>> m = fc.Dense(3, 2)
    >>> print(fc.source(m, "forward", inputs=(np.ones((4, 3)),)).splitlines()[1])
    # the variant for inputs x: float64[4, 3]
    """
    if getattr(m_or_cls, "__fc_backend__", False):       # a model moved by fc.to: its torch/JAX code
        return m_or_cls._source(which)
    if hasattr(m_or_cls, "step_source"):        # fc.train_step: its one module
        return SourceText(m_or_cls.step_source(inputs if inputs is not None else args))
    shown = getattr(m_or_cls, "__fc_source__", None)
    if shown is not None and not isinstance(m_or_cls, type):    # a derived function (fc.gradient(f))
        return SourceText(shown(inputs if inputs is not None else args))
    if which not in WHICH:
        raise ValueError(f"which must be one of {', '.join(WHICH[:4])}, not {which!r}")
    if inputs is None:
        inputs = args
    elif args is not None:
        raise TypeError("fc.source: give inputs= (or its alias args=), not both")
    if inputs is not None and not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)
    if which == "update":
        if isinstance(m_or_cls, type):
            raise TypeError("the update step is generated per model instance: pass an instance")
        from .updatestep import update_source
        return SourceText(update_source(m_or_cls))
    instance = is_model(m_or_cls) and not isinstance(m_or_cls, type)
    note = None
    if instance:
        c, note = _model_variant(m_or_cls, inputs)
    else:
        c = _compiled(m_or_cls, inputs)
        if c.guarded and inputs is not None and not is_model(m_or_cls):
            c, _ = forward_function(c, m_or_cls, inputs)      # the variant for these arguments' path
    if which == "all":
        text = c.source
        if instance:
            from .updatestep import update_source
            text = text.rstrip("\n") + "\n\n" + update_source(m_or_cls)
        return SourceText(_with_note(text, note))
    text = c.sections[which]
    step = getattr(c, "step_model", None)
    if step is not None and which in ("forward", "backward"):
        inner = source(step, which)
        text = f"{text.rstrip()}\n\n# the step, {type(step).__name__}.{which}:\n{inner}"
    return SourceText(_with_note(text, note))


def _model_variant(m, inputs):
    """``(compiled, note)``: the variant for ``inputs`` (run once to find the path of
    data-dependent code; state and "last ran" left as they were), else the one that ran
    last. ``note`` names the variant when the model has or may have several, else None."""
    from .cache import cached_variant, compile_model
    from .compiler import input_key
    if inputs is None:
        try:
            c = compile_model(m)
        except CompileError as e:
            if "needs example inputs" in str(e.msg):
                e.hint = f"{e.hint}\nfc.source(m, which, inputs=(x,)) shows the code for inputs x" \
                    if e.hint else "fc.source(m, which, inputs=(x,)) shows the code for inputs x"
            raise
        ikey = m.__dict__.get("_fc_last") if cached_variant(m, None, last=True) is c else None
        several = c.guarded or len(m.__dict__.get("_fc_compiled") or ()) > 1
        if not several:
            return c, None
        if ikey is None:
            return c, "no call yet: generic code; fc.source(m, which, inputs=(x,)) shows what runs"
        return c, "the variant that ran last, for inputs " + _describe_key(c, ikey)
    snap, last = snapshot_states(m), m.__dict__.get("_fc_last")
    try:
        from .runstate import reset
        reset(m)
        m(*inputs)
        ikey = m.__dict__.get("_fc_last")
        c = cached_variant(m, ikey) or compile_model(m, None)
    finally:
        restore_states(snap)
        if last is None:
            m.__dict__.pop("_fc_last", None)
        else:
            m.__dict__["_fc_last"] = last
    names = list(c.input_names) or [f"x{i}" for i in range(len(inputs))]
    described = ", ".join(f"{n}: {describe_value(np.asarray(x) if isinstance(x, Param) else x)}"
                          for n, x in zip(names, inputs))
    return c, f"the variant for inputs {described}"


def _describe_key(c, ikey):
    """``x: 2-d float`` for each input of an input key (rank and float-ness)."""
    names = list(c.input_names) or [f"x{i}" for i in range(len(ikey))]
    parts = []
    for name, k in zip(names, ikey):
        if isinstance(k, tuple) and len(k) >= 2 and isinstance(k[0], int):
            parts.append(f"{name}: {k[0]}-d {'float' if k[1] else 'integer'}")
        else:
            parts.append(f"{name}: {k[0] if isinstance(k, tuple) else k}")
    return ", ".join(parts)


def _with_note(text, note):
    """``text`` with ``# note`` in its header: after the ``# generated by`` line, or first."""
    if not note:
        return text
    lines = text.split("\n")
    at = 1 if lines and lines[0].startswith("# generated by") else 0
    return "\n".join(lines[:at] + [f"# {note}"] + lines[at:])


def graph(m_or_cls, args=None, which="forward"):
    """The IR graph (printable; ``.to_dot()``): the inference forward, or ``which="train"`` for
    the joint forward + backward graph.

    >>> import flux_compile as fc
    >>> g = fc.graph(fc.Dense(3, 2))
    >>> "matmul" in str(g), fc.graph(fc.Dense(3, 2)).to_dot().startswith("digraph")
    (True, True)
    """
    c = _compiled(m_or_cls, args)
    if c.graph is None and c.rebuild is not None:
        c = c.rebuild()
    return c.graph if which == "forward" else c.train_graph


# --------------------------------------------------------------------------------
# gradients


class _GradCapture:
    """Zero every Param of some models, collect what a backward pass adds, restore."""

    def __init__(self, models):
        self.entries = []
        seen = set()
        for m in models:
            for path, p in named_params(m):
                if id(p) not in seen:
                    seen.add(id(p))
                    self.entries.append((m, path, p))

    def __enter__(self):
        self.saved = [p.grad.copy() for _, _, p in self.entries]
        for _, _, p in self.entries:
            p.grad[...] = 0
        return self

    def collect(self, model):
        return {path: p.grad.copy() for m, path, p in self.entries if m is model and p.trainable}

    def __exit__(self, *exc):
        for (_, _, p), g in zip(self.entries, self.saved):
            p.grad[...] = g
        return False


def _ones_seed(out):
    if isinstance(out, tuple):
        return tuple(_ones_seed(o) for o in out)
    if isinstance(out, (np.ndarray, np.generic)):
        return np.ones_like(out)
    if isinstance(out, float):
        return 1.0
    return None


def grad(f, *args):
    """``(value, grads)``: one gradient per argument of ``f``.

    ``f`` is a plain function (compiled like ``forward``) or a model. An array
    argument gets an array; a model argument gets a dict ``{field_path: array}``
    of its trainable Params; a tuple, list or dict of them (nested) gets the same
    structure of gradients (see :mod:`flux_compile.pytree`). For a model ``f``, the first entry is the model's
    own dict, then one per input. A non-scalar value is treated as its sum.
    Param gradients are not left accumulated: ``grad`` is functional.

    >>> import numpy as np, flux_compile as fc
    >>> def f(x, w): return ((x @ w) ** 2).sum()
    >>> value, (dx, dw) = fc.grad(f, np.ones((1, 2)), np.array([[1.0], [2.0]]))
    >>> value, dx, dw.ravel()
    (np.float64(9.0), array([[ 6., 12.]]), array([6., 6.]))
    >>> _, (dm, dx) = fc.grad(fc.Dense(2, 1), np.ones((1, 2)))      # a model: its dict first
    >>> sorted(dm)
    [('W',), ('b',)]
    """
    if is_model(f):
        models = [f] + _models_in(args)
        with _GradCapture(models) as cap:
            out, back = f._pullback(*args)
            gin = back(_ones_seed(out))
            gin = (gin,) if len(args) == 1 else tuple(gin)
            grads = (cap.collect(f),) + tuple(_arg_grad(a, g, cap) for a, g in zip(args, gin))
        return out, grads
    args = as_numpy_scalars(args)
    c = compile_function(f, args)
    flat, trees = pytree.split_args(args)
    with _GradCapture(_models_in(args)) as cap:
        c, (out, saved) = forward_function(c, f, args, flat)
        try:
            gin = c.backward(saved, _ones_seed(out))
        except Exception as e:
            _reraise(c, e, "backward")
        gin = (gin,) if len(flat) == 1 else tuple(gin)
        grads = tuple(_arg_grad(a, g, cap) if t is None else _tree_grad(a, t, xs, g, cap) for a, t, xs, g in
                      zip(args, trees, pytree.group(trees, flat), pytree.group(trees, gin)))
    return out, grads


def _tree_grad(a, tree, leaves, grads, cap):
    """The gradient of structured argument ``a`` from its leaves' gradients."""
    return pytree.in_order_of(a, pytree.unflatten(tree, map(_arg_grad, leaves, grads, [cap] * len(leaves))))


def _models_in(args):
    """The models among ``args``, also inside structured arguments."""
    return [x for a in args for x in (pytree.flatten(a)[0] if pytree.is_container(a) else [a]) if is_model(x)]


def as_numpy_scalars(args):
    """The Python floats among ``args`` (also inside tuples, lists and dicts) as NumPy scalars,
    which have ``.shape`` and ``.dtype``, of the dtype the float arrays among ``args`` promote to
    (float64 when there are none). NumPy treats a Python float as "weak" (``float32 array * 0.5``
    stays float32); a float64 scalar would not be, so a float32 program would turn float64."""
    leaves = pytree.flatten(args)[0]
    floats = [x.dtype for x in leaves if isinstance(x, (np.ndarray, np.floating)) and x.dtype.kind == "f"]
    dtype = np.result_type(*floats) if floats else np.dtype(np.float64)
    return pytree.tree_map(lambda x: dtype.type(x) if type(x) is float else x, tuple(args))


def forward_function(c, f, args, flat=None):
    """Run a compiled function's training forward (the variant for this call's path);
    ``flat``: ``args`` with structured ones replaced by their leaves, when known."""
    from .cache import run_guarded
    from .errors import Retrace
    flat = pytree.split_args(args)[0] if flat is None else flat

    def call(variant):
        try:
            return variant.forward_train(*flat, *variant.read_free(f, args))
        except Retrace:
            raise
        except Exception as e:
            _reraise(variant, e, "forward")
    return run_guarded(c, call, lambda: compile_function(f, args, fresh=True), f, args)


def _reraise(c, e, direction):
    new = c.translate(e, direction)
    if new is None or new is e:
        raise e
    raise new from e


def _arg_grad(a, g, cap):
    """The gradient for argument ``a`` from the raw ``g`` (None where nothing flowed): zeros
    for a float, the structure of a structured argument, the Param dict of a model."""
    if pytree.is_structured(a):
        leaves, tree = pytree.flatten(a)
        lg = pytree.flatten(g)[0] if g is not None else [None] * len(leaves)
        return _tree_grad(a, tree, leaves, lg, cap)
    if pytree.is_container(a):          # a structure of constants: its structure, no gradients
        return pytree.tree_map(lambda _: None, a)
    if is_model(a):
        return cap.collect(a)
    if isinstance(a, Param):
        return g
    if isinstance(a, (float, np.floating, np.ndarray)):
        return pytree.leaf_grad(a, g)
    return None


def update(m, grads, fn):
    """Apply ``fn(value, grad) -> new value`` to every field path in ``grads`` (Yota's ``update!``).

    >>> import numpy as np, flux_compile as fc
    >>> m = fc.Dense(2, 1)
    >>> _, (dm, _) = fc.grad(m, np.ones((1, 2)))
    >>> before = m.W.value.copy()
    >>> fc.update(m, dm, lambda value, grad: value - 0.1 * grad)
    >>> np.allclose(m.W.value, before - 0.1 * dm[("W",)])
    True
    """
    from .updatestep import update_with
    return update_with(m, grads, fn)


# --------------------------------------------------------------------------------
# shapes


def shapes(m, *inputs):
    """The model's inference graph with every value's shape and dtype (early Flux's ``@shapes``).

    >>> import numpy as np, flux_compile as fc
    >>> print(fc.shapes(fc.Dense(3, 2), np.ones((8, 3))))   # doctest: +ELLIPSIS
    graph Dense(x: float64[8, 3]):
    ...
      %4 y = np.add(%2, %3 b)                            # float64[8, 2]
      return %4 y
    """
    from .interp import run_graph
    from .runstate import current_state
    from .statehooks import state_names
    step = getattr(m, "model", None) if hasattr(type(m), "_fc_template") else None
    if step is not None:            # an unrolled model: the step's graph for the first time index
        first = tuple(np.asarray(x)[:, 0] for x in inputs)
        return SourceText(f"# {type(m).__name__}: {m!r}; one step at time index 0:\n" + shapes(step, *first))
    names = state_names(type(m))
    if names:
        inputs = tuple(inputs) + tuple(current_state(m, names)[0])
    c = compile_model(m, inputs)
    if c.graph is None and c.rebuild is not None:
        c = c.rebuild()
    snap = snapshot_states(m)
    try:
        values = run_graph(c.graph, m, tuple(pytree.split_args(inputs)[0]) + tuple(c.read_free(m, ())))
    finally:
        restore_states(snap)
    ann = {}
    consts = {n.id for n in c.graph.nodes if n.op == CONST}
    for nid, v in values.items():
        if nid not in consts:
            ann[nid] = describe_value(v)
    return SourceText(c.graph.format(shapes=ann))


def describe_value(v):
    if isinstance(v, (np.ndarray, np.generic)):
        return f"{v.dtype}[{', '.join(map(str, np.shape(v)))}]"
    if isinstance(v, tuple):
        return "(" + ", ".join(describe_value(x) for x in v) + ")"
    if isinstance(v, (int, float, bool)):
        return f"{type(v).__name__} {v!r}"
    return type(v).__name__


__all__ = ["source", "graph", "grad", "update", "shapes", "path_str"]
