"""The user's source, parsed once per function: ``inspect.getsource`` + ``ast``, with the map
from tree positions back to file:line (:class:`Source`) and the check that the file still
defines the code that runs."""
from __future__ import annotations

import ast
import __future__
import hashlib
import inspect
import linecache
import os
import textwrap
import types
import warnings
import weakref

from ._version import IMPORTED_NS
from .errors import CompileError
from .ir import Loc


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

    def loc(self, node, owner=None, via=()):
        """The :class:`Loc` of a node of this source's tree (kept: every compile of the function
        asks for the same nodes' locations again)."""
        key = (id(node), owner, via or ())
        memo = self.__dict__.setdefault("_locs", {})
        found = memo.get(key)
        if found is not None and found[0] is node:
            return found[1]
        lineno = getattr(node, "lineno", 1) + self.offset
        col = getattr(node, "col_offset", 0) + self.indent + 1
        seg = self.segment(node) if hasattr(node, "lineno") else None
        if isinstance(node, (ast.If, ast.While)):
            test = self.segment(node.test)
            seg = f"{'while' if isinstance(node, ast.While) else 'if'} {test}:" if test else seg
        elif isinstance(node, ast.For):
            target, it = self.segment(node.target), self.segment(node.iter)
            seg = f"for {target} in {it}:" if target and it else seg
        text = " ".join(seg.split()) if seg else ""
        loc = Loc(self.filename, lineno, col, text, owner or self.owner, via or ())
        memo[key] = (node, loc)
        return loc

    def segment(self, node):
        """``ast.get_source_segment(self.text, node)``, without splitting the text each time."""
        lines = self.__dict__.get("_lines")
        if lines is None:
            split = getattr(ast, "_splitlines_no_ff", None)
            if split is None:
                return ast.get_source_segment(self.text, node)
            lines = self._lines = split(self.text)
        try:
            first, last = node.lineno - 1, node.end_lineno - 1
            col, end_col = node.col_offset, node.end_col_offset
        except AttributeError:
            return None
        if None in (first, last, col, end_col) or not 0 <= first <= last < len(lines):
            return None
        if first == last:
            return lines[first].encode()[col:end_col].decode()
        head = lines[first].encode()[col:].decode()
        tail = lines[last].encode()[:end_col].decode()
        return "".join([head, *lines[first + 1:last], tail])


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
    if _unchanged_since_import(filename):
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


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_MTIME_MARGIN_NS = 2 * 10 ** 9         # file systems that keep times to the second or two


def _unchanged_since_import(filename):
    """Is ``filename`` a file of flux_compile itself, last modified before the package began
    importing? Its text is then the code that runs, without compiling the file to compare."""
    path = os.path.abspath(filename)
    if not path.startswith(_PACKAGE_DIR + os.sep):
        return False
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        return False
    return mtime < IMPORTED_NS - _MTIME_MARGIN_NS


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


def code_digest(code):
    """sha256 of everything a code object holds (instructions, names, constants, nested code,
    file, line and column table): equal exactly when the same source text, up to comments,
    was compiled under the same name and file. Needs no file read (cache keys on the hot path)."""
    return hashlib.sha256(repr(_code_token(code)).encode()).hexdigest()


_CODE_FIELDS = ("co_name", "co_qualname", "co_filename", "co_firstlineno", "co_argcount",
                "co_posonlyargcount", "co_kwonlyargcount", "co_flags", "co_code", "co_names",
                "co_varnames", "co_freevars", "co_cellvars", "co_linetable", "co_lnotab",
                "co_exceptiontable")


def _code_token(code):
    with warnings.catch_warnings():             # co_lnotab is deprecated (kept for Python 3.10)
        warnings.simplefilter("ignore", DeprecationWarning)
        fields = tuple(getattr(code, f, None) for f in _CODE_FIELDS)
    return fields + (tuple(_const_token(c) for c in code.co_consts),)


def _const_token(c):
    if isinstance(c, types.CodeType):
        return ("code", _code_token(c))
    if isinstance(c, tuple):
        return ("tuple", tuple(_const_token(x) for x in c))
    if isinstance(c, frozenset):                # its order follows the string hash seed
        return ("frozenset", tuple(sorted(repr(_const_token(x)) for x in c)))
    return (type(c).__name__, repr(c))


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
    """The parsed :class:`Source` of ``fn``, cached per code object."""
    code = getattr(fn, "__code__", None)
    key = code
    s = _sources.get(key) if key is not None else None
    if s is None:
        s = Source(fn)
        if key is not None:
            _sources[key] = s
    return s
