"""Every CompileError path: the error names the user's file, line and column, shows the
line's text and gives a hint. Models are written to a temporary module so line numbers
are exact."""
import importlib.util
import textwrap

import numpy as np
import pytest

import flux_compile as fc

HEADER = "import numpy as np\nimport flux_compile as fc\n\n\ndef helper(x):\n    return helper(x)\n\n\n"

# (name, forward body line, expected words in the message or hint)
CASES = [
    ("print", "print(x)", "print"),
    ("while", "while True:\n    x = x + 1", "while"),
    ("if_on_array", "if x > 0:\n    x = x + 1", "ambiguous"),
    ("try", "try:\n    x = x + 1\nexcept Exception:\n    pass", "try"),
    ("global", "global G", "global"),
    ("nested_def", "@staticmethod\ndef inner(y):\n    return y", "decorated"),
    ("lambda", "f = lambda y: y", "lambda"),
    ("yield", "yield x", "generator"),
    ("with", "with open('f') as fh:\n    pass", "with"),
    ("del", "del x", "del"),
    ("item_assign", "self.W[0] = 1.0", "item assignment"),
    ("comprehension", "x = {v: v for v in x}", "comprehension"),
    ("undefined", "x = undefined_name + x", "not defined"),
    ("recursion", "x = helper(x)", "recursive"),
    ("ifexp_on_array", "x = x if x > 0 else -x", "np.where"),
    ("and_on_arrays", "x = x and x", "ambiguous"),
    ("import", "import os", "import"),
    ("construct_model", "x = fc.Affine(2, 2)(x)", "__init__"),
    ("walrus", "y = (z := x)", "walrus"),
]


def load(tmp_path, name, body):
    body = textwrap.indent(body, " " * 8)
    src = HEADER + (
        "@fc.net\n"
        "class M:\n"
        "    def __init__(self):\n"
        "        self.W = np.ones((2, 2))\n"
        "\n"
        "    def forward(self, x):\n"
        f"{body}\n"
        "        return x\n")
    path = tmp_path / f"m_{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"m_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    line = HEADER.count("\n") + 7
    return mod.M(), str(path), line


@pytest.mark.parametrize("name,body,word", CASES, ids=[c[0] for c in CASES])
def test_compile_error_points_at_user_line(tmp_path, name, body, word):
    m, path, line = load(tmp_path, name, body)
    with pytest.raises(fc.CompileError) as info:
        m(np.ones((2, 2)))
    e = info.value
    assert isinstance(e, SyntaxError)
    assert e.filename == path
    if name == "recursion":
        line = 6                     # the recursive call inside helper
    assert line <= e.lineno <= line + 3
    assert e.offset is not None and e.offset >= 1
    assert e.text and e.text.strip()
    text = f"{e.msg} {e.hint}".lower()
    assert word.lower() in text, str(e)
    assert str(e).startswith(f"{path}:{e.lineno}")


def test_no_rule_error_and_nodiff_fix(tmp_path):
    src = HEADER + textwrap.dedent('''\
        def f(x):
            return np.sum(np.i0(x))


        def g(x):
            return np.sum(np.i0(fc.nodiff(x))) + np.sum(x)
    ''')
    path = tmp_path / "nor.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("nor", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(fc.CompileError) as info:
        fc.grad(mod.f, np.ones(4))
    assert info.value.lineno == HEADER.count("\n") + 2 and "diffrule" in info.value.hint
    _, (dx,) = fc.grad(mod.g, np.ones(4))
    np.testing.assert_allclose(dx, np.ones(4))


def test_runtime_error_in_rule_position_names_backward(tmp_path):
    def bad_rule_fn(x):
        return x * 2.0

    @fc.diffrule(bad_rule_fn)
    def _(dy, y, x):
        return np.reshape(dy, (-1, 7))        # wrong shape on purpose

    def f(x):
        return np.sum(bad_rule_fn(x))
    with pytest.raises(fc.ModelError) as info:
        fc.grad(f, np.ones((2, 3)))
    assert "backward" in str(info.value)
