"""Comparison of the models of a task at matched accuracy (``report.json``: ``comparison``).

Per task, from the cells that finished ``ok`` (:func:`task_comparison`):

* **curves**: each seed's ID-OOD curve (``result["curve"]``, or the cell's ``curve.json``):
  force MAE on the fixed validation subset (ID) and on the fixed OOD-test subset (OOD), eV/Å,
  at fixed step intervals;
* **OOD at matched ID**: :func:`benchmark.evaluation.robustness.ood_at_matched_id` over those
  curves: each model's OOD force MAE interpolated (log-log) where its ID force MAE first falls
  to common levels every run reaches; mean and sample standard deviation over seeds;
* **final points**: each seed's test force MAE (``id_test``, ``ood_test``), the ratio OOD/ID;
* **effective robustness**: :func:`benchmark.evaluation.robustness.effective_robustness` over
  the final points: the residual (decades, log10) of each model from the across-model line
  ``log10 OOD = intercept + slope log10 ID`` (Miller et al., ICML 2021); negative is better.

Cells written before curves were recorded (no ``curve``) are left out of the curve part, with a
note, and still give final points. :func:`comparison_summary` condenses a task's comparison for
the run-level ``report.json`` entry. Errors are force MAEs in eV/Å; logs are base 10.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.evaluation.robustness import Curve, effective_robustness, ood_at_matched_id
from benchmark.report.collect import aggregate
from benchmark.training.experiment import CURVE_FILE

MATCHED_LEVELS = 3
"""Default number of common ID levels (geometric, from the worst to the best shared ID)."""
MIN_MODELS_FOR_FIT = 3
"""With fewer models the accuracy line passes (nearly) through every model: residuals ~0."""


def _positive_finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value)) and float(value) > 0.0


def cell_curve(result: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The cell's stored ID-OOD curve points (``result["curve"]``, else ``<cell>/curve.json``),
    or ``None`` when the cell has none (results written before curves were recorded)."""
    points = result.get("curve")
    if points is None and result.get("cell_dir"):
        path = Path(result["cell_dir"]) / CURVE_FILE
        if path.exists():
            points = json.loads(path.read_text()).get("points")
    return list(points) if points else None


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _usable_points(points: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Points whose ID and OOD force MAE are finite and positive (a log needs both)."""
    return [
        p
        for p in points
        if _positive_finite(p.get("id_force_mae")) and _positive_finite(p.get("ood_force_mae"))
    ]


def task_comparison(
    results: Mapping[str, Sequence[Mapping[str, Any]]], levels: int = MATCHED_LEVELS
) -> dict[str, Any]:
    """The matched-accuracy comparison of one task.

    Args:
        results: ``{model: [cell results]}`` (:func:`benchmark.report.collect.collect_results`);
            only cells with status ``ok`` are used.
        levels: number of common ID levels.

    Returns:
        ``{"models", "curves": {model: [{"seed", "step", "id_force_mae", "ood_force_mae"}]},
        "matched_id": {"levels", "models", "left_out", "ood": {model: [mean per level]},
        "ood_std", "ood_seeds"}, "final": {model: {"seeds", "points", "id", "ood", "ratio"}},
        "effective_robustness": {"slope", "intercept", "points", "residual", "residual_std",
        "residual_seeds", "factor"}, "notes"}``. Stats (``id``, ``ood``, ``ratio``) are
        :func:`benchmark.report.collect.aggregate` dicts; missing numbers are NaN (``None`` in
        JSON).
    """
    notes: list[str] = []
    curves: dict[str, list[dict[str, Any]]] = {}
    final: dict[str, dict[str, Any]] = {}
    for model, cells in results.items():
        ok = [r for r in cells if r.get("status") == "ok"]
        if not ok:
            continue
        seeds, points = [], []
        for result in ok:
            metrics = result["metrics"]
            id_, ood = (metrics[split].get("force_mae") for split in ("id_test", "ood_test"))
            if _positive_finite(id_) and _positive_finite(ood):
                seeds.append(result["seed"])
                points.append((float(id_), float(ood)))
            stored = cell_curve(result)
            if stored is None:
                notes.append(
                    f"{model} seed {result['seed']}: no ID-OOD curve (result written before "
                    "curves were recorded); final test point only"
                )
                continue
            usable = sorted(_usable_points(stored), key=lambda p: p["step"])
            if len(usable) < len(stored):
                notes.append(
                    f"{model} seed {result['seed']}: {len(stored) - len(usable)} curve point(s) "
                    "with a non-finite or zero force MAE left out"
                )
            if usable:
                curves.setdefault(model, []).append(
                    {
                        "seed": result["seed"],
                        "step": [int(p["step"]) for p in usable],
                        "id_force_mae": [float(p["id_force_mae"]) for p in usable],
                        "ood_force_mae": [float(p["ood_force_mae"]) for p in usable],
                    }
                )
        final[model] = {
            "seeds": seeds,
            "points": [list(p) for p in points],
            "id": aggregate([p[0] for p in points]),
            "ood": aggregate([p[1] for p in points]),
            "ratio": aggregate([p[1] / p[0] for p in points]),
        }
    models = list(final)
    return {
        "models": models,
        "curves": curves,
        "matched_id": _matched_id(curves, models, levels, notes),
        "final": final,
        "effective_robustness": _effective_robustness(final, notes),
        "notes": notes,
    }


def _matched_id(
    curves: Mapping[str, list[dict[str, Any]]],
    models: Sequence[str],
    count: int,
    notes: list[str],
) -> dict[str, Any]:
    runs = {
        model: [
            Curve.from_points(
                [
                    {"step": s, "id_force_mae": i, "ood_force_mae": o}
                    for s, i, o in zip(c["step"], c["id_force_mae"], c["ood_force_mae"])
                ]
            )
            for c in seeds
        ]
        for model, seeds in curves.items()
    }
    if runs:
        matched = ood_at_matched_id(runs, count)
    else:
        matched = {"levels": [], "per_run": {}, "ood": {}, "left_out": []}
    levels = matched["levels"]
    without = [m for m in models if m not in runs]
    if without and runs:
        notes.append(
            f"matched ID levels from the curves of {', '.join(runs)} only "
            f"({', '.join(without)}: no curve)"
        )
    left_out = matched["left_out"]
    if left_out:
        notes.append(
            f"matched ID levels of {', '.join(m for m in runs if m not in left_out)}; "
            f"{', '.join(left_out)}: ID-OOD curve outside their shared ID range (never as "
            "inaccurate, or never as accurate, as all the others at once)"
        )
    if runs and not levels:
        notes.append(
            "the ID-OOD curves share no ID force MAE (some run never reaches the ID error "
            "another run starts from): no matched-ID comparison"
        )
    nan_row = [math.nan] * len(levels)
    per_seed = matched["per_run"]
    stats = {
        model: [aggregate([seed[k] for seed in values]) for k in range(len(levels))]
        for model, values in per_seed.items()
    }
    return {
        "levels": list(levels),
        "models": list(runs),
        "left_out": list(left_out),
        "ood": {m: list(matched["ood"].get(m, nan_row)) for m in models},
        "ood_std": {
            m: [_or_nan(s["std"]) for s in stats[m]] if m in stats else nan_row for m in models
        },
        "ood_seeds": {
            m: {"seeds": [c["seed"] for c in curves[m]], "values": per_seed[m]} for m in runs
        },
    }


def _effective_robustness(
    final: Mapping[str, Mapping[str, Any]], notes: list[str]
) -> dict[str, Any]:
    points = {m: [tuple(p) for p in f["points"]] for m, f in final.items() if f["points"]}
    fit = (
        effective_robustness(points)
        if points
        else {"slope": math.nan, "intercept": math.nan, "residual": {}}
    )
    slope, intercept = fit["slope"], fit["intercept"]
    residual_seeds = {
        m: [float(np.log10(o) - (intercept + slope * np.log10(i))) for i, o in p]
        for m, p in points.items()
    }
    stats = {m: aggregate(values) for m, values in residual_seeds.items()}
    if len(points) < MIN_MODELS_FOR_FIT:
        notes.append(
            f"effective robustness: the accuracy line is fitted through {len(points)} model(s); "
            f"with fewer than {MIN_MODELS_FOR_FIT} it passes (nearly) through every model and "
            "the residuals say little"
        )
    residual = {m: fit["residual"].get(m, math.nan) for m in final}
    return {
        "slope": slope,
        "intercept": intercept,
        "points": sum(len(p) for p in points.values()),
        "residual": residual,
        "residual_std": {m: _or_nan(stats[m]["std"]) if m in stats else math.nan for m in final},
        "residual_seeds": residual_seeds,
        "factor": {m: 10.0**r if math.isfinite(r) else math.nan for m, r in residual.items()},
    }


def comparison_summary(comparison: Mapping[str, Any]) -> dict[str, Any]:
    """The run-level digest of one task's comparison: levels, slope / intercept of the
    accuracy line and, per model, mean ID / OOD test force MAE, OOD/ID, OOD at each matched
    level and effective robustness (decades and factor)."""
    matched, robustness = comparison["matched_id"], comparison["effective_robustness"]
    return {
        "levels": matched["levels"],
        "accuracy_line": {"slope": robustness["slope"], "intercept": robustness["intercept"]},
        "models": {
            m: {
                "id_force_mae": comparison["final"][m]["id"]["mean"],
                "ood_force_mae": comparison["final"][m]["ood"]["mean"],
                "ratio": comparison["final"][m]["ratio"]["mean"],
                "ood_at_matched_id": matched["ood"][m],
                "effective_robustness": robustness["residual"][m],
                "effective_robustness_factor": robustness["factor"][m],
            }
            for m in comparison["models"]
        },
        "notes": comparison["notes"],
    }
