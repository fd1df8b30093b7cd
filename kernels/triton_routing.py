"""Triton kernels for mixture-of-experts routing.

Gate. :func:`topk_gate` is one fused kernel: each program loads a tile of ``BLOCK_N`` tokens
x all K logits, computes the softmax in registers, picks the top k by k rounds of a row
argmax (ties go to the lower expert index), renormalises, writes probs [N, K], weights
[N, k], experts [N, k], and adds its per-expert tallies to counts [K] (one integer atomic per
expert per program, so counts are exact).

Dispatch. :func:`dispatch` groups the M = N*k flat assignments by expert, stably, with no
sort: (1) each program histograms a tile of assignments into a [tiles, K] table; (2) a prefix
sum over that small table (PyTorch) gives each tile the first output row of each expert;
(3) each program ranks its assignments within the tile (a cumulative sum of the one-hot
expert matrix) and writes ``slot``/``token`` to their final rows. Deterministic.

Combine and its adjoints. With ``row(t, j)`` the sorted row of assignment ``(t, j)``:

* :func:`combine`  ``Y[t]      = sum_j w[t, j] * X[row(t, j)]``     [N, D]
* :func:`expand`   ``X[r]      = w[slot r] * Y[token r]``           [M, D]
* :func:`rowdot`   ``w[slot r] = <Y[token r], X[r]>``               [N, k]

Each is a gather (one program per tile of output rows; no atomics, deterministic). They
are the three partial adjoints of the trilinear form ``sum_r w[slot r] <Y[token r], X[r]>``,
which is what lets :mod:`kernels.routing` differentiate any of them with the other two.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.triton_common import accumulator_type, feature_block, row_block


@triton.jit
def _topk_gate_kernel(
    logits_ptr,
    probs_ptr,
    weights_ptr,
    experts_ptr,
    counts_ptr,
    num_tokens,
    num_experts,
    TOP_K: tl.constexpr,
    NORMALIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ACC_TYPE: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    row_mask = rows < num_tokens
    col_mask = cols < num_experts
    mask = row_mask[:, None] & col_mask[None, :]
    offsets = rows[:, None] * num_experts + cols[None, :]
    logits = tl.load(logits_ptr + offsets, mask=mask, other=-float("inf")).to(ACC_TYPE)
    logits = tl.where(row_mask[:, None], logits, 0.0)  # keep padded rows finite
    exps = tl.exp(logits - tl.max(logits, axis=1)[:, None])
    exps = tl.where(col_mask[None, :], exps, 0.0)
    probs = exps / tl.sum(exps, axis=1)[:, None]
    tl.store(probs_ptr + offsets, probs, mask=mask)

    # k rounds of argmax; rank[n, e] = j when expert e is token n's j-th choice, else -1.
    candidates = tl.where(col_mask[None, :], probs, -1.0)
    rank = tl.full((BLOCK_N, BLOCK_K), -1, tl.int32)
    total = tl.zeros((BLOCK_N,), dtype=ACC_TYPE)
    for j in tl.static_range(TOP_K):
        best, best_col = tl.max(candidates, axis=1, return_indices=True)
        chosen = cols[None, :] == best_col[:, None]
        rank = tl.where(chosen, j, rank)
        candidates = tl.where(chosen, -2.0, candidates)
        total += best
    picked = (rank >= 0) & mask
    weights = probs
    if NORMALIZE:
        weights = probs / total[:, None]
    out_offsets = rows[:, None] * TOP_K + rank
    tl.store(weights_ptr + out_offsets, weights, mask=picked)
    tl.store(experts_ptr + out_offsets, tl.broadcast_to(cols[None, :], rank.shape), mask=picked)
    tile_counts = tl.sum(picked.to(tl.int32), axis=0)
    tl.atomic_add(counts_ptr + cols, tile_counts, mask=col_mask, sem="relaxed")


@triton.jit
def _one_hot_tile(
    experts_ptr, tile, num_assignments, num_experts, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr
):
    """Flat indices, experts (-1 when padding or out of range) and one-hot [BLOCK_M, BLOCK_K]."""
    flat = tile.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    expert = tl.load(experts_ptr + flat, mask=flat < num_assignments, other=-1).to(tl.int32)
    expert = tl.where((expert >= 0) & (expert < num_experts), expert, -1)
    one_hot = (expert[:, None] == tl.arange(0, BLOCK_K)[None, :]).to(tl.int32)
    return flat, expert, one_hot


@triton.jit
def _expert_histogram_kernel(
    experts_ptr,
    histogram_ptr,
    num_assignments,
    num_experts,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    tile = tl.program_id(0)
    _, _, one_hot = _one_hot_tile(experts_ptr, tile, num_assignments, num_experts, BLOCK_M, BLOCK_K)
    cols = tl.arange(0, BLOCK_K)
    tl.store(histogram_ptr + tile.to(tl.int64) * BLOCK_K + cols, tl.sum(one_hot, axis=0))


@triton.jit
def _dispatch_scatter_kernel(
    experts_ptr,
    tile_start_ptr,
    token_ptr,
    slot_ptr,
    num_assignments,
    num_experts,
    TOP_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    tile = tl.program_id(0)
    flat, expert, one_hot = _one_hot_tile(
        experts_ptr, tile, num_assignments, num_experts, BLOCK_M, BLOCK_K
    )
    rank_in_tile = tl.sum((tl.cumsum(one_hot, axis=0) - 1) * one_hot, axis=1)
    valid = expert >= 0
    start = tl.load(tile_start_ptr + tile.to(tl.int64) * BLOCK_K + expert, mask=valid, other=0)
    row = start + rank_in_tile
    tl.store(slot_ptr + row, flat, mask=valid)
    tl.store(token_ptr + row, flat // TOP_K, mask=valid)


@triton.jit
def _combine_kernel(
    expert_out_ptr,
    weights_ptr,
    inverse_ptr,
    out_ptr,
    num_tokens,
    num_features,
    TOP_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ACC_TYPE: tl.constexpr,
):
    tokens = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    token_mask = tokens < num_tokens
    mask = token_mask[:, None] & (cols < num_features)[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=ACC_TYPE)
    for j in tl.static_range(TOP_K):
        row = tl.load(inverse_ptr + tokens * TOP_K + j, mask=token_mask, other=0).to(tl.int64)
        weight = tl.load(weights_ptr + tokens * TOP_K + j, mask=token_mask, other=0).to(ACC_TYPE)
        tile = tl.load(
            expert_out_ptr + row[:, None] * num_features + cols[None, :], mask=mask, other=0
        )
        acc += weight[:, None] * tile.to(ACC_TYPE)
    tl.store(out_ptr + tokens[:, None] * num_features + cols[None, :], acc, mask=mask)


@triton.jit
def _expand_kernel(
    tokens_ptr,
    weights_ptr,
    token_ptr,
    slot_ptr,
    out_ptr,
    num_rows,
    num_features,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ACC_TYPE: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_mask = rows < num_rows
    mask = row_mask[:, None] & (cols < num_features)[None, :]
    token = tl.load(token_ptr + rows, mask=row_mask, other=0).to(tl.int64)
    slot = tl.load(slot_ptr + rows, mask=row_mask, other=0)
    weight = tl.load(weights_ptr + slot, mask=row_mask, other=0).to(ACC_TYPE)
    tile = tl.load(tokens_ptr + token[:, None] * num_features + cols[None, :], mask=mask, other=0)
    scaled = weight[:, None] * tile.to(ACC_TYPE)
    tl.store(out_ptr + rows[:, None] * num_features + cols[None, :], scaled, mask=mask)


@triton.jit
def _rowdot_kernel(
    tokens_ptr,
    rows_ptr,
    token_ptr,
    slot_ptr,
    out_ptr,
    num_rows,
    num_features,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ACC_TYPE: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < num_rows
    token = tl.load(token_ptr + rows, mask=row_mask, other=0).to(tl.int64)
    slot = tl.load(slot_ptr + rows, mask=row_mask, other=0)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=ACC_TYPE)
    for first in range(0, num_features, BLOCK_D):
        cols = first + tl.arange(0, BLOCK_D)
        mask = row_mask[:, None] & (cols < num_features)[None, :]
        y = tl.load(tokens_ptr + token[:, None] * num_features + cols[None, :], mask=mask, other=0)
        x = tl.load(rows_ptr + rows[:, None] * num_features + cols[None, :], mask=mask, other=0)
        acc += y.to(ACC_TYPE) * x.to(ACC_TYPE)
    tl.store(out_ptr + slot, tl.sum(acc, axis=1), mask=row_mask)


def topk_gate(logits: Tensor, k: int, normalize: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused softmax + top-k + counts; logits [N, K] contiguous.

    Returns:
        probs [N, K], weights [N, k], experts [N, k] long, counts [K] long.
    """
    num_tokens, num_experts = logits.shape
    probs = torch.empty_like(logits)
    weights = logits.new_empty((num_tokens, k))
    experts = torch.empty((num_tokens, k), dtype=torch.long, device=logits.device)
    counts = torch.zeros(num_experts, dtype=torch.int32, device=logits.device)
    if num_tokens > 0:
        block_k = triton.next_power_of_2(num_experts)
        block_n = row_block(block_k, elements=2048, cap=128)
        _topk_gate_kernel[(triton.cdiv(num_tokens, block_n),)](
            logits,
            probs,
            weights,
            experts,
            counts,
            num_tokens,
            num_experts,
            TOP_K=k,
            NORMALIZE=normalize,
            BLOCK_N=block_n,
            BLOCK_K=block_k,
            ACC_TYPE=accumulator_type(logits.dtype),
        )
    return probs, weights, experts, counts.long()


def dispatch(experts: Tensor, num_experts: int) -> tuple[Tensor, Tensor, Tensor]:
    """Stable grouping of flat assignments by expert; experts [N, k] contiguous.

    Returns:
        token [N*k] long, slot [N*k] long, offsets [K+1] long.
    """
    num_assignments, top_k = experts.numel(), experts.shape[-1]
    device = experts.device
    token = torch.empty(num_assignments, dtype=torch.long, device=device)
    slot = torch.empty(num_assignments, dtype=torch.long, device=device)
    block_k = triton.next_power_of_2(max(num_experts, 1))
    block_m = row_block(block_k, elements=8192, cap=1024)
    num_tiles = triton.cdiv(num_assignments, block_m)
    histogram = torch.empty((num_tiles, block_k), dtype=torch.int32, device=device)
    if num_tiles > 0:
        _expert_histogram_kernel[(num_tiles,)](
            experts, histogram, num_assignments, num_experts, BLOCK_M=block_m, BLOCK_K=block_k
        )
    histogram = histogram.long()
    counts = histogram.sum(0)
    offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts[:num_experts], 0)])
    tile_start = offsets[:-1] + (torch.cumsum(histogram, 0) - histogram)[:, :num_experts]
    tile_start = torch.nn.functional.pad(tile_start, (0, block_k - num_experts)).contiguous()
    if num_tiles > 0:
        _dispatch_scatter_kernel[(num_tiles,)](
            experts,
            tile_start,
            token,
            slot,
            num_assignments,
            num_experts,
            TOP_K=top_k,
            BLOCK_M=block_m,
            BLOCK_K=block_k,
        )
    return token, slot, offsets


def inverse_permutation(slot: Tensor) -> Tensor:
    """``inverse[slot[r]] = r``: the sorted row of each flat assignment."""
    positions = torch.arange(slot.numel(), device=slot.device)
    return torch.empty_like(slot).scatter_(0, slot, positions)


def combine(expert_out: Tensor, weights: Tensor, slot: Tensor) -> Tensor:
    """``Y[t] = sum_j w[t, j] X[row(t, j)]``; expert_out [M, D], weights [N, k] contiguous."""
    num_tokens, top_k = weights.shape
    num_features = expert_out.shape[1]
    out = expert_out.new_empty((num_tokens, num_features))
    if num_tokens == 0 or num_features == 0:
        return out
    block_d = feature_block(num_features)
    block_n = row_block(block_d, elements=4096 // top_k, cap=128)
    grid = (triton.cdiv(num_tokens, block_n), triton.cdiv(num_features, block_d))
    _combine_kernel[grid](
        expert_out,
        weights,
        inverse_permutation(slot),
        out,
        num_tokens,
        num_features,
        TOP_K=top_k,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        ACC_TYPE=accumulator_type(expert_out.dtype),
    )
    return out


def expand(tokens: Tensor, weights: Tensor, token: Tensor, slot: Tensor) -> Tensor:
    """``X[r] = w[slot r] * Y[token r]``; tokens [N, D], weights [N, k] contiguous -> [M, D]."""
    num_rows, num_features = slot.numel(), tokens.shape[1]
    out = tokens.new_empty((num_rows, num_features))
    if num_rows == 0 or num_features == 0:
        return out
    block_d = feature_block(num_features)
    block_m = row_block(block_d)
    grid = (triton.cdiv(num_rows, block_m), triton.cdiv(num_features, block_d))
    _expand_kernel[grid](
        tokens,
        weights,
        token,
        slot,
        out,
        num_rows,
        num_features,
        BLOCK_M=block_m,
        BLOCK_D=block_d,
        ACC_TYPE=accumulator_type(tokens.dtype),
    )
    return out


def rowdot(tokens: Tensor, rows: Tensor, token: Tensor, slot: Tensor, top_k: int) -> Tensor:
    """``w[slot r] = <Y[token r], X[r]>``; tokens [N, D], rows [M, D] contiguous -> [N, k]."""
    num_rows, num_features = rows.shape
    out = rows.new_zeros((tokens.shape[0], top_k))
    if num_rows == 0 or num_features == 0:
        return out
    block_d = feature_block(num_features, cap=64)
    block_m = row_block(block_d, elements=4096, cap=128)
    _rowdot_kernel[(triton.cdiv(num_rows, block_m),)](
        tokens,
        rows,
        token,
        slot,
        out,
        num_rows,
        num_features,
        BLOCK_M=block_m,
        BLOCK_D=block_d,
        ACC_TYPE=accumulator_type(rows.dtype),
    )
    return out
