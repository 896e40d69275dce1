"""Forward-mode declarations for the run-time helpers the reverse rules call, so that the
generated backward can itself be differentiated in forward mode (forward-over-reverse:
Hessian-vector products). Each helper here is linear in its gradient argument (its other
arguments are shapes, axes and indices), or bilinear in the gradient and one operand.
``tests/test_jvp.py::test_forward_over_reverse_is_the_hessian_vector_product`` checks them."""
from .registry import linear_jvp, multilinear_jvp
from .helpers import (dot_grad_a, dot_grad_b, getitem_grad, matmul_grad_a, matmul_grad_b,
                      restore_axes, sum_grad, take_grad, unbroadcast)

# HELPERS: what forward-over-reverse may meet in a backward graph
LINEAR_HELPERS = (unbroadcast, sum_grad, restore_axes, getitem_grad, take_grad)
BILINEAR_HELPERS = (matmul_grad_a, matmul_grad_b, dot_grad_a, dot_grad_b)

linear_jvp(*LINEAR_HELPERS)
multilinear_jvp(*BILINEAR_HELPERS)

# the other helpers: linear in the gradient (their other array arguments give shapes, dtypes or
# indices only, so a tangent of the same shape in their place changes nothing) ...
from .helpers import (as_columns, cast_grad, choose_grad, cross_grad_a, cross_grad_b, diff_grad, diff_parts_grads,  # noqa: E402
                      extremum_mask, fill_none, from_columns, imag_grad, inner_grad_a,
                      inner_grad_b, irfft_grad, kron_grad_a, kron_grad_b, linspace_grad, match_input,
                      on_triangle, reshape_each, restack, rfft_grad, select_grads, setitem_value_grad,
                      take_along_axis_grad, tensordot_grad_a, tensordot_grad_b, unconcatenate, uncolumn_stack,
                      undiag, undiagonal, undstack, unhsplit, unhstack, unpad, unpartition, unrepeat,
                      unrollaxis, unsort, unsplit, unstack, untile, unvstack, unwindow)
from .registry import jvprule, nondiff_primitive  # noqa: E402

nondiff_primitive(extremum_mask)     # a mask: piecewise constant, its tangent zero

MORE_LINEAR_HELPERS = (
    unconcatenate, unstack, unvstack, unhstack, undstack, uncolumn_stack, unsplit, restack, unhsplit,
    reshape_each, untile, unrepeat, unpad, undiag, undiagonal, take_along_axis_grad, setitem_value_grad,
    fill_none, linspace_grad, diff_grad, diff_parts_grads, unwindow, unrollaxis, as_columns, from_columns,
    on_triangle, irfft_grad, rfft_grad, imag_grad, match_input, cast_grad, select_grads, choose_grad)
# ... bilinear in the gradient and one operand (one output each)
MORE_BILINEAR_HELPERS = (tensordot_grad_a, tensordot_grad_b, inner_grad_a, inner_grad_b, kron_grad_a,
                         kron_grad_b, cross_grad_a, cross_grad_b)
linear_jvp(*MORE_LINEAR_HELPERS)
multilinear_jvp(*MORE_BILINEAR_HELPERS)


@jvprule(unsort)
def _(dg, da, z, g, a, *, axis=-1):
    return unsort(dg, a, axis)  # the permutation is piecewise constant in a


@jvprule(unpartition)
def _(dg, da, dkth, z, g, a, kth, *, axis=-1):
    return unpartition(dg, a, kth, axis)


# every helper above: checked by forward over reverse (tests/test_second_order_hvp.py)
REVERSE_HELPERS = LINEAR_HELPERS + BILINEAR_HELPERS + MORE_LINEAR_HELPERS + MORE_BILINEAR_HELPERS + \
    (unsort, unpartition)
