"""Reference calculators: units, forces = -dE/dx, error messages."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from ase import Atoms, units
from ase.calculators.lj import LennardJones
from rdkit import Chem
from rdkit.Chem import AllChem

from benchmark.dataset.references import (
    DFT_DEFAULTS,
    MMFFCalculator,
    PySCFCalculator,
    get_calculator,
    reference_name,
)
from benchmark.dataset.sampling import single_threaded_openmp


def embedded(smiles: str, seed: int = 7) -> tuple[Chem.Mol, Atoms]:
    molecule = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(molecule, randomSeed=seed) == 0
    atoms = Atoms(
        numbers=[a.GetAtomicNum() for a in molecule.GetAtoms()],
        positions=molecule.GetConformer().GetPositions(),
    )
    return molecule, atoms


def finite_difference_forces(atoms: Atoms, delta: float = 1e-4) -> np.ndarray:
    """-dE/dx by central differences, eV/Å."""
    forces = np.zeros((len(atoms), 3))
    probe = atoms.copy()
    probe.calc = atoms.calc
    for i in range(len(atoms)):
        for k in range(3):
            energies = []
            for sign in (1, -1):
                probe.positions = atoms.positions.copy()
                probe.positions[i, k] += sign * delta
                energies.append(probe.get_potential_energy())
            forces[i, k] = -(energies[0] - energies[1]) / (2 * delta)
    return forces


def test_mmff_energy_in_ev_and_forces_are_minus_gradient():
    molecule, atoms = embedded("NCCC(=O)O")
    atoms.calc = get_calculator("mmff", molecule=molecule)
    properties = AllChem.MMFFGetMoleculeProperties(molecule)
    kcal_per_mol = AllChem.MMFFGetMoleculeForceField(molecule, properties).CalcEnergy()
    assert atoms.get_potential_energy() == pytest.approx(kcal_per_mol * units.kcal / units.mol)
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 0.1  # an unrelaxed ETKDG geometry has sizeable forces
    np.testing.assert_allclose(forces, finite_difference_forces(atoms), atol=2e-5)


def test_mmff_rejects_atoms_of_another_molecule():
    molecule, _ = embedded("CCO")
    _, other = embedded("CCN")
    other.calc = MMFFCalculator(molecule)
    with pytest.raises(ValueError, match="do not match the RDKit molecule"):
        other.get_potential_energy()


def test_mmff_needs_the_molecule():
    with pytest.raises(ValueError, match="needs the RDKit molecule"):
        get_calculator("mmff")


def test_xtb_methanol_finite_and_consistent_with_finite_differences():
    _, atoms = embedded("CO")
    atoms.calc = get_calculator("xtb")
    with single_threaded_openmp():
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        numeric = finite_difference_forces(atoms)
    # GFN2-xTB total energy of methanol is about -8.2 Hartree; the calculator returns eV
    assert np.isfinite(energy) and -9.0 < energy / units.Hartree < -7.5
    assert np.isfinite(forces).all() and forces.shape == (6, 3)
    np.testing.assert_allclose(forces, numeric, atol=1e-3)
    assert np.abs(forces.sum(axis=0)).max() < 1e-3  # no net force on an isolated molecule


def test_unknown_reference_and_names():
    with pytest.raises(ValueError, match="unknown reference 'orca'"):
        get_calculator("orca")
    calculator = LennardJones()
    assert get_calculator(calculator) is calculator
    assert reference_name(calculator) == "LennardJones"
    assert reference_name("xtb") == "xtb"
    with pytest.raises(ValueError, match="options cannot be applied"):
        get_calculator(calculator, sigma=2.0)


def test_dft_without_pyscf_gives_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyscf", None)  # makes `import pyscf` fail
    with pytest.raises(ImportError, match=r"needs PySCF: pip install"):
        get_calculator("dft")


@pytest.fixture
def pyscf_one_thread():
    """PySCF on one thread (its OpenMP threads spin-wait on a loaded machine)."""
    lib = pytest.importorskip("pyscf.lib")  # optional extra: pip install 'deepset-moe[dft]'
    previous = lib.num_threads()
    lib.num_threads(1)
    yield
    lib.num_threads(previous)


def test_dft_water_energy_and_forces(pyscf_one_thread):
    assert DFT_DEFAULTS == {"xc": "B3LYP", "basis": "def2-SVP"}
    atoms = Atoms("OH2", positions=[[0, 0, 0.12], [0, 0.76, -0.47], [0, -0.76, -0.47]])
    atoms.calc = PySCFCalculator(xc="B3LYP", basis="sto-3g")
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    assert -76.0 < energy / units.Hartree < -75.0  # B3LYP/STO-3G water, about -75.3 Eh
    # directional derivative along a fixed random displacement
    direction = np.random.default_rng(0).normal(size=(3, 3))
    direction /= np.linalg.norm(direction)
    step = 1e-3
    shifted = []
    for sign in (1, -1):
        probe = Atoms(atoms.numbers, atoms.positions + sign * step * direction)
        probe.calc = PySCFCalculator(xc="B3LYP", basis="sto-3g")
        shifted.append(probe.get_potential_energy())
    numeric = -(shifted[0] - shifted[1]) / (2 * step)
    assert np.sum(forces * direction) == pytest.approx(numeric, abs=2e-3)
