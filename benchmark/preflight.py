"""Checks of a command's inputs before any work starts (no training, no labelling).

Each check raises a :class:`benchmark.errors.UsageError` whose one-line message names the
option and the item and says what to do; the command line prints it and exits with status 2.
They are cheap (no model is trained, no trajectory file is read) and have no side effect:
an output folder is probed, not created.
"""

from __future__ import annotations

import argparse
import difflib
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from baselines.registry import build_model, list_models, missing_requirement, model_config
from benchmark.dataset.layout import manifest_path, read_build_info
from benchmark.dataset.splits import read_manifest
from benchmark.errors import RunFolderError, UsageError
from benchmark.training.presets import TrainingPreset, get_preset

UNFINISHED_BUILD = ("running", "interrupted", "failed")
"""``build.json`` statuses of a build that stopped before writing everything."""


def check_output_dir(path: str | Path, option: str = "--out") -> Path:
    """``path`` can be used as an output folder: it is a folder or does not exist yet, and a
    file can be created in it (or in its nearest existing parent). Nothing is created.

    Raises:
        RunFolderError: ``path`` (or a parent) is a file, or the place is not writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"{option} {path}: is a file, not a folder; choose a folder path")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RunFolderError(
            f"{option} {path}: {existing} is a file, so no folder can be made there; choose "
            f"another path"
        )
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".gmd26-write-test-"):
            pass
    except OSError as error:
        raise RunFolderError(
            f"{option} {path}: cannot write in {existing} ({error.strerror or error}); choose "
            f"a writable folder"
        ) from error
    return path


def check_data_dir(
    path: str | Path, tasks: Iterable[str] = (), option: str = "--data"
) -> dict[str, Any]:
    """``path`` is a finished GMD-26 build with a valid manifest for every task of ``tasks``.

    Returns:
        Its ``build.json``.

    Raises:
        UsageError: no such folder, no ``build.json``, a build that did not finish, or a
            missing manifest (a broken manifest raises ``ManifestError``).
    """
    try:
        build = read_build_info(path)
    except FileNotFoundError as error:
        raise UsageError(f"{option} {error}") from error
    status = build.get("status")
    if status in UNFINISHED_BUILD:
        raise UsageError(
            f"{option} {path}: its build did not finish (status {status!r}); complete it by "
            f"running the same `gmd26 build --out {path} ...` command again"
        )
    for task in tasks:
        manifest = manifest_path(path, task)
        if not manifest.exists():
            raise UsageError(
                f"{option} {path}: no manifest for task {task!r} ({manifest}); rebuild the "
                f"dataset with `gmd26 build --out {path}`"
            )
        read_manifest(manifest)
    return build


def check_models(names: Iterable[str], option: str = "--model") -> None:
    """Every name is registered (a typo gets a suggestion) and its package is installed.

    Raises:
        UsageError: an unknown name, or a model whose package is missing (with the pip line).
    """
    registered = list_models()
    for name in names:
        if name not in registered:
            close = difflib.get_close_matches(name, registered, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(
                f"{option}: unknown model {name!r}{hint}; registered models: "
                f"{', '.join(registered)}"
            )
        reason = missing_requirement(name)
        if reason is not None:
            raise UsageError(f"{option}: model {name!r} cannot be built here: {reason}")


def check_model_settings(
    name: str, settings: Mapping[str, Any] | None, option: str = "--model-config"
) -> dict[str, Any]:
    """``settings`` are valid for model ``name``: known names, and the model builds with them
    (on the CPU, with its default seed).

    Returns:
        The complete settings (:func:`baselines.registry.model_config`).

    Raises:
        UsageError: an unknown setting (the valid ones are listed) or a value the model
            rejects.
    """
    settings = dict(settings or {})
    try:
        complete = model_config(name, **settings)
        build_model(name, **complete)
    except (ValueError, TypeError, KeyError, AssertionError, RuntimeError) as error:
        raise UsageError(f"{option} for model {name!r}: {error}") from error
    return complete


def check_preset(name: str, overrides: Mapping[str, Any] | None = None,
                 option: str = "--preset-overrides") -> TrainingPreset:
    """The preset ``name`` with ``overrides`` applied.

    Raises:
        UsageError: an unknown preset, an unknown preset field (the valid ones are listed) or
            an invalid value.
    """
    overrides = dict(overrides or {})
    valid = [f.name for f in fields(TrainingPreset) if f.name != "name"]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise UsageError(f"{option}: unknown preset fields {unknown}; valid fields: {valid}")
    try:
        return get_preset(name, **overrides)
    except (ValueError, TypeError) as error:
        raise UsageError(f"{option}: {error}") from error


def add_scheduler_argument(parser: argparse.ArgumentParser, units: str) -> None:
    """``--scheduler ADDRESS|FILE``: run ``units`` on a ``dask.distributed`` cluster
    (:mod:`benchmark.executors`); checked with :func:`check_workers_or_scheduler`."""
    parser.add_argument(
        "--scheduler", default=None, metavar="ADDRESS|FILE",
        help=f"run the {units} on a dask.distributed cluster: its scheduler's address "
        f"(tcp://host:8786) or scheduler file; the cluster's workers decide how many run at "
        f"once, so not with --workers (docs/cluster.md)",
    )  # fmt: skip


def check_workers_or_scheduler(workers: int | None, scheduler: str | None) -> None:
    """``--workers`` (local processes) and ``--scheduler`` (a cluster) exclude each other.

    Raises:
        UsageError: both were given.
    """
    if workers is not None and scheduler is not None:
        raise UsageError(
            f"--workers {workers} and --scheduler {scheduler}: the cluster's workers decide how "
            f"many run at once; drop --workers (or --scheduler to run on this machine)"
        )


def positive_int(text: str) -> int:
    """``argparse`` type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """``argparse`` type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value
