"""Discrete Fourier transform rules: the whole ``np.fft`` family autograd covers.

Every transform is linear. The complex ones are symmetric matrices, so the gradient of
``fft(a)`` is ``fft(dy)`` (autograd's convention for complex values: ``g^T J``), cut or
zero-padded back to ``a``'s shape where ``n=``/``s=`` padded or cut the input, and real
for a real ``a``. The real transforms (``rfft*``, ``irfft*``, ``hfft``, ``ihfft``) have
helpers in :mod:`flux_compile.rules.helpers`; unlike autograd's, they take odd lengths too.
Axes repeated in ``axes=`` are not supported (as in autograd).

The table is registered by :mod:`flux_compile.rules` (``TABLE``, ``COMPLEX_OUTPUT``), so this
module imports only the helpers below it, not the registry's package.
"""
import numpy as np

from .helpers import fft_axes, irfft_grad, match_input, rfft_grad, swap_norm

TABLE = {}      # primitive -> rule, registered by flux_compile.rules


def diffrule(primitive):
    """Keep the decorated rule in ``TABLE`` for ``primitive``."""
    def keep(rule):
        TABLE[primitive] = rule
        return rule
    return keep


# ---------------------------------------------------------------- complex transforms

@diffrule(np.fft.fft)
def _(dy, y, a, *, n=None, axis=-1, norm=None):
    return match_input(np.fft.fft(dy, axis=axis, norm=norm), a)


@diffrule(np.fft.ifft)
def _(dy, y, a, *, n=None, axis=-1, norm=None):
    return match_input(np.fft.ifft(dy, axis=axis, norm=norm), a)


@diffrule(np.fft.fft2)
def _(dy, y, a, *, s=None, axes=(-2, -1), norm=None):
    return match_input(np.fft.fftn(dy, axes=fft_axes(a.ndim, s, axes), norm=norm), a)


@diffrule(np.fft.ifft2)
def _(dy, y, a, *, s=None, axes=(-2, -1), norm=None):
    return match_input(np.fft.ifftn(dy, axes=fft_axes(a.ndim, s, axes), norm=norm), a)


@diffrule(np.fft.fftn)
def _(dy, y, a, *, s=None, axes=None, norm=None):
    return match_input(np.fft.fftn(dy, axes=fft_axes(a.ndim, s, axes), norm=norm), a)


@diffrule(np.fft.ifftn)
def _(dy, y, a, *, s=None, axes=None, norm=None):
    return match_input(np.fft.ifftn(dy, axes=fft_axes(a.ndim, s, axes), norm=norm), a)


# ---------------------------------------------------------------- real transforms

@diffrule(np.fft.rfft)
def _(dy, y, a, *, n=None, axis=-1, norm=None):
    return rfft_grad(dy, a, None if n is None else [n], [axis], norm)


@diffrule(np.fft.irfft)
def _(dy, y, a, *, n=None, axis=-1, norm=None):
    return irfft_grad(dy, a, None if n is None else [n], [axis], norm)


@diffrule(np.fft.rfft2)
def _(dy, y, a, *, s=None, axes=(-2, -1), norm=None):
    return rfft_grad(dy, a, s, axes, norm)


@diffrule(np.fft.irfft2)
def _(dy, y, a, *, s=None, axes=(-2, -1), norm=None):
    return irfft_grad(dy, a, s, axes, norm)


@diffrule(np.fft.rfftn)
def _(dy, y, a, *, s=None, axes=None, norm=None):
    return rfft_grad(dy, a, s, axes, norm)


@diffrule(np.fft.irfftn)
def _(dy, y, a, *, s=None, axes=None, norm=None):
    return irfft_grad(dy, a, s, axes, norm)


# hfft(a) = irfft(conj(a)) and ihfft(a) = conj(rfft(a)), each normalised the other way round

@diffrule(np.fft.hfft)
def _(dy, y, a, *, n=None, axis=-1, norm=None):
    return np.conjugate(irfft_grad(dy, np.conjugate(a), None if n is None else [n], [axis], swap_norm(norm)))


@diffrule(np.fft.ihfft)
def _(dy, y, a, *, n=None, axis=-1, norm=None):
    return rfft_grad(np.conjugate(dy), a, None if n is None else [n], [axis], swap_norm(norm))


# ---------------------------------------------------------------- shifts (permutations)

@diffrule(np.fft.fftshift)
def _(dy, y, x, *, axes=None):
    return np.fft.ifftshift(dy, axes=axes)


@diffrule(np.fft.ifftshift)
def _(dy, y, x, *, axes=None):
    return np.fft.fftshift(dy, axes=axes)


# complex results of real inputs: gradients of real values downstream take the real part
COMPLEX_OUTPUT = (np.fft.fft, np.fft.ifft, np.fft.fft2, np.fft.ifft2, np.fft.fftn, np.fft.ifftn,
                  np.fft.rfft, np.fft.rfft2, np.fft.rfftn, np.fft.ihfft)
