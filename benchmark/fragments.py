"""Fragment vocabulary of GMD-26 and per-atom fragment assignment with RDKit SMARTS.

Every atom of a molecule, hydrogens included, gets exactly one label from
:data:`FRAGMENT_NAMES`. Heavy atoms are labelled by SMARTS patterns tried in vocabulary order
(the first match wins); each hydrogen then takes the label of the heavy atom it is bonded to.

=================  ==========================================================================
label              atoms
=================  ==========================================================================
carboxylic_acid    C, =O, -O and the acid H of ``R-C(=O)O-H`` (R = C or H)
hydroxyl           O and H of an alcohol ``C(sp3)-O-H`` (acid O-H excluded by order)
primary_amine      N and both H of ``C(sp3)-NH2``
aldehyde           C, O and the formyl H of ``R-C(=O)-H`` (R = C or H)
CH3, CH2, CH, C    every remaining sp3 carbon (and its H) by its number of attached H;
                   methane's CH4 is labelled ``CH3`` (the class "3 or more H")
=================  ==========================================================================

Anything else (an element outside H, C, N, O, a charged or radical atom, a ketone, ester,
ether, amide, nitrile, secondary amine, alkene, ...) raises :class:`FragmentError` naming the
molecule and the atom index. When only coordinates are known, bonds are perceived first with
``rdkit.Chem.rdDetermineBonds`` (:func:`fragments_from_geometry`).

The vocabulary order is a contract shared with the model (fragment embeddings) and stored
data: never reorder it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import rdDetermineBonds, rdMolDescriptors

FRAGMENT_NAMES: tuple[str, ...] = (
    "carboxylic_acid",
    "hydroxyl",
    "primary_amine",
    "aldehyde",
    "CH3",
    "CH2",
    "CH",
    "C",
)
"""Fragment label i is ``FRAGMENT_NAMES[i]``; hydrogens take the label of their heavy atom."""

FRAGMENT_INDEX: dict[str, int] = {name: i for i, name in enumerate(FRAGMENT_NAMES)}
NUM_FRAGMENTS: int = len(FRAGMENT_NAMES)
SUPPORTED_ELEMENTS: tuple[str, ...] = ("H", "C", "N", "O")

FUNCTIONAL_FRAGMENTS: tuple[str, ...] = FRAGMENT_NAMES[:4]
"""The functional groups X, Y of the GMD-26 tasks (the non-alkyl labels)."""

ALKYL_FRAGMENTS: tuple[str, ...] = FRAGMENT_NAMES[4:]
"""Alkyl carbon classes, indexed by ``3 - number of attached H`` (CH4 counts as CH3)."""

_HEAVY_PATTERNS: tuple[tuple[str, str], ...] = (
    ("carboxylic_acid", "[CX3:1](=[OX1:1])([#6,#1])[OX2H1:1]"),
    ("hydroxyl", "[OX2H1:1][CX4]"),
    ("primary_amine", "[NX3H2:1][CX4]"),
    ("aldehyde", "[CX3;H1,H2:1](=[OX1:1])[#6,#1]"),
)
"""(label, SMARTS) in priority order; atoms with atom-map number 1 receive the label."""

_ALKYL_CARBON = Chem.MolFromSmarts("[CX4]")
_SUPPORTED_NUMBERS = frozenset(Chem.GetPeriodicTable().GetAtomicNumber(s)
                               for s in SUPPORTED_ELEMENTS)


class FragmentError(ValueError):
    """A molecule cannot be labelled with the GMD-26 fragment vocabulary."""


def _compile(smarts: str) -> tuple[Chem.Mol, tuple[int, ...]]:
    query = Chem.MolFromSmarts(smarts)
    marked = tuple(a.GetIdx() for a in query.GetAtoms() if a.GetAtomMapNum() == 1)
    return query, marked


_COMPILED = tuple((FRAGMENT_INDEX[name], *_compile(smarts)) for name, smarts in _HEAVY_PATTERNS)


def _describe(mol: Chem.Mol, name: str | None) -> str:
    return name if name else Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False))


def _check_atoms(mol: Chem.Mol, name: str) -> None:
    for atom in mol.GetAtoms():
        where = f"molecule {name!r}: atom {atom.GetIdx()} ({atom.GetSymbol()})"
        if atom.GetAtomicNum() not in _SUPPORTED_NUMBERS:
            raise FragmentError(f"{where}: element outside {SUPPORTED_ELEMENTS}")
        if atom.GetFormalCharge() != 0 or atom.GetNumRadicalElectrons() != 0:
            raise FragmentError(f"{where}: charged or radical atoms are not in the vocabulary")
        if atom.GetAtomicNum() != 1 and atom.GetNumImplicitHs() != 0:
            raise FragmentError(
                f"{where}: has implicit hydrogens; add explicit ones (Chem.AddHs) first"
            )


def assign_fragments(mol: Chem.Mol, name: str | None = None) -> np.ndarray:
    """Label every atom of ``mol`` (which must carry explicit hydrogens).

    Args:
        mol: RDKit molecule with explicit H atoms (``Chem.AddHs``), neutral, elements H/C/N/O.
        name: how to name the molecule in error messages (default: its SMILES).

    Returns:
        [n_atoms] int64 labels, indices into :data:`FRAGMENT_NAMES`, in RDKit atom order.

    Raises:
        FragmentError: unsupported element, charged/radical atom, implicit H, or an atom that
            no pattern covers (e.g. ketone, ester, nitrile, secondary amine).
    """
    label_name = _describe(mol, name)
    _check_atoms(mol, label_name)
    labels = np.full(mol.GetNumAtoms(), -1, dtype=np.int64)
    for label, query, marked in _COMPILED:
        for match in mol.GetSubstructMatches(query, uniquify=False):
            for query_index in marked:
                atom_index = match[query_index]
                if labels[atom_index] < 0:
                    labels[atom_index] = label
    for (atom_index,) in mol.GetSubstructMatches(_ALKYL_CARBON):
        if labels[atom_index] < 0:
            n_hydrogens = mol.GetAtomWithIdx(atom_index).GetTotalNumHs(includeNeighbors=True)
            labels[atom_index] = FRAGMENT_INDEX[ALKYL_FRAGMENTS[max(0, 3 - n_hydrogens)]]
    for atom in mol.GetAtoms():
        if atom.GetAtomicNum() != 1:
            continue
        heavy = [n for n in atom.GetNeighbors() if n.GetAtomicNum() != 1]
        if len(heavy) == 1 and atom.GetDegree() == 1:
            labels[atom.GetIdx()] = labels[heavy[0].GetIdx()]
    uncovered = np.flatnonzero(labels < 0)
    if uncovered.size:
        index = int(uncovered[0])
        symbol = mol.GetAtomWithIdx(index).GetSymbol()
        raise FragmentError(
            f"molecule {label_name!r}: atom {index} ({symbol}) is covered by no fragment of "
            f"{FRAGMENT_NAMES} (uncovered atoms: {uncovered.tolist()})"
        )
    return labels


def mol_from_smiles(smiles: str) -> Chem.Mol:
    """Parse ``smiles`` into a sanitised RDKit molecule with explicit hydrogens.

    Raises:
        FragmentError: the SMILES cannot be parsed or sanitised.
    """
    if not isinstance(smiles, str) or not smiles.strip():
        raise FragmentError(f"invalid SMILES {smiles!r}: expected a non-empty string")
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise FragmentError(f"invalid SMILES {smiles!r}: RDKit could not parse it")
    return Chem.AddHs(mol)


def fragments_from_smiles(smiles: str) -> tuple[Chem.Mol, np.ndarray]:
    """Parse ``smiles``, add explicit H and label every atom.

    Returns:
        ``(mol, labels)``: the molecule with explicit H (heavy atoms first in SMILES order, then
        H atoms, RDKit's ``AddHs`` order) and its [n_atoms] int64 labels in the same order.
    """
    mol = mol_from_smiles(smiles)
    return mol, assign_fragments(mol, name=smiles)


def mol_from_geometry(
    numbers: Sequence[int] | np.ndarray,
    positions: Sequence[Sequence[float]] | np.ndarray,
    charge: int = 0,
) -> Chem.Mol:
    """Build an RDKit molecule with bonds and bond orders perceived from 3D coordinates.

    Args:
        numbers: [n] atomic numbers.
        positions: [n, 3] Cartesian coordinates, Å.
        charge: total charge of the molecule (e).

    Raises:
        FragmentError: shapes disagree or RDKit cannot assign a consistent bonding pattern.
    """
    numbers = np.asarray(numbers, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.float64)
    if numbers.ndim != 1 or positions.shape != (numbers.size, 3):
        raise FragmentError(
            f"geometry: expected numbers [n] and positions [n, 3], got {numbers.shape} and "
            f"{positions.shape}"
        )
    editable = Chem.RWMol()
    conformer = Chem.Conformer(int(numbers.size))
    for index, (number, xyz) in enumerate(zip(numbers.tolist(), positions, strict=True)):
        editable.AddAtom(Chem.Atom(int(number)))
        conformer.SetAtomPosition(index, xyz.tolist())
    mol = editable.GetMol()
    mol.AddConformer(conformer, assignId=True)
    try:
        rdDetermineBonds.DetermineBonds(mol, charge=int(charge))
    except (ValueError, RuntimeError) as error:
        formula = rdMolDescriptors.CalcMolFormula(mol)
        raise FragmentError(f"geometry {formula}: bond perception failed: {error}") from error
    return mol


def fragments_from_geometry(
    numbers: Sequence[int] | np.ndarray,
    positions: Sequence[Sequence[float]] | np.ndarray,
    charge: int = 0,
) -> np.ndarray:
    """Label atoms given only coordinates: perceive bonds (rdDetermineBonds), then assign.

    Args:
        numbers: [n] atomic numbers.
        positions: [n, 3] Å.
        charge: total molecular charge (e).

    Returns:
        [n] int64 fragment labels in the input atom order.
    """
    mol = mol_from_geometry(numbers, positions, charge=charge)
    return assign_fragments(mol)
