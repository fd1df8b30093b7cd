"""MD stability (benchmark.evaluation.stability): topology checks and real NVT runs."""

from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.lj import LennardJones
from rdkit import Chem
from rdkit.Chem import AllChem

from benchmark.dataset.frames import Frame
from benchmark.dataset.references import MMFFCalculator
from benchmark.evaluation.stability import (
    BREAK_SCALE,
    StabilitySettings,
    first_failure,
    reference_bonds,
    run_stability,
    stability_study,
    topology_violation,
)


@pytest.fixture(scope="module")
def ethanol() -> tuple[Chem.Mol, Frame]:
    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(mol, randomSeed=7)
    AllChem.MMFFOptimizeMolecule(mol)
    positions = mol.GetConformer().GetPositions()
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    frame = Frame(
        numbers=numbers,
        positions=positions,
        fragment=np.zeros(len(numbers), dtype=np.int64),
        energy=0.0,
        forces=np.zeros_like(positions),
        smiles="CCO",
        molecule_id="ethanol",
        trajectory_id="t0",
        reference="mmff",
    )
    return mol, frame


def test_reference_topology_of_ethanol(ethanol):
    _, frame = ethanol
    bonds = reference_bonds(frame.numbers, frame.positions)
    assert bonds.sum() // 2 == 8  # C-C, C-O, O-H and 5 C-H
    assert topology_violation(frame.numbers, frame.positions, bonds) is None


def test_broken_bond_found_on_hand_made_trajectory(ethanol):
    mol, frame = ethanol
    hydrogen = next(
        a.GetIdx()
        for a in mol.GetAtoms()
        if a.GetSymbol() == "H" and a.GetNeighbors()[0].GetSymbol() == "C"
    )
    carbon = mol.GetAtomWithIdx(hydrogen).GetNeighbors()[0].GetIdx()
    axis = frame.positions[hydrogen] - frame.positions[carbon]
    axis /= np.linalg.norm(axis)
    trajectory = []
    lengths = np.linspace(1.09, 2.0, 10)  # C-H pulled out; broken beyond 1.5 x 1.07 = 1.6 Å
    for length in lengths:
        positions = frame.positions.copy()
        positions[hydrogen] = positions[carbon] + length * axis
        trajectory.append(positions)
    index, reason = first_failure(frame.numbers, trajectory)
    expected = int(np.argmax(lengths > BREAK_SCALE * 1.07 + 0.005))
    assert index == expected
    assert "broken" in reason and f"{min(carbon, hydrogen)}-{max(carbon, hydrogen)}" in reason


def test_formed_bond_found(ethanol):
    _, frame = ethanol
    bonds = reference_bonds(frame.numbers, frame.positions)
    positions = frame.positions.copy()
    # swing the hydroxyl H (still within the O-H break limit, 1.46 Å) towards the methyl
    # carbon (atom 0, 2.4 Å from O) until it is 1.0 Å from it: a new C-H bond
    hydroxyl_h = int(np.flatnonzero(bonds[2] & (frame.numbers == 1))[0])
    axis = positions[0] - positions[2]
    positions[hydroxyl_h] = positions[0] - 1.0 * axis / np.linalg.norm(axis)
    assert np.linalg.norm(positions[hydroxyl_h] - positions[2]) < 1.45
    reason = topology_violation(frame.numbers, positions, bonds)
    assert reason is not None and "formed" in reason
    assert f"0-{hydroxyl_h}" in reason


def test_stable_mmff_run_reports_no_failure(ethanol):
    mol, frame = ethanol
    settings = StabilitySettings(steps=200, timestep_fs=0.5, check_every=10)
    result = run_stability(frame, MMFFCalculator(mol), settings, seed=0)
    assert result.stable and result.reason is None
    assert result.steps_run == 200 and result.time_to_failure_fs == pytest.approx(100.0)


def test_repulsive_potential_fails_and_summary_counts_it(ethanol):
    mol, frame = ethanol
    settings = StabilitySettings(steps=100, timestep_fs=0.5, check_every=5)
    # a strongly repulsive Lennard-Jones model pushes the bonded atoms apart
    exploding = stability_study(
        [frame], lambda: LennardJones(sigma=3.0, epsilon=1.0, rc=6.0), settings, seed=1
    )
    (run,) = exploding["runs"]
    assert not run["stable"] and run["time_to_failure_fs"] < 50.0
    assert exploding["fraction_stable"] == 0.0
    stable = stability_study([frame], lambda: MMFFCalculator(mol), settings, seed=1)
    assert stable["fraction_stable"] == 1.0
    assert stable["mean_time_to_failure_fs"] == pytest.approx(50.0)
