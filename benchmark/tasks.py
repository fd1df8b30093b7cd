"""The four GMD-26 tasks: molecule sets per preset, task rules, split manifests.

=============  ==============================================  ==================================
task           train / val / ID test molecules                 OOD test molecules
=============  ==============================================  ==================================
duplication    X-(CH2)n-H                                      X-(CH2)n-X
combination    X-(CH2)n-H and X-(CH2)n-X, every X              X-(CH2)n-Y, X != Y
elongation     X-(CH2)n-H, n <= 5                              X-(CH2)n-H, n >= 8
substitution   X on a terminal carbon + branched alkanes       X on a CH (internal) carbon
=============  ==============================================  ==================================

Every OOD molecule is absent from the ID molecules (canonical SMILES) while each of its
fragments occurs in training. n is the number of alkyl carbons (see :mod:`benchmark.molecules`).

Splits are trajectory-level: with T >= 3 MD trajectories per molecule, an ID molecule gives
trajectories 0..T-3 to ``train``, T-2 to ``val`` and T-1 to ``id_test`` (ID test frames never
come from a trajectory seen in training); an OOD molecule gives all T to ``ood_test``.

A manifest is the JSON object::

    {"task", "rule", "generator_version", **metadata,
     "splits": {split: [{"molecule_id", "smiles", "trajectories": [int, ...]}, ...]}}

and stored frames name their trajectory ``trajectory_id(molecule_id, index)``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.fragments import FUNCTIONAL_FRAGMENTS, FragmentError
from benchmark.molecules import (
    MoleculeSpec,
    MoleculeStructure,
    analyse_structure,
    branched_alkane,
    di,
    mixed,
    mono,
    secondary,
)

TASK_NAMES: tuple[str, ...] = ("duplication", "combination", "elongation", "substitution")
SPLITS: tuple[str, ...] = ("train", "val", "id_test", "ood_test")
ID_SPLITS: tuple[str, ...] = SPLITS[:3]
GENERATOR_VERSION = "gmd26-tasks-1.0"
"""Version of the molecule sets and split rules; bump it whenever either changes."""

MIN_TRAJECTORIES = 3
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


class ManifestError(ValueError):
    """A manifest is malformed or breaks its task's split rules."""


@dataclass(frozen=True)
class Preset:
    """Sizes of the molecule families used by the four tasks.

    Attributes:
        mono_groups, mono_lengths: X-(CH2)n-H of duplication, combination and substitution.
        paired_groups, paired_lengths: X-(CH2)n-X (duplication OOD, combination ID) and
            X-(CH2)n-Y (combination OOD).
        elongation_groups, short_lengths, long_lengths: elongation ID (short) and OOD (long).
        branched_alkanes: names in ``benchmark.molecules.BRANCHED_ALKANES`` (substitution ID).
        secondary: (group, a, b) of ``benchmark.molecules.secondary`` (substitution OOD).
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

PRESETS: dict[str, Preset] = {
    "smoke": Preset(
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
    "standard": Preset(
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
``standard``: 120 molecules of at most 38 atoms, chains of up to 12 carbons."""


@dataclass(frozen=True)
class TaskDefinition:
    """The molecules of one task at one preset.

    Attributes:
        name: one of :data:`TASK_NAMES`.
        preset: key of :data:`PRESETS`.
        id_molecules: molecules of train / val / id_test (split by trajectory).
        ood_molecules: molecules of ood_test.
        rule: human-readable rule (:data:`RULES`).
    """

    name: str
    preset: str
    id_molecules: tuple[MoleculeSpec, ...]
    ood_molecules: tuple[MoleculeSpec, ...]
    rule: str


def _preset(preset: str) -> Preset:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {tuple(PRESETS)}")
    return PRESETS[preset]


def _task_molecules(name: str, p: Preset) -> tuple[list[MoleculeSpec], list[MoleculeSpec]]:
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
        TaskRuleError: the preset breaks the rule (a bug in :data:`PRESETS`).
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


def trajectory_id(molecule_id: str, index: int) -> str:
    """Identifier of trajectory ``index`` of ``molecule_id`` in stored frames: ``"<id>/t<i>"``."""
    return f"{molecule_id}/t{index}"


def parse_trajectory_id(value: str) -> tuple[str, int]:
    """Inverse of :func:`trajectory_id`: ``"oh-c3/t2"`` -> ``("oh-c3", 2)``."""
    molecule_id, sep, tail = value.rpartition("/t")
    if not sep or not molecule_id or not tail.isdigit():
        raise ValueError(f"trajectory id {value!r} is not of the form '<molecule_id>/t<index>'")
    return molecule_id, int(tail)


def id_trajectory_split(n_trajectories: int) -> dict[str, list[int]]:
    """Trajectory indices an ID molecule gives to train, val and id_test (T >= 3)."""
    if not isinstance(n_trajectories, int) or n_trajectories < MIN_TRAJECTORIES:
        raise ValueError(
            f"n_trajectories={n_trajectories!r}: need at least {MIN_TRAJECTORIES} trajectories "
            "per molecule (train, val, id_test)"
        )
    last = n_trajectories - 1
    return {"train": list(range(last - 1)), "val": [last - 1], "id_test": [last]}


def make_manifest(
    task: TaskDefinition, n_trajectories: int, metadata: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON-able split manifest of ``task`` with ``n_trajectories`` per molecule.

    Args:
        task: from :func:`define_task`.
        n_trajectories: T >= 3 MD trajectories per molecule.
        metadata: extra top-level keys (reference, seeds, preset, frame counts...); must not
            reuse ``task``, ``rule``, ``generator_version`` or ``splits``.
    """
    metadata = dict(metadata or {})
    reserved = {"task", "rule", "generator_version", "splits"} & metadata.keys()
    if reserved:
        raise ValueError(f"metadata may not set the reserved manifest keys {sorted(reserved)}")
    id_split = id_trajectory_split(n_trajectories)

    def entries(molecules: Iterable[MoleculeSpec], indices: list[int]) -> list[dict[str, Any]]:
        return [
            {"molecule_id": m.molecule_id, "smiles": m.smiles, "trajectories": list(indices)}
            for m in molecules
        ]

    splits = {split: entries(task.id_molecules, id_split[split]) for split in ID_SPLITS}
    splits["ood_test"] = entries(task.ood_molecules, list(range(n_trajectories)))
    return {
        "task": task.name,
        "rule": task.rule,
        "generator_version": GENERATOR_VERSION,
        **metadata,
        "splits": splits,
    }


def _check_entries(split: str, entries: Any) -> None:
    if not isinstance(entries, list) or not entries:
        raise ManifestError(f"split {split!r} must be a non-empty list of molecule entries")
    for position, entry in enumerate(entries):
        where = f"split {split!r}, entry {position}"
        if not isinstance(entry, dict) or set(entry) < {"molecule_id", "smiles", "trajectories"}:
            raise ManifestError(f"{where}: needs keys molecule_id, smiles, trajectories")
        if not isinstance(entry["molecule_id"], str) or not isinstance(entry["smiles"], str):
            raise ManifestError(f"{where}: molecule_id and smiles must be strings")
        trajectories = entry["trajectories"]
        if (
            not isinstance(trajectories, list)
            or not trajectories
            or any(not isinstance(t, int) or isinstance(t, bool) or t < 0 for t in trajectories)
            or len(set(trajectories)) != len(trajectories)
        ):
            raise ManifestError(
                f"{where} ({entry['molecule_id']}): trajectories must be a non-empty list of "
                f"distinct non-negative ints, got {trajectories!r}"
            )


def validate_manifest(manifest: Mapping[str, Any]) -> None:
    """Check a manifest's format and its split rules.

    Checks: required keys and a known task; four non-empty splits of well-formed entries; one
    SMILES per molecule_id; every val / id_test molecule is a train molecule with trajectories
    disjoint from its train ones; no OOD molecule (canonical SMILES) in train / val / id_test;
    the task rule (:func:`check_task_rule`) on the train and OOD molecules.

    Raises:
        ManifestError: naming the rule, split and molecule that fail.
    """
    missing = [k for k in ("task", "rule", "generator_version", "splits") if k not in manifest]
    if missing:
        raise ManifestError(f"manifest lacks keys {missing}")
    task = manifest["task"]
    if task not in TASK_NAMES:
        raise ManifestError(f"unknown task {task!r}; expected one of {TASK_NAMES}")
    splits = manifest["splits"]
    if not isinstance(splits, dict) or set(splits) != set(SPLITS):
        found = sorted(splits) if isinstance(splits, dict) else type(splits).__name__
        raise ManifestError(f"splits must have exactly the keys {SPLITS}, got {found}")
    smiles_of: dict[str, str] = {}
    canonical: dict[str, set[str]] = {}
    trajectories: dict[str, dict[str, set[int]]] = {}
    for split in SPLITS:
        _check_entries(split, splits[split])
        trajectories[split] = {}
        for entry in splits[split]:
            molecule_id, smiles = entry["molecule_id"], entry["smiles"]
            if smiles_of.setdefault(molecule_id, smiles) != smiles:
                first = smiles_of[molecule_id]
                raise ManifestError(f"molecule {molecule_id!r} has two SMILES: {first}, {smiles}")
            if molecule_id in trajectories[split]:
                raise ManifestError(f"split {split!r} lists molecule {molecule_id!r} twice")
            trajectories[split][molecule_id] = set(entry["trajectories"])
            try:
                canonical.setdefault(split, set()).add(analyse_structure(smiles).smiles)
            except FragmentError as error:
                where = f"split {split!r}, molecule {molecule_id!r}"
                raise ManifestError(f"{where}: {error}") from error
    for split in ("val", "id_test"):
        for molecule_id, indices in trajectories[split].items():
            if molecule_id not in trajectories["train"]:
                raise ManifestError(f"{split} molecule {molecule_id!r} is not a train molecule")
            shared = indices & trajectories["train"][molecule_id]
            if shared:
                raise ManifestError(
                    f"molecule {molecule_id!r}: trajectories {sorted(shared)} are in both train "
                    f"and {split}"
                )
    for molecule_id, indices in trajectories["val"].items():
        shared = indices & trajectories["id_test"].get(molecule_id, set())
        if shared:
            raise ManifestError(
                f"molecule {molecule_id!r}: trajectories {sorted(shared)} are in both val and "
                "id_test"
            )
    leaked = canonical["ood_test"] & set().union(*(canonical[s] for s in ID_SPLITS))
    if leaked:
        raise ManifestError(f"OOD molecules also in train/val/id_test: {sorted(leaked)}")
    train_smiles = [e["smiles"] for e in splits["train"]]
    ood_smiles = [e["smiles"] for e in splits["ood_test"]]
    try:
        check_task_rule(task, train_smiles, ood_smiles)
    except TaskRuleError as error:
        raise ManifestError(str(error)) from error


def write_manifest(manifest: Mapping[str, Any], path: str | Path) -> Path:
    """Validate ``manifest`` and write it as indented JSON to ``path`` (parents created)."""
    path = Path(path)
    try:
        validate_manifest(manifest)
    except ManifestError as error:
        raise ManifestError(f"refusing to write manifest {path}: {error}") from error
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and validate a manifest written by :func:`write_manifest`.

    Raises:
        ManifestError: the file is missing, not JSON, or breaks :func:`validate_manifest`;
            the message names the file.
    """
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ManifestError(f"manifest {path}: cannot read JSON: {error}") from error
    if not isinstance(manifest, dict):
        raise ManifestError(f"manifest {path}: expected a JSON object")
    try:
        validate_manifest(manifest)
    except ManifestError as error:
        raise ManifestError(f"manifest {path}: {error}") from error
    return manifest
