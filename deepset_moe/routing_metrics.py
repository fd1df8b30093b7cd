"""Routing metrics of a mixture of experts: who handles which atoms, ID vs OOD.

Notation: N atoms, K experts, k experts per atom (top-k), F fragment classes
(``deepset_moe.fragments.FRAGMENT_NAMES``). Routing of a split is described by
:class:`RoutingStats`: the full gate distribution ``probs`` [N, K], the chosen experts
``experts`` [N, k] (column 0 is the top-1 expert) and the fragment label of each atom.

Every metric is computed in float64 on CPU. Definitions (also in each docstring):

* utilisation u_e = #{(atom, slot) assigned to e} / (N k);
* load balance = coefficient of variation of u, std(u) / mean(u) (population std);
  0 when perfectly balanced, sqrt(K - 1) when one expert takes everything;
* routing entropy H_i = -sum_e p_ie ln p_ie (nats; 0 ln 0 = 0), averaged over atoms;
  normalised by ln K it lies in [0, 1];
* NMI between fragment and top-1 expert, arithmetic-mean normalisation
  I(F; E) / ((H(F) + H(E)) / 2);
* fragment x expert matrix of (atom, slot) assignment counts and its row-normalised form
  (the expert distribution of each fragment);
* per fragment, the Jensen-Shannon divergence (base 2, in [0, 1]) between its ID and OOD
  expert distributions; NaN when the fragment is absent from either split.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from deepset_moe.batch import Batch, batch_to
from deepset_moe.e0 import unwrap_model
from deepset_moe.fragments import FRAGMENT_NAMES, NUM_FRAGMENTS

F64 = torch.float64


@dataclass
class RoutingStats:
    """Routing decisions of a model over the atoms of one split (CPU tensors).

    Attributes:
        probs: [N, K] float64 gate probabilities (each row sums to one).
        experts: [N, k] long chosen experts, column 0 the top-1 expert.
        fragment: [N] long fragment labels.
        latent: [N, D] float32 per-atom latents fed to the experts, or ``None``.
    """

    probs: Tensor
    experts: Tensor
    fragment: Tensor
    latent: Tensor | None = None

    @property
    def num_atoms(self) -> int:
        return int(self.probs.shape[0])

    @property
    def num_experts(self) -> int:
        return int(self.probs.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.experts.shape[1])


def _entropy_nats(distribution: Tensor) -> Tensor:
    """Shannon entropy (nats) along the last axis, with 0 ln 0 = 0."""
    return -torch.special.xlogy(distribution, distribution).sum(-1)


def expert_utilisation(experts: Tensor, num_experts: int) -> Tensor:
    """Fraction of the (atom, slot) assignments that go to each expert.

    Args:
        experts: [N, k] (or [N]) long chosen experts.
        num_experts: K.

    Returns:
        [K] float64, u_e = #{(i, j): experts[i, j] = e} / (N k); sums to one (zeros if N = 0).
    """
    flat = experts.reshape(-1).long().cpu()
    counts = torch.bincount(flat, minlength=num_experts).to(F64)
    total = counts.sum()
    return counts / total if total > 0 else counts


def load_balance_cv(utilisation: Tensor) -> float:
    """Coefficient of variation of expert utilisation, std(u) / mean(u).

    Population standard deviation (ddof = 0). 0 means perfectly balanced experts; the
    maximum, sqrt(K - 1), means a single expert receives every assignment. NaN if u sums to 0.
    """
    u = utilisation.to(F64)
    mean = u.mean()
    if mean <= 0:
        return math.nan
    return float(u.std(unbiased=False) / mean)


def routing_entropy(probs: Tensor) -> Tensor:
    """Entropy of each atom's full gate distribution, H_i = -sum_e p_ie ln p_ie (nats).

    Args:
        probs: [N, K] gate probabilities.

    Returns:
        [N] float64, with 0 ln 0 = 0.
    """
    return _entropy_nats(probs.detach().to(F64).cpu())


def mean_routing_entropy(probs: Tensor, normalised: bool = False) -> float:
    """Mean over atoms of :func:`routing_entropy` (nats); divided by ln K when ``normalised``.

    The normalised value lies in [0, 1]: 0 for hard (one-hot) routing, 1 for uniform gates.
    NaN for an empty split; 0 for K = 1 when normalised (a single expert is certain).
    """
    if probs.shape[0] == 0:
        return math.nan
    entropy = float(routing_entropy(probs).mean())
    if not normalised:
        return entropy
    num_experts = probs.shape[1]
    return entropy / math.log(num_experts) if num_experts > 1 else 0.0


def fragment_expert_counts(
    fragment: Tensor, experts: Tensor, num_fragments: int, num_experts: int
) -> Tensor:
    """Contingency matrix C[f, e] = number of (atom, slot) assignments of fragment f to e.

    Args:
        fragment: [N] long fragment labels.
        experts: [N, k] long (all slots) or [N] long (e.g. top-1 only, ``experts[:, 0]``).
        num_fragments: F.
        num_experts: K.

    Returns:
        [F, K] float64 counts.
    """
    experts = experts.reshape(fragment.shape[0], -1).long().cpu()
    rows = fragment.long().cpu().unsqueeze(1).expand_as(experts)
    flat = (rows * num_experts + experts).reshape(-1)
    counts = torch.bincount(flat, minlength=num_fragments * num_experts)
    return counts.to(F64).reshape(num_fragments, num_experts)


def row_normalise(counts: Tensor) -> Tensor:
    """Each row divided by its sum: the expert distribution of each fragment.

    Rows with zero total (fragment absent) become NaN, so that an absent fragment is never
    mistaken for one routed nowhere.
    """
    counts = counts.to(F64)
    totals = counts.sum(-1, keepdim=True)
    return torch.where(totals > 0, counts / totals.clamp_min(1e-300), torch.nan)


def normalised_mutual_information(contingency: Tensor) -> float:
    """Arithmetic-mean NMI between the row and column variables of a contingency table.

    NMI = I(F; E) / ((H(F) + H(E)) / 2), with the joint distribution P = C / sum(C)
    (natural logs; the ratio does not depend on the base). Used with C from
    :func:`fragment_expert_counts` on the top-1 expert: 1 means the fragment determines the
    expert and vice versa, 0 means routing ignores fragments.

    Degenerate cases: NaN for an empty table; 1.0 when both variables are constant (a single
    fragment routed to a single expert is a perfect, if trivial, match, as in scikit-learn);
    0.0 when exactly one of them is constant (I = 0).
    """
    joint = contingency.to(F64)
    total = joint.sum()
    if total <= 0:
        return math.nan
    joint = joint / total
    p_row, p_col = joint.sum(1), joint.sum(0)
    h_row, h_col = float(_entropy_nats(p_row)), float(_entropy_nats(p_col))
    if h_row == 0.0 and h_col == 0.0:
        return 1.0
    independent = p_row.unsqueeze(1) * p_col.unsqueeze(0)
    mask = joint > 0
    mutual = float((joint[mask] * (joint[mask] / independent[mask]).log()).sum())
    return max(0.0, min(1.0, mutual / (0.5 * (h_row + h_col))))


def jensen_shannon_divergence(p: Tensor, q: Tensor) -> Tensor:
    """Jensen-Shannon divergence in bits along the last axis, in [0, 1].

    JSD(p, q) = (KL(p || m) + KL(q || m)) / 2 with m = (p + q) / 2 and log base 2. Inputs are
    normalised to sum to one; NaN rows (absent fragments) give NaN.

    Args:
        p, q: [..., K] non-negative weights.

    Returns:
        [...] float64.
    """
    p = p.to(F64) / p.to(F64).sum(-1, keepdim=True)
    q = q.to(F64) / q.to(F64).sum(-1, keepdim=True)
    m = 0.5 * (p + q)
    kl_pm = (torch.special.xlogy(p, p) - torch.special.xlogy(p, m)).sum(-1)
    kl_qm = (torch.special.xlogy(q, q) - torch.special.xlogy(q, m)).sum(-1)
    return (0.5 * (kl_pm + kl_qm) / math.log(2.0)).clamp(0.0, 1.0)


def fragment_js_divergence(id_counts: Tensor, ood_counts: Tensor) -> Tensor:
    """Per-fragment JSD (bits) between ID and OOD expert distributions.

    Args:
        id_counts, ood_counts: [F, K] from :func:`fragment_expert_counts`.

    Returns:
        [F] float64 in [0, 1]; NaN for a fragment with no atoms in either split (a divergence
        between a distribution and nothing is undefined, so it is reported as missing).
    """
    return jensen_shannon_divergence(row_normalise(id_counts), row_normalise(ood_counts))


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def collect_routing(
    model: nn.Module, loader: Iterable[Batch], max_batches: int | None = None
) -> RoutingStats | None:
    """Run the bare network over ``loader`` (eval mode) and gather its routing decisions.

    The forward runs under ``torch.no_grad()``: models of this project (DeepSet-MoE and the
    baselines) enable gradients internally for their forces and return detached outputs
    there, so no graph is kept. The model's train/eval mode is restored afterwards.

    Args:
        model: a potential, possibly wrapped in ``PotentialWithE0`` and/or DDP.
        loader: iterable of DESIGN.md batches.
        max_batches: stop after this many batches (``None``: all).

    Returns:
        :class:`RoutingStats` over all visited atoms, or ``None`` when the model output has
        no ``routing`` (a model without experts) or the loader is empty.
    """
    network = unwrap_model(model)
    device = _model_device(network)
    was_training = network.training
    network.eval()
    probs, experts, fragments, latents = [], [], [], []
    try:
        for index, batch in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            with torch.no_grad():
                out = network(batch_to(batch, device))
            if "routing" not in out:
                return None
            routing = out["routing"]
            probs.append(routing["probs"].detach().to("cpu", F64))
            experts.append(routing["experts"].detach().long().cpu())
            fragments.append(batch["fragment"].long().cpu())
            if "latent" in out:
                latents.append(out["latent"].detach().float().cpu())
    finally:
        network.train(was_training)
    if not probs:
        return None
    return RoutingStats(
        probs=torch.cat(probs),
        experts=torch.cat(experts),
        fragment=torch.cat(fragments),
        latent=torch.cat(latents) if len(latents) == len(probs) else None,
    )


def _finite_or_none(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _matrix_to_json(matrix: Tensor) -> list[list[float | None]]:
    return [[_finite_or_none(v) for v in row] for row in matrix.tolist()]


def split_summary(stats: RoutingStats, num_fragments: int = NUM_FRAGMENTS) -> dict:
    """JSON-serialisable routing metrics of one split (see the module docstring).

    Keys: ``num_atoms``, ``utilisation`` [K], ``load_balance_cv``, ``entropy_nats``,
    ``entropy_normalised``, ``nmi_fragment_top1`` and ``fragment_expert_counts`` /
    ``fragment_expert_fraction`` ([F][K]; absent fragments have ``None`` fractions).
    """
    num_experts = stats.num_experts
    utilisation = expert_utilisation(stats.experts, num_experts)
    counts = fragment_expert_counts(stats.fragment, stats.experts, num_fragments, num_experts)
    top1 = fragment_expert_counts(stats.fragment, stats.experts[:, 0], num_fragments, num_experts)
    return {
        "num_atoms": stats.num_atoms,
        "utilisation": utilisation.tolist(),
        "load_balance_cv": _finite_or_none(load_balance_cv(utilisation)),
        "entropy_nats": _finite_or_none(mean_routing_entropy(stats.probs)),
        "entropy_normalised": _finite_or_none(mean_routing_entropy(stats.probs, True)),
        "nmi_fragment_top1": _finite_or_none(normalised_mutual_information(top1)),
        "fragment_expert_counts": counts.tolist(),
        "fragment_expert_fraction": _matrix_to_json(row_normalise(counts)),
    }


def routing_summary(
    id_stats: RoutingStats,
    ood_stats: RoutingStats,
    fragment_names: tuple[str, ...] = FRAGMENT_NAMES,
) -> dict:
    """ID vs OOD routing metrics as a JSON-serialisable dict (trainer logs, reports).

    Returns:
        ``{"num_experts", "top_k", "fragment_names", "id": split_summary(ID),
        "ood": split_summary(OOD), "js_divergence": {fragment: bits or None},
        "js_divergence_mean": mean over fragments present in both splits (or None)}``.
    """
    if id_stats.num_experts != ood_stats.num_experts:
        raise ValueError(
            f"ID and OOD routing have different expert counts "
            f"({id_stats.num_experts} vs {ood_stats.num_experts})"
        )
    num_fragments = len(fragment_names)
    num_experts = id_stats.num_experts
    js = fragment_js_divergence(
        fragment_expert_counts(id_stats.fragment, id_stats.experts, num_fragments, num_experts),
        fragment_expert_counts(ood_stats.fragment, ood_stats.experts, num_fragments, num_experts),
    )
    present = js[~js.isnan()]
    return {
        "num_experts": num_experts,
        "top_k": id_stats.top_k,
        "fragment_names": list(fragment_names),
        "id": split_summary(id_stats, num_fragments),
        "ood": split_summary(ood_stats, num_fragments),
        "js_divergence": {
            name: _finite_or_none(value) for name, value in zip(fragment_names, js.tolist())
        },
        "js_divergence_mean": float(present.mean()) if present.numel() else None,
    }
