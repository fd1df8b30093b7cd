"""The GMD-26 error metrics (DESIGN.md "Metrics"), every reduction in float64.

With F the reference and F' the predicted forces (eV/Å) over all atoms of a split, and E, E'
the total energies (eV) of its molecules:

===========================  ================================================================
key                          definition
===========================  ================================================================
``force_mae``                mean |F' - F| over atoms and Cartesian components (eV/Å)
``force_cosine``             mean over atoms of cos(F'_i, F_i); atoms with |F_i| < 1e-6 eV/Å
                             are left out (their direction is undefined)
``force_magnitude_mae``      mean over atoms of | |F'_i| - |F_i| | (eV/Å)
``energy_mae``               mean over molecules of |E' - E| (eV)
``energy_per_atom_mae``      mean over molecules of |E' - E| / n_atoms (eV/atom)
===========================  ================================================================

The generalisation gap of each metric is OOD / ID (:func:`generalisation_gap`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from deepset_moe.fragments import FRAGMENT_NAMES

MIN_FORCE_NORM = 1e-6
"""Reference forces with a norm below this (eV/Å) are left out of the cosine similarity."""

METRIC_NAMES: tuple[str, ...] = (
    "force_mae",
    "force_cosine",
    "force_magnitude_mae",
    "energy_mae",
    "energy_per_atom_mae",
)
METRIC_LABELS: dict[str, str] = {
    "force_mae": "Force MAE (eV/Å)",
    "force_cosine": "Force cosine similarity",
    "force_magnitude_mae": "Force magnitude MAE (eV/Å)",
    "energy_mae": "Energy MAE (eV)",
    "energy_per_atom_mae": "Energy MAE per atom (eV/atom)",
}


def _forces(predicted: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    predicted = np.asarray(predicted, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if predicted.shape != reference.shape or predicted.ndim != 2 or predicted.shape[1] != 3:
        raise ValueError(
            f"forces must both be [N, 3]; got predicted {predicted.shape}, "
            f"reference {reference.shape}"
        )
    if predicted.shape[0] == 0:
        raise ValueError("no atoms to compute force metrics on")
    return predicted, reference


def _energies(
    predicted: np.ndarray, reference: np.ndarray, n_atoms: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1)
    reference = np.asarray(reference, dtype=np.float64).reshape(-1)
    if predicted.shape != reference.shape or predicted.size == 0:
        raise ValueError(
            f"energies must be non-empty [B] arrays of equal length; got {predicted.shape} "
            f"and {reference.shape}"
        )
    if n_atoms is not None and np.asarray(n_atoms).reshape(-1).shape != predicted.shape:
        raise ValueError(f"n_atoms has shape {np.shape(n_atoms)}, expected {predicted.shape}")
    return predicted, reference


def force_mae(predicted: np.ndarray, reference: np.ndarray) -> float:
    """Mean |F' - F| over atoms and components, eV/Å. Inputs [N, 3]."""
    predicted, reference = _forces(predicted, reference)
    return float(np.abs(predicted - reference).mean())


def force_cosine_similarity(
    predicted: np.ndarray, reference: np.ndarray, min_norm: float = MIN_FORCE_NORM
) -> float:
    """Mean over atoms of cos(F'_i, F_i), leaving out atoms with |F_i| < ``min_norm``.

    A predicted force of zero length has cosine 0 with any reference. Returns NaN when every
    atom is left out.
    """
    predicted, reference = _forces(predicted, reference)
    reference_norm = np.linalg.norm(reference, axis=1)
    keep = reference_norm >= min_norm
    if not keep.any():
        return math.nan
    predicted_norm = np.linalg.norm(predicted[keep], axis=1)
    dot = np.einsum("ij,ij->i", predicted[keep], reference[keep])
    denominator = predicted_norm * reference_norm[keep]
    cosine = np.divide(dot, denominator, out=np.zeros_like(dot), where=predicted_norm > 0)
    return float(cosine.mean())


def force_magnitude_mae(predicted: np.ndarray, reference: np.ndarray) -> float:
    """Mean over atoms of | |F'_i| - |F_i| |, eV/Å. Inputs [N, 3]."""
    predicted, reference = _forces(predicted, reference)
    difference = np.linalg.norm(predicted, axis=1) - np.linalg.norm(reference, axis=1)
    return float(np.abs(difference).mean())


def energy_mae(predicted: np.ndarray, reference: np.ndarray) -> float:
    """Mean over molecules of |E' - E|, eV. Inputs [B]."""
    predicted, reference = _energies(predicted, reference)
    return float(np.abs(predicted - reference).mean())


def energy_per_atom_mae(predicted: np.ndarray, reference: np.ndarray, n_atoms: np.ndarray) -> float:
    """Mean over molecules of |E' - E| / n_atoms, eV/atom. Inputs [B]."""
    predicted, reference = _energies(predicted, reference, n_atoms)
    counts = np.asarray(n_atoms, dtype=np.float64).reshape(-1)
    return float((np.abs(predicted - reference) / counts).mean())


def compute_metrics(
    energy: np.ndarray,
    energy_ref: np.ndarray,
    forces: np.ndarray,
    forces_ref: np.ndarray,
    n_atoms: np.ndarray,
) -> dict[str, float]:
    """All :data:`METRIC_NAMES` of one split (energies [B] eV, forces [N, 3] eV/Å)."""
    if int(np.sum(n_atoms)) != np.shape(forces)[0]:
        raise ValueError(
            f"n_atoms sums to {int(np.sum(n_atoms))} but there are {np.shape(forces)[0]} forces"
        )
    return {
        "force_mae": force_mae(forces, forces_ref),
        "force_cosine": force_cosine_similarity(forces, forces_ref),
        "force_magnitude_mae": force_magnitude_mae(forces, forces_ref),
        "energy_mae": energy_mae(energy, energy_ref),
        "energy_per_atom_mae": energy_per_atom_mae(energy, energy_ref, n_atoms),
    }


def _as_float(value: float | None) -> float:
    """Metric values stored as JSON may be ``None`` for NaN."""
    return math.nan if value is None else float(value)


def generalisation_gap(
    id_metrics: Mapping[str, float], ood_metrics: Mapping[str, float]
) -> dict[str, float]:
    """OOD / ID for every metric present in both (NaN where ID is 0 or either is NaN/None)."""
    gap = {}
    for name in METRIC_NAMES:
        if name not in id_metrics or name not in ood_metrics:
            continue
        id_value, ood_value = _as_float(id_metrics[name]), _as_float(ood_metrics[name])
        gap[name] = ood_value / id_value if id_value != 0 else math.nan
    return gap


def per_fragment_force_mae(
    predicted: np.ndarray, reference: np.ndarray, fragment: np.ndarray
) -> dict[str, float]:
    """Force MAE (eV/Å) restricted to the atoms of each fragment class present.

    Args:
        predicted, reference: [N, 3] forces.
        fragment: [N] fragment labels (indices into ``FRAGMENT_NAMES``).

    Returns:
        ``{fragment name: MAE}`` for the fragments that occur, in vocabulary order.
    """
    predicted, reference = _forces(predicted, reference)
    fragment = np.asarray(fragment).reshape(-1)
    if fragment.shape[0] != predicted.shape[0]:
        raise ValueError(f"fragment has {fragment.shape[0]} labels for {predicted.shape[0]} atoms")
    error = np.abs(predicted - reference).mean(axis=1)
    return {
        name: float(error[fragment == label].mean())
        for label, name in enumerate(FRAGMENT_NAMES)
        if (fragment == label).any()
    }


def format_id_ood_table(
    id_metrics: Mapping[str, float], ood_metrics: Mapping[str, float], title: str = ""
) -> str:
    """The GMD-26 table: one row per metric with ID, OOD and the OOD/ID ratio."""
    gap = generalisation_gap(id_metrics, ood_metrics)
    width = max(len(label) for label in METRIC_LABELS.values())
    lines = [title] if title else []
    lines.append(f"{'metric':<{width}}  {'ID':>12}  {'OOD':>12}  {'OOD/ID':>8}")
    for name in METRIC_NAMES:
        lines.append(
            f"{METRIC_LABELS[name]:<{width}}  {_as_float(id_metrics[name]):>12.5g}  "
            f"{_as_float(ood_metrics[name]):>12.5g}  {gap[name]:>8.3g}"
        )
    return "\n".join(lines)
