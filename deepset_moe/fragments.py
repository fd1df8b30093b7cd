"""Fragment vocabularies and per-atom fragment assignment with RDKit SMARTS.

A :class:`FragmentVocabulary` is what a fragment-aware model needs at inference: the ordered
label names (the rows of the router's fragment embedding) and the rules that assign one label
to every atom, hydrogens included. It is stored in the model config and in every checkpoint,
so a trained model labels new molecules exactly as its training data was labelled.

Rules, applied in this order:

1. heavy atoms matched by a named SMARTS pattern (``patterns``, tried in order; the first
   match wins; atoms with atom-map number 1 in the pattern receive the label);
2. every remaining sp3 carbon by its number of attached H (``alkyl_classes``, indexed by
   ``3 - n_H``; methane's CH4 counts as the 3-H class);
3. each hydrogen takes the label of the heavy atom it is bonded to;
4. an atom still unlabelled takes ``other_label`` when the vocabulary has one, otherwise
   :class:`FragmentError` names the molecule and the atom.

Isolated atoms. From coordinates (:meth:`FragmentVocabulary.from_geometry`), an atom with no
neighbour within bonding distance (RDKit connectivity; a lone atom trivially) needs no bond
perception: it gets :attr:`FragmentVocabulary.isolated_label`, the ``other_label`` when the
vocabulary has one, else the alkyl class of a carbon with no attached H (``"C"`` in the
default vocabulary). The choice is a convention (no training molecule has such an atom), fixed
so that isolated-atom energies, an everyday calculation, are well defined for fragment-routed
models: the energy of a lone atom is E0 plus the network's value for that atom routed as
``isolated_label``. The remaining atoms are perceived as one molecule without the isolated ones.

:data:`DEFAULT_VOCABULARY` is DeepSet-MoE's default (and the GMD-26 data's) vocabulary:

=================  ==========================================================================
label              atoms
=================  ==========================================================================
carboxylic_acid    C, =O, -O and the acid H of ``R-C(=O)O-H`` (R = C or H)
hydroxyl           O and H of an alcohol ``C(sp3)-O-H`` (acid O-H excluded by order)
primary_amine      N and both H of ``C(sp3)-NH2``
aldehyde           C, O and the formyl H of ``R-C(=O)-H`` (R = C or H)
CH3, CH2, CH, C    every remaining sp3 carbon (and its H) by its number of attached H
=================  ==========================================================================

Its label order is a contract with stored data and trained models: never reorder it.
RDKit is imported only when atoms are labelled, so importing this module (and
:mod:`deepset_moe`) stays light. When only coordinates are known, bonds are perceived first
with ``rdkit.Chem.rdDetermineBonds`` (:meth:`FragmentVocabulary.from_geometry`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rdkit import Chem

PERIODIC_SYMBOLS: tuple[str, ...] = (
    "X", "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S",
    "Cl", "Ar", "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge",
    "As", "Se", "Br", "Kr", "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd",
    "In", "Sn", "Sb", "Te", "I", "Xe",
)  # fmt: skip
"""Element symbols by atomic number (index 0 is a placeholder), up to xenon."""


class FragmentError(ValueError):
    """A molecule cannot be labelled with a fragment vocabulary."""


@dataclass(frozen=True)
class FragmentVocabulary:
    """Ordered fragment labels and the SMARTS rules that assign them (module docstring).

    Attributes:
        patterns: ``(label, SMARTS)`` pairs in priority order; atoms with atom-map number 1
            receive the label.
        alkyl_classes: labels of remaining sp3 carbons with 3 (or more), 2, 1, 0 attached H.
        elements: element symbols the vocabulary can label; others raise
            :class:`FragmentError`.
        other_label: label of atoms no rule covers (``None``: such atoms are an error).
    """

    patterns: tuple[tuple[str, str], ...]
    alkyl_classes: tuple[str, ...] = ("CH3", "CH2", "CH", "C")
    elements: tuple[str, ...] = ("H", "C", "N", "O")
    other_label: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "patterns", tuple((str(n), str(s)) for n, s in self.patterns))
        object.__setattr__(self, "alkyl_classes", tuple(str(n) for n in self.alkyl_classes))
        object.__setattr__(self, "elements", tuple(str(e) for e in self.elements))
        if len(self.alkyl_classes) not in (0, 4):
            raise ValueError(
                f"alkyl_classes must name the 3-, 2-, 1- and 0-H carbon classes (4 labels) or "
                f"be empty, got {self.alkyl_classes}"
            )
        names = self.names
        if len(set(names)) != len(names):
            raise ValueError(f"fragment labels must be distinct, got {names}")
        unknown = [e for e in self.elements if e not in PERIODIC_SYMBOLS[1:]]
        if unknown:
            raise ValueError(f"unknown element symbols {unknown}")

    @property
    def names(self) -> tuple[str, ...]:
        """Label i is ``names[i]``: pattern labels, alkyl classes, then ``other_label``."""
        other = (self.other_label,) if self.other_label else ()
        return tuple(name for name, _ in self.patterns) + self.alkyl_classes + other

    def __len__(self) -> int:
        return len(self.names)

    @property
    def isolated_label(self) -> int:
        """Label of an atom with no neighbour (module docstring): ``other_label`` if set, else
        the 0-H alkyl class.

        Raises:
            FragmentError: the vocabulary has neither.
        """
        if self.other_label:
            return len(self.names) - 1
        if self.alkyl_classes:
            return len(self.patterns) + 3
        raise FragmentError(
            f"vocabulary {self.names} has no label for an isolated atom (no other_label, no "
            f"alkyl classes); pass the fragment labels explicitly"
        )

    def index(self, name: str) -> int:
        """Integer label of ``name``; ``KeyError`` lists the vocabulary."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"fragment {name!r} is not in the vocabulary {self.names}") from None

    def extended(
        self,
        patterns: Sequence[tuple[str, str]] | Mapping[str, str] = (),
        elements: Sequence[str] = (),
        other_label: str | None = None,
    ) -> FragmentVocabulary:
        """A new vocabulary with extra patterns (after the existing ones, so old labels keep
        their indices' meaning up to the alkyl classes), elements and ``other_label``."""
        extra = list(patterns.items()) if isinstance(patterns, Mapping) else list(patterns)
        return FragmentVocabulary(
            patterns=self.patterns + tuple(extra),
            alkyl_classes=self.alkyl_classes,
            elements=self.elements + tuple(e for e in elements if e not in self.elements),
            other_label=other_label if other_label is not None else self.other_label,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored in model configs and checkpoints)."""
        return {
            "patterns": [list(p) for p in self.patterns],
            "alkyl_classes": list(self.alkyl_classes),
            "elements": list(self.elements),
            "other_label": self.other_label,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FragmentVocabulary:
        """Inverse of :meth:`to_dict`."""
        return cls(
            patterns=tuple(tuple(p) for p in data["patterns"]),
            alkyl_classes=tuple(data.get("alkyl_classes", ())),
            elements=tuple(data.get("elements", ("H", "C", "N", "O"))),
            other_label=data.get("other_label"),
        )

    @cached_property
    def _rules(self) -> tuple[tuple[tuple[int, Chem.Mol, tuple[int, ...]], ...], Chem.Mol]:
        from rdkit import Chem

        compiled = []
        for label, (name, smarts) in enumerate(self.patterns):
            query = Chem.MolFromSmarts(smarts)
            if query is None:
                raise FragmentError(f"fragment {name!r}: invalid SMARTS {smarts!r}")
            marked = tuple(a.GetIdx() for a in query.GetAtoms() if a.GetAtomMapNum() == 1)
            if not marked:
                marked = tuple(range(query.GetNumAtoms()))
            compiled.append((label, query, marked))
        return tuple(compiled), Chem.MolFromSmarts("[CX4]")

    def assign(self, mol: Chem.Mol, name: str | None = None) -> np.ndarray:
        """Label every atom of ``mol`` (RDKit molecule with explicit hydrogens, neutral).

        Args:
            mol: molecule with explicit H atoms (``Chem.AddHs``).
            name: how to name the molecule in error messages (default: its SMILES).

        Returns:
            [n_atoms] int64 labels, indices into :attr:`names`, in RDKit atom order.

        Raises:
            FragmentError: unsupported element, charged/radical atom, implicit H, or an atom
                that no rule covers (when the vocabulary has no ``other_label``).
        """
        label_name = _describe(mol, name)
        self._check_atoms(mol, label_name)
        compiled, alkyl_carbon = self._rules
        labels = np.full(mol.GetNumAtoms(), -1, dtype=np.int64)
        for label, query, marked in compiled:
            for match in mol.GetSubstructMatches(query, uniquify=False):
                for query_index in marked:
                    if labels[match[query_index]] < 0:
                        labels[match[query_index]] = label
        if self.alkyl_classes:
            first_alkyl = len(self.patterns)
            for (atom_index,) in mol.GetSubstructMatches(alkyl_carbon):
                if labels[atom_index] < 0:
                    n_h = mol.GetAtomWithIdx(atom_index).GetTotalNumHs(includeNeighbors=True)
                    labels[atom_index] = first_alkyl + max(0, 3 - n_h)
        for atom in mol.GetAtoms():
            if atom.GetAtomicNum() != 1 or labels[atom.GetIdx()] >= 0:
                continue
            heavy = [n for n in atom.GetNeighbors() if n.GetAtomicNum() != 1]
            if len(heavy) == 1 and atom.GetDegree() == 1:
                labels[atom.GetIdx()] = labels[heavy[0].GetIdx()]
        uncovered = np.flatnonzero(labels < 0)
        if uncovered.size and self.other_label:
            labels[uncovered] = len(self.names) - 1
        elif uncovered.size:
            index = int(uncovered[0])
            symbol = mol.GetAtomWithIdx(index).GetSymbol()
            hint = (
                "a lone or unbonded atom has no fragment; "
                if mol.GetAtomWithIdx(index).GetDegree() == 0
                else ""
            )
            raise FragmentError(
                f"molecule {label_name!r}: atom {index} ({symbol}) is covered by no fragment of "
                f"{self.names} (uncovered atoms: {uncovered.tolist()}); {hint}add a pattern to "
                f"the vocabulary, give an 'other' label, or pass labels explicitly"
            )
        return labels

    def _check_atoms(self, mol: Chem.Mol, name: str) -> None:
        allowed = set(self.elements)
        for atom in mol.GetAtoms():
            where = f"molecule {name!r}: atom {atom.GetIdx()} ({atom.GetSymbol()})"
            if atom.GetSymbol() not in allowed:
                raise FragmentError(f"{where}: element outside the vocabulary's {self.elements}")
            if atom.GetFormalCharge() != 0 or atom.GetNumRadicalElectrons() != 0:
                raise FragmentError(f"{where}: charged or radical atoms are not in the vocabulary")
            if atom.GetAtomicNum() != 1 and atom.GetNumImplicitHs() != 0:
                raise FragmentError(
                    f"{where}: has implicit hydrogens; add explicit ones (Chem.AddHs) first"
                )

    def from_smiles(self, smiles: str) -> tuple[Chem.Mol, np.ndarray]:
        """Parse ``smiles``, add explicit H and label every atom.

        Returns:
            ``(mol, labels)``: the molecule with explicit H (heavy atoms in SMILES order, then
            H atoms in RDKit's ``AddHs`` order) and its [n_atoms] int64 labels.
        """
        mol = mol_from_smiles(smiles)
        return mol, self.assign(mol, name=smiles)

    def from_geometry(
        self,
        numbers: Sequence[int] | np.ndarray,
        positions: Sequence[Sequence[float]] | np.ndarray,
        charge: int = 0,
    ) -> np.ndarray:
        """Label atoms given only coordinates: perceive bonds, then :meth:`assign`.

        Args:
            numbers: [n] atomic numbers.
            positions: [n, 3] Å.
            charge: total molecular charge (e).

        Atoms with no neighbour within bonding distance take :attr:`isolated_label` (module
        docstring) and the others are perceived as one molecule without them, so a lone atom,
        or a molecule beside a far-away atom, is labelled without error.

        Returns:
            [n] int64 labels in the input atom order.

        Raises:
            FragmentError: bad shapes, non-finite coordinates, an element outside the
                vocabulary, or bond perception of the connected atoms failed.
        """
        numbers = np.asarray(numbers, dtype=np.int64)
        positions = np.asarray(positions, dtype=np.float64)
        isolated = isolated_atoms(numbers, positions)
        labels = np.full(numbers.shape, -1, dtype=np.int64)
        for atom in np.flatnonzero(isolated):
            z = int(numbers[atom])
            symbol = PERIODIC_SYMBOLS[z] if 0 < z < len(PERIODIC_SYMBOLS) else f"Z={z}"
            if symbol not in self.elements:
                raise FragmentError(
                    f"geometry: atom {atom} ({symbol}): element outside the vocabulary's "
                    f"{self.elements}"
                )
        if isolated.any():
            labels[isolated] = self.isolated_label
        connected = ~isolated
        if connected.any():
            mol = mol_from_geometry(numbers[connected], positions[connected], charge=charge)
            labels[connected] = self.assign(mol)
        return labels


DEFAULT_VOCABULARY = FragmentVocabulary(
    patterns=(
        ("carboxylic_acid", "[CX3:1](=[OX1:1])([#6,#1])[OX2H1:1]"),
        ("hydroxyl", "[OX2H1:1][CX4]"),
        ("primary_amine", "[NX3H2:1][CX4]"),
        ("aldehyde", "[CX3;H1,H2:1](=[OX1:1])[#6,#1]"),
    ),
)
"""DeepSet-MoE's default vocabulary: four functional groups and four alkyl carbon classes."""

FRAGMENT_NAMES: tuple[str, ...] = DEFAULT_VOCABULARY.names
"""Labels of :data:`DEFAULT_VOCABULARY`; label i is ``FRAGMENT_NAMES[i]``."""

FRAGMENT_INDEX: dict[str, int] = {name: i for i, name in enumerate(FRAGMENT_NAMES)}
NUM_FRAGMENTS: int = len(FRAGMENT_NAMES)


def _describe(mol: Chem.Mol, name: str | None) -> str:
    from rdkit import Chem

    return name if name else Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False))


def mol_from_smiles(smiles: str) -> Chem.Mol:
    """Parse ``smiles`` into a sanitised RDKit molecule with explicit hydrogens.

    Raises:
        FragmentError: the SMILES cannot be parsed or sanitised.
    """
    from rdkit import Chem, rdBase

    if not isinstance(smiles, str) or not smiles.strip():
        raise FragmentError(f"invalid SMILES {smiles!r}: expected a non-empty string")
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise FragmentError(f"invalid SMILES {smiles!r}: RDKit could not parse it")
    return Chem.AddHs(mol)


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
        FragmentError: shapes disagree, an atom is alone (nothing to bond to; see
            :meth:`FragmentVocabulary.from_geometry`), or RDKit cannot assign a consistent
            bonding pattern.
    """
    from rdkit.Chem import rdDetermineBonds, rdMolDescriptors

    numbers = np.asarray(numbers, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.float64)
    _check_geometry(numbers, positions)
    if numbers.size == 1:
        raise FragmentError(
            f"geometry: a lone {PERIODIC_SYMBOLS[int(numbers[0])]} atom has no bonds to perceive;"
            f" label it with FragmentVocabulary.from_geometry (isolated atoms get the "
            f"vocabulary's isolated_label) or pass its fragment label explicitly"
        )
    mol = _mol_with_conformer(numbers, positions)
    try:
        rdDetermineBonds.DetermineBonds(mol, charge=int(charge))
    except (ValueError, RuntimeError) as error:
        mol.UpdatePropertyCache(strict=False)
        formula = rdMolDescriptors.CalcMolFormula(mol)
        raise FragmentError(f"geometry {formula}: bond perception failed: {error}") from error
    return mol


def isolated_atoms(
    numbers: Sequence[int] | np.ndarray, positions: Sequence[Sequence[float]] | np.ndarray
) -> np.ndarray:
    """[n] bool: atoms with no neighbour within bonding distance (RDKit's connectivity from
    covalent radii; no bond orders are perceived). A lone atom is isolated.

    Raises:
        FragmentError: bad shapes or non-finite coordinates.
    """
    from rdkit.Chem import rdDetermineBonds

    numbers = np.asarray(numbers, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.float64)
    _check_geometry(numbers, positions)
    if numbers.size <= 1:
        return np.ones(numbers.shape, dtype=bool)
    mol = _mol_with_conformer(numbers, positions)
    rdDetermineBonds.DetermineConnectivity(mol)
    return np.array([atom.GetDegree() == 0 for atom in mol.GetAtoms()], dtype=bool)


def _check_geometry(numbers: np.ndarray, positions: np.ndarray) -> None:
    if numbers.ndim != 1 or positions.shape != (numbers.size, 3):
        raise FragmentError(
            f"geometry: expected numbers [n] and positions [n, 3], got {numbers.shape} and "
            f"{positions.shape}"
        )
    if not np.isfinite(positions).all():
        bad = int(np.flatnonzero(~np.isfinite(positions).all(axis=1))[0])
        raise FragmentError(f"geometry: atom {bad} has non-finite coordinates {positions[bad]}")


def _mol_with_conformer(numbers: np.ndarray, positions: np.ndarray) -> Chem.Mol:
    from rdkit import Chem

    editable = Chem.RWMol()
    conformer = Chem.Conformer(int(numbers.size))
    for index, (number, xyz) in enumerate(zip(numbers.tolist(), positions, strict=True)):
        editable.AddAtom(Chem.Atom(int(number)))
        conformer.SetAtomPosition(index, xyz.tolist())
    mol = editable.GetMol()
    mol.AddConformer(conformer, assignId=True)
    return mol


def assign_fragments(mol: Chem.Mol, name: str | None = None) -> np.ndarray:
    """:meth:`FragmentVocabulary.assign` with :data:`DEFAULT_VOCABULARY`."""
    return DEFAULT_VOCABULARY.assign(mol, name=name)


def fragments_from_smiles(smiles: str) -> tuple[Chem.Mol, np.ndarray]:
    """:meth:`FragmentVocabulary.from_smiles` with :data:`DEFAULT_VOCABULARY`."""
    return DEFAULT_VOCABULARY.from_smiles(smiles)


def fragments_from_geometry(
    numbers: Sequence[int] | np.ndarray,
    positions: Sequence[Sequence[float]] | np.ndarray,
    charge: int = 0,
) -> np.ndarray:
    """:meth:`FragmentVocabulary.from_geometry` with :data:`DEFAULT_VOCABULARY`."""
    return DEFAULT_VOCABULARY.from_geometry(numbers, positions, charge=charge)
