"""Install (issue 15, item 5): the README's test command stays light (no GPU packages,
no torch or JAX); torch and JAX have their own extras, which CI installs; README says so."""
import pathlib
import re

try:
    import tomllib
except ImportError:                                 # Python 3.10
    tomllib = None

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
HEAVY = re.compile(r"^(torch|jax|jaxlib|nvidia-|triton|tensorflow|cupy)", re.I)


@pytest.fixture(scope="module")
def extras():
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def names(requirements):
    return [re.split(r"[<>=!~\[ ;]", r, 1)[0] for r in requirements]


def test_test_extra_has_no_gpu_torch_or_jax_package(extras):
    assert not [n for n in names(extras["test"]) if HEAVY.match(n)]
    assert {"pytest", "hypothesis", "autograd"} <= set(names(extras["test"]))


def test_torch_and_jax_have_their_own_extras(extras):
    assert names(extras["torch"]) == ["torch"] and names(extras["jax"]) == ["jax"]


def test_runtime_needs_only_numpy_and_astor():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"] if tomllib else pytest.skip()
    assert names(project["dependencies"]) == ["numpy", "astor"]


def test_readme_commands_and_ci_match():
    readme = (ROOT / "README.md").read_text()
    assert 'pip install -e . && .venv/bin/python examples/quickstart.py' in readme
    assert 'pip install -e ".[test]" && .venv/bin/python -m pytest -q' in readme
    assert "installs no GPU packages" in readme and "`.[torch]` and `.[jax]`" in readme
    assert '-e ".[test,torch,jax,docs]"' in (ROOT / ".ci" / "run").read_text()     # docs: the site builds
