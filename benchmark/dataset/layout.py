"""On-disk layout of a built GMD-26 dataset: file paths, build records, split loading.

::

    <out>/build.json                          settings, seeds, versions, wall time, counts
    <out>/frames/<molecule_id>/t<k>.xyz.gz    one MD trajectory (extxyz, benchmark.dataset.frames)
    <out>/manifests/<task>.json               split manifest of each task (benchmark.dataset.splits)
    <out>/failures.json                       frames whose reference calculation failed
    <out>/build.log                           log of the build(s)

A molecule's trajectories are shared by every task that uses the molecule; a manifest lists,
per split, the molecules and trajectory indices that belong to it. Label statistics of a
built dataset: :mod:`benchmark.dataset.statistics`.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from pathlib import Path
from typing import Any

from benchmark.dataset.frames import DAMAGED_HINT, DataFormatError, Frame, read_frames
from benchmark.dataset.splits import SPLITS, read_manifest, trajectory_id
from benchmark.dataset.tasks import TASK_NAMES

DEFAULT_DATA_DIR: Path = Path(
    os.environ.get("GMD26_DATA", Path(__file__).resolve().parents[2] / "data" / "gmd26")
)
"""The shipped dataset: ``<repo>/data/gmd26``, overridden by the ``GMD26_DATA`` variable."""

BUILD_FILE = "build.json"
FAILURES_FILE = "failures.json"
LOG_FILE = "build.log"
FRAMES_DIR = "frames"
MANIFESTS_DIR = "manifests"
TRAJECTORY_SUFFIX = ".xyz.gz"
FAILURES_SUFFIX = ".failures.json"

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def trajectory_path(data_dir: str | Path, molecule_id: str, index: int) -> Path:
    """File of trajectory ``index`` of ``molecule_id``: ``frames/<molecule_id>/t<index>.xyz.gz``."""
    if not _SAFE_ID.match(molecule_id):
        raise ValueError(f"molecule id {molecule_id!r} is not a safe file name")
    return Path(data_dir) / FRAMES_DIR / molecule_id / f"t{index}{TRAJECTORY_SUFFIX}"


def trajectory_failures_path(data_dir: str | Path, molecule_id: str, index: int) -> Path:
    """Failure records of one trajectory, written beside it when some of its frames failed."""
    path = trajectory_path(data_dir, molecule_id, index)
    return path.with_name(path.name.removesuffix(TRAJECTORY_SUFFIX) + FAILURES_SUFFIX)


def manifest_path(data_dir: str | Path, task: str) -> Path:
    """Manifest of ``task``: ``manifests/<task>.json``."""
    if task not in TASK_NAMES:
        raise ValueError(f"unknown task {task!r}; expected one of {TASK_NAMES}")
    return Path(data_dir) / MANIFESTS_DIR / f"{task}.json"


def read_build_info(data_dir: str | Path) -> dict[str, Any]:
    """The ``build.json`` of a dataset directory.

    Raises:
        FileNotFoundError: ``data_dir`` holds no ``build.json`` (not a built dataset).
        DataFormatError: ``build.json`` is not a JSON object.
    """
    path = Path(data_dir) / BUILD_FILE
    if not Path(data_dir).is_dir():
        what = "is a file, not a folder" if Path(data_dir).exists() else "no such folder"
        raise FileNotFoundError(
            f"{data_dir}: {what}; expected a dataset built by `gmd26 build` (the shipped one "
            f"is {DEFAULT_DATA_DIR})"
        )
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: {data_dir} is not a built GMD-26 dataset (run `gmd26 build`)"
        )
    return _read_json_object(path)


DATA_IDENTITY_KEYS = (
    "preset", "reference", "md_calculator", "seed", "generator_version", "tasks_version",
)
"""``build.json`` keys that identify a dataset's content (wherever its folder is)."""


def data_identity(data_dir: str | Path) -> dict[str, Any] | None:
    """The identity of a built dataset (:data:`DATA_IDENTITY_KEYS` of its ``build.json``), or
    None when the folder has no readable ``build.json``."""
    try:
        build = read_build_info(data_dir)
    except (OSError, ValueError):
        return None
    return {key: build.get(key) for key in DATA_IDENTITY_KEYS}


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataFormatError(f"{path}: not readable JSON ({error})") from error
    if not isinstance(value, dict):
        raise DataFormatError(f"{path}: expected a JSON object")
    return value


def read_failures(data_dir: str | Path) -> list[dict[str, Any]]:
    """The failure records of ``failures.json`` (empty list if the file does not exist)."""
    path = Path(data_dir) / FAILURES_FILE
    if not path.exists():
        return []
    failures = _read_json_object(path).get("failures")
    if not isinstance(failures, list):
        raise DataFormatError(f"{path}: expected a 'failures' list")
    return failures


def split_trajectories(data_dir: str | Path, task: str, split: str) -> list[tuple[str, int]]:
    """``(molecule_id, trajectory index)`` pairs a task's manifest lists for ``split``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    manifest = read_manifest(manifest_path(data_dir, task))
    return [
        (entry["molecule_id"], index)
        for entry in manifest["splits"][split]
        for index in entry["trajectories"]
    ]


def count_frames(path: str | Path) -> tuple[int, int]:
    """Number of frames and of atoms in an extxyz(.gz) file, from its atom-count lines only.

    Reading a gzip file to its end also checks its length and CRC, so a truncated or corrupt
    file is found here.

    Raises:
        DataFormatError: the file is empty (0 bytes), a truncated or corrupt gzip stream, ends
            inside a frame, or a count line is not an integer; the message names the file.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise DataFormatError(f"{path}: empty file (0 bytes); {DAMAGED_HINT}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as handle:
            lines = handle.read().splitlines()
    except (EOFError, OSError, zlib.error, UnicodeDecodeError) as error:
        # gzip raises a bare EOFError / BadGzipFile naming no file
        raise DataFormatError(f"{path}: unreadable ({error}); {DAMAGED_HINT}") from error
    frames = atoms = position = 0
    while position < len(lines):
        try:
            n_atoms = int(lines[position])
        except ValueError as error:
            raise DataFormatError(
                f"{path} frame {frames}: expected an atom count on line {position + 1}"
            ) from error
        position += n_atoms + 2
        if position > len(lines):
            raise DataFormatError(f"{path} frame {frames}: file ends inside the frame")
        frames += 1
        atoms += n_atoms
    return frames, atoms


def read_trajectory(data_dir: str | Path, molecule_id: str, index: int) -> list[Frame]:
    """Frames of one trajectory, checked to belong to it.

    Raises:
        FileNotFoundError: naming the missing trajectory and its file.
        DataFormatError: the file is corrupt, or a frame names another molecule / trajectory.
    """
    path = trajectory_path(data_dir, molecule_id, index)
    expected = trajectory_id(molecule_id, index)
    if not path.exists():
        raise FileNotFoundError(
            f"trajectory {expected} is missing: no file {path} (rerun gmd26 build on "
            f"{data_dir} to compute it)"
        )
    frames = read_frames(path)
    if not frames and not trajectory_failures_path(data_dir, molecule_id, index).exists():
        raise DataFormatError(
            f"{path}: holds no frames and no failure record explains it; {DAMAGED_HINT}"
        )
    for position, frame in enumerate(frames):
        if frame.molecule_id != molecule_id or frame.trajectory_id != expected:
            raise DataFormatError(
                f"{path} frame {position}: belongs to {frame.trajectory_id} "
                f"(molecule {frame.molecule_id}), expected {expected}"
            )
    return frames


def load_split(data_dir: str | Path, task: str, split: str) -> list[Frame]:
    """Frames of one split of one task: exactly the trajectories its manifest lists, in order.

    Args:
        data_dir: a built dataset directory (e.g. :data:`DEFAULT_DATA_DIR`).
        task: one of ``benchmark.dataset.tasks.TASK_NAMES``.
        split: one of ``benchmark.dataset.splits.SPLITS``.

    Raises:
        FileNotFoundError: a listed trajectory file is missing (named in the message).
        benchmark.dataset.splits.ManifestError: the manifest is missing or invalid.
    """
    return [
        frame
        for molecule_id, index in split_trajectories(data_dir, task, split)
        for frame in read_trajectory(data_dir, molecule_id, index)
    ]
