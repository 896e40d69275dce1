"""The forward rules of reverse-rule helpers (forward over reverse, issue 13), called directly
against central differences of the helper in float64, on inputs the rule cases do not reach:
zeros in prod and cumprod, negative matrix powers, a broadcast einsum, weights along an axis."""
import numpy as np
import pytest

import flux_compile  # noqa: F401  (registers every rule)
from flux_compile import rules
from flux_compile.losses import logitcrossentropy_grad
from flux_compile.rules.conv import maxpool2d_grad
from flux_compile.rules.helpers import (average_grads, cumprod_grad, einsum_grads, matrix_power_grad,
                                        multi_dot_grads, prod_others)

rng = np.random.default_rng(5)
EPS = 1e-6


def _with_zeros(*shape):
    a = rng.standard_normal(shape)
    a.flat[::3] = 0.0
    return a


def _cumprod_call(a, axis):
    return (rng.standard_normal(a.shape), a, np.cumprod(a, axis=axis), axis), (0, 1)


_M = 3 * np.eye(3) + 0.4 * rng.standard_normal((3, 3))
CASES = [
    ("prod-zeros-axis1", prod_others, (_with_zeros(3, 4), 1), (0,)),
    ("prod-zeros-all", prod_others, (_with_zeros(2, 3, 2), None), (0,)),
    ("prod-axes02", prod_others, (rng.standard_normal((2, 3, 4)), (0, 2)), (0,)),
    ("cumprod-zeros", cumprod_grad, *_cumprod_call(_with_zeros(4, 5), 1)),
    ("cumprod-zeros-axis0", cumprod_grad, *_cumprod_call(_with_zeros(5, 2), 0)),
    ("matrix-power-3", matrix_power_grad, (rng.standard_normal((3, 3)), _M / 3, 3), (0, 1)),
    ("matrix-power--3", matrix_power_grad, (rng.standard_normal((3, 3)), _M / 3, -3), (0, 1)),
    ("matrix-power-batched", matrix_power_grad, (rng.standard_normal((2, 3, 3)), np.stack([_M, _M.T]) / 3, 2),
     (0, 1)),
    ("einsum-broadcast", einsum_grads, (rng.standard_normal((3, 5)), ["ij,kjl->il", rng.standard_normal((3, 4)),
                                                                     rng.standard_normal((1, 4, 5))]), (0, 1)),
    ("einsum-diagonal", einsum_grads, (rng.standard_normal(3), ["ii,ij->j", rng.standard_normal((3, 3)),
                                                               rng.standard_normal((3, 3))]), (0, 1)),
    ("multi-dot-vector-ends", multi_dot_grads, (rng.standard_normal(()), [rng.standard_normal(3),
                                                rng.standard_normal((3, 4)), rng.standard_normal(4)]), (0, 1)),
    ("average-weights-axis", average_grads, (rng.standard_normal(4), rng.standard_normal((5, 4)), 0,
                                             rng.uniform(0.5, 2, 5)), (0, 1, 3)),
    ("average-returned", average_grads, ((rng.standard_normal(5), rng.standard_normal(5)),
                                         rng.standard_normal((5, 4)), 1, rng.uniform(0.5, 2, (5, 4)), True),
     (0, 1, 3)),
    ("maxpool-grad", maxpool2d_grad, (rng.standard_normal((1, 2, 2, 2)), rng.permutation(32).reshape(1, 2, 4, 4)
                                      * 0.5, 2, None), (0,)),
    ("logitcrossentropy-soft", logitcrossentropy_grad, (rng.standard_normal((3, 4)),
                                                        rng.dirichlet(np.ones(4), 3)), (0,)),
]


def _direction(v):
    if isinstance(v, (list, tuple)):
        return [_direction(x) if isinstance(x, (np.ndarray, tuple, list)) and not isinstance(x, str) else None
                for x in v]
    return rng.standard_normal(np.shape(v))


def _shift(v, t, e):
    if isinstance(v, (list, tuple)):
        return type(v)(x if tx is None else _shift(x, tx, e) for x, tx in zip(v, t))
    return v + e * t


def _flat(v):
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        return [x for item in v for x in _flat(item)]
    return [np.asarray(v, dtype=float)]


@pytest.mark.parametrize("name, helper, args, diff", CASES, ids=[c[0] for c in CASES])
def test_helper_tangent_matches_central_differences(name, helper, args, diff):
    tangents = [_direction(args[i]) if i in diff else None for i in range(len(args))]
    up = list(args)
    down = list(args)
    for i in diff:
        up[i], down[i] = _shift(args[i], tangents[i], EPS), _shift(args[i], tangents[i], -EPS)
    if helper is cumprod_grad:          # its y is cumprod(a): moved with a
        up[2], down[2] = np.cumprod(up[1], axis=args[3]), np.cumprod(down[1], axis=args[3])
    z = helper(*args)
    rule = rules.get_jvp_rule(helper)
    assert callable(rule), f"{name}: no forward rule"
    k = len(rules.jvp_rule_signature(rule)[0])
    got = _flat(rule(*tangents, *[None] * (k - len(args)), z, *args))
    ups, downs = _flat(helper(*up)), _flat(helper(*down))
    want = [(u - d) / (2 * EPS) for u, d in zip(ups, downs)]
    present = [w for w, full in zip(want, _flat(z)) if full is not None]
    assert len(got) == len(present), f"{name}: {len(got)} tangents for {len(present)} outputs"
    for g, w in zip(got, present):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7, err_msg=name)
