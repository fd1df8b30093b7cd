"""DeepSet-MoE: E = rho(pool_i h_i), h_i = sum over the k routed experts of phi(env_i).

Pipeline of :meth:`DeepSetMoE.forward` for a batch of molecules:

1. neighbour graph within ``cutoff`` (``deepset_moe.graph.radius_graph``) and differentiable
   edge vectors;
2. phi (:class:`~deepset_moe.encoder.PowerSpectrumEncoder`): invariant latent [N, F];
3. router (:class:`~deepset_moe.router.FragmentAwareRouter`): logits from the latent, the
   fragment label, the element or a distance histogram (``router_mode``), then a sparse gate
   (``gate``: smooth top-k by default, :mod:`deepset_moe.gates`);
4. experts (:class:`~deepset_moe.experts.ExpertMLPs`): h_i [N, F_out], each atom computed by
   its k experts only;
5. optional ``batch["atom_weights"]`` [N] scales h_i and the atom's body-ordered energy
   (for Integrated Gradients);
6. pooling (:class:`~deepset_moe.pooling.AtomPooling`) and rho
   (:class:`~deepset_moe.readout.EnergyReadout`) to the energy [B] in eV, plus, with
   ``body_order`` 2 or 3, a per-atom energy linear in the encoder's invariants
   (:mod:`deepset_moe.body_order`);
7. forces = -dE/dpos by autograd (eV/Å), with ``create_graph`` in training so force losses
   can be trained.

With the defaults (strictly local encoder, sum pooling, linear rho) the energy is a sum of
per-atom energies node_energy_i = rho(h_i), extensive by construction. Per-element reference
energies are added outside by :class:`deepset_moe.e0.PotentialWithE0`.

With the smooth top-k gate the energy is C2 in positions in every router mode; with the hard
``topk`` gate it is piecewise smooth where routing depends on positions (see
:mod:`deepset_moe.router`).

No-MoE control: ``router_mode="none"`` with one expert; :func:`matched_no_moe_config` widens
that expert so the parameter count matches a given MoE config as closely as possible.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from deepset_moe.body_order import LinearBodyOrderEnergy
from deepset_moe.checkpoint import CheckpointError, load_potential
from deepset_moe.config import DeepSetMoEConfig
from deepset_moe.e0 import PotentialWithE0
from deepset_moe.encoder import PowerSpectrumEncoder
from deepset_moe.experts import ExpertMLPs
from deepset_moe.forces import forces_from_energy
from deepset_moe.fragments import FragmentVocabulary
from deepset_moe.graph import edge_vectors, radius_graph
from deepset_moe.pooling import AtomPooling
from deepset_moe.readout import EnergyReadout
from deepset_moe.router import FragmentAwareRouter
from kernels.segment_sum import segment_sum_csr


class DeepSetMoE(nn.Module):
    """The DeepSet-MoE interatomic potential (module docstring).

    ``forward(batch)`` takes the DESIGN.md batch (``z`` [N], ``pos`` [N, 3] Å, ``batch`` [N],
    ``ptr`` [B+1], ``fragment`` [N] when ``needs_fragments``, optional
    ``atom_weights`` [N]) and returns:

    - ``energy`` [B] (eV), ``forces`` [N, 3] (eV/Å);
    - ``node_energy`` [N] (eV), only with sum pooling and linear rho (sums to ``energy``);
    - ``routing``: ``probs`` [N, K], ``experts`` [N, k] long, ``weights`` [N, k] (>= 0,
      summing to at most one; to one with the ``topk`` gate);
    - ``aux_loss``: scalar router loss (load balancing + z-loss, weighted);
    - ``latent`` [N, F]: the router and expert input.

    Gradients: outputs keep their graph when called with grad enabled (so e.g. Captum can
    differentiate the energy w.r.t. ``atom_weights``); under ``torch.no_grad()`` forces are
    still computed and every output is detached. The caller's ``pos`` is never modified.
    """

    has_routing = True
    """Declares that ``forward`` returns ``routing`` and ``aux_loss`` (read by the trainer's
    callbacks and the report, which never compare model names)."""

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
            self.body_order_energy = (
                LinearBodyOrderEnergy(
                    len(config.atomic_numbers), self.encoder.invariant_width(config.body_order)
                )
                if config.body_order
                else None
            )

    @property
    def cutoff(self) -> float:
        """Neighbour radius in Å."""
        return float(self.config.cutoff)

    @classmethod
    def from_config(cls, **settings: Any) -> DeepSetMoE:
        """``DeepSetMoE(DeepSetMoEConfig.from_dict(settings))`` (the registry's and the
        checkpoint loader's constructor).

        Settings without ``gate`` are read as a config saved before gates were selectable
        (``gate="topk"``, see :meth:`DeepSetMoEConfig.from_dict`); the registry completes
        settings from :meth:`default_settings`, so the models it builds get the smooth gate.
        """
        return cls(DeepSetMoEConfig.from_dict(settings))

    @staticmethod
    def default_settings() -> dict[str, Any]:
        """JSON-able default settings (those of :class:`DeepSetMoEConfig`)."""
        return DeepSetMoEConfig().to_dict()

    @staticmethod
    def canonical_settings(settings: dict[str, Any]) -> dict[str, Any]:
        """``settings`` with every field, as :meth:`from_config` reads them (keys missing
        from a config saved by an older version get their legacy values), JSON-able: two
        settings build the same model exactly when their canonical forms are equal."""
        return DeepSetMoEConfig.from_dict(settings).to_dict()

    @property
    def fragment_vocabulary(self) -> FragmentVocabulary:
        """The vocabulary whose labels the router reads (``batch["fragment"]``)."""
        return self.config.fragments

    @property
    def needs_fragments(self) -> bool:
        """Whether ``forward`` reads ``batch["fragment"]``."""
        return self.router.uses_fragments

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, map_location: str | torch.device = "cpu"
    ) -> PotentialWithE0:
        """Load a trained DeepSet-MoE with its stored E0s (any model: :func:`load_potential`).

        Raises:
            CheckpointError: the file holds another model.
        """
        potential = load_potential(path, map_location)
        if not isinstance(potential.network, cls):
            raise CheckpointError(
                f"{path}: holds model {type(potential.network).__name__}, not {cls.__name__}; "
                "use deepset_moe.load_potential for any model"
            )
        return potential

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        grad_requested = torch.is_grad_enabled()
        dtype = self.experts.w1.dtype
        with torch.enable_grad():
            pos = batch["pos"]
            pos = pos.to(dtype).clone() if pos.requires_grad else pos.detach().to(dtype).clone()
            pos.requires_grad_(True)
            out = self._energy_and_auxiliaries(batch, pos)
            out["forces"] = forces_from_energy(
                out["energy"],
                pos,
                create_graph=self.training,
                retain_graph=self.training or grad_requested,
            )
        if not grad_requested:
            out = _detached(out)
        return out

    def _energy_and_auxiliaries(self, batch: dict[str, Tensor], pos: Tensor) -> dict[str, Any]:
        ptr = batch["ptr"]
        edge_index = radius_graph(pos, ptr, self.cutoff)
        vectors, lengths = edge_vectors(pos, edge_index)
        encoded = self.encoder.encode(batch["z"], vectors, lengths, edge_index)
        latent = encoded.latent
        routing = self.router(
            latent, batch.get("fragment"), z=batch["z"], lengths=lengths, edge_index=edge_index
        )
        h = self.experts(latent, routing.gate.experts, routing.gate.weights)
        body_energy = (
            self.body_order_energy(encoded.invariants, encoded.species)
            if self.body_order_energy is not None
            else None
        )
        if "atom_weights" in batch:
            weights = _atom_weights(batch["atom_weights"], h)
            h = h * weights
            if body_energy is not None:
                body_energy = body_energy * weights.squeeze(-1)

        out: dict[str, Any] = {}
        if self.config.uses_node_energy:
            node_energy = self.readout(h)
            if body_energy is not None:
                node_energy = node_energy + body_energy
            out["energy"] = segment_sum_csr(node_energy.unsqueeze(-1), ptr).squeeze(-1)
            out["node_energy"] = node_energy
        else:
            out["energy"] = self.readout(self.pooling(h, batch["batch"], ptr))
            if body_energy is not None:
                out["energy"] = out["energy"] + segment_sum_csr(
                    body_energy.unsqueeze(-1), ptr
                ).squeeze(-1)
        out["routing"] = {
            "probs": routing.gate.probs,
            "experts": routing.gate.experts,
            "weights": routing.gate.weights,
        }
        out["aux_loss"] = routing.aux_loss
        out["latent"] = latent
        return out


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of ``module``."""
    return sum(parameter.numel() for parameter in module.parameters())


def matched_no_moe_config(config: DeepSetMoEConfig | None = None) -> DeepSetMoEConfig:
    """The no-MoE control of ``config`` (default: :class:`DeepSetMoEConfig()`).

    Same settings (encoder, pooling, readout, seed, ...) with ``router_mode="none"``, one
    expert, ``top_k=1`` and the expert's hidden width H chosen so that the model's parameter
    count is as close as possible to that of ``config``. Rule: the router and the K experts
    of ``config`` hold P parameters; one expert of width H holds
    H * (latent_dim + 1 + expert_out_dim) + expert_out_dim; H is the integer (>= 1) that
    minimises the difference (everything else is shared). For the defaults (identity router,
    8 experts of width 64, body-ordered term) H = 515: 194,563 parameters against 194,632; for the
    hybrid router without the term (the ablation's control)
    H = 521: 193,481 against 193,480.
    """
    config = config if config is not None else DeepSetMoEConfig()
    reference = DeepSetMoE(config)
    target = count_parameters(reference.router) + count_parameters(reference.experts)
    per_hidden = config.latent_dim + 1 + config.expert_out_dim
    ideal = (target - config.expert_out_dim) / per_hidden
    candidates = {max(1, int(ideal)), max(1, int(ideal) + 1)}
    hidden = min(
        sorted(candidates),
        key=lambda h: abs(h * per_hidden + config.expert_out_dim - target),
    )
    return dataclasses.replace(
        config, router_mode="none", num_experts=1, top_k=1, expert_hidden=hidden
    )


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
