"""One 3D conformer of a SMILES with RDKit (ETKDGv3, optionally MMFF94-relaxed).

Used where a geometry is needed without reference labels: the physics test kit, examples,
throughput measurements. RDKit is imported on call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from deepset_moe.fragments import mol_from_smiles

if TYPE_CHECKING:
    from rdkit import Chem


def embed_conformer(smiles: str, seed: int = 0, relax: bool = False) -> tuple[Chem.Mol, np.ndarray]:
    """The molecule with explicit H and one conformer's [n, 3] positions (Å), RDKit atom order.

    Args:
        smiles: the molecule.
        seed: ETKDG random seed.
        relax: MMFF94-optimise the embedded conformer.

    Raises:
        FragmentError: the SMILES cannot be parsed.
        RuntimeError: ETKDG could not embed the molecule (names the SMILES).
    """
    from rdkit.Chem import AllChem

    mol = mol_from_smiles(smiles)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(mol, params) != 0:
        raise RuntimeError(f"ETKDG failed for {smiles}")
    if relax:
        AllChem.MMFFOptimizeMolecule(mol)
    return mol, mol.GetConformer().GetPositions()
