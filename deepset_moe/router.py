"""Fragment-aware top-k router of DeepSet-MoE and its auxiliary losses.

Logits over K experts are a linear function of the router input:

- ``learned``:  the atom's latent (router decides from the environment alone);
- ``fragment``: an embedding of the atom's fragment label (routing is a fixed lookup by
  fragment once trained, independent of positions);
- ``hybrid``:   the concatenation of both (default).

The top-k gate (``kernels.routing.topk_gate``) keeps the k most probable experts and
renormalises their probabilities into gate weights.

Smoothness (honest statement): the gate weights and the expert outputs are smooth functions
of positions *while the chosen set of experts does not change*. When, under a displacement,
the k-th and (k+1)-th probabilities of an atom cross, the chosen set switches and the energy
jumps by w * (expert_k(x) - expert_{k+1}(x)) read out by rho: the energy is piecewise smooth,
with discontinuities on those switching surfaces, and forces (exact autograd derivatives
within each piece) do not see the jump. In ``fragment`` mode the routing does not depend on
positions and the energy is smooth everywhere. Physics tests therefore check that the
routing is identical between the configurations they compare.

Auxiliary losses (summed into ``aux_loss`` with their config weights):

- load balancing (Switch Transformer): K * sum_e f_e * P_e, f_e the fraction of the N*k
  assignments given to expert e, P_e the mean gate probability of e (equals 1 when uniform);
- router z-loss: mean over atoms of logsumexp(logits)^2 (keeps logits small).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from deepset_moe.config import DeepSetMoEConfig
from kernels.routing import Gate, topk_gate


class Routing(NamedTuple):
    """Router output.

    Attributes:
        gate: top-k :class:`kernels.routing.Gate` (probs [N, K], weights [N, k],
            experts [N, k], counts [K]).
        aux_loss: scalar, weighted sum of balance and z-losses.
    """

    gate: Gate
    aux_loss: Tensor


def load_balancing_loss(probs: Tensor, counts: Tensor) -> Tensor:
    """Switch load-balancing loss K * sum_e f_e P_e from probs [N, K] and counts [K]."""
    num_experts = probs.shape[-1]
    fraction = counts.to(probs.dtype) / counts.sum().clamp(min=1)
    return num_experts * (fraction * probs.mean(dim=0)).sum()


def router_z_loss(logits: Tensor) -> Tensor:
    """Mean over atoms of logsumexp(logits)^2, logits [N, K]."""
    return torch.logsumexp(logits, dim=-1).square().mean()


class FragmentAwareRouter(nn.Module):
    """Linear router over [latent, fragment embedding] according to ``router_mode``."""

    def __init__(self, config: DeepSetMoEConfig) -> None:
        super().__init__()
        self.mode = config.router_mode
        self.num_fragments = config.num_fragments
        self.top_k = config.top_k
        self.noise_std = float(config.router_noise_std)
        self.noise_seed = int(config.router_noise_seed)
        self.balance_loss_coef = float(config.balance_loss_coef)
        self.z_loss_coef = float(config.z_loss_coef)
        self._noise_generators: dict[torch.device, torch.Generator] = {}

        input_dim = 0
        if self.mode in ("learned", "hybrid"):
            input_dim += config.latent_dim
        if self.mode in ("fragment", "hybrid"):
            self.fragment_embedding = nn.Embedding(config.num_fragments, config.fragment_dim)
            input_dim += config.fragment_dim
        self.logits = nn.Linear(input_dim, config.num_experts)

    def router_input(self, latent: Tensor, fragment: Tensor | None) -> Tensor:
        """[N, input_dim] features the logits are computed from."""
        parts = []
        if self.mode in ("learned", "hybrid"):
            parts.append(latent)
        if self.mode in ("fragment", "hybrid"):
            if fragment is None:
                raise KeyError(f"router_mode={self.mode!r} needs batch['fragment'] [N] labels")
            if fragment.shape != latent.shape[:1]:
                raise ValueError(
                    f"batch['fragment'] has shape {tuple(fragment.shape)}, expected "
                    f"({latent.shape[0]},)"
                )
            if bool(((fragment < 0) | (fragment >= self.num_fragments)).any()):
                bad = sorted({int(v) for v in fragment.tolist() if not 0 <= v < self.num_fragments})
                raise ValueError(
                    f"fragment label(s) {bad} outside the vocabulary [0, {self.num_fragments})"
                )
            parts.append(self.fragment_embedding(fragment).to(latent.dtype))
        return torch.cat(parts, dim=-1)

    def noise(self, logits: Tensor) -> Tensor:
        """Seeded Gaussian noise like ``logits`` (its own generator per device)."""
        generator = self._noise_generators.get(logits.device)
        if generator is None:
            generator = torch.Generator(device=logits.device).manual_seed(self.noise_seed)
            self._noise_generators[logits.device] = generator
        return self.noise_std * torch.randn(
            logits.shape, generator=generator, device=logits.device, dtype=logits.dtype
        )

    def forward(self, latent: Tensor, fragment: Tensor | None = None) -> Routing:
        """Route N atoms: latent [N, F], fragment [N] long (needed unless ``learned``)."""
        logits = self.logits(self.router_input(latent, fragment))
        if self.training and self.noise_std > 0:
            logits = logits + self.noise(logits)
        gate = topk_gate(logits, self.top_k)
        aux_loss = self.balance_loss_coef * load_balancing_loss(gate.probs, gate.counts)
        aux_loss = aux_loss + self.z_loss_coef * router_z_loss(logits)
        return Routing(gate, aux_loss)
