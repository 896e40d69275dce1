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
