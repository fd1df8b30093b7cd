"""Distance of every test atom from the training set, in a fixed, model-independent descriptor.

"How far can a model extrapolate?" needs a ruler that does not depend on the model. Each atom's
environment is described by a SOAP power spectrum (``dscribe``; :data:`SOAP_SETTINGS`), L2
normalised, so that the Euclidean distance between two environments,
``d = |p - q| = sqrt(2 - 2 p·q)``, lies in [0, 2] (0: identical environments, sqrt(2):
orthogonal spectra). The distance of a test atom from the training set is the distance to the
nearest training environment *of the same element*. Training environments are subsampled per
element with a seed (:data:`MAX_TRAIN_ENVIRONMENTS`) to bound the cost.

The distances of a task depend only on the data, so they are computed once per task and cached
in the run directory (:func:`task_distances`); the report bins each model's per-atom force
error by them (:func:`binned_error`).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import ase
import numpy as np

from benchmark.dataset.frames import Frame
from benchmark.dataset.molecules import SUPPORTED_ELEMENTS
from deepset_moe.atomic_io import atomic_write


@dataclass(frozen=True)
class SoapSettings:
    """SOAP descriptor settings (dscribe names; lengths in Å).

    Attributes:
        r_cut: cutoff radius, Å.
        n_max: number of radial basis functions.
        l_max: maximum degree of the spherical harmonics.
        sigma: width of the atomic Gaussians, Å.
        species: chemical symbols the descriptor knows.
    """

    r_cut: float = 5.0
    n_max: int = 4
    l_max: int = 3
    sigma: float = 0.5
    species: tuple[str, ...] = SUPPORTED_ELEMENTS


SOAP_SETTINGS = SoapSettings()
MAX_TRAIN_ENVIRONMENTS = 4000
"""Training environments kept per element (seeded subsample) as the reference set."""
DISTANCE_CHUNK = 4096
"""Test atoms per block in the nearest-neighbour search (bounds memory to ~chunk x M floats)."""


def soap_descriptors(frames: Sequence[Frame], settings: SoapSettings = SOAP_SETTINGS) -> np.ndarray:
    """L2-normalised SOAP vectors of every atom of ``frames``, in frame then atom order.

    Returns:
        [sum of n_atoms, D] float64, each row of unit length.

    Raises:
        ValueError: no frames, or a frame holds an element outside ``settings.species``.
    """
    from dscribe.descriptors import SOAP

    if len(frames) == 0:
        raise ValueError("no frames to describe")
    known = set(ase.Atoms(settings.species).numbers.tolist())
    for index, frame in enumerate(frames):
        unknown = set(frame.numbers.tolist()) - known
        if unknown:
            raise ValueError(
                f"frame {index} ({frame.molecule_id}) holds elements {sorted(unknown)} outside "
                f"the SOAP species {settings.species}"
            )
    soap = SOAP(
        species=list(settings.species),
        r_cut=settings.r_cut,
        n_max=settings.n_max,
        l_max=settings.l_max,
        sigma=settings.sigma,
        periodic=False,
    )
    systems = [ase.Atoms(numbers=f.numbers, positions=f.positions) for f in frames]
    vectors = np.concatenate([np.atleast_2d(soap.create(s)) for s in systems]).astype(np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def subsample_by_element(
    descriptors: np.ndarray, numbers: np.ndarray, max_per_element: int, seed: int
) -> dict[int, np.ndarray]:
    """Reference environments per element: at most ``max_per_element`` rows, drawn with ``seed``.

    Args:
        descriptors: [N, D] normalised descriptors.
        numbers: [N] atomic numbers.

    Returns:
        ``{Z: [M_Z, D]}``.
    """
    rng = np.random.default_rng(seed)
    reference = {}
    for z in np.unique(numbers):
        rows = np.flatnonzero(numbers == z)
        if rows.size > max_per_element:
            rows = np.sort(rng.choice(rows, size=max_per_element, replace=False))
        reference[int(z)] = descriptors[rows]
    return reference


def nearest_distance(
    descriptors: np.ndarray, numbers: np.ndarray, reference: dict[int, np.ndarray]
) -> np.ndarray:
    """Distance of each atom to its nearest reference environment of the same element.

    Args:
        descriptors: [N, D] normalised descriptors of the query atoms.
        numbers: [N] atomic numbers.
        reference: ``{Z: [M_Z, D]}`` normalised reference descriptors.

    Returns:
        [N] float64 distances in [0, 2]; ``inf`` for an element absent from the reference.
    """
    distances = np.full(numbers.shape[0], np.inf)
    for z in np.unique(numbers):
        rows = np.flatnonzero(numbers == z)
        if int(z) not in reference:
            continue
        ref = reference[int(z)]
        for start in range(0, rows.size, DISTANCE_CHUNK):
            block = rows[start : start + DISTANCE_CHUNK]
            similarity = (descriptors[block] @ ref.T).max(axis=1)
            distances[block] = np.sqrt(np.clip(2.0 - 2.0 * similarity, 0.0, None))
    return distances


def _atom_numbers(frames: Sequence[Frame]) -> np.ndarray:
    return np.concatenate([f.numbers for f in frames])


def distances_from_training(
    train_frames: Sequence[Frame],
    test_sets: dict[str, Sequence[Frame]],
    settings: SoapSettings = SOAP_SETTINGS,
    max_per_element: int = MAX_TRAIN_ENVIRONMENTS,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Per-atom distance from the training set for each test set.

    Args:
        train_frames: the training split.
        test_sets: ``{split name: frames}``.

    Returns:
        ``{split name: [atoms of that split] float64}``, atoms in frame then atom order.
    """
    train_numbers = _atom_numbers(train_frames)
    reference = subsample_by_element(
        soap_descriptors(train_frames, settings), train_numbers, max_per_element, seed
    )
    return {
        name: nearest_distance(soap_descriptors(frames, settings), _atom_numbers(frames), reference)
        for name, frames in test_sets.items()
    }


def _fingerprint(
    train_frames: Sequence[Frame],
    test_sets: dict[str, Sequence[Frame]],
    settings: SoapSettings,
    max_per_element: int,
    seed: int,
) -> str:
    """Hash of the settings and of the data (molecules, trajectories, geometries)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([asdict(settings), max_per_element, seed]).encode())
    for name, frames in [("train", train_frames), *sorted(test_sets.items())]:
        digest.update(name.encode())
        for frame in frames:
            digest.update(f"{frame.molecule_id}|{frame.trajectory_id}|{frame.step}".encode())
            digest.update(np.ascontiguousarray(frame.positions, dtype=np.float64).tobytes())
    return digest.hexdigest()


def task_distances(
    cache_path: str | Path,
    train_frames: Sequence[Frame],
    test_sets: dict[str, Sequence[Frame]],
    settings: SoapSettings = SOAP_SETTINGS,
    max_per_element: int = MAX_TRAIN_ENVIRONMENTS,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """:func:`distances_from_training`, cached in ``cache_path`` (an ``.npz``).

    The cache holds a fingerprint of the settings and the data; a stale cache (other data or
    settings) is recomputed and overwritten.
    """
    cache_path = Path(cache_path)
    fingerprint = _fingerprint(train_frames, test_sets, settings, max_per_element, seed)
    if cache_path.exists():
        try:
            with np.load(cache_path) as cached:
                if str(cached["fingerprint"]) == fingerprint:
                    return {name: cached[f"distance_{name}"] for name in test_sets}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # a damaged cache is recomputed
    distances = distances_from_training(train_frames, test_sets, settings, max_per_element, seed)
    with atomic_write(cache_path) as partial:
        np.savez(
            partial,
            fingerprint=np.array(fingerprint),
            **{f"distance_{name}": value for name, value in distances.items()},
        )
    return distances


def binned_error(
    distance: np.ndarray, error: np.ndarray, edges: np.ndarray, min_count: int = 5
) -> dict[str, list[float]]:
    """Mean error in distance bins.

    Args:
        distance: [N] distances from the training set.
        error: [N] per-atom errors (e.g. force MAE of the atom, eV/Å).
        edges: [nbins + 1] increasing bin edges.
        min_count: bins with fewer atoms are reported as NaN (too noisy to plot).

    Atoms outside the edges fall into the first or last bin; atoms with a non-finite distance
    or error are left out.

    Returns:
        ``{"center": [nbins], "mean": [nbins], "count": [nbins]}`` (JSON-friendly lists).
    """
    distance = np.asarray(distance, dtype=np.float64)
    error = np.asarray(error, dtype=np.float64)
    if distance.shape != error.shape:
        raise ValueError(f"distance {distance.shape} and error {error.shape} differ in shape")
    keep = np.isfinite(distance) & np.isfinite(error)
    distance, error = distance[keep], error[keep]
    index = np.digitize(distance, edges[1:-1])
    counts = np.bincount(index, minlength=len(edges) - 1)[: len(edges) - 1]
    sums = np.bincount(index, weights=error, minlength=len(edges) - 1)[: len(edges) - 1]
    means = np.where(counts >= min_count, sums / np.maximum(counts, 1), np.nan)
    return {
        "center": (0.5 * (edges[1:] + edges[:-1])).tolist(),
        "mean": means.tolist(),
        "count": counts.astype(int).tolist(),
    }
