"""fc.distributed and fc.train(..., distributed=True): two ranks on loopback with gloo.

One module fixture starts two ranks (subprocesses with RANK, WORLD_SIZE,
MASTER_ADDR=127.0.0.1 and a free port, as torchrun sets them) running
tests/distributed_worker.py; the tests compare what they wrote with training
in this process on the same global batches.
"""
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import flux_compile as fc
from flux_compile import distributed

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "distributed_worker.py"
EXAMPLE = ROOT / "examples" / "distributed_mnist.py"
TIMEOUT = 240
sys.path.insert(0, str(ROOT / "tests"))
import distributed_worker as worker  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(**extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    env.update(extra)
    return env


def start_ranks(out_dir, world=2):
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(out_dir)],
                              env=environment(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world),
                                              MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(world)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, (p, text) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {r} failed:\n{text}"
    return [pickle.loads((out_dir / f"rank{r}.pkl").read_bytes()) for r in range(world)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("ranks")
    return start_ranks(out), out


def assert_same(got, want, tol=1e-10):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


# -- two ranks against one process ---------------------------------------------------

@pytest.mark.parametrize("model", sorted(worker.MODELS))
@pytest.mark.parametrize("opt", sorted(worker.OPTIMISERS))
def test_two_ranks_equal_single_process(ranks, model, opt):
    (rank0, rank1), _ = ranks
    m = worker.MODELS[model](1000)              # rank 0's initial weights
    history = fc.train(m, fc.mse, worker.global_batches(), worker.OPTIMISERS[opt](), epochs=3)
    for result in (rank0, rank1):
        got_values, got_history = result["training"][model, opt]
        assert_same(got_values, worker.values(m))
        np.testing.assert_allclose(got_history, list(history), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("model", sorted(worker.MODELS))
@pytest.mark.parametrize("opt", sorted(worker.OPTIMISERS))
def test_ranks_end_with_identical_parameters(ranks, model, opt):
    (rank0, rank1), _ = ranks
    for a, b in zip(rank0["training"][model, opt][0], rank1["training"][model, opt][0]):
        assert np.array_equal(a, b)
    assert rank0["training"][model, opt][1] == rank1["training"][model, opt][1]


def test_ranks_started_from_different_weights():
    """The training scenario is a real test of the broadcast: the ranks' own weights differ."""
    assert not all(np.array_equal(a, b) for a, b in
                   zip(worker.values(worker.mlp(1000)), worker.values(worker.mlp(1001))))


def test_ragged_batches_include_a_rank_without_rows():
    assert [distributed.share_bounds(n, 2, r) for n in worker.BATCH_SIZES for r in (0, 1)] == [
        (0, 4), (4, 8), (0, 4), (4, 7), (0, 1), (1, 1), (0, 3), (3, 5)]


@pytest.mark.parametrize("n", [0, 1, 2, 5, 17, 64])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shares_cover_the_batch_once(n, world):
    bounds = [distributed.share_bounds(n, world, r) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_take_share_cuts_every_input_and_the_target_by_rows():
    x1, x2, y = np.arange(10).reshape(5, 2), np.arange(5.0), [0, 1, 2, 3, 4]
    parts = [distributed.take_share((x1, x2), y, 3, r) for r in range(3)]
    assert [w for *_, w in parts] == [2 / 5, 2 / 5, 1 / 5]
    assert np.array_equal(np.concatenate([p[0][0] for p in parts]), x1)
    assert np.array_equal(np.concatenate([p[0][1] for p in parts]), x2)
    assert sum((p[1] for p in parts), []) == y


def test_take_share_refuses_a_ragged_or_empty_batch():
    with pytest.raises(ValueError, match="different numbers of rows"):
        distributed.take_share(np.zeros((4, 2)), np.zeros(3), 2, 0)
    with pytest.raises(ValueError, match="no rows"):
        distributed.take_share(np.zeros((0, 2)), np.zeros(0), 2, 1)


def test_shuffled_batches_with_one_seed(ranks):
    (rank0, rank1), _ = ranks
    x, y = worker.global_batches(sizes=(23,), seed=5)[0]
    m = worker.mlp(7)
    history = fc.train(m, fc.mse, fc.data.batches(x, y, 6, rng=3), fc.optim.Adam(0.02), epochs=2)
    for result in (rank0, rank1):
        assert_same(result["shuffled"][0], worker.values(m))
        np.testing.assert_allclose(result["shuffled"][1], list(history), rtol=1e-10)


def test_float32_model(ranks):
    (rank0, rank1), _ = ranks
    m = worker.mlp32(70)
    history = fc.train(m, fc.mse, worker.batches32(), fc.optim.Adam(0.05), epochs=2)
    for result in (rank0, rank1):
        assert all(v.dtype == np.float32 for v in result["float32"][0])
        assert_same(result["float32"][0], worker.values(m), tol=1e-5)
        np.testing.assert_allclose(result["float32"][1], list(history), rtol=1e-5)


def test_convolutional_model_on_image_batches(ranks):
    (rank0, rank1), _ = ranks
    m = worker.cnn(50)
    history = fc.train(m, fc.mse, worker.image_batches(), fc.optim.Adam(0.05), epochs=2)
    for result in (rank0, rank1):
        assert_same(result["cnn"][0], worker.values(m))
        np.testing.assert_allclose(result["cnn"][1], list(history), rtol=1e-10)


def test_lstm_through_unroll_on_sequence_batches(ranks):
    (rank0, rank1), _ = ranks
    m = worker.lstm(60)
    history = fc.train(m, fc.mse, worker.sequence_batches(), fc.optim.Adam(0.05), epochs=2, stateful=True)
    for result in (rank0, rank1):
        assert_same(result["lstm"][0], worker.values(m))
        np.testing.assert_allclose(result["lstm"][1], list(history), rtol=1e-10)


def test_all_reduce_on_torch_tensors_and_numpy_arrays(ranks):
    (rank0, rank1), _ = ranks
    want = [np.full((3, 2), 1.5, dtype=np.float32), np.arange(5.0) * 1.5,
            np.arange(12.0).reshape(3, 4)[:, ::2] * 1.5, np.full(7, 1.5, dtype=np.float32)]
    for result in (rank0, rank1):
        for bucket_bytes in (16, 2 ** 20):
            assert_same(result["tensors"][bucket_bytes], want, tol=0)


def test_data_parallel_on_torch_tensor_params(ranks):
    (rank0, rank1), _ = ranks
    want_values = worker.values(worker.mlp(40))
    assert (rank0["torch_params"][2], rank1["torch_params"][2]) == (3, 2)
    for result in (rank0, rank1):
        got_values, got_grads, _, loss = result["torch_params"]
        assert loss == pytest.approx(14.0, rel=1e-15)
        assert_same(got_values, want_values, tol=0)
        for g in got_grads:
            np.testing.assert_allclose(g, 3 / 5 * 1.0 + 2 / 5 * 2.0, rtol=1e-15)


@pytest.mark.parametrize("model", sorted(worker.MODELS))
@pytest.mark.parametrize("opt", sorted(worker.OPTIMISERS))
def test_torch_backend_two_ranks_equal_single_process(ranks, model, opt):
    """A model moved by fc.to(m, "torch") trained by two ranks ends with identical tensors
    equal to single-process NumPy training on the same global batches (float64, 1e-10)."""
    (rank0, rank1), _ = ranks
    m = worker.MODELS[model](1000)              # rank 0's initial weights
    history = fc.train(m, fc.mse, worker.global_batches(), worker.OPTIMISERS[opt](), epochs=3,
                       progress=False)
    got0, got1 = rank0["torch_backend"][model, opt], rank1["torch_backend"][model, opt]
    for a, b in zip(got0[0], got1[0]):
        assert np.array_equal(a, b)
    assert got0[1] == got1[1]
    assert_same(got0[0], worker.values(m))
    np.testing.assert_allclose(got0[1], list(history), rtol=1e-10, atol=1e-12)


def test_torch_backend_nan_on_one_rank_stops_every_rank_before_the_update(ranks):
    (rank0, rank1), _ = ranks
    assert rank0["torch_backend"]["nan"] == rank1["torch_backend"]["nan"] == ("TrainingError", True)


def test_jax_backend_distributed_is_refused_with_what_to_do():
    pytest.importorskip("jax")
    m2 = fc.to(worker.mlp(0), "jax")
    with pytest.raises(ValueError, match="NumPy and torch backends"):
        fc.train(m2, fc.mse, worker.global_batches(), 0.1, distributed=True)


def test_buckets_group_by_dtype_and_respect_the_size():
    torch = pytest.importorskip("torch")
    tensors = [torch.zeros(4, dtype=torch.float64), torch.zeros(3, dtype=torch.float32),
               torch.zeros(4, dtype=torch.float64), torch.zeros(100, dtype=torch.float64),
               torch.zeros(2, dtype=torch.float32)]
    buckets = distributed._buckets(tensors, bucket_bytes=64)
    assert [[t.numel() for t in b] for b in buckets] == [[4, 4], [100], [3, 2]]
    assert all(len({t.dtype for t in b}) == 1 for b in buckets)


def test_ranks_given_different_batches_both_stop(ranks):
    (rank0, rank1), _ = ranks
    for result in (rank0, rank1):
        assert result["disagree"] is not None and "rng=seed" in result["disagree"]


def test_nan_on_one_rank_stops_every_rank_before_the_update(ranks):
    (rank0, rank1), _ = ranks
    assert rank0["nan"] == rank1["nan"] == ("TrainingError", True)


def test_callback_stop_on_rank0_stops_every_rank(ranks):
    (rank0, rank1), _ = ranks
    assert rank0["stop"][:2] == rank1["stop"][:2] == (2, True)


def test_rank0_alone_prints_progress(ranks):
    (rank0, rank1), _ = ranks
    assert "epoch 1/1" in rank0["stop"][2]
    assert rank1["stop"][2] == ""


def test_save_writes_on_rank0_only(ranks):
    (rank0, rank1), out = ranks
    assert (out / "saved_by_rank0.npz").exists()
    assert not (out / "saved_by_rank1.npz").exists()
    assert rank0["stop"][3] is None and rank1["stop"][3] is None


def test_resumed_run_equals_uninterrupted(ranks):
    (rank0, rank1), _ = ranks
    m = worker.mlp(20)
    fc.train(m, fc.mse, worker.global_batches(), fc.optim.Adam(0.05), epochs=2)
    for result in (rank0, rank1):
        assert_same(result["resume"], worker.values(m))


def test_rank_world_and_main(ranks):
    (rank0, rank1), _ = ranks
    assert (rank0["rank"], rank0["world"], rank0["is_main"]) == (0, 2, True)
    assert (rank1["rank"], rank1["world"], rank1["is_main"]) == (1, 2, False)
    assert rank0["before_init"] == rank1["before_init"] == 0     # no group yet: rank 0 of 1


# -- without a process group, without torch --------------------------------------------

def test_outside_a_group_one_process_of_rank_0():
    if distributed._joined() is not None:
        pytest.skip("a process group is open in this process")
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    distributed.barrier()                       # nothing to wait for


def test_train_distributed_without_init_says_what_to_do():
    if distributed._joined() is not None:
        pytest.skip("a process group is open in this process")
    with pytest.raises(distributed.DistributedError, match=r"fc\.distributed\.init\(\).*torchrun"):
        fc.train(worker.mlp(0), fc.mse, worker.global_batches(), 0.1, distributed=True)


def test_without_torch_a_clear_error(monkeypatch):
    for name in [n for n in sys.modules if n == "torch" or n.startswith("torch.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch", None)        # `import torch` fails
    with pytest.raises(ImportError, match=r"pip install flux_compile\[torch\]"):
        distributed.init()
    assert distributed.rank() == 0 and distributed.is_main()   # and these need no torch


def test_importing_flux_compile_does_not_import_torch():
    code = "import sys, flux_compile as fc; fc.distributed.is_main(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=environment(), capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_single_process_group_trains_like_plain_train(tmp_path):
    """init() without torchrun's variables: a group of one; distributed=True changes nothing."""
    pytest.importorskip("torch")
    code = (
        "import sys, numpy as np, flux_compile as fc; sys.path.insert(0, sys.argv[1])\n"
        "import distributed_worker as w\n"
        "fc.distributed.init()\n"
        "a, b = w.mlp(3), w.mlp(3)\n"
        "ha = fc.train(a, fc.mse, w.global_batches(), fc.optim.Adam(0.05), epochs=2)\n"
        "hb = fc.train(b, fc.mse, w.global_batches(), fc.optim.Adam(0.05), epochs=2, distributed=True)\n"
        "same = all(np.allclose(p, q, rtol=1e-12, atol=0) for p, q in zip(w.values(a), w.values(b)))\n"
        "print(fc.distributed.world_size(), same, np.allclose(ha, hb, rtol=1e-12))\n"
        "fc.distributed.shutdown()\n")
    env = environment()
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "tests")], env=env,
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert out.stdout.split() == ["1", "True", "True"], out.stdout + out.stderr


# -- GPU ----------------------------------------------------------------------------------

def test_nccl_two_gpus(tmp_path):
    """On a machine with two CUDA devices: init() picks NCCL for CUDA tensors, gloo for NumPy."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices (NCCL allows one rank per GPU)")
    rank0, rank1 = start_ranks(tmp_path)
    m = worker.MODELS["mlp"](1000)
    fc.train(m, fc.mse, worker.global_batches(), worker.OPTIMISERS["adam"](), epochs=3)
    for result in (rank0, rank1):
        assert_same(result["training"]["mlp", "adam"][0], worker.values(m))
        assert_same(result["tensors"]["cuda"], [np.full((3, 2), 1.5, dtype=np.float32), np.arange(5.0) * 1.5],
                    tol=0)


# -- the example under torchrun ----------------------------------------------------------

def test_example_under_torchrun(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    port = str(free_port())
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
         "--node_rank=0", "--master_addr=127.0.0.1", f"--master_port={port}", str(EXAMPLE),
         "--limit", "300", "--epochs", "2", "--save", str(tmp_path / "model.npz")],
        cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert sum("test accuracy" in line for line in lines) == 1, proc.stdout   # rank 0 alone
    assert "2 processes" in proc.stdout
    assert (tmp_path / "model.npz").exists()
    alone = subprocess.run([sys.executable, str(EXAMPLE), "--limit", "300", "--epochs", "2"], cwd=tmp_path,
                           env=environment(), capture_output=True, text=True, timeout=TIMEOUT)
    assert "1 process," in alone.stdout, alone.stdout + alone.stderr
    assert len(final_loss(proc.stdout)) == 1
    assert final_loss(alone.stdout) == final_loss(proc.stdout)        # printed to 4 decimals


def final_loss(stdout):
    return [line.split("final epoch loss")[1] for line in stdout.splitlines() if "final epoch loss" in line]
