"""How far a task's energies are from additive: linear reference fits and their OOD bias.

Two linear models of a molecule's total energy are fitted by least squares (float64) on a
task's training split and evaluated on its other splits:

- ``element``: E ≈ sum_Z n_Z E0(Z), the per-element reference energies every model uses;
- ``fragment``: E ≈ sum_(Z, f) n_(Z,f) E0(Z, f), one reference per element *and* fragment
  label (carboxylic acid, hydroxyl, ..., CH3, CH2, CH, C): group additivity in the sense of
  Benson's group-contribution method, without neighbour corrections.

For each split the result holds the energy MAE per atom and the *per-molecule bias*: the mean
signed error per atom over each molecule's frames. A molecule whose atom-kind counts do not lie
in the row space of the training counts (or with an atom kind the training split lacks) is *not
identified*: the training energies leave its fitted energy arbitrary (least squares picks the
minimum-norm value), as the fragment reference does for every duplication OOD molecule
(docs/tasks.md); such molecules are counted apart and left out of the bias statistics.

A bias of one sign on every OOD molecule, where the ID bias is near zero, is an energy shift
that an additive model cannot get from the training data; a model whose OOD energy error shows
the same one-signed bias extrapolates the energy additively at the fragment level
(docs/tasks.md, substitution).

Energies in eV; per-atom values in eV/atom.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmark.dataset.frames import Frame

REFERENCE_MODELS = ("element", "fragment")
"""The linear reference models: per-element, or per element and fragment label."""


def _keys(frame: Frame, model: str) -> list[tuple[int, int]]:
    fragments = frame.fragment if model == "fragment" else np.zeros_like(frame.numbers)
    return [(int(z), int(f)) for z, f in zip(frame.numbers, fragments)]


def _counts(frames: Sequence[Frame], model: str, columns: dict[tuple[int, int], int]) -> np.ndarray:
    counts = np.zeros((len(frames), len(columns)), dtype=np.float64)
    for row, frame in enumerate(frames):
        for key in _keys(frame, model):
            counts[row, columns[key]] += 1.0
    return counts


def reference_fit_errors(
    train: Sequence[Frame], splits: dict[str, Sequence[Frame]], model: str = "element"
) -> dict[str, dict[str, Any]]:
    """Fit a linear reference on ``train`` and measure it on each split.

    Args:
        train: training frames (total energies in eV).
        splits: ``{name: frames}`` to evaluate (e.g. ``id_test``, ``ood_test``).
        model: ``element`` or ``fragment`` (module docstring).

    Returns:
        ``{split: {"energy_per_atom_mae", "mean_molecule_bias", "mean_abs_molecule_bias",
        "positive_molecules", "molecules", "identified_molecules",
        "molecule_bias": {molecule_id: bias}}}``, energies in eV/atom; a molecule's bias is the
        mean over its frames of (fit - reference) / n_atoms. The MAE and the bias statistics
        cover the identified molecules only (NaN when there are none); ``molecule_bias`` lists
        every molecule.

    Raises:
        ValueError: an unknown model, or no training frames.
    """
    if model not in REFERENCE_MODELS:
        raise ValueError(f"reference model must be one of {REFERENCE_MODELS}, got {model!r}")
    if not train:
        raise ValueError("the reference fit needs training frames")
    frames_of = [train, *splits.values()]
    kinds = sorted({key for frames in frames_of for frame in frames for key in _keys(frame, model)})
    columns = {key: j for j, key in enumerate(kinds)}
    energies = np.array([frame.energy for frame in train], dtype=np.float64)
    train_counts = _counts(train, model, columns)
    solution, *_ = np.linalg.lstsq(train_counts, energies, rcond=None)
    row_space = _row_space(train_counts)
    out = {}
    for name, frames in splits.items():
        counts = _counts(frames, model, columns)
        residual = counts - (counts @ row_space.T) @ row_space
        identified = np.linalg.norm(residual, axis=1) <= 1e-8 * np.linalg.norm(counts, axis=1)
        reference = np.array([frame.energy for frame in frames], dtype=np.float64)
        atoms = np.array([frame.n_atoms for frame in frames], dtype=np.float64)
        error = (counts @ solution - reference) / atoms
        molecules = np.array([frame.molecule_id for frame in frames])
        names = sorted(set(molecules))
        bias = {str(m): float(error[molecules == m].mean()) for m in names}
        known = np.array([bias[m] for m in names if identified[molecules == m].all()])
        out[name] = {
            "energy_per_atom_mae": _mean(np.abs(error[identified])),
            "mean_molecule_bias": _mean(known),
            "mean_abs_molecule_bias": _mean(np.abs(known)),
            "positive_molecules": int((known > 0).sum()),
            "molecules": len(names),
            "identified_molecules": len(known),
            "molecule_bias": bias,
        }
    return out


def _row_space(matrix: np.ndarray) -> np.ndarray:
    """Orthonormal basis [r, K] of the row space of ``matrix`` (relative tolerance 1e-10)."""
    _, singular, vt = np.linalg.svd(matrix, full_matrices=False)
    return vt[singular > 1e-10 * singular.max()]


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")
