"""Data-parallel training across processes (``torchrun``), and the seeded epoch sampler.

Under ``torchrun --nproc_per_node P`` every process holds a full model replica, wrapped in
``torch.nn.parallel.DistributedDataParallel`` (gloo on CPU, nccl on CUDA). Each step, the
global batch of ``batch_size`` molecules is split evenly across the P processes
(:class:`EpochSampler`); losses are normalised by the *global* number of molecules and atoms
(:func:`all_reduce_sum` of the counts before the loss), so the averaged gradient equals the
single-process gradient of the same global batch up to float rounding. Only rank 0 writes
files (checkpoints, logs, TensorBoard).

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything runs in one process
and no process group is created.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistributedContext:
    """Rank and size of the process group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_environment(device: str) -> DistributedContext:
    """Join the process group described by torchrun's environment variables, if any.

    Args:
        device: ``"cpu"`` (gloo backend) or ``"cuda"`` (nccl; the process uses GPU
            ``LOCAL_RANK``).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)


def all_reduce_sum(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum of ``values`` over processes (returned as a new tensor; identity in one process)."""
    if not context.is_distributed:
        return values.clone()
    # nccl reduces CUDA tensors only; gloo works on CPU tensors.
    on_gpu = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else values.device
    total = values.detach().to(device, copy=True)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(values.device)


def all_gather_objects(item: Any, context: DistributedContext) -> list[Any]:
    """``[item of rank 0, item of rank 1, ...]`` on every process."""
    if not context.is_distributed:
        return [item]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, item)
    return gathered


class EpochSampler(Sampler[int]):
    """Seeded, per-epoch permutation of a dataset, optionally truncated and sharded.

    Epoch ``e`` draws the permutation ``randperm(n)`` from a generator seeded with
    ``seed + e`` (independent of any global RNG, so resuming at epoch ``e`` reproduces it),
    keeps the first ``max_frames`` indices (rounded down to a multiple of ``world_size``, at
    least one per process, padding by wrapping around when the set is smaller), and gives
    process ``rank`` the indices ``rank, rank + P, rank + 2P, ...``. With per-process batch
    size b, global batch t of the P processes together is exactly positions
    ``[t P b, (t + 1) P b)`` of the permutation: the same batch a single process with batch
    size P b would draw.
    """

    def __init__(
        self,
        num_items: int,
        seed: int,
        shuffle: bool = True,
        max_frames: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_items <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.num_items = num_items
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        wanted = num_items if max_frames is None else min(max_frames, num_items)
        self.total = max(world_size, (wanted // world_size) * world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.total // self.world_size

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_items, generator=generator)
        else:
            order = torch.arange(self.num_items)
        order = order.repeat(-(-self.total // self.num_items))[: self.total]
        return iter(order[self.rank :: self.world_size].tolist())
