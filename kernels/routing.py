"""Mixture-of-experts routing: top-k gate, dispatch (group tokens by expert) and combine.

This file holds the PyTorch reference definitions and the public entry points; Triton
implementations plug in behind the public functions without changing their signatures.

Shapes: N tokens (atoms), K experts, k experts per token, D features.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


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


def topk_gate_reference(logits: Tensor, k: int, normalize: bool = True) -> Gate:
    """Definition of the gate: softmax, top-k, optional renormalisation, per-expert counts."""
    probs = torch.softmax(logits, dim=-1)
    top_probs, experts = torch.topk(probs, k, dim=-1)
    weights = top_probs / top_probs.sum(-1, keepdim=True) if normalize else top_probs
    counts = torch.bincount(experts.reshape(-1), minlength=logits.shape[-1])
    return Gate(probs, weights, experts, counts)


def dispatch_reference(experts: Tensor, num_experts: int) -> Dispatch:
    """Definition of dispatch: a stable sort of the flat assignments by expert."""
    flat = experts.reshape(-1)
    slot = torch.sort(flat, stable=True).indices
    token = torch.div(slot, experts.shape[-1], rounding_mode="floor")
    counts = torch.bincount(flat, minlength=num_experts)
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


def topk_gate(logits: Tensor, k: int, normalize: bool = True) -> Gate:
    """Top-k gate (see :func:`topk_gate_reference`), dispatched by device."""
    return topk_gate_reference(logits, k, normalize)


def dispatch(experts: Tensor, num_experts: int) -> Dispatch:
    """Group assignments by expert (see :func:`dispatch_reference`), dispatched by device."""
    return dispatch_reference(experts, num_experts)


def combine(expert_out: Tensor, weights: Tensor, dispatch: Dispatch) -> Tensor:
    """Weighted scatter back to tokens (see :func:`combine_reference`), dispatched by device."""
    return combine_reference(expert_out, weights, dispatch)
