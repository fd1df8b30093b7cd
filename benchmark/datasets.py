"""Torch dataset of labelled frames and the collate function producing the DESIGN.md batch.

A batch is a ``dict[str, Tensor]``:

==========  ===========  ==================================================
key         shape        meaning
==========  ===========  ==================================================
z           [N] long     atomic numbers
pos         [N, 3]       positions, Å (float32)
batch       [N] long     molecule index of each atom
ptr         [B+1] long   CSR offsets of the molecules
fragment    [N] long     fragment label of each atom
energy      [B]          reference total energy, eV (float64; training labels)
forces      [N, 3]       reference forces, eV/Å (float32)
n_atoms     [B] long     atoms per molecule
==========  ===========  ==================================================

Energies stay float64 in the batch because total energies of organic molecules are large
(hundreds of eV for xTB) while errors of interest are meV; the trainer subtracts the E0
baseline in float64 before casting residuals to float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from benchmark.storage import Frame

Batch = dict[str, Tensor]


class FrameDataset(Dataset):
    """In-memory dataset over a list of :class:`~benchmark.storage.Frame`."""

    def __init__(self, frames: Sequence[Frame]) -> None:
        self.frames = list(frames)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> Frame:
        return self.frames[index]


def collate_frames(frames: Sequence[Frame], dtype: torch.dtype = torch.float32) -> Batch:
    """Concatenate frames into the flat batch of DESIGN.md (see module docstring)."""
    if len(frames) == 0:
        raise ValueError("cannot collate an empty list of frames")
    counts = np.array([f.n_atoms for f in frames], dtype=np.int64)
    ptr = np.concatenate([[0], np.cumsum(counts)])
    return {
        "z": torch.from_numpy(np.concatenate([f.numbers for f in frames])).long(),
        "pos": torch.from_numpy(np.concatenate([f.positions for f in frames])).to(dtype),
        "batch": torch.repeat_interleave(torch.arange(len(frames)), torch.from_numpy(counts)),
        "ptr": torch.from_numpy(ptr),
        "fragment": torch.from_numpy(np.concatenate([f.fragment for f in frames])).long(),
        "energy": torch.tensor([f.energy for f in frames], dtype=torch.float64),
        "forces": torch.from_numpy(np.concatenate([f.forces for f in frames])).to(dtype),
        "n_atoms": torch.from_numpy(counts),
    }


def batch_to(batch: Batch, device: torch.device | str) -> Batch:
    """Move every tensor of a batch to ``device``."""
    return {key: value.to(device) for key, value in batch.items()}
