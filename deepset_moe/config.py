"""Hyperparameters of DeepSet-MoE, in one serialisable dataclass.

The defaults give a strictly local, extensive model (sum pooling, linear rho) of about
200k parameters: a power-spectrum encoder (pairs within 5 Å, many-body within 4 Å), 8 experts
with top-2 routing by the centre atom's element (``identity``) through the smooth top-k gate
(:mod:`deepset_moe.gates`).
The router default was chosen by the ablation of ``results/ablation/`` (README "What
generalises and why"): routing on fragment labels (``fragment``, ``hybrid``) gave the worst
substitution generalisation (energy per atom OOD/ID 4.1 and 2.4 against 1.8), ``identity`` the
lowest worst-task force ratio at near-best ID accuracy; the fragment-aware modes stay options.
The body-ordered energy term (``body_order=3``, :mod:`deepset_moe.body_order`) was added by the
same ablation: same force ratios, the best ID error, OOD/ID energy per atom 1.56 against 1.78
(``quick``) and 3.1 against 3.7 on substitution at the ``protocol`` budget. The hierarchy of
cutoffs (``many_body_cutoff=4.0``: pair term within 5 Å, everything many-body within 4 Å) was
then chosen at the ``protocol`` budget (``results/ablation_protocol``, 3 seeds x 4 tasks): ID
force error 3-5 % and OOD force error 4-9 % lower on every task than one 5 Å cutoff, lower force
and energy OOD/ID ratios on every task but duplication's unidentified energies.

Backward compatibility: a dict without a ``gate`` key was saved before gates were selectable;
:meth:`DeepSetMoEConfig.from_dict` reads it with ``gate="topk"`` (the only gate then), so
committed checkpoints reproduce their numbers. New configs (``DeepSetMoEConfig()``,
``to_dict`` and the model registry, which completes settings from the defaults) carry
``gate="smooth_topk"``. Likewise a dict without ``body_order`` predates the term and is read
with ``body_order=0``, and one without ``many_body_cutoff`` with one cutoff (None).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from deepset_moe.body_order import BODY_ORDERS
from deepset_moe.fragments import DEFAULT_VOCABULARY, FragmentVocabulary

ROUTER_MODES = ("learned", "fragment", "hybrid", "identity", "spatial", "none")
"""Router inputs (see :mod:`deepset_moe.router`); ``none`` is the no-MoE control."""
FRAGMENT_ROUTER_MODES = ("fragment", "hybrid")
"""Router modes that read ``batch["fragment"]``."""
GATES = ("smooth_topk", "topk")
"""Gates (see :mod:`deepset_moe.gates`)."""
LEGACY_GATE = "topk"
"""Gate of configs saved before ``gate`` existed (``from_dict`` without a ``gate`` key)."""
LEGACY_BODY_ORDER = 0
"""Body order of configs saved before ``body_order`` existed (no body-ordered term)."""
LEGACY_MANY_BODY_CUTOFF = None
"""Many-body cutoff of configs saved before ``many_body_cutoff`` existed (one cutoff)."""
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
        body_order: 0 (off), 2 or 3: add a per-atom energy linear in the encoder's
            invariants up to this body order, per centre element (2: a learned pair
            potential; 3: pairs and triplets, a linear ACE-like term); see
            :mod:`deepset_moe.body_order`.
        many_body_cutoff: radius (Å, below ``cutoff``) of the many-body part: the power
            spectrum, the latent (router and expert input) and the interactions see only
            neighbours within it (a second smooth envelope), while the scalar densities of
            the pair term keep ``cutoff``: the hierarchy of cutoffs of linear ACE fits, a
            long-ranged pair potential under a shorter-ranged many-body expansion. Needs
            ``body_order >= 2`` (nothing else reaches beyond it). None: one cutoff for all.

    Mixture of experts:
        num_experts: K.
        top_k: k experts per atom.
        router_mode: what the router logits are computed from: ``learned`` (the latent),
            ``fragment`` (an embedding of the fragment label), ``hybrid`` (both),
            ``identity`` (an embedding of the centre atom's element), ``spatial`` (a smooth
            distance-binned histogram of the neighbours) or ``none`` (no router: one expert,
            the no-MoE control; needs ``num_experts=1``, ``top_k=1``, see
            :func:`deepset_moe.model.matched_no_moe_config`).
        gate: ``smooth_topk`` (at most k experts per atom, weights C2 in the logits so the
            energy is continuous with continuous forces) or ``topk`` (the original hard top-k
            gate, energy jumps where the chosen experts change). See :mod:`deepset_moe.gates`.
        gate_width: tau of ``smooth_topk``, in logit units: an expert's weight ramps from
            zero to full as its logit rises from the smooth (k+1)-th logit threshold to tau
            above it (the threshold itself lies within tau / 2 above the (k+1)-th logit).
            Larger is gentler in positions (MD needs the logits to change by much less than
            tau per time step) but fades more atoms whose top k+1 logits are within ~tau.
        spatial_bins: number of soft distance bins, spread over [0, cutoff], of the
            ``spatial`` router's descriptor.
        fragments: the fragment vocabulary (labels and the SMARTS rules assigning them);
            its size is the number of rows of the router's fragment embedding.
        fragment_dim: width of the router's fragment and element (``identity``) embeddings.
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
    body_order: int = 3
    many_body_cutoff: float | None = 4.0

    num_experts: int = 8
    top_k: int = 2
    router_mode: str = "identity"
    gate: str = "smooth_topk"
    gate_width: float = 0.3
    spatial_bins: int = 8
    fragments: FragmentVocabulary = DEFAULT_VOCABULARY
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
        if isinstance(self.fragments, dict):
            self.fragments = FragmentVocabulary.from_dict(self.fragments)
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
                self.body_order in BODY_ORDERS,
                f"body_order must be one of {BODY_ORDERS}, got {self.body_order}",
            ),
            (
                self.many_body_cutoff is None or 0 < self.many_body_cutoff < self.cutoff,
                f"many_body_cutoff must be None or in (0, cutoff={self.cutoff}) Å, got "
                f"{self.many_body_cutoff}",
            ),
            (
                self.many_body_cutoff is None or self.body_order >= 2,
                "many_body_cutoff needs body_order 2 or 3 (the pair term is the only part "
                f"that reaches beyond it), got body_order={self.body_order}",
            ),
            (
                1 <= self.top_k <= self.num_experts,
                f"top_k must be in [1, num_experts={self.num_experts}], got {self.top_k}",
            ),
            (
                self.router_mode in ROUTER_MODES,
                f"router_mode must be one of {ROUTER_MODES}, got {self.router_mode!r}",
            ),
            (self.gate in GATES, f"gate must be one of {GATES}, got {self.gate!r}"),
            (self.gate_width > 0, f"gate_width must be > 0, got {self.gate_width}"),
            (self.spatial_bins >= 1, f"spatial_bins must be >= 1, got {self.spatial_bins}"),
            (
                self.router_mode != "none" or (self.num_experts == 1 and self.top_k == 1),
                "router_mode='none' (no MoE) needs num_experts=1 and top_k=1, got "
                f"num_experts={self.num_experts}, top_k={self.top_k}; "
                "deepset_moe.model.matched_no_moe_config builds a matched one",
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
    def num_fragments(self) -> int:
        """Size of the fragment vocabulary."""
        return len(self.fragments)

    @property
    def uses_fragments(self) -> bool:
        """Whether the router reads fragment labels (``fragment`` and ``hybrid`` modes)."""
        return self.router_mode in FRAGMENT_ROUTER_MODES

    @property
    def uses_node_energy(self) -> bool:
        """Whether per-atom energies are exact: sum pooling with a linear rho."""
        return self.pooling == "sum" and self.readout == "linear"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["atomic_numbers"] = list(self.atomic_numbers)
        out["fragments"] = self.fragments.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeepSetMoEConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise a ``ValueError`` naming them.

        Configs written before the vocabulary was stored carry ``num_fragments`` instead of
        ``fragments``; they were trained with :data:`DEFAULT_VOCABULARY`. Configs written
        before the gate was selectable carry no ``gate``: they used :data:`LEGACY_GATE`
        (``topk``), which they keep. (So do partial settings without ``gate``; pass
        ``gate="smooth_topk"``, or build through the registry, for the new default.)
        """
        data = dict(data)
        data.setdefault("gate", LEGACY_GATE)
        data.setdefault("body_order", LEGACY_BODY_ORDER)
        data.setdefault("many_body_cutoff", LEGACY_MANY_BODY_CUTOFF)
        legacy_size = data.pop("num_fragments", None)
        if legacy_size is not None and "fragments" not in data:
            if legacy_size != len(DEFAULT_VOCABULARY):
                raise ValueError(
                    f"DeepSetMoEConfig: num_fragments={legacy_size} does not match the default "
                    f"vocabulary ({len(DEFAULT_VOCABULARY)} labels) and no vocabulary is stored"
                )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"DeepSetMoEConfig: unknown keys {unknown}")
        return cls(**data)
