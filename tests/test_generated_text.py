"""Properties of the generated text, checked on every golden model (tests/golden_models.py).

The goldens pin the exact text; these say what the text must never do, so a new
model or a new rule cannot bring a fixed defect back unnoticed.
"""
import ast

import numpy as np
import pytest

import flux_compile as fc
from flux_compile.params import is_model
from golden_models import MODELS


def _source(name):
    target, args = MODELS[name]()
    if is_model(target):
        target(*args)
        return str(fc.source(target, "all")), target, args
    return str(fc.source(target, "all", args=args)), target, args


def _calls(text):
    return [n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Call)]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_no_positional_boolean_flag(name):
    text = _source(name)[0]
    bare = [ast.unparse(c) for c in _calls(text)
            if any(isinstance(a, ast.Constant) and isinstance(a.value, bool) for a in c.args)]
    assert not bare, f"boolean flags passed positionally: {bare}"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pullback_named_from_attribute(name):
    """``y, fc2_back = self.fc2._pullback(h)``: the back is named for the sub-model, never for
    the variable its output is assigned to."""
    text = _source(name)[0]
    for line in text.splitlines():
        if "._pullback(" in line:
            target = line.split("=")[0]
            attr = line.split("._pullback(")[0].split(".")[-1]
            attr = attr.replace("]", "").replace("layers[", "layer")
            assert f"{attr}_back" in target, line


def test_helper_lines_say_whose_they_are():
    text = _source("encoder")[0]
    assert "# line 44 (in squash, golden_models.py): return z / (1.0 + np.abs(z))" in text
    assert "# line 54: h = squash(self.fc1(x))" in text      # the model's own line: no note
    text = _source("softmax_loss")[0]
    assert "(in crossentropy, losses.py): return np.mean(" in text
    assert "# line" in _source("grad_function")[0] and " (in " not in _source("grad_function")[0]
