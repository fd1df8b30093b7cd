"""Segment sums of [N, D] rows into [S, D] segments: the reduction of atoms into molecules and of
edges into atoms.

This file holds the PyTorch reference definitions and the public entry points. The kernel
work (Triton implementations, double-differentiable autograd wrappers, device dispatch) plugs
in behind :func:`segment_sum_csr` and :func:`segment_sum_index` without changing their
signatures.
"""

from __future__ import annotations

import torch
from torch import Tensor


def segment_sum_index_reference(values: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Definition: ``out[s] = sum_{n : index[n] == s} values[n]``.

    Args:
        values: [N, D] float.
        index: [N] long, segment of each row, in ``[0, num_segments)``; any order.
        num_segments: S.

    Returns:
        [S, D], zeros for empty segments. Differentiable to any order (index_add_).
    """
    out = values.new_zeros((num_segments, *values.shape[1:]))
    return out.index_add(0, index, values)


def csr_to_index(ptr: Tensor) -> Tensor:
    """Segment index [N] of each row from CSR offsets ``ptr`` [S+1] (sorted segments)."""
    counts = ptr[1:] - ptr[:-1]
    return torch.repeat_interleave(torch.arange(counts.numel(), device=ptr.device), counts)


def segment_sum_csr_reference(values: Tensor, ptr: Tensor) -> Tensor:
    """Definition for sorted segments: ``out[s] = values[ptr[s]:ptr[s+1]].sum(0)``.

    Args:
        values: [N, D] float, rows grouped by segment.
        ptr: [S+1] long CSR offsets, ``ptr[0] == 0`` and ``ptr[-1] == N``.

    Returns:
        [S, D].
    """
    return segment_sum_index_reference(values, csr_to_index(ptr), ptr.numel() - 1)


def segment_sum_csr(values: Tensor, ptr: Tensor) -> Tensor:
    """Sum of sorted segments (see :func:`segment_sum_csr_reference`), dispatched by device."""
    return segment_sum_csr_reference(values, ptr)


def segment_sum_index(values: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Sum over an unsorted segment index (see :func:`segment_sum_index_reference`)."""
    return segment_sum_index_reference(values, index, num_segments)
