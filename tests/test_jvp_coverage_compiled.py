"""fc.jvp through compiled code for the five primitives whose forward rules came last (issue 13):
svd, eig, np.average with weights, np.gradient and maxpool2d, against central differences in
float64 along random directions (the rules alone: tests/test_jvp_rules.py)."""
import numpy as np
import pytest

import flux_compile as fc
from flux_compile import maxpool2d

rng = np.random.default_rng(3)


def svd_all(a):
    u, s, vh = np.linalg.svd(a, full_matrices=False)
    return np.sum(np.sin(u)) + np.sum(s ** 2) + np.sum(vh * vh[..., ::-1, :])


def svd_values(a):
    return np.sum(np.linalg.svd(a, compute_uv=False) ** 3)


def eig_all(a):
    w, v = np.linalg.eig(a)
    return np.sum(w ** 3) + np.sum(np.cos(v))


def average_returned(a, w):
    m, s = np.average(a, 0, w, returned=True)
    return np.sum(np.sin(m)) + np.sum(s ** 2)


def average_full_weights(a, w):
    return np.sin(np.average(a, None, w))


def gradient_spacing(a):
    return np.sum(np.sin(np.gradient(a, 0.3, axis=1)))


def gradient_all_axes(a):
    gx, gy = np.gradient(a, edge_order=2)
    return np.sum(gx * gy)


def pool(x):
    return np.sum(np.sin(maxpool2d(x, 2)))


def pool_overlap(x):
    return np.sum(maxpool2d(x, 3, stride=2) ** 2)


_P = rng.standard_normal((4, 4))
CASES = [
    (svd_all, (rng.standard_normal((5, 3)),)), (svd_all, (rng.standard_normal((2, 3, 4)),)),
    (svd_values, (rng.standard_normal((3, 5)),)),
    (eig_all, (_P @ np.diag([3.0, 1.0, -1.0, -2.0]) @ np.linalg.inv(_P),)),
    (average_returned, (rng.standard_normal((4, 3)), rng.uniform(0.5, 2, 4))),
    (average_full_weights, (rng.standard_normal((4, 3)), rng.uniform(0.5, 2, (4, 3)))),
    (gradient_spacing, (rng.standard_normal((3, 5)),)), (gradient_all_axes, (rng.standard_normal((4, 5)),)),
    (pool, (rng.permutation(32).reshape(1, 2, 4, 4) * 0.5,)),
    (pool_overlap, (rng.permutation(98).reshape(2, 1, 7, 7) * 0.25,)),
]


@pytest.mark.parametrize("f, args", CASES, ids=[f"{f.__name__}{i}" for i, (f, _) in enumerate(CASES)])
def test_compiled_jvp_matches_central_differences(f, args):
    tangents = tuple(rng.standard_normal(np.shape(a)) for a in args)
    y, t = fc.jvp(f, args, tangents)
    e = 1e-6
    up = f(*[a + e * d for a, d in zip(args, tangents)])
    down = f(*[a - e * d for a, d in zip(args, tangents)])
    np.testing.assert_allclose(y, f(*args), rtol=1e-12)
    np.testing.assert_allclose(t, (up - down) / (2 * e), rtol=1e-6, atol=1e-7)


def test_svd_tangent_refuses_the_extra_full_matrices_columns():
    with pytest.raises(ValueError, match="full_matrices=False"):
        fc.jvp(_svd_full, (rng.standard_normal((4, 3)),), (rng.standard_normal((4, 3)),))


def _svd_full(a):
    return np.sum(np.linalg.svd(a)[0])
