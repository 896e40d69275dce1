"""Code objects compare equal across files (code equality ignores ``co_filename``): two files
with the same text must still get their own source, line map and compiled code."""
import importlib.util
import sys

import numpy as np
import pytest

import flux_compile as fc

TEXT = '''
import numpy as np
import flux_compile as fc


@fc.net
class Twin:
    def __init__(self):
        self.W = np.ones((3, 2))

    def forward(self, x):
        return x @ self.W


def loss(w, x):
    return np.sum(np.tanh(x @ w) * SCALE)


SCALE = {scale}
'''


def load(tmp_path, name, scale):
    path = tmp_path / f"{name}.py"
    path.write_text(TEXT.format(scale=scale))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module, str(path)


def test_each_file_names_its_own_line_in_errors(tmp_path):
    (a, path_a), (b, path_b) = load(tmp_path, "twin_a", 1.0), load(tmp_path, "twin_b", 1.0)
    assert a.Twin.forward.__code__ == b.Twin.forward.__code__       # the premise
    for module, path in ((a, path_a), (b, path_b)):
        with pytest.raises(ValueError) as info:
            module.Twin()(np.ones((4, 5)))                        # a shape error in forward
        assert f"{path}:12" in str(info.value)
        assert "# line 12" in fc.source(module.Twin(), "forward")


def test_equal_functions_of_two_files_read_their_own_globals(tmp_path):
    (a, _), (b, _) = load(tmp_path, "twin_c", 1.0), load(tmp_path, "twin_d", 3.0)
    w, x = np.full((3, 2), 0.1), np.linspace(0.1, 1, 12).reshape(4, 3)
    va, (ga, _) = fc.grad(a.loss, w, x)
    vb, (gb, _) = fc.grad(b.loss, w, x)
    np.testing.assert_allclose(vb, 3.0 * va, rtol=1e-12)
    np.testing.assert_allclose(gb, 3.0 * ga, rtol=1e-12)
