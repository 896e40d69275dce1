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
