"""The benchmark matrix: every model on every task, for several seeds, through the one trainer.

One *cell* is (task, model, seed) and lives in ``<out>/<task>/<model>/seed<k>/``: the
trainer's outputs (``best.pt``, ``metrics.json``, predictions) plus ``result.json``, written
last, holding the trainer's result and the cell's status:

* ``"ok"``: trained and evaluated, every headline metric finite;
* ``"failed"``: the trainer raised (the reason and the traceback, in ``error.log``, are kept),
  reported failure, or returned non-finite metrics (diverged).

The matrix is resumable: a cell whose ``result.json`` has status ``ok`` or ``failed`` is never
recomputed, and an unfinished cell continues from its ``last.pt``, so an interrupted run is
continued by running the same command again (with ``retry_failed``, failed cells are trained
again, e.g. after fixing their cause). A failing cell never stops the matrix. Progress (cells
done, estimated time left) goes to stderr and, with every cell start / skip / end, to
``<out>/run.log``; ``<out>/run.json`` records the plan, the command, the machine and the
timings of every invocation.

A run folder belongs to one protocol: running a plan whose preset, preset overrides, model
settings, data, safety cap, threads or device differ from the folder's ``run.json`` is refused
(:class:`PlanMismatchError`); more tasks, models or seeds may be added.

Cells run in ``workers`` processes at once, each on ``threads_per_cell`` torch threads, or on
a ``dask.distributed`` cluster (``run_matrix(plan, executor=client)``, ``gmd26 run
--scheduler``; :mod:`benchmark.executors`). The thread count is part of the protocol (it can
change floating-point sums), the executor and the worker count are not: the same plan gives
the same metrics, cell files and ``run.json`` sequentially, in a pool or on a cluster, on a
busy or an idle machine, because budgets are optimiser steps. A cell whose worker fails
(a dask worker killed, a pool process lost) is recorded as ``failed`` with the worker's
error, and the other cells go on.

GPU placement: ``devices`` (``("cuda:0", "cuda:1")``) lists the devices cells train on; each
cell in flight gets the least-busy one (:class:`benchmark.executors.DeviceSlots`), so with
``workers <= len(devices)`` every running cell has a GPU of its own (on a cluster, at most
``len(devices)`` cells are in flight). Which GPU a cell used is not part of the protocol.

A plan is checked before any cell trains: unknown tasks or models (:class:`MatrixPlan`) and
a protocol mismatch raise at once. Ctrl-C or SIGTERM stop every worker process at once
(:func:`benchmark.interrupts.stop_pool`); finished cells keep their ``result.json``,
unfinished ones their ``last.pt``, and ``run.json`` records the invocation as interrupted.

The default matrix (:data:`DEFAULT_MODELS` x :data:`DEFAULT_TASKS`, one seed, preset
:data:`DEFAULT_PRESET`, two workers) is sized to finish, report included, in about 30
minutes on 2 CPU cores with the shipped data.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import torch

from baselines.registry import canonical_config, list_models, model_config
from benchmark.dataset.layout import data_identity
from benchmark.dataset.tasks import TASK_NAMES
from benchmark.errors import UsageError
from benchmark.executors import (
    DaskExecutor,
    DeviceSlots,
    Executor,
    SerialExecutor,
    as_executor,
    completed,
    process_pool,
)
from benchmark.interrupts import signal_name, worker_ignores_sigint
from benchmark.jsonio import write_json

DEFAULT_TASKS: tuple[str, ...] = TASK_NAMES
DEFAULT_MODELS: tuple[str, ...] = ("deepset_moe", "schnet", "painn")
"""DeepSet-MoE and the two fastest baselines on CPU."""
DEFAULT_PRESET = "quick"
DEFAULT_SEEDS = 1
DEFAULT_WORKERS = 2
"""Cells at once: one per core of the 2-core reference machine."""
PROTOCOL_KEYS = (
    "preset",
    "preset_overrides",
    "model_configs",
    "data",
    "cell_minutes",
    "threads_per_cell",
    "device",
)
"""Plan fields that define a run folder's protocol (see :class:`PlanMismatchError`). ``data`` is
the dataset's build identity (:func:`~benchmark.dataset.layout.data_identity`), not its path, so
a run folder moves with its repository."""

RESULT_FILE = "result.json"
ERROR_FILE = "error.log"
RUN_LOG = "run.log"
RUN_JSON = "run.json"
FINISHED = ("ok", "failed")
TEST_SPLITS = ("id_test", "ood_test")
HEADLINE_METRICS = ("force_mae", "energy_mae")
"""Metrics that must be finite in both test splits for a cell to count as ``ok``."""

TrainFunction = Callable[..., Mapping[str, Any]]


@dataclass
class MatrixPlan:
    """What to run and where.

    Attributes:
        out_dir: run directory.
        data_dir: dataset directory (``benchmark.dataset.layout`` layout).
        tasks, models: the matrix axes.
        seeds: number of seeds; cell k uses seed k (0-based).
        preset: trainer preset name.
        cell_minutes: wall-clock safety cap per cell, minutes (``None``: the preset's own);
            a cell that hits it says so in its result.
        preset_overrides: other preset fields to override (e.g. ``{"lr": 10.0}``).
        model_configs: per-model hyperparameter overrides ``{model: {name: value}}``.
        device: ``"cpu"`` or ``"cuda"`` (part of the protocol).
        devices: the devices cells are placed on (e.g. ``("cuda:0", "cuda:1")``), all of the
            kind ``device``; empty: every cell on ``device``. Not part of the protocol.
        retry_failed: train cells that finished ``failed`` again (``ok`` cells stay).
        workers: cells trained at once, each in its own process (ignored when
            :func:`run_matrix` is given an executor).
        threads_per_cell: torch threads of each cell.
    """

    out_dir: Path
    data_dir: Path
    tasks: tuple[str, ...] = DEFAULT_TASKS
    models: tuple[str, ...] = DEFAULT_MODELS
    seeds: int = DEFAULT_SEEDS
    preset: str = DEFAULT_PRESET
    cell_minutes: float | None = None
    preset_overrides: dict[str, Any] = field(default_factory=dict)
    model_configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    device: str = "cpu"
    devices: tuple[str, ...] = ()
    retry_failed: bool = False
    workers: int = 1
    threads_per_cell: int = 1

    def __post_init__(self) -> None:
        """Raises :class:`~benchmark.errors.UsageError` (a ``ValueError``) for a plan that
        cannot run: unknown tasks or models, no seeds, workers or threads, devices that are
        not of the kind ``device``."""
        self.out_dir, self.data_dir = Path(self.out_dir), Path(self.data_dir)
        self.devices = tuple(self.devices)
        unknown = [t for t in self.tasks if t not in TASK_NAMES]
        if unknown:
            raise UsageError(f"unknown tasks {unknown}; choose from {list(TASK_NAMES)}")
        unknown = [m for m in self.models if m not in list_models()]
        if unknown:
            raise UsageError(f"unknown models {unknown}; registered models: {list_models()}")
        if self.seeds < 1:
            raise UsageError(f"seeds must be >= 1 (got {self.seeds})")
        if not self.tasks or not self.models:
            raise UsageError("the matrix needs at least one task and one model")
        if self.workers < 1 or self.threads_per_cell < 1:
            raise UsageError("workers and threads_per_cell must be >= 1")
        wrong = [d for d in self.devices if device_kind(d) != device_kind(self.device)]
        if wrong:
            raise UsageError(
                f"devices {wrong} are not {self.device} devices; list devices of the kind "
                f"{self.device!r}, e.g. cuda:0,cuda:1 with device cuda"
            )

    def cells(self) -> list[tuple[str, str, int]]:
        """(task, model, seed) in run order: task-major, then model, then seed."""
        return [(t, m, s) for t in self.tasks for m in self.models for s in range(self.seeds)]

    def to_dict(self) -> dict[str, Any]:
        plan = asdict(self)
        identity = data_identity(self.data_dir)
        plan.update(
            out_dir=str(self.out_dir),
            data_dir=str(self.data_dir),
            data=identity if identity is not None else str(self.data_dir.resolve()),
        )
        return plan


def device_kind(device: str) -> str:
    """``"cuda"`` for ``"cuda:1"``, ``"cpu"`` for ``"cpu"``.

    Raises:
        UsageError: not a torch device name.
    """
    try:
        return torch.device(device).type
    except (RuntimeError, ValueError) as error:
        raise UsageError(f"{device!r} is not a device ({error}); use cpu, cuda or cuda:N") from None


class PlanMismatchError(ValueError):
    """The run folder was made by a plan with another protocol."""


def check_plan_matches(plan: MatrixPlan, previous: Mapping[str, Any]) -> None:
    """Refuse a plan whose protocol differs from the run folder's (``run.json``).

    Raises:
        PlanMismatchError: one line naming the folder, the differing fields and what to do.
    """
    recorded = previous.get("plan")
    if not recorded:
        return
    current = plan.to_dict()
    differing = [
        f"{key} {recorded.get(key)!r} -> {current[key]!r}"
        for key in PROTOCOL_KEYS
        if key in recorded and recorded[key] != current[key]
    ]
    if differing:
        raise PlanMismatchError(
            f"{plan.out_dir} holds a run with another protocol ({'; '.join(differing)}); "
            f"use a new --out folder, or the folder's own settings to continue it"
        )


def check_finished_cells(
    plan: MatrixPlan, results: Mapping[tuple[str, str, int], Mapping[str, Any]]
) -> None:
    """Refuse to skip a finished cell whose model is not the one the plan would train now.

    The plan records only the settings given (``model_configs``); a default that changed since
    the cell ran (a new version of the code) would otherwise put cells of two different models
    under one name. Compares each finished cell's ``model_config`` with the plan's settings
    completed from the current defaults, both in :func:`baselines.registry.canonical_config`
    form (configs saved by older versions read as those versions built them).

    Raises:
        PlanMismatchError: one line naming the cell, the differing settings and what to do.
    """
    for (task, model, seed), result in results.items():
        stored = result.get("model_config")
        if result.get("status") != "ok" or stored is None:
            continue
        settings = {**plan.model_configs.get(model, {}), "seed": seed}
        try:
            expected = canonical_config(model, model_config(model, **settings))
            found = canonical_config(model, stored)
        except (ValueError, TypeError, ImportError):
            continue  # the plan's own settings are invalid: the cell reports it when run
        differing = sorted(
            key for key in expected.keys() | found.keys() if expected.get(key) != found.get(key)
        )
        if differing:
            changes = "; ".join(
                f"{key} {found.get(key)!r} -> {expected.get(key)!r}" for key in differing
            )
            raise PlanMismatchError(
                f"{cell_dir(plan.out_dir, task, model, seed)} was trained with other {model} "
                f"settings than this plan builds now ({changes}): defaults changed since it "
                "ran; use a new --out, or continue with the code that trained it (the "
                "git_commit of run.json's invocations)"
            )


def cell_label(task: str, model: str, seed: int) -> str:
    """``<task>/<model>/seed<k>``, how logs name a cell."""
    return f"{task}/{model}/seed{seed}"


def cell_dir(out_dir: str | Path, task: str, model: str, seed: int) -> Path:
    """``<out>/<task>/<model>/seed<k>``."""
    return Path(out_dir) / task / model / f"seed{seed}"


def read_result(cell: str | Path) -> dict[str, Any] | None:
    """The cell's ``result.json`` if the cell is finished (status ok or failed), else ``None``."""
    path = Path(cell) / RESULT_FILE
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a torn write from a killed run: the cell is recomputed
    return result if result.get("status") in FINISHED else None


def non_finite_metrics(result: Mapping[str, Any]) -> list[str]:
    """``split.metric`` names of headline metrics that are missing or not finite."""
    bad = []
    for split in TEST_SPLITS:
        metrics = result.get("metrics", {}).get(split, {})
        for name in HEADLINE_METRICS:
            value = metrics.get(name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                bad.append(f"{split}.{name}")
    return bad


def _default_train() -> TrainFunction:
    from benchmark.training.experiment import train

    return train


@contextmanager
def _current_device(device: str) -> Iterator[None]:
    """``device`` (``cuda:N``) is this thread's current CUDA device meanwhile (kernels launch
    on the current device); nothing changes for the CPU, ``cuda`` or without CUDA."""
    target = torch.device(device)
    if target.type != "cuda" or target.index is None or not torch.cuda.is_available():
        yield
        return
    with torch.cuda.device(target):
        yield


def run_cell(
    plan: MatrixPlan,
    task: str,
    model: str,
    seed: int,
    train: TrainFunction | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Train and evaluate one cell and write its ``result.json`` (never raises for the cell).

    Args:
        device: where this cell trains (one of ``plan.devices``); default ``plan.device``.

    Returns:
        The result dict written: the trainer's result plus ``task``, ``model``, ``seed``,
        ``status``, ``reason`` (failed cells) and ``cell_seconds``.
    """
    cell = cell_dir(plan.out_dir, task, model, seed)
    cell.mkdir(parents=True, exist_ok=True)
    train = train or _default_train()
    device = device or plan.device
    started = time.monotonic()
    threads = torch.get_num_threads()
    torch.set_num_threads(plan.threads_per_cell)
    try:
        with _current_device(device):
            result = dict(
                train(
                    model,
                    task,
                    plan.preset,
                    plan.data_dir,
                    cell,
                    seed,
                    resume=True,
                    max_minutes=plan.cell_minutes,
                    device=device,
                    model_settings=plan.model_configs.get(model),
                    preset_overrides=plan.preset_overrides,
                    progress=False,
                )
            )
        if result.get("status") == "ok":
            bad = non_finite_metrics(result)
            if bad:
                result.update(status="failed", reason=f"non-finite metrics: {', '.join(bad)}")
        elif result.get("status") != "failed":
            status = result.get("status")
            result.update(status="failed", reason=f"trainer returned status {status!r}")
    except Exception as error:  # a crashing cell is recorded and the matrix goes on
        result = _record_error(cell, error)
    finally:
        torch.set_num_threads(threads)
    return _write_result(cell, result, task, model, seed, time.monotonic() - started)


def _record_error(cell: Path, error: BaseException) -> dict[str, Any]:
    """A failed cell's result for ``error``; its traceback goes to ``error.log``."""
    trace = traceback.format_exception(type(error), error, error.__traceback__)
    (cell / ERROR_FILE).write_text("".join(trace))
    return {"status": "failed", "reason": f"{type(error).__name__}: {error}"}


def _write_result(
    cell: Path, result: dict[str, Any], task: str, model: str, seed: int, seconds: float
) -> dict[str, Any]:
    """Complete ``result`` with the cell's identity and time and write its ``result.json``."""
    result.update(task=task, model=model, seed=seed, cell_seconds=seconds)
    result.setdefault("reason", None)
    write_json(cell / RESULT_FILE, result)
    return result


def record_lost_cell(
    plan: MatrixPlan, task: str, model: str, seed: int, error: BaseException, seconds: float
) -> dict[str, Any]:
    """Record a cell whose worker failed (``run_cell`` did not return: a dask worker killed,
    a pool process lost) as ``failed`` with the worker's error, the way ``run_cell`` records
    a cell that raised."""
    cell = cell_dir(plan.out_dir, task, model, seed)
    cell.mkdir(parents=True, exist_ok=True)
    result = _record_error(cell, error)
    result["reason"] = f"worker failed: {result['reason']}"
    return _write_result(cell, result, task, model, seed, seconds)


def git_commit() -> str | None:
    """The commit of the code that runs (``git rev-parse HEAD`` of this package), or None."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def machine_info() -> dict[str, Any]:
    """Platform, Python, CPU count, torch version, accelerator and git commit of this run."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": git_commit(),
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _Progress:
    """Cells done and estimated time left, to stderr and the run log."""

    def __init__(self, total: int, log: TextIO, workers: int, stream: TextIO) -> None:
        self.total, self.log, self.workers, self.stream = total, log, workers, stream
        self.done = 0
        self.computed_seconds: list[float] = []

    def line(self, message: str) -> None:
        self.log.write(f"{_now()} {message}\n")
        self.log.flush()

    def finish(self, label: str, status: str, seconds: float | None, remaining: int) -> None:
        self.done += 1
        if seconds is not None:
            self.computed_seconds.append(seconds)
        per_cell = (
            sum(self.computed_seconds) / len(self.computed_seconds)
            if self.computed_seconds
            else None
        )
        eta = (
            "unknown"
            if per_cell is None
            else f"{per_cell * math.ceil(remaining / self.workers) / 60:.1f} min"
        )
        timing = "skipped" if seconds is None else f"{seconds:.1f} s"
        message = f"[{self.done}/{self.total}] {label}: {status} ({timing}); time left ~{eta}"
        print(message, file=self.stream, flush=True)


def run_matrix(
    plan: MatrixPlan,
    command: Sequence[str] | None = None,
    train: TrainFunction | None = None,
    stream: TextIO = sys.stderr,
    executor: Any | None = None,
) -> dict[str, Any]:
    """Run every unfinished cell of ``plan`` and update ``run.json``.

    Args:
        plan: the matrix.
        command: the command line to record (default ``sys.argv``).
        train: the trainer entry point (default ``benchmark.training.experiment.train``); with
            ``plan.workers > 1`` or an ``executor`` it must be picklable (a module-level
            function).
        stream: where progress lines go.
        executor: where the cells run instead of ``plan.workers`` local processes: a
            ``dask.distributed.Client`` (the run and data folders must be on a file system
            every worker sees under the same paths) or any object with ``submit``
            (:mod:`benchmark.executors`). It is left open. All cells are submitted at once,
            or at most ``len(plan.devices)`` when devices are listed.

    Returns:
        The ``run.json`` content: ``plan``, ``machine``, ``invocations`` (one per call:
        command, executor, start / end, wall time, cells computed and skipped) and ``cells``
        (status, reason and seconds of every cell of the plan).

    Raises:
        PlanMismatchError: the folder holds a run with another protocol.
    """
    run_json = plan.out_dir / RUN_JSON
    previous = _read_run_json(run_json)
    check_plan_matches(plan, previous)
    cells = plan.cells()
    results = _finished_cells(plan, cells)
    check_finished_cells(plan, results)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_json, {**previous, "plan": plan.to_dict()})
    started_at, started = _now(), time.monotonic()
    pending = [cell for cell in cells if cell not in results]
    runner = _cell_runner(plan, executor, len(pending))
    with open(plan.out_dir / RUN_LOG, "a") as log:
        progress = _Progress(len(cells), log, runner.concurrency, stream)
        progress.line(f"START matrix of {len(cells)} cells: {' '.join(command or sys.argv)}")
        for cell, result in results.items():
            progress.line(f"SKIP {cell_label(*cell)}: already finished")
            progress.finish(cell_label(*cell), result["status"], None, 0)
        runs = _run_cells(plan, pending, train, progress, runner)
        try:
            for index, ((task, model, seed), result) in enumerate(runs):
                label = cell_label(task, model, seed)
                reason = f": {result['reason']}" if result["status"] == "failed" else ""
                seconds = result["cell_seconds"]
                progress.line(f"DONE {label}: {result['status']} in {seconds:.1f} s{reason}")
                progress.finish(label, result["status"], seconds, len(pending) - index - 1)
                results[(task, model, seed)] = result
        except KeyboardInterrupt as error:
            runs.close()  # stops the worker processes (if the signal came between cells)
            done = sum(1 for cell in pending if cell in results)
            progress.line(
                f"INTERRUPTED matrix ({signal_name(error)}): {done} of {len(pending)} cells "
                f"computed; run the same command again to continue"
            )
            invocation = {
                "command": list(command or sys.argv),
                "started_at": started_at,
                "finished_at": _now(),
                "wall_seconds": time.monotonic() - started,
                "cells_computed": done,
                "cells_skipped": len(cells) - len(pending),
                "workers": plan.workers,
                "executor": runner.name,
                "git_commit": git_commit(),
                "interrupted": signal_name(error),
            }
            write_json(
                run_json,
                {
                    **previous,
                    "plan": plan.to_dict(),
                    "invocations": [*previous.get("invocations", []), invocation],
                },
            )
            raise
        computed, skipped = len(pending), len(cells) - len(pending)
        progress.line(f"END matrix: {computed} computed, {skipped} already finished")
    machine = machine_info()
    invocation = {
        "command": list(command or sys.argv),
        "started_at": started_at,
        "finished_at": _now(),
        "wall_seconds": time.monotonic() - started,
        "cells_computed": computed,
        "cells_skipped": skipped,
        "workers": plan.workers,
        "executor": runner.name,
        "git_commit": machine["git_commit"],
    }
    records = [
        {
            "task": task,
            "model": model,
            "seed": seed,
            "status": results[(task, model, seed)]["status"],
            "reason": results[(task, model, seed)].get("reason"),
            "cell_seconds": results[(task, model, seed)].get("cell_seconds"),
        }
        for task, model, seed in cells
    ]
    summary = {
        "plan": plan.to_dict(),
        "machine": machine,
        "invocations": [*previous.get("invocations", []), invocation],
        "cells": records,
    }
    write_json(run_json, summary)
    return summary


def _finished_cells(
    plan: MatrixPlan, cells: Sequence[tuple[str, str, int]]
) -> dict[tuple[str, str, int], dict[str, Any]]:
    """The results of the cells that are not trained again: finished ones, failed ones
    only without ``plan.retry_failed``."""
    finished = {}
    for cell in cells:
        result = read_result(cell_dir(plan.out_dir, *cell))
        if result is not None and not (plan.retry_failed and result["status"] == "failed"):
            finished[cell] = result
    return finished


def _read_run_json(path: Path) -> dict[str, Any]:
    """A run folder's ``run.json`` ({} when there is none).

    Raises:
        UsageError: it exists but is not a JSON object (it is written atomically, so this is
            damage from outside): named, with what to do.
    """
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        record = error
    if not isinstance(record, dict):
        raise UsageError(
            f"{path}: damaged ({record if isinstance(record, Exception) else 'not an object'}); "
            f"move it away to continue this folder (its cells are kept) or use a new --out"
        )
    return record


class _CellRunner(NamedTuple):
    """Where a matrix's cells run: the executor (a context manager entered when the first cell
    is submitted), how many cells may be in flight, how many run at once (for the time-left
    estimate) and the name ``run.json`` records."""

    executor: AbstractContextManager[Executor]
    window: int
    concurrency: int
    name: str


def _cell_runner(plan: MatrixPlan, executor: Any | None, cells: int) -> _CellRunner:
    """The given executor (a dask ``Client`` is wrapped: :func:`as_executor`), else this
    process (one worker or one cell), else a pool of ``plan.workers`` processes."""
    if executor is not None:
        executor = as_executor(executor)
        window = len(plan.devices) or max(1, cells)
        threads = executor.threads() if isinstance(executor, DaskExecutor) else window
        name = str(executor) if isinstance(executor, DaskExecutor) else type(executor).__name__
        return _CellRunner(nullcontext(executor), window, min(window, threads), name)
    if plan.workers == 1 or cells <= 1:
        return _CellRunner(nullcontext(SerialExecutor()), 1, 1, "this process")
    pool = process_pool(plan.workers, initializer=worker_ignores_sigint)
    return _CellRunner(pool, plan.workers, plan.workers, f"{plan.workers} processes")


def _run_cells(
    plan: MatrixPlan,
    cells: Sequence[tuple[str, str, int]],
    train: TrainFunction | None,
    progress: _Progress,
    runner: _CellRunner,
) -> Iterator[tuple[tuple[str, str, int], dict[str, Any]]]:
    """Train ``cells`` on ``runner`` and yield each with its result as it finishes.

    Each cell gets its device when it is submitted (:class:`DeviceSlots`) and frees it when
    it finishes. A cell whose future fails (the worker died or lost its connection: the
    cell's own errors are recorded by :func:`run_cell`) is recorded by
    :func:`record_lost_cell` and the others go on.
    """
    slots = DeviceSlots(plan.devices or (plan.device,))
    placed: dict[tuple[str, str, int], tuple[str, float]] = {}

    def arguments(cell: tuple[str, str, int]) -> tuple[Any, ...]:
        device = slots.acquire()
        placed[cell] = (device, time.monotonic())
        action = "training" if runner.window == 1 else "submitted"
        progress.line(f"CELL {cell_label(*cell)}: {action} on {device}")
        return (plan, *cell, train, device)

    with runner.executor as executor:
        for cell, future in completed(executor, run_cell, cells, runner.window, arguments):
            device, submitted = placed.pop(cell)
            slots.release(device)
            try:
                result = future.result()
            except Exception as error:  # the worker failed, not the cell's training
                result = record_lost_cell(plan, *cell, error, time.monotonic() - submitted)
            yield cell, result
