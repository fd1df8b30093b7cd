"""Molecule families of GMD-26: builders and a structural classifier.

Chain length convention
-----------------------
Every family is written ``X-(CH2)n-Y`` with X, Y functional groups (or ``H``), and
``chain_length`` is ``n``: the number of sp3 (alkyl) carbons of the molecule. The carbon of a
carboxylic acid or aldehyde belongs to its group and is *not* counted. Examples:

====================  ==============  =============  ============
molecule_id           molecule        SMILES         chain_length
====================  ==============  =============  ============
``oh-c3``             propan-1-ol     ``CCCO``       3
``cooh-c3``           butanoic acid   ``CCCC(=O)O``  3
``cho-c2-cho``        succinaldehyde  ``O=CCCC=O``   2
``oh-c2-nh2``         2-aminoethanol  ``NCCO``       2
``oh-sec-1-2``        butan-2-ol      ``CCC(C)O``    4
``alkane-2m-butane``  2-methylbutane  ``CCC(C)C``    5
====================  ==============  =============  ============

Families
--------
``mono``            X-(CH2)n-H, X on a terminal carbon of a linear chain, n >= 1.
``di``              X-(CH2)n-X, one X on each end of a linear chain, n >= 2.
``mixed``           X-(CH2)n-Y with X != Y, n >= 2.
``branched_alkane`` an unsubstituted alkane with at least one branch point.
``secondary``       X on a CH carbon that carries two alkyl branches of a and b carbons
                    (``a <= b``): butan-2-ol is (hydroxyl, 1, 2), 2-methylbutanoic acid is
                    (carboxylic_acid, 1, 2).

Chemically odd items are excluded by construction: with n >= 2 for di/mixed, no carbon carries
two heteroatom groups (no geminal diol, aminal, hemiaminal) and no 1,3-dicarbonyl
(malondialdehyde, malonic acid) is built. Every built molecule is labelled with
:func:`deepset_moe.fragments.fragments_from_smiles` and re-classified by :func:`analyse_structure`,
so a builder cannot return a molecule outside the vocabulary or outside its declared family.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from rdkit import Chem

from deepset_moe.fragments import (
    DEFAULT_VOCABULARY,
    FRAGMENT_INDEX,
    FRAGMENT_NAMES,
    fragments_from_smiles,
)

FUNCTIONAL_FRAGMENTS: tuple[str, ...] = tuple(name for name, _ in DEFAULT_VOCABULARY.patterns)
"""The functional groups X, Y of the GMD-26 tasks (the non-alkyl labels)."""
ALKYL_FRAGMENTS: tuple[str, ...] = DEFAULT_VOCABULARY.alkyl_classes
"""Alkyl carbon classes, indexed by ``3 - number of attached H`` (CH4 counts as CH3)."""
SUPPORTED_ELEMENTS: tuple[str, ...] = DEFAULT_VOCABULARY.elements
"""Elements of the GMD-26 molecules."""

FAMILIES: tuple[str, ...] = ("mono", "di", "mixed", "branched_alkane", "secondary")

GROUP_TAGS: dict[str, str] = {
    "carboxylic_acid": "cooh",
    "hydroxyl": "oh",
    "primary_amine": "nh2",
    "aldehyde": "cho",
}
"""Short, filesystem-safe tag of each functional group, used in molecule ids."""

_GROUP_HEAD: dict[str, str] = {
    "carboxylic_acid": "OC(=O)",
    "hydroxyl": "O",
    "primary_amine": "N",
    "aldehyde": "O=C",
}
_GROUP_TAIL: dict[str, str] = {
    "carboxylic_acid": "C(=O)O",
    "hydroxyl": "O",
    "primary_amine": "N",
    "aldehyde": "C=O",
}

BRANCHED_ALKANES: dict[str, str] = {
    "2m-propane": "CC(C)C",
    "2m-butane": "CCC(C)C",
    "22dm-propane": "CC(C)(C)C",
    "2m-pentane": "CCCC(C)C",
    "3m-pentane": "CCC(C)CC",
    "22dm-butane": "CCC(C)(C)C",
    "23dm-butane": "CC(C)C(C)C",
    "2m-hexane": "CCCCC(C)C",
    "3m-hexane": "CCCC(C)CC",
    "24dm-pentane": "CC(C)CC(C)C",
}
"""Unsubstituted branched alkanes by short name (``2m-butane`` = 2-methylbutane)."""

MIN_PAIRED_LENGTH = 2
"""Smallest n of X-(CH2)n-X and X-(CH2)n-Y (n = 1 would give gem-diols, aminals, malonates)."""


@dataclass(frozen=True)
class MoleculeSpec:
    """One molecule of the benchmark.

    Attributes:
        molecule_id: stable, filesystem-safe id (lower-case letters, digits, ``-``).
        smiles: canonical RDKit SMILES (no explicit H).
        family: one of :data:`FAMILIES`.
        groups: functional fragment names it carries, in vocabulary order (``()`` for alkanes).
        chain_length: number of alkyl (sp3) carbons, i.e. n of ``X-(CH2)n-Y``.
    """

    molecule_id: str
    smiles: str
    family: str
    groups: tuple[str, ...]
    chain_length: int

    @property
    def n_atoms(self) -> int:
        """Number of atoms, hydrogens included."""
        return Chem.AddHs(Chem.MolFromSmiles(self.smiles)).GetNumAtoms()


@dataclass(frozen=True)
class MoleculeStructure:
    """What :func:`analyse_structure` reads off a molecule's fragment labels.

    Attributes:
        smiles: canonical SMILES.
        groups: functional group instances, in vocabulary order.
        anchor_classes: for each group, the alkyl class (``CH3``/``CH2``/``CH``/``C``) of the
            single alkyl carbon it is bonded to, or ``""`` when it has none or several.
        shared_anchor: two groups are bonded to the same carbon.
        alkyl_carbons: number of sp3 carbons (the chain length n).
        branched: some carbon is bonded to three or more carbons.
        n_components: number of disconnected parts.
        fragments: set of fragment names present.
    """

    smiles: str
    groups: tuple[str, ...]
    anchor_classes: tuple[str, ...]
    shared_anchor: bool
    alkyl_carbons: int
    branched: bool
    n_components: int
    fragments: frozenset[str]

    @property
    def family(self) -> str | None:
        """The family (one of :data:`FAMILIES`) the molecule belongs to, or ``None``."""
        if self.n_components != 1 or self.shared_anchor or "" in self.anchor_classes:
            return None
        if not self.groups:
            return "branched_alkane" if self.branched else None
        terminal = not self.branched and all(c in ("CH3", "CH2") for c in self.anchor_classes)
        if len(self.groups) == 1:
            if terminal:
                return "mono"
            return "secondary" if self.anchor_classes == ("CH",) else None
        if len(self.groups) == 2 and terminal:
            return "di" if self.groups[0] == self.groups[1] else "mixed"
        return None


@functools.lru_cache(maxsize=4096)
def analyse_structure(smiles: str) -> MoleculeStructure:
    """Label ``smiles`` and describe its functional groups, anchors, chain and branching.

    Raises:
        FragmentError: the SMILES is invalid or holds atoms outside the vocabulary.
    """
    mol, labels = fragments_from_smiles(smiles)
    functional = {FRAGMENT_INDEX[name] for name in FUNCTIONAL_FRAGMENTS}
    alkyl = {FRAGMENT_INDEX[name] for name in ALKYL_FRAGMENTS}
    heavy = [a for a in mol.GetAtoms() if a.GetAtomicNum() != 1]
    seen: set[int] = set()
    instances: list[tuple[str, int | None, str]] = []
    for atom in heavy:
        start = atom.GetIdx()
        if labels[start] not in functional or start in seen:
            continue
        members, stack = {start}, [start]
        while stack:
            for neighbour in mol.GetAtomWithIdx(stack.pop()).GetNeighbors():
                index = neighbour.GetIdx()
                if labels[index] == labels[start] and index not in members:
                    members.add(index)
                    stack.append(index)
        seen |= members
        anchors = {
            n.GetIdx()
            for m in members
            for n in mol.GetAtomWithIdx(m).GetNeighbors()
            if labels[n.GetIdx()] in alkyl
        }
        anchor = anchors.pop() if len(anchors) == 1 else None
        anchor_class = FRAGMENT_NAMES[labels[anchor]] if anchor is not None else ""
        instances.append((FRAGMENT_NAMES[labels[start]], anchor, anchor_class))
    instances.sort(key=lambda item: FRAGMENT_INDEX[item[0]])
    anchors = [anchor for _, anchor, _ in instances if anchor is not None]
    carbons = [a for a in heavy if a.GetAtomicNum() == 6]
    return MoleculeStructure(
        smiles=Chem.MolToSmiles(Chem.RemoveHs(mol)),
        groups=tuple(name for name, _, _ in instances),
        anchor_classes=tuple(anchor_class for _, _, anchor_class in instances),
        shared_anchor=len(anchors) != len(set(anchors)),
        alkyl_carbons=sum(1 for a in carbons if labels[a.GetIdx()] in alkyl),
        branched=any(
            sum(1 for n in a.GetNeighbors() if n.GetAtomicNum() == 6) >= 3 for a in carbons
        ),
        n_components=len(Chem.GetMolFrags(mol)),
        fragments=frozenset(FRAGMENT_NAMES[label] for label in labels),
    )


def _spec(molecule_id: str, smiles: str, family: str, groups: tuple[str, ...]) -> MoleculeSpec:
    structure = analyse_structure(smiles)
    if structure.family != family or structure.groups != groups:
        raise ValueError(
            f"molecule {molecule_id!r} ({smiles}): built as {family} {groups}, but its structure "
            f"reads as {structure.family} {structure.groups}"
        )
    return MoleculeSpec(molecule_id, structure.smiles, family, groups, structure.alkyl_carbons)


def _check_group(group: str) -> None:
    if group not in GROUP_TAGS:
        raise ValueError(
            f"unknown functional group {group!r}; expected one of {FUNCTIONAL_FRAGMENTS}"
        )


def _check_length(molecule_id: str, n: int, minimum: int) -> None:
    if not isinstance(n, int) or n < minimum:
        raise ValueError(f"molecule {molecule_id!r}: chain length n={n!r} must be >= {minimum}")


def mono(group: str, n: int) -> MoleculeSpec:
    """X-(CH2)n-H: ``group`` on the terminal carbon of a linear chain of n >= 1 alkyl carbons."""
    _check_group(group)
    molecule_id = f"{GROUP_TAGS[group]}-c{n}"
    _check_length(molecule_id, n, 1)
    return _spec(molecule_id, _GROUP_HEAD[group] + "C" * n, "mono", (group,))


def paired(first: str, second: str, n: int) -> MoleculeSpec:
    """X-(CH2)n-Y: ``first`` and ``second`` on the two ends of a linear chain, n >= 2.

    The family is ``di`` when the groups are equal, ``mixed`` otherwise; the id lists the
    groups in vocabulary order (``oh-c3-nh2`` is 3-aminopropan-1-ol).
    """
    _check_group(first)
    _check_group(second)
    x, y = sorted((first, second), key=FRAGMENT_INDEX.__getitem__)
    molecule_id = f"{GROUP_TAGS[x]}-c{n}-{GROUP_TAGS[y]}"
    _check_length(molecule_id, n, MIN_PAIRED_LENGTH)
    family = "di" if x == y else "mixed"
    return _spec(molecule_id, _GROUP_HEAD[x] + "C" * n + _GROUP_TAIL[y], family, (x, y))


def di(group: str, n: int) -> MoleculeSpec:
    """X-(CH2)n-X: the same group on both ends of a linear chain, n >= 2."""
    return paired(group, group, n)


def mixed(first: str, second: str, n: int) -> MoleculeSpec:
    """X-(CH2)n-Y with X != Y, n >= 2."""
    if first == second:
        raise ValueError(f"mixed molecule needs two different groups, got {first!r} twice")
    return paired(first, second, n)


def branched_alkane(name: str) -> MoleculeSpec:
    """An unsubstituted branched alkane from :data:`BRANCHED_ALKANES` (id ``alkane-<name>``)."""
    if name not in BRANCHED_ALKANES:
        raise ValueError(
            f"unknown branched alkane {name!r}; expected one of {tuple(BRANCHED_ALKANES)}"
        )
    return _spec(f"alkane-{name}", BRANCHED_ALKANES[name], "branched_alkane", ())


def secondary(group: str, a: int, b: int) -> MoleculeSpec:
    """``group`` on a CH carbon carrying alkyl branches of ``a`` and ``b`` carbons (1 <= a <= b).

    For hydroxyl/amine the CH carbon is a secondary carbon of a linear chain (butan-2-ol is
    (hydroxyl, 1, 2)); for acid/aldehyde the group's carbon hangs on the CH carbon
    (2-methylbutanoic acid is (carboxylic_acid, 1, 2)). chain_length is a + b + 1.
    """
    _check_group(group)
    molecule_id = f"{GROUP_TAGS[group]}-sec-{a}-{b}"
    if not (isinstance(a, int) and isinstance(b, int) and 1 <= a <= b):
        raise ValueError(f"molecule {molecule_id!r}: branch lengths need 1 <= a <= b")
    smiles = "C" * a + f"C({_GROUP_TAIL[group]})" + "C" * b
    return _spec(molecule_id, smiles, "secondary", (group,))
