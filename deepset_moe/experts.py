"""The K expert MLPs of DeepSet-MoE, computed sparsely (each atom only by its k experts).

Expert e maps a latent x [F] to h = W2_e SiLU(W1_e x + b1_e) + b2_e [F_out]. The sparse path
groups the N*k (atom, slot) assignments by expert with ``kernels.routing.dispatch``, runs
every expert's MLP on its contiguous slice with ``kernels.grouped.grouped_mlp`` and scatters
back with ``kernels.routing.combine``:

    h_i = sum_{j < k} weights[i, j] * expert_{experts[i, j]}(x_i).

On CUDA every step is a Triton kernel and none reads a tensor on the host, so a training step
does not wait on the GPU here; on CPU ``grouped_mlp`` runs one MLP per expert, bitwise as a
Python loop over the experts.

:meth:`ExpertMLPs.dense_reference` evaluates every expert on every atom and gathers, as the
definition the sparse path is tested against.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from kernels.grouped import grouped_mlp
from kernels.routing import combine, dispatch


class ExpertMLPs(nn.Module):
    """K two-layer MLPs with stacked parameters ([K, ...] tensors)."""

    def __init__(self, num_experts: int, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.w1 = nn.Parameter(torch.empty(num_experts, in_dim, hidden_dim))
        self.b1 = nn.Parameter(torch.zeros(num_experts, hidden_dim))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden_dim, out_dim))
        self.b2 = nn.Parameter(torch.zeros(num_experts, out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """LeCun-normal weights (std 1/sqrt(fan_in), as ``deepset_moe.mlp``), zero biases."""
        for weight in (self.w1, self.w2):
            nn.init.normal_(weight, std=1.0 / math.sqrt(weight.shape[1]))
        nn.init.zeros_(self.b1)
        nn.init.zeros_(self.b2)

    def forward(self, x: Tensor, experts: Tensor, weights: Tensor) -> Tensor:
        """Sparse mixture.

        Args:
            x: [N, in_dim] latents.
            experts: [N, k] long, chosen experts of each atom.
            weights: [N, k] gate weights.

        Returns:
            [N, out_dim] weighted sum of each atom's k expert outputs.
        """
        groups = dispatch(experts, self.num_experts)
        rows = x[groups.token]
        expert_out = grouped_mlp(rows, self.w1, self.b1, self.w2, self.b2, groups.offsets)
        return combine(expert_out, weights, groups)

    def dense_reference(self, x: Tensor, experts: Tensor, weights: Tensor) -> Tensor:
        """Same result as :meth:`forward`, computing all K experts on all N atoms."""
        hidden = torch.einsum("nf,efh->enh", x, self.w1) + self.b1[:, None]
        hidden = torch.nn.functional.silu(hidden)
        every = torch.einsum("enh,eho->eno", hidden, self.w2) + self.b2[:, None]  # [K, N, out]
        atoms = torch.arange(x.shape[0], device=x.device).unsqueeze(-1)
        chosen = every[experts, atoms]  # [N, k, out]
        return (weights.unsqueeze(-1) * chosen).sum(dim=1)
