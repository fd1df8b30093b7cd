"""Atomic numbers -> contiguous element channels: the one species index of every model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class SpeciesIndex(nn.Module):
    """Maps atomic numbers to channels ``0 .. len(elements) - 1`` (embedding rows, one-hot).

    Raises a ``ValueError`` naming the atomic numbers the model was not built for, instead of
    the silent out-of-range lookups that would otherwise follow.

    Args:
        elements: the distinct atomic numbers the model knows, in channel order.
    """

    def __init__(self, elements: Sequence[int]) -> None:
        super().__init__()
        elements = tuple(int(z) for z in elements)
        if not elements or len(set(elements)) != len(elements) or min(elements) < 1:
            raise ValueError(f"elements must be distinct atomic numbers, got {list(elements)}")
        self.elements = elements
        table = torch.full((max(elements) + 1,), -1, dtype=torch.long)
        table[list(elements)] = torch.arange(len(elements))
        self.register_buffer("table", table, persistent=False)

    def __len__(self) -> int:
        return len(self.elements)

    def forward(self, z: Tensor) -> Tensor:
        """[N] atomic numbers -> [N] long channel indices."""
        known = (z >= 0) & (z < self.table.numel())
        index = torch.where(known, self.table[z.clamp(0, self.table.numel() - 1)], -1)
        if bool((index < 0).any()):
            unknown = sorted({int(v) for v in z[index < 0].tolist()})
            raise ValueError(
                f"atomic number(s) {unknown} are not among this model's elements "
                f"{self.elements}"
            )
        return index
