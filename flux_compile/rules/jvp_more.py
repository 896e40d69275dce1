"""Forward-mode rules for the primitives merged after the first forward rules: the fft family,
sliding windows, ``np.select`` and the convolution and pooling kernels.

Every fft is linear (over the reals) in its array input, ``sliding_window_view`` only
moves values, ``np.select`` picks from its choices by
conditions that carry no tangent, average pooling averages, and a convolution is linear in the
image and in the filter separately (the product rule). ``tests/test_jvp_rules.py`` checks each
against central differences and against its reverse rule (the transpose identity)."""
import numpy as np

from .conv import avgpool2d, conv2d
from .registry import linear_jvp, multilinear_jvp

FFTS = (np.fft.fft, np.fft.ifft, np.fft.fft2, np.fft.ifft2, np.fft.fftn, np.fft.ifftn,
        np.fft.rfft, np.fft.irfft, np.fft.rfft2, np.fft.irfft2, np.fft.rfftn, np.fft.irfftn,
        np.fft.hfft, np.fft.ihfft, np.fft.fftshift, np.fft.ifftshift)

linear_jvp(*FFTS, np.lib.stride_tricks.sliding_window_view, np.select, avgpool2d)
multilinear_jvp(conv2d)

from .conv import avgpool2d_grad, conv2d_grad_w, conv2d_grad_x  # noqa: E402
from .helpers import cofactor, match_input  # noqa: E402
from .registry import jvprule  # noqa: E402

# the convolution's and pooling's own gradient kernels (forward over reverse): bilinear in the
# adjoint and the other operand, or linear in the adjoint
multilinear_jvp(conv2d_grad_x, conv2d_grad_w)
linear_jvp(avgpool2d_grad)


@jvprule(np.angle)
def _(dz, y, z, *, deg=False):
    # angle = Im(log z): d angle = Im(dz conj(z)) / |z|^2; 0 for a real z (and at z = 0, as
    # the reverse rule's zero subgradient)
    scale = 57.29577951308232 if deg else 1.0
    safe = np.where(z == 0, 1, z)
    return np.where(z == 0, 0, scale * np.imag(dz * np.conjugate(safe)) / np.abs(safe) ** 2)


@jvprule(np.real_if_close)
def _(da, y, a, *, tol=100):
    return match_input(da, y)       # real where the value came out real


@jvprule(cofactor)
def _(da, c, a):
    # c = det(a) inv(a)^T: d det = <c, da>, d inv = -inv da inv
    inv = np.linalg.inv(a)
    ddet = np.sum(c * da, axis=(-2, -1), keepdims=True)
    det = np.expand_dims(np.linalg.det(a), (-2, -1))
    return ddet * np.swapaxes(inv, -1, -2) - det * np.swapaxes(inv @ da @ inv, -1, -2)


# the reverse rules' kernels above: checked by forward over reverse (tests/test_second_order_hvp.py)
KERNELS = (conv2d_grad_x, conv2d_grad_w, avgpool2d_grad, cofactor)


@jvprule(np.linalg.eigvals)
def _(da, w, a):
    # first-order perturbation theory: dw_i = (V^-1 dA V)_ii, V the eigenvectors (distinct
    # eigenvalues, as the reverse rule)
    w2, v = np.linalg.eig(a)
    return np.diagonal(np.linalg.solve(v, da @ v), axis1=-2, axis2=-1)
