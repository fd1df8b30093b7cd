"""Segment sums of [N, D] rows into [S, D] segments: the reduction of atoms into molecules and of
edges into atoms.

This file holds, for each op, the PyTorch reference (the definition), the autograd wrapper
and the public entry point, which picks the backend (:mod:`kernels.backend`: Triton for CUDA
tensors, the reference otherwise). Triton kernels live in :mod:`kernels.triton_segment_sum`.

Autograd. A segment sum is linear in ``values``; its adjoint is the *segment broadcast*
``out[n] = src[segment of n]`` (a gather), and the adjoint of the broadcast is the segment
sum again. Each :class:`torch.autograd.Function` below computes its backward by calling the
other public op, so the backward is itself differentiable (through the same kernels) and
derivatives of every order are exact -- force training, which differentiates forces that
are themselves gradients, needs the second order.

Shapes: ``values`` [N, *F] (any trailing feature shape, flattened to D internally),
``ptr`` [S+1] CSR offsets of sorted segments, ``index`` [N] segment of each row.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd import Function

from kernels.backend import triton_module, use_triton


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


def csr_to_index(ptr: Tensor, num_rows: int) -> Tensor:
    """Segment index [N] of each row from CSR offsets ``ptr`` [S+1] (sorted segments).

    ``num_rows`` (N == ``ptr[-1]``) sizes the output, so no host sync is needed on CUDA.
    """
    counts = ptr[1:] - ptr[:-1]
    segments = torch.arange(counts.numel(), device=ptr.device)
    return torch.repeat_interleave(segments, counts, output_size=num_rows)


def segment_sum_csr_reference(values: Tensor, ptr: Tensor) -> Tensor:
    """Definition for sorted segments: ``out[s] = values[ptr[s]:ptr[s+1]].sum(0)``.

    Args:
        values: [N, D] float, rows grouped by segment.
        ptr: [S+1] long CSR offsets, ``ptr[0] == 0`` and ``ptr[-1] == N``.

    Returns:
        [S, D].
    """
    return segment_sum_index_reference(values, csr_to_index(ptr, values.shape[0]), ptr.numel() - 1)


def segment_broadcast_csr_reference(src: Tensor, ptr: Tensor, num_rows: int) -> Tensor:
    """Definition of the adjoint of :func:`segment_sum_csr`: ``out[n] = src[s]`` for
    ``ptr[s] <= n < ptr[s+1]``; src [S, D] -> [num_rows, D] (``num_rows == ptr[-1]``)."""
    return src.index_select(0, csr_to_index(ptr, num_rows)).reshape(num_rows, *src.shape[1:])


def segment_broadcast_index_reference(src: Tensor, index: Tensor) -> Tensor:
    """Definition of the adjoint of :func:`segment_sum_index`: ``out[n] = src[index[n]]``."""
    return src.index_select(0, index)


class _SegmentSumCSR(Function):
    @staticmethod
    def forward(ctx, values: Tensor, ptr: Tensor) -> Tensor:
        ctx.save_for_backward(ptr)
        ctx.num_rows = values.shape[0]
        if values.is_floating_point() and use_triton(values, ptr):
            return triton_module("triton_segment_sum").segment_sum_csr(values, ptr)
        return segment_sum_csr_reference(values, ptr)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None]:
        (ptr,) = ctx.saved_tensors
        return _SegmentBroadcastCSR.apply(grad_out.contiguous(), ptr, ctx.num_rows), None


class _SegmentBroadcastCSR(Function):
    @staticmethod
    def forward(ctx, src: Tensor, ptr: Tensor, num_rows: int) -> Tensor:
        ctx.save_for_backward(ptr)
        if src.is_floating_point() and use_triton(src, ptr):
            return triton_module("triton_segment_sum").segment_broadcast_csr(src, ptr, num_rows)
        return segment_broadcast_csr_reference(src, ptr, num_rows)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None, None]:
        (ptr,) = ctx.saved_tensors
        return _SegmentSumCSR.apply(grad_out.contiguous(), ptr), None, None


class _SegmentSumIndex(Function):
    @staticmethod
    def forward(ctx, values: Tensor, index: Tensor, num_segments: int) -> Tensor:
        ctx.save_for_backward(index)
        if values.is_floating_point() and use_triton(values, index):
            kernels = triton_module("triton_segment_sum")
            return kernels.segment_sum_index(values, index, num_segments)
        return segment_sum_index_reference(values, index, num_segments)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None, None]:
        (index,) = ctx.saved_tensors
        return _SegmentBroadcastIndex.apply(grad_out.contiguous(), index), None, None


class _SegmentBroadcastIndex(Function):
    """Gather ``src[index]``; PyTorch's gather is already bandwidth-bound, so no Triton
    kernel here: the point of this Function is a backward through :class:`_SegmentSumIndex`."""

    @staticmethod
    def forward(ctx, src: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.num_segments = src.shape[0]
        return segment_broadcast_index_reference(src, index)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        return _SegmentSumIndex.apply(grad_out.contiguous(), index, ctx.num_segments), None


def _as_rows(tensor: Tensor) -> Tensor:
    """[N, *F] -> contiguous [N, prod(F)] (a view when possible; [N] -> [N, 1])."""
    return tensor.reshape(tensor.shape[0], math.prod(tensor.shape[1:])).contiguous()


def _check_values(name: str, values: Tensor, like: Tensor) -> None:
    if values.dim() < 1:
        raise ValueError(f"{name} must have a leading row axis, got a scalar")
    if values.device != like.device:
        raise ValueError(f"{name} is on {values.device} but the indices are on {like.device}")


def _check_ptr(ptr: Tensor, num_rows: int) -> None:
    """Shape and dtype always; values only on CPU (on CUDA they would cost a host sync)."""
    if ptr.dim() != 1 or ptr.numel() < 1 or ptr.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"ptr must be a 1-D int32/int64 tensor [S+1], got {ptr.dtype} {tuple(ptr.shape)}"
        )
    if ptr.is_cuda:
        return
    if int(ptr[0]) != 0 or int(ptr[-1]) != num_rows:
        raise ValueError(
            f"ptr must run from 0 to N={num_rows}, got {int(ptr[0])} .. {int(ptr[-1])}"
        )
    if bool((ptr[1:] < ptr[:-1]).any()):
        raise ValueError("ptr must be non-decreasing (rows sorted by segment)")


def _check_index(index: Tensor, num_rows: int, num_segments: int) -> None:
    """Shape and dtype always; values only on CPU (on CUDA they would cost a host sync)."""
    if index.dim() != 1 or index.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"index must be a 1-D int32/int64 tensor, got {index.dtype} {tuple(index.shape)}"
        )
    if index.numel() != num_rows:
        raise ValueError(f"index has {index.numel()} entries but values has {num_rows} rows")
    if num_segments < 0:
        raise ValueError(f"num_segments must be >= 0, got {num_segments}")
    if index.is_cuda or num_rows == 0:
        return
    low, high = int(index.min()), int(index.max())
    if low < 0 or high >= num_segments:
        raise ValueError(f"index values {low} .. {high} fall outside [0, {num_segments})")


def segment_sum_csr(values: Tensor, ptr: Tensor) -> Tensor:
    """Sum of sorted segments (see :func:`segment_sum_csr_reference`), dispatched by device.

    Args:
        values: [N, *F] rows grouped by segment.
        ptr: [S+1] int CSR offsets, ``ptr[0] == 0``, ``ptr[-1] == N``, non-decreasing.

    Returns:
        [S, *F]; differentiable to any order in ``values``.
    """
    _check_values("values", values, ptr)
    _check_ptr(ptr, values.shape[0])
    out = _SegmentSumCSR.apply(_as_rows(values), ptr.contiguous())
    return out.reshape(ptr.numel() - 1, *values.shape[1:])


def segment_sum_index(values: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Sum over an unsorted segment index (see :func:`segment_sum_index_reference`).

    Args:
        values: [N, *F].
        index: [N] int, segment of each row in ``[0, num_segments)``, any order.
        num_segments: S.

    Returns:
        [S, *F], zeros for empty segments; differentiable to any order in ``values``.
    """
    _check_values("values", values, index)
    _check_index(index, values.shape[0], num_segments)
    out = _SegmentSumIndex.apply(_as_rows(values), index.contiguous(), num_segments)
    return out.reshape(num_segments, *values.shape[1:])


def segment_broadcast_csr(src: Tensor, ptr: Tensor, num_rows: int) -> Tensor:
    """Adjoint of :func:`segment_sum_csr`: each segment's row copied to its members.

    Args:
        src: [S, *F].
        ptr: [S+1] int CSR offsets with ``ptr[-1] == num_rows``.
        num_rows: N (passed so that no host sync is needed on CUDA).

    Returns:
        [N, *F]; differentiable to any order in ``src``.
    """
    _check_values("src", src, ptr)
    _check_ptr(ptr, num_rows)
    if src.shape[0] != ptr.numel() - 1:
        raise ValueError(
            f"src has {src.shape[0]} rows but ptr describes {ptr.numel() - 1} segments"
        )
    out = _SegmentBroadcastCSR.apply(_as_rows(src), ptr.contiguous(), num_rows)
    return out.reshape(num_rows, *src.shape[1:])


def segment_broadcast_index(src: Tensor, index: Tensor) -> Tensor:
    """Adjoint of :func:`segment_sum_index`: ``out[n] = src[index[n]]``.

    Args:
        src: [S, *F].
        index: [N] int in ``[0, S)``.

    Returns:
        [N, *F]; differentiable to any order in ``src``.
    """
    _check_values("src", src, index)
    _check_index(index, index.numel(), src.shape[0])
    out = _SegmentBroadcastIndex.apply(_as_rows(src), index.contiguous())
    return out.reshape(index.numel(), *src.shape[1:])
