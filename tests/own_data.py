"""A small labelled data set written the way other tools write theirs (for the ``gmd26 fit`` /
``gmd26 evaluate`` tests): ETKDG conformers of a few fluorinated and chlorinated molecules,
jiggled, labelled with MMFF94 (RDKit, through
:class:`benchmark.dataset.references.MMFFCalculator`) and written by ``ase.io.write`` with a
``SinglePointCalculator`` (keys ``energy`` / ``forces``, nothing else), or with other keys."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ase
import ase.io
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from rdkit import Chem
from rdkit.Chem import AllChem

from benchmark.dataset.references import MMFFCalculator

TRAIN_SMILES: tuple[str, ...] = ("FCCO", "CCF", "ClCCO", "CCCl")
"""Training molecules: H, C, O, F, Cl (F and Cl are outside GMD-26's H, C, N, O)."""
TEST_SMILES: tuple[str, ...] = ("FCCCl",)
"""A test molecule combining both halogens."""
HALIDE_PATTERN: dict[str, str] = {"halide": "[F,Cl,Br,I:1]"}
"""The fragment-vocabulary extension the tests use."""

TINY_TRAINING: dict[str, Any] = {
    "preset": "smoke",
    "max_steps": 4,
    "eval_every": 2,
    "batch_size": 4,
    "eval_batch_size": 16,
    "warmup_steps": 1,
    "max_val_frames": 8,
}
TINY_DEEPSET_MOE: dict[str, Any] = {
    "num_radial": 6,
    "radial_hidden": 16,
    "l_max": 1,
    "num_channels": 4,
    "species_dim": 8,
    "encoder_hidden": 16,
    "latent_dim": 16,
    "num_experts": 4,
    "top_k": 2,
    "fragment_dim": 8,
    "expert_hidden": 16,
    "expert_out_dim": 16,
    "readout_hidden": 16,
}
TINY_PAINN: dict[str, Any] = {"features": 16, "num_layers": 2, "num_radial": 8}


def labelled_structures(
    smiles: str, frames: int, seed: int = 0, jiggle: float = 0.05
) -> list[ase.Atoms]:
    """``frames`` jiggled copies of one MMFF-relaxed ETKDG conformer, each with a
    ``SinglePointCalculator`` holding its MMFF94 energy (eV) and forces (eV/Å)."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    assert AllChem.EmbedMolecule(mol, params) == 0, smiles
    AllChem.MMFFOptimizeMolecule(mol)
    positions = mol.GetConformer().GetPositions()
    numbers = [atom.GetAtomicNum() for atom in mol.GetAtoms()]
    calculator = MMFFCalculator(mol)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(frames):
        atoms = ase.Atoms(
            numbers=numbers, positions=positions + rng.normal(0, jiggle, (len(numbers), 3))
        )
        atoms.calc = calculator
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        out.append(atoms)
    return out


def write_ase_style(path: Path, smiles: Sequence[str], frames: int, seed: int = 0) -> Path:
    """Extended XYZ the way ASE users write it: ``energy`` / ``forces`` of a
    SinglePointCalculator, no other info."""
    structures = [
        atoms
        for index, s in enumerate(smiles)
        for atoms in labelled_structures(s, frames, seed=seed + index)
    ]
    ase.io.write(path, structures, format="extxyz")
    return path


def write_custom_keys(
    path: Path, smiles: Sequence[str], frames: int, energy_key: str, forces_key: str, seed: int = 0
) -> Path:
    """Labels as plain ``info[energy_key]`` / ``arrays[forces_key]`` (MACE-style custom keys),
    plus a ``molecule_id`` per frame."""
    structures = []
    for index, s in enumerate(smiles):
        for atoms in labelled_structures(s, frames, seed=seed + index):
            plain = ase.Atoms(numbers=atoms.numbers, positions=atoms.positions)
            plain.info[energy_key] = atoms.get_potential_energy()
            plain.info["molecule_id"] = s
            plain.arrays[forces_key] = atoms.get_forces()
            structures.append(plain)
    ase.io.write(path, structures, format="extxyz")
    return path
