"""The primitives added for autograd's coverage (issue 13), through compiled code, against
torch and autograd where they have them and central differences in float64 everywhere.

The rule-by-rule checks (every case, edge points, float32, second order) are the registry
walks of test_rules_direct, test_rule_edges, test_rules_compiled and test_second_order;
here: complex values reaching real Params, conventions autograd does not cover (odd FFT
lengths, hfft, torch.gradient), gauge-invariant eigenvector and singular-vector losses,
and the documented limitations.
"""
import numpy as np
import pytest

import flux_compile as fc
from numeric import numgrad as central

autograd = pytest.importorskip("autograd")
anp = pytest.importorskip("autograd.numpy")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

rng = np.random.default_rng(13)


@fc.net
class Spectral:
    def __init__(self):
        self.W = np.linspace(-1.0, 1.0, 8)

    def forward(self, x):
        return np.sum(np.abs(np.fft.fft(x) * self.W) ** 2) + np.sum(np.angle(np.fft.rfft(x * self.W) + 0.5))


def test_fft_reaching_a_real_param_gives_it_autograds_real_gradient():
    """Before: the complex gradient of W failed to accumulate into a float64 Param."""
    m = Spectral()
    x = rng.standard_normal((3, 8))
    m.back(np.array(1.0), x)
    want = autograd.grad(lambda W: anp.sum(anp.abs(anp.fft.fft(x) * W) ** 2)
                         + anp.sum(anp.angle(anp.fft.rfft(x * W) + 0.5)))(m.W.value)
    assert m.W.grad.dtype == np.float64
    np.testing.assert_allclose(m.W.grad, want, rtol=1e-9, atol=1e-12)


def _hfft_loss(a, w):
    return np.sum(np.fft.hfft(a, n=7, norm="ortho") * w)


def _ihfft_loss(x, w):
    z = np.fft.ihfft(x, axis=0, norm="forward")
    return np.sum(np.real(z) * w) + np.sum(np.imag(z) * w * 0.5)


def _irfft_odd_loss(a, w):
    return np.sum(np.fft.irfft(a, n=9) * w)


def test_hfft_ihfft_and_odd_irfft_match_torch():
    """autograd has no VJP for hfft/ihfft and refuses odd lengths for irfft; torch has all three."""
    a = rng.standard_normal((2, 4)) + 1j * rng.standard_normal((2, 4))
    w = rng.standard_normal((2, 7))
    _, (g, _) = fc.grad(_hfft_loss, a, w)
    t = torch.tensor(a, requires_grad=True)
    (torch.fft.hfft(t, n=7, norm="ortho") * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(g, t.grad.resolve_conj().numpy().conj(), rtol=1e-10, atol=1e-12)   # torch: conj convention

    x = rng.standard_normal((5, 3))
    w2 = rng.standard_normal((3, 3))
    _, (g, _) = fc.grad(_ihfft_loss, x, w2)
    t = torch.tensor(x, requires_grad=True)
    z = torch.fft.ihfft(t, dim=0, norm="forward")
    (z.real * torch.tensor(w2)).sum().add((z.imag * torch.tensor(w2) * 0.5).sum()).backward()
    np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-10, atol=1e-12)

    a = rng.standard_normal((2, 5)) + 1j * rng.standard_normal((2, 5))
    w3 = rng.standard_normal((2, 9))
    _, (g, _) = fc.grad(_irfft_odd_loss, a, w3)
    t = torch.tensor(a, requires_grad=True)
    (torch.fft.irfft(t, n=9) * torch.tensor(w3)).sum().backward()
    np.testing.assert_allclose(g, t.grad.resolve_conj().numpy().conj(), rtol=1e-10, atol=1e-12)


def _svd_loss(a, w):
    u, s, vh = np.linalg.svd(a, full_matrices=False)
    return np.sum(s * w) + np.sum(u * u * 0.3) + np.sum(vh * vh * np.arange(vh.shape[-1]))


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (4, 4), (2, 4, 3)])
def test_svd_with_gauge_invariant_use_of_the_vectors_matches_torch_and_differences(shape):
    a = rng.standard_normal(shape)
    w = np.arange(1.0, min(shape[-2:]) + 1)
    _, (g, _) = fc.grad(_svd_loss, a, w)
    t = torch.tensor(a, requires_grad=True)
    u, s, vh = torch.linalg.svd(t, full_matrices=False)
    (torch.sum(s * torch.tensor(w)) + torch.sum(u * u * 0.3)
     + torch.sum(vh * vh * torch.arange(vh.shape[-1], dtype=torch.float64))).backward()
    np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(g, central(lambda x: _svd_loss(x, w), a), rtol=1e-5, atol=1e-7)


def _svd_full(a):
    u, s, vh = np.linalg.svd(a)
    return np.sum(u * u * np.arange(u.shape[-1]))


def _svd_full_values(a):
    u, s, vh = np.linalg.svd(a)
    return np.sum(s) + np.sum(u[:, :3] * u[:, :3] * 0.5)


def test_svd_full_matrices_says_what_to_do_when_the_extra_columns_are_used():
    a = rng.standard_normal((5, 3))
    with pytest.raises(Exception, match="full_matrices=False"):
        fc.grad(_svd_full, a)
    _, (g,) = fc.grad(_svd_full_values, a)      # the first min(m, n) columns alone: fine
    np.testing.assert_allclose(g, central(_svd_full_values, a), rtol=1e-5, atol=1e-7)


def _eig_loss(a, w):
    vals, vecs = np.linalg.eig(a)
    return np.sum(np.real(vals) * w) + np.sum(np.imag(vals) ** 2) + np.sum(np.abs(vecs) ** 2 * w)


def test_eig_with_complex_eigenvalues_matches_autograd_and_differences():
    """A real matrix with a complex pair: |v|^2 does not depend on LAPACK's phase choice."""
    a = np.array([[0.5, -2.0, 0.3], [1.5, 0.2, 0.1], [0.2, 0.4, 3.0]])
    assert np.iscomplexobj(np.linalg.eigvals(a))
    w = np.array([1.0, -0.5, 2.0])
    _, (g, _) = fc.grad(_eig_loss, a, w)
    assert g.dtype == np.float64
    want = autograd.grad(lambda x: anp.sum(anp.real(anp.linalg.eig(x)[0]) * w)
                         + anp.sum(anp.imag(anp.linalg.eig(x)[0]) ** 2)
                         + anp.sum(anp.abs(anp.linalg.eig(x)[1]) ** 2 * w))(a)
    np.testing.assert_allclose(g, want, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(g, central(lambda x: _eig_loss(x, w), a), rtol=1e-5, atol=1e-7)


def _eigvals_loss(a):
    return np.sum(np.abs(np.linalg.eigvals(a)))


def test_eigvals_matches_torch():
    a = rng.standard_normal((4, 4))
    _, (g,) = fc.grad(_eigvals_loss, a)
    t = torch.tensor(a, requires_grad=True)
    torch.linalg.eigvals(t).abs().sum().backward()
    np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-8, atol=1e-10)


def _gradient_loss(f, w0, w1):
    d0, d1 = np.gradient(f, 0.5, 2.0, edge_order=2)
    return np.sum(d0 * w0) + np.sum(d1 * w1)


def test_np_gradient_matches_torch_gradient():
    f = rng.standard_normal((5, 6))
    w0, w1 = rng.standard_normal((5, 6)), rng.standard_normal((5, 6))
    _, (g, _, _) = fc.grad(_gradient_loss, f, w0, w1)
    t = torch.tensor(f, requires_grad=True)
    d0, d1 = torch.gradient(t, spacing=(0.5, 2.0), edge_order=2)
    ((d0 * torch.tensor(w0)).sum() + (d1 * torch.tensor(w1)).sum()).backward()
    np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-10, atol=1e-12)


def _windows_loss(x, w):
    return np.sum(np.lib.stride_tricks.sliding_window_view(x, 3, axis=1) * w)


def test_sliding_window_view_matches_torch_unfold():
    x = rng.standard_normal((4, 7))
    w = rng.standard_normal((4, 5, 3))
    _, (g, _) = fc.grad(_windows_loss, x, w)
    t = torch.tensor(x, requires_grad=True)
    (t.unfold(1, 3, 1) * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-12)


def _weighted_average(a, w):
    avg, total = np.average(a, 0, w, returned=True)
    return np.sum(avg * np.arange(1.0, 4.0)) + np.sum(total * total)


def _diff_both_ends(a, p, q):
    return np.sum(np.diff(a, 2, 0, p, q) ** 2)


def _select_two(a, b):
    return np.sum(np.select([a > 0, b > 0], [a * b, np.sin(b)], 0.25) ** 2)


@pytest.mark.parametrize("f, shapes", [
    (_weighted_average, [(4, 3), (4,)]),
    (_diff_both_ends, [(4, 3), (1, 3), (2, 3)]),
    (_select_two, [(3, 4), (3, 4)]),
])
def test_average_diff_and_select_through_compiled_code_match_differences(f, shapes):
    args = [rng.uniform(0.5, 2.0, s) if f is _weighted_average and k == 1 else rng.standard_normal(s)
            for k, s in enumerate(shapes)]
    _, grads = fc.grad(f, *args)
    for i, g in enumerate(grads):
        def fi(x, i=i):
            a = list(args)
            a[i] = x
            return f(*a)
        np.testing.assert_allclose(g, central(fi, args[i]), rtol=1e-5, atol=1e-7)


def _r_and_c(a, b):
    return np.sum(np.r_[a, b, 2.0] * np.arange(1.0, 9.0)) + np.sum(np.c_[a, b[:3]] ** 2 * np.sin(a)[:, None])


def test_np_r_and_np_c_lower_to_concatenate_and_column_stack():
    a, b = rng.standard_normal(3), rng.standard_normal(4)
    value, grads = fc.grad(_r_and_c, a, b)
    assert value == pytest.approx(_r_and_c(a, b), rel=1e-12)
    for i, g in enumerate(grads):
        np.testing.assert_allclose(g, central(lambda x, i=i: _r_and_c(*[x if k == i else v for k, v in enumerate((a, b))]),
                                              (a, b)[i]), rtol=1e-6, atol=1e-8)
    source = fc.source(_r_and_c, "forward", args=(a, b))
    assert "concatenate(" in source and "column_stack(" in source     # (astor may break the line after "np.")


def _r_with_slice(a):
    return np.sum(np.r_[a, 0:3])


def test_np_r_with_a_slice_is_a_compile_error_saying_what_to_do():
    with pytest.raises(fc.CompileError, match="slices") as info:
        fc.grad(_r_with_slice, np.ones(2))
    assert "np.arange" in info.value.hint


def _select_broadcast(a, b):
    return np.sum(np.select([a > 0, a < -0.5], [a * 2.0, b], 0.1) ** 2)


def test_select_with_choices_of_different_shapes_keeps_its_lists():
    """Before: the compiler stacked the choice list into one array, which fails to broadcast."""
    a, b = rng.standard_normal((3, 4)), rng.standard_normal(4)
    _, (ga, gb) = fc.grad(_select_broadcast, a, b)
    np.testing.assert_allclose(ga, central(lambda x: _select_broadcast(x, b), a), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gb, central(lambda x: _select_broadcast(a, x), b), rtol=1e-6, atol=1e-8)
