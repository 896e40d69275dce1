"""save / load: round trip, every mismatch listed, nothing half-loaded."""
import numpy as np
import pytest

from flux_compile.io import LoadError, load, save
from flux_compile.params import Param


class Toy:
    __flux_net__ = True

    def __init__(self, **fields):
        self.__dict__.update(fields)


def model(n=3, seed=0, extra=False):
    rng = np.random.default_rng(seed)
    m = Toy(layers=[Toy(W=Param(rng.normal(size=(2, n))), b=Param(rng.normal(size=(n,))))],
            out=Toy(W=Param(rng.normal(size=(n, 1)).astype(np.float32))),
            frozen=Param(rng.normal(size=(2,)), trainable=False))
    if extra:
        m.more = Param(np.ones(4))
    return m


def values(m):
    return [m.layers[0].W.value, m.layers[0].b.value, m.out.W.value, m.frozen.value]


def test_round_trip(tmp_path):
    src, dst = model(seed=0), model(seed=1)
    save(tmp_path / "m.npz", src)
    assert load(tmp_path / "m.npz", dst) is dst
    for a, b in zip(values(src), values(dst)):
        np.testing.assert_array_equal(a, b)
    assert dst.out.W.value.dtype == np.float32


def test_keys_are_field_paths_and_suffix_optional(tmp_path):
    save(tmp_path / "m", model())
    with np.load(tmp_path / "m.npz") as f:
        assert sorted(f.files) == ["frozen", "layers[0].W", "layers[0].b", "out.W"]
    load(tmp_path / "m", model(seed=2))
    load(str(tmp_path / "m.npz"), model(seed=2))


def test_dtype_of_the_model_wins(tmp_path):
    src = model()
    save(tmp_path / "m", src)
    dst = model()
    dst.layers[0].W = Param(np.zeros((2, 3), dtype=np.float32))
    load(tmp_path / "m", dst)
    assert dst.layers[0].W.value.dtype == np.float32
    np.testing.assert_allclose(dst.layers[0].W.value, src.layers[0].W.value, rtol=1e-6)


def test_every_mismatch_listed_and_nothing_loaded(tmp_path):
    save(tmp_path / "m", model(n=3))
    dst = model(n=5, seed=1, extra=True)
    del dst.frozen
    before = [v.copy() for v in (dst.layers[0].W.value, dst.out.W.value, dst.more.value)]
    with pytest.raises(LoadError) as err:
        load(tmp_path / "m", dst)
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "missing in file: more" in msg
    assert "unexpected in file: frozen" in msg
    assert "layers[0].W is (2, 3) in the file, (2, 5) in the model" in msg
    assert "layers[0].b is (3,) in the file, (5,) in the model" in msg
    assert "out.W is (3, 1) in the file, (5, 1) in the model" in msg
    assert len(err.value.problems) == 5
    for a, b in zip(before, (dst.layers[0].W.value, dst.out.W.value, dst.more.value)):
        np.testing.assert_array_equal(a, b)


def test_field_names_that_clash_with_savez_arguments(tmp_path):
    src = Toy(file=Param(np.ones(2)), allow_pickle=Param(np.full(3, 2.0)))
    save(tmp_path / "m", src)
    dst = Toy(file=Param(np.zeros(2)), allow_pickle=Param(np.zeros(3)))
    load(tmp_path / "m", dst)
    np.testing.assert_array_equal(dst.allow_pickle.value, [2.0, 2.0, 2.0])


def test_shared_param_saved_once(tmp_path):
    shared = Param(np.arange(3.0))
    save(tmp_path / "m", Toy(a=Toy(w=shared), b=Toy(w=shared)))
    with np.load(tmp_path / "m.npz") as f:
        assert f.files == ["a.w"]
