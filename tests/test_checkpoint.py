"""Checkpoints: fc.save / fc.load with the optimiser and the recurrent state, resumed runs
equal to uninterrupted ones bit for bit; optimiser state pickled with the model and held
weakly; save / load that check everything first and survive concurrent writers."""
import gc
import multiprocessing
import os
import pickle
import weakref
import zipfile

import numpy as np
import pytest

import flux_compile as fc
from flux_compile import optim
from flux_compile.io import LoadError, field_name, load, save
from flux_compile.params import Param, named_params
from flux_compile.recurrent import snapshot_states

OPTIMISERS = {
    "SGD": lambda: optim.SGD(0.1), "Momentum": lambda: optim.Momentum(0.05),
    "Nesterov": lambda: optim.Nesterov(0.05), "Adam": lambda: optim.Adam(0.01),
    "AdamW": lambda: optim.AdamW(0.01, weight_decay=0.1), "RMSProp": lambda: optim.RMSProp(0.01),
}


def seeded(seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return lambda *shape: fc.glorot_uniform(*shape, rng=rng, dtype=dtype)


def dense(seed=0):
    return fc.Chain(fc.Dense(3, 5, act=np.tanh, init=seeded(seed)), fc.Dense(5, 2, init=seeded(seed + 1)))


def rnn(seed=0):
    return fc.Chain(fc.RNN(3, 4, init=seeded(seed)), fc.Dense(4, 2, init=seeded(seed + 1)))


def lstm(seed=0):
    return fc.Chain(fc.LSTM(3, 4, init=seeded(seed)), fc.Dense(4, 2, init=seeded(seed + 1)))


def batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(6, 3)), rng.normal(size=(6, 2))) for _ in range(n)]


def everything(model, opt):
    """Every array a resumed run must reproduce: values, optimiser entries, recurrent state."""
    out = []
    for _, p in named_params(model):
        entry = opt.state.get(p)
        out += [p.value] + ([] if entry is None else [np.asarray(entry.step)] + list(entry.slots))
    for _, state, *_ in snapshot_states(model):
        out += [] if state is None else [np.asarray(v) for v in state.values()]
    return out


def bitwise_equal(xs, ys):
    return len(xs) == len(ys) and all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes() for x, y in zip(xs, ys))


def straight_and_resumed(tmp_path, make, make_opt, n=8, resume=None):
    """A run, and the same run saved half way and resumed; state carried across batches
    (stateful=True), so a checkpoint must hold the recurrent state too."""
    data = batches(n)
    straight, opt = make(0), make_opt()
    fc.train(straight, fc.mse, data, opt, progress=False, stateful=True)
    first, opt1 = make(0), make_opt()
    fc.train(first, fc.mse, data[:n // 2], opt1, progress=False, stateful=True)
    fc.save(tmp_path / "ckpt", first, opt1)
    del first, opt1
    fresh, opt2 = make(7), make_opt()                   # other weights, an empty optimiser
    (resume or (lambda m, o: fc.load(tmp_path / "ckpt", m, o)))(fresh, opt2)
    fc.train(fresh, fc.mse, data[n // 2:], opt2, progress=False, stateful=True)
    return everything(straight, opt), everything(fresh, opt2)


@pytest.mark.parametrize("kind", [dense, rnn, lstm], ids=["dense", "rnn", "lstm"])
@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_resumed_run_equals_the_straight_run_bit_for_bit(tmp_path, name, kind):
    a, b = straight_and_resumed(tmp_path, kind, OPTIMISERS[name])
    assert bitwise_equal(a, b)


def test_resumed_float32_run_equals_the_straight_run(tmp_path):
    def make(seed):
        return fc.Chain(fc.Dense(3, 5, act=np.tanh, init=seeded(seed, np.float32)),
                        fc.Dense(5, 2, init=seeded(seed + 1, np.float32)))
    a, b = straight_and_resumed(tmp_path, make, OPTIMISERS["Adam"])
    assert a[0].dtype == np.float32 and bitwise_equal(a, b)


@pytest.mark.parametrize("name", ["Momentum", "Adam", "RMSProp"])
def test_the_comparison_sees_a_lost_optimiser_state(tmp_path, name):
    """The same run resumed without the optimiser's state differs: the test above can fail."""
    a, b = straight_and_resumed(tmp_path, dense, OPTIMISERS[name],
                                resume=lambda m, o: fc.load(tmp_path / "ckpt", m))
    assert not bitwise_equal(a, b)


def test_the_comparison_sees_a_lost_recurrent_state(tmp_path):
    def load_then_reset(m, o):
        fc.load(tmp_path / "ckpt", m, o)
        fc.reset(m)
    a, b = straight_and_resumed(tmp_path, rnn, OPTIMISERS["SGD"], resume=load_then_reset)
    assert not bitwise_equal(a, b)


def test_recurrent_state_saved_and_restored(tmp_path):
    m = rnn(0)
    xs = batches(3)
    for x, _ in xs[:2]:
        m(x)
    save(tmp_path / "m", m)
    fresh = load(tmp_path / "m", rnn(5))
    np.testing.assert_array_equal(fresh(xs[2][0]), m(xs[2][0]))
    with np.load(tmp_path / "m.npz") as f:
        assert "@state/layers[0].h" in f.files
    m.reset()
    save(tmp_path / "initial", m)                   # no state saved: loading resets it
    load(tmp_path / "initial", fresh)
    assert all(state is None for _, state, *_ in snapshot_states(fresh))


# -- load checks the optimiser too, before changing anything ----------------------

def trained(make_opt=OPTIMISERS["Adam"], steps=2):
    m, opt = dense(0), make_opt()
    fc.train(m, fc.mse, batches(steps), opt, progress=False)
    return m, opt


def assert_unchanged(m, opt, before):
    assert bitwise_equal(everything(m, opt), before)


@pytest.mark.parametrize("other, message", [
    (optim.AdamW(0.01), "the file holds the state of a Adam, this is a AdamW"),
    (optim.Adam(0.02), "lr is 0.01 in the file, 0.02 here"),
    (optim.Adam(0.01, betas=(0.8, 0.999)), "beta1 is 0.9 in the file, 0.8 here"),
])
def test_optimiser_mismatch_is_an_error_and_nothing_changes(tmp_path, other, message):
    m, opt = trained()
    save(tmp_path / "c", m, opt)
    target, target_opt = trained(OPTIMISERS["Adam"], 1)
    target_opt.__dict__.update({k: v for k, v in other.__dict__.items() if k != "state"})
    target_opt.__class__ = type(other)
    before = everything(target, target_opt)
    with pytest.raises(LoadError, match=message):
        load(tmp_path / "c", target, target_opt)
    assert_unchanged(target, target_opt, before)


def test_optimiser_asked_for_but_not_saved(tmp_path):
    m, opt = trained()
    save(tmp_path / "c", m)
    target, target_opt = trained(OPTIMISERS["Adam"], 1)
    before = everything(target, target_opt)
    with pytest.raises(LoadError, match="saved without opt"):
        load(tmp_path / "c", target, target_opt)
    assert_unchanged(target, target_opt, before)


def test_damaged_optimiser_entry_is_an_error_and_nothing_changes(tmp_path):
    m, opt = trained()
    save(tmp_path / "c", m, opt)
    with np.load(tmp_path / "c.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays["@optimiser/layers[1].b/m"] = np.zeros((3, 3))       # the last Param's moment
    np.savez(tmp_path / "bad.npz", **arrays)
    target, target_opt = trained(OPTIMISERS["Adam"], 1)
    before = everything(target, target_opt)
    with pytest.raises(LoadError, match=r"the optimiser's m of layers\[1\].b is \(3, 3\)"):
        load(tmp_path / "bad.npz", target, target_opt)
    assert_unchanged(target, target_opt, before)


# -- the optimiser's state: keyed by the Param, pickled with it, held weakly --------

@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_pickling_model_and_optimiser_together_keeps_the_state(name):
    m, opt = trained(OPTIMISERS[name])
    m2, opt2 = pickle.loads(pickle.dumps((m, opt)))
    assert len(opt2.state) == len(opt.state) == len(fc.params(m))
    assert [opt2.state[p].step for p in fc.params(m2)] == [opt.state[p].step for p in fc.params(m)]
    rest = batches(4, seed=3)
    fc.train(m, fc.mse, rest, opt, progress=False)
    fc.train(m2, fc.mse, rest, opt2, progress=False)
    assert bitwise_equal(everything(m, opt), everything(m2, opt2))


def test_an_optimiser_does_not_keep_dropped_params_alive():
    opt = optim.Adam(0.01)
    refs = []
    for seed in range(3):
        m = dense(seed)
        fc.train(m, fc.mse, batches(2), opt, progress=False)
        refs += [weakref.ref(p) for p in fc.params(m)]
        assert len(opt.state) == len(fc.params(m))
        del m
        gc.collect()
        assert all(r() is None for r in refs)
        assert len(opt.state) == 0 and not opt.state._entries


def test_state_is_keyed_by_identity_not_by_a_reused_id():
    opt = optim.Momentum(0.1)
    m = Toy(w=Param(np.ones(2)))
    m.w.grad[...] = 1.0
    opt.step(m)
    old_id = id(m.w)
    del m
    gc.collect()
    fresh = [Param(np.ones(2)) for _ in range(50)]       # one of them may get the old id
    assert all(p not in opt.state for p in fresh) and len(opt.state) == 0
    reused = [p for p in fresh if id(p) == old_id]
    for p in reused:                                    # when the id came back: still no state
        p.grad[...] = 1.0
        assert optim.Momentum(0.1)._state_for(p).step == opt._state_for(p).step == 0


# -- save / load: names, checks first, dtypes, files --------------------------------

class Toy:
    __flux_net__ = True

    def __init__(self, **fields):
        self.__dict__.update(fields)


def test_field_names_never_collide(tmp_path):
    src = Toy(d={"a.b": Param(np.full(2, 1.0)), "a": {"b": Param(np.full(2, 2.0))},
                 "x[0]": Param(np.full(2, 3.0)), "x": [Param(np.full(2, 4.0))], 5: Param(np.full(2, 5.0))})
    names = [field_name(q) for q, _ in named_params(src)]
    assert len(set(names)) == 5 and "d['a.b']" in names and "d.a.b" in names and "d[5]" in names
    save(tmp_path / "m", src)
    dst = Toy(d={"a.b": Param(np.zeros(2)), "a": {"b": Param(np.zeros(2))},
                 "x[0]": Param(np.zeros(2)), "x": [Param(np.zeros(2))], 5: Param(np.zeros(2))})
    load(tmp_path / "m", dst)
    got = [float(p.value[0]) for _, p in named_params(dst)]
    assert got == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_a_key_that_cannot_be_named_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="use str or int keys"):
        save(tmp_path / "m", Toy(d={object(): Param(np.ones(1))}))
    assert not os.listdir(tmp_path)


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("bad, message", [
    (np.array(["a", "b"]), "b holds <U1 in the file"),
    (np.array(["2020-01-01", "2021-01-01"], dtype="datetime64[D]"), "b holds datetime64"),
    (np.array([1 + 2j, 3j]), "complex in the file: b is complex128 in the file, float32 in the model"),
    (np.array([1e300, 1.0]), "out of range: b has values too large for float32"),
    (np.array([1, 2]), "b holds int64"),
])
def test_load_checks_every_entry_before_changing_anything(tmp_path, bad, message):
    path = write_npz(tmp_path / "f.npz", W=np.full(2, 9.0), b=bad)
    m = Toy(W=Param(np.zeros(2)), b=Param(np.zeros(2, dtype=np.float32)))
    with pytest.raises(LoadError, match=message) as err:
        load(path, m)
    assert str(path) in str(err.value)
    assert not m.W.value.any() and not m.b.value.any()          # W was not written first


def test_complex_params_round_trip_exactly(tmp_path):
    src = Toy(z=Param(np.array([1 + 2j, -3.5j])))
    save(tmp_path / "z", src)
    dst = load(tmp_path / "z", Toy(z=Param(np.zeros(2, dtype=complex))))
    assert dst.z.value.dtype == np.complex128 and np.array_equal(dst.z.value, src.z.value)
    widened = load(tmp_path / "z", Toy(z=Param(np.zeros(2, dtype=np.complex64))))
    assert widened.z.value.dtype == np.complex64


def valid_file(tmp_path):
    save(tmp_path / "good", Toy(W=Param(np.arange(1000.0))))
    return tmp_path / "good.npz"


@pytest.mark.parametrize("make_bad, message", [
    (lambda p, good: np.save(open(p, "wb"), np.ones(3)), "single .npy array"),
    (lambda p, good: open(p, "wb").close(), "the file is empty"),
    (lambda p, good: open(p, "wb").write(good.read_bytes()[:len(good.read_bytes()) // 2]),
     "not a .npz \\(zip\\) archive"),
    (lambda p, good: open(p, "w").write("W,b\n1,2\n"), "not a .npz \\(zip\\) archive"),
    (lambda p, good: os.mkdir(p), "it is a directory"),
], ids=["npy", "empty", "truncated", "text", "directory"])
def test_a_file_that_is_not_a_checkpoint_gets_a_clear_error(tmp_path, make_bad, message):
    good = valid_file(tmp_path)
    path = tmp_path / "bad.npz"
    make_bad(str(path), good)
    m = Toy(W=Param(np.zeros(1000)))
    with pytest.raises(LoadError, match=message) as err:
        load(path, m)
    assert str(path) in str(err.value) and not m.W.value.any()


def test_a_damaged_member_gets_a_clear_error(tmp_path):
    good = valid_file(tmp_path)
    data = bytearray(good.read_bytes())
    data[200] ^= 0xFF                               # inside W's bytes: the CRC no longer matches
    bad = tmp_path / "damaged.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(LoadError, match="damaged") as err:
        load(bad, Toy(W=Param(np.zeros(1000))))
    assert str(bad) in str(err.value)


def test_a_missing_file_names_both_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        load(tmp_path / "nowhere", Toy(W=Param(np.zeros(1))))


def test_save_leaves_no_temporary_and_replaces_atomically(tmp_path):
    save(tmp_path / "m", Toy(W=Param(np.ones(3))))
    save(tmp_path / "m", Toy(W=Param(np.full(3, 2.0))))
    assert os.listdir(tmp_path) == ["m.npz"]
    assert zipfile.ZipFile(tmp_path / "m.npz").testzip() is None


# -- two processes saving to one path ---------------------------------------------

def _keep_saving(path, fill, rounds, start):
    m = Toy(W=Param(np.full(20000, fill)), b=Param(np.full(7, fill)))
    start.wait()
    for _ in range(rounds):
        save(path, m)


def test_concurrent_saves_always_leave_a_loadable_file(tmp_path):
    """Two processes save different models to one path, 20 rounds of 5 saves each, while this
    process loads it over and over: every load succeeds and gives one whole model."""
    ctx = multiprocessing.get_context("fork")
    path = str(tmp_path / "shared.npz")
    loads = 0
    for _ in range(20):
        start = ctx.Event()
        writers = [ctx.Process(target=_keep_saving, args=(path, fill, 5, start)) for fill in (1.0, 2.0)]
        for w in writers:
            w.start()
        start.set()
        while any(w.is_alive() for w in writers):
            loads += check_whole(path)
        for w in writers:
            w.join()
            assert w.exitcode == 0
        loads += check_whole(path)
        assert sorted(os.listdir(tmp_path)) == ["shared.npz"]          # no temporaries left
    assert loads >= 20


def check_whole(path):
    if not os.path.exists(path):
        return 0
    m = load(path, Toy(W=Param(np.zeros(20000)), b=Param(np.zeros(7))))
    fill = m.W.value[0]
    assert fill in (1.0, 2.0) and (m.W.value == fill).all() and (m.b.value == fill).all()
    return 1
