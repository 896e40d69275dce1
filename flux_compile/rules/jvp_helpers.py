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
