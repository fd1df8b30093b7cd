"""Integrated-Gradients attributions of each molecule's energy to its atoms (Captum).

DeepSet-MoE multiplies each atom's expert output h_i by ``batch["atom_weights"]`` a_i
before pooling, E(a) = rho(pool_i a_i h_i). Integrated Gradients
(:class:`captum.attr.IntegratedGradients`) from the baseline a = 0 to the input a = 1 gives

    attr_i = integral_0^1 dE/da_i (alpha 1) d alpha,     sum_i attr_i = E(1) - E(0)

(completeness). ``E(0) = rho(pool(0))``: zero for the default linear, bias-free rho, a
constant for an MLP rho. The per-element E0 of :class:`~deepset_moe.e0.PotentialWithE0` does
not depend on a and cancels, so attributions are computed on the bare network and
``energy`` below is the network energy (E minus sum_i E0(z_i)), in eV.

With sum pooling and the linear rho, E(a) = sum_i a_i rho(h_i) is linear in a, so IG is
exact and attr_i equals the network's per-atom energy rho(h_i) (``node_energy`` minus E0):
the attribution then *is* the model's own energy decomposition. With an MLP rho it is a
non-trivial path integral; Captum's convergence delta, sum_i attr_i - (E(1) - E(0)) per
molecule, measures the quadrature error and is reported. Captum (0.9) rounds its quadrature
weights to float32, so even with a float64 network completeness and the linear-rho identity
hold to a relative ~1e-7, not to machine precision.

Attributions are then summed per fragment and per top-1 expert (the expert with the largest
gate probability), and ID vs OOD summaries, text tables and a figure are produced.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from captum.attr import IntegratedGradients
from matplotlib.figure import Figure
from torch import Tensor, nn

from deepset_moe.batch import Batch
from deepset_moe.e0 import unwrap_model
from deepset_moe.fragments import FRAGMENT_NAMES
from deepset_moe.routing_plots import draw_fragment_expert_heatmap

F64 = torch.float64
MODEL_KEYS = ("z", "pos", "fragment")


@dataclass
class AttributionResult:
    """Per-atom IG attributions over a set of molecules (CPU, float64 unless noted).

    Attributes:
        attribution: [N] eV, attr_i.
        fragment: [N] long fragment labels.
        expert: [N] long top-1 expert of each atom (at a = 1).
        molecule: [N] long molecule index (0..M-1, in visiting order).
        energy: [M] network energy E(1), eV (no E0).
        baseline_energy: [M] E(0), eV.
        delta: [M] Captum convergence delta, sum_i attr_i - (E(1) - E(0)), eV.
        node_energy: [N] network per-atom energies (no E0) when the model has them, else None.
        num_experts: K.
    """

    attribution: Tensor
    fragment: Tensor
    expert: Tensor
    molecule: Tensor
    energy: Tensor
    baseline_energy: Tensor
    delta: Tensor
    node_energy: Tensor | None
    num_experts: int

    @property
    def num_molecules(self) -> int:
        return int(self.energy.shape[0])


def _replicated_batch(batch: Batch, copies: int) -> Batch:
    """``copies`` concatenated copies of the molecules of ``batch`` (model keys only)."""
    counts = batch["ptr"][1:] - batch["ptr"][:-1]
    all_counts = counts.repeat(copies)
    num_molecules = all_counts.numel()
    out = {key: batch[key].repeat(copies, *([1] * (batch[key].dim() - 1))) for key in MODEL_KEYS}
    out["batch"] = torch.repeat_interleave(
        torch.arange(num_molecules, device=counts.device), all_counts
    )
    out["ptr"] = torch.cat([counts.new_zeros(1), torch.cumsum(all_counts, 0)])
    return out


def _padded_mask(counts: Tensor, rows: int) -> Tensor:
    """[rows, n_max] bool, True for real atoms; row r is molecule r mod M."""
    per_row = counts.repeat(rows // counts.numel())
    width = int(counts.max())
    return torch.arange(width, device=counts.device).unsqueeze(0) < per_row.unsqueeze(1)


def attribute_batch(
    network: nn.Module, batch: Batch, n_steps: int = 32, max_atoms_per_forward: int = 20000
) -> AttributionResult:
    """IG attributions of the energies of one batch (network already unwrapped, eval mode).

    Molecules are padded to [M, n_max] weight rows (padding never reaches the model, so its
    attribution is zero). Captum evaluates the n_steps scaled rows of all M molecules in
    chunks; each chunk is one model call on replicated molecules, at most about
    ``max_atoms_per_forward`` atoms.

    Args:
        network: a DeepSet-MoE (or any model honouring ``batch["atom_weights"]``).
        batch: DESIGN.md batch on the network's device.
        n_steps: Gauss-Legendre quadrature points of the path integral.
        max_atoms_per_forward: memory bound of one model call.
    """
    ptr = batch["ptr"]
    counts = ptr[1:] - ptr[:-1]
    num_molecules = counts.numel()
    dtype = next(network.parameters()).dtype
    model_batch = {key: batch[key] for key in ("z", "pos", "fragment", "batch", "ptr")}

    def energy_of_weights(weights: Tensor) -> Tensor:
        rows = weights.shape[0]
        replicated = _replicated_batch(model_batch, rows // num_molecules)
        replicated["atom_weights"] = weights[_padded_mask(counts, rows)]
        return network(replicated)["energy"]

    width = int(counts.max())
    ones = torch.zeros(num_molecules, width, dtype=dtype, device=ptr.device)
    ones[_padded_mask(counts, num_molecules)] = 1.0
    steps_per_chunk = max(1, max_atoms_per_forward // int(counts.sum()))
    attributions, delta = IntegratedGradients(energy_of_weights).attribute(
        ones,
        baselines=torch.zeros_like(ones),
        n_steps=n_steps,
        method="gausslegendre",
        internal_batch_size=num_molecules * min(n_steps, steps_per_chunk),
        return_convergence_delta=True,
    )
    with torch.no_grad():
        out = network({**model_batch, "atom_weights": ones[ones > 0]})
        baseline = network({**model_batch, "atom_weights": torch.zeros_like(ones[ones > 0])})
    node_energy = out.get("node_energy")
    return AttributionResult(
        attribution=attributions[ones > 0].detach().to("cpu", F64),
        fragment=batch["fragment"].long().cpu().clone(),
        expert=out["routing"]["experts"][:, 0].long().cpu(),
        molecule=batch["batch"].long().cpu().clone(),
        energy=out["energy"].to("cpu", F64),
        baseline_energy=baseline["energy"].to("cpu", F64),
        delta=delta.detach().to("cpu", F64),
        node_energy=None if node_energy is None else node_energy.to("cpu", F64),
        num_experts=int(out["routing"]["probs"].shape[1]),
    )


def attribute_molecules(
    model: nn.Module,
    batches: Iterable[Batch],
    max_molecules: int | None = None,
    n_steps: int = 32,
    dtype: torch.dtype = F64,
    max_atoms_per_forward: int = 20000,
) -> AttributionResult:
    """IG attributions over the molecules of ``batches`` (at most ``max_molecules``).

    The network is unwrapped (``PotentialWithE0`` / DDP), copied and cast to ``dtype``
    (float64 by default, so the convergence delta measures quadrature error, not float32
    round-off), and run in eval mode; the caller's model is not modified.

    Raises:
        ValueError: no molecules, or a model without ``routing`` output.
    """
    network = copy.deepcopy(unwrap_model(model)).to(dtype).eval()
    device = next(network.parameters()).device
    parts: list[AttributionResult] = []
    seen = 0
    for batch in batches:
        if max_molecules is not None and seen >= max_molecules:
            break
        batch = _first_molecules(batch, None if max_molecules is None else max_molecules - seen)
        batch = {key: value.to(device) for key, value in batch.items()}
        part = attribute_batch(network, batch, n_steps, max_atoms_per_forward)
        part.molecule = part.molecule + seen
        seen += part.num_molecules
        parts.append(part)
    if not parts:
        raise ValueError("no molecules to attribute")
    return _concatenate(parts)


def _first_molecules(batch: Batch, limit: int | None) -> Batch:
    """The first ``limit`` molecules of a batch (model keys only)."""
    num_molecules = batch["ptr"].numel() - 1
    keys = ("z", "pos", "fragment", "batch", "ptr")
    if limit is None or limit >= num_molecules:
        return {key: batch[key] for key in keys}
    end = int(batch["ptr"][limit])
    atoms = {key: batch[key][:end] for key in ("z", "pos", "fragment", "batch")}
    return {**atoms, "ptr": batch["ptr"][: limit + 1]}


def _concatenate(parts: Sequence[AttributionResult]) -> AttributionResult:
    node_energies = [p.node_energy for p in parts]
    return AttributionResult(
        attribution=torch.cat([p.attribution for p in parts]),
        fragment=torch.cat([p.fragment for p in parts]),
        expert=torch.cat([p.expert for p in parts]),
        molecule=torch.cat([p.molecule for p in parts]),
        energy=torch.cat([p.energy for p in parts]),
        baseline_energy=torch.cat([p.baseline_energy for p in parts]),
        delta=torch.cat([p.delta for p in parts]),
        node_energy=None if any(e is None for e in node_energies) else torch.cat(node_energies),
        num_experts=parts[0].num_experts,
    )


def _group_sums(values: Tensor, groups: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """Sum [G] and count [G] of ``values`` per group label (float64)."""
    sums = torch.zeros(num_groups, dtype=F64).index_add_(0, groups, values.to(F64))
    counts = torch.bincount(groups, minlength=num_groups).to(F64)
    return sums, counts


def _mean_or_none(total: float, count: float) -> float | None:
    return total / count if count > 0 else None


def split_attribution_summary(
    result: AttributionResult, fragment_names: Sequence[str] = FRAGMENT_NAMES
) -> dict:
    """JSON-serialisable attribution tables of one split.

    Keys: ``molecules``, ``atoms``; ``completeness`` (``max_abs_delta``, ``mean_abs_delta``,
    ``mean_abs_energy_change`` = mean |E(1) - E(0)|, all eV); ``by_fragment`` and
    ``by_expert``: ``{name: {"atoms", "sum_eV", "mean_eV_per_atom"}}`` (mean ``None`` when
    no atom); ``fragment_expert_sum_eV`` and ``fragment_expert_mean_eV`` [F][K] (top-1 expert;
    mean ``None`` for empty cells).
    """
    num_fragments, num_experts = len(fragment_names), result.num_experts
    tables = {}
    for key, groups, names in (
        ("by_fragment", result.fragment, list(fragment_names)),
        ("by_expert", result.expert, [f"expert_{e}" for e in range(num_experts)]),
    ):
        sums, counts = _group_sums(result.attribution, groups, len(names))
        tables[key] = {
            name: {
                "atoms": int(n),
                "sum_eV": float(s),
                "mean_eV_per_atom": _mean_or_none(float(s), float(n)),
            }
            for name, s, n in zip(names, sums.tolist(), counts.tolist())
        }
    cell = result.fragment * num_experts + result.expert
    sums, counts = _group_sums(result.attribution, cell, num_fragments * num_experts)
    sums = sums.reshape(num_fragments, num_experts)
    counts = counts.reshape(num_fragments, num_experts)
    change = (result.energy - result.baseline_energy).abs()
    return {
        "molecules": result.num_molecules,
        "atoms": int(result.attribution.numel()),
        "completeness": {
            "max_abs_delta": float(result.delta.abs().max()),
            "mean_abs_delta": float(result.delta.abs().mean()),
            "mean_abs_energy_change": float(change.mean()),
        },
        **tables,
        "fragment_expert_sum_eV": sums.tolist(),
        "fragment_expert_mean_eV": [
            [_mean_or_none(s, n) for s, n in zip(row_s, row_n)]
            for row_s, row_n in zip(sums.tolist(), counts.tolist())
        ],
    }


def format_attribution_tables(summaries: Mapping[str, dict]) -> str:
    """Per-fragment and per-expert tables, one column block per split (e.g. ID, OOD).

    Each block shows the atom count, the summed attribution (eV) and the mean per atom
    (meV/atom); a final line per split reports the IG convergence delta.
    """
    splits = list(summaries)
    lines = []
    for table, title in (("by_fragment", "fragment"), ("by_expert", "expert (top-1)")):
        header = f"{title:<18}" + "".join(
            f"{split.upper() + ' atoms':>12}{'sum eV':>12}{'meV/atom':>11}" for split in splits
        )
        lines += [header, "-" * len(header)]
        for name in summaries[splits[0]][table]:
            row = f"{name:<18}"
            for split in splits:
                entry = summaries[split][table][name]
                mean = entry["mean_eV_per_atom"]
                mean_text = "-" if mean is None else f"{1000 * mean:.2f}"
                row += f"{entry['atoms']:>12d}{entry['sum_eV']:>12.4f}{mean_text:>11}"
            lines.append(row)
        lines.append("")
    for split in splits:
        completeness = summaries[split]["completeness"]
        lines.append(
            f"{split.upper()}: {summaries[split]['molecules']} molecules, IG convergence delta "
            f"max {completeness['max_abs_delta']:.3e} eV, mean {completeness['mean_abs_delta']:.3e}"
            f" eV (mean |E(1) - E(0)| = {completeness['mean_abs_energy_change']:.4f} eV)"
        )
    return "\n".join(lines)


def attribution_figure(
    summaries: Mapping[str, dict], fragment_names: Sequence[str] = FRAGMENT_NAMES
) -> Figure:
    """Bar chart of mean attribution per atom and fragment (one bar per split), and one
    fragment x top-1-expert heatmap of the mean attribution per atom for each split."""
    splits = list(summaries)
    figure = Figure(figsize=(6.0 + 5.0 * len(splits), 4.5))
    bars = figure.add_subplot(1, 1 + len(splits), 1)
    positions = np.arange(len(fragment_names))
    width = 0.8 / len(splits)
    for index, split in enumerate(splits):
        means = [
            summaries[split]["by_fragment"][name]["mean_eV_per_atom"] for name in fragment_names
        ]
        heights = [math.nan if m is None else 1000 * m for m in means]
        bars.bar(positions + (index - (len(splits) - 1) / 2) * width, heights, width, label=split)
    bars.set_xticks(positions, list(fragment_names), rotation=45, ha="right")
    bars.axhline(0.0, color="black", linewidth=0.5)
    bars.set_ylabel("mean IG attribution (meV/atom)")
    bars.set_title("attribution per fragment")
    bars.legend()
    for index, split in enumerate(splits):
        matrix = np.array(
            [
                [math.nan if v is None else 1000 * v for v in row]
                for row in summaries[split]["fragment_expert_mean_eV"]
            ],
            dtype=np.float64,
        )
        draw_fragment_expert_heatmap(
            figure.add_subplot(1, 1 + len(splits), 2 + index),
            matrix,
            fragment_names,
            f"{split.upper()}: mean attribution",
            "meV/atom",
            diverging=True,
        )
    figure.tight_layout()
    return figure
