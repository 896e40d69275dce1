"""Every docstring example in the package runs (the modules' examples are their docs)."""
import doctest
import importlib
import pkgutil

import pytest

import flux_compile

MODULES = sorted(m.name for m in pkgutil.walk_packages(flux_compile.__path__, "flux_compile.")
                 if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
