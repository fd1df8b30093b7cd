"""DeepSet-MoE: E = rho(pool_i h_i), h_i = sum over the k routed experts of phi(env_i).

Pipeline of :meth:`DeepSetMoE.forward` for a batch of molecules:

1. neighbour graph within ``cutoff`` (``deepset_moe.graph.radius_graph``) and differentiable
   edge vectors;
2. phi (:class:`~deepset_moe.encoder.PowerSpectrumEncoder`): invariant latent [N, F];
3. fragment-aware router (:class:`~deepset_moe.router.FragmentAwareRouter`): top-k gate;
4. experts (:class:`~deepset_moe.experts.ExpertMLPs`): h_i [N, F_out], each atom computed by
   its k experts only;
5. optional ``batch["atom_weights"]`` [N] scales h_i (for Integrated Gradients);
6. pooling (:class:`~deepset_moe.pooling.AtomPooling`) and rho
   (:class:`~deepset_moe.readout.EnergyReadout`) to the energy [B] in eV;
7. forces = -dE/dpos by autograd (eV/Å), with ``create_graph`` in training so force losses
   can be trained.

With the defaults (strictly local encoder, sum pooling, linear rho) the energy is a sum of
per-atom energies node_energy_i = rho(h_i), extensive by construction. Per-element reference
energies are added outside by :class:`deepset_moe.e0.PotentialWithE0`.

Routing makes the energy piecewise smooth in positions (see :mod:`deepset_moe.router`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from deepset_moe.checkpoint import CheckpointError, load_potential
from deepset_moe.config import DeepSetMoEConfig
from deepset_moe.e0 import PotentialWithE0
from deepset_moe.encoder import PowerSpectrumEncoder
from deepset_moe.experts import ExpertMLPs
from deepset_moe.graph import edge_vectors, radius_graph
from deepset_moe.pooling import AtomPooling
from deepset_moe.readout import EnergyReadout
from deepset_moe.router import FragmentAwareRouter
from kernels.segment_sum import segment_sum_csr

MODEL_NAME = "deepset_moe"
"""Registry / checkpoint name of this model."""


class DeepSetMoE(nn.Module):
    """The DeepSet-MoE interatomic potential (module docstring).

    ``forward(batch)`` takes the DESIGN.md batch (``z`` [N], ``pos`` [N, 3] Å, ``batch`` [N],
    ``ptr`` [B+1], ``fragment`` [N] unless ``router_mode="learned"``, optional
    ``atom_weights`` [N]) and returns:

    - ``energy`` [B] (eV), ``forces`` [N, 3] (eV/Å);
    - ``node_energy`` [N] (eV), only with sum pooling and linear rho (sums to ``energy``);
    - ``routing``: ``probs`` [N, K], ``experts`` [N, k] long, ``weights`` [N, k];
    - ``aux_loss``: scalar router loss (load balancing + z-loss, weighted);
    - ``latent`` [N, F]: the router and expert input.

    Gradients: outputs keep their graph when called with grad enabled (so e.g. Captum can
    differentiate the energy w.r.t. ``atom_weights``); under ``torch.no_grad()`` forces are
    still computed and every output is detached. The caller's ``pos`` is never modified.
    """

    def __init__(self, config: DeepSetMoEConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else DeepSetMoEConfig()
        config = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.encoder = PowerSpectrumEncoder(config)
            self.router = FragmentAwareRouter(config)
            self.experts = ExpertMLPs(
                config.num_experts, config.latent_dim, config.expert_hidden, config.expert_out_dim
            )
            self.pooling = AtomPooling(config.pooling, config.expert_out_dim)
            self.readout = EnergyReadout(
                config.readout, config.expert_out_dim, config.readout_hidden
            )

    @property
    def cutoff(self) -> float:
        """Neighbour radius in Å."""
        return float(self.config.cutoff)

    @classmethod
    def from_config(cls, **kwargs: Any) -> DeepSetMoE:
        """``DeepSetMoE(DeepSetMoEConfig(**kwargs))``."""
        return cls(DeepSetMoEConfig(**kwargs))

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, map_location: str | torch.device = "cpu"
    ) -> PotentialWithE0:
        """Load a trained DeepSet-MoE with its stored E0s (``deepset_moe.checkpoint`` format)."""

        def build_network(model_name: str, model_config: dict[str, Any]) -> DeepSetMoE:
            if model_name != MODEL_NAME:
                raise CheckpointError(
                    f"{path}: holds model {model_name!r}, not {MODEL_NAME!r}; load it through "
                    "the model registry"
                )
            return cls(DeepSetMoEConfig.from_dict(model_config))

        return load_potential(path, build_network, map_location)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        grad_requested = torch.is_grad_enabled()
        dtype = self.experts.w1.dtype
        with torch.enable_grad():
            pos = batch["pos"]
            pos = pos.to(dtype).clone() if pos.requires_grad else pos.detach().to(dtype).clone()
            pos.requires_grad_(True)
            out = self._energy_and_auxiliaries(batch, pos)
            out["forces"] = self._forces(out["energy"], pos, grad_requested)
        if not grad_requested:
            out = _detached(out)
        return out

    def _energy_and_auxiliaries(self, batch: dict[str, Tensor], pos: Tensor) -> dict[str, Any]:
        ptr = batch["ptr"]
        edge_index = radius_graph(pos, ptr, self.cutoff)
        vectors, lengths = edge_vectors(pos, edge_index)
        latent = self.encoder(batch["z"], vectors, lengths, edge_index)
        routing = self.router(latent, batch.get("fragment"))
        h = self.experts(latent, routing.gate.experts, routing.gate.weights)
        if "atom_weights" in batch:
            h = h * _atom_weights(batch["atom_weights"], h)

        out: dict[str, Any] = {}
        if self.config.uses_node_energy:
            node_energy = self.readout(h)
            out["energy"] = segment_sum_csr(node_energy.unsqueeze(-1), ptr).squeeze(-1)
            out["node_energy"] = node_energy
        else:
            out["energy"] = self.readout(self.pooling(h, batch["batch"], ptr))
        out["routing"] = {
            "probs": routing.gate.probs,
            "experts": routing.gate.experts,
            "weights": routing.gate.weights,
        }
        out["aux_loss"] = routing.aux_loss
        out["latent"] = latent
        return out

    def _forces(self, energy: Tensor, pos: Tensor, grad_requested: bool) -> Tensor:
        """-dE/dpos [N, 3]; zeros where no atom has a neighbour and nothing is trainable."""
        if not energy.requires_grad:
            return torch.zeros_like(pos)
        (gradient,) = torch.autograd.grad(
            energy.sum(),
            pos,
            create_graph=self.training,
            retain_graph=self.training or grad_requested,
            allow_unused=True,
            materialize_grads=True,
        )
        return -gradient


def _atom_weights(weights: Tensor, h: Tensor) -> Tensor:
    """Validated ``batch["atom_weights"]`` as an [N, 1] multiplier of h [N, D]."""
    if weights.shape != h.shape[:1]:
        raise ValueError(
            f"batch['atom_weights'] has shape {tuple(weights.shape)}, expected ({h.shape[0]},)"
        )
    return weights.to(h.dtype).unsqueeze(-1)


def _detached(out: dict[str, Any]) -> dict[str, Any]:
    """Outputs with every tensor (also inside ``routing``) detached."""
    return {
        key: _detached(value) if isinstance(value, dict) else value.detach()
        for key, value in out.items()
    }
