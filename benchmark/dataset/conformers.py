"""One unlabelled 3D conformer of a SMILES, as a :class:`~benchmark.dataset.frames.Frame`.

Used where a model only needs geometry (physics tests, throughput measurements); labelled
data comes from :mod:`benchmark.dataset.sampling`.
"""

from __future__ import annotations

import numpy as np
from rdkit import Chem

from benchmark.dataset.frames import Frame
from deepset_moe.conformers import embed_conformer
from deepset_moe.fragments import assign_fragments


def unlabelled_frame(smiles: str, seed: int = 0, relax: bool = False) -> Frame:
    """An ETKDGv3 conformer of ``smiles`` (optionally MMFF94-relaxed) with fragment labels.

    Positions in Å, RDKit atom order with explicit hydrogens. ``energy`` and ``forces`` are
    zeros: this frame carries no reference labels.

    Raises:
        RuntimeError: ETKDG could not embed the molecule (names the SMILES).
    """
    mol, positions = embed_conformer(smiles, seed, relax)
    fragment = assign_fragments(mol, name=smiles)
    return Frame(
        numbers=np.array([atom.GetAtomicNum() for atom in mol.GetAtoms()]),
        positions=positions,
        fragment=np.asarray(fragment),
        energy=0.0,
        forces=np.zeros_like(positions),
        smiles=Chem.MolToSmiles(Chem.RemoveHs(mol)),
        molecule_id=smiles,
        trajectory_id=f"{smiles}/t{seed}",
        reference="none",
    )
