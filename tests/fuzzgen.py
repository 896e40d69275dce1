"""Differential fuzzer for flux_compile: random programs written as source files.

``generate(seed, features)`` writes a random program (a plain function, or ``@net``
classes using sub-models) as module source; ``check(program)`` imports it three
times - with ``numpy``, with ``autograd.numpy`` and with ``@net`` doing nothing - and
compares flux_compile against them:

* forward value against the module's own function run by NumPy;
* gradients against autograd on the same source and central finite differences;
* a second ``back`` doubles every ``Param.grad``; inputs are never modified;
* float32 in gives float32 out and float32 gradients;
* new closure cells, module globals, default values and attribute values, and a
  new batch size, give the new correct result (no stale compiled code).

A program flux_compile refuses must be refused with ``fc.CompileError``: that is
counted as ``rejected``, apart from ``wrong`` (a wrong number) and ``crash`` (any
other exception). Failures are put in bug classes (``BUG_CLASSES``, ``classify``) and
shrunk (``shrink``: statements, helpers and unused inputs dropped while the failure
stays the same). Everything is deterministic from the seed.

Run many: ``python tools/fuzz.py --count 2000 --group closure --out DIR`` (groups of
features in ``GROUPS``; ``--avoid no_listindex,no_pyfloat`` leaves out constructs of known
bug classes to look past them; ``--culprits`` names the identifiers behind each name
collision and the kind of value behind each stale result).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import random
import re
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import numpy as np

FEATURES = ("names", "helpers", "defaults", "closure", "globals", "submodel", "pytree", "control", "shapes")
# feature "inplace": augmented assignments (+=, -=, *=, /=) whose right side has another dtype
# (float64 casts, bool and int arrays, NumPy and Python scalars), int targets, carried h += ... in loops;
# feature "new_ops": primitives added in turn 2 (np.fft, svd, eig, angle, average, diff with prepend /
# append, select, sliding_window_view, np.r_ / np.c_); "patterns": static asserts, float(...),
# super().forward and dict arguments whose key order changes between calls
# switches that leave out constructs of a known bug class, to look past it: "no_listindex", "no_pyfloat"
AVOID = ("no_listindex", "no_pyfloat")
GROUPS = {
    "core": ("shapes",),
    "names": ("names", "shapes"),
    "helpers": ("helpers", "defaults", "names"),
    "closure": ("closure",),
    "globals": ("globals",),
    "defaults": ("defaults",),
    "submodel": ("submodel",),
    "pytree": ("pytree",),
    "control": ("control", "shapes"),
    "ops": ("more_ops", "shapes", "control"),
    "loops": ("loops", "control", "shapes"),     # loop regions: run-time / long trip counts, lists
    # cond regions: domain-guarded branches (log / sqrt / division under a test that keeps them
    # finite) and branches that would raise if taken (an index out of range, a singular inverse),
    # at the top level and inside loop regions
    "guards": ("guards", "loops", "control", "shapes"),
    "loops_model": ("loops", "submodel", "control", "shapes"),   # loop regions in models: Params read inside
    "newops": ("new_ops",),
    "newops_mixed": ("new_ops", "more_ops", "shapes", "control"),
    "jvp": ("jvp", "shapes", "control", "helpers"),
    "jvp_ops": ("jvp", "new_ops", "more_ops", "shapes"),
    "jvp_tree": ("jvp", "pytree", "closure", "globals", "submodel", "helpers"),
    "jvp_more": ("jvp", "more_ops", "shapes", "control"),
    "jvp_loops": ("jvp", "loops", "control", "shapes"),     # fc.jvp through loop regions
    "patterns": ("patterns", "pytree", "shapes", "control"),
    "patterns_model": ("patterns", "submodel", "pytree"),
    "inplace": ("inplace", "loops", "shapes", "control"),   # v += w with mixed dtypes, carried h += ...
    "layers": ("layers",),          # library layer stacks against torch: tests/fuzzlayers.py
    "all": FEATURES,
}

# Names the compiler's own generated code uses (adjoints, saved tuples, temporaries, runtime
# helpers, method names) plus ordinary ones: user code may use any of them.
GENERATED_NAMES = [
    "dy", "dx", "dz", "dz_1", "dy_1", "saved", "self", "t", "t_1", "t_2", "t_10", "y", "y_1", "x", "x_1",
    "W", "b", "g", "p", "lr", "np_1", "h_shape", "t_shape", "x_shape", "forward", "backward",
    "forward_train", "backward_params", "params", "state", "steps", "dW", "db", "dself", "dsaved", "ddy",
    "h", "out", "loss", "grad", "value", "shape", "i", "k", "a", "b_1", "d", "dt", "dt_1", "value_1",
    "fc_1", "unbroadcast", "sum_grad", "getitem_grad", "restore_axes", "extremum_mask", "unconcatenate",
    "matmul_grad_a", "matmul_grad_b", "fill_none", "normalize_axis", "reduced_size", "identity", "astype",
    "getitem", "inverse_permutation", "unstack", "Retrace", "guard", "slice", "tuple", "list", "dict", "zip",
    "buffers", "Buffers",
]
MODEL_METHODS = {"forward", "backward", "update", "pullback", "back", "zero_grad", "reset"}
RESERVED = {"np", "fc", "net", "range", "len", "float", "sum", "max", "min", "abs", "print", "None", "True",
            "False", "autograd", "self_1"}


def _runtime_helper_names():
    """Public names of the runtime helper module generated code calls (sorted: deterministic)."""
    try:
        from flux_compile.rules import helpers
    except Exception:           # pragma: no cover - the fuzzer still runs with the static list
        return []
    return sorted(n for n in helpers.__all__ if callable(getattr(helpers, n)))   # all its parts


NAME_POOL = sorted(set(GENERATED_NAMES + _runtime_helper_names()) - RESERVED)

LIST_INDEX = re.compile(r"\[\[|\[:, \[")
ENV = {"B": 3, "N": 4, "K": 2}
REBATCH_ENV = {"B": 5, "N": 4, "K": 2}
SHAPES = [(), ("1",), ("N",), ("B", "1"), ("1", "N"), ("B", "N"), ("B", "N"), ("B", "N"), ("K", "B", "N"),
          ("K", "1", "N"), ("1", "1"), ("N", "N")]
PLAIN_SHAPES = [("B", "N"), ("N",), ("N", "N")]

UNARY = ["np.tanh({a})", "np.sin({a})", "np.cos({a})", "np.exp(np.tanh({a}))", "({a}) ** 2", "({a}) ** 3",
         "np.sqrt({a} * {a} + 0.5)", "np.log(1.0 + ({a}) ** 2)", "np.log(np.abs({a}) + 0.5)", "-({a})",
         "np.abs({a})", "np.arctan({a})", "np.log1p({a} * {a})", "np.expm1(np.tanh({a}))", "np.square({a})",
         "1.0 / (1.0 + np.exp(-({a})))", "np.sinh(np.tanh({a}))", "np.cosh(np.tanh({a}))", "{a} * 0.5 + 0.25",
         "np.exp(-({a}) ** 2)", "np.reciprocal(1.0 + {a} * {a})", "np.maximum({a}, 0.0)"]
BINARY = ["({a}) + ({b})", "({a}) - ({b})", "({a}) * ({b})", "({a}) / (1.5 + np.cos({b}))",
          "np.maximum({a}, 0.9 * ({b}))", "np.minimum({a}, 1.1 * ({b}))",
          "np.where({a} > 0.9 * ({b}), {a}, {b})", "np.arctan2({a}, 1.5 + np.cos({b}))", "np.add({a}, {b})",
          "np.multiply({a}, np.tanh({b}))", "({a}) * 2.0 - ({b}) / 3.0"]
REDUCTIONS = ["np.sum", "np.mean", "np.max", "np.min", "np.prod"]
METHOD_REDUCTIONS = ["sum", "mean", "max"]
# feature "more_ops": further NumPy functions, in-place updates, einsum, split
MORE_UNARY = ["np.clip({a}, -0.6, 0.7)", "np.log2(1.0 + ({a}) ** 2)", "np.exp2(np.tanh({a}))",
              "np.power(np.abs({a}) + 0.5, 1.5)", "np.negative({a})", "np.tan(np.tanh({a}) * 0.5)",
              "np.arcsinh({a})", "np.arctanh(np.tanh({a}) * 0.5)", "np.cbrt(({a}) ** 2 + 1.0)", "np.fabs({a})",
              "np.where({a} > 0, {a}, 0.1 * {a})", "np.sign({a}) * ({a}) ** 2", "np.log10(1.5 + np.sin({a}))"]
AXIS_UNARY = ["np.cumsum({a}, axis=-1)", "np.flip({a}, axis=-1)", "np.roll({a}, 1, axis=-1)",
              "np.cumprod(1.0 + 0.1 * np.tanh({a}), axis=-1)", "np.diff({a}, prepend=0.0, axis=-1)",
              "{a} - np.mean({a}, axis=-1, keepdims=True)", "np.sort({a}, axis=-1)"]
MORE_REDUCTIONS = ["np.var", "np.std", "np.amax", "np.nansum", "np.average"]
# feature "new_ops": (template, shape of the result from the operand's shape s, or None when it
# does not apply); {a} an operand, {b} one of the same shape, {w} one of shape (s[-1],). Round
# trips are scaled: an exact copy of {a} compared with {a} (np.select) would sit on a kink.
NEW_SAME_SHAPE = [
    "np.real(np.fft.fft({a}, axis=-1))", "np.imag(np.fft.ifft({a}, axis=-1))",
    "np.fft.irfft(np.fft.rfft({a}, axis=-1) * 0.5, n={a}.shape[-1], axis=-1)", "np.fft.fftshift({a}, axes=-1)",
    "np.fft.ifftshift({a}, axes=-1)", "np.real(np.fft.ifft(np.fft.fft({a}, axis=-1) * 0.5, axis=-1))",
    "np.diff({a}, prepend=0.5, axis=-1)", "np.diff({a}, append=-0.25, axis=-1)",
    "np.select([{a} > 0.3, {a} < -0.4], [{a} * 2.0, np.tanh({b})], default=0.1 * {a})",
    "np.select([{a} > {b}], [{a} - {b}], 0.5 * {b})",
    "np.abs(np.fft.fft({a}, axis=-1) + 2.0)",
]
NEW_2D_SAME = ["np.real(np.fft.fft2({a}))", "np.real(np.fft.ifftn({a}, axes=(0, 1)))",
               "np.fft.irfft2(np.fft.rfft2({a}) * 0.5, s={a}.shape)", "np.diff({a}, axis=0, prepend={a}[:1])",
               "np.real(np.fft.fftn({a} * 0.5))"]
NEW_SQUARE = [("np.linalg.svd({m}, compute_uv=False)", ("N",)),
              ("np.linalg.svd({m}, full_matrices=False)[0] ** 2", ("N", "N")),
              ("np.linalg.svd({m})[2] ** 2", ("N", "N")),
              ("np.sort(np.real(np.linalg.eigvals({m} + {m}.T + 3.0 * np.eye({m}.shape[0]))))", ("N",)),
              ("np.sort(np.real(np.linalg.eig({m} @ {m}.T + np.eye({m}.shape[0]))[0]))", ("N",)),
              ("np.real(np.linalg.eig(np.diag(np.arange(1.0, {m}.shape[0] + 1.0)) * 3.0 + 0.1 * ({m} + {m}.T))[1]) ** 2",
               ("N", "N"))]


def dim(sym, env):
    return int(eval(sym, {}, dict(env)))


def concrete(shape, env):
    return tuple(dim(s, env) for s in shape)


def broadcast(a, b):
    """Symbolic broadcast of two shapes, or None when they do not broadcast."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else "1"
        y = b[-i] if i <= len(b) else "1"
        if x == y or y == "1":
            out.append(x)
        elif x == "1":
            out.append(y)
        else:
            return None
    return tuple(reversed(out))


# --------------------------------------------------------------------------------------------
# leaf specs: an argument (or closure cell, global, Param) is an array of a symbolic shape, a
# Python float, or a tuple / list / dict of them.

@dataclasses.dataclass
class Leaf:
    shape: tuple
    scale: float = 0.7
    python_float: bool = False


def make_value(spec, env, rng, dtype=np.float64):
    if isinstance(spec, Leaf):
        if spec.python_float:
            return float(rng.standard_normal() * spec.scale + 0.3)
        return (rng.standard_normal(concrete(spec.shape, env)) * spec.scale).astype(dtype)
    if isinstance(spec, dict):
        return {k: make_value(v, env, rng, dtype) for k, v in spec.items()}
    return type(spec)(make_value(v, env, rng, dtype) for v in spec)


def leaves(value):
    """The arrays and floats of a pytree, in order."""
    if isinstance(value, dict):
        return [x for v in value.values() for x in leaves(v)]
    if isinstance(value, (tuple, list)):
        return [x for v in value for x in leaves(v)]
    return [value]


def rebuild(spec_like, flat):
    """A pytree shaped like ``spec_like`` from the flat list ``flat`` (consumed)."""
    if isinstance(spec_like, dict):
        return {k: rebuild(v, flat) for k, v in spec_like.items()}
    if isinstance(spec_like, (tuple, list)):
        return type(spec_like)(rebuild(v, flat) for v in spec_like)
    return flat.pop(0)


def cast_tree(value, dtype):
    if isinstance(value, np.ndarray):
        return value.astype(dtype)
    if isinstance(value, dict):
        return {k: cast_tree(v, dtype) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(cast_tree(v, dtype) for v in value)
    return value


def copy_tree(value):
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return {k: copy_tree(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(copy_tree(v) for v in value)
    return value


def same_tree(a, b):
    la, lb = leaves(a), leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


# --------------------------------------------------------------------------------------------
# the program


@dataclasses.dataclass
class Program:
    """A generated module: reducible blocks of the main body and everything needed to run it."""
    seed: int
    features: tuple
    kind: str                          # "function" or "model"
    header: list                       # module-level lines after the imports (helpers, globals)
    signature: str                     # "def NAME(args):" line of the main function / forward
    blocks: list                       # list of lists of body lines (indented relative to the body)
    returns: list                      # terms summed by the return statement
    args: list                         # [(name, spec)] passed positionally
    defaults: list = dataclasses.field(default_factory=list)   # [(function name, number of defaults)]
    globals: list = dataclasses.field(default_factory=list)    # [(name, spec)]
    closure: list = dataclasses.field(default_factory=list)    # [(name, spec)] factory arguments
    factory: str = ""                  # name of the closure factory ("" when none)
    entry: str = ""                    # name of the function / outer class
    footer: list = dataclasses.field(default_factory=list)     # lines after the main definition
    params: list = dataclasses.field(default_factory=list)     # [(path, spec)] of a model's Params
    attrs: list = dataclasses.field(default_factory=list)      # [(path, spec)] float attributes
    model_return: bool = False         # forward returns a non-scalar array
    wrapper: list = dataclasses.field(default_factory=list)    # lines opening the factory / classes

    def describe(self):
        """One line per input kind: what the fuzzer passes for each name."""
        def spec_text(spec):
            if isinstance(spec, Leaf):
                return "python float" if spec.python_float else f"array{tuple(spec.shape)}"
            if isinstance(spec, dict):
                return "{" + ", ".join(f"{k!r}: {spec_text(v)}" for k, v in spec.items()) + "}"
            inner = ", ".join(spec_text(v) for v in spec)
            return f"[{inner}]" if isinstance(spec, list) else f"({inner},)"
        parts = [f"args: " + ", ".join(f"{n}={spec_text(s)}" for n, s in self.args)]
        if self.closure:
            parts.append(f"closure {self.factory}(" + ", ".join(f"{n}={spec_text(s)}" for n, s in self.closure)
                         + ") called with two sets of values")
        if self.globals:
            parts.append("globals set then changed: " + ", ".join(f"{n}={spec_text(s)}" for n, s in self.globals))
        if self.defaults:
            parts.append("__defaults__ changed: " + ", ".join(o for o, _ in self.defaults))
        if self.kind == "model":
            parts.append("model = build(...) with Params first.W, first.b, (second.W, second.b,) V; "
                         "attribute scale (python float) changed")
        parts.append(f"dims {ENV}, rebatch with {REBATCH_ENV}")
        return parts

    def body_lines(self):
        lines = [line for block in self.blocks for line in block]
        if self.model_return:
            lines.append(f"return {self.returns[0]}")
        else:
            lines.append("return " + " + ".join(self.returns))
        return lines

    def source(self):
        ind = "        " if self.factory or self.kind == "model" else "    "
        out = ["import numpy as np", "import flux_compile as fc", "", ""]
        out += self.header
        if self.kind == "model" or self.factory:
            out += self.wrapper
        out.append(ind[:-4] + self.signature)
        out += [ind + line for line in self.body_lines()]
        out += self.footer
        return "\n".join(out) + "\n"


class Names:
    """Fresh identifiers: from the collision pool (feature ``names``) or plain ``v1, v2, ...``."""

    def __init__(self, r, pool, taken=()):
        self.r, self.taken, self.n = r, set(taken) | RESERVED, 0
        self.pool = list(pool) if pool else []
        r.shuffle(self.pool)

    def fresh(self, prefix="v"):
        while self.pool:
            name = self.pool.pop()
            if name not in self.taken:
                self.taken.add(name)
                return name
        while True:
            self.n += 1
            name = f"{prefix}{self.n}"
            if name not in self.taken:
                self.taken.add(name)
                return name


class Body:
    """Random straight-line (and control-flow) code over values of known symbolic shapes."""

    def __init__(self, r, names, atoms, features, helpers, model_calls=(), shape_free=False):
        self.r, self.names, self.features = r, names, features
        self.shape_free = shape_free   # a helper's body: only ops valid for an input of any shape
        self.vars = dict(atoms)        # expression text -> shape
        self.blocks = []
        self.helpers = helpers         # [(name, arity, default_count)] shape-preserving helpers
        self.model_calls = list(model_calls)   # ["self.inner"] shape-preserving on (..., N)
        self.locals = []
        self.scalars = {k for k, s in atoms.items() if s == ()}   # may be Python floats: no methods

    def pick(self, pred=lambda s: True, avoid=()):
        names = [k for k, s in self.vars.items() if pred(s) and k not in avoid]
        return self.r.choice(names) if names else None

    def assign(self, expr, shape, indent=""):
        name = self.names.fresh()
        self.vars[name] = shape
        self.locals.append(name)
        if shape == ():                 # may be a Python float (arithmetic on one): no methods
            self.scalars.add(name)
        return name, f"{indent}{name} = {expr}"

    def expr(self):
        """One random expression: (text, shape) or None when no operand fits."""
        r = self.r
        kinds = ["unary", "binary", "binary", "reduce", "matmul", "index", "shape_op", "join"]
        if self.helpers:
            kinds += ["helper", "helper"]
        if self.model_calls:
            kinds += ["model", "model"]
        if "new_ops" in self.features:
            kinds += ["new_op"] * 4
        if self.shape_free:
            kinds = ["unary", "binary", "full_reduce"] + (["helper"] if self.helpers else [])
        kind = r.choice(kinds)
        return getattr(self, "e_" + kind)()

    def e_new_op(self):
        """One of the primitives added in turn 2, at a shape it applies to."""
        r = self.r
        a = self.pick(lambda s: len(s) >= 1 and s[-1] == "N", avoid=self.scalars)
        if a is None:
            return None
        s = self.vars[a]
        b = self.pick(lambda t: t == s, avoid=(a,)) or f"np.cos({a})"
        w = self.pick(lambda t: t == ("N",), avoid=(a,))
        options = [(t.format(a=a, b=b), s) for t in NEW_SAME_SHAPE]
        options += [(f"np.angle(np.fft.rfft({a}, axis=-1) + 3.0)", s[:-1] + ("N//2+1",)),
                    (f"np.abs(np.fft.rfft({a}, axis=-1)) ** 2", s[:-1] + ("N//2+1",)),
                    (f"np.fft.hfft({a}[..., :3], axis=-1)", s[:-1] + ("4",)),
                    (f"np.real(np.fft.ihfft({a}, axis=-1))", s[:-1] + ("N//2+1",)),
                    (f"np.sum(np.lib.stride_tricks.sliding_window_view({a}, 2, axis=-1), axis=-1)",
                     s[:-1] + ("N-1",)),
                    (f"np.average({a}, axis=-1)", s[:-1]),
                    (f"np.real(np.fft.fft({a}, n=6, axis=-1, norm='ortho'))", s[:-1] + ("6",)),
                    (f"np.fft.irfft(np.fft.rfft({a}, n=3, axis=-1), n=5, axis=-1, norm='forward')", s[:-1] + ("5",)),
                    (f"np.imag(np.fft.ifft({a}, n=2, axis=-1))", s[:-1] + ("2",)),
                    (f"np.fft.irfft({a}, axis=-1)", s[:-1] + ("2*N-2",)),
                    (f"np.average({a}, axis=-1, weights=np.arange(1.0, {a}.shape[-1] + 1.0), returned=True)[0]",
                     s[:-1])]
        if w is not None:
            options.append((f"np.average({a}, axis=-1, weights=np.abs({w}) + 0.5)", s[:-1]))
        if len(s) == 1:
            options += [(f"np.r_[{a}, {b}]", ("(N+N)",)), (f"np.c_[{a}, {b}]", ("N", "2")),
                        (f"np.r_[{a}, 0.5, {a}[:2]]", ("(N+3)",))]
        if len(s) == 2:
            options += [(t.format(a=a), s) for t in NEW_2D_SAME]
            options += [(f"np.c_[{a}, {b}]", (s[0], "(N+N)")), (f"np.r_[{a}, {b}]", (f"({s[0]}+{s[0]})", "N"))]
        if s == ("N", "N"):
            options += [(t.format(m=a), shape) for t, shape in NEW_SQUARE]
        return r.choice(options)

    def e_full_reduce(self):
        a = self.pick()
        return f"{self.r.choice(REDUCTIONS[:2])}({a})", ()

    def e_unary(self):
        a = self.pick()
        if "more_ops" in self.features and self.r.random() < 0.5:
            if self.vars[a] and a not in self.scalars and self.r.random() < 0.5:
                return self.r.choice(AXIS_UNARY).format(a=a), self.vars[a]
            return self.r.choice(MORE_UNARY).format(a=a), self.vars[a]
        return self.r.choice(UNARY).format(a=a), self.vars[a]

    def e_binary(self):
        a = self.pick()
        choices = [k for k, s in self.vars.items() if k != a and broadcast(self.vars[a], s) is not None]
        if not choices:
            return None
        b = self.r.choice(choices)
        if self.r.random() < 0.5:
            a, b = b, a
        return self.r.choice(BINARY).format(a=a, b=b), broadcast(self.vars[a], self.vars[b])

    def e_reduce(self):
        r = self.r
        a = self.pick(avoid=self.scalars)
        shape = self.vars[a]
        nd = len(shape)
        fn = r.choice(REDUCTIONS + (MORE_REDUCTIONS if "more_ops" in self.features else []))
        if nd == 0 or r.random() < 0.2:
            return f"{fn}({a})", ()
        axis = r.randrange(-nd, nd)
        keep = r.random() < 0.5
        pos = axis % nd
        out = tuple("1" if i == pos else s for i, s in enumerate(shape)) if keep else \
            tuple(s for i, s in enumerate(shape) if i != pos)
        if fn == "np.prod" and shape[pos] not in ("1", "K", "N", "B"):
            fn = "np.sum"
        if r.random() < 0.3 and nd:
            return f"{a}.{r.choice(METHOD_REDUCTIONS)}(axis={axis}, keepdims={keep})", out
        return f"{fn}({a}, axis={axis}, keepdims={keep})", out

    def e_matmul(self):
        r = self.r
        a = self.pick(lambda s: len(s) >= 1 and s[-1] == "N")
        m = self.pick(lambda s: s == ("N", "N"), avoid=(a,))
        if a is None:
            return None
        if self.r.random() < 0.3 or m is None:
            v = self.pick(lambda s: s == ("N",), avoid=(a,))
            if v is None or len(self.vars[a]) < 1:
                return None
            return f"{a} @ {v}", self.vars[a][:-1]
        forms = ["{a} @ {m}", "np.matmul({a}, {m})", "{a} @ {m}.T", "np.tanh({a} @ {m})"]
        if "more_ops" in self.features:
            forms += ["np.einsum('...i,ij->...j', {a}, {m})", "np.tensordot({a}, {m}, axes=1)",
                      "np.inner({a}, {m})"]
        form = r.choice(forms)
        if len(self.vars[a]) == 2 and r.random() < 0.2:
            form = "np.dot({a}, {m})"
        return form.format(a=a, m=m), self.vars[a]

    def e_index(self):
        r = self.r
        a = self.pick(lambda s: len(s) >= 1 and s[0] not in ("1",))
        if a is None:
            return None
        s = self.vars[a]
        options = [(f"{a}[1]", s[1:]), (f"{a}[-1]", s[1:]), (f"{a}[::-1]", s),
                   (f"{a}[1:]", (f"{s[0]}-1",) + s[1:]), (f"{a}[[0, 1, 0]]", ("3",) + s[1:]),
                   (f"{a}[[-1, 0]]", ("2",) + s[1:]), (f"{a}[None]", ("1",) + s)]
        if len(s) >= 2 and s[1] != "1":
            options += [(f"{a}[:, 1:]", (s[0], f"{s[1]}-1") + s[2:]), (f"{a}[:, -1]", (s[0],) + s[2:]),
                        (f"{a}[:, [1, 0, 1]]", (s[0], "3") + s[2:]), (f"{a}[..., 0]", s[:-1]),
                        (f"{a}[:, None]", (s[0], "1") + s[1:])]
        if "no_listindex" in self.features:
            options = [o for o in options if not LIST_INDEX.search(o[0])]
        return r.choice(options)

    def e_shape_op(self):
        r = self.r
        a = self.pick(avoid=self.scalars)
        s = self.vars[a]
        options = [(f"{a}.reshape(-1)", ("*".join(s) or "1",)), (f"np.expand_dims({a}, 0)", ("1",) + s)]
        if len(s) >= 2:
            options += [(f"{a}.T", tuple(reversed(s))), (f"np.transpose({a})", tuple(reversed(s))),
                        (f"{a}.reshape({a}.shape[0], -1)", (s[0], "*".join(s[1:]))),
                        (f"np.swapaxes({a}, 0, -1)", (s[-1],) + s[1:-1] + (s[0],)),
                        (f"{a}.reshape({a}.shape + (1,))", s + ("1",))]
        if len(s) == 3:
            options += [(f"np.transpose({a}, (1, 0, 2))", (s[1], s[0], s[2]))]
        if "1" in s:
            i = s.index("1")
            options += [(f"np.squeeze({a}, axis={i})", s[:i] + s[i + 1:])]
        return r.choice(options)

    def e_join(self):
        r = self.r
        a = self.pick(lambda s: len(s) >= 1)
        if a is None:
            return None
        s = self.vars[a]
        b = self.pick(lambda t: t == s, avoid=(a,))
        other = b if b is not None else f"np.tanh({a})"
        if r.random() < 0.5:
            axis = r.randrange(len(s))
            out = tuple(f"({d}+{d})" if i == axis else d for i, d in enumerate(s))
            return f"np.concatenate([{a}, {other}], axis={axis})", out
        axis = r.randrange(len(s) + 1)
        return f"np.stack([{a}, {other}], axis={axis})", s[:axis] + ("2",) + s[axis:]

    def e_helper(self):
        name, arity, ndef = self.r.choice(self.helpers)
        a = self.pick()
        args = [a]
        for _ in range(arity - 1):
            b = self.pick(lambda s: s == self.vars[a], avoid=(a,)) or "0.5"
            args.append(b)
        if ndef and self.r.random() < 0.3:
            args.append(f"{self.r.choice([0.25, -0.5, 2.0])}")
        if self.vars[a] == () and not self.shape_free:
            return f"{name}({', '.join(args)})", ()
        return f"{name}({', '.join(args)})", self.vars[a]

    def e_model(self):
        call = self.r.choice(self.model_calls)
        a = self.pick(lambda s: s == ("B", "N"))      # the shape the sub-model's body was written for
        if a is None:
            return None
        return f"{call}({a})", self.vars[a]

    # -- statements ------------------------------------------------------------------------
    def statement(self, indent=""):
        if "patterns" in self.features and self.r.random() < 0.3:
            block = self.pattern_block(indent)
            if block:
                return block
        if "inplace" in self.features and self.r.random() < 0.35:
            block = self.mixed_inplace_block(indent)
            if block:
                return block
        if "more_ops" in self.features and self.r.random() < 0.15:
            block = self.inplace_block(indent)
            if block:
                return block
        for _ in range(20):
            e = self.expr()
            if e is not None and len(e[1]) <= 4:
                name, line = self.assign(*e, indent=indent)
                return [line]
        a = self.pick()
        name, line = self.assign(a, self.vars[a], indent=indent)
        return [line]

    def pattern_block(self, indent):
        """A static assert on a shape, or ``float(...)`` of a reduction scaling an array."""
        r = self.r
        a = self.pick(lambda s: len(s) >= 1, avoid=self.scalars)
        if a is None:
            return None
        s = self.vars[a]
        b = self.pick(lambda t: len(t) >= 1, avoid=self.scalars)
        if r.random() < 0.4:
            test = r.choice([f"{a}.ndim == {len(s)}", f"{a}.shape[-1] == {dim(s[-1], ENV)}" if s[-1] != "B"
                             else f"{a}.shape[-1] > 0", f"len({a}.shape) >= 1", f"{a}.shape == {a}.shape"])
            lines = [f"{indent}assert {test}, 'shape'"]
            name, line = self.assign(f"np.tanh({a})", s, indent=indent)
            return lines + [line]
        form = r.choice(["{a} * float(np.mean({b}))", "{a} + float(np.sum({b} ** 2)) * 0.1",
                         "np.tanh({a}) * float(np.max({b}))"])
        name, line = self.assign(form.format(a=a, b=b), s, indent=indent)
        return [line]

    def inplace_block(self, indent):
        """A fresh array updated in place: ``v = np.tanh(a)``, then ``v += b`` / ``v *= b`` / ``v[0] = ...``."""
        a = self.pick(lambda s: len(s) >= 1)
        if a is None:
            return None
        shape = self.vars[a]
        b = self.pick(lambda s: broadcast(shape, s) == shape, avoid=(a,)) or "0.5"
        name, line = self.assign(f"np.tanh({a})", shape, indent=indent)
        op = self.r.choice(["+=", "-=", "*="])
        lines = [line, f"{indent}{name} {op} {b}"]
        if self.r.random() < 0.3:
            lines.append(f"{indent}{name}[0] = {name}[-1] * 2.0")
        return lines

    def mixed_inplace_block(self, indent):
        """``v = np.tanh(a)`` then ``v op= w`` where ``w`` may have another dtype than ``v`` (NumPy
        keeps ``v``'s); sometimes an int target ``k += ...`` that scales an array afterwards."""
        r = self.r
        a = self.pick(lambda s: len(s) >= 1)
        if a is None:
            return None
        shape = self.vars[a]
        b = self.pick(lambda s: broadcast(shape, s) == shape, avoid={a} | self.scalars)   # arrays only
        if r.random() < 0.2 and b is not None:       # an int target: int right sides only
            k = self.names.fresh("k")
            rhs = r.choice([f"({b} > 0)", "2", f"({b} < 0).astype(np.int64)"])
            lines = [f"{indent}{k} = ({a} > 0).astype(np.int64)", f"{indent}{k} += {rhs}"]
            name, line = self.assign(f"{a} * {k}", shape, indent=indent)
            return lines + [line]
        forms = ["0.5", "2", "np.float64(0.75)", "np.float32(0.75)"]
        if b is not None:
            forms += [f"{b}.astype(np.float64)", f"np.tanh({b}).astype(np.float64)", f"({b} > 0)",
                      f"np.asarray({b}, dtype=np.float64) * 0.5", b]
        rhs = r.choice(forms)
        op = r.choice(["+=", "-=", "*=", "/="])
        base = f"np.tanh({a})" if op != "/=" else f"np.tanh({a}) + 2.0"
        if op == "/=" and rhs.startswith("("):          # a bool array may hold zeros
            rhs = f"{rhs} + 1.5"
        elif op == "/=" and b is not None and b in rhs:
            rhs = f"(np.cos({rhs}) + 2.0)"
        name, line = self.assign(base, shape, indent=indent)
        return [line, f"{indent}{name} {op} {rhs}"]

    def loop_block(self):
        """A loop compiled as a region: a trip count from a shape or above the unrolling limit,
        a carried accumulator, sometimes a list filled each trip and stacked after the loop."""
        r = self.r
        a = self.pick(lambda s: len(s) >= 1)
        if a is None:
            return None
        shape = self.vars[a]
        i = self.names.fresh("i")
        acc, line = self.assign(f"{a} * 0.5", shape)
        lines = [line]
        collect = r.random() < 0.5
        count = r.choice([f"{a}.shape[0] + 33", "40"] + ([] if collect else [f"{a}.shape[0] * 3"]))
        if collect:
            hs = self.names.fresh("hs")
            lines.append(f"{hs} = []")
        lines += [f"for {i} in range({count}):"]
        if not collect:
            lines += self.loop_jumps(acc, i)
        lines += [f"    {acc} = {acc} * 0.9 + np.tanh({acc} + {a} * {i} * 0.01) * 0.1"]
        if "inplace" in self.features and r.random() < 0.5:    # a carried in-place update
            lines.append(f"    {acc} {r.choice(['+=', '-='])} np.sin({acc}).astype(np.float64) * 0.01")
        if r.random() < 0.3:
            b = self.pick(lambda s: broadcast(shape, s) == shape, avoid=(a, acc))
            if b is not None:
                lines.append(f"    {acc} = {acc} + np.sin({b}) * 0.01")
        attrs = sorted(v for v in self.vars if v.startswith("self."))
        if attrs and r.random() < 0.4:      # a Param / attribute read inside the region (and after)
            lines.append(f"    {acc} = {acc} + np.tanh(np.mean({r.choice(attrs)} * np.mean({acc}))) * 0.01")
        if collect:
            lines.append(f"    {hs}.append(np.cos({acc}) * 0.5)")
            lines.append(self.assign(f"np.mean(np.stack({hs}), axis=0) + {acc}", shape)[1])
        return lines

    def loop_jumps(self, acc, i):
        """Control flow on data inside a loop region: an if/else, a continue, a break."""
        r, lines = self.r, []
        if r.random() < 0.5:
            lines += [f"    if np.sum({acc}) > {r.choice(['0.0', '0.3', '-0.2'])}:",
                      f"        {acc} = {acc} * 0.7 - 0.05",
                      "    else:",
                      f"        {acc} = np.sin({acc}) + 0.05"]
        if r.random() < 0.4:
            lines += [f"    if np.sin(np.sum({acc}) * 7.0 + {i}) > 0.3:",
                      f"        {acc} = {acc} + 0.01",
                      "        continue"]
        if r.random() < 0.4:
            lines += [f"    if np.max({acc}) + {i} * 0.05 > {r.choice(['1.0', '2.0'])}:",
                      "        break"]
        if "guards" in self.features and r.random() < 0.6:     # NaN / raising if the other branch ran
            lines += [f"    if np.sum({acc}) > -0.5:",
                      f"        {acc} = {acc} * 0.9 + np.log(1.0 + np.sum({acc})) * 0.1",
                      f"    elif np.sum({acc}) > 1e6:",
                      f"        {acc} = {acc}[{acc}.shape[0] + 1] + {acc}",
                      "    else:",
                      f"        {acc} = np.sqrt(-np.sum({acc})) * 0.1 + {acc} * 0.5"]
        return lines

    def guard_block(self, indent=""):
        """An ``if`` on data whose untaken side is NaN or raises in Python: a log, sqrt or
        division under a test that keeps it finite, or an out-of-range index / a singular
        inverse under a test that is never true. Only the taken branch may run."""
        r = self.r
        a = self.pick(lambda s: len(s) >= 1)
        if a is None:
            return None
        shape, s = self.vars[a], f"np.sum({a})"
        kind = r.choice(["log", "sqrt", "div", "index", "inv"])
        test, negated, guarded = {
            "log": (f"{s} > 0.5", f"{s} <= 0.5", f"np.log({s}) * {a}"),
            "sqrt": (f"{s} > 1.0", f"{s} <= 1.0", f"np.sqrt({s} - 0.5) * {a}"),
            "div": (f"np.abs({s} - 0.5) > 0.5", f"np.abs({s} - 0.5) <= 0.5", f"{a} / ({s} - 0.5)"),
            "index": (f"{s} > 1e6", f"{s} <= 1e6", f"{a}[{a}.shape[0] + 1] + {a}"),
            "inv": (f"{s} > 1e6", f"{s} <= 1e6", f"np.linalg.inv(np.zeros((2, 2)))[0, 0] * {a}"),
        }[kind]
        other = r.choice(UNARY).format(a=a)
        if r.random() < 0.5:            # the guarded side in the else branch
            test, guarded, other = negated, other, guarded
        name = self.names.fresh()
        lines = [f"{indent}if {test}:", f"{indent}    {name} = {guarded}",
                 f"{indent}else:", f"{indent}    {name} = {other}"]
        self.vars[name] = shape
        self.locals.append(name)
        return lines

    def control_block(self):
        r = self.r
        if "guards" in self.features and r.random() < 0.5:
            return self.guard_block()
        if "loops" in self.features and r.random() < 0.7:
            return self.loop_block()
        if r.random() < 0.5:
            cond = self.pick()
            before = dict(self.vars)
            lines = [f"if np.sum({cond}) > 0:"]
            then = self.statement("    ")
            name = self.locals[-1]
            shape = self.vars[name]
            alt = [k for k, s in before.items() if s == shape] or [None]
            alt_expr = r.choice(alt)
            if alt_expr is None:
                alt_expr = f"{name} * 0" if False else None
            if alt_expr is None:
                del self.vars[name]
                self.locals.pop()
                return None
            lines += then + ["else:", f"    {name} = {r.choice(UNARY).format(a=alt_expr)}"]
            return lines
        a = self.pick(lambda s: len(s) >= 1)
        if a is None:
            return None
        i = self.names.fresh("i")
        acc, line = self.assign(f"{a} * 0.5", self.vars[a])
        lines = [line, f"for {i} in range({r.randint(1, 3)}):",
                 f"    {acc} = {acc} + np.tanh({acc} * {i} + {a}) * 0.5"]
        if r.random() < 0.4:
            lines += [f"    if np.mean({acc}) > {i} * 0.1:", f"        {acc} = {acc} * 0.9"]
        return lines

    def generate(self, n):
        for _ in range(n):
            if "control" in self.features and self.r.random() < 0.3:
                block = self.control_block()
                if block:
                    self.blocks.append(block)
                    continue
            self.blocks.append(self.statement())
        return self.blocks


def _leaf_atoms(expr, spec):
    """Expressions reading each array of a pytree argument: ``tree[0]``, ``tree['a'][1]``."""
    if isinstance(spec, Leaf):
        return [(expr, () if spec.python_float else spec.shape)]
    if isinstance(spec, dict):
        return [a for k, v in spec.items() for a in _leaf_atoms(f"{expr}[{k!r}]", v)]
    return [a for i, v in enumerate(spec) for a in _leaf_atoms(f"{expr}[{i}]", v)]


class Generator:
    """Random programs; every choice comes from ``r`` (by default seeded from ``seed`` and the
    features; hypothesis passes its own ``random.Random`` so that it can shrink the choices)."""

    def __init__(self, seed, features, r=None):
        self.seed, self.features = seed, tuple(sorted(features))
        self.r = r if r is not None else random.Random(f"{seed}:{','.join(self.features)}")
        self.top = Names(self.r, NAME_POOL if "names" in features else None,
                         taken={"self", "first", "second", "scale", "build", "u", "x"} | MODEL_METHODS)

    def has(self, f):
        return f in self.features

    def leaf(self, python_float_ok=True):
        r = self.r
        if python_float_ok and r.random() < 0.1 and not self.has("no_pyfloat"):
            return Leaf((), python_float=True)
        return Leaf(r.choice(SHAPES if self.has("shapes") else PLAIN_SHAPES))

    def tree_spec(self):
        r = self.r
        k = r.choice(["tuple", "list", "dict", "nested"])
        if k == "tuple":
            return (self.leaf(), Leaf(("B", "N")))
        if k == "list":
            return [Leaf(("N", "N")), self.leaf()]
        if k == "dict":
            return {"w": Leaf(("N",)), "a": self.leaf(), "z": Leaf(("B", "N"))}
        return ({"m": Leaf(("N", "N"))}, [self.leaf(False), Leaf(("1", "N"))])

    # -- helpers -----------------------------------------------------------------------------
    def helpers(self, header):
        """Module-level helpers (inlined by the compiler): defs, a lambda, one calling another."""
        out = []
        n = self.r.randint(1, 3)
        for j in range(n):
            name = self.top.fresh("helper")
            inner = Names(self.r, NAME_POOL if self.has("names") else None, taken=self.top.taken)
            u = inner.fresh("u")
            ndef = 1 if self.has("defaults") and self.r.random() < 0.7 else 0
            if j == 1 and self.r.random() < 0.3:
                header += [f"{name} = lambda {u}: np.tanh({u}) * 0.5 + {u} * 0.25", "", ""]
                out.append((name, 1, 0))
                continue
            params = [u]
            if ndef:
                k = inner.fresh("k")
                params.append(f"{k}={self.r.choice([0.5, 1.5, -0.3])}")
                self.defaults_owner.append((name, 1))
            body = Body(self.r, inner, {u: ("U",)}, (), out[-1:] if out else [], shape_free=True)
            body.generate(self.r.randint(1, 2))
            last = body.locals[-1]
            last_expr = last if body.vars[last] == ("U",) else f"{u} + {last}"
            ret = f"{last_expr} * {k}" if ndef else last_expr
            # the helper must be shape-preserving for any input: shapes inside are symbolic only
            header += [f"def {name}({', '.join(params)}):"] + ["    " + line for b in body.blocks for line in b]
            header += [f"    return {ret}", "", ""]
            out.append((name, 1, ndef))
        return out

    def generate(self):
        r = self.r
        self.defaults_owner = []
        header = []
        # with closures too ("all"), half the programs are functions: closures only exist there
        model = self.has("submodel") and (not self.has("closure") or r.random() < 0.5)
        prog = Program(self.seed, self.features, "model" if model else "function",
                       header, "", [], [], [])
        helpers = self.helpers(header) if self.has("helpers") else []
        atoms = {}
        for _ in range(r.randint(1, 2) if self.has("globals") else 0):
            g = self.top.fresh("G")
            spec = self.leaf()
            prog.globals.append((g, spec))
            header += [f"{g} = None  # set by the fuzzer", ""]
            atoms.update(_leaf_atoms(g, spec))
        if prog.kind == "model":
            self.model(prog, header, helpers, atoms)
        else:
            self.function(prog, header, helpers, atoms)
        # helpers only see the shapes (B, N) when called; other shapes are fine (elementwise)
        prog.defaults = self.defaults_owner
        return prog

    def args(self, prog, atoms, n_extra):
        names = self.top
        x = names.fresh("x")
        prog.args.append((x, Leaf(("B", "N"))))
        atoms[x] = ("B", "N")
        W = names.fresh("W")
        prog.args.append((W, Leaf(("N", "N"), 0.5)))
        atoms[W] = ("N", "N")
        for _ in range(n_extra):
            a = names.fresh("a")
            spec = self.tree_spec() if self.has("pytree") and self.r.random() < 0.7 else self.leaf()
            prog.args.append((a, spec))
            atoms.update(_leaf_atoms(a, spec))

    def returns(self, body, prog):
        r = self.r
        last = body.locals[-1]
        terms = [f"np.sum({last} ** 2)"]
        others = [k for k in body.vars if k != last]
        for k in r.sample(others, min(2, len(others))):
            terms.append(f"np.sum({k}) * 0.5")
        prog.returns = terms

    def function(self, prog, header, helpers, atoms):
        r = self.r
        name = self.top.fresh("program")
        prog.entry = name
        self.args(prog, atoms, r.randint(0, 2))
        if self.has("closure"):
            prog.factory = self.top.fresh("make")
            cells = []
            for _ in range(r.randint(1, 2)):
                c = self.top.fresh("c")
                spec = self.leaf()
                prog.closure.append((c, spec))
                atoms.update(_leaf_atoms(c, spec))
                cells.append(c)
            prog.wrapper = [f"def {prog.factory}({', '.join(cells)}):"]
            if r.random() < 0.5:
                lam = self.top.fresh("lam")
                cell = r.choice(cells)
                prog.wrapper += [f"    {lam} = lambda u: np.tanh(u) * np.mean({cell}) + u"]
                helpers = helpers + [(lam, 1, 0)]
            prog.footer = [f"    return {name}", ""]
        sig_args = [a for a, _ in prog.args]
        if self.has("defaults") and not prog.factory:     # __defaults__ of a module-level function
            d = self.top.fresh("s")
            sig_args.append(f"{d}=0.5")
            atoms[d] = ()
            self.defaults_owner.append((name, 1))
        prog.signature = f"def {name}({', '.join(sig_args)}):"
        body = Body(r, Names(r, NAME_POOL if self.has("names") else None, taken=self.top.taken), atoms,
                    self.features, helpers)
        if self.has("closure") and r.random() < 0.5:          # a nested def capturing a local
            inner = body.names.fresh("inner")
            cap = body.pick(lambda s: s == ("B", "N"))
            body.blocks.append([f"def {inner}(u):", f"    return u * np.mean(np.tanh({cap})) + u * 0.5"])
            body.helpers = body.helpers + [(inner, 1, 0)]
        body.generate(r.randint(2, 6))
        prog.blocks = body.blocks
        self.returns(body, prog)

    def model(self, prog, header, helpers, atoms):
        """Two @net classes: an inner one (Params W, b) used once or twice by an outer one."""
        r = self.r
        inner_cls, outer_cls = self.top.fresh("Inner"), self.top.fresh("Outer")
        iW, ib = "W", "b"
        avoid = tuple(f for f in self.features if f in AVOID)
        inner_body = Body(r, Names(r, None, taken={"self", "x"}), {"x": ("B", "N"), f"self.{iW}": ("N", "N"),
                                                                    f"self.{ib}": ("N",)}, avoid, helpers)
        inner_body.generate(r.randint(1, 3))
        keep = [k for k in inner_body.locals if inner_body.vars[k] == ("B", "N")]
        ret = keep[-1] if keep else "x"
        shared = r.random() < 0.4
        header += ["def net(cls):", "    return fc.net(cls)", "", "",
                   "@net", f"class {inner_cls}:", f"    def __init__(self, {iW}, {ib}):",
                   f"        self.{iW} = {iW}", f"        self.{ib} = {ib}", "",
                   "    def forward(self, x):"]
        header += ["        " + line for b in inner_body.blocks for line in b]
        header += [f"        return {ret} + x", "", ""]
        prog.params = [(("first", iW), Leaf(("N", "N"), 0.5)), (("first", ib), Leaf(("N",)))]
        if not shared:
            prog.params += [(("second", iW), Leaf(("N", "N"), 0.5)), (("second", ib), Leaf(("N",)))]
        V = self.top.fresh("V") if self.has("names") else "V"
        prog.params.append(((V,), Leaf(("N", "N"), 0.5)))
        prog.attrs = [(("scale",), Leaf((), python_float=True))]
        prog.wrapper = ["@net", f"class {outer_cls}:", f"    def __init__(self, first, second, {V}, scale):",
                        "        self.first = first", "        self.second = second", f"        self.{V} = {V}",
                        "        self.scale = scale", ""]
        prog.entry = outer_cls
        names = Names(r, NAME_POOL if self.has("names") else None, taken=self.top.taken | {"self"})
        x = names.fresh("x")
        prog.args.append((x, Leaf(("B", "N"))))
        atoms[x] = ("B", "N")
        if r.random() < 0.5:
            a = names.fresh("a")
            spec = self.tree_spec() if self.has("pytree") else self.leaf(False)
            prog.args.append((a, spec))
            atoms.update(_leaf_atoms(a, spec))
        atoms[f"self.{V}"] = ("N", "N")
        atoms["self.scale"] = ()
        prog.signature = f"def forward(self, {', '.join(a for a, _ in prog.args)}):"
        body = Body(r, names, atoms, self.features, helpers, model_calls=["self.first", "self.second"])
        body.generate(r.randint(2, 5))
        prog.blocks = body.blocks
        prog.model_return = r.random() < 0.5
        if prog.model_return:
            prog.returns = [body.locals[-1]]
        else:
            self.returns(body, prog)
        first_cls = inner_cls
        if self.has("patterns") and r.random() < 0.6:
            first_cls = self.top.fresh("Sub")
            call = r.choice(["super().forward(x)", f"{inner_cls}.forward(self, x)"])
            header += ["@net", f"class {first_cls}({inner_cls}):", "    def forward(self, x):",
                       f"        return np.tanh({call}) * 0.5 + x", "", ""]
        prog.footer = ["", "", "def build(first_W, first_b, second_W, second_b, V, scale):",
                       f"    first = {first_cls}(first_W, first_b)",
                       f"    second = first if second_W is None else {inner_cls}(second_W, second_b)",
                       f"    return {outer_cls}(first, second, V, scale)", ""]


def generate(seed, features):
    if "layers" in features:
        import fuzzlayers
        return fuzzlayers.generate_stack(seed)
    return Generator(seed, features).generate()


# --------------------------------------------------------------------------------------------
# loading the same source three ways

_tmpdir = None
_counter = [0]


def workdir():
    global _tmpdir
    if _tmpdir is None:
        _tmpdir = Path(tempfile.mkdtemp(prefix="fluxfuzz_"))
    return _tmpdir


def load_module(source, flavour):
    """Import ``source`` as a fresh module: flavour ``fc`` (as written), ``np`` (``@net`` does
    nothing) or ``ag`` (``import autograd.numpy as np`` and ``@net`` does nothing)."""
    if flavour != "fc":
        source = source.replace("    return fc.net(cls)", "    cls.__call__ = cls.forward\n    return cls")
    if flavour == "ag":
        source = source.replace("import numpy as np", "import autograd.numpy as np", 1)
    if flavour == "jax":
        source = source.replace("import numpy as np", "import jax.numpy as np", 1)
    _counter[0] += 1
    name = f"fluxfuzz_{_counter[0]}_{flavour}"
    path = workdir() / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def unload(mods):
    for m in mods:
        sys.modules.pop(m.__name__, None)
        try:
            Path(m.__file__).unlink()
        except OSError:
            pass


# --------------------------------------------------------------------------------------------
# checking


class Failure(Exception):
    def __init__(self, outcome, check, message):
        super().__init__(message)
        self.outcome, self.check, self.message = outcome, check, message


@dataclasses.dataclass
class Result:
    outcome: str            # ok, rejected, wrong, crash, invalid
    check: str = ""
    message: str = ""
    source: str = ""

    @property
    def key(self):
        return f"{self.outcome}:{self.check}:{normalise(self.message)}"


def normalise(message):
    first = message.strip().splitlines()[0] if message.strip() else ""
    first = re.sub(r"'[^']*'|\"[^\"]*\"", "'_'", first)
    first = re.sub(r"[\w/.]*fluxfuzz_\w+\.py(:\d+)?", "FILE", first)
    first = re.sub(r"\d+(\.\d+)?(e-?\d+)?", "N", first)
    return first[:90]


class Instance:
    """Concrete values for one run: arguments, closure cells, globals, defaults, Params, attrs."""

    def __init__(self, prog, env, seed, dtype=np.float64):
        rng = np.random.default_rng(seed)
        self.env = env
        self.args = [make_value(s, env, rng, dtype) for _, s in prog.args]
        self.closure = [make_value(s, env, rng, dtype) for _, s in prog.closure]
        self.globals = [make_value(s, env, rng, dtype) for _, s in prog.globals]
        self.defaults = [(owner, [round(float(rng.uniform(-1, 1)), 3) for _ in range(n)])
                         for owner, n in prog.defaults]
        self.params = [make_value(s, env, rng, dtype) for _, s in prog.params]
        self.attrs = [make_value(s, env, rng, dtype) for _, s in prog.attrs]
        self.dy_seed = seed + 7


def _set_module_state(mod, prog, inst):
    for (name, _), v in zip(prog.globals, inst.globals):
        setattr(mod, name, v)
    for owner, values in inst.defaults:
        getattr(mod, owner).__defaults__ = tuple(values)


def _callable(mod, prog, inst):
    """The function under test, or a fresh model from ``build``."""
    if prog.kind == "function":
        if prog.factory:
            return getattr(mod, prog.factory)(*inst.closure)
        return getattr(mod, prog.entry)
    return build_model(mod, inst.params, inst.attrs)


def build_model(mod, params, attrs):
    """The module's ``build(first_W, first_b, second_W, second_b, V, scale)``; with three
    Params the second sub-model is the first one (shared)."""
    p = list(params)
    if len(p) == 3:
        p = p[:2] + [None, None] + p[2:]
    return mod.build(*p, *attrs)


def _close(a, b, rtol, atol_scale):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return False
    scale = max(1.0, float(np.max(np.abs(b))) if b.size else 1.0)
    return bool(np.allclose(a, b, rtol=rtol, atol=atol_scale * scale))


def _in_order_of(got, ref):
    """``got`` with each dict's keys in ``ref``'s order (a dict equals one in another key order)."""
    if isinstance(got, dict) and isinstance(ref, dict) and set(got) == set(ref):
        return {k: _in_order_of(got[k], ref[k]) for k in ref}
    if isinstance(got, (tuple, list)) and isinstance(ref, (tuple, list)) and len(got) == len(ref):
        return type(got)(_in_order_of(g, r) for g, r in zip(got, ref))
    return got


def _compare_trees(got, ref, rtol, atol, what):
    got = _in_order_of(got, ref)
    lg, lr = leaves(got), leaves(ref)
    if type(got) is not type(ref) and not (isinstance(ref, (float, np.floating, np.ndarray))
                                           and isinstance(got, (float, np.floating, np.ndarray))):
        raise Failure("wrong", what, f"{what}: structure {type(got).__name__} instead of {type(ref).__name__}")
    if len(lg) != len(lr):
        raise Failure("wrong", what, f"{what}: {len(lg)} leaves instead of {len(lr)}")
    for i, (g, r) in enumerate(zip(lg, lr)):
        if g is None:
            raise Failure("wrong", what, f"{what}: leaf {i} is None")
        if np.shape(g) != np.shape(r):
            raise Failure("wrong", what, f"{what}: leaf {i} has shape {np.shape(g)}, expected {np.shape(r)}")
        if not _close(g, r, rtol, atol):
            err = float(np.max(np.abs(np.asarray(g, np.float64) - np.asarray(r, np.float64))))
            raise Failure("wrong", what, f"{what}: leaf {i} differs by {err:.3g}")


class Run:
    """Everything for checking one program."""

    def __init__(self, prog):
        self.prog = prog
        self.source = prog.source()

    def __enter__(self):
        self.mods = {}
        for flavour in ("fc", "np", "ag"):
            try:
                self.mods[flavour] = load_module(self.source, flavour)
            except Exception as e:
                raise Failure("invalid", "import", f"{type(e).__name__}: {e}")
        return self

    def __exit__(self, *exc):
        unload(self.mods.values())
        return False

    # -- references -----------------------------------------------------------------------
    def reference(self, inst):
        """(output, loss function of the flat leaves, the flat leaves, dy) by plain NumPy."""
        prog, mod = self.prog, self.mods["np"]
        _set_module_state(mod, prog, inst)
        f = _callable(mod, prog, inst)
        args = copy_tree(inst.args)
        with np.errstate(all="raise"):
            try:
                out = f.forward(*args) if prog.kind == "model" else f(*args)
            except Exception as e:
                raise Failure("invalid", "reference", f"{type(e).__name__}: {e}")
        if not np.all(np.isfinite(out)) or np.max(np.abs(out)) > 1e6:
            raise Failure("invalid", "reference", "non-finite or huge output")
        dy = np.random.default_rng(inst.dy_seed).standard_normal(np.shape(out))
        return out, dy

    def autograd_grads(self, inst, dy):
        import autograd
        prog, mod = self.prog, self.mods["ag"]
        _set_module_state(mod, prog, inst)
        args = inst.args
        if prog.kind == "function":
            f = _callable(mod, prog, inst)
            return [autograd.grad(f, i)(*args) if _differentiable(a) else None for i, a in enumerate(args)], []

        def loss(params, *xs):
            return mod.np.sum(build_model(mod, params, inst.attrs).forward(*xs) * dy)
        g = autograd.grad(loss, tuple(range(len(args) + 1)))(list(inst.params), *args)
        return list(g[1:]), list(g[0])

    def fd_grads(self, inst, dy, n_probe=4):
        """Central differences of sum(out * dy) on a few entries of every float array."""
        prog, mod = self.prog, self.mods["np"]
        _set_module_state(mod, prog, inst)
        rng = np.random.default_rng(1)

        def loss(args, params):
            if prog.kind == "model":
                out = build_model(mod, params, inst.attrs).forward(*args)
            else:
                out = _callable(mod, prog, inst)(*args)
            return float(np.sum(np.asarray(out) * dy))
        targets = []              # (which, flat index of leaf, probes)
        flat_args = leaves(inst.args)
        for j, leaf in enumerate(flat_args):
            if isinstance(leaf, np.ndarray) and leaf.size:
                targets.append(("arg", j, rng.choice(leaf.size, min(n_probe, leaf.size), replace=False)))
        for j, leaf in enumerate(inst.params):
            targets.append(("param", j, rng.choice(leaf.size, min(n_probe, leaf.size), replace=False)))
        out = []
        for which, j, probes in targets:
            est = {}
            for k in probes:
                vals = []
                for sign in (1, -1):
                    fa = [x.copy() if isinstance(x, np.ndarray) else x for x in flat_args]
                    fp = [x.copy() for x in inst.params]
                    leaf = fa[j] if which == "arg" else fp[j]
                    leaf.reshape(-1)[k] += sign * 1e-6
                    vals.append(loss(rebuild(inst.args, fa), fp))
                est[int(k)] = (vals[0] - vals[1]) / 2e-6
            out.append((which, j, est))
        return out

    # -- flux_compile ---------------------------------------------------------------------
    def fc_run(self, inst, dy, model=None):
        """(output, input grads, param grads, model) from flux_compile; checks inputs unchanged."""
        import flux_compile as fc
        prog, mod = self.prog, self.mods["fc"]
        _set_module_state(mod, prog, inst)
        args = copy_tree(inst.args)
        before = copy_tree(args)
        if prog.kind == "function":
            f = _callable(mod, prog, inst)
            out, grads = fc.grad(f, *args)
            pgrads = []
        else:
            m = model if model is not None else _callable(mod, prog, inst)
            m.zero_grad()
            values = [p.value.copy() for p in self.param_objects(m)]
            out, back = m.pullback(*args)
            grads = back(dy.astype(np.asarray(out).dtype) if isinstance(out, np.ndarray) else dy)
            grads = [grads] if len(args) == 1 else list(grads)
            grads = [_zeros_for_none(g, a) for g, a in zip(grads, args)]     # None: the input is unused
            pgrads = [p.grad.copy() for p in self.param_objects(m)]
            if not all(np.array_equal(v, p.value) for v, p in zip(values, self.param_objects(m))):
                raise Failure("wrong", "params_modified", "a Param's value was modified by forward/backward")
            model = m
        if not same_tree(args, before):
            raise Failure("wrong", "inputs_modified", "an input was modified by forward/backward")
        return out, list(grads), pgrads, model

    def param_objects(self, m):
        objs = [m.first.W, m.first.b]
        if len(self.prog.params) == 5:
            objs += [m.second.W, m.second.b]
        return objs + [getattr(m, self.prog.params[-1][0][0])]

    # -- the checks -----------------------------------------------------------------------
    def check_values(self, inst, phase, fd=True, model=None):
        """Forward value against NumPy, gradients against autograd (or, where autograd cannot
        differentiate the program, finite differences)."""
        out_ref, dy = self.reference(inst)
        if self.prog.kind == "function":
            dy = np.ones_like(np.asarray(out_ref, dtype=np.float64))
        out, grads, pgrads, model = self.fc_run(inst, dy, model)
        _compare_trees(out, out_ref, 1e-9, 1e-10, f"{phase}_value")
        try:
            ag, ag_params = self.autograd_grads(inst, dy)
        except Exception:                   # autograd's own gaps: finite differences decide
            self.check_fd(inst, grads, pgrads, dy, phase)
            return out, grads, pgrads, model, dy
        for i, (g, r) in enumerate(zip(grads, ag)):
            if r is None:
                continue
            if any(np.shape(x) != np.shape(a) for x, a in zip(leaves(r), leaves(inst.args[i]))):
                # autograd's own bug: np.where does not undo broadcasting; finite differences decide
                self.check_fd(inst, grads, pgrads, dy, phase)
                continue
            try:
                try:
                    _compare_trees(g, r, 1e-6, 1e-8, f"{phase}_grad")
                except Failure as e:
                    raise Failure(e.outcome, e.check, f"{e.message} (argument {i}, '{self.prog.args[i][0]}')")
            except Failure:
                if not (fd and self.fd_agrees(inst, dy, "arg", i, g)):
                    raise
                # finite differences side with flux_compile: autograd is wrong here (its np.where
                # does not undo broadcasting), so finite differences decide for every argument
                self.check_fd(inst, grads, pgrads, dy, phase)
        for g, r in zip(pgrads, ag_params):
            _compare_trees(g, r, 1e-6, 1e-8, f"{phase}_param_grad")
        return out, grads, pgrads, model, dy

    def fd_agrees(self, inst, dy, which, i, g):
        """Whether finite differences agree with flux_compile's gradient of argument ``i``."""
        flat_index = sum(len(leaves(a)) for a in inst.args[:i])
        flat = leaves(_in_order_of(g, inst.args[i]))
        for w, j, est in self.fd_grads(inst, dy):
            if w != "arg" or not flat_index <= j < flat_index + len(flat):
                continue
            got = np.asarray(flat[j - flat_index], np.float64).reshape(-1)
            if got.size != np.size(leaves(inst.args)[j]):
                return False
            for k, v in est.items():
                if abs(got[k] - v) > 1e-4 * max(1.0, abs(v)):
                    return False
        return True

    def check_fd(self, inst, grads, pgrads, dy, phase="first"):
        flat = [x for g, a in zip(grads, inst.args) for x in leaves(_in_order_of(g, a))]
        flat_args = leaves(inst.args)
        if len(flat) != len(flat_args):
            raise Failure("wrong", f"{phase}_grad", f"{len(flat)} gradients for {len(flat_args)} inputs")
        for which, j, est in self.fd_grads(inst, dy):
            g = flat[j] if which == "arg" else pgrads[j]
            if g is None or np.shape(g) != np.shape(flat_args[j] if which == "arg" else inst.params[j]):
                continue
            got = np.asarray(g, np.float64).reshape(-1)
            for k, v in est.items():
                if abs(got[k] - v) > 1e-4 * max(1.0, abs(v)):
                    raise Failure("wrong", f"{phase}_fd_{which}_grad", f"finite differences: {which} leaf {j} entry "
                                  f"{k}: {got[k]:.6g} vs {v:.6g}")


def _zeros_for_none(g, a):
    if g is None:
        return _zeros_like_tree(a)
    return g


def _zeros_like_tree(a):
    if isinstance(a, dict):
        return {k: _zeros_like_tree(v) for k, v in a.items()}
    if isinstance(a, (tuple, list)):
        return type(a)(_zeros_like_tree(v) for v in a)
    return np.zeros_like(a) if isinstance(a, np.ndarray) else 0.0


def _differentiable(a):
    return any(isinstance(x, float) or isinstance(x, np.ndarray) and x.dtype.kind == "f" for x in leaves(a))


CHECKS = ("fd", "double", "float32", "fresh", "rebatch")
MUTABLE = ("closure", "globals", "defaults", "attrs")     # what the fresh phase changes


def check(prog, checks=CHECKS):
    """Run every check on one program; returns a :class:`Result`."""
    import flux_compile as fc
    if not isinstance(prog, Program):
        import fuzzlayers
        return fuzzlayers.check_stack(prog)
    source = prog.source()
    phase = ["compile"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Run(prog) as run:
                _check_all(run, prog, checks, phase)
    except Failure as f:
        return Result(f.outcome, f.check, f.message, source)
    except fc.CompileError as e:
        return Result("rejected", phase[0], f"{e.msg}" if hasattr(e, "msg") else str(e), source)
    except Exception as e:
        tb = traceback.extract_tb(e.__traceback__)
        where = " <- ".join(f"{Path(fr.filename).name}:{fr.lineno}" for fr in reversed(tb[-4:]))
        return Result("crash", phase[0], f"{type(e).__name__}: {e} [{where}]", source)
    return Result("ok", "", "", source)


def _check_all(run, prog, checks, phase):
    seed = prog.seed * 1000 + 17
    inst = Instance(prog, ENV, seed)
    phase[0] = "first"
    out, grads, pgrads, model, dy = run.check_values(inst, "first")
    if "fd" in checks:
        run.check_fd(inst, grads, pgrads, dy)
    if "double" in checks and prog.kind == "model":
        phase[0] = "double"
        args = copy_tree(inst.args)
        model.zero_grad()
        seed_dy = dy.astype(np.asarray(out).dtype) if isinstance(out, np.ndarray) else dy
        model.back(seed_dy, *args)
        model.back(seed_dy, *args)
        for i, (g1, p) in enumerate(zip(pgrads, run.param_objects(model))):
            if not _close(p.grad, 2 * g1, 1e-9, 1e-10):
                raise Failure("wrong", "double_back", f"Param {i}: two backs do not give twice the gradient")
    if "fresh" in checks and (prog.closure or prog.globals or prog.defaults or prog.attrs):
        phase[0] = "fresh"
        inst2 = Instance(prog, ENV, seed + 1)
        inst2.args, inst2.params = inst.args, inst.params
        for kind in MUTABLE:                    # "fresh:closure" in checks: change only the closure
            if any(c.startswith("fresh:") for c in checks) and f"fresh:{kind}" not in checks:
                setattr(inst2, kind, getattr(inst, kind))
        if prog.kind == "model":
            for (path, _), v in zip(prog.attrs, inst2.attrs):
                setattr(model, path[0], v)
        run.check_values(inst2, "fresh", model=model if prog.kind == "model" else None)
        if prog.kind == "function" and prog.closure:      # the first closure again
            phase[0] = "fresh_back"
            run.check_values(inst, "fresh_back")
        inst = inst2
    if "rebatch" in checks:
        phase[0] = "rebatch"
        inst3 = Instance(prog, REBATCH_ENV, seed + 2)
        inst3.args = [-a if isinstance(a, np.ndarray) else a for a in inst3.args]
        for field in ("closure", "globals", "params", "attrs"):     # unchanged unless their shape is
            setattr(inst3, field, [old if np.shape(old) == np.shape(new) else new
                                   for old, new in zip(getattr(inst, field), getattr(inst3, field))])
        inst3.defaults = inst.defaults
        run.check_values(inst3, "rebatch")
    if "patterns" in prog.features and any(isinstance(a, dict) for a in leaves_of_dicts(inst.args)):
        phase[0] = "dict_order"
        inst4 = Instance(prog, ENV, seed + 4)
        inst4.args = reorder_dicts(inst4.args)
        inst4.params, inst4.attrs = inst.params, inst.attrs
        run.check_values(inst4, "dict_order", model=model if prog.kind == "model" else None)
    if "jvp" in prog.features:
        phase[0] = "jvp"
        _check_jvp(run, prog, Instance(prog, ENV, seed + 3))
    if "float32" in checks:                               # new modules: nothing compiled yet
        phase[0] = "float32"
        with Run(prog) as run32:
            _check_float32(run32, prog, Instance(prog, ENV, seed, np.float32))


def leaves_of_dicts(value):
    """Every dict inside a pytree (and the pytree itself when it is one)."""
    if isinstance(value, dict):
        return [value] + [d for v in value.values() for d in leaves_of_dicts(v)]
    if isinstance(value, (tuple, list)):
        return [d for v in value for d in leaves_of_dicts(v)]
    return []


def reorder_dicts(value):
    """The same pytree with every dict's keys in reverse insertion order."""
    if isinstance(value, dict):
        return {k: reorder_dicts(value[k]) for k in reversed(list(value))}
    if isinstance(value, (tuple, list)):
        return type(value)(reorder_dicts(v) for v in value)
    return value


def _random_tangents(args, rng):
    """A random direction shaped like ``args`` (floats get float tangents)."""
    return [rebuild(a, [rng.standard_normal(np.shape(x)) if isinstance(x, np.ndarray) else float(rng.standard_normal())
                        for x in leaves(a)]) for a in args]


def _along(args, tangents, eps):
    return [rebuild(a, [x + eps * t for x, t in zip(leaves(a), leaves(d))]) for a, d in zip(args, tangents)]


def _jax_jvp(source, prog, inst, tangents):
    """``jax.jvp`` of the same source imported with ``jax.numpy`` (float64), or None when JAX
    cannot run the program (in-place item assignment, ...)."""
    try:
        import jax
        jax.config.update("jax_enable_x64", True)
        mod = load_module(source, "jax")
    except Exception:
        return None
    try:
        _set_module_state(mod, prog, inst)
        f = _callable(mod, prog, inst)
        value, tangent = jax.jvp(f, tuple(inst.args), tuple(tangents))
        return np.asarray(value), np.asarray(tangent)
    except Exception:
        return None
    finally:
        unload([mod])


def _check_jvp(run, prog, inst):
    """``fc.jvp`` against central differences along a random direction and against ``jax.jvp``."""
    import flux_compile as fc
    out_ref, _ = run.reference(inst)
    tangents = _random_tangents(inst.args, np.random.default_rng(inst.dy_seed))
    mod = run.mods["fc"]
    _set_module_state(mod, prog, inst)
    f = _callable(mod, prog, inst)
    before = copy_tree(inst.args)
    given = reorder_dicts(tangents) if prog.seed % 2 else tangents     # dict tangents match by key
    value, tangent = fc.jvp(f, tuple(copy_tree(inst.args)), tuple(copy_tree(given)))
    _compare_trees(value, out_ref, 1e-9, 1e-10, "jvp_value")
    npf = _callable(run.mods["np"], prog, inst)
    _set_module_state(run.mods["np"], prog, inst)
    eps = 1e-6
    fd = (np.asarray(npf(*_along(before, tangents, eps)), np.float64)
          - np.asarray(npf(*_along(before, tangents, -eps)), np.float64)) / (2 * eps)
    if np.shape(tangent) != np.shape(fd) or not np.allclose(tangent, fd, rtol=1e-4, atol=1e-4 * max(1.0, np.max(np.abs(fd)))):
        raise Failure("wrong", "jvp_fd", f"jvp tangent {np.ravel(tangent)[:3]} vs finite differences {np.ravel(fd)[:3]}")
    ref = _jax_jvp(run.source, prog, inst, tangents)
    if ref is not None and np.allclose(ref[0], out_ref, rtol=1e-9, atol=1e-10):
        _compare_trees(np.asarray(tangent, np.float64), ref[1], 1e-7, 1e-9, "jvp_jax")


def _check_float32(run, prog, inst):
    out_ref, dy = run.reference(inst)
    if prog.kind == "function":
        dy = np.ones_like(np.asarray(out_ref, dtype=np.float64))
    out, grads, pgrads, _ = run.fc_run(inst, dy.astype(np.float32) if isinstance(dy, np.ndarray) else dy)
    ref_dtype = np.asarray(out_ref).dtype
    if np.asarray(out).dtype not in (ref_dtype, np.float32):     # NumPy may promote a Python float
        raise Failure("wrong", "float32_dtype", f"output dtype {np.asarray(out).dtype}, NumPy gives {ref_dtype}")
    if not _close(out, out_ref, 2e-3, 2e-4):
        raise Failure("wrong", "float32_value", "float32 output differs from NumPy's float32 result")
    if ref_dtype != np.float32:             # NumPy itself promoted (np.cos of a Python float...)
        return
    for i, (g, a) in enumerate(zip(grads, inst.args)):
        for gl, al in zip(leaves(g), leaves(a)):
            if isinstance(al, np.ndarray) and np.asarray(gl).dtype != al.dtype:
                raise Failure("wrong", "float32_grad_dtype", f"gradient of argument {i} is "
                              f"{np.asarray(gl).dtype}, the argument is {al.dtype}")
    for g in pgrads:
        if g.dtype != np.float32:
            raise Failure("wrong", "float32_grad_dtype", f"Param grad is {g.dtype}")


# --------------------------------------------------------------------------------------------
# bug classes: a failing program is put in the first class whose test matches

BUG_CLASSES = {
    "stale-values": "closure cells, module globals, __defaults__ or attribute values changed between calls: "
                    "code compiled for the old values is reused",
    "float32-promotion": "float32 in, float64 out or float64 gradients: a Python float (argument, default, "
                         "attribute) becomes a float64 value in the compiled code",
    "name-collision": "the failure goes away once the program's identifiers are renamed: user names equal to "
                      "names the generated code uses (dy, self, saved, getitem, unbroadcast, restore_axes, ...)",
    "list-index": "x[[i, j]] / x[:, [i, j]] compiled as the tuple index x[i, j]: wrong values, IndexError, "
                  "AxisError, bogus CompileErrors",
    "pytree": "tuple / list / dict arguments: gradients None, or AttributeError in backward",
    "dict-order": "a dict argument whose keys come in another order than at the first call gives wrong "
                  "values or gradients (code compiled for the first key order reused)",
    "jvp": "fc.jvp disagrees with central differences along the tangent or with jax.jvp",
    "layers": "a stack of library layers disagrees with the same stack in torch or with finite differences",
    "late-rejection": "an unsupported construct raises NotImplementedError when backward runs instead of "
                      "fc.CompileError at compile time (np.einsum with '...')",
}


def classify(prog, result):
    """The bug class of a failing program (a key of BUG_CLASSES), or ``other:<key>``."""
    if result.outcome in ("ok", "rejected"):
        return result.outcome
    if not isinstance(prog, Program):
        return "layers"
    phase = result.check
    mutable = prog.closure or prog.globals or prog.defaults or prog.attrs
    if phase.startswith("fresh") or (phase.startswith("rebatch") and mutable):
        return "stale-values"
    if phase.startswith("float32"):
        return "float32-promotion"
    if phase.startswith("dict_order"):
        return "dict-order"
    if phase.startswith("jvp"):
        return "jvp"
    if "names" in prog.features and check(renamed(prog)).key != result.key:
        return "name-collision"
    if "NotImplementedError" in result.message:
        return "late-rejection"
    pytree = any(not isinstance(spec, Leaf) for _, spec in prog.args)
    if pytree and re.search(r"'(list|tuple|dict)' object|structure|gradients for|leaves instead", result.message):
        return "pytree"
    if LIST_INDEX.search(prog.source()):
        return "list-index"
    if pytree:
        return "pytree"
    return "other:" + result.key


_IDENT = re.compile(r"(?<![\w.'\"])([A-Za-z_]\w*)(?![\w'\"])")


def stale_culprits(prog):
    """Which of closure cells, globals, __defaults__, attributes alone give a stale result."""
    present = [k for k in MUTABLE if getattr(prog, k)]
    return [k for k in present if check(prog, ("fresh", f"fresh:{k}")).check.startswith("fresh")]


def collision_culprits(prog, result):
    """The identifiers whose renaming alone makes the failure go away."""
    used = set(_IDENT.findall(prog.source())) & set(NAME_POOL)
    return sorted(name for name in used if check(renamed(prog, {name})).key != result.key)


def renamed(prog, only=None):
    """The same program with every identifier from the collision pool (or those in ``only``)
    renamed to ``zN_``."""
    pool = set(NAME_POOL) - ({"self", "forward"} if prog.kind == "model" else set())
    if only is not None:
        pool &= set(only)
    mapping = {name: f"z{i}_" for i, name in enumerate(sorted(pool))}

    def text(line):
        return _IDENT.sub(lambda m: mapping.get(m.group(1), m.group(1)), line)

    def lines(xs):
        return [text(x) for x in xs]
    return dataclasses.replace(
        prog, header=lines(prog.header), signature=text(prog.signature),
        blocks=[lines(b) for b in prog.blocks], returns=lines(prog.returns),
        args=[(text(n), s) for n, s in prog.args], globals=[(text(n), s) for n, s in prog.globals],
        closure=[(text(n), s) for n, s in prog.closure], factory=text(prog.factory) if prog.factory else "",
        entry=text(prog.entry), footer=lines(prog.footer), wrapper=lines(prog.wrapper),
        defaults=[(text(o), n) for o, n in prog.defaults], features=tuple(f for f in prog.features if f != "names"))


# --------------------------------------------------------------------------------------------
# shrinking


def _without_arg(prog, i):
    name = prog.args[i][0]
    head, params = prog.signature.split("(", 1)
    kept = [p for p in params.rstrip("):").split(", ") if p.split("=")[0] != name]
    return dataclasses.replace(prog, args=prog.args[:i] + prog.args[i + 1:], signature=f"{head}({', '.join(kept)}):")


def _helper_defs(header):
    """(first line, end line, name) of each module-level helper ``def`` or lambda in the header."""
    out = []
    for i, line in enumerate(header):
        m = re.match(r"def (\w+)\(|(\w+) = lambda", line)
        if m and (m.group(1) or m.group(2)) != "net":
            end = i + 1
            while end < len(header) and (header[end].startswith(" ") or header[end] == ""):
                end += 1
            out.append((i, end, m.group(1) or m.group(2)))
    return out


def shrink(prog, result, checks, budget=100):
    """A smaller program failing the same way: drop body blocks and return terms."""
    key = result.key
    best = prog
    changed = True
    while changed and budget > 0:
        changed = False
        candidates = []
        for i in range(len(best.blocks)):
            candidates.append(dataclasses.replace(best, blocks=best.blocks[:i] + best.blocks[i + 1:]))
        for i, line in enumerate(best.header):          # statements inside helpers and sub-models
            if re.match(r"\s+\w+ = ", line):
                candidates.append(dataclasses.replace(best, header=best.header[:i] + best.header[i + 1:]))
        for start, end, name in _helper_defs(best.header):
            rest = best.header[:start] + best.header[end:]
            if not any(re.search(rf"\b{name}\(", x) for x in rest + best.body_lines() + best.wrapper):
                candidates.append(dataclasses.replace(best, header=rest))
        for i, (name, _) in enumerate(best.args):
            used = re.compile(rf"(?<![\w.]){re.escape(name)}(?!\w)")
            if not any(used.search(line) for line in best.body_lines()):
                candidates.append(_without_arg(best, i))
        if len(best.returns) > 1:
            for i in range(len(best.returns)):
                candidates.append(dataclasses.replace(best, returns=best.returns[:i] + best.returns[i + 1:]))
        for cand in candidates:
            budget -= 1
            if budget <= 0:
                break
            r = check(cand, checks)
            if r.key == key:
                best, changed = cand, True
                break
    return best


# --------------------------------------------------------------------------------------------
# the command line


def run_many(count, seed, features, out_dir=None, checks=CHECKS, shrink_each=True, verbose=False, culprits=False):
    """Check ``count`` programs from ``seed`` on. Returns ``{outcome: n}`` and
    ``{bug class: [n, first Result, its Program, {failure key: n}]}``; with ``out_dir``, one shrunk
    program per bug class and failure key is written there."""
    counts, classes = {}, {}
    for s in range(seed, seed + count):
        prog = generate(s, features)
        r = check(prog, checks)
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
        if r.outcome in ("ok", "invalid", "rejected"):
            if r.outcome == "rejected":
                entry = classes.setdefault("rejected:" + normalise(r.message), [0, r, prog, {}])
                entry[0] += 1
            continue
        cls = classify(prog, r)
        entry = classes.setdefault(cls, [0, r, prog, {}])
        entry[0] += 1
        entry[3].setdefault(r.key, [0, r, prog])[0] += 1
        if cls == "stale-values" and culprits:
            for kind in stale_culprits(prog):
                entry[3].setdefault(f"stale {kind}", [0, r, prog])[0] += 1
        if cls == "name-collision" and culprits:
            for name in collision_culprits(prog, r) or ["(several together)"]:
                entry[3].setdefault(f"identifier {name}", [0, r, prog])[0] += 1
        if verbose:
            print(f"seed {s}: {cls}: {r.key}", flush=True)
    if out_dir is not None:
        write_failures(Path(out_dir), classes, checks, shrink_each)
    return counts, classes


def write_failures(out, classes, checks, shrink_each):
    out.mkdir(parents=True, exist_ok=True)
    for cls, (n, r, prog, keys) in classes.items():
        items = sorted(keys.items(), key=lambda kv: -kv[1][0])[:3] if keys else [(r.key, [n, r, prog])]
        for i, (key, (m, r1, p1)) in enumerate(items):
            small = shrink(p1, r1, checks) if shrink_each and isinstance(p1, Program) else p1
            about = [f"seed {p1.seed}, features {','.join(p1.features)}"] + small.describe() \
                if isinstance(p1, Program) else [f"seed {p1.seed}, layer stack"]
            lines = [f"bug class: {cls} ({n} programs)", BUG_CLASSES.get(cls, ""), f"failure: {key} ({m} programs)"] \
                + about + r1.message.splitlines()
            name = re.sub(r"\W+", "_", cls)[:60]
            (out / f"{name}_{i}.py").write_text("".join(f"# {x}\n" for x in lines if x) + small.source())


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description="Differential fuzzing of flux_compile")
    ap.add_argument("--count", type=int, default=200, help="how many programs")
    ap.add_argument("--seed", type=int, default=0, help="the first seed (seeds seed .. seed+count-1)")
    ap.add_argument("--group", default="all", choices=sorted(GROUPS))
    ap.add_argument("--features", default=None, help="comma-separated features (overrides --group)")
    ap.add_argument("--avoid", default="", help=f"comma-separated, from {', '.join(AVOID)}")
    ap.add_argument("--out", default="fuzz_failures", help="directory for one shrunk program per failure kind")
    ap.add_argument("--no-shrink", action="store_true", help="write failing programs as generated")
    ap.add_argument("--culprits", action="store_true", help="name the identifiers behind each name collision, the values behind each stale result")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    features = tuple(a.features.split(",")) if a.features else GROUPS[a.group]
    features += tuple(x for x in a.avoid.split(",") if x)
    counts, classes = run_many(a.count, a.seed, features, a.out, shrink_each=not a.no_shrink, verbose=a.verbose,
                               culprits=a.culprits)
    print(f"features {','.join(features)}: {a.count} programs from seed {a.seed}: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for cls, (n, r, prog, keys) in sorted(classes.items(), key=lambda kv: -kv[1][0]):
        print(f"{n:6d}  {cls}   (first: seed {prog.seed})")
        for key, (m, _, p) in sorted(keys.items(), key=lambda kv: -kv[1][0]):
            print(f"{'':8}{m:6d}  {key}   (seed {p.seed})")
    return 1 if any(k in counts for k in ("wrong", "crash")) else 0


if __name__ == "__main__":
    sys.exit(main())
