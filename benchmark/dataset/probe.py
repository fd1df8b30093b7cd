"""The compositional probe: molecules no task lists, made of fragments every task trains on.

The four tasks each test one way of composing fragments. A model that learned how fragments
compose, rather than the four OOD test sets, should also handle compositions that none of the
tasks contains. The probe holds two such families, each crossing two tasks' shifts at once:

=============  ====================================  ========================================
family         molecules                             shifts it combines
=============  ====================================  ========================================
``long_di``    X-(CH2)n-X, n in ``PROBE_LENGTHS``    duplication's (a group twice) and
                                                     elongation's (n >= 8)
``long_mixed`` X-(CH2)n-Y, X != Y, same n            combination's (two different groups) and
                                                     elongation's
=============  ====================================  ========================================

Every task's OOD molecules have n <= 6 when they carry two groups, and elongation's long chains
carry one group, so no probe molecule is listed by any task (checked, by canonical SMILES,
whenever the probe is defined, written or read). The probe is evaluated, never trained on: a
model trained on task T is scored on the probe molecules whose fragments all occur in T's
training molecules (``eligible_tasks`` of the manifest).

Storage: the probe's trajectories are built with the dataset (:mod:`benchmark.dataset.build`,
same settings and seed derivation, :data:`PROBE_TRAJECTORIES` per molecule) and listed in
``manifests/probe.json``::

    {"probe": "beyond_tasks", "rule", "probe_version", **metadata,
     "molecules": [{"molecule_id", "smiles", "family", "trajectories": [int, ...]}, ...],
     "eligible_tasks": {task: [molecule_id, ...]}}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmark.dataset import layout
from benchmark.dataset.frames import Frame
from benchmark.dataset.molecules import MoleculeSpec, analyse_structure, paired
from benchmark.dataset.tasks import DATASET_PRESETS, LONG_CHAIN_MIN, TASK_NAMES, define_task
from benchmark.jsonio import write_json

PROBE_NAME = "beyond_tasks"
PROBE_VERSION = "gmd26-probe-1.0"
"""Version of the probe's molecule set and rules; bump it whenever either changes."""
PROBE_FAMILIES: tuple[str, ...] = ("long_di", "long_mixed")
PROBE_RULE = (
    f"molecules no task lists: X-(CH2)n-X (long_di) and X-(CH2)n-Y, X != Y (long_mixed), with "
    f"n >= {LONG_CHAIN_MIN}; a model trained on a task is scored on those whose fragments all "
    f"occur in the task's training molecules"
)
PROBE_LENGTHS: dict[str, tuple[int, ...]] = {"smoke": (8,), "standard": (8, 10)}
"""Chain lengths n of the probe molecules per dataset preset."""
PROBE_TRAJECTORIES = 2
"""MD trajectories per probe molecule (indices 0 and 1 of the build's seed derivation)."""
MANIFEST_NAME = "probe.json"
ENTRY_KEYS = ("molecule_id", "smiles", "family", "trajectories")


class ProbeError(ValueError):
    """The probe manifest is malformed, or a probe molecule is listed by a task."""


def probe_molecules(preset: str = "standard") -> list[MoleculeSpec]:
    """The probe molecules of a dataset preset: ``long_di`` first, then ``long_mixed``.

    Groups are the preset's ``paired_groups`` (the groups the paired families use).
    """
    if preset not in PROBE_LENGTHS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {tuple(PROBE_LENGTHS)}")
    groups = DATASET_PRESETS[preset].paired_groups
    lengths = PROBE_LENGTHS[preset]
    pairs = [(x, y) for i, x in enumerate(groups) for y in groups[i:]]
    same = [paired(x, y, n) for x, y in pairs if x == y for n in lengths]
    different = [paired(x, y, n) for x, y in pairs if x != y for n in lengths]
    return same + different


def probe_family(smiles: str) -> str:
    """``long_di`` or ``long_mixed`` for a molecule that satisfies the probe rule.

    Raises:
        ProbeError: the molecule is not X-(CH2)n-Y with n >= :data:`LONG_CHAIN_MIN`.
    """
    structure = analyse_structure(smiles)
    if structure.family not in ("di", "mixed") or structure.alkyl_carbons < LONG_CHAIN_MIN:
        raise ProbeError(
            f"probe molecule {smiles} (family {structure.family}, n={structure.alkyl_carbons}) "
            f"breaks the probe rule: {PROBE_RULE}"
        )
    return "long_di" if structure.family == "di" else "long_mixed"


def eligible_molecules(
    probe_smiles: Mapping[str, str], task_id_smiles: Iterable[str], task_ood_smiles: Iterable[str]
) -> list[str]:
    """Probe molecule ids a model trained on one task is scored on.

    Args:
        probe_smiles: ``{molecule_id: smiles}`` of the probe.
        task_id_smiles, task_ood_smiles: SMILES of the task's ID (training) and OOD molecules.

    Raises:
        ProbeError: a probe molecule is one of the task's molecules (canonical SMILES).
    """
    id_structures = [analyse_structure(s) for s in task_id_smiles]
    listed = {s.smiles for s in id_structures} | {
        analyse_structure(s).smiles for s in task_ood_smiles
    }
    seen = frozenset().union(*(s.fragments for s in id_structures))
    eligible = []
    for molecule_id, smiles in probe_smiles.items():
        structure = analyse_structure(smiles)
        if structure.smiles in listed:
            raise ProbeError(f"probe molecule {molecule_id} ({smiles}) is listed by a task")
        if structure.fragments <= seen:
            eligible.append(molecule_id)
    return eligible


def make_probe_manifest(
    preset: str, metadata: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The probe manifest of a dataset preset (checked against the preset's four tasks)."""
    molecules = probe_molecules(preset)
    smiles = {m.molecule_id: m.smiles for m in molecules}
    eligible = {}
    for task in TASK_NAMES:
        definition = define_task(task, preset)
        eligible[task] = eligible_molecules(
            smiles,
            [m.smiles for m in definition.id_molecules],
            [m.smiles for m in definition.ood_molecules],
        )
    return {
        "probe": PROBE_NAME,
        "rule": PROBE_RULE,
        "probe_version": PROBE_VERSION,
        **dict(metadata or {}),
        "molecules": [
            {
                "molecule_id": m.molecule_id,
                "smiles": m.smiles,
                "family": probe_family(m.smiles),
                "trajectories": list(range(PROBE_TRAJECTORIES)),
            }
            for m in molecules
        ],
        "eligible_tasks": eligible,
    }


def manifest_path(data_dir: str | Path) -> Path:
    """``<data_dir>/manifests/probe.json``."""
    return Path(data_dir) / layout.MANIFESTS_DIR / MANIFEST_NAME


def validate_probe_manifest(manifest: Mapping[str, Any]) -> None:
    """Check the probe manifest's format and rule: well-formed entries, every molecule of a
    probe family (its declared one), eligible ids that the manifest lists.

    Raises:
        ProbeError: naming the entry that fails.
    """
    required = ("probe", "probe_version", "molecules", "eligible_tasks")
    missing = [key for key in required if key not in manifest]
    if missing:
        raise ProbeError(f"probe manifest lacks keys {missing}")
    molecules = manifest["molecules"]
    if not isinstance(molecules, list) or not molecules:
        raise ProbeError("probe manifest: 'molecules' must be a non-empty list")
    ids = set()
    for position, entry in enumerate(molecules):
        if not isinstance(entry, dict) or not set(ENTRY_KEYS) <= set(entry):
            raise ProbeError(
                f"probe entry {position}: needs keys molecule_id, smiles, family, trajectories"
            )
        family = probe_family(entry["smiles"])
        if entry["family"] != family:
            raise ProbeError(
                f"probe molecule {entry['molecule_id']}: declared {entry['family']!r}, "
                f"is {family!r}"
            )
        trajectories = entry["trajectories"]
        if not trajectories or not all(isinstance(i, int) and i >= 0 for i in trajectories):
            raise ProbeError(
                f"probe molecule {entry['molecule_id']}: bad trajectories {trajectories!r}"
            )
        ids.add(entry["molecule_id"])
    eligible = manifest["eligible_tasks"]
    if not isinstance(eligible, dict) or not set(eligible) <= set(TASK_NAMES):
        raise ProbeError(f"probe manifest: eligible_tasks must map tasks of {TASK_NAMES} to ids")
    for task, listed in eligible.items():
        unknown = set(listed) - ids
        if unknown:
            raise ProbeError(f"probe manifest: {task} lists unknown molecules {sorted(unknown)}")


def write_probe_manifest(manifest: Mapping[str, Any], data_dir: str | Path) -> Path:
    """Validate and write ``manifests/probe.json`` of ``data_dir``."""
    validate_probe_manifest(manifest)
    path = manifest_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, manifest)
    return path


def read_probe_manifest(data_dir: str | Path) -> dict[str, Any] | None:
    """The probe manifest of a dataset, or ``None`` when the dataset has none (built before the
    probe existed: ``gmd26 build`` on the folder adds it).

    Raises:
        ProbeError: the manifest is unreadable or invalid.
    """
    path = manifest_path(data_dir)
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ProbeError(f"{path}: not readable JSON ({error})") from error
    try:
        validate_probe_manifest(manifest)
    except ProbeError as error:
        raise ProbeError(f"{path}: {error}") from error
    return manifest


def probe_frames(
    data_dir: str | Path, task: str, manifest: Mapping[str, Any] | None = None
) -> dict[str, list[Frame]]:
    """Frames of the probe molecules a model trained on ``task`` is scored on, by family.

    Returns ``{}`` when the dataset has no probe manifest. Families without an eligible
    molecule are left out.
    """
    manifest = read_probe_manifest(data_dir) if manifest is None else manifest
    if manifest is None:
        return {}
    eligible = set(manifest["eligible_tasks"].get(task, ()))
    frames: dict[str, list[Frame]] = {}
    for entry in manifest["molecules"]:
        if entry["molecule_id"] not in eligible:
            continue
        for index in entry["trajectories"]:
            frames.setdefault(entry["family"], []).extend(
                layout.read_trajectory(data_dir, entry["molecule_id"], index)
            )
    return frames


def probe_units(preset: str) -> Sequence[tuple[MoleculeSpec, int]]:
    """``(molecule, trajectory index)`` of every probe trajectory the build computes."""
    return [(m, i) for m in probe_molecules(preset) for i in range(PROBE_TRAJECTORIES)]
