"""Frontend: Python source (``ast``) → IR graph, by evaluating the code symbolically.

Every expression evaluates to one of:

* a :class:`~flux_compile.ir.Node` — a run-time value in the graph;
* :class:`Static` — a compile-time Python object (ints, ``None``, functions, ``np``);
* :class:`ModelRef` — a sub-model (``self.first``), called opaquely;
* :class:`Seq` — a tuple of values (``(a, b)``, ``self.layers``), unrolled at compile time;
* :class:`SymDict` — a dict argument (``params["W"]``), its keys known at compile time.

User functions, methods and static methods are inlined (their source is parsed
the same way); primitives with a derivative rule become ``call`` nodes.

>>> import numpy as np
>>> def f(x, W):
...     return np.tanh(x @ W)
>>> print(trace_function(f, ["x", "W"]))          # doctest: +ELLIPSIS
graph f(x, W):
  # line ...: return np.tanh(x @ W)
  %2 = np.matmul(%0 x, %1 W)
  %3 = np.tanh(%2)
  return %3
"""
from __future__ import annotations

import ast
import builtins
import __future__
import inspect
import linecache
import operator
import os
import textwrap
import types
import weakref

import numpy as np

from . import guards, rules, shapeinfer
from .errors import CompileError
from .ir import Graph, Loc, Node, path_expr
from .params import Param, is_model

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


class ModelRef:
    """A sub-model: ``base`` ('self' or an input name) plus a field ``path``; ``obj`` when known."""
    __slots__ = ("base", "path", "obj")

    def __init__(self, base, path, obj):
        self.base, self.path, self.obj = base, tuple(path), obj

    @property
    def expr(self):
        return path_expr(self.base, self.path)


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
LIST_PARAMS = {"arrays", "tup", "arys", "xs", "operands", "ary", "seq"}
ARRAY_ATTRS = {"shape", "ndim", "dtype", "size"}

SIMPLE_BUILTINS = {abs: np.abs}
STATIC_BUILTINS = {range, len, int, float, bool, str, tuple, list, min, max, sum, zip,
                   enumerate, reversed, isinstance, hasattr, getattr, round, sorted, type, dict, slice}

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
    ast.Break: "'break' is not supported; loops are unrolled at compile time",
    ast.Continue: "'continue' is not supported; loops are unrolled at compile time",
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


# --------------------------------------------------------------------------
# parsed source, cached per function


class Source:
    """A function's parsed ``FunctionDef`` with the map back to its file."""

    def __init__(self, fn):
        try:
            lines, start = inspect.getsourcelines(fn)
            filename = inspect.getsourcefile(fn) or fn.__code__.co_filename
        except (OSError, TypeError) as e:
            code = getattr(fn, "__code__", None)
            raise CompileError(
                f"cannot read the source of {getattr(fn, '__qualname__', fn)!r}: {e}",
                getattr(code, "co_filename", None), getattr(code, "co_firstlineno", None),
                hint="define it in a .py file (or a notebook cell) so inspect.getsource can find it") from None
        raw = "".join(lines)
        text = textwrap.dedent(raw)
        self.indent = len(lines[0]) - len(lines[0].lstrip()) if lines else 0
        self.filename = filename
        self.offset = start - 1
        self.text = text
        self.owner = getattr(fn, "__qualname__", getattr(fn, "__name__", "?"))
        if not _compiles_to(fn, filename):
            raise CompileError(
                f"the source of {self.owner} was edited after it was imported: the file no longer "
                "matches the code that runs", filename, start, text=lines[0].rstrip("\n") if lines else None,
                hint="reload the module (importlib.reload) or restart Python, so that the code that "
                     "runs is the code in the file")
        if getattr(fn, "__name__", "") == "<lambda>":
            self.tree = _find_lambda(text, fn, filename, start)
        else:
            try:
                mod = ast.parse(text)
            except SyntaxError as e:
                raise CompileError(f"cannot parse source of {self.owner}: {e.msg}", filename,
                                   start + (e.lineno or 1) - 1) from None
            defs = [n for n in mod.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
            if not defs:
                raise CompileError(f"no function definition found for {self.owner}", filename, start)
            self.tree = defs[0]
            if isinstance(self.tree, ast.AsyncFunctionDef):
                raise CompileError("async functions are not supported", filename, start)

    def loc(self, node, owner=None):
        lineno = getattr(node, "lineno", 1) + self.offset
        col = getattr(node, "col_offset", 0) + self.indent + 1
        seg = ast.get_source_segment(self.text, node) if hasattr(node, "lineno") else None
        if isinstance(node, (ast.If, ast.While)):
            test = ast.get_source_segment(self.text, node.test)
            seg = f"{'while' if isinstance(node, ast.While) else 'if'} {test}:" if test else seg
        elif isinstance(node, ast.For):
            target, it = ast.get_source_segment(self.text, node.target), ast.get_source_segment(self.text, node.iter)
            seg = f"for {target} in {it}:" if target and it else seg
        text = " ".join(seg.split()) if seg else ""
        return Loc(self.filename, lineno, col, text, owner or self.owner)


_FUTURE_FLAGS = 0
for _name in __future__.all_feature_names:
    _FUTURE_FLAGS |= getattr(__future__, _name).compiler_flag
_compiled_files = {}     # filename -> (text, its module code), the last one read


def _compiles_to(fn, filename):
    """Does the file, as it reads now, define the code that runs? False when it was edited
    after the module was imported (compiling it would compile text that never ran)."""
    try:
        code = inspect.unwrap(fn).__code__
    except (AttributeError, ValueError):
        return True
    if not os.path.isfile(filename):       # a notebook cell or an exec'd string cannot be edited
        return True
    text = "".join(linecache.getlines(filename))
    if not text:
        return True
    cached = _compiled_files.get(filename)
    if cached is None or cached[0] != text:
        try:
            module = compile(text, code.co_filename, "exec", flags=code.co_flags & _FUTURE_FLAGS,
                             dont_inherit=True)
        except (SyntaxError, ValueError):
            module = None
        if len(_compiled_files) > 64:
            _compiled_files.clear()
        cached = _compiled_files[filename] = (text, module)
    module = cached[1]
    if module is None:
        return False
    return any(_same_bytecode(c, code) for c in _codes_at(module, code.co_name, code.co_firstlineno))


def _codes_at(code, name, line):
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            if c.co_name == name and c.co_firstlineno == line:
                yield c
            yield from _codes_at(c, name, line)


def _same_bytecode(a, b):
    """Same instructions, names and constants (nested functions compared alike)."""
    parts = ("co_code", "co_names", "co_varnames", "co_freevars")
    if any(getattr(a, p) != getattr(b, p) for p in parts):
        return False
    ca = [c for c in a.co_consts if isinstance(c, types.CodeType)]
    cb = [c for c in b.co_consts if isinstance(c, types.CodeType)]
    plain = [[(type(c), repr(c)) for c in x.co_consts if not isinstance(c, types.CodeType)] for x in (a, b)]
    return plain[0] == plain[1] and len(ca) == len(cb) and all(_same_bytecode(x, y) for x, y in zip(ca, cb))


def _find_lambda(text, fn, filename, start):
    """The ``ast.Lambda`` of ``fn`` inside the source lines that define it."""
    found = []
    i = text.find("lambda")
    while i >= 0:
        for j in range(len(text), i, -1):
            try:
                tree = ast.parse(text[i:j].strip(), mode="eval")
            except SyntaxError:
                continue
            found.extend(n for n in ast.walk(tree) if isinstance(n, ast.Lambda)
                         and n.lineno == 1 and n.col_offset == 0)
            break
        i = text.find("lambda", i + 1)
    nargs = fn.__code__.co_argcount
    found = [n for n in found if len(n.args.args) == nargs]
    if len(found) > 1:          # several lambdas on these lines: the one whose code matches
        found = [n for n in found if _same_code(n, fn, exact=True)] or \
            [n for n in found if _same_code(n, fn, exact=False)]
    if len(found) != 1:
        raise CompileError("cannot tell which lambda on this line is meant", filename, start,
                           hint="define a named module-level function instead")
    lam = found[0]
    body = ast.Return(value=lam.body)
    ast.copy_location(body, lam.body)
    fdef = ast.FunctionDef(name="<lambda>", args=lam.args, body=[body], decorator_list=[],
                           returns=None, type_comment=None)
    ast.copy_location(fdef, lam)
    return fdef


def _same_code(lam, fn, exact=True):
    """Does this lambda's source compile to ``fn``'s code (bytecode, or at least names and
    constants when closures make the bytecode differ)?"""
    try:
        code = compile(ast.fix_missing_locations(ast.Expression(body=lam)), "<lambda>", "eval")
    except (SyntaxError, ValueError, TypeError):
        return False
    inner = [c for c in code.co_consts if isinstance(c, types.CodeType)]
    if not inner:
        return False
    a, b = inner[0], fn.__code__
    if exact:
        return a.co_code == b.co_code and a.co_names == b.co_names and a.co_consts == b.co_consts
    return set(a.co_names) | set(a.co_varnames) == set(b.co_names) | set(b.co_varnames) | set(b.co_freevars) \
        and a.co_consts == b.co_consts




class IdentityTable:
    """A weak table keyed by object identity. Code objects of two files compare equal (code
    equality ignores ``co_filename``), so they must not share an entry: the source, line map
    and compiled code of one file would serve the other."""

    def __init__(self):
        self._entries = {}

    def get(self, obj):
        entry = self._entries.get(id(obj))
        return entry[1] if entry is not None and entry[0]() is obj else None

    def __setitem__(self, obj, value):
        key, entries = id(obj), self._entries
        entries[key] = (weakref.ref(obj, lambda _, key=key: entries.pop(key, None)), value)

    def __len__(self):
        return len(self._entries)


_sources = IdentityTable()      # code object -> Source (dropped with the code)


def get_source(fn):
    code = getattr(fn, "__code__", None)
    key = code
    s = _sources.get(key) if key is not None else None
    if s is None:
        s = Source(fn)
        if key is not None:
            _sources[key] = s
    return s


# --------------------------------------------------------------------------
# the evaluator


class Context:
    """State shared while building one graph."""

    def __init__(self, graph, mode="forward"):
        self.graph = graph
        self.mode = mode               # "forward" (user code) or "rule" (inlining derivative rules)
        self.param_nodes = {}          # (base, path) -> node
        self.stack = []                # functions being inlined, for the recursion check
        self.loc = None                # current statement
        self.inlined = []              # every inlined function (the disk cache checks their sources)
        self.deps = []                 # (namespace, name, function) the code was built from
        self.state = None              # recurrent state hooks (see recurrent.py), or None
        self.training = True
        self.generic_cls = None        # the class, when compiling without an instance
        self.concrete = None           # concrete.Concrete when the real arguments are known
        self.guards = 0
        self.arity_of = None           # sub-model -> number of outputs (None: one)
        self.baked = {}                # (path, kind) -> expected: what the code was built from
        self.free = {}                 # path -> input node: arrays read at run time
        self.free_names = {}           # path -> name, to name them alike in both traces
        self.arg_index = {}            # input name -> position, for paths through a model argument

    def guard(self, path, kind, expected):
        """Record that the code is valid while the value at ``path`` passes ``kind``/``expected``."""
        self.baked.setdefault((path, kind), expected)

    def guard_list(self):
        return [(path, kind, expected) for (path, kind), expected in self.baked.items()]

    def field_path(self, base, fields):
        """The guards path of ``base.<fields>`` (``self.cfg``, ``m.layers[0]``), or None."""
        if base == "self":
            head = ()
        elif base in self.arg_index:
            head = (("arg", self.arg_index[base]),)
        else:
            return None
        return head + tuple(("item", f) if isinstance(f, int) else ("attr", f) for f in fields)

    def free_input(self, path, value, hint):
        """The input node through which generated code reads the array at ``path`` at run time."""
        n = self.free.get(path)
        if n is not None:
            return n
        name = self.free_names.get(path)
        if name is None:
            taken = {i.name for i in self.graph.inputs} | set(self.free_names.values()) | {"self"}
            base = guards.name_hint(path)
            if base == "captured" and isinstance(hint, str) and hint.isidentifier():
                base = hint
            name, i = base, 1
            while name in taken:
                name, i = f"{base}_{i}", i + 1
            self.free_names[path] = name
        n = self.graph.add(Node("input", name=name, diff=False))
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

    def nested(self, source, env):
        """A frame sharing this one's globals (a nested def, a comprehension)."""
        fr = Frame(source, env, self.glob, self.selfval, self.module_globals, self.fn, self.fn_path)
        fr.outer = self
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


class Builder:
    """Evaluates one function body into the context's graph."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.frame = None

    # -- errors ----------------------------------------------------------
    def error(self, msg, node=None, hint=None):
        fr = self.frame
        if fr is None:
            raise CompileError(msg, hint=hint)
        loc = fr.source.loc(node) if node is not None else self.ctx.loc
        text = None
        if loc is not None:
            import linecache
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
            return self.eval_Attribute_value(base, name, e)
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

    # -- statements --------------------------------------------------------
    def exec_body(self, body):
        for stmt in body:
            if self.frame.returned:
                return
            self.exec_stmt(stmt)

    def exec_stmt(self, s):
        self.ctx.loc = self.frame.source.loc(s)
        t = type(s)
        if t is ast.Assign:
            value = self.eval(s.value)
            for target in s.targets:
                self.assign(target, value, s)
        elif t is ast.AnnAssign:
            if s.value is not None:
                self.assign(s.target, self.eval(s.value), s)
        elif t is ast.AugAssign:
            load = _as_load(s.target)
            value = self.binop(s.op, self.eval(load), self.eval(s.value), s)
            self.assign(s.target, value, s)
        elif t is ast.Return:
            self.frame.retval = self.eval(s.value) if s.value is not None else Static(None)
            self.frame.returned = True
        elif t is ast.Expr:
            if isinstance(s.value, ast.Constant):
                return      # docstring or bare constant
            if isinstance(s.value, ast.Call) and isinstance(s.value.func, ast.Name) \
                    and s.value.func.id == "print":
                self.error("print is not supported inside forward", s,
                           hint="use fc.shapes(model, x) to see every value's shape, or print outside the model")
            v = self.eval(s.value)
            if isinstance(v, Node) and v.op == "call" and self.ctx.mode == "forward":
                v.meta["effect"] = True
        elif t is ast.If:
            taken = self.decide(self.eval(s.test), s.test, "'if'")
            self.exec_body(s.body if taken else s.orelse)
        elif t is ast.For:
            if s.orelse:
                self.error("for/else is not supported", s)
            it = self.eval(s.iter)
            items = self.iter_values(it, s.iter)
            for item in items:
                self.assign(s.target, item, s)
                self.exec_body(s.body)
                if self.frame.returned:
                    return
        elif t is ast.While:
            if s.orelse:
                self.error("while/else is not supported", s)
            for _ in range(MAX_UNROLL):
                if not self.decide(self.eval(s.test), s.test, "'while'"):
                    break
                self.exec_body(s.body)
                if self.frame.returned:
                    return
            else:
                self.error(f"'while' ran more than {MAX_UNROLL} times while compiling", s,
                           hint="loops are unrolled for the inputs given; use vectorised NumPy for long loops")
        elif t is ast.FunctionDef:
            if s.decorator_list:
                self.error("decorated nested functions are not supported", s)
            defaults = [self.eval(d) for d in s.args.defaults]
            kwdefaults = {a.arg: self.eval(d) for a, d in zip(s.args.kwonlyargs, s.args.kw_defaults)
                          if d is not None}
            self.frame.env[s.name] = LocalFunction(s, self.frame, defaults, kwdefaults)
        elif t is ast.Pass:
            pass
        elif t is ast.Assert:
            test = self.eval(s.test)
            if not isinstance(test, Static):
                self.error("assert on an array value cannot be compiled", s,
                           hint="check inputs before calling the model")
            if not test.value:
                msg = self.eval(s.msg).value if s.msg is not None else "assertion failed"
                self.error(f"assertion failed at compile time: {msg}", s)
        elif t is ast.Raise:
            exc = self.eval(s.exc) if s.exc is not None else None
            if self.ctx.guards and isinstance(exc, Static) and (
                    isinstance(exc.value, BaseException) or
                    isinstance(exc.value, type) and issubclass(exc.value, BaseException)):
                raise exc.value     # these inputs took the user's own error branch: raise it, as Python would
            self.error("'raise' reached at compile time", s, hint=FORBIDDEN_HINTS[ast.Raise])
        else:
            hint = FORBIDDEN_HINTS.get(t, "this statement is not in the supported subset")
            self.error(f"{_stmt_name(s)} is not supported inside a compiled function", s, hint=hint)

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
        g = Node("guard", (test,), value=taken)
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
        self.ctx.add(Node("guard", (cond,), value=True))
        self.ctx.guards += 1
        return value

    def node_items(self, node):
        """The outputs of a multi-output node (``np.split``, ``np.linalg.eigh``, ...), one value each."""
        if node.op == "pack":
            return list(node.args)
        return [self.ctx.add(Node("item", (node,), index=i, diff=node.diff)) for i in range(node.arity)]

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
            if isinstance(value, Node) and value.name is None and value.op not in ("input", "param", "attr",
                                                                                     "const"):
                value.name = target.id
            self.frame.env[target.id] = value
        elif t in (ast.Tuple, ast.List):
            elts = target.elts
            if any(isinstance(e, ast.Starred) for e in elts):
                self.error("starred assignment is not supported", target)
            items = self.unpack(value, len(elts), target)
            for e, v in zip(elts, items):
                self.assign(e, v, stmt)
        elif t is ast.Attribute:
            base = self.eval(target.value)
            if isinstance(base, ModelRef) and base.base == "self" and not base.path \
                    and self.ctx.state is not None and self.frame.selfval is base:
                self.ctx.state.write(self, target.attr, value, target)
            elif isinstance(base, ModelRef):
                self.error(f"cannot assign to attribute {target.attr!r} here", target,
                           hint="only assignments self.name = ... in forward (recurrent state) are supported")
            else:
                self.error("attribute assignment is not supported inside a compiled function", target)
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
            if value.op == "pack":
                return list(value.args)
            return [self.ctx.add(Node("item", (value,), index=i, diff=value.diff)) for i in range(n)]
        self.error("cannot unpack this value", node)

    # -- expressions --------------------------------------------------------
    def eval(self, e):
        m = getattr(self, "eval_" + type(e).__name__, None)
        if m is None:
            hint = FORBIDDEN_EXPR_HINTS.get(type(e), "this expression is not in the supported subset")
            self.error(f"{type(e).__name__} expressions are not supported inside a compiled function", e,
                       hint=hint)
        return m(e)

    def eval_Constant(self, e):
        return Static(e.value)

    def eval_Name(self, e):
        fr = self.frame
        while fr is not None:
            if e.id in fr.env:
                return fr.env[e.id]
            fr = fr.outer
        fr = self.frame
        if e.id in fr.glob:
            value = fr.glob[e.id]
            if fr.module_globals is not None and fr.module_globals.get(e.id, _MISSING) is value:
                self.ctx.depend(fr.module_globals, e.id, value)
            return self.outside(value, fr.name_path(e.id), e.id)
        if hasattr(builtins, e.id):
            return Static(getattr(builtins, e.id))
        self.error(f"name {e.id!r} is not defined", e)

    def eval_Tuple(self, e):
        items = [self.eval(x) for x in e.elts]
        if any(isinstance(x, ast.Starred) for x in e.elts):
            self.error("starred expressions are not supported", e)
        if all(isinstance(v, Static) for v in items):
            outside = any(v.src is not None or v.parts is not None for v in items)
            return Static(tuple(v.value for v in items), parts=items if outside else None)
        return Seq(items)

    eval_List = eval_Tuple

    def eval_Attribute(self, e):
        base = self.eval(e.value)
        name = e.attr
        if isinstance(base, Static):
            if name in ARRAY_ATTRS and isinstance(base.value, (int, float, complex, bool, np.generic)):
                return _static(getattr(np.asarray(base.value), name))
            try:
                value = getattr(base.value, name)
            except AttributeError:
                value = _MISSING
            if value is not _MISSING:
                if isinstance(base.value, types.ModuleType):
                    self.ctx.depend(vars(base.value), name, value)
                if guards.stable(base.value) or base.src is None:
                    return Static(value)
                return self.outside(value, base.src + (("attr", name),), name)
            self.error(f"{type(base.value).__name__!s} has no attribute {name!r}", e)
        if isinstance(base, ModelRef):
            return self.model_attr(base, name, e)
        if isinstance(base, Node):
            if name in ARRAY_ATTRS:
                return self.array_attr(base, name)
            if name == "T":
                return self.call_primitive(np.transpose, [base], {}, e)
            if name in METHODS or name in ("astype",):
                return BoundMethod(base, name)
            if name in ("real",):
                return self.call_primitive(np.real, [base], {}, e)
            self.error(f"array attribute or method {name!r} is not supported", e,
                       hint=f"use the NumPy function form, e.g. np.{name}(x, ...), if NumPy has one")
        if isinstance(base, SymDict):
            if name in DICT_METHODS:
                return BoundMethod(base, name)
            self.error(f"a dict has no attribute {name!r} here", e,
                       hint="use d[key], d.items(), d.keys(), d.values() or d.get(key)")
        if isinstance(base, Seq) and base.kind is not None and name in getattr(base.kind, "_fields", ()):
            return base.items[base.kind._fields.index(name)]        # a named tuple's field
        if isinstance(base, Seq):
            self.error(f"a tuple has no attribute {name!r}", e)
        self.error(f"cannot take attribute {name!r} here", e)

    def array_attr(self, base, name):
        shp = shape_of(base)
        if shp is not None:
            shp = tuple(shapeinfer.find(d) for d in shp)
            if name == "ndim":
                return Static(len(shp))
            if name == "shape":
                if all(isinstance(d, int) for d in shp):
                    return Static(tuple(shp))
                node = self.ctx.add(Node("getattr", (base,), attr="shape"))
                items = []
                for i, d in enumerate(shp):
                    items.append(Static(d) if isinstance(d, int) else
                                 self.ctx.add(Node("item", (node,), index=i)))
                seq = Seq(items)
                seq.sym = shp
                return seq
            if name == "size" and all(isinstance(d, int) for d in shp):
                return Static(int(np.prod(shp)))
        return self.ctx.add(Node("getattr", (base,), attr=name))

    def model_attr(self, ref, name, e):
        obj = ref.obj
        if obj is not None:
            cls = type(obj)
        elif ref.base == "self" and not ref.path:
            cls = self.ctx.generic_cls
        else:
            cls = None
        if ref.base == "self" and not ref.path and self.ctx.state is not None \
                and self.frame.selfval is ref:
            v = self.ctx.state.read(self, name, e)
            if v is not None:
                return v
        if obj is not None and name in vars(obj):
            value = vars(obj)[name]
            if ref.base == "self" and not ref.path and isinstance(value, KEYED_ATTRS) \
                    and self.ctx.generic_cls is None:
                return Static(value)    # in the cache key (model_signature); reassigning recompiles
            return self.classify(ref, name, value, e)
        raw = inspect.getattr_static(cls, name, _MISSING) if cls is not None else _MISSING
        if raw is not _MISSING:
            base = self.ctx.field_path(ref.base, ref.path)
            if isinstance(raw, staticmethod):
                return self.outside(raw.__func__, None if base is None else base + (("attr", name),), name)
            if isinstance(raw, classmethod):
                self.error("classmethods are not supported inside forward", e)
            if isinstance(raw, types.FunctionType):
                path = None
                if base is not None:
                    on_class = obj is None and ref.base == "self" and not ref.path
                    path = base + ((("attr", name),) if on_class else (("cls",), ("attr", name)))
                    self.ctx.guard(path, "code", raw.__code__)
                return UserMethod(ref, raw, path)
            if isinstance(raw, property):
                self.error(f"property {name!r} is not supported inside forward", e,
                           hint="compute the value in forward or store it in __init__")
            return self.classify(ref, name, getattr(cls, name), e)
        if obj is None:
            # no instance (fc.source on a class): assume a parameter
            return self.param_node(ref.base, ref.path + (name,), True)
        self.error(f"{type(obj).__name__} has no attribute {name!r}", e,
                   hint="set it in __init__ (self.%s = ...)" % name)

    def classify(self, ref, name, value, e, from_class=False):
        path = ref.path + (name,)
        return classify_value(self, ref.base, path, value, e)

    def param_node(self, base, path, trainable):
        key = (base, path)
        n = self.ctx.param_nodes.get(key)
        if n is None:
            n = Node("param", base=base, path=path, diff=trainable, name=str(path[-1]))
            n = self.ctx.graph.add(n)
            n.loc = None
            self.ctx.param_nodes[key] = n
        return n

    def eval_Subscript(self, e):
        base = self.eval(e.value)
        index = self.eval_index(e.slice)
        if isinstance(base, Static) and isinstance(index, Static):
            try:
                got = base.value[index.value]
            except Exception as err:
                self.error(f"indexing failed at compile time: {err}", e)
            if base.src is not None and guards.value_token(index.value) is not None:
                return self.outside(got, base.src + (("item", index.value),),
                                    index.value if isinstance(index.value, str) else None, scalar=True)
            return _static(got)
        if isinstance(base, SymDict):
            if not isinstance(index, Static):
                self.error("a dict can only be indexed by a key known at compile time", e)
            if index.value not in base.items:
                self.error(f"KeyError: {index.value!r} (the keys are {list(base.items)!r})", e)
            return base.items[index.value]
        if isinstance(base, Seq):
            if not isinstance(index, Static):
                self.error("a tuple can only be indexed by a constant", e)
            try:
                got = base.items[index.value]
            except (IndexError, TypeError) as err:
                self.error(f"bad tuple index: {err}", e)
            return Seq(got, base.kind if base.kind in (tuple, list) else None) if isinstance(got, list) else got
        if isinstance(base, Node):
            if base.arity is not None and isinstance(index, Static) and isinstance(index.value, int):
                if base.op == "pack":
                    return base.args[index.value]
                return self.ctx.add(Node("item", (base,), index=index.value % base.arity, diff=base.diff))
            if base.arity is not None and isinstance(index, Static) and isinstance(index.value, slice):
                return Seq(self.node_items(base)[index.value])
            from .rules.helpers import getitem
            return self.call_primitive(getitem, [base, index], {}, e)
        if isinstance(base, Static) and isinstance(index, Node):
            self.error("indexing a constant with a run-time value is not supported", e)
        self.error("cannot index this value", e)

    def eval_index(self, s):
        if isinstance(s, ast.Slice):
            parts = [self.eval(p) if p is not None else Static(None) for p in (s.lower, s.upper, s.step)]
            if all(isinstance(p, Static) for p in parts):
                return Static(slice(*(p.value for p in parts)))
            return self.ctx.add(Node("call", [self.as_node(p) for p in parts], fn=slice))
        if isinstance(s, ast.Tuple):
            parts = [self.eval_index(p) for p in s.elts]
            if all(isinstance(p, Static) for p in parts):
                return Static(tuple(p.value for p in parts))
            return Seq(parts)
        if isinstance(s, ast.List):
            return self.eval_list_index(s)
        return self.eval(s)

    def eval_list_index(self, s):
        """``x[[0, 1]]`` is advanced indexing by an array, never the tuple ``x[0, 1]``: a constant
        list stays a list in the generated code; one holding run-time values is passed as the
        one-element tuple ``((i, j),)``, which NumPy reads the same way."""
        items = [self.eval(e) for e in s.elts]
        if all(isinstance(v, Static) for v in items):
            return Static([_as_list(v.value) for v in items])
        return Seq([Seq(items)])

    def eval_Slice(self, e):
        return self.eval_index(e)

    def eval_BinOp(self, e):
        return self.binop(e.op, self.eval(e.left), self.eval(e.right), e)

    def binop(self, op, a, b, e):
        if isinstance(a, Static) and isinstance(b, Static):
            try:
                return _static(PYOPS[type(op)](a.value, b.value))
            except Exception as err:
                self.error(f"constant expression failed: {err}", e)
        if isinstance(a, Seq) or isinstance(b, Seq):
            if isinstance(op, ast.Add) and isinstance(a, (Seq, Static)) and isinstance(b, (Seq, Static)):
                return Seq(self.seq_items(a) + self.seq_items(b))
            self.error("arithmetic on tuples is not supported", e)
        fn = BINOPS.get(type(op)) or BITWISE.get(type(op))
        if fn is None:
            self.error(f"operator {type(op).__name__} is not supported on arrays", e)
        return self.call_primitive(fn, [a, b], {}, e)

    def eval_UnaryOp(self, e):
        v = self.eval(e.operand)
        if isinstance(v, Static):
            try:
                return _static({ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_,
                                ast.Invert: operator.invert}[type(e.op)](v.value))
            except Exception as err:
                self.error(f"constant expression failed: {err}", e)
        if isinstance(e.op, ast.USub):
            return self.call_primitive(np.negative, [v], {}, e)
        if isinstance(e.op, ast.UAdd):
            return v
        if isinstance(e.op, ast.Invert):
            return self.call_primitive(np.logical_not, [v], {}, e)
        self.error("'not' on an array cannot be compiled", e, hint="use np.logical_not(x)")

    def eval_BoolOp(self, e):
        is_and = isinstance(e.op, ast.And)
        result = None
        for x in e.values:
            v = self.eval(x)
            if not isinstance(v, Static) and self.ctx.concrete is None:
                self.error("'and'/'or' on arrays cannot be compiled", x,
                           hint="use np.logical_and / np.logical_or, or & and |")
            result = v
            if self.decide(v, x, "'and'/'or'") != is_and:
                return v
        return result

    def eval_Compare(self, e):
        left = self.eval(e.left)
        result = None
        for op, comp in zip(e.ops, e.comparators):
            right = self.eval(comp)
            if isinstance(op, (ast.Is, ast.IsNot)):
                if isinstance(left, Static) and isinstance(right, Static):
                    r = Static(PYCMP[type(op)](left.value, right.value))
                else:
                    same = left is right
                    r = Static(same if isinstance(op, ast.Is) else not same)
            elif isinstance(op, (ast.In, ast.NotIn)) and isinstance(left, Static) \
                    and isinstance(right, SymDict):
                r = Static((left.value in right.items) == isinstance(op, ast.In))
            elif isinstance(left, Static) and isinstance(right, Static):
                try:
                    r = _static(PYCMP[type(op)](left.value, right.value))
                except Exception as err:
                    self.error(f"constant comparison failed: {err}", e)
            elif type(op) in CMPOPS:
                r = self.call_primitive(CMPOPS[type(op)], [left, right], {}, e)
            else:
                self.error("'in' on arrays cannot be compiled", e)
            if len(e.ops) > 1:
                if not isinstance(r, Static):
                    self.error("chained comparisons of arrays are not supported", e,
                               hint="write (a < b) & (b < c)")
                if not r.value:
                    return r
            result, left = r, right
        return result

    def eval_IfExp(self, e):
        taken = self.decide(self.eval(e.test), e.test, "'a if c else b'")
        return self.eval(e.body if taken else e.orelse)

    def eval_ListComp(self, e):
        """``[f(x) for x in xs if c]``: unrolled at compile time (xs known, or guarded by length)."""
        items = []
        outer = self.frame
        self.frame = outer.nested(outer.source, {})
        try:
            self._comprehend(e.generators, 0, lambda: items.append(self.eval(e.elt)))
        finally:
            self.frame = outer
        return Seq(items)

    eval_GeneratorExp = eval_ListComp

    def _comprehend(self, gens, k, emit):
        if k == len(gens):
            emit()
            return
        g = gens[k]
        if g.is_async:
            self.error("async comprehensions are not supported", g)
        for item in self.iter_values(self.eval(g.iter), g.iter):
            self.assign(g.target, item, g)
            if all(self.decide(self.eval(c), c, "a comprehension's 'if'") for c in g.ifs):
                self._comprehend(gens, k + 1, emit)

    def eval_Starred(self, e):
        self.error("starred expressions are only supported as call arguments", e)

    # -- calls ---------------------------------------------------------------
    def eval_Call(self, e):
        f = self.eval(e.func)
        args = []
        for a in e.args:
            if isinstance(a, ast.Starred):
                v = self.eval(a.value)
                if isinstance(v, Seq):
                    args.extend(v.items)
                elif isinstance(v, Static) and isinstance(v.value, (tuple, list)):
                    args.extend(self.items_of(v))
                elif isinstance(v, Node) and v.arity is not None:
                    args.extend(self.unpack(v, v.arity, a))
                else:
                    self.error("*args needs a tuple known at compile time", a)
            else:
                args.append(self.eval(a))
        kwargs = {}
        for k in e.keywords:
            if k.arg is None:
                v = self.eval(k.value)
                if isinstance(v, Static) and isinstance(v.value, dict):
                    self.structure(v)
                    kwargs.update({kk: self.outside(vv, None if v.src is None else v.src + (("item", kk),), kk)
                                   for kk, vv in v.value.items()})
                elif isinstance(v, SymDict) and all(isinstance(kk, str) for kk in v.items):
                    kwargs.update(v.items)
                else:
                    self.error("**kwargs needs a dict known at compile time", k)
            else:
                kwargs[k.arg] = self.eval(k.value)
        return self.call(f, args, kwargs, e)

    def call(self, f, args, kwargs, e):
        if isinstance(f, BoundMethod):
            return self.call_method(f, args, kwargs, e)
        if isinstance(f, UserMethod):
            return self.call_function(f.fn, args, kwargs, selfval=f.selfval, node=e, path=f.path)
        if isinstance(f, ModelRef):
            return self.call_model(f, args, kwargs, e)
        if isinstance(f, LocalFunction):
            return self.call_local(f, args, kwargs, e)
        if isinstance(f, Seq):
            self.error("a tuple is not callable", e)
        if isinstance(f, Node) and f.op == "param" and self.ctx.generic_cls is not None:
            # no instance (fc.source on a class): an attribute that is called is a sub-model
            return self.call_model(ModelRef(f.base, f.path, None), args, kwargs, e)
        if isinstance(f, Node):
            self.error("calling a run-time value is not supported", e,
                       hint="store functions and sub-models as attributes set in __init__")
        fn = f.value
        return self.call_static(fn, args, kwargs, e, f.src)

    def call_static(self, fn, args, kwargs, e, path=None):
        if fn is print:
            self.error("print is not supported inside forward", e,
                       hint="use fc.shapes(model, x) to see every value's shape")
        if fn in SIMPLE_BUILTINS:
            fn = SIMPLE_BUILTINS[fn]
        if not kwargs and any(isinstance(a, (Seq, SymDict)) for a in args):
            done = self._builtin_on_structure(fn, args)
            if done is not None:
                return done
            if any(isinstance(a, SymDict) for a in args) and fn in (len, zip, enumerate, reversed, tuple,
                                                                     list, sorted):
                args = [Static(tuple(a.items)) if isinstance(a, SymDict) else a for a in args]   # its keys
        if fn is isinstance and len(args) == 2 and isinstance(args[0], Node) and args[0].arity is None \
                and isinstance(args[1], Static) and _container_types(args[1].value):
            return Static(False)        # an array value is never a tuple, list or dict
        if getattr(fn, "__flux_inference_identity__", False) and not self.ctx.training:
            return args[0]
        if is_model(fn):
            self.error("this model is not an attribute of self", e,
                       hint="set sub-models as attributes in __init__ and call self.name(x)")
        if isinstance(fn, type) and getattr(fn, "__flux_net__", False):
            self.error(f"cannot construct {fn.__name__} inside forward", e,
                       hint="construct sub-models in __init__ and call them from forward")
        if fn is rules.known:
            return Static(len(args) == 1 and isinstance(args[0], Static) and bool(args[0].value))
        if fn is _unbroadcast() and len(args) == 2 and not kwargs and isinstance(args[0], Node):
            target = args[1]
            want = target.value if isinstance(target, Static) else getattr(target, "sym", None)
            if isinstance(want, tuple) and shapeinfer.same(shape_of(args[0]), want):
                return args[0]
            summed = self._static_unbroadcast(args[0], want, e)
            if summed is not None:
                return summed
        if rules.get_rule(fn) is not None or rules.is_nondiff(fn) or self.ctx.mode == "rule" \
                and not getattr(fn, "__flux_inline__", False):      # rule-time helpers: inlined
            self.baked_callee(fn, path)
            return self.call_primitive(fn, args, kwargs, e)
        if fn is len:
            (x,) = args
            if isinstance(x, Seq):
                return Static(len(x.items))
            if isinstance(x, Node) and x.arity is not None:
                return Static(x.arity)
            if isinstance(x, Node):
                return self.call_primitive(len, [x], {}, e)
        if fn is sum and len(args) in (1, 2) and isinstance(args[0], Seq) and not kwargs:
            total = args[1] if len(args) == 2 else Static(0)
            for item in args[0].items:
                total = self.binop(ast.Add(), total, item, e)
            return total
        if fn in (np.array, np.asarray, np.asanyarray) and len(args) == 1 and not (kwargs.keys() - {"dtype"}):
            x = args[0]
            if isinstance(x, Seq) and not kwargs:
                if len(x.items) == 1:
                    return self.call_primitive(np.expand_dims, [x.items[0], Static(0)], {}, e)
                from .rules.helpers import stack_items
                return self.call_primitive(stack_items, x.items, {}, e)
            if isinstance(x, Node) and not kwargs:
                return x if fn is not np.array else self.call_primitive(np.copy, [x], {}, e)
            if isinstance(x, Node):
                from .rules.helpers import astype
                return self.call_primitive(astype, [x, kwargs["dtype"]], {}, e)
        if fn is range and any(isinstance(a, Node) for a in args):
            args = [Static(self.concrete_int(a, e, "range(...)")) for a in args]
        if fn in (hasattr, getattr) and 2 <= len(args) <= 3 and not kwargs and isinstance(args[0], Static) \
                and args[0].src is not None and isinstance(args[1], Static) and isinstance(args[1].value, str):
            return self.look_up(fn, args, e)
        if fn in STATIC_BUILTINS or fn is np.shape:
            for a in list(args) + list(kwargs.values()):
                self.structure(a)
            if all(isinstance(a, Static) for a in args) and all(isinstance(v, Static) for v in kwargs.values()):
                try:
                    return _static(fn(*[a.value for a in args], **{k: v.value for k, v in kwargs.items()}))
                except Exception as err:
                    self.error(f"{getattr(fn, '__name__', fn)}(...) failed at compile time: {err}", e)
            if fn in (zip, enumerate, reversed, tuple, list) and all(isinstance(a, (Seq, Static)) for a in args):
                lists = [self.seq_items(a) for a in args]
                if fn is zip:
                    return Seq([Seq(list(t)) for t in zip(*lists)])
                if fn is enumerate:
                    return Seq([Seq([Static(i), v]) for i, v in enumerate(lists[0])])
                if fn is reversed:
                    return Seq(list(reversed(lists[0])))
                return Seq(lists[0])
            if fn in (float, int) and len(args) == 1:
                return self.call_primitive(fn, args, {}, e)
            if fn is getattr and isinstance(args[1], Static):
                return self.eval_Attribute_value(args[0], args[1].value, e)
            self.error(f"{fn.__name__}() needs arguments known at compile time here", e)
        if _inlinable(fn):
            return self.call_function(fn, args, kwargs, node=e, path=path)
        if isinstance(fn, type) and issubclass(fn, BaseException):
            if all(isinstance(a, Static) for a in args) and not kwargs:
                return Static(fn(*[a.value for a in args]))
            self.error("exceptions can only be built from constants inside forward", e)
        if not callable(fn):
            self.error(f"{type(fn).__name__} object is not callable", e)
        # any other callable (NumPy without a rule, math, ...) is an opaque primitive;
        # autodiff complains only if a gradient has to flow through it.
        self.baked_callee(fn, path)
        return self.call_primitive(fn, args, kwargs, e)

    @staticmethod
    def _builtin_on_structure(fn, args):
        """``dict(d)``, ``isinstance(t, tuple)`` and ``sorted(d.items())`` on a structured
        argument; None when ``fn(*args)`` is not one of them."""
        x = args[0]
        if fn is dict and len(args) == 1 and isinstance(x, SymDict):
            return SymDict(x.items)
        if fn is isinstance and len(args) == 2 and isinstance(args[1], Static) and (
                isinstance(x, SymDict) or isinstance(x, Seq) and x.kind is not None):
            return Static(issubclass(dict if isinstance(x, SymDict) else x.kind, args[1].value))
        if fn is sorted and len(args) == 1 and isinstance(x, Seq) and x.items and all(
                isinstance(p, Seq) and p.items and isinstance(p.items[0], Static) for p in x.items) \
                and len({repr(p.items[0].value) for p in x.items}) == len(x.items):
            return Seq(sorted(x.items, key=lambda p: p.items[0].value))    # sorted(d.items()): unique keys
        return None

    def _static_unbroadcast(self, g, target, e):
        """``unbroadcast(g, (1, 64))`` as the plain ``np.sum(g, axis=0, keepdims=True)`` when the
        ranks are known and the target is a tuple of ints."""
        have = shape_of(g)
        if have is None or not isinstance(target, tuple) or not all(isinstance(d, int) for d in target):
            return None
        lead = len(have) - len(target)
        if lead < 0:
            return None
        keep = tuple(lead + i for i, d in enumerate(target) if d == 1 and not
                     (isinstance(have[lead + i], int) and have[lead + i] == 1))
        if lead and keep:
            return None
        if lead:
            axis = 0 if lead == 1 else tuple(range(lead))
            return self.call_primitive(np.sum, [g], {"axis": Static(axis)}, e)
        if keep:
            axis = keep[0] if len(keep) == 1 else keep
            return self.call_primitive(np.sum, [g], {"axis": Static(axis), "keepdims": Static(True)}, e)
        return None

    def eval_Attribute_value(self, base, name, e):
        fake = ast.Attribute(value=ast.Name(id="__tmp__", ctx=ast.Load()), attr=name, ctx=ast.Load())
        ast.copy_location(fake, e)
        self.frame.env["__tmp__"] = base
        try:
            return self.eval_Attribute(fake)
        finally:
            del self.frame.env["__tmp__"]

    def call_method(self, m, args, kwargs, e):
        x, name = m.node, m.name
        if isinstance(x, SymDict):
            return self.dict_method(x, name, args, kwargs, e)
        if name == "astype":
            from .rules.helpers import astype
            return self.call_primitive(astype, [x] + args, kwargs, e)
        fn = METHODS[name]
        if name in VARARG_SHAPE_METHODS and len(args) > 1:
            args = [Seq(args) if not all(isinstance(a, Static) for a in args)
                    else Static(tuple(a.value for a in args))]
        if name in VARARG_SHAPE_METHODS and name == "transpose" and not args:
            return self.call_primitive(np.transpose, [x], {}, e)
        if name == "repeat" and len(args) >= 1:
            pass
        return self.call_primitive(fn, [x] + list(args), kwargs, e)

    def dict_method(self, d, name, args, kwargs, e):
        """``d.items()``, ``d.keys()``, ``d.values()``, ``d.get(key, default)`` on a SymDict."""
        if kwargs or (name != "get" and args) or (name == "get" and len(args) not in (1, 2)):
            self.error(f"unsupported call of dict.{name}", e)
        if name == "items":
            return Seq([Seq([Static(k), v]) for k, v in d.items.items()])
        if name == "keys":
            return Static(tuple(d.items))
        if name == "values":
            return Seq(list(d.items.values()))
        if not isinstance(args[0], Static):
            self.error("dict.get needs a key known at compile time", e)
        return d.items.get(args[0].value, args[1] if len(args) == 2 else Static(None))

    def call_model(self, ref, args, kwargs, e):
        if any(isinstance(a, SymDict) for a in args):
            self.error("a dict cannot be passed to a sub-model inside forward", e,
                       hint="pass its entries as separate inputs: self.layer(d['x'], d['h'])")
        if kwargs:
            self.error("keyword arguments to sub-models are not supported", e,
                       hint="pass inputs positionally: self.layer(x, h)")
        nodes = [self.as_node(a, e) for a in args]
        arity = None
        if ref.obj is not None and self.ctx.arity_of is not None:
            arity = self.ctx.arity_of(ref.obj, len(nodes), self._concrete_values(nodes))
        n = Node("model", nodes, base=ref.base, path=ref.path, target=ref.expr, diff=True, arity=arity)
        n.meta["obj"] = ref.obj
        return self.ctx.add(n)

    def _concrete_values(self, nodes):
        """The real values of ``nodes`` when the compiler has the actual arguments, else None."""
        conc = self.ctx.concrete
        if conc is None:
            return None
        from .concrete import UNKNOWN
        values = [conc.value(n) for n in nodes]
        return None if any(v is UNKNOWN for v in values) else values

    def call_primitive(self, fn, args, kwargs, e):
        if self.ctx.mode == "forward" and any(isinstance(a, Seq) for a in args):
            args = self._lists_as_arrays(fn, args, e)
        nodes = [self.as_node(a, e) for a in args]
        kw = {k: self.as_node(v, e) for k, v in kwargs.items()}
        if all(n.op == "const" for n in nodes + list(kw.values())) and _foldable(fn):
            try:
                r = fn(*[n.value for n in nodes], **{k: v.value for k, v in kw.items()})
                if isinstance(r, (int, float, bool, np.generic)) and not isinstance(r, np.ndarray):
                    return _static(r)
                if isinstance(r, np.ndarray) and r.ndim <= 1 and r.size <= 8:
                    return Static(r)
            except Exception:
                pass
        diff = (not rules.is_nondiff(fn)) and any(n.diff for n in nodes + list(kw.values())) \
            and not _casts_to_non_float(fn, nodes, kw)
        node = Node("call", nodes, kw, fn=fn, diff=diff)
        try:
            node.meta["shape"] = shapeinfer.infer(
                fn, [shape_of(a) for a in nodes], [a.value if a.op == "const" else _NOT_CONST for a in nodes],
                {k: v.value for k, v in kw.items() if v.op == "const"} if all(v.op == "const" for v in kw.values())
                else {"<dynamic>": True})
        except Exception:       # shape inference is best effort
            node.meta["shape"] = None
        arity = MULTI_OUTPUT.get(fn)
        if callable(arity):
            arity = arity(nodes, kw)
        node.arity = arity
        node = self.ctx.add(node)
        if fn in MULTI_OUTPUT and node.arity is None and self.ctx.concrete is not None:
            # how many pieces depends on a run-time size: compiled for this count, with a guard
            node.arity = self.concrete_int(self.call_primitive(len, [node], {}, e), e, "the number of pieces")
        return node

    def _lists_as_arrays(self, fn, args, e):
        """A list literal of arrays passed where NumPy wants one array becomes a stack of them
        (``np.sum([a, b])``); list parameters (``np.concatenate([a, b])``) keep their list."""
        rule = rules.get_rule(fn)
        names = rules.rule_signature(rule)[0] if rule is not None else []
        out = []
        for i, a in enumerate(args):
            name = names[i] if i < len(names) else ""
            if isinstance(a, Seq) and any(isinstance(x, Node) and x.diff for x in a.items) \
                    and name not in LIST_PARAMS and not name.startswith("*") and rule is not None:
                from .rules.helpers import stack_items
                a = self.call_primitive(stack_items, a.items, {}, e) if len(a.items) > 1 else \
                    self.call_primitive(np.expand_dims, [a.items[0], Static(0)], {}, e)
            out.append(a)
        return out

    def as_node(self, v, e=None):
        if isinstance(v, Node):
            return v
        if isinstance(v, Static):
            if v.src is not None and guards.value_token(v.value) is None:
                self.ctx.guard(v.src, "is", guards._ref(v.value))   # this very object is baked in
            return self.ctx.add(Node("const", value=v.value))
        if isinstance(v, Seq):
            items = [self.as_node(x, e) for x in v.items]
            return self.ctx.add(Node("pack", items, diff=any(i.diff for i in items), arity=len(items)))
        if isinstance(v, SymDict):
            self.error("a dict cannot be used as an array value", e,
                       hint="take its entries: d[key], d.values()")
        if isinstance(v, ModelRef):
            self.error("a model cannot be used as an array value", e,
                       hint="call it: self.layer(x)")
        if isinstance(v, (BoundMethod, UserMethod)):
            self.error("methods must be called", e)
        self.error(f"unsupported value {v!r}", e)


_NOT_CONST = object()
KEYED_ATTRS = (bool, int, str, type(None), np.dtype)    # attr_token keeps their value


def _unbroadcast():
    from .rules.helpers import unbroadcast
    return unbroadcast


def shape_of(node):
    """The symbolic shape the compiler knows for ``node`` (see shapeinfer), or None."""
    if node.op == "const":
        return shapeinfer.of_value(node.value)
    return node.meta.get("shape")


def _split_arity(nodes, kw):
    sections = nodes[1] if len(nodes) > 1 else kw.get("indices_or_sections")
    if sections is not None and sections.op == "const":
        v = sections.value
        return v if isinstance(v, int) else len(v) + 1
    return None


def _unstack_arity(nodes, kw):
    """``np.unstack(x, axis=a)`` gives one array per entry along ``a`` (when that size is known)."""
    shape = shape_of(nodes[0])
    axis = kw["axis"].value if "axis" in kw and kw["axis"].op == "const" else 0
    if shape is None or not isinstance(axis, int) or not -len(shape) <= axis < len(shape):
        return None
    return shape[axis] if isinstance(shape[axis], int) else None


MULTI_OUTPUT = {np.linalg.slogdet: 2, np.linalg.eigh: 2, np.split: _split_arity,
                np.array_split: _split_arity, np.hsplit: _split_arity, np.vsplit: _split_arity,
                np.dsplit: _split_arity, np.linalg.qr: 2}
if hasattr(np, "unstack"):
    MULTI_OUTPUT[np.unstack] = _unstack_arity


_MISSING = object()
MAX_UNROLL = 1000


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
    if dtype is None or dtype.op != "const" or dtype.value is None:
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


def _foldable(fn):
    mod = getattr(fn, "__module__", "") or ""
    return (type(fn).__name__ == "ufunc" or mod.startswith("numpy") or fn in (float, int, len)) \
        and not mod.startswith("numpy.random")


def _inlinable(fn):
    if not isinstance(fn, types.FunctionType):
        return False
    mod = getattr(fn, "__module__", "") or ""
    return not mod.startswith(OPAQUE_MODULE_PREFIXES) or getattr(fn, "__flux_inline__", False)


def classify_value(b, base, path, value, e):
    """What ``self.<path>`` is, for the compiler: a Param node, a sub-model, a constant, ..."""
    if isinstance(value, Param):
        n = b.param_node(base, path, value.trainable)
        n.meta["shape"] = tuple(value.shape)
        n.meta["complex"] = np.iscomplexobj(value.value)
        return n
    if is_model(value):
        return ModelRef(base, path, value)
    src = b.ctx.field_path(base, path)
    if isinstance(value, (list, tuple)):
        items = [classify_value(b, base, path + (i,), v, e) for i, v in enumerate(value)]
        if src is not None:
            b.ctx.guard(src, *guards.structure_guard(value))
        if all(isinstance(i, Static) for i in items):
            return Static(type(value)(i.value for i in items), src)
        return Seq(items)
    if isinstance(value, (np.ndarray, float)) and not isinstance(value, bool):
        n = b.ctx.graph.add(Node("attr", base=base, path=path, name=str(path[-1])))
        n.meta["shape"] = tuple(np.shape(value))
        n.meta["complex"] = np.iscomplexobj(value)
        return n
    return b.outside(value, src, str(path[-1]) if path else None)


def attr_token(value):
    """The part of a model's structure a compiled forward depends on (the cache key)."""
    if isinstance(value, Param):
        return ("param", value.trainable, value.shape)
    if is_model(value):
        return ("model", type(value).__module__, type(value).__qualname__)
    if isinstance(value, (list, tuple)):
        return (type(value).__name__,) + tuple(attr_token(v) for v in value)
    if isinstance(value, np.ndarray):
        return ("array", value.shape)
    if isinstance(value, float) and not isinstance(value, bool):
        return ("float",)
    if isinstance(value, (int, bool, str, type(None), np.dtype)):
        return ("value", value)
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, np.ufunc, type)):
        return ("fn", getattr(value, "__module__", None), getattr(value, "__qualname__", repr(value)))
    token = guards.value_token(value)
    if token is not None:
        return ("object", token)
    # dicts and other objects: what forward reads of them is guarded field by field (guards.py)
    return ("object", type(value).__module__, type(value).__qualname__)


# --------------------------------------------------------------------------
# convenience for tests and the docs


def trace_function(fn, arg_names, mode="forward"):
    """Build the graph of a plain function whose arguments are all arrays."""
    g = Graph(getattr(fn, "__name__", "f"))
    ctx = Context(g, mode)
    ctx.arity_of = None
    b = Builder(ctx)
    ins = [g.add(Node("input", name=n, diff=True)) for n in arg_names]
    out = b.call_function(fn, ins, {})
    g.outputs = [b.as_node(v) for v in (out.items if isinstance(out, Seq) else [out])]
    return g
