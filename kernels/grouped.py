"""Grouped linear layers and MLPs: the per-expert computation of a mixture of experts.

Rows of ``x`` [M, I] are grouped by expert with CSR ``offsets`` [G+1] (the order
:func:`kernels.routing.dispatch` produces); group g, rows ``offsets[g] <= r < offsets[g+1]``,
has its own weights and biases:

    grouped_linear:  out[r] = x[r] @ weight[g] + bias[g]
    grouped_mlp:     out[r] = SiLU(x[r] @ w1[g] + b1[g]) @ w2[g] + b2[g]

The references (the definitions) run one matmul per non-empty group on its contiguous slice;
they read the offsets on the host (``tolist``), which on a GPU is a synchronisation. The
Triton path needs none: :func:`kernels.triton_grouped.grouped_matmul` finds each row's group
from the offsets on the device, and biases are the segment broadcast of
:mod:`kernels.segment_sum`. :func:`grouped_mlp_reference` applies SiLU slice by slice, so on
CPU its results are bitwise those of a Python loop over experts (SiLU's vectorised CPU kernel
rounds differently depending on where an element falls in a vector, so one SiLU over all rows
would not be).

Autograd, to any order (force training differentiates the expert MLPs twice). With
``A(x, W) = grouped_matmul`` and ``B(x, y) = segment_outer`` (``B[g] = x_g^T y_g``):

* dA/dx: ``grad_x = A(grad, W^T)``;  dA/dW: ``grad_W = B(x, grad)``;
* dB/dx: ``grad_x = A(y, grad^T)``;  dB/dy: ``grad_y = A(x, grad)``,

so every derivative of every order runs through the same two kernels (``W^T`` and
``grad^T`` are transposed views, which the kernel reads through their strides).

Shapes: M rows, G groups (experts), I input, H hidden and O output features.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function

from kernels.backend import triton_module, use_triton
from kernels.segment_sum import segment_broadcast_csr


def grouped_linear_reference(x: Tensor, weight: Tensor, bias: Tensor, offsets: Tensor) -> Tensor:
    """Definition: one ``x[slice] @ weight[g] + bias[g]`` per non-empty group, concatenated.

    Args:
        x: [M, I] rows grouped by ``offsets``.
        weight: [G, I, O].
        bias: [G, O].
        offsets: [G+1] int CSR offsets, ``offsets[0] == 0``, ``offsets[-1] == M``.

    Returns:
        [M, O]; differentiable to any order (plain PyTorch ops).
    """
    bounds = offsets.tolist()
    outputs = [
        x[bounds[g] : bounds[g + 1]] @ weight[g] + bias[g]
        for g in range(weight.shape[0])
        if bounds[g + 1] > bounds[g]
    ]
    return torch.cat(outputs) if outputs else x.new_zeros((0, weight.shape[-1]))


def grouped_mlp_reference(
    x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, offsets: Tensor
) -> Tensor:
    """Definition: ``SiLU(x[slice] @ w1[g] + b1[g]) @ w2[g] + b2[g]`` per non-empty group.

    Args:
        x: [M, I] rows grouped by ``offsets``; w1: [G, I, H]; b1: [G, H]; w2: [G, H, O];
        b2: [G, O]; offsets: [G+1] int CSR offsets.

    Returns:
        [M, O]; differentiable to any order.
    """
    bounds = offsets.tolist()
    outputs = [
        torch.nn.functional.silu(x[bounds[g] : bounds[g + 1]] @ w1[g] + b1[g]) @ w2[g] + b2[g]
        for g in range(w1.shape[0])
        if bounds[g + 1] > bounds[g]
    ]
    return torch.cat(outputs) if outputs else x.new_zeros((0, w2.shape[-1]))


class _GroupedMatmul(Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, offsets: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight, offsets)
        kernels = triton_module("triton_grouped")
        return kernels.grouped_matmul(x.contiguous(), weight, offsets)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, weight, offsets = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = _GroupedMatmul.apply(grad, weight.transpose(1, 2), offsets)
        if ctx.needs_input_grad[1]:
            grad_weight = _SegmentOuter.apply(x, grad, offsets)
        return grad_x, grad_weight, None


class _SegmentOuter(Function):
    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, offsets: Tensor) -> Tensor:
        ctx.save_for_backward(x, y, offsets)
        kernels = triton_module("triton_grouped")
        return kernels.segment_outer(x.contiguous(), y.contiguous(), offsets)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, y, offsets = ctx.saved_tensors
        grad_x = grad_y = None
        if ctx.needs_input_grad[0]:
            grad_x = _GroupedMatmul.apply(y, grad.transpose(1, 2), offsets)
        if ctx.needs_input_grad[1]:
            grad_y = _GroupedMatmul.apply(x, grad, offsets)
        return grad_x, grad_y, None


def _check(x: Tensor, weight: Tensor, bias: Tensor, offsets: Tensor) -> None:
    """Shapes, dtypes and devices always; offset values only on CPU (no host sync on CUDA)."""
    if x.dim() != 2 or weight.dim() != 3 or weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"x must be [M, I] and weight [G, I, O]; got x {tuple(x.shape)}, "
            f"weight {tuple(weight.shape)}"
        )
    if bias.shape != (weight.shape[0], weight.shape[2]):
        raise ValueError(
            f"bias must be [G, O] = {(weight.shape[0], weight.shape[2])}, got {tuple(bias.shape)}"
        )
    if offsets.dim() != 1 or offsets.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"offsets must be a 1-D int32/int64 tensor, got {offsets.dtype}")
    if offsets.numel() != weight.shape[0] + 1:
        raise ValueError(
            f"offsets must have G+1 = {weight.shape[0] + 1} entries, got {offsets.numel()}"
        )
    if len({x.device, weight.device, bias.device, offsets.device}) > 1:
        raise ValueError("x, weight, bias and offsets must be on one device")
    if offsets.is_cuda:
        return
    if int(offsets[0]) != 0 or int(offsets[-1]) != x.shape[0]:
        raise ValueError(
            f"offsets must run from 0 to M={x.shape[0]}, got {int(offsets[0])} .. "
            f"{int(offsets[-1])}"
        )
    if bool((offsets[1:] < offsets[:-1]).any()):
        raise ValueError("offsets must be non-decreasing (rows sorted by group)")


def _triton_for(x: Tensor, *params: Tensor, offsets: Tensor) -> bool:
    """Triton backend for float rows and parameters of one dtype."""
    same_dtype = x.is_floating_point() and all(p.dtype == x.dtype for p in params)
    return same_dtype and use_triton(x, *params, offsets)


def _triton_linear(x: Tensor, weight: Tensor, bias: Tensor, offsets: Tensor) -> Tensor:
    """Triton path of :func:`grouped_linear` (validated inputs, contiguous offsets)."""
    product = _GroupedMatmul.apply(x, weight, offsets)
    return product + segment_broadcast_csr(bias, offsets, x.shape[0])


def grouped_linear(x: Tensor, weight: Tensor, bias: Tensor, offsets: Tensor) -> Tensor:
    """Per-group affine map (see :func:`grouped_linear_reference`), dispatched by device.

    Args:
        x: [M, I] float rows grouped by ``offsets``.
        weight: [G, I, O], same dtype as ``x``.
        bias: [G, O], same dtype as ``x``.
        offsets: [G+1] int CSR offsets of the groups (``offsets[-1] == M``).

    Returns:
        [M, O]; differentiable to any order in ``x``, ``weight`` and ``bias``. On CUDA (the
        Triton path) no host synchronisation happens.
    """
    _check(x, weight, bias, offsets)
    if _triton_for(x, weight, bias, offsets=offsets):
        return _triton_linear(x, weight, bias, offsets.contiguous())
    return grouped_linear_reference(x, weight, bias, offsets)


def grouped_mlp(
    x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, offsets: Tensor
) -> Tensor:
    """Per-group two-layer SiLU MLP (see :func:`grouped_mlp_reference`), dispatched by device.

    Args:
        x: [M, I] float rows grouped by ``offsets``.
        w1: [G, I, H]; b1: [G, H]; w2: [G, H, O]; b2: [G, O], all of the dtype of ``x``.
        offsets: [G+1] int CSR offsets of the groups (``offsets[-1] == M``).

    Returns:
        [M, O]; differentiable to any order in ``x`` and the parameters. On CUDA (the Triton
        path) no host synchronisation happens.
    """
    _check(x, w1, b1, offsets)
    if w2.dim() != 3 or w2.shape[:2] != w1.shape[::2]:
        raise ValueError(
            f"w2 must be [G, H, O] with (G, H) = {tuple(w1.shape[::2])}, got {tuple(w2.shape)}"
        )
    if b2.shape != (w2.shape[0], w2.shape[2]):
        raise ValueError(f"b2 must be [G, O] = {(w2.shape[0], w2.shape[2])}, got {tuple(b2.shape)}")
    if b2.device != x.device or w2.device != x.device:
        raise ValueError("x and every parameter must be on one device")
    if _triton_for(x, w1, b1, w2, b2, offsets=offsets):
        offsets = offsets.contiguous()
        hidden = torch.nn.functional.silu(_triton_linear(x, w1, b1, offsets))
        return _triton_linear(hidden, w2, b2, offsets)
    return grouped_mlp_reference(x, w1, b1, w2, b2, offsets)
