"""Router of DeepSet-MoE: logits over K experts, a sparse gate, and the auxiliary losses.

Logits are a linear function of the router input, chosen by ``router_mode``:

- ``learned``:  the atom's latent (routing decided from the encoded environment);
- ``fragment``: an embedding of the atom's fragment label (a lookup by fragment once trained,
  independent of positions);
- ``hybrid``:   the concatenation of both (default);
- ``identity``: an embedding of the centre atom's element (experts assigned by atom type; a
  lookup, independent of positions);
- ``spatial``:  a smooth distance-binned histogram of the atom's neighbours (experts
  activated by pairwise distances):

      d_ib = 1/N_avg * sum_{j: r_ij < r_c} s_b(r_ij) u(r_ij / r_c),   b = 1..B,

  with soft bin memberships s_b(r) = softmax_b(-(r - mu_b)^2 / (2 sigma^2)) (they sum to one
  over the bins), B centres mu_b = (b - 1/2) r_c / B, sigma = r_c / B, and u the polynomial
  cutoff envelope of the encoder (:class:`deepset_moe.radial.PolynomialEnvelope`: value and
  first two derivatives vanish at r_c), so d_i is C2 in the positions, also as neighbours
  cross the cutoff;
- ``none``:     no router (the no-MoE control): one expert with gate weight 1, probabilities
  [N, 1] of ones, ``aux_loss`` zero.

The gate (``DeepSetMoEConfig.gate``, :mod:`deepset_moe.gates`) turns logits into at most k
experts per atom and their weights:

- ``smooth_topk`` (default of new models): weights are C2 functions of the logits and vanish
  (with their first two derivatives) before an expert leaves the top k, so the energy is C2
  in positions in every mode (the router inputs above are all smooth in positions);
- ``topk`` (the original gate; configs saved before gates were selectable): the k most
  probable experts with renormalised probabilities. The energy is then only piecewise smooth
  in the ``learned``, ``hybrid`` and ``spatial`` modes: it jumps where an atom's k-th and
  (k+1)-th probabilities cross, and forces (exact derivatives within each piece) do not see
  the jump. ``fragment``, ``identity`` and ``none`` routing does not depend on positions, so
  their energy is smooth with either gate.

Auxiliary losses (summed into ``aux_loss`` with their config weights):

- load balancing (Switch Transformer): K * sum_e f_e * P_e, f_e the fraction of the N*k
  assignments given to expert e, P_e the mean gate probability of e (equals 1 when uniform);
- router z-loss: mean over atoms of logsumexp(logits)^2 (keeps logits small).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from deepset_moe.config import FRAGMENT_ROUTER_MODES, DeepSetMoEConfig
from deepset_moe.gates import apply_gate
from deepset_moe.radial import PolynomialEnvelope
from deepset_moe.species import SpeciesIndex
from kernels.routing import Gate, expert_counts
from kernels.segment_sum import segment_sum_index


class Routing(NamedTuple):
    """Router output.

    Attributes:
        gate: :class:`kernels.routing.Gate` (probs [N, K], weights [N, k],
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


class SpatialDescriptor(nn.Module):
    """Smooth distance histogram d [N, B] of each atom's neighbours (module docstring).

    Args:
        cutoff: r_c, Å.
        num_bins: B.
        envelope_exponent: p of the polynomial cutoff envelope.
        avg_num_neighbors: N_avg, normalisation of the neighbour sum.
    """

    def __init__(
        self, cutoff: float, num_bins: int, envelope_exponent: int, avg_num_neighbors: float
    ) -> None:
        super().__init__()
        spacing = float(cutoff) / num_bins
        centres = spacing * (torch.arange(num_bins, dtype=torch.float64) + 0.5)
        self.register_buffer("centres", centres.float(), persistent=False)
        self.width = spacing
        self.envelope = PolynomialEnvelope(cutoff, envelope_exponent)
        self.avg_num_neighbors = float(avg_num_neighbors)

    def forward(self, lengths: Tensor, edge_index: Tensor, num_atoms: int) -> Tensor:
        """Descriptor of N atoms.

        Args:
            lengths: [E] edge lengths r_ij, Å (differentiable).
            edge_index: [2, E] long (source j, target i), ``radius_graph`` convention.
            num_atoms: N.

        Returns:
            [N, B], dimensionless (soft neighbour counts per bin / N_avg).
        """
        offsets = (lengths.unsqueeze(-1) - self.centres.to(lengths.dtype)) / self.width
        memberships = torch.softmax(-0.5 * offsets.square(), dim=-1)
        weighted = memberships * self.envelope(lengths).unsqueeze(-1)
        return segment_sum_index(weighted, edge_index[1], num_atoms) / self.avg_num_neighbors


class FragmentAwareRouter(nn.Module):
    """Router of DeepSet-MoE: logits from the input of ``router_mode``, then the ``gate``."""

    def __init__(self, config: DeepSetMoEConfig) -> None:
        super().__init__()
        self.mode = config.router_mode
        self.gate = config.gate
        self.gate_width = float(config.gate_width)
        self.num_experts = config.num_experts
        self.num_fragments = config.num_fragments
        self.top_k = config.top_k
        self.noise_std = float(config.router_noise_std)
        self.noise_seed = int(config.router_noise_seed)
        self.balance_loss_coef = float(config.balance_loss_coef)
        self.z_loss_coef = float(config.z_loss_coef)
        self._noise_generators: dict[torch.device, torch.Generator] = {}

        # Modules are created in this order so that, for one seed, the learned / fragment /
        # hybrid routers start from the same weights as before the other modes existed.
        input_dim = 0
        if self.mode in ("learned", "hybrid"):
            input_dim += config.latent_dim
        if self.mode in ("fragment", "hybrid"):
            self.fragment_embedding = nn.Embedding(config.num_fragments, config.fragment_dim)
            input_dim += config.fragment_dim
        if self.mode == "identity":
            self.species_index = SpeciesIndex(config.atomic_numbers)
            self.species_embedding = nn.Embedding(len(config.atomic_numbers), config.fragment_dim)
            input_dim += config.fragment_dim
        if self.mode == "spatial":
            self.spatial = SpatialDescriptor(
                config.cutoff,
                config.spatial_bins,
                config.envelope_exponent,
                config.avg_num_neighbors,
            )
            input_dim += config.spatial_bins
        if self.mode != "none":
            self.logits = nn.Linear(input_dim, config.num_experts)

    @property
    def uses_fragments(self) -> bool:
        """Whether routing reads fragment labels (``fragment`` and ``hybrid`` modes)."""
        return self.mode in FRAGMENT_ROUTER_MODES

    def router_input(
        self,
        latent: Tensor,
        fragment: Tensor | None = None,
        z: Tensor | None = None,
        lengths: Tensor | None = None,
        edge_index: Tensor | None = None,
    ) -> Tensor:
        """[N, input_dim] features the logits are computed from (see :meth:`forward`)."""
        parts = []
        if self.mode in ("learned", "hybrid"):
            parts.append(latent)
        if self.mode in ("fragment", "hybrid"):
            parts.append(self.fragment_embedding(self._checked_fragment(fragment, latent)))
        if self.mode == "identity":
            if z is None:
                raise KeyError("router_mode='identity' needs the atomic numbers z [N]")
            parts.append(self.species_embedding(self.species_index(z)))
        if self.mode == "spatial":
            if lengths is None or edge_index is None:
                raise KeyError("router_mode='spatial' needs edge lengths [E] and edge_index")
            parts.append(self.spatial(lengths, edge_index, latent.shape[0]))
        if not parts:
            raise ValueError(f"router_mode={self.mode!r} has no router input")
        return torch.cat([part.to(latent.dtype) for part in parts], dim=-1)

    def _checked_fragment(self, fragment: Tensor | None, latent: Tensor) -> Tensor:
        """``fragment`` [N] after checking shape and range."""
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
        return fragment

    def noise(self, logits: Tensor) -> Tensor:
        """Seeded Gaussian noise like ``logits`` (its own generator per device)."""
        generator = self._noise_generators.get(logits.device)
        if generator is None:
            generator = torch.Generator(device=logits.device).manual_seed(self.noise_seed)
            self._noise_generators[logits.device] = generator
        return self.noise_std * torch.randn(
            logits.shape, generator=generator, device=logits.device, dtype=logits.dtype
        )

    def forward(
        self,
        latent: Tensor,
        fragment: Tensor | None = None,
        z: Tensor | None = None,
        lengths: Tensor | None = None,
        edge_index: Tensor | None = None,
    ) -> Routing:
        """Route N atoms.

        Args:
            latent: [N, F] encoder latents (``learned``, ``hybrid``; sets N, dtype, device).
            fragment: [N] long fragment labels (``fragment``, ``hybrid``).
            z: [N] long atomic numbers (``identity``).
            lengths: [E] edge lengths, Å, differentiable (``spatial``).
            edge_index: [2, E] long (source j, target i) of ``lengths`` (``spatial``).

        Returns:
            :class:`Routing`: gate with probs [N, K], experts [N, k], weights [N, k],
            counts [K]; and the weighted auxiliary loss (scalar).
        """
        if self.mode == "none":
            return self._single_expert(latent)
        logits = self.logits(self.router_input(latent, fragment, z, lengths, edge_index))
        if self.training and self.noise_std > 0:
            logits = logits + self.noise(logits)
        gate = apply_gate(self.gate, logits, self.top_k, self.gate_width)
        aux_loss = self.balance_loss_coef * load_balancing_loss(gate.probs, gate.counts)
        aux_loss = aux_loss + self.z_loss_coef * router_z_loss(logits)
        return Routing(gate, aux_loss)

    def _single_expert(self, latent: Tensor) -> Routing:
        """``none`` mode: every atom to expert 0 with weight 1 (no parameters, no loss)."""
        num_atoms = latent.shape[0]
        ones = latent.new_ones(num_atoms, 1)
        experts = torch.zeros(num_atoms, 1, dtype=torch.long, device=latent.device)
        gate = Gate(ones, ones, experts, expert_counts(experts, self.num_experts))
        return Routing(gate, latent.new_zeros(()))
