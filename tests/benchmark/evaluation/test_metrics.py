"""The GMD-26 metric definitions of DESIGN.md, on hand-made arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmark.evaluation import metrics
from benchmark.evaluation.predictions import Predictions
from deepset_moe.fragments import FRAGMENT_INDEX

REFERENCE = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
PREDICTED = np.array([[2.0, 0.0, 0.0], [0.0, -2.0, 0.0], [0.5, 0.0, 0.0], [4.0, 3.0, 0.0]])


def test_force_mae_is_mean_over_atoms_and_components() -> None:
    # |errors|: atom0 1; atom1 4; atom2 0.5; atom3 1 + 1  -> 7.5 over 12 entries
    assert metrics.force_mae(PREDICTED, REFERENCE) == pytest.approx(7.5 / 12)


def test_cosine_leaves_out_atoms_with_tiny_reference_force() -> None:
    # atom2 has |F| = 0 and is left out: cosines 1, -1, 24/25.
    expected = (1.0 - 1.0 + 24.0 / 25.0) / 3
    assert metrics.force_cosine_similarity(PREDICTED, REFERENCE) == pytest.approx(expected)
    below = REFERENCE.copy()
    below[0] = [9e-7, 0.0, 0.0]  # |F| < 1e-6: also left out
    assert metrics.force_cosine_similarity(PREDICTED, below) == pytest.approx(
        (-1.0 + 24.0 / 25.0) / 2
    )
    at_threshold = REFERENCE.copy()
    at_threshold[0] = [1e-6, 0.0, 0.0]  # |F| = 1e-6 is kept
    assert metrics.force_cosine_similarity(PREDICTED, at_threshold) == pytest.approx(expected)


def test_cosine_is_nan_when_every_atom_is_left_out_and_zero_for_zero_prediction() -> None:
    assert math.isnan(metrics.force_cosine_similarity(PREDICTED, np.zeros_like(REFERENCE)))
    zero_prediction = np.zeros_like(REFERENCE)
    assert metrics.force_cosine_similarity(zero_prediction, REFERENCE) == 0.0


def test_force_magnitude_mae() -> None:
    # norms predicted 2, 2, 0.5, 5 vs reference 1, 2, 0, 5
    assert metrics.force_magnitude_mae(PREDICTED, REFERENCE) == pytest.approx((1 + 0 + 0.5) / 4)


def test_energy_maes_total_and_per_atom() -> None:
    energy_ref = np.array([-100.0, -200.0, 50.0])
    energy = np.array([-99.0, -203.0, 50.5])
    n_atoms = np.array([2, 3, 5])
    assert metrics.energy_mae(energy, energy_ref) == pytest.approx(4.5 / 3)
    assert metrics.energy_per_atom_mae(energy, energy_ref, n_atoms) == pytest.approx(
        (0.5 + 1.0 + 0.1) / 3
    )


def test_reductions_are_float64() -> None:
    # Total energies of ~1e4 eV with meV errors: float32 would lose the error entirely.
    energy_ref = np.full(1000, -12345.678901234, dtype=np.float64)
    energy = energy_ref + 1e-6 * np.arange(1000)
    assert metrics.energy_mae(energy, energy_ref) == pytest.approx(1e-6 * 999 / 2, rel=1e-6)
    # Mixed inputs are promoted to float64: 2^24 + 1 does not exist in float32.
    big = np.full((4, 3), 2.0**24, dtype=np.float32)
    shifted = big.astype(np.float64) + 1.0
    assert metrics.force_mae(shifted, big) == 1.0
    value = metrics.force_mae(PREDICTED.astype(np.float32), REFERENCE.astype(np.float32))
    assert type(value) is float


def test_generalisation_gap_is_ood_over_id() -> None:
    id_metrics = {name: 2.0 for name in metrics.METRIC_NAMES}
    ood_metrics = {name: 6.0 for name in metrics.METRIC_NAMES}
    ood_metrics["energy_mae"] = None  # NaN stored as JSON null
    id_metrics["force_cosine"] = 0.0
    gap = metrics.generalisation_gap(id_metrics, ood_metrics)
    assert gap["force_mae"] == 3.0
    assert math.isnan(gap["energy_mae"]) and math.isnan(gap["force_cosine"])
    table = metrics.format_id_ood_table(id_metrics, ood_metrics, "title")
    assert "Force MAE (eV/Å)" in table and table.splitlines()[0] == "title"


def test_compute_metrics_and_shape_errors() -> None:
    energy, energy_ref = np.array([1.0, 2.0]), np.array([1.5, 2.0])
    result = metrics.compute_metrics(energy, energy_ref, PREDICTED, REFERENCE, np.array([1, 3]))
    assert set(result) == set(metrics.METRIC_NAMES)
    with pytest.raises(ValueError, match="n_atoms sums to 3"):
        metrics.compute_metrics(energy, energy_ref, PREDICTED, REFERENCE, np.array([1, 2]))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        metrics.force_mae(PREDICTED[:, :2], REFERENCE[:, :2])


def test_per_fragment_force_mae() -> None:
    fragment = np.array(
        [FRAGMENT_INDEX["hydroxyl"], FRAGMENT_INDEX["CH2"], FRAGMENT_INDEX["CH2"], 0]
    )
    result = metrics.per_fragment_force_mae(PREDICTED, REFERENCE, fragment)
    assert list(result) == ["carboxylic_acid", "hydroxyl", "CH2"]  # vocabulary order
    assert result["hydroxyl"] == pytest.approx(1.0 / 3)
    assert result["CH2"] == pytest.approx((4.0 + 0.5) / 6)


def test_predictions_roundtrip_and_concatenation_order(tmp_path) -> None:
    def part(frames: list[int], sizes: list[int]) -> Predictions:
        n = sum(sizes)
        return Predictions(
            energy=np.array(frames, dtype=np.float64),
            energy_ref=np.zeros(len(frames)),
            forces=np.repeat(np.array(frames, dtype=np.float64), sizes)[:, None].repeat(3, 1),
            forces_ref=np.zeros((n, 3)),
            n_atoms=np.array(sizes),
            z=np.ones(n, dtype=np.int64),
            fragment=np.zeros(n, dtype=np.int64),
            molecule_id=np.array([f"m{i}" for i in frames]),
            frame_index=np.array(frames),
        )

    # Two processes' shards (frames 0, 2 and 1, 3) joined back into frame order.
    joined = Predictions.concatenate([part([0, 2], [2, 3]), part([1, 3], [1, 2])])
    assert joined.frame_index.tolist() == [0, 1, 2, 3]
    assert joined.n_atoms.tolist() == [2, 1, 3, 2]
    assert joined.forces[:, 0].tolist() == [0, 0, 1, 2, 2, 2, 3, 3]
    assert joined.molecule_id.tolist() == ["m0", "m1", "m2", "m3"]
    joined.save(tmp_path / "p.npz")
    loaded = Predictions.load(tmp_path / "p.npz")
    np.testing.assert_array_equal(loaded.forces, joined.forces)
    assert loaded.molecule_id.tolist() == joined.molecule_id.tolist()
    assert loaded.metrics() == joined.metrics()
