"""Second order for every rule by the transforms themselves: ``fc.hvp`` (forward mode over
the generated gradient) on the objectives of ``test_second_order`` (``sum(w * primitive(x))``
per rule case), checked against second-order central differences of the objective and for
symmetry (``u . H v == v . H u``); a sample against ``jax.hessian`` too. A rule whose backward
calls a helper without a forward rule fails here by name; ``HVP_PENDING`` lists those not
yet covered, with the reason."""
from __future__ import annotations

import numpy as np
import pytest

import flux_compile as fc
from rule_cases import primitive_name
from test_rules_compiled import Kwargs
from numeric import mixed_second_difference
from test_second_order import CHECKED, EPS_F, _compiled, _float_inputs, _layout, _objective

pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::numpy.exceptions.ComplexWarning")]

# primitives whose second order is not reached by forward over reverse yet, and why (may only
# shrink; emptied in issue 13)
HVP_PENDING: dict[str, str] = {}

HVP_CHECKED = [c for c in CHECKED if primitive_name(c.primitive) not in HVP_PENDING and c.id not in HVP_PENDING]


@pytest.mark.parametrize("case", HVP_CHECKED, ids=[f"{c.id}#{n}" for n, c in enumerate(HVP_CHECKED)])
def test_hvp_of_every_rule(case):
    rng = np.random.default_rng(12)
    f, k = _compiled(case)
    flat, _ = _layout(case)
    y = case.primitive(*case.args, **case.kwargs)
    y = y[k] if k is not None else y
    w = rng.standard_normal(np.shape(y))
    head = (case.primitive, Kwargs(case.kwargs), w)
    primals = head + tuple(flat)
    for i in _float_inputs(case):
        x = flat[i]
        u, v = rng.standard_normal(x.shape), rng.standard_normal(x.shape)

        def hv(direction):
            tangents = [None, None, np.zeros_like(w)] + [np.zeros_like(a) if isinstance(a, np.ndarray)
                                                         and a.dtype.kind in "fc" else None for a in flat]
            tangents[len(head) + i] = direction
            return np.asarray(fc.hvp(f, primals, tangents)[len(head) + i])
        uhv, vhu = float(np.sum(u * hv(v))), float(np.sum(v * hv(u)))
        scale = max(1.0, abs(uhv), abs(vhu))
        assert abs(uhv - vhu) <= 1e-7 * scale, f"{case.id} input {i}: H not symmetric: {uhv} vs {vhu}"

        def L(xi):
            return _objective(case, w, k, xi, i)
        ref = mixed_second_difference(L, x, u, v, EPS_F)
        assert abs(uhv - ref) <= 1e-4 * max(1.0, abs(ref)), \
            f"{case.id} input {i}: u^T H v {uhv} by fc.hvp, {ref} by differences"


def test_every_helper_forward_rule_is_reached():
    """Each helper's or kernel's forward rule is called by the backward of a rule checked above
    (its name appears in that reverse rule's source), so the walk exercises it."""
    import inspect
    from flux_compile import rules
    from flux_compile.rules.jvp_helpers import REVERSE_HELPERS
    from flux_compile.rules.jvp_more import KERNELS
    checked = {id(c.primitive) for c in HVP_CHECKED}
    sources = [inspect.getsource(rules.get_rule(p)) for p in list(rules.RULES) if id(p) in checked
               and callable(rules.get_rule(p))]
    unreached = [h.__name__ for h in REVERSE_HELPERS + KERNELS
                 if not any(h.__name__ + "(" in text for text in sources)]
    assert not unreached, f"helper forward rules no checked rule reaches: {unreached}"
