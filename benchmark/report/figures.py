"""Matplotlib figures of the benchmark report (headless: :class:`matplotlib.figure.Figure`).

Every function takes plain arrays / dicts (no model, no file) and returns a figure the caller
saves with :func:`save_figure`. ID is drawn in blue, OOD in orange throughout; units are eV,
eV/Å and the dimensionless SOAP distance of :mod:`benchmark.evaluation.extrapolation`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, ScalarFormatter

SPLIT_COLOURS = {"id": "tab:blue", "ood": "tab:orange"}
SPLIT_LABELS = {"id": "ID", "ood": "OOD"}
MODEL_LINESTYLES = ("-", "--", ":", "-.")
MAX_PARITY_POINTS = 20000
"""Force components drawn per split and panel (a seeded subsample; MAE uses all)."""


class _PlainLogFormatter(LogFormatter):
    """Log-axis labels as plain numbers (0.4, not 4e-01) on the ticks matplotlib labels."""

    def __call__(self, x, pos=None):
        return f"{x:g}" if super().__call__(x, pos) else ""


def save_figure(figure: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``figure`` as PNG (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def _split_bars(ax: Any, positions: np.ndarray, heights: Mapping[str, list[float]]) -> None:
    """ID and OOD bars side by side at ``positions`` (``heights[split]``: one value each)."""
    for offset, split in ((-0.2, "id"), (0.2, "ood")):
        ax.bar(positions + offset, heights[split], 0.4, color=SPLIT_COLOURS[split],
               label=SPLIT_LABELS[split])


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _subsample(n: int, limit: int, seed: int) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _parity_panel(ax, data: Mapping[str, tuple[np.ndarray, np.ndarray]], unit: str, seed: int):
    low, high = math.inf, -math.inf
    for split, (reference, predicted) in data.items():
        reference, predicted = np.ravel(reference), np.ravel(predicted)
        keep = _subsample(reference.size, MAX_PARITY_POINTS, seed)
        mae = float(np.mean(np.abs(predicted - reference)))
        ax.scatter(
            reference[keep],
            predicted[keep],
            s=3,
            alpha=0.35,
            color=SPLIT_COLOURS[split],
            label=f"{SPLIT_LABELS[split]} (MAE {mae:.3g} {unit})",
            rasterized=True,
        )
        finite = np.concatenate([reference, predicted])
        finite = finite[np.isfinite(finite)]
        if finite.size:
            low, high = min(low, finite.min()), max(high, finite.max())
    if math.isfinite(low):
        pad = 0.02 * (high - low or 1.0)
        ax.plot([low - pad, high + pad], [low - pad, high + pad], color="black", linewidth=0.8)
    ax.legend(loc="upper left", fontsize=8, markerscale=3)


def parity_figure(
    models: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]], title: str, seed: int = 0
) -> Figure:
    """Predicted vs reference force components (top row) and energies (bottom row).

    Args:
        models: ``{model: {split ("id"/"ood"): {"forces_ref", "forces" [N, 3] eV/Å,
            "energy_ref", "energy" [B] eV}}}``; energies are drawn relative to the sum of the
            per-element reference energies, E - sum_i E0(z_i), by the caller's convention.
        title: figure title (e.g. the task).
        seed: subsampling seed of the drawn points.
    """
    names = list(models)
    figure = Figure(figsize=(4.2 * len(names), 8.0), layout="constrained")
    axes = figure.subplots(2, len(names), squeeze=False)
    for column, name in enumerate(names):
        splits = models[name]
        force_ax, energy_ax = axes[0, column], axes[1, column]
        _parity_panel(
            force_ax, {s: (d["forces_ref"], d["forces"]) for s, d in splits.items()}, "eV/Å", seed
        )
        force_ax.set_title(f"{name}: forces")
        force_ax.set_xlabel("reference force component (eV/Å)")
        force_ax.set_ylabel("predicted force component (eV/Å)")
        _parity_panel(
            energy_ax, {s: (d["energy_ref"], d["energy"]) for s, d in splits.items()}, "eV", seed
        )
        energy_ax.set_title(f"{name}: energies")
        energy_ax.set_xlabel("reference E − ΣE0 (eV)")
        energy_ax.set_ylabel("predicted E − ΣE0 (eV)")
    figure.suptitle(title)
    return figure


def fragment_error_figure(
    models: Mapping[str, Mapping[str, Mapping[str, float]]],
    fragment_names: Sequence[str],
    title: str,
) -> Figure:
    """Force MAE per fragment label, ID vs OOD bars, one panel per model.

    Args:
        models: ``{model: {"id": {fragment: MAE eV/Å}, "ood": {...}}}`` (absent fragments
            missing or ``None``).
        fragment_names: bar order.
    """
    names = list(models)
    figure = Figure(figsize=(max(6.0, 0.9 * len(fragment_names)) * len(names) / 1.3, 4.2),
                    layout="constrained")
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    positions = np.arange(len(fragment_names))
    for ax, name in zip(axes, names):
        values = models[name]
        _split_bars(ax, positions, {
            split: [_or_nan(values.get(split, {}).get(f)) for f in fragment_names]
            for split in SPLIT_LABELS
        })
        ax.set_xticks(positions, list(fragment_names), rotation=45, ha="right")
        ax.set_ylabel("force MAE (eV/Å)")
        ax.set_title(name)
        ax.legend(fontsize=8)
    figure.suptitle(title)
    return figure


def extrapolation_figure(
    curves: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]],
    distances: Mapping[str, np.ndarray],
    title: str,
) -> Figure:
    """Force error vs distance from the training set (left) and the distance histograms (right).

    Args:
        curves: ``{model: {split: {"center": [nbins], "mean": [nbins]}}}`` from
            :func:`benchmark.evaluation.extrapolation.binned_error` (per-atom force MAE, eV/Å).
        distances: ``{split: [atoms]}`` SOAP distances of the test atoms.
    """
    figure = Figure(figsize=(11.0, 4.2), layout="constrained")
    curve_ax, hist_ax = figure.subplots(1, 2)
    for index, (name, splits) in enumerate(curves.items()):
        style = MODEL_LINESTYLES[index % len(MODEL_LINESTYLES)]
        for split, curve in splits.items():
            curve_ax.plot(
                curve["center"],
                curve["mean"],
                style,
                marker="o",
                markersize=3,
                color=SPLIT_COLOURS[split],
                label=f"{name} {SPLIT_LABELS[split]}",
            )
    curve_ax.set_xlabel("SOAP distance to nearest training environment")
    curve_ax.set_ylabel("per-atom force MAE (eV/Å)")
    curve_ax.set_yscale("log")
    curve_ax.yaxis.set_major_formatter(ScalarFormatter())
    curve_ax.yaxis.set_minor_formatter(ScalarFormatter())
    curve_ax.set_title("force error vs distance from training set")
    curve_ax.legend(fontsize=7, ncol=2)
    finite = [d[np.isfinite(d)] for d in distances.values()]
    upper = max((float(d.max()) for d in finite if d.size), default=1.0)
    bins = np.linspace(0.0, upper if upper > 0 else 1.0, 40)
    for (split, _), values in zip(distances.items(), finite):
        hist_ax.hist(values, bins=bins, alpha=0.6, color=SPLIT_COLOURS[split],
                     label=f"{SPLIT_LABELS[split]} ({values.size} atoms)")
    hist_ax.set_xlabel("SOAP distance to nearest training environment")
    hist_ax.set_ylabel("test atoms")
    hist_ax.set_title("distance distribution")
    hist_ax.legend(fontsize=8)
    figure.suptitle(title)
    return figure


def headline_figure(
    table: Mapping[str, Mapping[str, Mapping[str, float]]], tasks: Sequence[str]
) -> Figure:
    """Force MAE ID vs OOD per task (panels) and model (bar pairs), log scale.

    Args:
        table: ``{task: {model: {"id": mean MAE, "ood": mean MAE}}}`` in eV/Å.
    """
    figure = Figure(figsize=(3.6 * len(tasks), 4.0), layout="constrained")
    axes = figure.subplots(1, len(tasks), squeeze=False, sharey=True)[0]
    for ax, task in zip(axes, tasks):
        models = list(table.get(task, {}))
        positions = np.arange(len(models))
        _split_bars(ax, positions, {
            split: [_or_nan(table[task][m].get(split)) for m in models] for split in SPLIT_LABELS
        })
        ax.set_xticks(positions, models, rotation=30, ha="right")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.set_title(task)
    axes[0].set_ylabel("force MAE (eV/Å)")
    axes[0].legend(fontsize=8)
    return figure


def comparison_figure(
    curves: Mapping[str, Sequence[Mapping[str, Sequence[float]]]],
    final_points: Mapping[str, Sequence[Sequence[float]]],
    levels: Sequence[float],
    accuracy_line: tuple[float, float] | None,
    title: str,
) -> Figure:
    """OOD vs ID force MAE (eV/Å), log-log, every model and seed: comparison at matched accuracy.

    Thin lines: each seed's ID-OOD curve in step order (ID: validation subset, OOD: the fixed
    OOD-test subset); markers: the final test points (``id_test``, ``ood_test``); one colour per
    model. Dashed: OOD = ID; dotted: the accuracy line ``log10 OOD = intercept + slope log10 ID``
    fitted through the final points of all models; grey verticals: the matched ID levels.

    Args:
        curves: ``{model: [{"id_force_mae": [P], "ood_force_mae": [P]} per seed]}`` (points in
            step order).
        final_points: ``{model: [(id, ood) per seed]}``.
        levels: matched ID levels (may be empty).
        accuracy_line: ``(slope, intercept)`` of the fit, or ``None`` / NaN when there is none.
    """
    figure = Figure(figsize=(6.0, 5.6), layout="constrained")
    ax = figure.subplots()
    names = list(dict.fromkeys([*final_points, *curves]))
    colours = {name: f"C{index % 10}" for index, name in enumerate(names)}
    values: list[float] = []
    for name in names:
        for run in curves.get(name, []):
            x = np.asarray(run["id_force_mae"], dtype=np.float64)
            y = np.asarray(run["ood_force_mae"], dtype=np.float64)
            ax.plot(x, y, "-", linewidth=0.8, alpha=0.7, color=colours[name], marker=".",
                    markersize=2.5)
            values += [*x.tolist(), *y.tolist()]
        points = np.asarray(final_points.get(name, []), dtype=np.float64).reshape(-1, 2)
        ax.plot(points[:, 0], points[:, 1], "o", linestyle="none", markersize=7,
                markeredgecolor="black", markeredgewidth=0.6, color=colours[name],
                label=f"{name} ({len(points)} seed{'s' if len(points) != 1 else ''})")
        values += points.ravel().tolist()
    values += [float(level) for level in levels]
    positive = np.array([v for v in values if math.isfinite(v) and v > 0.0])
    if positive.size == 0:
        ax.text(0.5, 0.5, "no finite force MAE", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_title(title)
        return figure
    low, high = float(positive.min()) / 1.25, float(positive.max()) * 1.25
    span = np.array([low, high])
    ax.plot(span, span, "--", color="black", linewidth=0.8, label="OOD = ID")
    if accuracy_line is not None and all(math.isfinite(v) for v in accuracy_line):
        slope, intercept = accuracy_line
        ax.plot(span, 10 ** (intercept + slope * np.log10(span)), ":", color="dimgray",
                linewidth=1.4,
                label=f"accuracy line: log OOD = {intercept:.2f} + {slope:.2f} log ID")
    for index, level in enumerate(levels):
        ax.axvline(level, color="gray", linewidth=0.6, alpha=0.6,
                   label="matched ID levels" if index == 0 else None)
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers (0.4, not 4 x 10^-1)
        axis.set_major_formatter(_PlainLogFormatter())
        axis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_aspect("equal")
    ax.set_xlabel("ID force MAE (eV/Å)")
    ax.set_ylabel("OOD force MAE (eV/Å)")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title)
    return figure
