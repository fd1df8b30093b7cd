"""Metrics of predictions broken down by data file, element and fragment, and their tables.

The whole-set metrics are the GMD-26 metrics of :mod:`benchmark.evaluation.metrics`
(:data:`~benchmark.evaluation.metrics.METRIC_NAMES`), plus two root-mean-square errors that
users of other MLIP codes expect (:data:`EXTRA_METRICS`). Per element and per fragment only
force metrics exist (an energy belongs to a molecule, not an atom).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.evaluation import metrics
from benchmark.evaluation.predictions import Predictions

EXTRA_METRICS: dict[str, str] = {
    "force_rmse": "Force RMSE (eV/Å)",
    "energy_per_atom_rmse": "Energy RMSE per atom (eV/atom)",
}
"""Metrics reported beside :data:`benchmark.evaluation.metrics.METRIC_NAMES`."""
ATOM_METRICS: dict[str, str] = {
    "force_mae": "force MAE (eV/Å)",
    "force_rmse": "force RMSE (eV/Å)",
    "force_cosine": "force cosine",
}
"""Per-atom metrics of the element and fragment breakdowns."""


def set_metrics(predictions: Predictions) -> dict[str, float]:
    """GMD-26 metrics, the RMSEs of :data:`EXTRA_METRICS`, and the frame and atom counts."""
    error = predictions.forces - predictions.forces_ref
    energy_error = (predictions.energy - predictions.energy_ref) / predictions.n_atoms
    return {
        **predictions.metrics(),
        "force_rmse": float(np.sqrt(np.mean(error**2))),
        "energy_per_atom_rmse": float(np.sqrt(np.mean(energy_error**2))),
        "frames": int(predictions.num_frames),
        "atoms": int(predictions.n_atoms.sum()),
    }


def _atom_metrics(predicted: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    return {
        "atoms": int(predicted.shape[0]),
        "force_mae": metrics.force_mae(predicted, reference),
        "force_rmse": float(np.sqrt(np.mean((predicted - reference) ** 2))),
        "force_cosine": metrics.force_cosine_similarity(predicted, reference),
    }


def per_element_metrics(predictions: Predictions) -> dict[str, dict[str, float]]:
    """``{element symbol: {"atoms", "force_mae", "force_rmse", "force_cosine"}}``, by Z."""
    from ase.data import chemical_symbols

    out = {}
    for number in np.unique(predictions.z):
        mask = predictions.z == number
        symbol = (
            chemical_symbols[int(number)] if int(number) < len(chemical_symbols) else str(number)
        )
        out[symbol] = _atom_metrics(predictions.forces[mask], predictions.forces_ref[mask])
    return out


def per_fragment_metrics(
    predictions: Predictions, names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """``{fragment name: {...}}`` for the labels present, in vocabulary order."""
    out = {}
    for label, name in enumerate(names):
        mask = predictions.fragment == label
        if mask.any():
            out[name] = _atom_metrics(predictions.forces[mask], predictions.forces_ref[mask])
    return out


def _number(value: Any) -> str:
    if isinstance(value, (int, np.integer)):
        return f"{int(value):d}"
    value = math.nan if value is None else float(value)
    return f"{value:.5g}"


def format_columns(
    columns: Mapping[str, Mapping[str, Any]],
    rows: Mapping[str, str],
    title: str = "",
    first: str = "metric",
) -> str:
    """A plain-text table: one row per key of ``rows`` (label = value), one column per entry
    of ``columns`` (header = key); missing cells are blank."""
    names = list(columns)
    label_width = max([len(first), *(len(label) for label in rows.values())])
    widths = [max(12, len(name)) for name in names]
    lines = [title] if title else []
    lines.append(
        f"{first:<{label_width}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, widths))
    )
    for key, label in rows.items():
        cells = [
            f"{_number(columns[n][key]) if key in columns[n] else '':>{w}}"
            for n, w in zip(names, widths)
        ]
        lines.append(f"{label:<{label_width}}  " + "  ".join(cells))
    return "\n".join(lines)


SET_ROWS: dict[str, str] = {
    **{name: metrics.METRIC_LABELS[name] for name in metrics.METRIC_NAMES},
    **EXTRA_METRICS,
    "frames": "frames",
    "atoms": "atoms",
}
"""Rows of the per-file table."""


def format_set_table(columns: Mapping[str, Mapping[str, Any]], title: str = "") -> str:
    """The metrics table with one column per data set (e.g. per file, and ``all``)."""
    return format_columns(columns, SET_ROWS, title)


def format_atom_table(
    groups: Mapping[str, Mapping[str, Any]], title: str = "", first: str = "element"
) -> str:
    """Per-element (or per-fragment) table: one row per group, one column per atom metric."""
    columns = {
        label: {group: values[key] for group, values in groups.items()}
        for key, label in {"atoms": "atoms", **ATOM_METRICS}.items()
    }
    return format_columns(columns, {group: group for group in groups}, title, first=first)


def short_names(names: Sequence[str]) -> dict[str, str]:
    """Data-file paths -> their base names (``file.xyz@0:10`` keeps its index); the whole
    path where two base names collide. Names that are not paths stay as they are."""
    bases = [Path(name).name for name in names]
    return {n: (b if bases.count(b) == 1 else n) for n, b in zip(names, bases, strict=True)}


def slug(name: str) -> str:
    """``name`` as a file-name-safe string (predictions file of a data set)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_") or "set"
