"""The evaluator's vocabulary: symbolic values, operator tables and the state of one trace.

Every expression evaluates to one of:

* a :class:`~flux_compile.ir.Node`: a run-time value in the graph;
* :class:`Static`: a compile-time Python object (ints, ``None``, functions, ``np``);
* :class:`Seq`: a tuple of values (``(a, b)``, ``self.layers``), unrolled at compile time;
* :class:`SymDict`: a dict argument (``params["W"]``), its keys known at compile time;
* :class:`LocalFunction`, :class:`BoundMethod`, :class:`UserMethod`: callables before the call.
"""
from __future__ import annotations

import ast
import operator
import types

import numpy as np

from . import guards, shapeinfer
from .ir import CONST, INPUT, Node

# --------------------------------------------------------------------------
# values

class Static:
    """A compile-time constant; ``src`` is the guards path it was read from (None: a literal
    or a value computed from other constants)."""
    __slots__ = ("value", "src", "parts")

    def __init__(self, value, src=None, parts=None):
        self.value = value
        self.src = src
        self.parts = parts      # a tuple literal's items, when some were read from outside

    def __repr__(self):
        return f"Static({self.value!r})"


class Seq:
    """A tuple of values known element by element at compile time."""
    __slots__ = ("items", "sym", "kind")

    def __init__(self, items, kind=None):
        self.items = list(items)
        self.sym = None         # the symbolic shape, when this is some x.shape
        self.kind = kind        # tuple, list or the named tuple class of a structured argument, else None


class SymDict:
    """A dict whose keys are known at compile time and whose values are values (a structured
    argument such as ``params``: ``params["W"]``, ``.items()``, ``len``, iteration)."""
    __slots__ = ("items",)

    def __init__(self, pairs):
        self.items = dict(pairs)


DICT_METHODS = ("items", "keys", "values", "get")


def structured(treedef, leaves):
    """The symbolic value of a structured argument: Seq / SymDict around ``leaves`` (one value
    per leaf of ``treedef``); a part made only of constants is one Static."""
    from .pytree import build

    def seq(kind):
        return lambda items: Static(kind(v.value for v in items)) \
            if all(isinstance(v, Static) for v in items) else Seq(items, kind)

    def mapping(pairs):
        if all(isinstance(v, Static) for _, v in pairs):
            return Static({k: v.value for k, v in pairs})
        return SymDict(pairs)

    def record(cls, items):
        return Static(cls(*[v.value for v in items])) if all(isinstance(v, Static) for v in items) \
            else Seq(items, cls)
    it = iter(leaves)
    return build(treedef, lambda: next(it), seq(tuple), seq(list), mapping, record)


class LocalFunction:
    """A ``def`` inside a compiled function: inlined where it is called."""
    __slots__ = ("fdef", "frame", "defaults", "kwdefaults")

    def __init__(self, fdef, frame, defaults, kwdefaults):
        self.fdef, self.frame, self.defaults, self.kwdefaults = fdef, frame, defaults, kwdefaults


class BoundMethod:
    """``x.sum`` before it is called."""
    __slots__ = ("node", "name")

    def __init__(self, node, name):
        self.node, self.name = node, name


class UserMethod:
    """``self.helper`` where ``helper`` is an ordinary method of the model's class."""
    __slots__ = ("selfval", "fn", "path")

    def __init__(self, selfval, fn, path=None):
        self.selfval, self.fn, self.path = selfval, fn, path


# --------------------------------------------------------------------------


# tables

BINOPS = {
    ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide,
    ast.Pow: np.power, ast.MatMult: np.matmul, ast.FloorDiv: np.floor_divide, ast.Mod: np.mod,
}
PYOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.Pow: operator.pow, ast.MatMult: operator.matmul, ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod, ast.BitAnd: operator.and_, ast.BitOr: operator.or_,
    ast.BitXor: operator.xor, ast.LShift: operator.lshift, ast.RShift: operator.rshift,
}
CMPOPS = {
    ast.Gt: np.greater, ast.GtE: np.greater_equal, ast.Lt: np.less, ast.LtE: np.less_equal,
    ast.Eq: np.equal, ast.NotEq: np.not_equal,
}
PYCMP = {
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Is: operator.is_, ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}
BITWISE = {ast.BitAnd: np.logical_and, ast.BitOr: np.logical_or, ast.BitXor: np.logical_xor}

# array methods → NumPy functions (x.sum(...) is np.sum(x, ...))
METHODS = {
    "sum": np.sum, "mean": np.mean, "prod": np.prod, "max": np.max, "min": np.min,
    "var": np.var, "std": np.std, "cumsum": np.cumsum, "cumprod": np.cumprod,
    "reshape": np.reshape, "transpose": np.transpose, "swapaxes": np.swapaxes,
    "squeeze": np.squeeze, "ravel": np.ravel, "flatten": np.ravel, "dot": np.dot,
    "clip": np.clip, "repeat": np.repeat, "argmax": np.argmax, "argmin": np.argmin,
    "argsort": np.argsort, "round": np.round, "trace": np.trace, "diagonal": np.diagonal,
    "any": np.any, "all": np.all, "copy": np.copy, "conj": np.conjugate,
}
VARARG_SHAPE_METHODS = {"reshape", "transpose"}
LIST_PARAMS = {"arrays", "tup", "arys", "xs", "operands", "ary", "seq", "condlist", "choicelist"}
ARRAY_ATTRS = {"shape", "ndim", "dtype", "size"}

OPAQUE_MODULE_PREFIXES = ("numpy", "scipy", "math", "builtins", "flux_compile.rules",
                          "operator", "functools", "jax", "torch", "autograd")

FORBIDDEN_HINTS = {
    ast.Try: "try/except is not supported inside forward; validate inputs before calling the model",
    ast.With: "'with' is not supported inside forward",
    ast.Global: "'global' is not supported; pass the value in or set it as an attribute in __init__",
    ast.Nonlocal: "'nonlocal' is not supported inside forward",
    ast.AsyncFunctionDef: "nested functions are not supported; define the helper at module level",
    ast.ClassDef: "classes cannot be defined inside forward",
    ast.Delete: "'del' is not supported inside forward; just stop using the name",
    ast.Import: "import at module level, not inside forward",
    ast.ImportFrom: "import at module level, not inside forward",
    ast.Raise: "'raise' is only allowed under an 'if' whose condition is known at compile time",
    ast.Break: "'break' works only under an 'if' in a loop compiled as a region (over range(x.shape[0]) "
               "or more than 32 trips); in an unrolled loop, fold the condition into the loop's bound",
    ast.Continue: "'continue' works only under an 'if' in a loop compiled as a region (over range(x.shape[0]) "
                  "or more than 32 trips); elsewhere put the rest of the body under 'else'",
}
FORBIDDEN_EXPR_HINTS = {
    ast.Lambda: "lambdas inside forward are not supported; define a module-level function (it is inlined)",
    ast.SetComp: "comprehensions are not supported",
    ast.DictComp: "comprehensions are not supported",
    ast.Yield: "generators are not supported: forward must return its outputs",
    ast.YieldFrom: "generators are not supported: forward must return its outputs",
    ast.Await: "async code is not supported",
    ast.NamedExpr: "the walrus operator is not supported; use a separate assignment",
    ast.Dict: "dict values are not supported inside forward; return a tuple",
    ast.Set: "sets are not supported inside forward",
    ast.JoinedStr: "f-strings are not supported inside forward",
}


_NOT_CONST = object()
_MISSING = object()
MAX_UNROLL = 1000


def shape_of(node):
    """The symbolic shape the compiler knows for ``node`` (see shapeinfer), or None."""
    if node.op == CONST:
        return shapeinfer.of_value(node.value)
    return node.meta.get("shape")


def _split_arity(nodes, kw):
    sections = nodes[1] if len(nodes) > 1 else kw.get("indices_or_sections")
    if sections is not None and sections.op == CONST:
        v = sections.value
        return v if isinstance(v, int) else len(v) + 1
    return None


def _unstack_arity(nodes, kw):
    """``np.unstack(x, axis=a)`` gives one array per entry along ``a`` (when that size is known)."""
    shape = shape_of(nodes[0])
    axis = kw["axis"].value if "axis" in kw and kw["axis"].op == CONST else 0
    if shape is None or not isinstance(axis, int) or not -len(shape) <= axis < len(shape):
        return None
    return shape[axis] if isinstance(shape[axis], int) else None


MULTI_OUTPUT = {np.linalg.slogdet: 2, np.linalg.eigh: 2, np.split: _split_arity,
                np.array_split: _split_arity, np.hsplit: _split_arity, np.vsplit: _split_arity,
                np.dsplit: _split_arity, np.linalg.qr: 2}
if hasattr(np, "unstack"):
    MULTI_OUTPUT[np.unstack] = _unstack_arity


def _svd_arity(nodes, kw):
    uv = kw.get("compute_uv")
    return 3 if uv is None or uv.op != CONST or uv.value else False


def _average_arity(nodes, kw):
    """``np.average(..., returned=True)`` gives (average, sum of weights)."""
    returned = kw.get("returned")
    return 2 if returned is not None and returned.op == CONST and returned.value else False


def _gradient_arity(nodes, kw):
    """``np.gradient`` gives one array per differentiated axis (a list when more than one)."""
    axis = kw.get("axis")
    if axis is not None and axis.op == CONST and axis.value is not None:
        count = 1 if isinstance(axis.value, int) else len(axis.value)
    else:
        shape = shape_of(nodes[0])
        count = None if shape is None else len(shape)
    return False if count == 1 else count


def _atleast_arity(nodes, kw):
    return len(nodes) if len(nodes) > 1 else False     # np.atleast_1d(a, b) gives a list


MULTI_OUTPUT.update({np.linalg.svd: _svd_arity, np.linalg.eig: 2, np.gradient: _gradient_arity,
                     np.average: _average_arity,
                     np.atleast_1d: _atleast_arity, np.atleast_2d: _atleast_arity,
                     np.atleast_3d: _atleast_arity})


def _stmt_name(s):
    return {ast.While: "'while'", ast.Try: "'try'", ast.With: "'with'", ast.Global: "'global'",
            ast.Nonlocal: "'nonlocal'", ast.FunctionDef: "a nested 'def'", ast.ClassDef: "'class'",
            ast.Delete: "'del'", ast.Import: "'import'", ast.ImportFrom: "'import'",
            ast.Break: "'break'", ast.Continue: "'continue'"}.get(type(s), type(s).__name__)


def _as_load(target):
    t = ast.parse(ast.unparse(target), mode="eval").body
    ast.copy_location(t, target)
    for a, b in zip(ast.walk(t), ast.walk(target)):
        ast.copy_location(a, b)
    return t


def _casts_to_non_float(fn, nodes, kw):
    """``x.astype(int)``, ``np.astype(x, bool)``, ``np.full(n, v, dtype=int)``: an integer or
    boolean result carries no gradient (it is piecewise constant in its inputs)."""
    from .rules.helpers import astype
    dtype = kw.get("dtype")
    if (fn is astype or fn is getattr(np, "astype", None)) and len(nodes) > 1:
        dtype = nodes[1]
    if dtype is None or dtype.op != CONST or dtype.value is None:
        return False
    try:
        return np.dtype(dtype.value).kind not in "fc"
    except TypeError:
        return False


def _as_list(v):
    """Nested tuples (how list literals evaluate) as nested lists, for an index."""
    return [_as_list(x) for x in v] if isinstance(v, (tuple, list)) else v


def _static(v):
    """A compile-time constant. NumPy integers and booleans become Python ones (shapes, indices,
    loop bounds); NumPy float and complex scalars keep their type, because NumPy's promotion
    treats them unlike Python numbers (float32 * np.float64(2) is float64, float32 * 2.0 is not)."""
    if isinstance(v, (np.integer, np.bool_)):
        v = v.item()
    return Static(v)


def _container_types(cls):
    """Is ``cls`` (an isinstance target) made only of tuple, list and dict?"""
    classes = cls if isinstance(cls, tuple) else (cls,)
    return bool(classes) and all(c in (tuple, list, dict) for c in classes)


def _inlinable(fn):
    if not isinstance(fn, types.FunctionType):
        return False
    mod = getattr(fn, "__module__", "") or ""
    return not mod.startswith(OPAQUE_MODULE_PREFIXES) or getattr(fn, "__flux_inline__", False)


# --------------------------------------------------------------------------
# the state of one trace


class Context:
    """State shared while tracing one graph (the frontend's Context adds the model's part)."""

    def __init__(self, graph, mode="forward"):
        self.graph = graph
        self.mode = mode               # "forward" (user code) or "rule" (inlining derivative rules)
        self.stack = []                # functions being inlined, for the recursion check
        self.loc = None                # current statement
        self.inlined = []              # every inlined function (the disk cache checks their sources)
        self.deps = []                 # (namespace, name, function) the code was built from
        self.training = True
        self.concrete = None           # concrete.Concrete when the real arguments are known
        self.guards = 0
        self.baked = {}                # (path, kind) -> expected: what the code was built from
        self.free = {}                 # path -> input node: arrays read at run time
        self.free_names = {}           # path -> name, to name them alike in both traces

    def guard(self, path, kind, expected):
        """Record that the code is valid while the value at ``path`` passes ``kind``/``expected``."""
        self.baked.setdefault((path, kind), expected)

    def guard_list(self):
        return [(path, kind, expected) for (path, kind), expected in self.baked.items()]

    def free_input(self, path, value, hint):
        """The input node through which generated code reads the array at ``path`` at run time."""
        n = self.free.get(path)
        if n is not None:
            return n
        name = self.free_names.get(path)
        graph = getattr(self, "root_graph", None) or self.graph     # never a loop body's input
        if name is None:
            taken = {i.name for i in graph.inputs} | set(self.free_names.values()) | {"self"}
            base = guards.name_hint(path)
            if base == "captured" and isinstance(hint, str) and hint.isidentifier():
                base = hint
            name, i = base, 1
            while name in taken:
                name, i = f"{base}_{i}", i + 1
            self.free_names[path] = name
        n = graph.add(Node(INPUT, name=name, diff=False))
        n.meta["free"] = path
        n.meta["shape"] = tuple(1 if d == 1 else shapeinfer.Sym(f"{name}.{i}", nonone=True)
                                for i, d in enumerate(np.shape(value)))
        self.free[path] = n
        self.guard(path, "array", guards.array_token(value))
        if self.concrete is not None:
            self.concrete.inputs[name] = value
        return n

    def depend(self, namespace, name, value):
        """Remember that ``namespace[name]`` was the function ``value`` when compiling, so the
        code is rebuilt if it is redefined (a notebook cell run again)."""
        if isinstance(value, types.FunctionType):
            self.deps.append((namespace, name, value))

    def add(self, node, loc=None):
        node.loc = loc or self.loc
        return self.graph.add(node)


class Frame:
    """One function being inlined: its names, its globals, and its return value once returned."""

    def __init__(self, source, env, glob, selfval=None, module_globals=None, fn=None, fn_path=None):
        self.source = source
        self.env = env
        self.glob = glob
        self.module_globals = module_globals    # the function's real globals, to record lookups in
        self.selfval = selfval
        self.returned = False
        self.retval = None
        self.outer = None          # the enclosing frame, for nested functions
        self.fn = fn               # the function whose names ``glob`` holds
        self.fn_path = fn_path     # its guards path (None: not re-readable)
        self.owner = None          # how its lines are labelled, when not by its own name
        self.prefix = ""           # of the names it gives values (an inlined sub-model's: "fc1_")
        self.via = ()              # an inlined sub-model's: (its expression, the caller's Loc)

    def nested(self, source, env):
        """A frame sharing this one's globals (a nested def, a comprehension)."""
        fr = Frame(source, env, self.glob, self.selfval, self.module_globals, self.fn, self.fn_path)
        fr.outer = self
        fr.owner = self.owner
        fr.prefix = self.prefix
        fr.via = self.via
        return fr

    def name_path(self, name):
        """The guards path of a free name of this function: its closure cell or global."""
        if self.fn_path is None or self.fn is None:
            return None
        code = getattr(self.fn, "__code__", None)
        if code is not None and name in code.co_freevars:
            return self.fn_path + (("cell", code.co_freevars.index(name), name),)
        if name in getattr(self.fn, "__globals__", {}):
            return self.fn_path + (("global", name),)
        return None

