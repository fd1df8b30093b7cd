"""rho: the readout from pooled features [B, D] (or per-atom features [N, D]) to energies.

- ``linear``: a bias-free linear map. It commutes with sum pooling, so
  E = rho(sum_i h_i) = sum_i rho(h_i) is exactly a sum of per-atom energies, extensive, and
  rho(0) = 0 (the per-element offsets live in E0, outside the network).
- ``mlp``: a two-layer MLP (non-linear in the pooled features; no per-atom decomposition).
"""

from __future__ import annotations

from torch import Tensor, nn

from deepset_moe.mlp import build_mlp


class EnergyReadout(nn.Module):
    """rho: features [..., D] -> energies [...] in eV."""

    def __init__(self, mode: str, in_dim: int, hidden_dim: int) -> None:
        super().__init__()
        if mode not in ("linear", "mlp"):
            raise ValueError(f"unknown readout {mode!r}; use 'linear' or 'mlp'")
        self.mode = mode
        widths = [in_dim, 1] if mode == "linear" else [in_dim, hidden_dim, 1]
        self.net = build_mlp(widths, bias=mode == "mlp")

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features).squeeze(-1)
