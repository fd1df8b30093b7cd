"""One task's section of the report: figures and the analyses beyond the tables.

Per task (:func:`task_section`): the seed summaries of every model
(:mod:`benchmark.report.collect`), the comparison at matched accuracy and its OOD-vs-ID figure
(:mod:`benchmark.report.comparison`), parity plots and force MAE per fragment label, force error
vs SOAP distance from the training set (:func:`per_atom_force_error`,
:func:`extrapolation_analysis`; distances: :mod:`benchmark.evaluation.extrapolation`), MD
stability on a few OOD molecules (:mod:`benchmark.evaluation.stability`) and, for DeepSet-MoE,
routing metrics and attributions per fragment, ID vs OOD
(:mod:`benchmark.evaluation.cell_analysis`). Plots and model-based analyses use the first seed
that finished ``ok`` of each (task, model); the extrapolation errors average every ``ok`` seed.
Forces in eV/Å, distances dimensionless.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.dataset.frames import Frame
from benchmark.dataset.tasks import ENERGY_NOT_IDENTIFIED, RULES
from benchmark.evaluation.cell_analysis import (
    cell_has_routing,
    model_attribution,
    model_routing,
    model_stability,
)
from benchmark.evaluation.extrapolation import binned_error, task_distances
from benchmark.evaluation.predictions import Predictions
from benchmark.evaluation.stability import StabilitySettings
from benchmark.report import figures
from benchmark.report.collect import e0_sums, load_predictions, summarise_model
from benchmark.report.comparison import MATCHED_LEVELS, task_comparison
from deepset_moe.fragments import FRAGMENT_NAMES

FIGURES_DIR = "figures"
"""Folder of the report's PNG figures, inside the run directory."""
EXTRAPOLATION_BINS = 12
MIN_ATOMS_PER_BIN = 10


@dataclass
class ReportOptions:
    """What the report computes beyond the tables.

    Attributes:
        data_dir: dataset of the run (default: the one recorded in ``run.json``).
        extrapolation: compute the SOAP distance analysis.
        stability: run the MD stability study.
        stability_settings: MD settings (steps, time step, temperature, ...).
        stability_molecules: OOD molecules simulated per (task, model).
        routing_frames: test frames per split for the DeepSet-MoE routing metrics.
        attribution_molecules: test molecules per split for the attributions.
        attribution_steps: Integrated-Gradients quadrature steps.
        seed: seed of every subsample of the report.
        matched_levels: common ID force-MAE levels of the comparison at matched accuracy.
    """

    data_dir: Path | None = None
    extrapolation: bool = True
    stability: bool = True
    stability_settings: StabilitySettings = field(default_factory=StabilitySettings)
    stability_molecules: int = 2
    routing_frames: int = 128
    attribution_molecules: int = 16
    attribution_steps: int = 16
    seed: int = 0
    matched_levels: int = MATCHED_LEVELS


# ---------------------------------------------------------------------- extrapolation


def per_atom_force_error(predictions: Predictions, frames: Sequence[Frame]) -> np.ndarray:
    """Per-atom force MAE (mean over components, eV/Å) in the atom order of ``frames``.

    Raises:
        ValueError: the predictions do not cover exactly these frames (by atomic numbers).
    """
    order = np.argsort(predictions.frame_index, kind="stable")
    if predictions.frame_index[order].tolist() != list(range(len(frames))):
        raise ValueError(f"predictions cover {predictions.num_frames} frames, data {len(frames)}")
    error = np.abs(predictions.forces - predictions.forces_ref).mean(axis=1)
    first = np.cumsum(predictions.n_atoms) - predictions.n_atoms
    atoms = np.concatenate([np.arange(first[i], first[i] + predictions.n_atoms[i]) for i in order])
    if not np.array_equal(predictions.z[atoms], np.concatenate([f.numbers for f in frames])):
        raise ValueError("predictions and data frames hold different atoms")
    return error[atoms]


def extrapolation_analysis(
    distances: Mapping[str, np.ndarray], errors: Mapping[str, list[np.ndarray]]
) -> dict[str, Any]:
    """Binned force error vs distance and the in-range / beyond split of OOD atoms.

    Args:
        distances: ``{"id": [atoms], "ood": [atoms]}`` SOAP distances.
        errors: ``{"id": [per-seed per-atom errors], "ood": [...]}``.

    Bins are the quantiles of the pooled ID + OOD distances (:data:`EXTRAPOLATION_BINS`).

    Returns:
        ``{"curves": {split: binned_error dict (mean over seeds)}, "id_p95_distance",
        "ood_fraction_beyond", "id_mae", "ood_mae_in_range", "ood_mae_beyond"}``; the
        in-range threshold is the 95th percentile of the ID test distances.
    """
    finite = np.concatenate([d[np.isfinite(d)] for d in distances.values()])
    # quantile edges of the pooled ID + OOD distances: every bin holds test atoms
    edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, EXTRAPOLATION_BINS + 1)))
    curves = {}
    for split, per_seed in errors.items():
        binned = [binned_error(distances[split], e, edges, MIN_ATOMS_PER_BIN) for e in per_seed]
        stacked = np.array([b["mean"] for b in binned], dtype=np.float64)
        counts = np.isfinite(stacked).sum(axis=0)
        means = np.where(counts > 0, np.nansum(stacked, axis=0) / np.maximum(counts, 1), np.nan)
        curves[split] = {**binned[0], "mean": means.tolist()}
    threshold = float(np.percentile(distances["id"][np.isfinite(distances["id"])], 95))
    beyond = distances["ood"] > threshold
    mean_error = {split: np.mean(per_seed, axis=0) for split, per_seed in errors.items()}
    return {
        "curves": curves,
        "id_p95_distance": threshold,
        "mean_distance": {s: float(np.mean(d[np.isfinite(d)])) for s, d in distances.items()},
        "ood_fraction_beyond": float(beyond.mean()),
        "id_mae": float(mean_error["id"].mean()),
        "ood_mae_in_range": float(mean_error["ood"][~beyond].mean()) if (~beyond).any() else None,
        "ood_mae_beyond": float(mean_error["ood"][beyond].mean()) if beyond.any() else None,
    }


# ---------------------------------------------------------------------- task sections


class TaskData:
    """Lazily loaded splits of one task (``None`` splits when no data directory is known)."""

    def __init__(self, data_dir: Path | None, task: str) -> None:
        self.data_dir, self.task = data_dir, task
        self._frames: dict[str, list[Frame]] = {}

    @property
    def available(self) -> bool:
        return self.data_dir is not None and self.data_dir.exists()

    def split(self, name: str) -> list[Frame]:
        if name not in self._frames:
            from benchmark.dataset.layout import load_split

            self._frames[name] = load_split(self.data_dir, self.task, name)
        return self._frames[name]


def first_ok_result(results: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The first (lowest seed) result that finished ``ok``, or ``None``."""
    return next((r for r in results if r["status"] == "ok"), None)


def save_report_figure(figure: Any, figures_dir: Path, name: str) -> str:
    """Save ``figure`` as ``figures_dir / name``; return its path relative to the run directory."""
    figures.save_figure(figure, figures_dir / name)
    return f"{FIGURES_DIR}/{name}"


def task_section(
    task: str,
    results: Mapping[str, list[dict[str, Any]]],
    data: TaskData,
    run_dir: Path,
    options: ReportOptions,
    gaps: list[str],
) -> dict[str, Any]:
    """The ``report.json`` section of one task: seed summaries of every model, the comparison
    at matched accuracy (:mod:`benchmark.report.comparison`) and its figure, parity and
    per-fragment figures, then (with data) extrapolation, MD stability and DeepSet-MoE
    routing / attribution. What could not be done is appended to ``gaps``."""
    figures_dir = run_dir / FIGURES_DIR
    models = {name: summarise_model(cells) for name, cells in results.items()}
    comparison = task_comparison(results, options.matched_levels)
    report: dict[str, Any] = {
        "rule": RULES.get(task, ""),
        "energy_not_identified": ENERGY_NOT_IDENTIFIED.get(task),
        "models": models,
        "comparison": comparison,
        "figures": {},
    }
    if comparison["models"]:
        robustness = comparison["effective_robustness"]
        report["figures"]["comparison"] = save_report_figure(
            figures.comparison_figure(
                {m: comparison["curves"].get(m, []) for m in comparison["models"]},
                {m: comparison["final"][m]["points"] for m in comparison["models"]},
                comparison["matched_id"]["levels"],
                (robustness["slope"], robustness["intercept"]),
                f"{task}: OOD vs ID force MAE",
            ),
            figures_dir,
            f"{task}_comparison.png",
        )
    first_ok = {name: first_ok_result(cells) for name, cells in results.items()}
    first_ok = {name: r for name, r in first_ok.items() if r is not None}
    if not first_ok:
        gaps.append(f"{task}: no cell finished ok; no plots or model analyses")
        return report
    parity = {}
    for name, result in first_ok.items():
        parity[name] = {}
        for split, p in load_predictions(result["cell_dir"]).items():
            shift = e0_sums(p, result.get("e0", {}))  # same shift for both: errors unchanged
            parity[name][split] = {
                "forces": p.forces,
                "forces_ref": p.forces_ref,
                "energy": p.energy - shift,
                "energy_ref": p.energy_ref - shift,
            }
    report["figures"]["parity"] = save_report_figure(
        figures.parity_figure(
            parity,
            f"{task}: parity (seed {min(r['seed'] for r in first_ok.values())})",
            options.seed,
        ),
        figures_dir,
        f"{task}_parity.png",
    )
    report["figures"]["fragments"] = save_report_figure(
        figures.fragment_error_figure(
            {name: models[name]["per_fragment_force_mae"] for name in first_ok},
            FRAGMENT_NAMES,
            f"{task}: force MAE per fragment label",
        ),
        figures_dir,
        f"{task}_fragments.png",
    )
    if not data.available:
        gaps.append(f"{task}: data directory not found; no extrapolation or MD stability")
        return report
    if options.extrapolation:
        _extrapolation_section(task, results, data, run_dir, options, report)
    if options.stability:
        report["stability"] = {}
        for name, result in first_ok.items():
            try:
                report["stability"][name] = model_stability(
                    result["cell_dir"],
                    data.split("ood_test"),
                    options.stability_settings,
                    options.stability_molecules,
                    options.seed,
                )
            except ImportError as error:
                report["stability"][name] = {"error": f"no ASE calculator ({error})"}
                gaps.append(f"{task}/{name}: MD stability not run ({error})")
    routed = [name for name, result in first_ok.items() if cell_has_routing(result)]
    if routed:
        name = routed[0]
        _routing_section(task, name, first_ok[name], data, figures_dir, options, report, gaps)
    return report


def _extrapolation_section(
    task: str,
    results: Mapping[str, list[dict[str, Any]]],
    data: TaskData,
    run_dir: Path,
    options: ReportOptions,
    report: dict[str, Any],
) -> None:
    frames = {"id": data.split("id_test"), "ood": data.split("ood_test")}
    distances = task_distances(
        run_dir / task / "soap_distances.npz", data.split("train"), frames, seed=options.seed
    )
    analyses = {}
    for name, cells in results.items():
        errors: dict[str, list[np.ndarray]] = {"id": [], "ood": []}
        for result in (r for r in cells if r["status"] == "ok"):
            for split, p in load_predictions(result["cell_dir"]).items():
                errors[split].append(per_atom_force_error(p, frames[split]))
        if errors["id"]:
            analyses[name] = extrapolation_analysis(distances, errors)
    report["extrapolation"] = analyses
    report["figures"]["extrapolation"] = save_report_figure(
        figures.extrapolation_figure(
            {name: a["curves"] for name, a in analyses.items()},
            distances,
            f"{task}: how far can it extrapolate?",
        ),
        run_dir / FIGURES_DIR,
        f"{task}_extrapolation.png",
    )


def _routing_section(
    task: str,
    name: str,
    result: dict[str, Any],
    data: TaskData,
    figures_dir: Path,
    options: ReportOptions,
    report: dict[str, Any],
    gaps: list[str],
) -> None:
    from matplotlib.figure import Figure

    from deepset_moe.attribution import attribution_figure
    from deepset_moe.routing_plots import draw_fragment_expert_heatmap

    id_frames, ood_frames = data.split("id_test"), data.split("ood_test")
    routing = model_routing(
        result["cell_dir"], id_frames, ood_frames, options.routing_frames, options.seed
    )
    if routing is None:
        gaps.append(f"{task}: {name} returned no routing; routing metrics missing")
    else:
        report["routing"] = routing
        figure = Figure(figsize=(11.0, 4.2), layout="constrained")
        for index, split in enumerate(("id", "ood")):
            matrix = np.array(routing[split]["fragment_expert_fraction"], dtype=np.float64)
            draw_fragment_expert_heatmap(
                figure.add_subplot(1, 2, index + 1),
                matrix,
                FRAGMENT_NAMES,
                f"{split.upper()}: expert share per fragment",
                "fraction of assignments",
            )
        figure.suptitle(f"{task}: {name} routing")
        report["figures"]["routing"] = save_report_figure(
            figure, figures_dir, f"{task}_routing.png"
        )
    attribution = model_attribution(
        result["cell_dir"],
        id_frames,
        ood_frames,
        options.attribution_molecules,
        options.attribution_steps,
        options.seed,
    )
    report["attribution"] = attribution
    figure = attribution_figure(attribution)
    report["figures"]["attribution"] = save_report_figure(
        figure, figures_dir, f"{task}_attribution.png"
    )
