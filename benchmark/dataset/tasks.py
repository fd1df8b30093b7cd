"""The four GMD-26 tasks: which molecules are ID and which OOD, per dataset preset, and why.

=============  ==============================================  ==================================
task           train / val / ID test molecules                 OOD test molecules
=============  ==============================================  ==================================
duplication    X-(CH2)n-H                                      X-(CH2)n-X
combination    X-(CH2)n-H and X-(CH2)n-X, every X              X-(CH2)n-Y, X != Y
elongation     X-(CH2)n-H, n <= 5                              X-(CH2)n-H, n >= 8
substitution   X on a terminal carbon + branched alkanes       X on a CH (internal) carbon
=============  ==============================================  ==================================

Every OOD molecule is absent from the ID molecules (canonical SMILES) while each of its
fragments occurs in training (:func:`check_task_rule`). n is the number of alkyl carbons (see
:mod:`benchmark.dataset.molecules`). The molecule sets of each dataset preset are
:data:`DATASET_PRESETS`; how a task's molecules are divided into the train / val / id_test /
ood_test splits (by trajectory) and written as manifests is :mod:`benchmark.dataset.splits`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from benchmark.dataset.molecules import (
    FUNCTIONAL_FRAGMENTS,
    MoleculeSpec,
    MoleculeStructure,
    analyse_structure,
    branched_alkane,
    di,
    mixed,
    mono,
    secondary,
)
from deepset_moe.fragments import FragmentError

TASK_NAMES: tuple[str, ...] = ("duplication", "combination", "elongation", "substitution")
GENERATOR_VERSION = "gmd26-tasks-1.0"
"""Version of the molecule sets and split rules; bump it whenever either changes."""

SHORT_CHAIN_MAX = 5
"""Elongation: ID chains have n <= SHORT_CHAIN_MAX alkyl carbons."""
LONG_CHAIN_MIN = 8
"""Elongation: OOD chains have n >= LONG_CHAIN_MIN alkyl carbons."""

RULES: dict[str, str] = {
    "duplication": "ID: mono-substituted X-(CH2)n-H; OOD: the same fragment twice, X-(CH2)n-X",
    "combination": (
        "ID: X-(CH2)n-H and X-(CH2)n-X for every X; OOD: two different fragments, X-(CH2)n-Y"
    ),
    "elongation": (
        f"ID: X-(CH2)n-H with n <= {SHORT_CHAIN_MAX}; OOD: the same molecules with long chains, "
        f"n >= {LONG_CHAIN_MIN}"
    ),
    "substitution": (
        "ID: X on a terminal carbon plus unsubstituted branched alkanes; OOD: X on an "
        "internal/secondary (CH) carbon"
    ),
}
"""Human-readable rule of each task (stored in manifests)."""

ENERGY_NOT_IDENTIFIED: dict[str, str] = {
    "duplication": (
        "the training set does not identify the OOD energies: every training molecule "
        "X-(CH2)n-H has one X and one CH3, every OOD molecule two X and no CH3, so a perfect "
        "fit leaves the OOD energy offset -2 dE(CH3) free (docs/tasks.md). Energy OOD/ID "
        "ratios of this task measure that constant (and the seed), not compositional "
        "generalisation: compare models on duplication by forces"
    ),
}
"""Tasks whose OOD energies are not determined by their training set, and why (the report
prints this beside their energy ratios)."""

_Rule = Callable[[MoleculeStructure], bool]
_TASK_RULES: dict[str, tuple[_Rule, _Rule]] = {
    "duplication": (lambda s: s.family == "mono", lambda s: s.family == "di"),
    "combination": (lambda s: s.family in ("mono", "di"), lambda s: s.family == "mixed"),
    "elongation": (
        lambda s: s.family == "mono" and s.alkyl_carbons <= SHORT_CHAIN_MAX,
        lambda s: s.family == "mono" and s.alkyl_carbons >= LONG_CHAIN_MIN,
    ),
    "substitution": (
        lambda s: s.family in ("mono", "branched_alkane"),
        lambda s: s.family == "secondary",
    ),
}
"""(ID rule, OOD rule) of each task, as predicates on a molecule's structure."""


class TaskRuleError(ValueError):
    """A molecule set breaks a task's rule."""


@dataclass(frozen=True)
class DatasetPreset:
    """Molecule sets of one dataset preset: sizes of the families used by the four tasks.

    Attributes:
        mono_groups, mono_lengths: X-(CH2)n-H of duplication, combination and substitution.
        paired_groups, paired_lengths: X-(CH2)n-X (duplication OOD, combination ID) and
            X-(CH2)n-Y (combination OOD).
        elongation_groups, short_lengths, long_lengths: elongation ID (short) and OOD (long).
        branched_alkanes: names in ``benchmark.dataset.molecules.BRANCHED_ALKANES``
            (substitution ID).
        secondary: (group, a, b) of ``benchmark.dataset.molecules.secondary`` (substitution OOD).
    """

    mono_groups: tuple[str, ...]
    mono_lengths: tuple[int, ...]
    paired_groups: tuple[str, ...]
    paired_lengths: tuple[int, ...]
    elongation_groups: tuple[str, ...]
    short_lengths: tuple[int, ...]
    long_lengths: tuple[int, ...]
    branched_alkanes: tuple[str, ...]
    secondary: tuple[tuple[str, int, int], ...]


_HETEROATOM_BRANCHES = ((1, 1), (1, 2), (1, 3), (2, 2), (1, 4), (2, 3))
_CARBONYL_BRANCHES = ((1, 1), (1, 2), (1, 3), (2, 2))

DATASET_PRESETS: dict[str, DatasetPreset] = {
    "smoke": DatasetPreset(
        mono_groups=FUNCTIONAL_FRAGMENTS,
        mono_lengths=(2,),
        paired_groups=("hydroxyl", "primary_amine"),
        paired_lengths=(2,),
        elongation_groups=("hydroxyl",),
        short_lengths=(1, 2),
        long_lengths=(8,),
        branched_alkanes=("2m-propane",),
        secondary=(("hydroxyl", 1, 1), ("primary_amine", 1, 1)),
    ),
    "standard": DatasetPreset(
        mono_groups=FUNCTIONAL_FRAGMENTS,
        mono_lengths=(1, 2, 3, 4, 5, 6),
        paired_groups=FUNCTIONAL_FRAGMENTS,
        paired_lengths=(2, 3, 4, 5, 6),
        elongation_groups=FUNCTIONAL_FRAGMENTS,
        short_lengths=(1, 2, 3, 4, 5),
        long_lengths=(8, 9, 10, 11),
        branched_alkanes=(
            "2m-propane", "2m-butane", "22dm-propane", "2m-pentane", "3m-pentane",
            "22dm-butane", "23dm-butane", "2m-hexane", "3m-hexane", "24dm-pentane",
        ),
        secondary=tuple(
            (group, a, b)
            for group in FUNCTIONAL_FRAGMENTS
            for a, b in (
                _HETEROATOM_BRANCHES
                if group in ("hydroxyl", "primary_amine")
                else _CARBONYL_BRANCHES
            )
        ),
    ),
}
"""``smoke``: 12 small molecules (one of 27 atoms: octan-1-ol, the shortest n >= 8 chain);
``standard``: 120 molecules of at most 38 atoms, chains of up to 12 carbons. Their sampling
settings are :data:`benchmark.dataset.sampling.GENERATION_PRESETS` (same keys); training recipes
are the unrelated :data:`benchmark.training.presets.TRAINING_PRESETS`."""


@dataclass(frozen=True)
class TaskDefinition:
    """The molecules of one task at one preset.

    Attributes:
        name: one of :data:`TASK_NAMES`.
        preset: key of :data:`DATASET_PRESETS`.
        id_molecules: molecules of train / val / id_test (split by trajectory).
        ood_molecules: molecules of ood_test.
        rule: human-readable rule (:data:`RULES`).
    """

    name: str
    preset: str
    id_molecules: tuple[MoleculeSpec, ...]
    ood_molecules: tuple[MoleculeSpec, ...]
    rule: str


def _preset(preset: str) -> DatasetPreset:
    if preset not in DATASET_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {tuple(DATASET_PRESETS)}")
    return DATASET_PRESETS[preset]


def _task_molecules(
    name: str, p: DatasetPreset
) -> tuple[list[MoleculeSpec], list[MoleculeSpec]]:
    monos = [mono(x, n) for x in p.mono_groups for n in p.mono_lengths]
    dis = [di(x, n) for x in p.paired_groups for n in p.paired_lengths]
    if name == "duplication":
        return monos, dis
    if name == "combination":
        pairs = [
            (x, y) for i, x in enumerate(p.paired_groups) for y in p.paired_groups[i + 1 :]
        ]
        return monos + dis, [mixed(x, y, n) for x, y in pairs for n in p.paired_lengths]
    if name == "elongation":
        return (
            [mono(x, n) for x in p.elongation_groups for n in p.short_lengths],
            [mono(x, n) for x in p.elongation_groups for n in p.long_lengths],
        )
    if name == "substitution":
        alkanes = [branched_alkane(alkane) for alkane in p.branched_alkanes]
        return monos + alkanes, [secondary(x, a, b) for x, a, b in p.secondary]
    raise ValueError(f"unknown task {name!r}; expected one of {TASK_NAMES}")


@functools.cache
def define_task(name: str, preset: str = "standard") -> TaskDefinition:
    """Build task ``name`` at ``preset`` and check it against the task rule.

    Raises:
        ValueError: unknown task or preset.
        TaskRuleError: the preset breaks the rule (a bug in :data:`DATASET_PRESETS`).
    """
    id_molecules, ood_molecules = _task_molecules(name, _preset(preset))
    check_task_rule(name, [m.smiles for m in id_molecules], [m.smiles for m in ood_molecules])
    return TaskDefinition(name, preset, tuple(id_molecules), tuple(ood_molecules), RULES[name])


def all_molecules(preset: str = "standard") -> list[MoleculeSpec]:
    """Union of the molecules of the four tasks, one entry per canonical SMILES.

    Ordered by first appearance (tasks in :data:`TASK_NAMES` order, ID before OOD). Each
    molecule is labelled once and shared by every task that uses it.
    """
    unique: dict[str, MoleculeSpec] = {}
    for name in TASK_NAMES:
        task = define_task(name, preset)
        for molecule in task.id_molecules + task.ood_molecules:
            known = unique.setdefault(molecule.smiles, molecule)
            if known != molecule:
                raise ValueError(f"molecule {molecule.smiles} built twice: {known} vs {molecule}")
    return list(unique.values())


def check_task_rule(task: str, id_smiles: Iterable[str], ood_smiles: Iterable[str]) -> None:
    """Check a task's rule on its ID (training) and OOD molecule sets.

    Checks: every ID / OOD molecule is of the task's kind (:data:`RULES`), no OOD molecule is
    an ID molecule (canonical SMILES), and every fragment of every OOD molecule occurs in some
    ID molecule.

    Raises:
        TaskRuleError: naming the task and the offending molecule.
    """
    if task not in _TASK_RULES:
        raise TaskRuleError(f"unknown task {task!r}; expected one of {TASK_NAMES}")
    id_rule, ood_rule = _TASK_RULES[task]
    structures = {}
    for role, smiles_set, rule in (("ID", id_smiles, id_rule), ("OOD", ood_smiles, ood_rule)):
        structures[role] = []
        for smiles in smiles_set:
            try:
                structure = analyse_structure(smiles)
            except FragmentError as error:
                raise TaskRuleError(f"task {task!r}: {role} molecule {smiles}: {error}") from error
            if not rule(structure):
                raise TaskRuleError(
                    f"task {task!r}: {role} molecule {smiles} (family {structure.family}, "
                    f"n={structure.alkyl_carbons}) breaks the rule: {RULES[task]}"
                )
            structures[role].append(structure)
    id_set = {s.smiles for s in structures["ID"]}
    seen = frozenset().union(*(s.fragments for s in structures["ID"]))
    for structure in structures["OOD"]:
        if structure.smiles in id_set:
            raise TaskRuleError(f"task {task!r}: OOD molecule {structure.smiles} is also ID")
        unseen = structure.fragments - seen
        if unseen:
            raise TaskRuleError(
                f"task {task!r}: OOD molecule {structure.smiles} has fragments never seen in "
                f"training: {sorted(unseen)}"
            )
