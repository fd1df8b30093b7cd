"""Aggregation of per-atom features h_i [N, D] into per-molecule features [B, D].

- ``sum``: sum_i h_i (extensive; the DeepSet default);
- ``mean``: sum_i h_i / n_atoms (intensive);
- ``attention``: sum_i a_i h_i with a_i = softmax over the molecule's atoms of a learned
  linear score of h_i (a segment softmax; weights sum to one per molecule).

Atoms are grouped by molecule as in the batch contract: ``ptr`` [B+1] CSR offsets and
``batch`` [N] the molecule of each atom.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kernels.segment_sum import segment_sum_csr, segment_sum_index


def segment_softmax(scores: Tensor, batch: Tensor, num_segments: int) -> Tensor:
    """Softmax of scores [N] within each segment of ``batch`` [N] -> [N]."""
    maxima = scores.new_full((num_segments,), float("-inf"))
    maxima = maxima.scatter_reduce(0, batch, scores.detach(), reduce="amax")
    exponentials = torch.exp(scores - maxima[batch])
    totals = segment_sum_index(exponentials.unsqueeze(-1), batch, num_segments).squeeze(-1)
    return exponentials / totals[batch]


class AtomPooling(nn.Module):
    """Pools [N, D] atom features into [B, D] molecule features (module docstring)."""

    def __init__(self, mode: str, dim: int) -> None:
        super().__init__()
        if mode not in ("sum", "mean", "attention"):
            raise ValueError(f"unknown pooling {mode!r}; use 'sum', 'mean' or 'attention'")
        self.mode = mode
        if mode == "attention":
            self.score = nn.Linear(dim, 1)

    def forward(self, h: Tensor, batch: Tensor, ptr: Tensor) -> Tensor:
        """h [N, D], batch [N] long, ptr [B+1] long -> [B, D]."""
        num_molecules = ptr.numel() - 1
        if self.mode == "attention":
            attention = segment_softmax(self.score(h).squeeze(-1), batch, num_molecules)
            h = attention.unsqueeze(-1) * h
        pooled = segment_sum_csr(h, ptr)
        if self.mode == "mean":
            pooled = pooled / (ptr[1:] - ptr[:-1]).clamp(min=1).to(h.dtype).unsqueeze(-1)
        return pooled
