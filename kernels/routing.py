"""Mixture-of-experts routing: top-k gate, dispatch (group tokens by expert) and combine.

This file holds, for each op, the PyTorch reference (the definition), the autograd wrapper
and the public entry point, which picks the backend (:mod:`kernels.backend`: Triton for CUDA
tensors, the reference otherwise). Triton kernels live in :mod:`kernels.triton_routing`.

Autograd, to any order (force training differentiates through the routing twice):

* Gate. The backward maps (grad probs, grad weights) to grad logits with a few PyTorch ops
  on [N, K] tensors -- a scatter of the top-k gradients into the probabilities, the
  renormalisation's Jacobian and the softmax's -- recomputed from the saved probabilities,
  so the backward is differentiable and its own backward is exact. ``experts`` and
  ``counts`` are integers and carry no gradient.
* Dispatch is integer bookkeeping: no gradient.
* Combine is trilinear-in-disguise: with ``row(t, j)`` the sorted row of assignment
  ``(t, j)``, ``combine(X, w)[t] = sum_j w[t, j] X[row(t, j)]``. Its partial adjoints are
  ``expand`` (``X[r] = w[slot r] Y[token r]``, the adjoint in X) and ``rowdot``
  (``w[slot r] = <Y[token r], X[r]>``, the adjoint in w), and the adjoints of those are again
  combine, expand and rowdot. Each Function's backward calls the other two, so all
  derivatives of all orders run through the same three (Triton or reference) kernels.

Shapes: N tokens (atoms), K experts, k experts per token, M = N*k assignments, D features.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd import Function

from kernels.backend import triton_module, use_triton


class Gate(NamedTuple):
    """Result of the top-k gate.

    Attributes:
        probs: [N, K] softmax of the logits (float).
        weights: [N, k] gate weights of the chosen experts (the top-k probabilities,
            renormalised to sum to one per token when ``normalize``).
        experts: [N, k] long, chosen experts, in decreasing probability.
        counts: [K] long, number of (token, slot) assignments per expert.
    """

    probs: Tensor
    weights: Tensor
    experts: Tensor
    counts: Tensor


class Dispatch(NamedTuple):
    """Grouping of the N*k (token, slot) assignments by expert.

    Attributes:
        token: [N*k] long, token of each assignment, assignments sorted by expert (stable).
        slot: [N*k] long, flat position ``token * k + j`` of each sorted assignment in the
            [N, k] gate arrays.
        offsets: [K+1] long CSR offsets: expert e owns sorted rows ``offsets[e]:offsets[e+1]``.
    """

    token: Tensor
    slot: Tensor
    offsets: Tensor


def expert_counts(experts: Tensor, num_experts: int) -> Tensor:
    """[K] long number of assignments per expert in ``experts`` [N, k] (values in [0, K)).

    A scatter-add rather than ``torch.bincount``, which reads the maximum on the host (a
    sync on CUDA) to size its output.
    """
    flat = experts.reshape(-1).long()
    counts = torch.zeros(num_experts, dtype=torch.long, device=experts.device)
    return counts.scatter_add_(0, flat, torch.ones_like(flat))


def topk_gate_reference(logits: Tensor, k: int, normalize: bool = True) -> Gate:
    """Definition of the gate: softmax, top-k, optional renormalisation, per-expert counts."""
    probs = torch.softmax(logits, dim=-1)
    top_probs, experts = torch.topk(probs, k, dim=-1)
    weights = top_probs / top_probs.sum(-1, keepdim=True) if normalize else top_probs
    return Gate(probs, weights, experts, expert_counts(experts, logits.shape[-1]))


def dispatch_reference(experts: Tensor, num_experts: int) -> Dispatch:
    """Definition of dispatch: a stable sort of the flat assignments by expert."""
    slot = torch.sort(experts.reshape(-1), stable=True).indices
    token = torch.div(slot, experts.shape[-1], rounding_mode="floor")
    counts = expert_counts(experts, num_experts)
    offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    return Dispatch(token, slot, offsets)


def combine_reference(expert_out: Tensor, weights: Tensor, dispatch: Dispatch) -> Tensor:
    """Definition of combine: ``out[t] = sum_j weights[t, j] * expert_out[row of (t, j)]``.

    Args:
        expert_out: [N*k, D] expert outputs in dispatch (sorted) order.
        weights: [N, k] gate weights.
        dispatch: the :class:`Dispatch` that produced the sorted order.

    Returns:
        [N, D].
    """
    scaled = expert_out * weights.reshape(-1)[dispatch.slot].unsqueeze(-1)
    out = expert_out.new_zeros((weights.shape[0], expert_out.shape[-1]))
    return out.index_add(0, dispatch.token, scaled)


def expand_reference(tokens: Tensor, weights: Tensor, dispatch: Dispatch) -> Tensor:
    """Adjoint of combine in ``expert_out``: ``out[r] = weights[slot r] * tokens[token r]``.

    Args:
        tokens: [N, D]; weights: [N, k]. Returns: [N*k, D] in dispatch order.
    """
    return tokens.index_select(0, dispatch.token) * weights.reshape(-1)[dispatch.slot].unsqueeze(-1)


def rowdot_reference(tokens: Tensor, rows: Tensor, dispatch: Dispatch, k: int) -> Tensor:
    """Adjoint of combine in ``weights``: ``out[slot r] = <tokens[token r], rows[r]>``.

    Args:
        tokens: [N, D]; rows: [N*k, D] in dispatch order. Returns: [N, k].
    """
    dots = (tokens.index_select(0, dispatch.token) * rows).sum(-1)
    flat = dots.new_zeros(tokens.shape[0] * k).index_copy(0, dispatch.slot, dots)
    return flat.reshape(tokens.shape[0], k)


def gate_logits_grad(
    probs: Tensor, experts: Tensor, grad_probs: Tensor, grad_weights: Tensor, normalize: bool
) -> Tensor:
    """Gradient of the gate's float outputs with respect to the logits, in differentiable ops.

    Args:
        probs: [N, K] softmax; experts: [N, k] chosen experts;
        grad_probs: [N, K]; grad_weights: [N, k]; normalize: as in the forward.

    Returns:
        [N, K] gradient for the logits.
    """
    top = probs.gather(1, experts)
    grad_top = grad_weights
    if normalize:
        total = top.sum(-1, keepdim=True)
        grad_top = (grad_weights - (grad_weights * top).sum(-1, keepdim=True) / total) / total
    grad_all = grad_probs.scatter_add(1, experts, grad_top)
    return probs * (grad_all - (grad_all * probs).sum(-1, keepdim=True))


def _triton_for(*tensors: Tensor) -> bool:
    """Triton backend for float inputs of one dtype (the reference handles anything else)."""
    floats = [t for t in tensors if t.is_floating_point()]
    same_dtype = len({t.dtype for t in floats}) == 1
    return same_dtype and use_triton(*tensors)


class _TopkGate(Function):
    @staticmethod
    def forward(ctx, logits: Tensor, k: int, normalize: bool):
        if _triton_for(logits):
            gate = Gate(
                *triton_module("triton_routing").topk_gate(logits.contiguous(), k, normalize)
            )
        else:
            gate = topk_gate_reference(logits, k, normalize)
        ctx.mark_non_differentiable(gate.experts, gate.counts)
        ctx.save_for_backward(gate.probs, gate.experts)
        ctx.normalize = normalize
        return tuple(gate)

    @staticmethod
    def backward(ctx, grad_probs: Tensor, grad_weights: Tensor, _experts, _counts):
        probs, experts = ctx.saved_tensors
        return gate_logits_grad(probs, experts, grad_probs, grad_weights, ctx.normalize), None, None


class _Combine(Function):
    @staticmethod
    def forward(ctx, rows: Tensor, weights: Tensor, token: Tensor, slot: Tensor, offsets: Tensor):
        ctx.save_for_backward(rows, weights, token, slot, offsets)
        if _triton_for(rows, weights, token, slot):
            kernels = triton_module("triton_routing")
            return kernels.combine(rows.contiguous(), weights.contiguous(), slot)
        return combine_reference(rows, weights, Dispatch(token, slot, offsets))

    @staticmethod
    def backward(ctx, grad: Tensor):
        rows, weights, token, slot, offsets = ctx.saved_tensors
        grad_rows = grad_weights = None
        if ctx.needs_input_grad[0]:
            grad_rows = _Expand.apply(grad, weights, token, slot, offsets)
        if ctx.needs_input_grad[1]:
            grad_weights = _RowDot.apply(grad, rows, token, slot, offsets, weights.shape[1])
        return grad_rows, grad_weights, None, None, None


class _Expand(Function):
    @staticmethod
    def forward(ctx, tokens: Tensor, weights: Tensor, token: Tensor, slot: Tensor, offsets: Tensor):
        ctx.save_for_backward(tokens, weights, token, slot, offsets)
        if _triton_for(tokens, weights, token, slot):
            kernels = triton_module("triton_routing")
            return kernels.expand(tokens.contiguous(), weights.contiguous(), token, slot)
        return expand_reference(tokens, weights, Dispatch(token, slot, offsets))

    @staticmethod
    def backward(ctx, grad: Tensor):
        tokens, weights, token, slot, offsets = ctx.saved_tensors
        grad_tokens = grad_weights = None
        if ctx.needs_input_grad[0]:
            grad_tokens = _Combine.apply(grad, weights, token, slot, offsets)
        if ctx.needs_input_grad[1]:
            grad_weights = _RowDot.apply(tokens, grad, token, slot, offsets, weights.shape[1])
        return grad_tokens, grad_weights, None, None, None


class _RowDot(Function):
    @staticmethod
    def forward(ctx, tokens: Tensor, rows: Tensor, token: Tensor, slot: Tensor, offsets, k: int):
        ctx.save_for_backward(tokens, rows, token, slot, offsets)
        if _triton_for(tokens, rows, token, slot):
            kernels = triton_module("triton_routing")
            return kernels.rowdot(tokens.contiguous(), rows.contiguous(), token, slot, k)
        return rowdot_reference(tokens, rows, Dispatch(token, slot, offsets), k)

    @staticmethod
    def backward(ctx, grad: Tensor):
        tokens, rows, token, slot, offsets = ctx.saved_tensors
        grad_tokens = grad_rows = None
        if ctx.needs_input_grad[0]:
            grad_tokens = _Combine.apply(rows, grad, token, slot, offsets)
        if ctx.needs_input_grad[1]:
            grad_rows = _Expand.apply(tokens, grad, token, slot, offsets)
        return grad_tokens, grad_rows, None, None, None, None


def _check_experts(experts: Tensor, num_experts: int) -> None:
    """Shape and dtype always; values only on CPU (on CUDA they would cost a host sync)."""
    if experts.dim() != 2 or experts.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"experts must be an [N, k] int32/int64 tensor, got {experts.dtype} "
            f"{tuple(experts.shape)}"
        )
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    if experts.is_cuda or experts.numel() == 0:
        return
    low, high = int(experts.min()), int(experts.max())
    if low < 0 or high >= num_experts:
        raise ValueError(f"experts values {low} .. {high} fall outside [0, {num_experts})")


def _check_combine(expert_out: Tensor, weights: Tensor, dispatch: Dispatch) -> None:
    if weights.dim() != 2:
        raise ValueError(f"weights must be [N, k], got shape {tuple(weights.shape)}")
    num_assignments = weights.numel()
    if expert_out.dim() != 2 or expert_out.shape[0] != num_assignments:
        raise ValueError(
            f"expert_out must be [N*k={num_assignments}, D], got shape {tuple(expert_out.shape)}"
        )
    for name, index in (("token", dispatch.token), ("slot", dispatch.slot)):
        if index.shape != (num_assignments,):
            raise ValueError(
                f"dispatch.{name} must be [N*k={num_assignments}], got {tuple(index.shape)}"
            )
    if len({expert_out.device, weights.device, dispatch.token.device, dispatch.slot.device}) > 1:
        raise ValueError("expert_out, weights and dispatch must be on one device")


def topk_gate(logits: Tensor, k: int, normalize: bool = True) -> Gate:
    """Top-k gate (see :func:`topk_gate_reference`), dispatched by device.

    Args:
        logits: [N, K] float router logits.
        k: experts per token, ``1 <= k <= K``.
        normalize: renormalise the k chosen probabilities to sum to one.

    Returns:
        :class:`Gate`; ``probs`` and ``weights`` are differentiable to any order in ``logits``.
        Ties between equal probabilities go to the lower expert index on the Triton path.
    """
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(
            f"logits must be a float [N, K] tensor, got {logits.dtype} {tuple(logits.shape)}"
        )
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f"k must be in [1, K={logits.shape[1]}], got {k}")
    return Gate(*_TopkGate.apply(logits, k, normalize))


def dispatch(experts: Tensor, num_experts: int) -> Dispatch:
    """Group assignments by expert (see :func:`dispatch_reference`), dispatched by device.

    Args:
        experts: [N, k] int, expert of each (token, slot), in ``[0, num_experts)``.
        num_experts: K.

    Returns:
        :class:`Dispatch` (stable: within an expert, assignments keep their flat order).
    """
    _check_experts(experts, num_experts)
    if use_triton(experts):
        kernels = triton_module("triton_routing")
        return Dispatch(*kernels.dispatch(experts.contiguous(), num_experts))
    return dispatch_reference(experts, num_experts)


def combine(expert_out: Tensor, weights: Tensor, dispatch: Dispatch) -> Tensor:
    """Weighted scatter back to tokens (see :func:`combine_reference`), dispatched by device.

    Args:
        expert_out: [N*k, D] expert outputs in dispatch (sorted) order.
        weights: [N, k] gate weights.
        dispatch: the :class:`Dispatch` that produced the sorted order.

    Returns:
        [N, D]; differentiable to any order in ``expert_out`` and ``weights``.
    """
    _check_combine(expert_out, weights, dispatch)
    return _Combine.apply(expert_out, weights, dispatch.token, dispatch.slot, dispatch.offsets)
