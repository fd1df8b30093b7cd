"""DataLoaders of the trainer and the evaluator.

Batches are the DESIGN.md batch of :func:`deepset_moe.batch.collate` plus one key,
``frame_index`` [B] long: the position of each molecule's frame in the loader's frame list,
so errors, predictions and NaN reports can name molecules (``frame_ids``). Models ignore it.
Data live in memory, so loading happens in the main process (no workers) and the order is
set only by the sampler.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from benchmark.dataset.frames import Frame
from benchmark.training.distributed import DistributedContext, EpochSampler
from deepset_moe.batch import Batch, collate


class _IndexedFrames(Dataset):
    """In-memory dataset of frames whose items carry their index in ``frames``."""

    def __init__(self, frames: Sequence[Frame]) -> None:
        self.frames = list(frames)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> tuple[int, Frame]:
        return index, self.frames[index]


def collate_indexed(items: Sequence[tuple[int, Frame]]) -> Batch:
    """``collate`` of the frames plus ``frame_index`` [B] long."""
    batch = collate([frame for _, frame in items])
    batch["frame_index"] = torch.tensor([index for index, _ in items], dtype=torch.long)
    return batch


def loader_frames(loader: DataLoader) -> list[Frame]:
    """The frame list a loader made by this module draws from (``frame_index`` refers to it)."""
    return loader.dataset.frames


def frame_ids(loader: DataLoader, frame_index: torch.Tensor) -> list[str]:
    """``molecule_id/trajectory_id@step`` of each frame of a batch, for error messages."""
    frames = loader_frames(loader)
    return [
        f"{frames[i].molecule_id}/{frames[i].trajectory_id}@{frames[i].step}"
        for i in frame_index.tolist()
    ]


def _loader(frames: Sequence[Frame], batch_size: int, sampler: Sampler | list[int]) -> DataLoader:
    return DataLoader(
        _IndexedFrames(frames),
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_indexed,
        num_workers=0,
    )


def training_loader(
    frames: Sequence[Frame],
    batch_size: int,
    seed: int,
    context: DistributedContext,
    max_frames: int | None = None,
) -> DataLoader:
    """Shuffled loader over this process's shard; ``batch_size`` is the *global* batch size.

    Call ``loader.sampler.set_epoch(epoch)`` before each epoch (see
    :class:`benchmark.training.distributed.EpochSampler`).
    """
    if batch_size % context.world_size:
        raise ValueError(
            f"batch size {batch_size} is not divisible by the {context.world_size} processes"
        )
    sampler = EpochSampler(
        len(frames),
        seed,
        shuffle=True,
        max_frames=max_frames,
        rank=context.rank,
        world_size=context.world_size,
    )
    return _loader(frames, batch_size // context.world_size, sampler)


def evaluation_loader(
    frames: Sequence[Frame], batch_size: int, context: DistributedContext | None = None
) -> DataLoader:
    """Ordered loader over every frame (this process's share: indices rank, rank + P, ...)."""
    context = context or DistributedContext()
    if len(frames) == 0:
        raise ValueError("cannot evaluate on an empty list of frames")
    shard = list(range(context.rank, len(frames), context.world_size))
    return _loader(frames, batch_size, shard)


def seeded_subset(frames: Sequence[Frame], limit: int | None, seed: int) -> list[Frame]:
    """At most ``limit`` frames drawn with ``seed`` from the whole sequence, in their original
    order (``None``: all), so that a capped evaluation covers every molecule of a split."""
    if limit is None or len(frames) <= limit:
        return list(frames)
    keep = np.sort(np.random.default_rng(seed).choice(len(frames), size=limit, replace=False))
    return [frames[i] for i in keep]
