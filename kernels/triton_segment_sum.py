"""Triton kernels for segment sums and their adjoint (broadcast of segments back to rows).

Three kernels, each on contiguous 2-D [rows, D] data:

* :func:`segment_sum_csr` (sorted segments, CSR offsets ``ptr``): one program per
  (segment, feature block) loops over the segment's rows in tiles of ``BLOCK_N`` and reduces
  in registers, so each input row is read once and each output row written once, with no
  atomics: the result is deterministic (bitwise reproducible run to run).
* :func:`segment_broadcast_csr`: its adjoint, ``out[n] = src[segment of n]``: one program
  per (segment, feature block) reads the segment's row once and writes it to every member.
* :func:`segment_sum_index` (unsorted index): one program per (row tile, feature block)
  adds its rows into the output with ``tl.atomic_add``; the summation order, hence the last
  bits of float results, may vary between runs.

Sums accumulate in float32 (float64 for float64 data). Offsets are computed in int64, so
N * D may exceed 2**31. Index and pointer values are trusted (checking them would need a
host sync); rows with an index outside ``[0, S)`` are dropped rather than written out of
bounds. The public, validated, differentiable entry points are in :mod:`kernels.segment_sum`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.triton_common import accumulator_type, feature_block, row_block


@triton.jit
def _segment_sum_csr_kernel(
    values_ptr,
    ptr_ptr,
    out_ptr,
    num_features,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ACC_TYPE: tl.constexpr,
):
    segment = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < num_features
    start = tl.load(ptr_ptr + segment).to(tl.int64)
    end = tl.load(ptr_ptr + segment + 1).to(tl.int64)
    acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=ACC_TYPE)
    for first in range(start, end, BLOCK_N):
        rows = first + tl.arange(0, BLOCK_N)
        mask = (rows < end)[:, None] & col_mask[None, :]
        tile = tl.load(
            values_ptr + rows[:, None] * num_features + cols[None, :], mask=mask, other=0
        )
        acc += tile.to(ACC_TYPE)
    out_offsets = segment.to(tl.int64) * num_features + cols
    tl.store(out_ptr + out_offsets, tl.sum(acc, axis=0), mask=col_mask)


@triton.jit
def _segment_broadcast_csr_kernel(
    src_ptr,
    ptr_ptr,
    out_ptr,
    num_features,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    segment = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < num_features
    start = tl.load(ptr_ptr + segment).to(tl.int64)
    end = tl.load(ptr_ptr + segment + 1).to(tl.int64)
    row = tl.load(src_ptr + segment.to(tl.int64) * num_features + cols, mask=col_mask, other=0)
    tile = tl.broadcast_to(row[None, :], (BLOCK_N, BLOCK_D))
    for first in range(start, end, BLOCK_N):
        rows = first + tl.arange(0, BLOCK_N)
        mask = (rows < end)[:, None] & col_mask[None, :]
        tl.store(out_ptr + rows[:, None] * num_features + cols[None, :], tile, mask=mask)


@triton.jit
def _segment_sum_index_kernel(
    values_ptr,
    index_ptr,
    out_ptr,
    num_rows,
    num_features,
    num_segments,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_mask = rows < num_rows
    segments = tl.load(index_ptr + rows, mask=row_mask, other=-1).to(tl.int64)
    row_mask = row_mask & (segments >= 0) & (segments < num_segments)
    mask = row_mask[:, None] & (cols < num_features)[None, :]
    tile = tl.load(values_ptr + rows[:, None] * num_features + cols[None, :], mask=mask, other=0)
    targets = out_ptr + segments[:, None] * num_features + cols[None, :]
    tl.atomic_add(targets, tile.to(out_ptr.dtype.element_ty), mask=mask, sem="relaxed")


def segment_sum_csr(
    values: Tensor, ptr: Tensor, block_n: int | None = None, num_warps: int = 4
) -> Tensor:
    """``out[s] = values[ptr[s]:ptr[s+1]].sum(0)``; values [N, D] contiguous, ptr [S+1].

    ``block_n`` (rows per tile; default from the feature block) and ``num_warps`` are launch
    parameters, exposed for the tuning sweep of :mod:`kernels.bench`.
    """
    num_segments, num_features = ptr.numel() - 1, values.shape[1]
    out = values.new_empty((num_segments, num_features))
    if num_segments == 0 or num_features == 0:
        return out
    block_d = feature_block(num_features)
    block_n = block_n or row_block(block_d, elements=2048, cap=64)
    grid = (num_segments, triton.cdiv(num_features, block_d))
    _segment_sum_csr_kernel[grid](
        values,
        ptr,
        out,
        num_features,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        ACC_TYPE=accumulator_type(values.dtype),
        num_warps=num_warps,
    )
    return out


def segment_broadcast_csr(src: Tensor, ptr: Tensor, num_rows: int) -> Tensor:
    """``out[n] = src[s]`` for ``ptr[s] <= n < ptr[s+1]``; src [S, D] contiguous -> [rows, D]."""
    num_segments, num_features = ptr.numel() - 1, src.shape[1]
    out = src.new_empty((num_rows, num_features))
    if num_segments == 0 or num_features == 0 or num_rows == 0:
        return out
    block_d = feature_block(num_features)
    block_n = row_block(block_d, elements=2048, cap=64)
    grid = (num_segments, triton.cdiv(num_features, block_d))
    _segment_broadcast_csr_kernel[grid](
        src, ptr, out, num_features, BLOCK_N=block_n, BLOCK_D=block_d
    )
    return out


def segment_sum_index(
    values: Tensor,
    index: Tensor,
    num_segments: int,
    block_n: int | None = None,
    num_warps: int = 4,
) -> Tensor:
    """``out[s] = sum_{index[n] == s} values[n]`` by atomics; values [N, D] contiguous.

    ``block_n`` and ``num_warps`` as in :func:`segment_sum_csr`.
    """
    num_rows, num_features = values.shape
    # Half-precision atomics are slow or missing: accumulate those in float32.
    acc_dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
    out = torch.zeros((num_segments, num_features), dtype=acc_dtype, device=values.device)
    if num_rows == 0 or num_features == 0 or num_segments == 0:
        return out.to(values.dtype)
    block_d = feature_block(num_features)
    block_n = block_n or row_block(block_d)
    grid = (triton.cdiv(num_rows, block_n), triton.cdiv(num_features, block_d))
    _segment_sum_index_kernel[grid](
        values,
        index,
        out,
        num_rows,
        num_features,
        num_segments,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        num_warps=num_warps,
    )
    return out.to(values.dtype)
