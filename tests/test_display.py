"""How models, generated source and graphs show themselves in a terminal and in Jupyter."""
import numpy as np

import flux_compile as fc
from flux_compile.display import SourceText, model_repr


@fc.net
class Affine:
    def __init__(self, n_in, n_out):
        self.W = fc.initn(n_in, n_out)
        self.b = fc.initn(1, n_out)

    def forward(self, x):
        return x @ self.W + self.b


def test_source_is_a_str_with_html():
    s = fc.source(Affine(3, 2), "backward")
    assert isinstance(s, str) and isinstance(s, SourceText)
    html = s._repr_html_()
    assert "backward" in html and "<" in html


def test_model_repr_and_html():
    m = Affine(3, 2)
    assert repr(m) == "Affine(W=Param(3×2, float64), b=Param(1×2, float64))"
    html = m._repr_html_()
    assert "<table>" in html and "<code>W</code>" in html and "8 parameter values" in html
    assert "generated forward" in html and "generated backward" in html


def test_model_html_never_fails():
    @fc.net
    class Broken:
        def __init__(self):
            self.W = np.ones(2)

        def forward(self, x):        # (a while on data compiles since loop regions)
            try:
                return x - 1
            except ValueError:
                return x

    assert "could not compile" in Broken()._repr_html_()


def test_chain_of_functions_repr_has_no_addresses():
    text = model_repr(fc.Chain(fc.Dense(2, 3), fc.relu))
    assert "relu" in text and "0x" not in text


def test_frozen_params_are_marked():
    m = fc.freeze(Affine(2, 2))
    assert "frozen" in repr(m) and "frozen" in m._repr_html_()


def test_graph_html():
    g = fc.graph(Affine(3, 2))
    html = g._repr_html_()
    assert "np.matmul" in html or "<svg" in html
