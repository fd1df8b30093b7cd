"""The benchmark matrix: every model on every task, for several seeds, through the one trainer.

One *cell* is (task, model, seed) and lives in ``<out>/<task>/<model>/seed<k>/``: the
trainer's outputs (``best.pt``, ``metrics.json``, predictions) plus ``result.json``, written
last, holding the trainer's result and the cell's status:

* ``"ok"``: trained and evaluated, every headline metric finite;
* ``"failed"``: the trainer raised (the reason and the traceback, in ``error.log``, are kept),
  reported failure, or returned non-finite metrics (diverged).

The matrix is resumable: a cell whose ``result.json`` has status ``ok`` or ``failed`` is never
recomputed, so an interrupted run is continued by running the same command again (with
``retry_failed``, failed cells are trained again, e.g. after fixing their cause). A failing
cell never stops the matrix. Progress (cells done, estimated time left) goes to stderr and,
with every cell start / skip / end, to ``<out>/run.log``; ``<out>/run.json`` records the
command, the machine and the timings of every invocation.

The default matrix (:data:`DEFAULT_MODELS` x :data:`DEFAULT_TASKS`, one seed, preset
:data:`DEFAULT_PRESET` capped at :data:`DEFAULT_CELL_MINUTES` per cell) is sized to finish,
report included, in about 30 minutes on 2 CPU cores with the shipped data.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import torch

from benchmark.jsonio import write_json
from benchmark.tasks import TASK_NAMES

DEFAULT_TASKS: tuple[str, ...] = TASK_NAMES
DEFAULT_MODELS: tuple[str, ...] = ("deepset_moe", "schnet", "painn")
"""DeepSet-MoE and the two fastest baselines on CPU."""
DEFAULT_PRESET = "quick"
DEFAULT_CELL_MINUTES = 1.5
"""Per-cell wall-clock budget (training + evaluation) of the default matrix: 12 cells x 1.5
min = 18 min, leaving about 10 of the 30 minutes for the report (SOAP distances; MD stability,
2 molecules x 1000 steps x 12 cells at ~15 ms per step on one thread, ~6 min)."""
DEFAULT_SEEDS = 1

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
        data_dir: dataset directory (``benchmark.dataset_dir`` layout).
        tasks, models: the matrix axes.
        seeds: number of seeds; cell k uses seed k (0-based).
        preset: trainer preset name.
        cell_minutes: wall-clock cap per cell, minutes (``None``: the preset's own).
        preset_overrides: other preset fields to override (e.g. ``{"lr": 10.0}``).
        model_configs: per-model hyperparameter overrides ``{model: {name: value}}``.
        device: ``"cpu"`` or ``"cuda"``.
        retry_failed: train cells that finished ``failed`` again (``ok`` cells stay).
    """

    out_dir: Path
    data_dir: Path
    tasks: tuple[str, ...] = DEFAULT_TASKS
    models: tuple[str, ...] = DEFAULT_MODELS
    seeds: int = DEFAULT_SEEDS
    preset: str = DEFAULT_PRESET
    cell_minutes: float | None = DEFAULT_CELL_MINUTES
    preset_overrides: dict[str, Any] = field(default_factory=dict)
    model_configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    device: str = "cpu"
    retry_failed: bool = False

    def __post_init__(self) -> None:
        self.out_dir, self.data_dir = Path(self.out_dir), Path(self.data_dir)
        unknown = [t for t in self.tasks if t not in TASK_NAMES]
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; choose from {list(TASK_NAMES)}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1 (got {self.seeds})")
        if not self.tasks or not self.models:
            raise ValueError("the matrix needs at least one task and one model")

    def cells(self) -> list[tuple[str, str, int]]:
        """(task, model, seed) in run order: task-major, then model, then seed."""
        return [(t, m, s) for t in self.tasks for m in self.models for s in range(self.seeds)]

    def to_dict(self) -> dict[str, Any]:
        plan = asdict(self)
        plan.update(out_dir=str(self.out_dir), data_dir=str(self.data_dir))
        return plan


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
    from benchmark.experiment import train

    return train


def run_cell(
    plan: MatrixPlan, task: str, model: str, seed: int, train: TrainFunction | None = None
) -> dict[str, Any]:
    """Train and evaluate one cell and write its ``result.json`` (never raises for the cell).

    Returns:
        The result dict written: the trainer's result plus ``task``, ``model``, ``seed``,
        ``status``, ``reason`` (failed cells) and ``cell_seconds``.
    """
    cell = cell_dir(plan.out_dir, task, model, seed)
    cell.mkdir(parents=True, exist_ok=True)
    train = train or _default_train()
    started = time.monotonic()
    try:
        result = dict(
            train(
                model,
                task,
                plan.preset,
                plan.data_dir,
                cell,
                seed,
                max_minutes=plan.cell_minutes,
                device=plan.device,
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
        (cell / ERROR_FILE).write_text(traceback.format_exc())
        result = {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
    result.update(task=task, model=model, seed=seed, cell_seconds=time.monotonic() - started)
    result.setdefault("reason", None)
    write_json(cell / RESULT_FILE, result)
    return result


def machine_info() -> dict[str, Any]:
    """Platform, Python, CPU count, torch version, accelerator and git commit of this run."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": commit,
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _Progress:
    """Cells done and estimated time left, to stderr and the run log."""

    def __init__(self, total: int, log: TextIO, budget_s: float | None, stream: TextIO) -> None:
        self.total, self.log, self.budget_s, self.stream = total, log, budget_s, stream
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
            else self.budget_s
        )
        eta = "unknown" if per_cell is None else f"{per_cell * remaining / 60:.1f} min"
        timing = "skipped" if seconds is None else f"{seconds:.1f} s"
        message = f"[{self.done}/{self.total}] {label}: {status} ({timing}); time left ~{eta}"
        print(message, file=self.stream, flush=True)


def run_matrix(
    plan: MatrixPlan,
    command: Sequence[str] | None = None,
    train: TrainFunction | None = None,
    stream: TextIO = sys.stderr,
) -> dict[str, Any]:
    """Run every unfinished cell of ``plan`` and update ``run.json``.

    Args:
        plan: the matrix.
        command: the command line to record (default ``sys.argv``).
        train: the trainer entry point (default ``benchmark.experiment.train``).
        stream: where progress lines go.

    Returns:
        The ``run.json`` content: ``plan``, ``machine``, ``invocations`` (one per call:
        command, start / end, wall time, cells computed and skipped) and ``cells`` (status,
        reason and seconds of every cell of the plan).
    """
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    run_json = plan.out_dir / RUN_JSON
    previous = json.loads(run_json.read_text()) if run_json.exists() else {}
    started_at, started = _now(), time.monotonic()
    cells = plan.cells()
    computed = skipped = 0
    records = []
    budget_s = None if plan.cell_minutes is None else 60.0 * plan.cell_minutes
    with open(plan.out_dir / RUN_LOG, "a") as log:
        progress = _Progress(len(cells), log, budget_s, stream)
        progress.line(f"START matrix of {len(cells)} cells: {' '.join(command or sys.argv)}")
        for index, (task, model, seed) in enumerate(cells):
            label = f"{task}/{model}/seed{seed}"
            remaining = len(cells) - index - 1
            result = read_result(cell_dir(plan.out_dir, task, model, seed))
            if result is not None and not (plan.retry_failed and result["status"] == "failed"):
                skipped += 1
                progress.line(f"SKIP {label}: already finished ({result['status']})")
                progress.finish(label, result["status"], None, remaining)
            else:
                progress.line(f"CELL {label}: training")
                result = run_cell(plan, task, model, seed, train)
                computed += 1
                reason = f": {result['reason']}" if result["status"] == "failed" else ""
                progress.line(
                    f"DONE {label}: {result['status']} in {result['cell_seconds']:.1f} s{reason}"
                )
                progress.finish(label, result["status"], result["cell_seconds"], remaining)
            records.append(
                {
                    "task": task,
                    "model": model,
                    "seed": seed,
                    "status": result["status"],
                    "reason": result.get("reason"),
                    "cell_seconds": result.get("cell_seconds"),
                }
            )
        progress.line(f"END matrix: {computed} computed, {skipped} already finished")
    invocation = {
        "command": list(command or sys.argv),
        "started_at": started_at,
        "finished_at": _now(),
        "wall_seconds": time.monotonic() - started,
        "cells_computed": computed,
        "cells_skipped": skipped,
    }
    summary = {
        "plan": plan.to_dict(),
        "machine": machine_info(),
        "invocations": [*previous.get("invocations", []), invocation],
        "cells": records,
    }
    write_json(run_json, summary)
    return summary
