"""Comparing models at matched in-distribution accuracy.

An under-trained model has a small OOD/ID ratio because its ID error is large, so ratios of
models at different convergence do not compare. Two measures that do:

OOD at matched ID (:func:`ood_at_matched_id`)
    Each model's ID-OOD curve (force MAE on a fixed ID validation subset and a fixed OOD subset,
    recorded at fixed step intervals during training) is read at common ID force-MAE levels
    that every compared model reaches. For a level L, a model's value is its OOD force MAE when
    its ID force MAE first falls to L, interpolated linearly in log-log space between the
    recorded point before and the first point at or below L. Levels are spaced geometrically
    between ``max_m min(ID_m)`` (the worst best ID error) and ``min_m max(ID_m)``; when that
    range is empty the models share no ID accuracy and no level is returned.

Effective robustness (:func:`effective_robustness`; Miller et al., ICML 2021, "Accuracy on
the line")
    A least-squares line ``log10 OOD = a + b log10 ID`` through the final points of all models
    (every model and seed), and each model's mean residual from it: negative means lower OOD
    error than models of the same ID accuracy (more robust), in decades (``10**r`` is the
    factor).

Errors are force MAEs in eV/Å; all logs are base 10.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Curve:
    """One training run's ID-OOD curve.

    Attributes:
        steps: [P] optimiser steps of the evaluations (increasing).
        id_error: [P] ID force MAE (eV/Å) at those steps.
        ood_error: [P] OOD force MAE (eV/Å) at those steps.
    """

    steps: np.ndarray
    id_error: np.ndarray
    ood_error: np.ndarray

    @classmethod
    def from_points(cls, points: Sequence[Mapping[str, float]]) -> Curve:
        """From ``[{"step", "id_force_mae", "ood_force_mae"}, ...]`` (the stored curve)."""
        ordered = sorted(points, key=lambda p: p["step"])
        return cls(
            steps=np.array([p["step"] for p in ordered], dtype=np.int64),
            id_error=np.array([p["id_force_mae"] for p in ordered], dtype=np.float64),
            ood_error=np.array([p["ood_force_mae"] for p in ordered], dtype=np.float64),
        )

    def ood_when_id_reaches(self, level: float) -> float:
        """OOD error when the ID error first falls to ``level`` (log-log interpolation);
        NaN if it never does."""
        below = np.flatnonzero(self.id_error <= level)
        if below.size == 0:
            return float("nan")
        index = int(below[0])
        if index == 0 or self.id_error[index] == level:
            return float(self.ood_error[index])
        x0, x1 = np.log10(self.id_error[index - 1 : index + 1])
        y0, y1 = np.log10(self.ood_error[index - 1 : index + 1])
        t = (np.log10(level) - x0) / (x1 - x0)
        return float(10 ** (y0 + t * (y1 - y0)))


def shared_id_range(curves: Sequence[Curve]) -> tuple[float, float] | None:
    """(low, high): the ID errors every curve covers (None if they share none)."""
    if not curves:
        return None
    low = max(float(np.min(c.id_error)) for c in curves)
    high = min(float(np.max(c.id_error)) for c in curves)
    return None if not np.isfinite(low) or low > high else (low, high)


def common_id_levels(curves: Sequence[Curve], count: int = 5) -> np.ndarray:
    """``count`` geometric ID levels every curve reaches (empty if the curves share none).

    Args:
        curves: every compared run.
        count: number of levels (>= 1).
    """
    shared = shared_id_range(curves)
    if shared is None:
        return np.zeros(0)
    low, high = shared
    if count == 1 or low == high:
        return np.array([low])
    return np.geomspace(high, low, count)


def comparable_models(curves: Mapping[str, Sequence[Curve]]) -> list[str]:
    """The largest set of models whose runs share an ID accuracy (every model when they all
    do); among sets of that size, the one with the widest shared range (in log). A model whose
    curves lie wholly below (or above) another's ID range cannot be compared at a common level
    with it, and should not erase the comparison of the others."""
    names = [m for m, runs in curves.items() if runs]
    for size in range(len(names), 0, -1):
        best, best_width = None, -math.inf
        for subset in itertools.combinations(names, size):
            shared = shared_id_range([c for m in subset for c in curves[m]])
            width = -math.inf if shared is None else math.log10(shared[1] / shared[0])
            if width > best_width:
                best, best_width = list(subset), width
        if best is not None:
            return best
    return []


def ood_at_matched_id(
    curves: Mapping[str, Sequence[Curve]], count: int = 5
) -> dict[str, object]:
    """Every model's OOD error at the ID levels all runs reach.

    When no level is shared by every run, the levels are those of the largest set of models
    that share one (:func:`comparable_models`); the others are ``left_out`` (NaN).

    Args:
        curves: ``{model: [curve per seed]}``.
        count: number of levels.

    Returns:
        ``{"levels": [L...], "per_run": {model: [[OOD at each level] per run]}, "ood":
        {model: [mean over runs at each level]}, "left_out": [model...]}`` (eV/Å); ``levels``
        is empty when no two models share an ID accuracy.
    """
    compared = comparable_models(curves)
    if len(compared) < min(2, len(curves)):
        compared = []
    levels = common_id_levels([curve for m in compared for curve in curves[m]], count)
    per_run = {
        model: [
            [run.ood_when_id_reaches(level) if model in compared else math.nan for level in levels]
            for run in runs
        ]
        for model, runs in curves.items()
    }
    ood = {
        model: [float(np.mean(column)) for column in zip(*values)] if values else []
        for model, values in per_run.items()
    }
    left_out = [m for m in curves if m not in compared] if levels.size else []
    return {"levels": levels.tolist(), "per_run": per_run, "ood": ood, "left_out": left_out}


def effective_robustness(
    final_points: Mapping[str, Sequence[tuple[float, float]]],
) -> dict[str, object]:
    """Residuals from the across-model line of log10 OOD vs log10 ID.

    Args:
        final_points: ``{model: [(id_error, ood_error) per seed]}`` in eV/Å.

    Returns:
        ``{"slope", "intercept", "residual": {model: mean residual in decades}}``; slope and
        intercept are NaN (and residuals NaN) with fewer than two distinct ID errors.
    """
    x = np.log10([p[0] for points in final_points.values() for p in points])
    y = np.log10([p[1] for points in final_points.values() for p in points])
    if x.size < 2 or np.ptp(x) == 0:
        nan = float("nan")
        return {"slope": nan, "intercept": nan, "residual": dict.fromkeys(final_points, nan)}
    slope, intercept = np.polyfit(x, y, 1)
    residual = {
        model: float(
            np.mean([np.log10(o) - (intercept + slope * np.log10(i)) for i, o in points])
        )
        for model, points in final_points.items()
    }
    return {"slope": float(slope), "intercept": float(intercept), "residual": residual}
