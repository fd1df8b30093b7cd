"""Test geometries of the physics kit: small organic molecules and atom pairs, as batches.

Nothing here needs the benchmark or its data: conformers are embedded with RDKit (ETKDGv3,
seeded), relaxed with MMFF94 and jiggled, so every run sees the same geometries. RDKit is
imported only when a molecule is embedded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from deepset_moe.batch import Batch, collate
from deepset_moe.conformers import embed_conformer
from deepset_moe.fragments import DEFAULT_VOCABULARY, FragmentVocabulary

TEST_SMILES: tuple[str, ...] = ("OCCC(=O)O", "NCCC=O", "CC(O)CC")
"""Small molecules covering the functional fragments and a secondary carbon."""

JIGGLE_STD = 0.05
"""Std (Å) of the Gaussian noise added to relaxed positions: forces then do not vanish."""


@dataclass
class MoleculeGeometry:
    """One unlabelled geometry (what :func:`deepset_moe.batch.collate` reads).

    Attributes:
        numbers: [n] atomic numbers (RDKit order, explicit H after the heavy atoms).
        positions: [n, 3] Å.
        fragment: [n] fragment labels of the vocabulary used to embed the molecule.
        smiles: the SMILES the molecule was built from.
    """

    numbers: np.ndarray
    positions: np.ndarray
    fragment: np.ndarray
    smiles: str

    @property
    def molecule_id(self) -> str:
        """Name of the molecule in batching errors."""
        return self.smiles


def embed_molecule(
    smiles: str,
    seed: int = 0,
    relax: bool = True,
    jiggle: float = JIGGLE_STD,
    vocabulary: FragmentVocabulary = DEFAULT_VOCABULARY,
) -> MoleculeGeometry:
    """An ETKDGv3 conformer of ``smiles`` (MMFF94-relaxed, then jiggled) with fragment labels.

    Args:
        smiles: the molecule.
        seed: ETKDG random seed and seed of the jiggle noise.
        relax: MMFF94-optimise the embedded conformer.
        jiggle: std of the Gaussian displacement added to every coordinate, Å (0: none).
        vocabulary: labels the atoms (``fragment``).

    Raises:
        RuntimeError: ETKDG could not embed the molecule (names the SMILES).
    """
    mol, positions = embed_conformer(smiles, seed, relax)
    fragment = vocabulary.assign(mol, name=smiles)
    if jiggle:
        rng = np.random.default_rng(seed)
        positions = positions + rng.normal(0, jiggle, positions.shape)
    numbers = np.array([atom.GetAtomicNum() for atom in mol.GetAtoms()])
    return MoleculeGeometry(numbers, positions, np.asarray(fragment), smiles)


def make_batch(
    smiles: Sequence[str] = TEST_SMILES, seed: int = 0, dtype: torch.dtype = torch.float64
) -> Batch:
    """A batch of one :func:`embed_molecule` geometry per SMILES (no labels).

    Args:
        smiles: the molecules, in batch order.
        seed: conformer seed.
        dtype: dtype of ``pos`` (float64 for the tight physics tolerances).
    """
    return collate([embed_molecule(s, seed) for s in smiles], dtype=dtype)


def pair_batch(
    distance: float,
    numbers: tuple[int, int] = (6, 8),
    fragments: tuple[int, int] = (5, 1),
    dtype: torch.dtype = torch.float64,
) -> Batch:
    """Two atoms on the x axis ``distance`` Å apart, one molecule.

    Args:
        distance: separation, Å.
        numbers: their atomic numbers (default C and O).
        fragments: their fragment labels (default CH2-like carbon and hydroxyl O of
            :data:`~deepset_moe.fragments.DEFAULT_VOCABULARY`).
        dtype: dtype of ``pos``.
    """
    pos = torch.tensor([[0.0, 0.0, 0.0], [distance, 0.0, 0.0]], dtype=dtype)
    return {
        "z": torch.tensor(numbers),
        "pos": pos,
        "fragment": torch.tensor(fragments),
        "batch": torch.zeros(2, dtype=torch.long),
        "ptr": torch.tensor([0, 2]),
        "n_atoms": torch.tensor([2]),
    }
