"""Counts and label statistics of a built GMD-26 dataset, per task and split (``gmd26 info``).

Energies in eV, forces in eV/Å; every statistic is computed in float64.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.dataset.frames import Frame
from benchmark.dataset.layout import (
    FRAMES_DIR,
    TRAJECTORY_SUFFIX,
    manifest_path,
    read_build_info,
    read_failures,
    read_trajectory,
    split_trajectories,
)
from benchmark.dataset.probe import read_probe_manifest
from benchmark.dataset.splits import SPLITS
from benchmark.dataset.tasks import TASK_NAMES


def _summary(values: np.ndarray) -> dict[str, float]:
    """Mean, standard deviation, minimum and maximum (float64), or NaNs when empty."""
    if values.size == 0:
        return dict.fromkeys(("mean", "std", "min", "max"), float("nan"))
    values = values.astype(np.float64)
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def _frame_statistics(frames: Iterable[Frame]) -> dict[str, Any]:
    frames = list(frames)
    energies = np.array([f.energy for f in frames], dtype=np.float64)
    atoms = np.array([f.n_atoms for f in frames], dtype=np.float64)
    forces = (
        np.concatenate([f.forces for f in frames]) if frames else np.zeros((0, 3))
    )
    return {
        "molecules": len({f.molecule_id for f in frames}),
        "trajectories": len({f.trajectory_id for f in frames}),
        "frames": len(frames),
        "atoms": int(atoms.sum()),
        "energy_eV": _summary(energies),
        "energy_per_atom_eV": _summary(energies / np.maximum(atoms, 1)),
        "force_component_eV_per_A": _summary(forces.ravel()),
        "force_norm_eV_per_A": _summary(np.linalg.norm(forces, axis=1)),
    }


def dataset_statistics(data_dir: str | Path) -> dict[str, Any]:
    """Counts and label statistics of a built dataset, per task and split.

    Returns:
        ``{"build": build.json, "failures": n, "all": stats, "tasks": {task: {split: stats}},
        "probe": {family: stats}}`` (``probe`` empty for data without the compositional probe)
        where ``stats`` holds ``molecules``, ``trajectories``, ``frames``, ``atoms`` and
        mean/std/min/max of the total energy (eV), energy per atom (eV), force components and
        force norms (eV/Å). ``all`` covers every stored trajectory once. Each trajectory file is
        read once.
    """
    data_dir = Path(data_dir)
    build = read_build_info(data_dir)
    cache: dict[tuple[str, int], list[Frame]] = {}

    def frames_of(pairs: Iterable[tuple[str, int]]) -> list[Frame]:
        out = []
        for pair in pairs:
            if pair not in cache:
                cache[pair] = read_trajectory(data_dir, *pair)
            out.extend(cache[pair])
        return out

    tasks = {
        task: {
            split: _frame_statistics(frames_of(split_trajectories(data_dir, task, split)))
            for split in SPLITS
        }
        for task in TASK_NAMES
        if manifest_path(data_dir, task).exists()
    }
    stored = sorted(
        (path.parent.name, int(path.name.removesuffix(TRAJECTORY_SUFFIX)[1:]))
        for path in (data_dir / FRAMES_DIR).glob(f"*/t*{TRAJECTORY_SUFFIX}")
    )
    probe = read_probe_manifest(data_dir)
    families = {}
    for entry in probe["molecules"] if probe else ():
        pairs = [(entry["molecule_id"], index) for index in entry["trajectories"]]
        families.setdefault(entry["family"], []).extend(pairs)
    return {
        "build": build,
        "failures": len(read_failures(data_dir)),
        "all": _frame_statistics(frames_of(stored)),
        "tasks": tasks,
        "probe": {family: _frame_statistics(frames_of(pair)) for family, pair in families.items()},
    }
