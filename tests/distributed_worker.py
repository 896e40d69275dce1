"""One rank of tests/test_distributed.py: runs every scenario, writes ``OUT/rank{r}.pkl``.

Started by the test with RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT
set (as torchrun would). Scenarios share these helpers with the test, which
trains the same models in one process to compare.
"""
import io
import os
import pickle
import sys

import numpy as np

import flux_compile as fc
import flux_compile.init
from flux_compile.train import TrainingError

BATCH_SIZES = (8, 7, 1, 5)          # ragged: 4/4, 4/3, 1/0 and 3/2 rows on two ranks
N_IN, N_OUT = 4, 3


def mlp(seed):
    flux_compile.init.seed(seed)
    return fc.Chain(fc.Dense(N_IN, 8, np.tanh), fc.Dense(8, N_OUT))


def shared(seed):
    """Three layers, the second using the first's weight matrix: one Param in two sub-models."""
    flux_compile.init.seed(seed)
    m = fc.Chain(fc.Dense(N_IN, N_IN, np.tanh), fc.Dense(N_IN, N_IN, np.tanh), fc.Dense(N_IN, N_OUT))
    m[1].W = m[0].W
    return m


MODELS = {"mlp": mlp, "shared": shared}
OPTIMISERS = {"sgd": lambda: fc.optim.SGD(0.3), "adam": lambda: fc.optim.Adam(0.05)}


def global_batches(sizes=BATCH_SIZES, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n, N_IN)), rng.standard_normal((n, N_OUT))) for n in sizes]


def values(m):
    return [np.array(p.value) for p in fc.params(m)]


def scenario_training(rank):
    """Every model with every optimiser on ragged batches, ranks starting from different weights."""
    out = {}
    for name, build in MODELS.items():
        for opt_name, make_opt in OPTIMISERS.items():
            m = build(1000 + rank)                  # rank 0's weights must win
            first = fc.params(m)[0]
            first.value = np.ascontiguousarray(first.value[::-1])[::-1]   # same numbers, a view
            first.value.flags.writeable = False     # with negative strides, read-only: overwritten
            history = fc.train(m, fc.mse, global_batches(), make_opt(), epochs=3, distributed=True)
            out[name, opt_name] = (values(m), list(history))
    return out


def scenario_shuffled(rank):
    """fc.data.batches with one seed on every rank: the same global batches each epoch."""
    x, y = global_batches(sizes=(23,), seed=5)[0]
    m = mlp(7)
    history = fc.train(m, fc.mse, fc.data.batches(x, y, 6, rng=3), fc.optim.Adam(0.02), epochs=2,
                       distributed=True)
    return values(m), list(history)


def scenario_tensors(rank):
    """all_reduce_sum on torch tensors (two dtypes) and NumPy arrays, tiny buckets and one big one."""
    import torch
    results = {}
    for bucket_bytes in (16, 2 ** 20):
        arrays = [torch.full((3, 2), float(rank + 1), dtype=torch.float32),
                  torch.arange(5, dtype=torch.float64) * (rank + 1),
                  np.arange(12.0).reshape(3, 4)[:, ::2] * (rank + 1),      # not contiguous
                  np.full(7, rank + 1.0, dtype=np.float32)]
        fc.distributed.all_reduce_sum(arrays, scale=0.5, bucket_bytes=bucket_bytes)
        results[bucket_bytes] = [np.asarray(a) for a in arrays]
    if torch.cuda.is_available():               # NCCL: tensors on this rank's GPU
        arrays = [torch.full((3, 2), float(rank + 1), device="cuda"),
                  torch.arange(5, dtype=torch.float64, device="cuda") * (rank + 1)]
        fc.distributed.all_reduce_sum(arrays, scale=0.5)
        results["cuda"] = [a.cpu().numpy() for a in arrays]
    return results


def mlp32(seed):
    flux_compile.init.seed(seed)
    return fc.Chain(fc.Dense(N_IN, 8, np.tanh, dtype=np.float32), fc.Dense(8, N_OUT, dtype=np.float32))


def batches32():
    return [(x.astype(np.float32), y.astype(np.float32)) for x, y in global_batches()]


def scenario_float32(rank):
    """float32 gradients (the loss and fingerprint then go in a float64 all-reduce of their own)."""
    m = mlp32(70 + rank)
    history = fc.train(m, fc.mse, batches32(), fc.optim.Adam(0.05), epochs=2, distributed=True)
    return values(m), list(history)


def cnn(seed):
    flux_compile.init.seed(seed)
    return fc.Chain(fc.Conv2d(1, 2, 3, act=fc.relu), fc.MaxPool2d(2), fc.flatten, fc.Dense(8, N_OUT))


def image_batches(sizes=(6, 5, 1), seed=2):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n, 1, 6, 6)), rng.standard_normal((n, N_OUT))) for n in sizes]


def scenario_cnn(rank):
    """A convolutional model on (N, C, H, W) batches, ragged, with Adam."""
    m = cnn(50 + rank)
    history = fc.train(m, fc.mse, image_batches(), fc.optim.Adam(0.05), epochs=2, distributed=True)
    return values(m), list(history)


def last_step(hs):
    return hs[:, -1, :]


def lstm(seed):
    flux_compile.init.seed(seed)
    return fc.Chain(fc.unroll(fc.LSTM(N_IN, 5), 4), last_step, fc.Dense(5, N_OUT))


def sequence_batches(sizes=(5, 5, 5), seed=4):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n, 4, N_IN)), rng.standard_normal((n, N_OUT))) for n in sizes]


def scenario_lstm(rank):
    """An LSTM through fc.unroll (backprop through time), state carried between batches of 5
    sequences (3 on rank 0, 2 on rank 1: each rank carries the state of its own rows)."""
    m = lstm(60 + rank)
    history = fc.train(m, fc.mse, sequence_batches(), fc.optim.Adam(0.05), epochs=2, stateful=True,
                       distributed=True)
    return values(m), list(history)


def scenario_torch_params(rank):
    """DataParallel on Params holding torch tensors (as the torch backend makes): broadcast and
    gradients weighted by share (a batch of 5 rows: 3 on rank 0, 2 on rank 1)."""
    import torch
    from flux_compile.distributed import DataParallel
    m = mlp(40 + rank)
    for p in fc.params(m):
        p.value, p.grad = torch.from_numpy(np.array(p.value)), torch.zeros(p.value.shape, dtype=torch.float64)
    parallel = DataParallel(m)
    x, y = global_batches(sizes=(5,), seed=1)[0]
    share = parallel.share(torch.from_numpy(x), torch.from_numpy(y))
    for p in fc.params(m):
        p.grad.fill_(rank + 1.0)
    loss = parallel.reduce(10.0 * (rank + 1))       # 3/5 * 10 + 2/5 * 20
    return ([p.value.numpy().copy() for p in fc.params(m)], [p.grad.numpy().copy() for p in fc.params(m)],
            len(share[0]), loss)


def scenario_torch_backend(rank):
    """fc.train(m2, ..., distributed=True) on models moved by fc.to(m, "torch"): torch-tensor
    gradients all-reduced, rank 0's tensors broadcast (the ranks start from different weights);
    and a NaN in rank 1's rows stopping both ranks before the update."""
    from flux_compile.backends import to_numpy
    out = {}
    for name, build in MODELS.items():
        for opt_name, make_opt in OPTIMISERS.items():
            m2 = fc.to(build(1000 + rank), "torch")
            history = fc.train(m2, fc.mse, global_batches(), make_opt(), epochs=3, distributed=True)
            out[name, opt_name] = ([to_numpy(p.value).copy() for _, p in m2.named_params()], list(history))
    x, y = global_batches(sizes=(4,), seed=9)[0]
    x[3, 0] = np.nan                            # row 3 belongs to rank 1
    m2 = fc.to(mlp(11), "torch")
    before = [to_numpy(p.value).copy() for _, p in m2.named_params()]
    try:
        fc.train(m2, fc.mse, [(x, y)], 0.1, distributed=True)
        out["nan"] = None
    except TrainingError as e:
        after = [to_numpy(p.value) for _, p in m2.named_params()]
        out["nan"] = type(e).__name__, all(np.array_equal(a, b) for a, b in zip(before, after))
    return out


def scenario_disagreeing_batches(rank):
    """Ranks given different data: DistributedError on every rank, not a hang or silent mix."""
    x, y = global_batches(sizes=(6,), seed=rank)[0]
    try:
        fc.train(mlp(0), fc.mse, [(x, y)], 0.1, distributed=True)
    except fc.distributed.DistributedError as e:
        return str(e)
    return None


def scenario_nan_on_one_rank(rank):
    """A NaN in rank 1's rows: both ranks stop with TrainingError, parameters unchanged."""
    x, y = global_batches(sizes=(4,), seed=9)[0]
    x[3, 0] = np.nan                            # row 3 belongs to rank 1
    m = mlp(11)
    before = values(m)
    try:
        fc.train(m, fc.mse, [(x, y)], 0.1, distributed=True)
    except TrainingError as e:
        return type(e).__name__, all(np.array_equal(a, b) for a, b in zip(before, values(m)))
    return None, None


def scenario_stop_and_progress(rank, out_dir):
    """A callback stopping on rank 0 only stops every rank at the same step; rank 0 alone prints."""
    stop_on_rank0 = (lambda epoch, step, loss: "stop" if rank == 0 and step == 2 else None)
    err, sys.stderr = sys.stderr, io.StringIO()
    try:
        history = fc.train(mlp(0), fc.mse, global_batches(), 0.1, callbacks=stop_on_rank0,
                           progress=True, distributed=True)
        printed = sys.stderr.getvalue()
    finally:
        sys.stderr = err
    m = mlp(0)
    saved = fc.save(os.path.join(out_dir, f"saved_by_rank{rank}"), m)
    fc.distributed.barrier()
    return len(history), history.stopped, printed, saved


def scenario_resume(rank, out_dir):
    """One epoch, save (rank 0), load on every rank into a fresh model and optimiser, one more."""
    path = os.path.join(out_dir, "resume.npz")
    m, opt = mlp(20 + rank), fc.optim.Adam(0.05)
    fc.train(m, fc.mse, global_batches(), opt, distributed=True)
    fc.save(path, m, opt)
    fc.distributed.barrier()
    m, opt = mlp(30 + rank), fc.optim.Adam(0.05)
    fc.load(path, m, opt)
    fc.train(m, fc.mse, global_batches(), opt, distributed=True)
    return values(m)


def main(out_dir):
    rank_before = fc.distributed.rank()
    fc.distributed.init(timeout=60)
    rank = fc.distributed.rank()
    results = {
        "before_init": rank_before,
        "rank": rank, "world": fc.distributed.world_size(), "is_main": fc.distributed.is_main(),
        "training": scenario_training(rank),
        "shuffled": scenario_shuffled(rank),
        "cnn": scenario_cnn(rank),
        "float32": scenario_float32(rank),
        "lstm": scenario_lstm(rank),
        "tensors": scenario_tensors(rank),
        "torch_params": scenario_torch_params(rank),
        "torch_backend": scenario_torch_backend(rank),
        "disagree": scenario_disagreeing_batches(rank),
        "nan": scenario_nan_on_one_rank(rank),
        "stop": scenario_stop_and_progress(rank, out_dir),
        "resume": scenario_resume(rank, out_dir),
    }
    fc.distributed.shutdown()
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1])
