"""Fragment assignment: hand-checked labels, full coverage, geometry path, errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from benchmark.dataset.tasks import all_molecules
from deepset_moe.fragments import (
    FRAGMENT_INDEX,
    FRAGMENT_NAMES,
    NUM_FRAGMENTS,
    FragmentError,
    assign_fragments,
    fragments_from_geometry,
    fragments_from_smiles,
)

ACID, OH, NH2, CHO = "carboxylic_acid", "hydroxyl", "primary_amine", "aldehyde"


def _names(labels: np.ndarray) -> list[str]:
    return [FRAGMENT_NAMES[i] for i in labels]


def test_vocabulary_order_is_the_stored_contract():
    assert FRAGMENT_NAMES == (ACID, OH, NH2, CHO, "CH3", "CH2", "CH", "C")
    assert NUM_FRAGMENTS == 8


# Atom order of fragments_from_smiles: heavy atoms in SMILES order, then the H atoms of each
# heavy atom in turn (RDKit AddHs). Each case lists (element, heavy-atom index the H sits on or
# None, expected label) so that the expected labels are tied to the actual atoms.
HAND_LABELLED = {
    "CC(=O)O": [  # acetic acid
        ("C", None, "CH3"), ("C", None, ACID), ("O", None, ACID), ("O", None, ACID),
        ("H", 0, "CH3"), ("H", 0, "CH3"), ("H", 0, "CH3"), ("H", 3, ACID),
    ],
    "OCCCCO": [  # butane-1,4-diol
        ("O", None, OH), ("C", None, "CH2"), ("C", None, "CH2"), ("C", None, "CH2"),
        ("C", None, "CH2"), ("O", None, OH),
        ("H", 0, OH),
        ("H", 1, "CH2"), ("H", 1, "CH2"), ("H", 2, "CH2"), ("H", 2, "CH2"),
        ("H", 3, "CH2"), ("H", 3, "CH2"), ("H", 4, "CH2"), ("H", 4, "CH2"),
        ("H", 5, OH),
    ],
    "NCCCC=O": [  # 4-aminobutanal
        ("N", None, NH2), ("C", None, "CH2"), ("C", None, "CH2"), ("C", None, "CH2"),
        ("C", None, CHO), ("O", None, CHO),
        ("H", 0, NH2), ("H", 0, NH2),
        ("H", 1, "CH2"), ("H", 1, "CH2"), ("H", 2, "CH2"), ("H", 2, "CH2"),
        ("H", 3, "CH2"), ("H", 3, "CH2"),
        ("H", 4, CHO),
    ],
    "CC(O)CC": [  # butan-2-ol
        ("C", None, "CH3"), ("C", None, "CH"), ("O", None, OH), ("C", None, "CH2"),
        ("C", None, "CH3"),
        ("H", 0, "CH3"), ("H", 0, "CH3"), ("H", 0, "CH3"),
        ("H", 1, "CH"),
        ("H", 2, OH),
        ("H", 3, "CH2"), ("H", 3, "CH2"),
        ("H", 4, "CH3"), ("H", 4, "CH3"), ("H", 4, "CH3"),
    ],
}


@pytest.mark.parametrize("smiles", sorted(HAND_LABELLED))
def test_hand_labelled_molecules(smiles):
    mol, labels = fragments_from_smiles(smiles)
    expected = HAND_LABELLED[smiles]
    assert mol.GetNumAtoms() == len(expected)
    for atom, (symbol, host, _) in zip(mol.GetAtoms(), expected, strict=True):
        assert atom.GetSymbol() == symbol
        if host is not None:
            assert [n.GetIdx() for n in atom.GetNeighbors()] == [host]
    assert labels.dtype == np.int64
    assert _names(labels) == [label for _, _, label in expected]


@pytest.mark.parametrize(
    ("smiles", "expected_heavy"),
    [
        ("C", ["CH3"]),  # methane: CH4 joins the CH3 class (documented)
        ("CC(C)(C)C", ["CH3", "C", "CH3", "CH3", "CH3"]),  # neopentane
        ("CC(C)C", ["CH3", "CH", "CH3", "CH3"]),
        ("C=O", [CHO, CHO]),  # formaldehyde
        ("OC=O", [ACID, ACID, ACID]),  # formic acid
        ("OC(=O)CCC(=O)O", [ACID, ACID, ACID, "CH2", "CH2", ACID, ACID, ACID]),
        ("CN", ["CH3", NH2]),
    ],
)
def test_special_cases(smiles, expected_heavy):
    mol, labels = fragments_from_smiles(smiles)
    heavy = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1]
    assert _names(labels[heavy]) == expected_heavy
    for atom in mol.GetAtoms():
        if atom.GetAtomicNum() == 1:
            assert labels[atom.GetIdx()] == labels[atom.GetNeighbors()[0].GetIdx()]


def test_every_atom_of_the_standard_molecules_is_labelled():
    group_atom = {ACID: "C", OH: "O", NH2: "N", CHO: "C"}
    for spec in all_molecules("standard"):
        mol, labels = fragments_from_smiles(spec.smiles)
        assert labels.shape == (mol.GetNumAtoms(),), spec.molecule_id
        assert ((labels >= 0) & (labels < NUM_FRAGMENTS)).all(), spec.molecule_id
        # one labelled C/O/N "core" atom per declared functional group, none for others
        for group, element in group_atom.items():
            count = sum(
                1
                for a in mol.GetAtoms()
                if a.GetSymbol() == element and labels[a.GetIdx()] == FRAGMENT_INDEX[group]
            )
            assert count == spec.groups.count(group), (spec.molecule_id, group)


def _embedded(smiles: str, seed: int) -> tuple[Chem.Mol, np.ndarray]:
    mol, labels = fragments_from_smiles(smiles)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    assert AllChem.EmbedMolecule(mol, params) == 0, smiles
    return mol, labels


@pytest.mark.parametrize(
    "smiles", ["CC(=O)O", "OCCCCO", "NCCCC=O", "CC(O)CC", "CC(C)C(=O)O", "NCCCCCC(=O)O",
               "CC(C)(C)CC=O", "CCCCCCCCN"]
)
def test_geometry_path_matches_smiles_path(smiles):
    mol, labels = _embedded(smiles, seed=7)
    numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
    positions = mol.GetConformer().GetPositions()
    np.testing.assert_array_equal(fragments_from_geometry(numbers, positions), labels)


def test_geometry_path_follows_the_input_atom_order():
    mol, labels = _embedded("NCCC(=O)O", seed=3)
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    positions = mol.GetConformer().GetPositions()
    order = np.random.default_rng(0).permutation(len(numbers))
    shuffled = fragments_from_geometry(numbers[order], positions[order])
    np.testing.assert_array_equal(shuffled, labels[order])


@pytest.mark.parametrize("smiles", ["C1CC", "not a smiles", "CC(C", ""])
def test_invalid_smiles(smiles):
    with pytest.raises(FragmentError, match="invalid SMILES"):
        fragments_from_smiles(smiles)


@pytest.mark.parametrize(
    ("smiles", "atom", "symbol"),
    [("CCCl", 2, "Cl"), ("CCS", 2, "S"), ("OCCF", 3, "F")],
)
def test_unsupported_element(smiles, atom, symbol):
    pattern = rf"{re.escape(smiles)}.*atom {atom} \({symbol}\).*element"
    with pytest.raises(FragmentError, match=pattern):
        fragments_from_smiles(smiles)


@pytest.mark.parametrize(
    ("smiles", "atom"),
    [
        ("CC(=O)C", 1),  # ketone
        ("CC(=O)OC", 1),  # ester
        ("CC#N", 1),  # nitrile
        ("CNC", 1),  # secondary amine
        ("COC", 1),  # ether
        ("CC(N)=O", 1),  # amide
        ("C=C", 0),  # alkene
        ("O", 0),  # water
    ],
)
def test_uncovered_groups(smiles, atom):
    pattern = rf"'{re.escape(smiles)}': atom {atom} .*covered by no fragment"
    with pytest.raises(FragmentError, match=pattern):
        fragments_from_smiles(smiles)


@pytest.mark.parametrize("smiles", ["CC(=O)[O-]", "C[NH3+]", "[CH2]C"])
def test_charged_and_radical_atoms(smiles):
    with pytest.raises(FragmentError, match="charged or radical"):
        fragments_from_smiles(smiles)


def test_assign_requires_explicit_hydrogens():
    with pytest.raises(FragmentError, match="implicit hydrogens"):
        assign_fragments(Chem.MolFromSmiles("CCO"))


def test_geometry_errors_name_the_problem():
    with pytest.raises(FragmentError, match="positions"):
        fragments_from_geometry([6, 1], np.zeros((3, 3)))
    with pytest.raises(FragmentError, match="bond perception failed"):
        fragments_from_geometry([6, 1], [[0.0, 0.0, 0.0], [1.09, 0.0, 0.0]])  # a bare CH
    mol = Chem.AddHs(Chem.MolFromSmiles("CCCl"))
    assert AllChem.EmbedMolecule(mol, randomSeed=1) == 0
    numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
    with pytest.raises(FragmentError, match=r"atom 2 \(Cl\)"):
        fragments_from_geometry(numbers, mol.GetConformer().GetPositions())


def test_geometry_path_on_every_standard_molecule():
    for spec in all_molecules("standard"):
        mol, labels = _embedded(spec.smiles, seed=11)
        numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
        geometry_labels = fragments_from_geometry(numbers, mol.GetConformer().GetPositions())
        np.testing.assert_array_equal(geometry_labels, labels, err_msg=spec.molecule_id)
