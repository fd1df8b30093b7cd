"""Triton kernels for the grouped matrix products of mixture-of-experts MLPs.

Rows of ``x`` [M, I] are grouped by expert (CSR ``offsets`` [G+1], as :func:`kernels.routing.
dispatch` leaves them); group g owns rows ``offsets[g]:offsets[g+1]``. Two kernels:

* :func:`grouped_matmul` ``out[r] = x[r] @ weight[group of r]``  [M, O]: one program per
  (tile of ``BLOCK_M`` rows, tile of output columns). The group of each row is found from the
  offsets in registers (``#{g >= 1 : offsets[g] <= r}``), so no per-row index is stored and no
  host synchronisation is needed to size the launch. A tile that straddles group boundaries
  loops over its groups (usually one or two), each a masked ``tl.dot`` over the input axis
  whose rows are kept only where they belong to that group. ``weight`` [G, I, O] may have any
  strides (the backward passes a transposed view).
* :func:`segment_outer` ``out[g] = x[rows of g]^T @ y[rows of g]``  [G, I, O]: one program
  per (group, tile of I, tile of O) loops over the group's rows; empty groups give zeros.

Both are deterministic (no atomics). Products run with ``input_precision="ieee"`` (no TF32),
so float32 results agree with PyTorch's default float32 matmul to rounding; accumulators are
float32 (float64 for float64 data). Offsets are trusted (checked on CPU only, by
:mod:`kernels.grouped`, which holds the validated, differentiable entry points).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.triton_common import accumulator_type

#: Smallest block on each axis of a ``tl.dot`` that every compiled target accepts.
DOT_MIN = 16


@triton.jit
def _grouped_matmul_kernel(
    x_ptr,
    w_ptr,
    offsets_ptr,
    out_ptr,
    num_rows,
    num_in,
    num_out,
    num_groups,
    stride_wg,
    stride_wi,
    stride_wo,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_G: tl.constexpr,
    ACC_TYPE: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < num_rows
    col_mask = cols < num_out
    # group of row r = number of groups g >= 1 that start at or before r
    starts = tl.load(
        offsets_ptr + 1 + tl.arange(0, BLOCK_G),
        mask=tl.arange(0, BLOCK_G) < num_groups - 1,
        other=num_rows,
    ).to(tl.int64)
    group = tl.sum((starts[None, :] <= rows[:, None]).to(tl.int32), axis=1)
    first = tl.min(tl.where(row_mask, group, num_groups), axis=0)
    last = tl.max(tl.where(row_mask, group, -1), axis=0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_TYPE)
    for g in range(first, last + 1):
        in_group = row_mask & (group == g)
        part = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_TYPE)
        for k0 in range(0, num_in, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_mask = ks < num_in
            a = tl.load(
                x_ptr + rows[:, None] * num_in + ks[None, :],
                mask=in_group[:, None] & k_mask[None, :],
                other=0,
            )
            b = tl.load(
                w_ptr + g * stride_wg + ks[:, None] * stride_wi + cols[None, :] * stride_wo,
                mask=k_mask[:, None] & col_mask[None, :],
                other=0,
            )
            part = tl.dot(a, b, part, input_precision="ieee", out_dtype=ACC_TYPE)
        acc = tl.where(in_group[:, None], part, acc)
    out_offsets = rows[:, None] * num_out + cols[None, :]
    tl.store(out_ptr + out_offsets, acc, mask=row_mask[:, None] & col_mask[None, :])


@triton.jit
def _segment_outer_kernel(
    x_ptr,
    y_ptr,
    offsets_ptr,
    out_ptr,
    num_in,
    num_out,
    BLOCK_M: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_O: tl.constexpr,
    ACC_TYPE: tl.constexpr,
):
    group = tl.program_id(0)
    ins = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    outs = tl.program_id(2) * BLOCK_O + tl.arange(0, BLOCK_O)
    in_mask = ins < num_in
    out_mask = outs < num_out
    start = tl.load(offsets_ptr + group).to(tl.int64)
    end = tl.load(offsets_ptr + group + 1).to(tl.int64)
    acc = tl.zeros((BLOCK_I, BLOCK_O), dtype=ACC_TYPE)
    for first in range(start, end, BLOCK_M):
        rows = first + tl.arange(0, BLOCK_M)
        row_mask = rows < end
        x_t = tl.load(
            x_ptr + rows[None, :] * num_in + ins[:, None],
            mask=in_mask[:, None] & row_mask[None, :],
            other=0,
        )
        y = tl.load(
            y_ptr + rows[:, None] * num_out + outs[None, :],
            mask=row_mask[:, None] & out_mask[None, :],
            other=0,
        )
        acc = tl.dot(x_t, y, acc, input_precision="ieee", out_dtype=ACC_TYPE)
    out_offsets = group.to(tl.int64) * num_in * num_out + ins[:, None] * num_out + outs[None, :]
    tl.store(out_ptr + out_offsets, acc, mask=in_mask[:, None] & out_mask[None, :])


def _dot_block(size: int, cap: int) -> int:
    """Power-of-two block of at least :data:`DOT_MIN` covering ``size`` up to ``cap``."""
    return min(max(triton.next_power_of_2(max(size, 1)), DOT_MIN), cap)


def grouped_matmul(x: Tensor, weight: Tensor, offsets: Tensor) -> Tensor:
    """``out[r] = x[r] @ weight[g]`` for ``offsets[g] <= r < offsets[g+1]``.

    Args:
        x: [M, I] contiguous, rows grouped by ``offsets``.
        weight: [G, I, O], any strides.
        offsets: [G+1] int CSR offsets, ``offsets[-1] == M``.

    Returns:
        [M, O], dtype of ``x``.
    """
    num_rows, num_in = x.shape
    num_groups, _, num_out = weight.shape
    out = x.new_empty((num_rows, num_out))
    if num_rows == 0 or num_out == 0:
        return out
    if num_in == 0:
        return out.zero_()
    block_n = _dot_block(num_out, 64)
    grid = (triton.cdiv(num_rows, 32), triton.cdiv(num_out, block_n))
    _grouped_matmul_kernel[grid](
        x,
        weight,
        offsets,
        out,
        num_rows,
        num_in,
        num_out,
        num_groups,
        *weight.stride(),
        BLOCK_M=32,
        BLOCK_N=block_n,
        BLOCK_K=_dot_block(num_in, 32),
        BLOCK_G=max(triton.next_power_of_2(num_groups), 2),
        ACC_TYPE=accumulator_type(x.dtype),
    )
    return out


def segment_outer(x: Tensor, y: Tensor, offsets: Tensor) -> Tensor:
    """``out[g] = x[offsets[g]:offsets[g+1]]^T @ y[offsets[g]:offsets[g+1]]``.

    Args:
        x: [M, I] contiguous; y: [M, O] contiguous; offsets: [G+1] int CSR offsets.

    Returns:
        [G, I, O], zeros for empty groups.
    """
    num_in, num_out = x.shape[1], y.shape[1]
    num_groups = offsets.numel() - 1
    out = torch.zeros((num_groups, num_in, num_out), dtype=x.dtype, device=x.device)
    if x.shape[0] == 0 or num_in == 0 or num_out == 0 or num_groups == 0:
        return out
    block_i, block_o = _dot_block(num_in, 32), _dot_block(num_out, 32)
    grid = (num_groups, triton.cdiv(num_in, block_i), triton.cdiv(num_out, block_o))
    _segment_outer_kernel[grid](
        x,
        y,
        offsets,
        out,
        num_in,
        num_out,
        BLOCK_M=32,
        BLOCK_I=block_i,
        BLOCK_O=block_o,
        ACC_TYPE=accumulator_type(x.dtype),
    )
    return out
