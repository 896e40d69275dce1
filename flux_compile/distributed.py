"""Data-parallel training on ``torch.distributed`` (PyTorch is needed only here).

In a program started by ``torchrun --nproc_per_node=N script.py``::

    fc.distributed.init()                       # join the process group
    fc.train(model, fc.mse, data, opt, distributed=True)
    fc.save("model.npz", model)                 # rank 0 writes; the other ranks do nothing

``fc.train(..., distributed=True)`` gives every rank a contiguous share of
each global batch (rank r of N gets rows ``[start_r, stop_r)``, shares differ
by at most one row), weights each rank's gradient by its share of the rows
and sums the weighted gradients with bucketed all-reduces, so every rank
applies the gradient of the *global* batch, the one a single process would
compute. The loss must be a mean over the batch's rows (``fc.mse``,
``fc.logitcrossentropy`` and the other library losses are). Every rank starts
from rank 0's parameters (broadcast at the start of ``fc.train``); rank 0
alone draws the progress bar; ``fc.save`` on any other rank is a no-op.

Every rank must iterate the same global batches: use ``fc.data.batches(...,
rng=seed)`` (same seed on every rank) or a fixed list. Each step checks a
fingerprint of the global batch across ranks and stops with
:class:`DistributedError` on every rank when they disagree.

Without ``torchrun`` (no ``RANK``/``WORLD_SIZE`` in the environment) ``init()``
makes a one-process group, so the same script runs under plain ``python``.
"""
from __future__ import annotations

import datetime
import os
import sys
import zlib

import numpy as np

from .params import named_params

__all__ = ["init", "shutdown", "rank", "world_size", "is_main", "barrier", "DistributedError",
           "DataParallel", "all_reduce_sum", "broadcast_from_main", "share_bounds", "take_share"]

TORCH_HINT = "fc.distributed needs PyTorch: pip install flux_compile[torch]"
BUCKET_BYTES = 25 * 2 ** 20
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
FINGERPRINT_BITS = 20           # small enough that sums of squares stay exact in float64


class DistributedError(RuntimeError):
    """The ranks disagree (different global batches) or no process group was joined."""


# -- the process group ---------------------------------------------------------------

def _torch():
    """``(torch, torch.distributed)``, imported on first use; a clear error without torch."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError as e:
        raise ImportError(TORCH_HINT) from e
    if not dist.is_available():
        raise ImportError(f"this PyTorch build has no torch.distributed; {TORCH_HINT}")
    return torch, dist


def _joined():
    """``torch.distributed`` when a process group exists, else None; never imports torch."""
    torch = sys.modules.get("torch")
    dist = getattr(torch, "distributed", None) if torch is not None else None
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None


def init(backend=None, timeout=None):
    """Join the process group of a program started by ``torchrun``; returns ``world_size()``.

    ``backend`` defaults to gloo on CPU and, when CUDA is present, gloo for CPU
    tensors (NumPy gradients) with NCCL for CUDA tensors (``"cpu:gloo,cuda:nccl"``);
    each rank then uses GPU ``LOCAL_RANK``. ``timeout`` (seconds) bounds every
    collective. Calling it again does nothing. Without torchrun's environment
    variables it makes a group of one process.
    """
    torch, dist = _torch()
    if dist.is_initialized():
        return world_size()
    cuda = torch.cuda.is_available()
    if backend is None:
        backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    options = {} if timeout is None else {"timeout": datetime.timedelta(seconds=timeout)}
    if all(name in os.environ for name in TORCHRUN_VARIABLES):
        dist.init_process_group(backend, **options)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, **options)
    return world_size()


def shutdown():
    """Leave the process group (call at the end of the program); nothing without one.

    >>> import flux_compile as fc
    >>> fc.distributed.shutdown()                        # outside a process group: nothing to leave
    """
    dist = _joined()
    if dist is not None:
        dist.destroy_process_group()


def rank():
    """This process's rank, 0 outside a process group.

    >>> import flux_compile as fc
    >>> fc.distributed.rank()                            # outside torchrun
    0
    """
    dist = _joined()
    return dist.get_rank() if dist is not None else 0


def world_size():
    """The number of processes, 1 outside a process group.

    >>> import flux_compile as fc
    >>> fc.distributed.world_size()                      # outside torchrun
    1
    """
    dist = _joined()
    return dist.get_world_size() if dist is not None else 1


def is_main():
    """True on rank 0 and outside a process group: the process that prints and saves.

    >>> import flux_compile as fc
    >>> fc.distributed.is_main()                         # outside torchrun
    True
    """
    return rank() == 0


def barrier():
    """Wait until every rank gets here; nothing outside a process group.

    >>> import flux_compile as fc
    >>> fc.distributed.barrier()                         # outside a process group: returns at once
    """
    dist = _joined()
    if dist is not None:
        dist.barrier()


def _require_group():
    dist = _joined()
    if dist is None:
        raise DistributedError(
            "fc.train(..., distributed=True) needs a process group: call fc.distributed.init() "
            "first, in a program started by `torchrun --nproc_per_node=N script.py`")
    return dist


# -- collectives on NumPy arrays and torch tensors -----------------------------------

def _as_tensor(array):
    """A torch tensor sharing ``array``'s memory (``torch.from_numpy``), or the tensor itself."""
    torch, _ = _torch()
    if isinstance(array, torch.Tensor):
        return array
    if isinstance(array, np.ndarray):
        return torch.from_numpy(array)
    raise TypeError(f"cannot all-reduce a {type(array).__name__}: expected a NumPy array or a torch tensor")


def _buckets(tensors, bucket_bytes):
    """Group tensors by (dtype, device), in order, into buckets of at most ``bucket_bytes``."""
    groups = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    buckets = []
    for group in groups.values():
        current, size = [], 0
        for t in group:
            nbytes = t.numel() * t.element_size()
            if current and size + nbytes > bucket_bytes:
                buckets.append(current)
                current, size = [], 0
            current.append(t)
            size += nbytes
        buckets.append(current)
    return buckets


def _run_bucketed(collective, tensors, bucket_bytes, scale=None):
    """Apply ``collective(flat_tensor)`` to each bucket, in place on ``tensors``.

    A bucket of one contiguous tensor goes as it is (no copy); others are
    flattened into one buffer, reduced, and copied back.
    """
    torch, _ = _torch()
    for bucket in _buckets(tensors, bucket_bytes):
        if len(bucket) == 1 and bucket[0].is_contiguous():
            flat = bucket[0].view(-1)
            if scale is not None and scale != 1:
                flat.mul_(scale)
            collective(flat)
            continue
        flat = torch.cat([t.reshape(-1) for t in bucket])
        if scale is not None and scale != 1:
            flat.mul_(scale)
        collective(flat)
        offset = 0
        for t in bucket:
            t.copy_(flat[offset:offset + t.numel()].view(t.shape))
            offset += t.numel()


def all_reduce_sum(arrays, scale=None, bucket_bytes=BUCKET_BYTES):
    """Sum ``arrays`` (NumPy arrays or torch tensors) over all ranks, in place.

    With ``scale`` each rank's arrays are multiplied by it first. NumPy arrays
    are shared with torch through ``torch.from_numpy`` (no copy); one
    all-reduce per bucket of about ``bucket_bytes``.
    """
    _, dist = _torch()
    _run_bucketed(dist.all_reduce, [_as_tensor(a) for a in arrays], bucket_bytes, scale)


def broadcast_from_main(arrays, bucket_bytes=BUCKET_BYTES):
    """Overwrite ``arrays`` on every rank with rank 0's, in place."""
    _, dist = _torch()
    _run_bucketed(lambda t: dist.broadcast(t, src=0), [_as_tensor(a) for a in arrays], bucket_bytes)


# -- one share of every global batch ---------------------------------------------------

def share_bounds(n_rows, world, rank):
    """Rows ``[start, stop)`` of a global batch of ``n_rows`` that ``rank`` of ``world`` takes.

    >>> from flux_compile.distributed import share_bounds
    >>> [share_bounds(10, 3, r) for r in range(3)]
    [(0, 4), (4, 7), (7, 10)]
    """
    base, extra = divmod(n_rows, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _rows(batch):
    arrays = list(batch[0]) if isinstance(batch[0], tuple) else [batch[0]]
    arrays.append(batch[1])
    counts = {len(a) for a in arrays}
    if len(counts) != 1:
        raise ValueError(f"fc.train(..., distributed=True): the inputs and the target of a batch have "
                         f"different numbers of rows {sorted(counts)}; a batch is split by rows")
    return counts.pop()


def take_share(x, y, world, rank):
    """``(x_part, y_part, weight)``: ``rank``'s rows of the batch ``(x, y)`` and its fraction of them.

    ``x`` may be a tuple of inputs; every input and ``y`` are cut by rows.

    >>> import numpy as np
    >>> from flux_compile.distributed import take_share
    >>> x_part, y_part, weight = take_share(np.arange(10.0), np.arange(10), 2, 1)
    >>> x_part, weight
    (array([5., 6., 7., 8., 9.]), 0.5)
    """
    n_rows = _rows((x, y))
    if n_rows == 0:
        raise ValueError("fc.train(..., distributed=True): a batch has no rows; drop empty batches")
    start, stop = share_bounds(n_rows, world, rank)
    part = (lambda a: a[start:stop])
    return (tuple(map(part, x)) if isinstance(x, tuple) else part(x)), part(y), (stop - start) / n_rows


def _first_row_bytes(array):
    row = array[:1]
    if type(row).__module__.startswith("torch"):
        row = row.detach().cpu().numpy()
    return np.ascontiguousarray(row).tobytes()


def _fingerprint(x, y, n_rows):
    """A small integer from the batch's size and first rows: equal on ranks that see the same batch."""
    crc = zlib.crc32(str(n_rows).encode())
    for array in (list(x) if isinstance(x, tuple) else [x]) + [y]:
        crc = zlib.crc32(_first_row_bytes(array), crc)
    return crc & ((1 << FINGERPRINT_BITS) - 1)


def _own_value(p):
    """Give ``p`` a value array torch can write into: a copy of a read-only or reversed view."""
    value = p.value
    if isinstance(value, np.ndarray) and (not value.flags.writeable or any(s < 0 for s in value.strides)):
        p.value = np.array(value)


class DataParallel:
    """The distributed part of ``fc.train``: shares, the global loss, averaged gradients.

    Made once per ``fc.train`` call; broadcasts rank 0's parameters at once.
    """

    def __init__(self, model, bucket_bytes=BUCKET_BYTES):
        self.dist = _require_group()
        self.torch, _ = _torch()
        self.world, self.rank = self.dist.get_world_size(), self.dist.get_rank()
        self.is_main = self.rank == 0
        self.bucket_bytes = bucket_bytes
        if getattr(model, "__fc_backend__", False):      # fc.to(m, "torch"): tensors, all-reduced in place
            self.all_params = [p for _, p in model.named_params()]
            self.trained = [p for p in self.all_params if p.trainable]
        else:
            self.all_params = [p for _, p in named_params(model)]
            self.trained = [p for _, p in named_params(model, trainable_only=True)]
        self.weight, self.has_rows = 1.0, True
        for p in self.all_params:
            _own_value(p)
        broadcast_from_main([p.value for p in self.all_params], bucket_bytes)
        self.fingerprint = 0

    def share(self, x, y):
        """This rank's rows of the global batch ``(x, y)``; ``has_rows`` is False when none."""
        part_x, part_y, self.weight = take_share(x, y, self.world, self.rank)
        self.has_rows = self.weight > 0
        self.fingerprint = _fingerprint(x, y, len(y))      # of the global batch: equal on all ranks
        return part_x, part_y

    def reduce(self, local_loss):
        """The global batch's loss, returned, and gradients, in every trainable Param.grad.

        One all-reduce per bucket: each rank's gradients are weighted by its
        share of the rows and summed; the weighted loss and a fingerprint of
        the batch ride in the last float64 bucket. Stops every rank with
        :class:`DistributedError` when the ranks saw different batches.
        """
        torch = self.torch
        grads = [_as_tensor(p.grad) for p in self.trained]
        scale = self.weight if self.has_rows else 0.0
        if scale != 1:
            for g in grads:
                g.mul_(scale)
        f = self.fingerprint
        contribution = self.weight * local_loss if self.has_rows else 0.0
        sums = torch.tensor([contribution, float(f), float(f * f)], dtype=torch.float64)
        _run_bucketed(self.dist.all_reduce, grads + [sums], self.bucket_bytes)
        total, f_sum, f_squares = sums.tolist()
        if self.world * int(f_squares) != int(f_sum) ** 2:       # not all fingerprints equal
            raise DistributedError(
                "the ranks are not training on the same global batch: give every rank the same "
                "data in the same order (fc.data.batches(..., rng=seed) with one seed for all ranks)")
        return total

    def agree_to_stop(self, stop):
        """True on every rank when a callback on any rank asked to stop."""
        flag = self.torch.tensor([1.0 if stop else 0.0], dtype=self.torch.float64)
        self.dist.all_reduce(flag, op=self.dist.ReduceOp.MAX)
        return bool(flag.item())
