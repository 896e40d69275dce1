"""Structured arguments (pytrees): tuples, lists and dicts of arrays, nested.

``flatten(tree)`` gives the leaves in a fixed order and a hashable :class:`TreeDef`;
``unflatten(treedef, leaves)`` rebuilds the structure. Dict keys are taken in sorted
order (JAX's convention; keys that cannot be compared are ordered by type name and
``repr``), so ``{"b": .., "a": ..}`` and ``{"a": .., "b": ..}`` have one treedef and
share compiled code. Exact ``tuple``, ``list`` and ``dict`` and named tuples are
containers; anything else (arrays, floats, models, ``None``, ints, subclasses of dict) is a leaf.

>>> leaves, tree = flatten({"W": 1.0, "bs": (2.0, [3.0])})
>>> leaves, tree
([1.0, 2.0, 3.0], {'W': *, 'bs': (*, [*])})
>>> unflatten(tree, [10, 20, 30])
{'W': 10, 'bs': (20, [30])}
>>> leaf_names("p", tree)
['p_W', 'p_bs_0', 'p_bs_1_0']
"""
from __future__ import annotations

import re

import numpy as np

CONTAINERS = (tuple, list, dict)


class TreeDef:
    """The shape of a structure: ``kind`` is ``"leaf"``, ``"tuple"``, ``"list"``, ``"dict"`` or
    ``"namedtuple"`` (its class in ``cls``); ``keys`` the (sorted) dict keys or the field names;
    ``children`` one TreeDef per item. Hashable."""
    __slots__ = ("kind", "keys", "children", "n_leaves", "cls", "_key")

    def __init__(self, kind, children=(), keys=(), cls=None):
        self.kind, self.children, self.keys, self.cls = kind, tuple(children), tuple(keys), cls
        self.n_leaves = 1 if kind == "leaf" else sum(c.n_leaves for c in self.children)
        self._key = (kind, cls, self.keys, tuple(c._key for c in self.children))

    def __eq__(self, other):
        return isinstance(other, TreeDef) and self._key == other._key

    def __hash__(self):
        return hash(self._key)

    def __repr__(self):
        if self.kind == "leaf":
            return "*"
        items = [repr(c) for c in self.children]
        if self.kind == "dict":
            return "{" + ", ".join(f"{k!r}: {c}" for k, c in zip(self.keys, items)) + "}"
        if self.kind == "namedtuple":
            fields = ", ".join(f"{k}={c}" for k, c in zip(self.keys, items))
            return f"{self.cls.__module__}.{self.cls.__qualname__}({fields})"
        if self.kind == "tuple":
            return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
        return "[" + ", ".join(items) + "]"


LEAF = TreeDef("leaf")


def is_container(x):
    return type(x) in CONTAINERS or is_namedtuple(x)


def is_namedtuple(x):
    t = type(x)
    return issubclass(t, tuple) and t is not tuple and hasattr(t, "_fields") and hasattr(t, "_make")


def sorted_keys(d):
    """The keys of ``d`` in the order their values are flattened."""
    try:
        return sorted(d)
    except TypeError:
        return sorted(d, key=lambda k: (type(k).__name__, repr(k)))


def flatten(tree):
    """``(leaves, treedef)``: the leaves depth first (dict values in sorted key order)."""
    leaves = []
    return leaves, _flatten(tree, leaves)


def _flatten(x, leaves):
    t = type(x)
    if t is dict:
        keys = sorted_keys(x)
        return TreeDef("dict", [_flatten(x[k], leaves) for k in keys], keys)
    if t is tuple or t is list:
        return TreeDef(t.__name__, [_flatten(v, leaves) for v in x])
    if is_namedtuple(x):
        return TreeDef("namedtuple", [_flatten(v, leaves) for v in x], t._fields, t)
    leaves.append(x)
    return LEAF


def unflatten(treedef, leaves):
    """The structure ``treedef`` with ``leaves`` (an iterable, in ``flatten``'s order) put in."""
    it = iter(leaves)
    out = build(treedef, lambda: next(it), tuple, list, dict, lambda cls, items: cls(*items))
    if next(it, _END) is not _END:
        raise ValueError(f"too many leaves for {treedef!r}")
    return out


_END = object()


def build(treedef, leaf, make_tuple, make_list, make_dict, make_namedtuple):
    """Walk ``treedef`` bottom-up: ``leaf()`` gives the next leaf; ``make_tuple(items)``,
    ``make_list(items)``, ``make_dict(pairs)`` and ``make_namedtuple(cls, items)`` build the
    containers (symbolic ones too)."""
    kind = treedef.kind
    if kind == "leaf":
        return leaf()
    items = [build(c, leaf, make_tuple, make_list, make_dict, make_namedtuple) for c in treedef.children]
    if kind == "dict":
        return make_dict(list(zip(treedef.keys, items)))
    if kind == "namedtuple":
        return make_namedtuple(treedef.cls, items)
    return make_tuple(items) if kind == "tuple" else make_list(items)


def leaf_paths(treedef, prefix=()):
    """The path (keys and indices) of every leaf, in order."""
    if treedef.kind == "leaf":
        return [prefix]
    keys = treedef.keys if treedef.kind in ("dict", "namedtuple") else range(len(treedef.children))
    return [p for k, c in zip(keys, treedef.children) for p in leaf_paths(c, prefix + (k,))]


def leaf_names(name, treedef, taken=()):
    """Identifiers for the leaves of argument ``name``: ``abc_0``, ``params_W``, ``p_bs_1_0``;
    made unique against each other and against ``taken``."""
    used = set(taken)
    out = []
    for path in leaf_paths(treedef):
        base = "_".join([name] + [_ident(k) for k in path])
        new, i = base, 1
        while new in used:
            new, i = f"{base}_{i}", i + 1
        used.add(new)
        out.append(new)
    return out


def _ident(key):
    text = re.sub(r"\W+", "_", str(key)).strip("_")
    return text or "k"


def is_static_leaf(x):
    """A leaf the compiler bakes in as a constant (None, ints, strings, ...), not an input."""
    if isinstance(x, (np.ndarray, np.generic, float, complex)) and not isinstance(x, bool):
        return False
    return not (hasattr(x, "__array__") or getattr(type(x), "__flux_net__", False))


def is_structured(x):
    """A tuple, list or dict with at least one array, float or model leaf: its leaves become
    separate inputs of the generated code. (A structure of constants stays one constant.)"""
    return is_container(x) and _has_input_leaf(x)


def _has_input_leaf(x):
    t = type(x)
    if t is dict:
        return any(_has_input_leaf(v) for v in x.values())
    if t is tuple or t is list or is_namedtuple(x):
        return any(_has_input_leaf(v) for v in x)
    return not is_static_leaf(x)


def split_args(args):
    """``(flat, trees)``: structured arguments replaced by their leaves; ``trees[i]`` is the
    TreeDef of argument ``i`` or None for an ordinary one."""
    if all(type(a) is np.ndarray for a in args):      # the common call: arrays only
        return tuple(args), [None] * len(args)
    flat, trees = [], []
    for a in args:
        if is_structured(a):
            leaves, tree = flatten(a)
            flat.extend(leaves)
            trees.append(tree)
        else:
            flat.append(a)
            trees.append(None)
    return tuple(flat), trees


def group(trees, flat):
    """One entry per argument from the per-leaf values ``flat`` (as ``split_args`` laid them
    out): a list of leaf values for a structured argument, the value itself otherwise."""
    out, i = [], 0
    for tree in trees:
        n = 1 if tree is None else tree.n_leaves
        out.append(flat[i] if tree is None else list(flat[i:i + n]))
        i += n
    if i != len(flat):
        raise ValueError(f"expected {i} values, got {len(flat)}")
    return out


def tree_map(fn, tree):
    """``fn`` applied to every leaf, the structure (and dict key order) kept."""
    if type(tree) is dict:
        return {k: tree_map(fn, v) for k, v in tree.items()}
    if type(tree) is tuple or type(tree) is list:
        return type(tree)(tree_map(fn, v) for v in tree)
    if is_namedtuple(tree):
        return type(tree)(*[tree_map(fn, v) for v in tree])
    return fn(tree)


def leaf_grad(x, g):
    """The gradient to hand back for leaf ``x`` given what backward computed (``g``, None
    where nothing flowed): a float for a float, an array of ``x``'s shape and dtype for a
    float array (zeros when nothing flowed), None for anything else."""
    if isinstance(x, (float, np.floating)) and not isinstance(x, np.ndarray):
        return float(np.real(np.sum(g))) if g is not None else 0.0
    if not (isinstance(x, np.ndarray) and x.dtype.kind in "fc"):
        return g if hasattr(x, "__array__") and g is not None else None
    if g is None:
        return np.zeros_like(x)
    g = np.asarray(g)
    if g.shape != x.shape:
        g = _unbroadcast(g, x.shape)
    if x.dtype.kind == "f" and g.dtype.kind == "c":
        g = np.real(g)          # autograd's convention: a real input's gradient is the real part
    return g.astype(x.dtype, copy=False)


def _unbroadcast(g, shape):
    """Sum ``g`` down to ``shape`` (the reverse of broadcasting)."""
    lead = g.ndim - len(shape)
    if lead > 0:
        g = g.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def in_order_of(like, tree):
    """``tree`` with every dict's keys in the insertion order of the matching dict in ``like``
    (a gradient lists its entries as the argument did)."""
    if type(like) is dict and type(tree) is dict:
        return {k: in_order_of(like[k], tree[k]) for k in like}
    if type(like) in (tuple, list) and type(tree) is type(like):
        return type(tree)(in_order_of(a, b) for a, b in zip(like, tree))
    if is_namedtuple(like) and type(tree) is type(like):
        return type(tree)(*[in_order_of(a, b) for a, b in zip(like, tree)])
    return tree
