"""Distance from the training set (SOAP, benchmark.evaluation.extrapolation)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule

from benchmark.dataset.frames import Frame
from benchmark.evaluation.extrapolation import (
    binned_error,
    distances_from_training,
    nearest_distance,
    soap_descriptors,
    subsample_by_element,
    task_distances,
)


def _frame(positions: np.ndarray, numbers: np.ndarray, name: str = "ethanol") -> Frame:
    return Frame(
        numbers=numbers,
        positions=positions,
        fragment=np.zeros(len(numbers), dtype=np.int64),
        energy=0.0,
        forces=np.zeros_like(positions),
        smiles="CCO",
        molecule_id=name,
        trajectory_id="t0",
        reference="none",
    )


@pytest.fixture(scope="module")
def ethanol() -> Frame:
    atoms = molecule("CH3CH2OH")
    return _frame(atoms.positions.copy(), atoms.numbers.copy())


def test_descriptors_are_unit_vectors(ethanol):
    vectors = soap_descriptors([ethanol])
    assert vectors.shape[0] == ethanol.n_atoms
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-12)


def test_distance_zero_in_training_set_and_grows_with_displacement(ethanol):
    oxygen = int(np.flatnonzero(ethanol.numbers == 8)[0])
    direction = np.array([0.6, 0.8, 0.0])
    shifts = (0.0, 0.05, 0.15, 0.3)
    displaced = []
    for shift in shifts:
        positions = ethanol.positions.copy()
        positions[oxygen] += shift * direction
        displaced.append(_frame(positions, ethanol.numbers, f"shift{shift}"))
    distances = distances_from_training([ethanol], {"test": displaced})["test"]
    per_frame = distances.reshape(len(shifts), ethanol.n_atoms)
    np.testing.assert_allclose(per_frame[0], 0.0, atol=1e-6)
    oxygen_distance = per_frame[:, oxygen]
    assert np.all(np.diff(oxygen_distance) > 0), oxygen_distance
    assert oxygen_distance[-1] > 0.01


def test_nearest_distance_is_per_element():
    # two orthogonal unit vectors: the nearest same-element reference decides the distance
    reference = {1: np.array([[1.0, 0.0]]), 6: np.array([[0.0, 1.0]])}
    query = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    distance = nearest_distance(query, np.array([1, 6, 8]), reference)
    np.testing.assert_allclose(distance[:2], [0.0, np.sqrt(2.0)], atol=1e-12)
    assert np.isinf(distance[2])  # oxygen absent from the reference


def test_subsample_is_seeded_and_bounded():
    rng = np.random.default_rng(1)
    descriptors = rng.normal(size=(50, 4))
    numbers = np.array([1] * 40 + [6] * 10)
    first = subsample_by_element(descriptors, numbers, max_per_element=8, seed=3)
    again = subsample_by_element(descriptors, numbers, max_per_element=8, seed=3)
    assert first[1].shape == (8, 4) and first[6].shape == (8, 4)
    np.testing.assert_array_equal(first[1], again[1])


def test_cache_is_reused_and_invalidated(tmp_path, ethanol):
    shifted = _frame(
        ethanol.positions + 0.1 * np.eye(3)[0] * (ethanol.numbers == 8)[:, None],
        ethanol.numbers,
        "shifted",
    )
    cache = tmp_path / "distances.npz"
    first = task_distances(cache, [ethanol], {"ood": [shifted]})
    stamp = cache.stat().st_mtime_ns
    again = task_distances(cache, [ethanol], {"ood": [shifted]})
    assert cache.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(first["ood"], again["ood"])
    other = task_distances(cache, [shifted], {"ood": [shifted]})  # other training data
    np.testing.assert_allclose(other["ood"], 0.0, atol=1e-6)


def test_binned_error_means_and_counts():
    distance = np.array([0.05, 0.05, 0.15, 0.15, 0.15, np.inf])
    error = np.array([1.0, 3.0, 2.0, 2.0, 5.0, 100.0])
    binned = binned_error(distance, error, np.array([0.0, 0.1, 0.2]), min_count=2)
    assert binned["count"] == [2, 3]
    np.testing.assert_allclose(binned["mean"], [2.0, 3.0])
    np.testing.assert_allclose(binned["center"], [0.05, 0.15])
