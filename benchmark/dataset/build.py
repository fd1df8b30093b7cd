"""Build the whole GMD-26 dataset: run every trajectory on an executor, resumably, then write
the failure records, the split manifests and ``build.json``.

A work unit is one (molecule, trajectory) pair
(:func:`~benchmark.dataset.sampling.generate_trajectory`). Units run in this process, in a
local process pool or on any executor with ``submit(fn, *args) -> future`` and futures with
``done()`` / ``result()`` (a ``dask.distributed.Client``, ``gmd26 build --scheduler``:
:mod:`benchmark.executors`), always with OpenMP on one thread per unit. Units return their
frames; this process writes each finished trajectory atomically as its own file
(:func:`deepset_moe.atomic_io.atomic_write`), so an interrupted build, or one that lost a
worker, resumes where it stopped and ends byte-identical to an uninterrupted one on any
executor (every seed derives from the build seed and the molecule id). A unit whose worker
fails is recorded in ``failures.json`` (stage ``setup``) and the others go on.

Every failed frame or trajectory is recorded in ``failures.json`` (molecule, trajectory, step,
stage, error). File layout: :mod:`benchmark.dataset.layout`.

Resuming trusts no file blindly: every existing trajectory file is checked first (a complete
gzip stream, whole frames, ``frames_per_trajectory`` frames or a failure record explaining
fewer); a damaged one is named in the log and the summary, deleted and computed again.
Interrupted (Ctrl-C, SIGTERM) or failed builds stop their worker processes and leave
``build.json`` with status ``interrupted`` or ``failed``; rerunning the command resumes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ase.calculators.calculator import Calculator
from tqdm import tqdm

from benchmark.dataset import layout
from benchmark.dataset.frames import DAMAGED_HINT, DataFormatError, write_frames
from benchmark.dataset.molecules import MoleculeSpec
from benchmark.dataset.probe import make_probe_manifest, probe_units, write_probe_manifest
from benchmark.dataset.references import reference_name
from benchmark.dataset.sampling import (
    DATA_GENERATOR_VERSION,
    GENERATION_PRESETS,
    GenerationSettings,
    TrajectoryResult,
    failure_record,
    generate_trajectory,
    limit_threads,
    single_threaded_openmp,
)
from benchmark.dataset.splits import make_manifest, trajectory_id, write_manifest
from benchmark.dataset.tasks import GENERATOR_VERSION, TASK_NAMES, all_molecules, define_task
from benchmark.executors import (
    Executor,
    SerialExecutor,
    as_executor,
    completed,
    process_pool,
)
from benchmark.interrupts import signal_name, worker_ignores_sigint
from benchmark.jsonio import write_json

logger = logging.getLogger(__name__)

STALE_PATTERNS = ("*/*.partial.*", "*/*.partial")
"""Temporary files under ``frames/`` left by an interrupted write, deleted when a build starts:
``<stem>.partial<suffix>`` of :func:`deepset_moe.atomic_io.atomic_write` (``t0.xyz.partial.gz``,
``t0.failures.partial.json``) and ``<name>.partial`` of builds written before it."""


class BuildConfigError(ValueError):
    """An existing output directory was built with other settings; a resume would mix them."""


@dataclass
class BuildSummary:
    """Outcome of :func:`build_dataset`."""

    out: Path
    frames: int
    trajectories: int
    computed_trajectories: int
    failures: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0
    damaged: list[str] = field(default_factory=list)
    """Trajectory files found damaged on resume (``"<id>: <reason>"``), recomputed."""

    @property
    def ok(self) -> bool:
        """True when every trajectory exists and no frame failed."""
        return not self.failures and not self.missing


def build_config(
    preset: str, reference: str | Calculator, seed: int, settings: GenerationSettings
) -> dict[str, Any]:
    """The settings recorded in ``build.json`` (and compared on resume)."""
    return {
        "preset": preset,
        "reference": reference_name(reference),
        **dataclasses.asdict(settings),
        "seed": seed,
        "seed_derivation": "sha256('<seed>/<molecule_id>/conformers' | "
        "'<seed>/<molecule_id>/trajectory/<index>')[:4] little-endian & 0x7fffffff",
        "generator_version": DATA_GENERATOR_VERSION,
        "tasks_version": GENERATOR_VERSION,
    }


def _start_config(out: Path, config: dict[str, Any]) -> float:
    """Check ``config`` against a previous build in ``out``; return its accumulated wall time."""
    path = out / layout.BUILD_FILE
    previous: dict[str, Any] = layout.read_build_info(out) if path.exists() else {}
    changed = sorted(k for k in config if k in previous and previous[k] != config[k])
    if changed:
        detail = ", ".join(f"{k}: {previous[k]!r} -> {config[k]!r}" for k in changed)
        raise BuildConfigError(
            f"{out} holds a build with other settings ({detail}); use another --out directory"
        )
    write_json(path, {**config, "status": "running"})
    return float(previous.get("total_wall_time_s", 0.0))


def _store(out: Path, result: TrajectoryResult) -> None:
    """Write a finished trajectory (failure records first, then the frames, both atomically)."""
    failures_path = layout.trajectory_failures_path(out, result.molecule_id, result.index)
    if result.failures:
        failures_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(failures_path, {"failures": result.failures})
    else:
        failures_path.unlink(missing_ok=True)
    write_frames(layout.trajectory_path(out, result.molecule_id, result.index), result.frames)


def trajectory_problem(
    out: Path, molecule_id: str, index: int, settings: GenerationSettings
) -> str | None:
    """Why the stored file of one trajectory cannot be trusted, or None if it is complete.

    Checked without parsing the frames: the gzip stream is complete (length and CRC), every
    frame is whole, and it holds ``frames_per_trajectory`` frames, or fewer with a failure
    record beside it (failed labels are left out; a failed MD ends the trajectory).
    """
    path = layout.trajectory_path(out, molecule_id, index)
    try:
        n_frames, _ = layout.count_frames(path)
    except DataFormatError as error:
        return str(error).removeprefix(f"{path}: ").removesuffix(f"; {DAMAGED_HINT}")
    expected = settings.frames_per_trajectory
    if n_frames > expected:
        return f"holds {n_frames} frames, more than the {expected} the settings keep"
    explained = layout.trajectory_failures_path(out, molecule_id, index).exists()
    if n_frames < expected and not explained:
        return f"holds {n_frames} of {expected} frames and no failure record explains the rest"
    return None


def _collect_failures(out: Path, unit_errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    records = list(unit_errors)
    for path in (out / layout.FRAMES_DIR).glob(f"*/*{layout.FAILURES_SUFFIX}"):
        try:
            records.extend(json.loads(path.read_text())["failures"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DataFormatError(
                f"{path}: unreadable failure record ({error}); delete it and its trajectory "
                f"file, then rerun the build"
            ) from error
    records.sort(key=lambda r: (r["molecule_id"], r["trajectory"], r["step"], r["stage"]))
    write_json(out / layout.FAILURES_FILE, {"count": len(records), "failures": records})
    return records


def _count_frames(out: Path, units: Sequence[tuple[MoleculeSpec, int]]) -> tuple[int, int, list]:
    """Frames and atoms stored for ``units``, and the trajectory ids with no (readable) file."""
    frames = atoms = 0
    missing = []
    for spec, index in units:
        path = layout.trajectory_path(out, spec.molecule_id, index)
        try:
            n_frames, n_atoms = layout.count_frames(path)
        except (FileNotFoundError, DataFormatError) as error:
            missing.append(trajectory_id(spec.molecule_id, index))
            if path.exists():
                logger.error("%s", error)
            continue
        frames += n_frames
        atoms += n_atoms
    return frames, atoms, missing


def _init_worker() -> None:
    """Worker initializer: one thread per library, and Ctrl-C is left to the parent."""
    limit_threads()
    worker_ignores_sigint()


def _single_threaded_trajectory(*args: Any) -> TrajectoryResult:
    """:func:`generate_trajectory` with this thread's OpenMP on one thread: the unit run in
    this process or on a given executor (a dask worker thread), as a pool process runs it."""
    with single_threaded_openmp():
        return generate_trajectory(*args)


def _unit_runner(
    executor: Executor | None, workers: int | None, units: int
) -> tuple[AbstractContextManager[Executor], Callable[..., TrajectoryResult], int]:
    """Where the build's units run, the unit function and how many are in flight: the given
    executor (all units at once), this process (``workers <= 1``) or a process pool."""
    if executor is not None:
        return nullcontext(as_executor(executor)), _single_threaded_trajectory, max(1, units)
    n_workers = _default_workers() if workers is None else workers
    if n_workers <= 1:
        return nullcontext(SerialExecutor()), _single_threaded_trajectory, 1
    return process_pool(n_workers, initializer=_init_worker), generate_trajectory, 2 * n_workers


def _check_existing(
    out: Path, units: Sequence[tuple[MoleculeSpec, int]], settings: GenerationSettings
) -> list[str]:
    """Delete every damaged trajectory file of ``units`` (so it is computed again); return
    ``"<trajectory id>: <reason>"`` for each, also logged."""
    damaged = []
    for spec, index in units:
        path = layout.trajectory_path(out, spec.molecule_id, index)
        if not path.exists():
            continue
        problem = trajectory_problem(out, spec.molecule_id, index, settings)
        if problem is None:
            continue
        name = trajectory_id(spec.molecule_id, index)
        logger.warning("damaged trajectory %s (%s): %s; computing it again", name, path, problem)
        damaged.append(f"{name}: {problem}")
        path.unlink()
        layout.trajectory_failures_path(out, spec.molecule_id, index).unlink(missing_ok=True)
    return damaged


def _write_manifests(out: Path, preset: str, config: dict[str, Any]) -> None:
    metadata = {
        key: config[key]
        for key in ("preset", "reference", "md_calculator", "seed", "generator_version")
    }
    metadata["data_generator_version"] = metadata.pop("generator_version")
    n_trajectories = config["trajectories_per_molecule"]
    for task in TASK_NAMES:
        manifest = make_manifest(define_task(task, preset), n_trajectories, metadata)
        write_manifest(manifest, layout.manifest_path(out, task))
    write_probe_manifest(make_probe_manifest(preset, metadata), out)


def build_units(preset: str, trajectories_per_molecule: int) -> list[tuple[MoleculeSpec, int]]:
    """``(molecule, trajectory index)`` of every trajectory a build of ``preset`` computes: the
    molecules of the four tasks, then those of the compositional probe
    (:mod:`benchmark.dataset.probe`, fewer trajectories each)."""
    return [
        (spec, index)
        for spec in all_molecules(preset)
        for index in range(trajectories_per_molecule)
    ] + list(probe_units(preset))


def _default_workers() -> int:
    return max(
        1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )


def build_dataset(
    out: str | Path,
    preset: str = "standard",
    reference: str | Calculator = "xtb",
    *,
    seed: int = 0,
    workers: int | None = None,
    executor: Executor | None = None,
    md_calculator: str | None = None,
    progress: bool = True,
) -> BuildSummary:
    """Build (or resume) the four GMD-26 tasks of ``preset`` into ``out``.

    Args:
        out: output directory (layout: :mod:`benchmark.dataset.layout`).
        preset: ``"smoke"`` or ``"standard"`` (sampling settings of
            :data:`benchmark.dataset.sampling.GENERATION_PRESETS`, molecule sets of
            :data:`benchmark.dataset.tasks.DATASET_PRESETS`).
        reference: ``"xtb"``, ``"mmff"``, ``"dft"`` or an ASE calculator labelling the frames.
        seed: build seed; every conformer and MD seed derives from it.
        workers: processes of the default ``ProcessPoolExecutor`` (default: available cores;
            ``<= 1`` runs in this process). Ignored when ``executor`` is given.
        executor: any object with ``submit(fn, *args)`` (e.g. a ``dask.distributed.Client``:
            every unit is submitted at once; it is left open).
        md_calculator: overrides the preset's MD driver (``"xtb"`` or ``"mmff"``).
        progress: show a tqdm bar over trajectories.

    Trajectories already in ``out`` are kept (resume) once checked
    (:func:`trajectory_problem`; damaged ones are computed again and listed in
    ``BuildSummary.damaged``); ``out`` must have been built with the same settings, otherwise
    :class:`BuildConfigError` is raised. On ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM under
    :func:`benchmark.interrupts.sigterm_raises`) or an error, worker processes are stopped,
    ``build.json`` gets status ``interrupted`` or ``failed`` and the exception propagates.
    """
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if preset not in GENERATION_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {tuple(GENERATION_PRESETS)}")
    settings = GENERATION_PRESETS[preset]
    if md_calculator is not None:
        settings = dataclasses.replace(settings, md_calculator=md_calculator)
    config = build_config(preset, reference, seed, settings)
    handler = logging.FileHandler(out / layout.LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    started = False
    previous_wall = 0.0
    try:
        previous_wall = _start_config(out, config)
        started = True
        for pattern in STALE_PATTERNS:
            for stale in (out / layout.FRAMES_DIR).glob(pattern):
                stale.unlink()
        units = build_units(preset, settings.trajectories_per_molecule)
        damaged = _check_existing(out, units, settings)
        todo = [
            (spec, index, settings, reference, seed)
            for spec, index in units
            if not layout.trajectory_path(out, spec.molecule_id, index).exists()
        ]
        logger.info(
            "build %s: %d trajectories, %d to compute (%d damaged), reference %s, MD by %s, "
            "seed %d",
            out,
            len(units),
            len(todo),
            len(damaged),
            config["reference"],
            settings.md_calculator,
            seed,
        )
        unit_errors: list[dict[str, Any]] = []
        bar = tqdm(
            total=len(units),
            initial=len(units) - len(todo),
            unit="traj",
            disable=not progress,
            desc=f"gmd26 build {preset}",
        )

        def on_done(args: tuple[Any, ...], future: Any) -> None:
            spec, index = args[0], args[1]
            try:
                result = future.result()
            except Exception as error:
                unit_errors.append(
                    failure_record(spec, index, -1, "setup", f"{type(error).__name__}: {error}")
                )
                logger.error("%s t%d failed: %s", spec.molecule_id, index, error)
            else:
                _store(out, result)
                logger.info(
                    "%s t%d: %d frames, %d failures, %d MD steps, %.2f s",
                    spec.molecule_id,
                    index,
                    len(result.frames),
                    len(result.failures),
                    result.md_steps,
                    result.seconds,
                )
                for record in result.failures:
                    logger.warning(
                        "%s t%d step %d [%s] failed: %s",
                        spec.molecule_id,
                        index,
                        record["step"],
                        record["stage"],
                        record["error"],
                    )
            bar.update(1)

        runner, unit, window = _unit_runner(executor, workers, len(todo))
        with runner as running:  # a pool's workers are stopped at once on any exception
            for args, future in completed(running, unit, todo, window):
                on_done(args, future)
        bar.close()

        failures = _collect_failures(out, unit_errors)
        _write_manifests(out, preset, config)
        n_frames, n_atoms, missing = _count_frames(out, units)
        wall = time.perf_counter() - start
        write_json(
            out / layout.BUILD_FILE,
            {
                **config,
                "status": "complete" if not missing else "incomplete",
                "wall_time_s": round(wall, 1),
                "total_wall_time_s": round(previous_wall + wall, 1),
                "counts": {
                    "molecules": len({spec.molecule_id for spec, _ in units}),
                    "trajectories": len(units) - len(missing),
                    "frames": n_frames,
                    "atoms": n_atoms,
                    "failures": len(failures),
                    "missing_trajectories": len(missing),
                },
            },
        )
        logger.info(
            "done in %.1f s: %d frames, %d failures, %d missing trajectories",
            wall,
            n_frames,
            len(failures),
            len(missing),
        )
    except BaseException as error:
        if started:
            _record_stop(out, config, error, previous_wall + time.perf_counter() - start)
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()
    return BuildSummary(
        out, n_frames, len(units) - len(missing), len(todo), failures, missing, wall, damaged
    )


def _record_stop(out: Path, config: dict[str, Any], error: BaseException, wall: float) -> None:
    """``build.json`` of a build stopped by a signal (``interrupted``) or an error (``failed``),
    so no reader mistakes it for a running or finished one."""
    if isinstance(error, KeyboardInterrupt):
        status, reason = "interrupted", signal_name(error)
        logger.warning("interrupted (%s); rerun the same command to resume", reason)
    else:
        status, reason = "failed", f"{type(error).__name__}: {error}"
        logger.error("build failed: %s", reason)
    write_json(
        out / layout.BUILD_FILE,
        {**config, "status": status, "stop_reason": reason, "total_wall_time_s": round(wall, 1)},
    )
