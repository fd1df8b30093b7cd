"""Hyperparameters of DeepSet-MoE, in one serialisable dataclass.

The defaults give a strictly local, extensive model (sum pooling, linear rho) of about
200k parameters: a power-spectrum encoder within 5 Å, 8 experts with top-2 fragment-aware
(hybrid) routing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from benchmark.fragments import NUM_FRAGMENTS

ROUTER_MODES = ("learned", "fragment", "hybrid")
POOLINGS = ("sum", "mean", "attention")
READOUTS = ("linear", "mlp")


@dataclass
class DeepSetMoEConfig:
    """Every hyperparameter of :class:`deepset_moe.DeepSetMoE`.

    Encoder (phi):
        cutoff: neighbour radius, Å.
        atomic_numbers: elements the model knows (embedding rows), in a fixed order.
        num_radial: number of Bessel radial basis functions.
        envelope_exponent: p of the polynomial cutoff envelope (value and first two
            derivatives vanish at the cutoff).
        radial_hidden: width of the bias-free radial MLP.
        l_max: maximum degree of the spherical harmonics of edge directions.
        num_channels: C, channels of the atomic density A_{i,c,l,m} (radial x species).
        species_dim: width of the centre-species embedding concatenated to the invariants.
        avg_num_neighbors: normalisation of the neighbour sums.
        encoder_hidden: hidden width of the MLP mapping invariants to the latent.
        latent_dim: F, width of the per-atom latent (router and expert input).
        num_interactions: invariant message-passing refinements of the latent (each extends
            the receptive field by one cutoff).

    Mixture of experts:
        num_experts: K.
        top_k: k experts per atom.
        router_mode: ``learned`` (latent only), ``fragment`` (fragment label only) or
            ``hybrid`` (both).
        num_fragments: fragment vocabulary size.
        fragment_dim: width of the router's fragment embedding.
        router_noise_std: std of Gaussian noise added to router logits in training (0: off).
        router_noise_seed: seed of the router-noise generator.
        balance_loss_coef: weight of the Switch load-balancing loss in ``aux_loss``.
        z_loss_coef: weight of the router z-loss in ``aux_loss``.
        expert_hidden: hidden width of each expert MLP.
        expert_out_dim: F_out, width of h_i.

    Aggregation:
        pooling: ``sum``, ``mean`` or ``attention`` over the atoms of a molecule.
        readout: rho, ``linear`` (bias-free, keeps energy extensive) or ``mlp``.
        readout_hidden: hidden width of the MLP rho.

    seed: seed of the parameter initialisation.
    """

    cutoff: float = 5.0
    atomic_numbers: tuple[int, ...] = (1, 6, 7, 8)
    num_radial: int = 8
    envelope_exponent: int = 6
    radial_hidden: int = 32
    l_max: int = 3
    num_channels: int = 16
    species_dim: int = 16
    avg_num_neighbors: float = 12.0
    encoder_hidden: int = 128
    latent_dim: int = 128
    num_interactions: int = 0

    num_experts: int = 8
    top_k: int = 2
    router_mode: str = "hybrid"
    num_fragments: int = NUM_FRAGMENTS
    fragment_dim: int = 16
    router_noise_std: float = 0.0
    router_noise_seed: int = 0
    balance_loss_coef: float = 0.01
    z_loss_coef: float = 0.001
    expert_hidden: int = 64
    expert_out_dim: int = 64

    pooling: str = "sum"
    readout: str = "linear"
    readout_hidden: int = 64

    seed: int = 0

    def __post_init__(self) -> None:
        self.atomic_numbers = tuple(int(z) for z in self.atomic_numbers)
        checks = [
            (self.cutoff > 0, f"cutoff must be > 0 Å, got {self.cutoff}"),
            (len(self.atomic_numbers) > 0, "atomic_numbers must not be empty"),
            (
                len(set(self.atomic_numbers)) == len(self.atomic_numbers)
                and all(z >= 1 for z in self.atomic_numbers),
                f"atomic_numbers must be distinct and >= 1, got {self.atomic_numbers}",
            ),
            (self.l_max >= 0, f"l_max must be >= 0, got {self.l_max}"),
            (self.num_interactions >= 0, "num_interactions must be >= 0"),
            (
                1 <= self.top_k <= self.num_experts,
                f"top_k must be in [1, num_experts={self.num_experts}], got {self.top_k}",
            ),
            (
                self.router_mode in ROUTER_MODES,
                f"router_mode must be one of {ROUTER_MODES}, got {self.router_mode!r}",
            ),
            (self.pooling in POOLINGS, f"pooling must be one of {POOLINGS}, got {self.pooling!r}"),
            (self.readout in READOUTS, f"readout must be one of {READOUTS}, got {self.readout!r}"),
            (self.router_noise_std >= 0, "router_noise_std must be >= 0"),
            (self.balance_loss_coef >= 0 and self.z_loss_coef >= 0, "loss coefs must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"DeepSetMoEConfig: {message}")

    @property
    def uses_node_energy(self) -> bool:
        """Whether per-atom energies are exact: sum pooling with a linear rho."""
        return self.pooling == "sum" and self.readout == "linear"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["atomic_numbers"] = list(self.atomic_numbers)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeepSetMoEConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise a ``ValueError`` naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"DeepSetMoEConfig: unknown keys {unknown}")
        return cls(**data)
