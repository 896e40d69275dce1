"""``flux-compile``: look inside a model from the shell.

    flux-compile show model.py:TLP --pass backward
    flux-compile graph mypkg.models:Affine --dot
    flux-compile shapes model.py "Affine(4, 3)" --input 8x4
    flux-compile check model.py "Affine(4, 3)" --input 8x4

Exit codes: 0 success, 1 a gradient check failed, 2 usage, load or compile error.
Errors print one readable message (a ``CompileError`` shows its line and a
caret); ``--traceback`` shows the Python traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import itertools
import os
import re
import sys
import traceback

import numpy as np

from .errors import CompileError, ModelError

PASSES = ("forward", "backward", "update", "all", "forward_train")


class UsageError(Exception):
    """A problem the user can fix from the command line: printed as one line, exit 2."""


# ----------------------------------------------------------------------------
# loading the user's code

_counter = itertools.count()


def load_file(path):
    """Run a ``.py`` file as a fresh module (unique name; its folder on ``sys.path``)."""
    if not os.path.isfile(path):
        raise UsageError(f"no such file: {path}")
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    name = f"_flux_cli_{stem}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module       # inspect and dataclasses look modules up here
    try:
        spec.loader.exec_module(module)
    except CompileError:
        raise
    except SyntaxError as e:
        raise UsageError(f"{e.filename}:{e.lineno}: syntax error: {e.msg}") from e
    except SystemExit as e:
        raise UsageError(f"running {path} to load it called sys.exit({e.code!r}); put the script's "
                         f"own code under `if __name__ == \"__main__\":` so that loading it only "
                         f"defines the models") from None
    except Exception as e:
        raise UsageError(f"running {path} failed: {type(e).__name__}: {e}") from e
    return module


def load_module(name):
    """Import ``package.module`` (the current directory is searched first)."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise UsageError(f"cannot import module {name!r}: {e}") from e
    except Exception as e:
        raise UsageError(f"importing {name} failed: {type(e).__name__}: {e}") from e


def load_target(target, functions=False):
    """``path/to/file.py:Class`` or ``package.module:Class`` → ``(module, class)``; with
    ``functions``, a plain function is a target too."""
    where, sep, name = target.rpartition(":")
    if not sep or not where or not name:
        raise UsageError(f"target {target!r} should look like path/to/file.py:ClassName "
                         "or package.module:ClassName")
    is_file = where.endswith(".py") or os.sep in where or "/" in where
    module = load_file(where) if is_file else load_module(where)
    obj = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{where} has no {name!r}")
        obj = getattr(obj, part)
    if functions and callable(obj) and not isinstance(obj, type):
        return module, obj
    if not (isinstance(obj, type) and getattr(obj, "__flux_net__", False)):
        raise UsageError(f"{where}:{name} is not a @fc.net class")
    return module, obj


def evaluate(module, expr, what="expression"):
    """Evaluate ``expr`` (e.g. ``"Affine(4, 3)"``) in the module's namespace."""
    try:
        return eval(expr, vars(module))  # noqa: S307 - the user's own code, by request
    except (CompileError, ModelError):
        raise
    except SyntaxError as e:
        raise UsageError(f"cannot parse {what} {expr!r}: {e.msg}") from e
    except Exception as e:
        raise UsageError(f"evaluating {what} {expr!r} failed: {type(e).__name__}: {e}") from e


def parse_shape(text):
    """``"5x4"`` → ``(5, 4)`` (``×`` and ``,`` also separate; ``"7"`` is one dimension)."""
    parts = re.split(r"[x×,]", text.strip().lower())
    if not all(p.strip().isdigit() for p in parts):
        raise UsageError(f"--input {text!r}: expected a shape like 5x4 (whole numbers separated by 'x')")
    return tuple(int(p) for p in parts)


def make_inputs(shapes, dtype="float64", seed=0):
    """Seeded standard-normal arrays of the given shapes."""
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise UsageError(f"--dtype {dtype!r} is not a NumPy dtype") from e
    if dt.kind != "f":
        raise UsageError(f"--dtype {dtype!r}: inputs must be floating point (float32, float64)")
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dt) for s in shapes]


# ----------------------------------------------------------------------------
# commands


def _colour(code, mode):
    if mode == "never" or (mode == "auto" and not sys.stdout.isatty()):
        return code
    try:
        from pygments import highlight
        from pygments.formatters import TerminalFormatter
        from pygments.lexers import PythonLexer
    except ImportError:
        return code
    return highlight(code, PythonLexer(), TerminalFormatter())


def _no_arg_instance(cls):
    try:
        return cls()
    except TypeError:
        return None


def _instance(module, cls, args):
    if args is None:
        return None
    return evaluate(module, f"{cls.__name__}({args})", "constructor call")


def _generic_or_instance(cls, inst, run):
    """``run(cls)`` (no instance needed); on a CompileError try ``cls()`` before giving up."""
    if inst is not None:
        return run(inst)
    try:
        return run(cls)
    except CompileError as e:
        inst = _no_arg_instance(cls)
        if inst is None:
            e.hint = ((e.hint + "\n") if e.hint else "") + (
                f"note: {cls.__name__} was compiled without an instance; if forward uses sub-models or "
                f"functions set in __init__, pass constructor arguments: --args '...'")
            raise
        return run(inst)


TRANSFORMS = ("gradient", "hvp", "jvp", "vjp", "jacobian", "hessian")


def _parse_shape_or_scalar(text):
    return () if text.strip().lower() in ("scalar", "0", "()") else parse_shape(text)


def show_transform(a):
    """``show FILE.py:fn --transform hvp --input 3``: the generated code of a transform of a
    plain function, for random inputs of the given shapes (``scalar`` for a 0-d one)."""
    import flux_compile as fc
    _, fn = load_target(a.target, functions=True)
    if isinstance(fn, type):
        raise UsageError("--transform takes a plain function (FILE.py:function), not a class")
    if not a.input:
        raise UsageError("--transform needs the argument shapes: --input 3 (once per argument; "
                         "'scalar' for a number)")
    xs = tuple(make_inputs([_parse_shape_or_scalar(s) for s in a.input], a.dtype, a.seed))
    xs = tuple(x[()] if np.ndim(x) == 0 else x for x in xs)
    argnums = a.argnums
    if a.transform == "hvp":
        return fc.hvp_source(fn, xs)
    if a.transform == "jvp":
        return fc.jvp_source(fn, xs)
    if a.transform == "vjp":
        return fc.source(fn, "backward", args=xs)
    make = {"gradient": fc.gradient, "jacobian": fc.jacobian, "hessian": fc.hessian}[a.transform]
    return fc.source(make(fn, argnums), inputs=xs)


def cmd_show(a):
    import flux_compile as fc
    if a.transform:
        print(_colour(str(show_transform(a)).rstrip("\n") + "\n", a.color), end="")
        return 0
    module, cls = load_target(a.target)
    inst = _instance(module, cls, a.args)
    if a.which == "update":
        inst = inst if inst is not None else _no_arg_instance(cls)
        if inst is None:
            raise UsageError(f"the update step is generated per model instance and {cls.__name__}() "
                             f"needs arguments: add --args '...' (the constructor's arguments)")
        text = fc.source(inst, "update")
    elif a.input:
        inst = inst if inst is not None else _no_arg_instance(cls)
        if inst is None:
            raise UsageError(f"--input needs an instance and {cls.__name__}() needs arguments: "
                             f"add --args '...' (the constructor's arguments)")
        xs = make_inputs([parse_shape(s) for s in a.input], a.dtype, a.seed)
        text = fc.source(inst, a.which, inputs=tuple(xs))
        if a.which == "all" and "def update" not in text:
            text = text.rstrip("\n") + "\n\n" + fc.source(inst, "update")
    else:
        text = _generic_or_instance(cls, inst, lambda m: fc.source(m, a.which))
        text = ("# generic code (input shapes unknown); add --input 8x4 (one per input) for the "
                "code that runs\n" + str(text))
        if a.which == "all":
            m = inst if inst is not None else _no_arg_instance(cls)
            if m is None:
                text = text.rstrip("\n") + (f"\n\n# update: generated per instance; {cls.__name__}() needs "
                                            "arguments (--args '...') to show it\n")
            elif not isinstance(text, str) or "def update" not in text:
                text = text.rstrip("\n") + "\n\n" + fc.source(m, "update")
    print(_colour(str(text).rstrip("\n") + "\n", a.color), end="")
    return 0


def cmd_graph(a):
    import flux_compile as fc
    module, cls = load_target(a.target)
    inst = _instance(module, cls, a.args)
    g = _generic_or_instance(cls, inst, fc.graph)
    print(g.to_dot() if a.dot else str(g))
    return 0


def _model_and_inputs(a):
    module = load_file(a.file)
    shapes = [parse_shape(s) for s in a.input or ()]
    if not shapes:
        raise UsageError("give the input shapes: --input 8x4 (once per input of forward)")
    m = evaluate(module, a.expr, "model expression")
    return m, make_inputs(shapes, getattr(a, "dtype", "float64"), a.seed)


def cmd_shapes(a):
    import flux_compile as fc
    from .params import is_model
    from .runstate import restore_states, snapshot_states
    m, xs = _model_and_inputs(a)
    if not is_model(m):
        raise UsageError(f"{a.expr!r} gave a {type(m).__name__}, not a @fc.net model")
    snap = snapshot_states(m)
    try:
        m(*xs)      # a failure here is a ModelError naming the user's line
    finally:
        restore_states(snap)
    print(fc.shapes(m, *xs))
    return 0


def cmd_check(a):
    import flux_compile as fc
    from .params import is_model
    m, xs = _model_and_inputs(a)
    if not (is_model(m) or callable(m)):
        raise UsageError(f"{a.expr!r} gave a {type(m).__name__}, not a model or function")
    report = fc.gradcheck(m, *xs, seed=a.seed, raise_on_fail=False)
    print(report)
    bad = [r.name for r in report.rows if not r.ok]
    if bad:
        print(f"FAIL: gradient mismatch in {', '.join(bad)}")
        return 1
    print(f"ok: {len(report.rows)} gradients match finite differences")
    return 0


# ----------------------------------------------------------------------------
# the parser


def build_parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                        help="show the Python traceback of an error")
    p = argparse.ArgumentParser(
        prog="flux-compile",
        description="Look inside flux_compile models: generated source, graphs, shapes, gradient checks.",
        epilog="exit codes: 0 ok, 1 gradient check failed, 2 usage, load or compile error")
    p.add_argument("--traceback", action="store_true", help="show the Python traceback of an error")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    target_help = "path/to/file.py:ClassName or package.module:ClassName"
    args_help = "constructor arguments, evaluated in the module, e.g. \"Affine(3, 4), Affine(4, 2)\""
    s = sub.add_parser("show", parents=[common], help="print the generated source of a @net class",
                       description="Print the generated forward, backward or update source of a @net class. "
                                   "No instance is needed for forward and backward.")
    s.add_argument("target", help=target_help)
    s.add_argument("--pass", dest="which", choices=PASSES, default="backward",
                   help="which generated function(s) to show (default: backward)")
    s.add_argument("--color", "--colour", choices=("auto", "always", "never"), default="auto",
                   help="syntax colour through pygments (auto: when stdout is a terminal)")
    s.add_argument("--args", metavar="ARGS", help=args_help)
    s.add_argument("--input", action="append", metavar="SHAPE",
                   help="shape of one input, e.g. 8x4 (repeat per input): show the variant that runs for it")
    s.add_argument("--dtype", default="float64", help="dtype of the --input arrays (default float64)")
    s.add_argument("--seed", type=int, default=0, help="seed for the random inputs (default 0)")
    s.add_argument("--transform", choices=TRANSFORMS,
                   help="show the generated code of this transform of a plain function "
                        "(FILE.py:function; give --input per argument, 'scalar' for a number)")
    s.add_argument("--argnums", type=int, default=0,
                   help="with --transform gradient/jacobian/hessian: the argument (default 0)")
    s.set_defaults(run=cmd_show)

    g = sub.add_parser("graph", parents=[common], help="print the IR graph of a @net class",
                       description="Print the IR graph (a tape listing) of a @net class's forward.")
    g.add_argument("target", help=target_help)
    g.add_argument("--dot", action="store_true", help="print Graphviz DOT instead of the listing")
    g.add_argument("--args", metavar="ARGS", help=args_help)
    g.set_defaults(run=cmd_graph)

    def model_cmd(name, help_, description):
        c = sub.add_parser(name, parents=[common], help=help_, description=description)
        c.add_argument("file", help="the .py file that defines the model")
        c.add_argument("expr", help="an expression building the model, e.g. \"Affine(4, 3)\"")
        c.add_argument("--input", action="append", metavar="SHAPE",
                       help="shape of one input, e.g. 8x4; repeat for each input of forward")
        c.add_argument("--seed", type=int, default=0, help="seed for the random inputs (default 0)")
        return c

    sh = model_cmd("shapes", "print the graph with every value's shape and dtype",
                   "Build the model, run it on random inputs of the given shapes and print its graph "
                   "with every value's shape and dtype.")
    sh.add_argument("--dtype", default="float64", help="dtype of the inputs (default float64)")
    sh.set_defaults(run=cmd_shapes)

    ch = model_cmd("check", "check gradients against finite differences",
                   "Compare the generated gradients of every input and parameter with central finite "
                   "differences in float64. Exit 0 when all match, 1 otherwise.")
    ch.set_defaults(run=cmd_check)
    return p


def main(argv=None):
    """Entry point of ``flux-compile`` and ``python -m flux_compile``; returns the exit code."""
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        return a.run(a)
    except Exception as e:  # noqa: BLE001 - every error becomes a message and exit 2
        if a.traceback:
            traceback.print_exc()
        elif isinstance(e, UsageError):
            print(f"flux-compile: error: {e}", file=sys.stderr)
        elif isinstance(e, CompileError):
            print(f"flux-compile: compile error at {e}", file=sys.stderr)
        elif isinstance(e, ModelError):
            print(f"flux-compile: error in the model: {e}", file=sys.stderr)
        else:
            print(f"flux-compile: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
