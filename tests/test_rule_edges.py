"""Every derivative rule at edge points, and with complex inputs, against autograd.

Edge points: each rule case of ``rule_cases.CASES`` with its float arguments replaced by
zeros, by one repeated value (ties for max/min/sort, zero variance, rank-one matrices), by
half-repeated values, and for square ``np.linalg`` inputs by a singular matrix. Where autograd
has the function and gives a finite gradient, the rule must equal it; elsewhere the rule must
equal central differences, unless the point is a genuine kink (listed in ``KINKS`` with the
convention the rule follows, checked against torch where autograd lacks the function) or a
singularity where no finite gradient exists (``SINGULAR``).

Complex: autograd's convention (a VJP is ``g^T J`` for holomorphic functions, ``conj`` where
the function is not; real outputs and real inputs take the real part) is applied everywhere;
every rule that NumPy and autograd run on complex inputs is compared with autograd's VJP.
"""
from __future__ import annotations

import numpy as np
import pytest

import flux_compile as fc
from rule_cases import CASES, Case, primitive_name
from test_rules_direct import AUTOGRAD_CASES, _autograd_fn, _fd, _make_dy, _rule_grads

autograd = pytest.importorskip("autograd")
anp = pytest.importorskip("autograd.numpy")

pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:Arrays of 2-dimensional vectors:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:Output seems independent of input")]


# ---------------------------------------------------------------- edge points

def _float_diff_args(case):
    return [i for i in case.diff if isinstance(case.args[i], np.ndarray) and case.args[i].dtype.kind == "f"]


def _singular(m):
    m = m.copy()
    m[..., -1, :] = m[..., 0, :]
    return m


def _edge_variants(case):
    idx = _float_diff_args(case)
    if not idx:
        return {}

    def replace(fn, which=None):
        args = list(case.args)
        for i in (idx if which is None else which):
            args[i] = fn(args[i])
        return args
    out = {"zeros": replace(np.zeros_like), "ties": replace(lambda v: np.full_like(v, 0.7)),
           "ties-partial": replace(lambda v: np.where(np.arange(v.size).reshape(v.shape) % 2 == 0, 0.7, v))}
    if all(case.args[i].ndim >= 1 for i in idx):
        out["empty"] = replace(lambda v: v[:0])     # an empty first axis, where NumPy allows it
    first = case.args[idx[0]]
    if primitive_name(case.primitive).startswith("np.linalg.") and first.ndim >= 2 \
            and first.shape[-1] == first.shape[-2]:
        out["singular"] = replace(_singular, idx[:1])
    return out


# no finite gradient exists here (the rule gives inf/NaN or raises, as autograd does)
SINGULAR = {
    ("np.cbrt", "zeros"), ("np.divide", "zeros"), ("np.arctan2", "zeros"), ("np.remainder", "zeros"),
    ("np.fmod", "zeros"), ("np.linalg.slogdet", "zeros"), ("np.linalg.slogdet", "ties"),
    ("np.linalg.slogdet", "singular"),
    # repeated (or zero) singular values / eigenvalues: the singular vectors and eigenvectors are
    # not unique, their gradient does not exist (autograd's documented limitation, shared)
    ("np.linalg.svd", "zeros"), ("np.linalg.svd", "ties"), ("np.linalg.svd", "singular"),
    ("np.linalg.eig", "ties"), ("np.linalg.eig", "zeros"),
    # a defective matrix (all entries equal): eigenvalues move like a square root, no derivative
    ("np.linalg.eigvals", "ties"),
}

# kinks: one-sided derivatives differ, central differences average them; the rule follows the
# convention named (autograd's where it has the function, else torch's)
KINKS = {
    "np.fmod": "jump of the remainder: none",
    "np.remainder": "jump of the remainder: none",
    "np.clip": "autograd: a tie with a bound gives a nothing, the bound the adjoint",
    "np.sort": "autograd/torch: the stable sorting permutation",
    "np.partition": "the partitioning permutation",
    "np.ptp": "torch amax - amin: ties share equally",
    "np.linalg.pinv": "rank changes: not differentiable",
    "np.linalg.svdvals": "repeated or zero singular values: any SVD's",
    "np.linalg.eigvalsh": "repeated eigenvalues: any eigenbasis",
    "np.linalg.norm": "ties share equally (as max); zero matrix: the zero subgradient",
    "np.linalg.vector_norm": "ties share equally (as max)",
    "np.linalg.matrix_norm": "repeated singular values: any SVD's",
    "fc.relu": "torch: 0 at 0",
    "fc.leakyrelu": "torch: slope a at 0",
    "fc.elu": "torch: alpha at 0",
    "np.float_power": "as np.power (autograd): d(0**p)/dp is 0 at p = 0",
    "np.linalg.eigh": "repeated eigenvalues: any eigenbasis (a 0 where their gap is 0)",
    "np.angle": "the jump of the angle at 0: the zero subgradient (autograd: NaN)",
    "flux_compile.rules.conv.maxpool2d": "torch: each window's first maximum takes the adjoint "
                                         "(test_conv_layers.py::test_maxpool_ties_go_where_torch_sends_them)",
}

# where the rule deliberately differs from autograd (autograd's value is also a subgradient)
AUTOGRAD_DIFFERS = {("np.linalg.norm[nuclear]", "zeros"): "zero subgradient at the zero matrix (central differences agree)"}


def _base_name(case):
    return primitive_name(case.primitive)


EDGE_POINTS = [(case, label) for case in CASES if not case.sym for label in _edge_variants(case)]


def _autograd_vjp(case, args, dy, y, i):
    fn = _autograd_fn(case)
    if fn is None:
        return None
    from autograd import make_vjp
    if isinstance(y, (list, tuple)):
        dy = tuple(np.zeros_like(np.asarray(v, dtype=float)) if d is None else d for d, v in zip(dy, y))

    def f(x):
        a = list(args)
        a[i] = x
        return fn(*a, **case.kwargs)
    try:
        with np.errstate(all="ignore"):
            vjp, _ = make_vjp(f)(args[i])
            return np.asarray(vjp(dy))
    except Exception:           # autograd lacks this VJP, these arguments, or raises here
        return None


@pytest.mark.parametrize("case, label", EDGE_POINTS,
                         ids=[f"{c.id}-{label}#{k}" for k, (c, label) in enumerate(EDGE_POINTS)])
def test_rule_at_edge_point(case, label):
    args = _edge_variants(case)[label]
    name = _base_name(case)
    with np.errstate(all="ignore"):
        try:
            y = case.primitive(*args, **case.kwargs)
        except Exception:
            pytest.skip("NumPy rejects this point")
    dy = _make_dy(case, y)
    if (name, label) in SINGULAR:
        return                  # no finite gradient exists; nothing to compare
    with np.errstate(all="ignore"):
        grads = _rule_grads(case, args, dy, y)
    for i in _float_diff_args(case):
        got = np.asarray(grads[i])
        want = _autograd_vjp(case, args, dy, y, i)
        if want is not None and np.all(np.isfinite(want)) and (case.id, label) not in AUTOGRAD_DIFFERS:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"{case.id} {label} vs autograd")
            continue
        with np.errstate(all="ignore"):
            ref = _fd(Case(case.primitive, tuple(args), case.kwargs, case.diff, dy_none=case.dy_none),
                      args, dy, i)
        if not np.all(np.isfinite(got)):
            # only where the derivative is infinite (log, sqrt at 0): no finite reference either
            assert want is None or not np.all(np.isfinite(want)), f"{case.id} {label}: autograd is finite"
            assert not np.all(np.isfinite(ref)) or np.max(np.abs(ref)) > 1e4, \
                f"{case.id} at {label}: gradient {i} is not finite, central differences are: {ref}"
            continue
        if name in KINKS:
            continue            # a kink: the convention is checked against torch below
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5,
                                   err_msg=f"{case.id} {label} vs central differences")


def test_edge_walk_covers_every_rule():
    walked = {_base_name(c) for c, _ in EDGE_POINTS}
    with_floats = {_base_name(c) for c in CASES if _float_diff_args(c) and not c.sym}
    assert walked == with_floats
    assert len(walked) >= 150 and len(EDGE_POINTS) >= 600


# ---------------------------------------------------------------- kinks against torch

torch = pytest.importorskip("torch")


# (each compiled function below is its own def: closures are not part of fc.grad's cache key)
def _relu_sum(x):
    return np.sum(fc.relu(x) * np.arange(1.0, 5.0))


def _leaky_sum(x):
    return np.sum(fc.leakyrelu(x, a=0.2) * np.arange(1.0, 5.0))


def _elu_sum(x):
    return np.sum(fc.elu(x, alpha=0.5) * np.arange(1.0, 5.0))


@pytest.mark.parametrize("f, tfn", [
    (_relu_sum, torch.relu),
    (_leaky_sum, lambda t: torch.nn.functional.leaky_relu(t, 0.2)),
    (_elu_sum, lambda t: torch.nn.functional.elu(t, 0.5)),
])
def test_activation_kinks_at_zero_follow_torch(f, tfn):
    x = np.array([-1.0, 0.0, 0.0, 2.0])
    _, (g,) = fc.grad(f, x)
    t = torch.tensor(x, requires_grad=True)
    (tfn(t) * torch.arange(1.0, 5.0, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(g, t.grad.numpy())


def _ptp_sum(x, axis):
    return np.sum(np.ptp(x, axis=axis) * 1.5)


def _inf_norm(x):
    return np.linalg.norm(x.ravel(), ord=np.inf)


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_ptp_and_inf_norm_ties_share_like_torch(axis):
    x = np.array([[0.7, -0.7, 0.2], [0.7, 0.1, 0.7]])
    _, (g, _) = fc.grad(_ptp_sum, x, axis)
    t = torch.tensor(x, requires_grad=True)
    dims = (0, 1) if axis is None else axis
    ((torch.amax(t, dim=dims) - torch.amin(t, dim=dims)) * 1.5).sum().backward()
    np.testing.assert_allclose(g, t.grad.numpy())
    _, (g,) = fc.grad(_inf_norm, x)
    t = torch.tensor(x, requires_grad=True)
    torch.linalg.vector_norm(t.reshape(-1), ord=float("inf")).backward()
    np.testing.assert_allclose(g, t.grad.numpy())


def test_sort_ties_use_the_stable_permutation_like_autograd():
    x = np.array([0.5, 0.1, 0.5, 0.1, 0.3])
    w = np.arange(1.0, 6.0)
    _, (g,) = fc.grad(lambda x: np.sum(np.sort(x) * w), x)
    np.testing.assert_allclose(g, autograd.grad(lambda x: anp.sum(anp.sort(x) * w))(x))


def _det(a):
    return np.linalg.det(a)


def test_det_of_a_singular_matrix_has_the_cofactor_gradient():
    """det(a) inv(a)^T does not exist here; the cofactors do (torch 2.13 gives zeros)."""
    a = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.5, -1.0, 2.0]])
    _, (g,) = fc.grad(_det, a)
    cof = np.array([[np.linalg.det(np.delete(np.delete(a, i, 0), j, 1)) * (-1) ** (i + j) for j in range(3)]
                    for i in range(3)])
    np.testing.assert_allclose(g, cof, atol=1e-12)
    ref = _fd(Case(np.linalg.det, (a,)), [a], np.array(1.0), 0)
    np.testing.assert_allclose(g, ref, atol=1e-6)


def _cumprod_weighted(x, w, axis):
    return np.sum(np.cumprod(x, axis=axis).ravel() * w)


def test_cumprod_through_zeros_matches_torch():
    x = np.array([[1.5, 0.0, 2.0, 0.0, 3.0], [0.0, 0.5, -1.0, 2.0, 1.0]])
    w = np.linspace(-1.0, 2.0, 10)
    for axis in (None, 1):
        _, (g, _, _) = fc.grad(_cumprod_weighted, x, w, axis)
        t = torch.tensor(x, requires_grad=True)
        out = torch.cumprod(t.reshape(-1), 0) if axis is None else torch.cumprod(t, axis).reshape(-1)
        (out * torch.tensor(w)).sum().backward()
        np.testing.assert_allclose(g, t.grad.numpy(), atol=1e-12)


def test_eigh_values_at_repeated_eigenvalues_are_finite_like_autograd():
    a = np.diag([1.0, 1.0, 2.0]) + 0.0
    _, (g,) = fc.grad(lambda a: np.sum(np.linalg.eigh(a)[0] * np.array([1.0, 2.0, 3.0])), a)
    want = autograd.grad(lambda a: anp.sum(anp.linalg.eigh(a)[0] * np.array([1.0, 2.0, 3.0])))(a)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, want)


# ---------------------------------------------------------------- complex inputs

def _complexified(case, rng):
    args = list(case.args)
    for i in _float_diff_args(case):
        args[i] = args[i] + 0.3j * rng.standard_normal(args[i].shape)
    return args


def _complex_dy(y, rng):
    def one(v):
        v = np.asarray(v)
        d = rng.standard_normal(v.shape)
        return d + 1j * rng.standard_normal(v.shape) if v.dtype.kind == "c" else d
    return tuple(one(v) for v in y) if isinstance(y, (list, tuple)) else one(y)


COMPLEX_CASES = [c for c in AUTOGRAD_CASES if not c.sym and _float_diff_args(c)
                 and not any(isinstance(a, list) for a in c.args)]


@pytest.mark.parametrize("case", COMPLEX_CASES, ids=[f"{c.id}#{k}" for k, c in enumerate(COMPLEX_CASES)])
def test_rule_with_complex_inputs_matches_autograd(case):
    rng = np.random.default_rng(5)
    args = _complexified(case, rng)
    try:
        y = case.primitive(*args, **case.kwargs)
    except TypeError:
        pytest.skip("NumPy does not take complex inputs here")
    dy = _complex_dy(y, rng)
    if isinstance(y, (list, tuple)):
        dy = tuple(None if k in case.dy_none else d for k, d in enumerate(dy))
    grads = _rule_grads(case, args, dy, y)
    compared = 0
    for i in _float_diff_args(case):
        want = _autograd_vjp(case, args, dy, y, i)
        if want is None:
            continue
        compared += 1
        np.testing.assert_allclose(np.asarray(grads[i]), want, rtol=1e-5, atol=1e-7,
                                   err_msg=f"{case.id}: complex gradient {i} vs autograd")
    if not compared:
        pytest.skip("autograd has no complex VJP here")


COMPLEX_PROGRAMS = {
    "real-in-complex-between": (
        "z = x + 1j * y\n    w = np.exp(z) * z\n"
        "    return np.sum(np.abs(w)) + np.sum(np.real(w * np.conjugate(z))) + np.sum(np.imag(z ** 2))"),
    "norm-var-std": (
        "z = np.sin(x) + 1j * np.cos(y)\n"
        "    return np.linalg.norm(z) + np.var(z * 2.0) + np.std(z) + np.sum(np.abs(z @ z.T))"),
    "matrix-functions": (
        "z = x[:3, :3] + 1j * y[:3, :3] + 3.0 * np.eye(3)\n"
        "    return np.real(np.linalg.det(z)) + np.sum(np.abs(np.linalg.inv(z))) + np.real(np.trace(z @ z))"),
}


@pytest.mark.parametrize("name", list(COMPLEX_PROGRAMS))
def test_real_inputs_through_complex_values_match_autograd_and_differences(tmp_path, name):
    from test_semantics import central_diff, load
    source = "def f(x, y):\n    " + COMPLEX_PROGRAMS[name] + "\n"
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    f = load(tmp_path, "cplx", source)
    value, grads = fc.grad(f, x.copy(), y.copy())
    fa = load(tmp_path, "cplx", source, anp)
    for i, g in enumerate(grads):
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, autograd.grad(fa, i)(x, y), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(g, central_diff(f, [x, y], i), rtol=1e-5, atol=1e-6)


def test_complex_input_gradient_is_autograds():
    def f(z):
        return np.sum(np.abs(np.exp(z) * z)) + np.real(np.sum(z ** 2 * np.conjugate(z)))

    def fa(z):
        return anp.sum(anp.abs(anp.exp(z) * z)) + anp.real(anp.sum(z ** 2 * anp.conjugate(z)))
    rng = np.random.default_rng(3)
    z = rng.standard_normal(4) + 1j * rng.standard_normal(4)
    _, (g,) = fc.grad(f, z.copy())
    np.testing.assert_allclose(g, autograd.grad(fa)(z), rtol=1e-10)
    # autograd's convention: d/dx - i d/dy
    dx = np.array([(f(z + e) - f(z - e)) / 2e-6 for e in np.eye(4) * 1e-6])
    dyv = np.array([(f(z + 1j * e) - f(z - 1j * e)) / 2e-6 for e in np.eye(4) * 1e-6])
    np.testing.assert_allclose(g, dx - 1j * dyv, rtol=1e-5)


@fc.net
class ComplexInside:
    def __init__(self):
        self.W = np.linspace(-1.0, 1.0, 3)

    def forward(self, x):
        z = x * self.W + 1j * np.sin(self.W)
        return np.sum(np.abs(z) ** 2)


def test_real_params_through_complex_values_get_real_gradients():
    m = ComplexInside()
    x = np.array([0.3, -1.2, 2.0])
    m.back(np.array(1.0), x)
    assert m.W.grad.dtype == np.float64
    want = autograd.grad(lambda W: anp.sum(anp.abs(x * W + 1j * anp.sin(W)) ** 2))(m.W.value)
    np.testing.assert_allclose(m.W.grad, want, rtol=1e-12)
