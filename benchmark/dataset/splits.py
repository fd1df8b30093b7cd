"""Where the ID and OOD splits are made: trajectory ids, the trajectory-level split, manifests.

Splits are trajectory-level: with T >= 3 MD trajectories per molecule, an ID molecule gives
trajectories 0..T-3 to ``train``, T-2 to ``val`` and T-1 to ``id_test`` (ID test frames never
come from a trajectory seen in training); an OOD molecule gives all T to ``ood_test``. Which
molecules are ID and which OOD is the task's (:mod:`benchmark.dataset.tasks`).

A manifest is the JSON object::

    {"task", "rule", "generator_version", **metadata,
     "splits": {split: [{"molecule_id", "smiles", "trajectories": [int, ...]}, ...]}}

and stored frames name their trajectory ``trajectory_id(molecule_id, index)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.dataset.frames import Frame
from benchmark.dataset.molecules import MoleculeSpec, analyse_structure
from benchmark.dataset.tasks import (
    GENERATOR_VERSION,
    TASK_NAMES,
    TaskDefinition,
    TaskRuleError,
    check_task_rule,
)
from deepset_moe.fragments import FragmentError

SPLITS: tuple[str, ...] = ("train", "val", "id_test", "ood_test")
ID_SPLITS: tuple[str, ...] = SPLITS[:3]
MIN_TRAJECTORIES = 3


class ManifestError(ValueError):
    """A manifest is malformed or breaks its task's split rules."""


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
        task: from :func:`benchmark.dataset.tasks.define_task`.
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
    the task rule (:func:`~benchmark.dataset.tasks.check_task_rule`) on the train and OOD molecules.

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


def interleaved_id_split(
    train_frames: Sequence[Frame], n_test: int, seed: int
) -> tuple[list[Frame], list[Frame]]:
    """The GMD-26 authors' ID split, for comparison only: ``n_test`` frames drawn at random
    (seeded) from the training trajectories become the ID test set, the rest stay training.

    ID test frames then sit between training frames of the same trajectories (5 fs apart in
    the shipped data), unlike this benchmark's held-out trajectories.

    Returns:
        ``(train, id_test)``, each in the original frame order.

    Raises:
        ValueError: ``n_test`` leaves no training frame.
    """
    if not 0 < n_test < len(train_frames):
        raise ValueError(
            f"interleaved ID split: cannot hold out {n_test} of {len(train_frames)} frames"
        )
    chosen = np.zeros(len(train_frames), dtype=bool)
    chosen[np.random.default_rng(seed).choice(len(train_frames), size=n_test, replace=False)] = 1
    return (
        [f for f, c in zip(train_frames, chosen, strict=True) if not c],
        [f for f, c in zip(train_frames, chosen, strict=True) if c],
    )
