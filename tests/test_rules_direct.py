"""Every derivative rule, called directly, against finite differences and autograd.

Rules are ordinary Python, so besides being inlined by the compiler they can
be called: ``rule(dy, y, *args, **kwargs)``. Each case in ``rule_cases.CASES``
is checked against central differences of ``sum(dy * primitive(...))`` in
float64, against ``autograd`` where it has the same function, and for dtype
preservation in float32. The rules' source is checked to stay in the subset
the compiler inlines.
"""
from __future__ import annotations

import ast
import inspect
import operator
import textwrap

import os

import numpy as np
import pytest

try:                        # the whole package registers every rule (losses, ...)
    import flux_compile     # noqa: F401
except Exception:           # core half-written: the rule tables stand alone
    import flux_compile.functions  # noqa: F401
    import flux_compile.rules  # noqa: F401

from flux_compile import rules
from flux_compile.rules import helpers
from rule_cases import CASES, NONDIFF_CASES, primitive_name

EPS = 1e-6

# np.cross of 2-vectors is deprecated in NumPy 2 but still supported by the rule
pytestmark = pytest.mark.filterwarnings("ignore:Arrays of 2-dimensional vectors:DeprecationWarning")


# ---------------------------------------------------------------- utilities

def _is_seq(v):
    return isinstance(v, (list, tuple))


def _call(case, args):
    return case.primitive(*args, **case.kwargs)


def _make_dy(case, y, seed=0, dtype=None):
    """A random adjoint shaped like the output ``y`` (a list/tuple for several
    outputs; entries listed in ``case.dy_none`` are None)."""
    rng = np.random.default_rng(seed)

    def one(v):
        v = np.asarray(v)
        if v.dtype.kind == "c":     # a complex output gets a complex adjoint
            return np.asarray(rng.standard_normal(v.shape) + 1j * rng.standard_normal(v.shape),
                              dtype=np.complex64 if dtype == np.float32 or v.dtype == np.complex64 else complex)
        dt = dtype or (v.dtype if v.dtype.kind == "f" else np.float64)
        return np.asarray(rng.standard_normal(v.shape), dtype=dt)

    if _is_seq(y):
        dy = [None if i in case.dy_none else one(v) for i, v in enumerate(y)]
        return dy if isinstance(y, list) else tuple(dy)
    return one(y)


def _objective(case, args, dy):
    """Re(sum(dy * y)): with complex values, autograd's convention for the adjoint."""
    out = _call(case, args)
    if _is_seq(out):
        return sum(float(np.real(np.sum(d * o))) for d, o in zip(dy, out) if d is not None)
    return float(np.real(np.sum(dy * out)))


def _sym(m):
    return m + np.swapaxes(m, -1, -2)


def _fd(case, args, dy, i, j=None):
    """Central differences of the objective w.r.t. argument ``i`` (item ``j``
    of a list argument). A symmetric argument is perturbed through
    ``s + s^T`` at ``s = a / 2``."""
    args = list(args)
    if j is None:
        base = np.array(args[i])
    else:
        args[i] = list(args[i])
        base = np.array(args[i][j])
    base = base.astype(complex if np.iscomplexobj(base) else float)
    sym = i in case.sym
    x = base / 2 if sym else base.copy()

    def f():
        v = _sym(x) if sym else x
        if j is None:
            args[i] = v
        else:
            args[i][j] = v
        return _objective(case, args, dy)

    g = np.zeros_like(x)
    steps = (EPS, 1j * EPS) if np.iscomplexobj(x) else (EPS,)
    for idx in np.ndindex(x.shape):
        orig = x[idx]
        for step in steps:      # a complex input: d/dRe - i d/dIm (autograd's convention)
            x[idx] = orig + step
            fp = f()
            x[idx] = orig - step
            fm = f()
            x[idx] = orig
            g[idx] += (fp - fm) / (2 * EPS) * (1 if step == EPS else -1j)
    return g


def _rule_grads(case, args, dy, y):
    """One gradient per argument passed (a rule also answers for optional positional
    inputs that were not passed, such as np.average's weights)."""
    rule = rules.get_rule(case.primitive)
    out = rule(dy, y, *args, **case.kwargs)
    positional = rules.rule_signature(rule)[0]
    if isinstance(out, np.ndarray):
        return (out,)
    if positional[0].startswith("*"):
        return (out,) if len(args) == 1 else tuple(out)
    if len(positional) == 1:
        return (out,)
    return tuple(out)[:len(args)]


def _compare(case, got, want, what, i):
    assert got is not None, f"{case.id}: gradient {i} is None"
    got = np.asarray(got)
    assert got.shape == np.shape(want), f"{case.id}: gradient {i} has shape {got.shape}, input {np.shape(want)}"
    if i in case.sym:
        got = _sym(got)
    np.testing.assert_allclose(got, want, rtol=case.rtol, atol=case.atol,
                               err_msg=f"{case.id}: gradient {i} vs {what}")


def _ids(cases):
    seen, out = {}, []
    for c in cases:
        k = c.id
        seen[k] = seen.get(k, 0) + 1
        out.append(k if seen[k] == 1 else f"{k}#{seen[k]}")
    return out


def _unique_rules():
    seen, out = set(), []
    for prim, rule in rules.RULES.items():
        if id(rule) not in seen:
            seen.add(id(rule))
            out.append((prim, rule))
    return out


# ---------------------------------------------------------------- (1) coverage

def test_every_rule_has_a_case():
    """Every rule the library registers (user rules from other tests aside)."""
    covered = {id(c.primitive) for c in CASES}
    package = os.path.dirname(rules.__file__).rsplit(os.sep, 1)[0]
    missing = sorted(primitive_name(p) for p, rule in rules.RULES.items()
                     if id(p) not in covered and rule.__code__.co_filename.startswith(package))
    assert not missing, f"rules without a test case in tests/rule_cases.py: {missing}"


def test_enough_rules():
    assert len(rules.RULES) >= 110


def test_nondiff_primitives():
    missing = [primitive_name(p) for p in NONDIFF_CASES if not rules.is_nondiff(p)]
    assert not missing, f"not declared non-differentiable: {missing}"
    both = [primitive_name(p) for p in rules.NONDIFF if rules.get_rule(p) is not None]
    assert not both, f"both a rule and non-differentiable: {both}"


# ---------------------------------------------------------------- (2) finite differences

@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_rule_matches_finite_differences(case):
    args = case.args
    with np.errstate(all="ignore"):
        y = _call(case, args)
    dy = _make_dy(case, y)
    grads = _rule_grads(case, args, dy, y)
    assert len(grads) == len(args), f"{case.id}: {len(grads)} gradients for {len(args)} inputs"
    for i in case.diff:
        if isinstance(args[i], list):
            assert _is_seq(grads[i]) and len(grads[i]) == len(args[i]), \
                f"{case.id}: list input {i} needs one gradient per item"
            for j, gj in enumerate(grads[i]):
                _compare(case, gj, _fd(case, args, dy, i, j), f"finite differences (item {j})", i)
        else:
            _compare(case, grads[i], _fd(case, args, dy, i), "finite differences", i)


# ---------------------------------------------------------------- (3) autograd

def _autograd_fn(case):
    anp = pytest.importorskip("autograd.numpy")
    if case.autograd is False:
        return None
    if case.autograd is not None:
        return case.autograd
    if case.primitive is helpers.getitem:
        return operator.getitem
    name = primitive_name(case.primitive)
    if name.startswith("np.linalg."):
        return getattr(anp.linalg, name[len("np.linalg."):], None)
    if name.startswith("np.fft."):
        import autograd.numpy.fft as afft
        return getattr(afft, name[len("np.fft."):], None)
    if name.startswith("np."):
        return getattr(anp, name[len("np."):], None)
    return None


AUTOGRAD_CASES = [c for c in CASES if c.autograd is not False]


@pytest.mark.parametrize("case", AUTOGRAD_CASES, ids=_ids(AUTOGRAD_CASES))
def test_rule_matches_autograd(case):
    fn = _autograd_fn(case)
    if fn is None:
        pytest.skip("autograd has no such function")
    from autograd import make_vjp

    args = case.args
    y = _call(case, args)
    dy = _make_dy(case, y)
    grads = _rule_grads(case, args, dy, y)
    if _is_seq(y):      # autograd wants zeros, not None, for unused outputs
        ag_dy = [np.zeros_like(np.asarray(v, dtype=float)) if d is None else d for d, v in zip(dy, y)]
        ag_dy = tuple(ag_dy) if isinstance(y, tuple) else ag_dy
    else:
        ag_dy = dy
    for i in case.diff:
        def f(x, i=i):
            a = list(args)
            a[i] = x
            return fn(*a, **case.kwargs)
        try:
            vjp, _ = make_vjp(f)(args[i])
            want = vjp(ag_dy)
        except Exception as e:      # autograd lacks this VJP or these arguments
            pytest.skip(f"autograd cannot: {type(e).__name__}: {e}")
        if isinstance(args[i], list):
            for gj, wj in zip(grads[i], want):
                _compare(case, gj, _sym(wj) if i in case.sym else wj, "autograd", i)
        else:
            _compare(case, grads[i], _sym(want) if i in case.sym else want, "autograd", i)


# ---------------------------------------------------------------- (4) float32 stays float32

def _f32(v):
    if isinstance(v, list):
        return [_f32(x) for x in v]
    if isinstance(v, np.ndarray) and v.dtype == np.float64:
        return v.astype(np.float32)
    return v


F32_CASES = [c for c in CASES if c.f32 and not any(np.iscomplexobj(a) for a in c.args if isinstance(a, np.ndarray))]


@pytest.mark.parametrize("case", F32_CASES, ids=_ids(F32_CASES))
def test_rule_keeps_float32(case):
    args = tuple(_f32(a) for a in case.args)
    with np.errstate(all="ignore"):
        y = _call(case, args)
    dy = _make_dy(case, y)
    with np.errstate(all="ignore"):
        grads = _rule_grads(case, args, dy, y)
    for i in case.diff:
        items = grads[i] if isinstance(args[i], list) else [grads[i]]
        for g in items:
            assert np.asarray(g).dtype == np.float32, \
                f"{case.id}: float32 input {i} got a {np.asarray(g).dtype} gradient"


# ---------------------------------------------------------------- (5) rules stay in the subset

FORBIDDEN = (ast.For, ast.AsyncFor, ast.While, ast.Lambda, ast.ListComp, ast.SetComp,
             ast.DictComp, ast.GeneratorExp, ast.FunctionDef, ast.AsyncFunctionDef,
             ast.ClassDef, ast.Try, ast.With, ast.Raise, ast.Global, ast.Nonlocal,
             ast.Yield, ast.YieldFrom, ast.Await, ast.Import, ast.ImportFrom, ast.Delete,
             ast.NamedExpr)
ATTRIBUTES = {"shape", "ndim", "dtype", "T"}


def _root(node):
    while isinstance(node, ast.Attribute):
        node = node.value
    return node


def _condition_names(test):
    """Names a condition depends on, leaving out ``known(...)`` facts (which
    the compiler decides from what it knows about shapes)."""
    if isinstance(test, ast.Call) and isinstance(test.func, ast.Name) and test.func.id == "known":
        return set()
    if isinstance(test, ast.Name):
        return {test.id}
    names = set()
    for child in ast.iter_child_nodes(test):
        names |= _condition_names(child)
    return names


def _rule_ids():
    return [primitive_name(p) for p, _ in _unique_rules()]


@pytest.mark.parametrize("prim,rule", _unique_rules(), ids=_rule_ids())
def test_rule_source_is_in_the_subset(prim, rule):
    tree = ast.parse(textwrap.dedent(inspect.getsource(rule)))
    fn = tree.body[0]
    assert isinstance(fn, ast.FunctionDef)
    a = fn.args
    assert len(a.args) >= 2 and a.args[0].arg == "dy" or (not a.args and a.vararg), \
        "a rule starts with (dy, y, ...)"
    assert a.kwarg is None, "no **kwargs in a rule"
    kwonly = {p.arg for p in a.kwonlyargs}
    assert len(a.kw_defaults) == len(a.kwonlyargs) and all(d is not None for d in a.kw_defaults), \
        "keyword-only parameters need defaults"
    helper_names = set(helpers.__all__) | set(getattr(inspect.getmodule(rule), "KERNELS", ()))
    for stmt in fn.body:
        for node in ast.walk(stmt):
            assert not isinstance(node, FORBIDDEN), f"{type(node).__name__} at line {node.lineno}"
            if isinstance(node, (ast.If, ast.IfExp)):
                names = _condition_names(node.test)
                assert names <= kwonly, \
                    f"condition on {sorted(names - kwonly)} (only keyword-only parameters, " \
                    f"or facts wrapped in known(...))"
            elif isinstance(node, ast.Call):
                f = node.func
                assert not any(isinstance(x, ast.Starred) for x in node.args), "no *args in calls"
                assert not any(k.arg is None for k in node.keywords), "no **kwargs in calls"
                if isinstance(f, ast.Name) and f.id == "known":
                    pass        # compile-time shape facts, see rules.known
                elif isinstance(f, ast.Name):
                    if rule.__module__.startswith("flux_compile.rules"):
                        assert f.id in helper_names, f"call to {f.id!r}: not a helper"
                    else:       # a rule registered elsewhere calls its own module's functions
                        assert inspect.isfunction(rule.__globals__.get(f.id)), \
                            f"call to {f.id!r}: not a function of {rule.__module__}"
                else:
                    root = _root(f)
                    assert isinstance(root, ast.Name) and root.id == "np", \
                        f"call to {ast.unparse(f)}: only np.* and helpers"
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                root = _root(node)
                if not (isinstance(root, ast.Name) and root.id == "np"):
                    assert node.attr in ATTRIBUTES, f"attribute .{node.attr}"


@pytest.mark.parametrize("prim,rule", _unique_rules(), ids=_rule_ids())
def test_rule_parameters_match_the_primitive(prim, rule):
    """Positional names follow NumPy's where they can be passed by name;
    keyword-only names are the primitive's own keywords."""
    try:
        sig = inspect.signature(prim)
    except (TypeError, ValueError):
        pytest.skip("no signature")
    params = list(sig.parameters.values())
    pos, kw = rules.rule_signature(rule)
    if any(p.startswith("*") for p in pos):
        return
    by_name = {p.name: p for p in params}
    has_var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    for name, p in zip(pos, params):    # the compiler binds by name, also positional-only
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            assert name == p.name, f"positional {name!r} should be named {p.name!r}"
    required = [p.name for p in params if p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert len(pos) >= len(required), f"rule misses positional inputs {required[len(pos):]}"
    for name in kw:
        assert name in by_name or has_var_kw, f"keyword {name!r} is not a parameter of the primitive"
