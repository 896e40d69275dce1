"""Whole-model flattening on the ordinary call path (``m(x)``, ``m.pullback``, ``m.back``,
``fc.grad`` of a model): a Chain or nested model compiles to one forward and one backward,
sub-model bodies inlined, and the parent's variant is never reused for sub-models it was
not built for.

Each soundness case holds a result, mutates the model, calls again and compares with a
fresh copy of the mutated model (built and compiled from scratch) and with central finite
differences in float64.
"""
import copy

import numpy as np
import pytest

import flux_compile as fc
from numeric import numgrad


@fc.net
class Two:
    """A nested model with named sub-models (fc1, fc2)."""

    def __init__(self, fc1, fc2):
        self.fc1, self.fc2 = fc1, fc2

    def forward(self, x):
        return self.fc2(np.tanh(self.fc1(x)))


@fc.net
class Scaled:
    def __init__(self, n_in, n_out, scale=2.0, shift=None):
        self.W = fc.initn(n_in, n_out) * 50
        self.scale = scale
        self.shift = shift

    def forward(self, x):
        y = x @ self.W
        if self.shift is not None:
            y = y + self.shift
        return y * self.scale


def rng(seed=0):
    return np.random.default_rng(seed)


def params_of(m):
    from flux_compile.params import named_params
    return named_params(m)


def run_all(m, x, dy):
    """Output of m(x), of the pullback, dx of back, and every Param's grad after one back."""
    m.zero_grad()
    y = m(x)
    y2, back = m.pullback(x)
    dx = back(dy)
    grads = {path: p.grad.copy() for path, p in params_of(m)}
    m.zero_grad()
    dx2 = m.back(dy, x)
    grads2 = {path: p.grad.copy() for path, p in params_of(m)}
    m.zero_grad()
    return y, y2, dx, dx2, grads, grads2


def assert_same_as_fresh(m, x, seed=3):
    """``m`` (holding compiled variants) behaves exactly as a fresh copy compiled from scratch,
    and its input gradient matches finite differences."""
    fresh = copy.deepcopy(m)
    assert "_fc_compiled" not in fresh.__dict__
    dy = rng(seed).standard_normal(m(x).shape)
    got, want = run_all(m, x, dy), run_all(fresh, x, dy)
    for a, b in zip(got[:4], want[:4]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    for g, w in zip(got[4:], want[4:]):
        assert g.keys() == w.keys()
        for k in g:
            np.testing.assert_allclose(g[k], w[k], rtol=1e-12, atol=1e-12, err_msg=str(k))
    num = numgrad(lambda z: float(np.sum(m(z) * dy)), x)
    np.testing.assert_allclose(got[2], num, rtol=1e-5, atol=1e-7)
    return got


def chain(*sizes, act=np.tanh, seed=0):
    r = rng(seed)
    layers = []
    for a, b in zip(sizes, sizes[1:]):
        d = fc.Dense(a, b, act=act)
        d.W = r.standard_normal((a, b))
        d.b = r.standard_normal((1, b))
        layers.append(d)
    return fc.Chain(*layers)


X = rng(7).standard_normal((5, 4))


# ------------------------------------------------------------------------------
# the generated text

def test_a_chain_is_one_forward_and_one_backward():
    m = chain(4, 8, 3)
    m.pullback(X)
    src = fc.source(m, "all")
    assert "_pullback" not in src and "_back(" not in src and "layers[0](" not in src
    assert "self.layers[0].W.value" in src and "self.layers[1].W.grad +=" in src
    assert "(in self.layers[1]: Dense.forward, layers.py)" in src


def test_nested_models_inline_at_every_depth():
    inner = chain(4, 6, 5)
    m = Two(inner, fc.Dense(5, 3))
    m.pullback(X)
    src = fc.source(m, "backward")
    assert "self.fc1.layers[1].W.grad +=" in src and "self.fc2.W.grad +=" in src
    assert "(in self.fc1.layers[0]: Dense.forward, layers.py)" in src
    assert_same_as_fresh(m, X)


def test_flattened_gradients_match_finite_differences_in_params():
    m = Two(chain(4, 6, 5, act=fc.sigmoid), Scaled(5, 3, shift=0.5))
    report = fc.gradcheck(m, X)
    assert report.ok


def test_a_recurrent_sub_model_keeps_its_call():
    m = fc.Chain(fc.Dense(4, 6), fc.RNN(6, 3))
    m.reset()
    m(X)
    src = fc.source(m, "forward")
    assert "self.layers[1](" in src and "self.layers[0].W.value" in src


# ------------------------------------------------------------------------------
# soundness: hold a result, mutate, call again, compare with a fresh model

def test_sub_model_replaced_by_one_of_the_same_class_with_other_flags():
    m = Two(fc.Dense(4, 6, act=np.tanh), Scaled(6, 3))
    before = assert_same_as_fresh(m, X)
    m.fc1 = fc.Dense(4, 6, act=None)            # same attr token: the variant is kept, guarded
    m.fc1.W, m.fc1.b = rng(5).standard_normal((4, 6)), rng(6).standard_normal((1, 6))
    after = assert_same_as_fresh(m, X)
    assert not np.allclose(before[0], after[0])
    m.fc2.shift = 1.5                           # a None flag inside a sub-model becomes a value
    assert_same_as_fresh(m, X)
    m.fc2.scale = -3.0                          # a float read at run time
    assert_same_as_fresh(m, X)


def test_sub_model_replaced_by_one_of_another_class():
    m = Two(fc.Dense(4, 6), fc.Dense(6, 3))
    assert_same_as_fresh(m, X)
    m.fc2 = Scaled(6, 3, shift=0.25)
    assert_same_as_fresh(m, X)


def test_layer_deep_inside_a_nested_chain_replaced():
    m = Two(chain(4, 6, 5), fc.Dense(5, 3))
    assert_same_as_fresh(m, X)
    m.fc1.layers = (m.fc1.layers[0], Scaled(6, 5, shift=1.0))      # the inner Chain's field
    assert_same_as_fresh(m, X)
    m.fc1.layers = (m.fc1.layers[0], fc.Dense(6, 4), fc.Dense(4, 5, act=fc.relu))
    assert_same_as_fresh(m, X)


def test_sub_model_class_forward_redefined():
    @fc.net
    class Lin:
        def __init__(self, a, b):
            self.W = rng(2).standard_normal((a, b))

        def forward(self, x):
            return x @ self.W

    m = Two(Lin(4, 6), fc.Dense(6, 3))
    before = assert_same_as_fresh(m, X)
    Lin.forward = lambda self, x: np.sin(x @ self.W)
    after = assert_same_as_fresh(m, X)
    assert not np.allclose(before[0], after[0])


def test_a_subclass_instance_with_the_inherited_forward():
    @fc.net
    class Lin:
        def __init__(self, a, b):
            self.W = rng(2).standard_normal((a, b))

        def forward(self, x):
            return self.act(x @ self.W)

        def act(self, z):
            return z

    @fc.net
    class Squashed(Lin):
        def act(self, z):
            return np.tanh(z)

    m = Two(Lin(4, 6), fc.Dense(6, 3))
    assert_same_as_fresh(m, X)
    m.fc1 = Squashed(4, 6)
    assert_same_as_fresh(m, X)


def test_param_replaced_by_one_of_another_shape():
    m = chain(4, 6, 3)
    assert_same_as_fresh(m, X)
    m.layers[0].b = rng(4).standard_normal(6)       # (1, 6) -> (6,): another unbroadcast
    assert_same_as_fresh(m, X)
    m.layers[0].W = rng(5).standard_normal((4, 2))  # 6 -> 2 hidden units
    m.layers[0].b = rng(6).standard_normal((1, 2))
    m.layers[1].W = rng(7).standard_normal((2, 3))
    assert_same_as_fresh(m, X)


def test_param_shared_by_two_sub_models():
    m = chain(4, 4, 4)
    assert_same_as_fresh(m, X)
    m.layers[1].W = m.layers[0].W                    # one Param, two uses
    assert m.layers[1].W is m.layers[0].W
    assert len(fc.params(m)) == 3
    got = assert_same_as_fresh(m, X)
    _, _, _, _, grads, _ = got
    shared = m.layers[0].W
    m.zero_grad()
    dy = rng(3).standard_normal((5, 4))
    m.back(dy, X)
    # the shared Param holds the sum of both uses' gradients, equal to finite differences
    def loss_of(w):
        old = shared.value
        shared.value = w
        try:
            return float(np.sum(m(X) * dy))
        finally:
            shared.value = old
    np.testing.assert_allclose(shared.grad, numgrad(loss_of, shared.value.copy()), rtol=1e-5, atol=1e-7)
    m.layers[1].W = rng(8).standard_normal((4, 4))  # sharing undone
    assert_same_as_fresh(m, X)


def test_freezing_a_sub_model_after_its_parent_compiled():
    m = chain(4, 6, 3)
    assert_same_as_fresh(m, X)
    fc.freeze(m.layers[0])                          # only the child's caches are dropped
    m.zero_grad()
    m.back(np.ones((5, 3)), X)
    assert not np.any(m.layers[0].W.grad) and np.any(m.layers[1].W.grad)
    assert_same_as_fresh(m, X)
    fc.unfreeze(m.layers[0])
    assert_same_as_fresh(m, X)


def test_fc_grad_of_a_nested_model_after_a_mutation():
    m = Two(fc.Dense(4, 6, act=np.tanh), fc.Dense(6, 3))
    v1, g1 = fc.grad(m, X)
    m.fc1 = fc.Dense(4, 6, act=fc.relu)
    v2, g2 = fc.grad(m, X)
    fresh = copy.deepcopy(m)
    v3, g3 = fc.grad(fresh, X)
    np.testing.assert_allclose(v2, v3)
    params, dx = g2
    assert params.keys() == g3[0].keys()
    for k in params:
        np.testing.assert_allclose(params[k], g3[0][k], err_msg=str(k))
    np.testing.assert_allclose(dx, g3[1])
    np.testing.assert_allclose(dx, numgrad(lambda z: float(np.sum(m(z))), X), rtol=1e-5, atol=1e-7)
    assert not np.allclose(v1, v2)


@pytest.mark.parametrize("seed", range(6))
def test_random_nested_structures_match_a_fresh_model(seed):
    """Hostile mutations drawn at random, each followed by a comparison with a fresh copy."""
    r = rng(100 + seed)
    acts = [np.tanh, fc.relu, fc.sigmoid, None]
    m = Two(chain(4, 5, 6, act=acts[seed % 4], seed=seed), fc.Dense(6, 3))
    assert_same_as_fresh(m, X)
    for _ in range(4):
        what = r.integers(4)
        if what == 0:
            m.fc1.layers[0].act = acts[r.integers(4)]
        elif what == 1:
            m.fc1.layers[1].b = r.standard_normal(6)
        elif what == 2:
            m.fc2 = Scaled(6, 3, shift=float(r.standard_normal()))
        else:
            m.fc1.layers[1].W = m.fc1.layers[1].W if r.integers(2) else r.standard_normal((5, 6))
            fc.freeze(m.fc1.layers[int(r.integers(2))])
        assert_same_as_fresh(m, X)


# ------------------------------------------------------------------------------
# the thin call path keeps its guarantees (the walk of the Params is cached)

@fc.net
class Blocks:
    def __init__(self, *blocks):
        self.blocks = list(blocks)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def sgd_reference(m, x, dy, lr):
    """The Params of a fresh copy after one SGD step, computed by hand from its gradients."""
    fresh = copy.deepcopy(m)
    fresh.zero_grad()
    fresh.back(dy, x)
    return {path: p.value - lr * p.grad if p.trainable else p.value for path, p in params_of(fresh)}


def assert_update_matches(m, x, lr=0.5):
    dy = rng(9).standard_normal(m(x).shape)
    want = sgd_reference(m, x, dy, lr)
    m.zero_grad()
    m.back(dy, x)
    m.update(lr)
    got = {path: p.value for path, p in params_of(m)}
    assert got.keys() == want.keys()
    for k in got:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-12, err_msg=str(k))
    assert all(not np.any(p.grad) for _, p in params_of(m))


def test_update_sees_a_sub_model_added_deep_inside():
    m = chain(4, 6, 3)
    assert_update_matches(m, X)
    m.layers[0].extra = fc.Dense(2, 2)             # a new Param pair, not used by forward
    m.layers[0].extra.W.grad[...] = 1.0
    before = m.layers[0].extra.W.value.copy()
    m.update(0.1)
    assert not np.any(m.layers[0].extra.W.grad)    # zeroed: the new Params were found
    np.testing.assert_allclose(m.layers[0].extra.W.value, before - 0.1)
    assert_update_matches(m, X)


def test_update_and_zero_grad_see_a_layer_appended_to_a_list():
    m = Blocks(fc.Dense(4, 4, act=np.tanh))
    extra = fc.Dense(4, 3)
    assert_update_matches(m, X)
    m.blocks.append(extra)                          # no attribute set: the list changed in place
    extra.W.grad[...] = 1.0
    before = extra.W.value.copy()
    m.update(0.25)                                  # the first walk after the append
    np.testing.assert_allclose(extra.W.value, before - 0.25)
    assert not np.any(extra.W.grad)
    assert len(fc.params(m)) == 4
    assert_update_matches(m, X)
    m.blocks[1].W.grad[...] = 1.0
    m.zero_grad()
    assert not np.any(m.blocks[1].W.grad)


def test_update_after_an_attribute_is_deleted():
    m = Two(fc.Dense(4, 6), fc.Dense(6, 3))
    m.fc1.extra = rng(1).standard_normal((2, 2))
    assert_update_matches(m, X)
    gone = m.fc1.extra
    del m.fc1.extra
    assert len(fc.params(m)) == 4
    gone.grad[...] = 1.0
    before = gone.value.copy()
    m.update(0.1)                                   # no longer the model's: left alone
    np.testing.assert_array_equal(gone.value, before)
    assert np.all(gone.grad == 1.0)
    assert_update_matches(m, X)


def test_update_with_a_gradient_whose_sum_overflows_is_finite():
    m = fc.Dense(2, 2)
    big = np.finfo(np.float64).max
    m.W.grad[...] = [[big, big], [big, -1.0]]       # finite entries, an infinite sum
    old = m.W.value.copy()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # no overflow warning either
        m.update(1e-300)
    np.testing.assert_allclose(m.W.value, old - 1e-300 * np.array([[big, big], [big, -1.0]]))
    m.W.grad[0, 0] = np.nan
    before = m.W.value.copy()
    with pytest.raises(fc.optim.NonFiniteGradient, match="gradient of W"):
        m.update(0.1)
    np.testing.assert_array_equal(m.W.value, before)
    m.W.grad[0, 0] = np.inf
    m.W.grad[1, 1] = -np.inf                         # inf - inf: a NaN sum, caught too
    with pytest.raises(fc.optim.NonFiniteGradient):
        m.update(0.1)


def test_dropout_inside_a_chain_follows_testmode_and_trainmode():
    """Dropout's flag is a setting of the inlined sub-model: flipping it on the child after the
    parent compiled is seen (guarded), both ways."""
    m = fc.Chain(chain(4, 6, 6), fc.Dropout(0.5), fc.Dense(6, 3))
    inner = fc.Chain(*m.layers[0].layers, m.layers[2])
    fc.trainmode(m)
    y_train = m.pullback(X)[0]                      # dropout in training calls
    assert not np.allclose(y_train, inner(X))
    fc.testmode(m.layers[1])                       # the child only: the parent's key is unchanged
    np.testing.assert_allclose(m(X), inner(X), rtol=1e-12)
    np.testing.assert_allclose(m.pullback(X)[0], inner(X), rtol=1e-12)
    assert "dropout" not in fc.source(m, "forward_train")
    fc.trainmode(m.layers[1])
    dropped = [m.pullback(X)[0] for _ in range(3)]
    assert all(not np.allclose(d, inner(X)) for d in dropped)
    assert "dropout" in fc.source(m, "forward_train")


def test_chains_nested_three_deep_are_one_function_and_exact():
    """A Chain inside a Chain is no recursion: each level inlines (one forward, one backward)."""
    m = fc.Chain(fc.Chain(chain(4, 5, 6), fc.Dense(6, 6, act=fc.sigmoid)), chain(6, 3, seed=4))
    assert_same_as_fresh(m, X)
    assert fc.gradcheck(m, X).ok
    src = fc.source(m, "all")
    assert "_pullback" not in src and "_back(" not in src
    assert "self.layers[0].layers[0].layers[1].W.grad +=" in src


def test_guards_sharing_a_path_head_read_it_once_and_still_fail_on_any_change():
    from types import SimpleNamespace as NS
    from flux_compile.guards import compile_checks, value_token
    reads = []

    class Counting:
        def __init__(self, inner):
            self._inner = inner

        @property
        def inner(self):
            reads.append(1)
            return self._inner

    root = Counting(NS(a=1, b="x", c=NS(d=2.5)))
    path = (("attr", "inner"),)
    check = compile_checks([(path + (("attr", "a"),), "eq", value_token(1)),
                            (path + (("attr", "b"),), "eq", value_token("x")),
                            (path + (("attr", "c"), ("attr", "d")), "eq", value_token(2.5)),
                            (path + (("attr", "c"), ("attr", "e")), "has", ("e", False))])
    assert check(root, ()) and len(reads) == 1          # the shared head read once
    root._inner.c.d = 3.0
    assert not check(root, ())
    root._inner.c.d = 2.5
    root._inner.c.e = 0
    assert not check(root, ())
    del root._inner.c.e
    root._inner = NS(a=1, b="x")                        # a head that lost a field: False, no error
    assert not check(root, ())


_DISK_RUN = r'''
import json, sys
import numpy as np, flux_compile as fc
from flux_compile.cache import compile_model
m = fc.Chain(fc.Dense(4, 6, act=np.tanh), fc.Dense(6, 3))
r = np.random.default_rng(0)
for p in fc.params(m):
    p.value = r.standard_normal(p.shape)
if sys.argv[1] == "flat_bias":
    m.layers[0].b = r.standard_normal(6)          # (6,): another shape inside a sub-model
x = np.linspace(-1, 1, 20).reshape(5, 4)
y, back = m.pullback(x)
dx = back(np.ones_like(y))
print(json.dumps({"from_disk": compile_model(m, (x,)).from_disk, "y": y.tolist(), "dx": dx.tolist(),
                  "gb": m.layers[0].b.grad.tolist()}))
'''


def test_a_disk_entry_of_a_flattened_chain_is_refused_for_a_sub_model_param_of_another_shape(tmp_path):
    import json
    import os
    import subprocess
    import sys

    def run(variant):
        env = dict(os.environ, FLUX_COMPILE_CACHE_DIR=str(tmp_path / "cache"),
                   XDG_CONFIG_HOME=str(tmp_path / "config"), PYTHONDONTWRITEBYTECODE="1")
        r = subprocess.run([sys.executable, "-c", _DISK_RUN, variant], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.splitlines()[-1])

    def reference(variant):
        m = fc.Chain(fc.Dense(4, 6, act=np.tanh), fc.Dense(6, 3))
        r = np.random.default_rng(0)
        for p in fc.params(m):
            p.value = r.standard_normal(p.shape)
        if variant == "flat_bias":
            m.layers[0].b = r.standard_normal(6)
        x = np.linspace(-1, 1, 20).reshape(5, 4)
        W0, b0, W1, b1 = (np.asarray(p.value) for p in (m.layers[0].W, m.layers[0].b, m.layers[1].W, m.layers[1].b))
        h = np.tanh(x @ W0 + b0)
        y = h @ W1 + b1
        dz = (np.ones_like(y) @ W1.T) * (1 - h * h)
        gb = dz.sum(axis=0).reshape(b0.shape)
        return y, dz @ W0.T, gb

    first = run("same")
    again = run("same")
    other = run("flat_bias")
    assert not first["from_disk"] and again["from_disk"]
    assert not other["from_disk"]                   # the entry's param guard failed: compiled anew
    for out, variant in ((first, "same"), (again, "same"), (other, "flat_bias")):
        y, dx, gb = reference(variant)
        np.testing.assert_allclose(out["y"], y, rtol=1e-12)
        np.testing.assert_allclose(out["dx"], dx, rtol=1e-12)
        np.testing.assert_allclose(np.array(out["gb"]), gb, rtol=1e-12)
        assert np.array(out["gb"]).shape == gb.shape


@fc.net
class MatAfter:
    """A sub-model's output multiplied by a Param: the matmul's rule needs its shape."""

    def __init__(self):
        self.fc1, self.fc2 = fc.Dense(4, 6, act=np.tanh), Scaled(6, 3, shift=0.5)
        self.W = rng(3).standard_normal((3, 3))

    def forward(self, x):
        return self.fc2(self.fc1(x)) @ self.W + 1.0


def test_sub_model_output_shapes_are_known_so_no_shape_is_saved():
    """Inlined, a sub-model's output shape is inferred: the training forward saves no shape
    and the backward needs neither ``unbroadcast`` nor the general ``matmul_grad_a``
    (called, the sub-model's output was of unknown shape: ``fc2_out_shape`` was saved)."""
    m = MatAfter()
    m.pullback(X)[1]()
    saved = fc.source(m, "forward_train").split("return ")[-1]
    back = fc.source(m, "backward")
    assert "shape" not in saved and "unbroadcast(" not in back and "matmul_grad" not in back
    assert_same_as_fresh(m, X)
    assert fc.gradcheck(m, X).ok
