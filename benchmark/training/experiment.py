"""One cell of the benchmark: train a model on a task, evaluate ID and OOD, write the results.

:func:`train` is what ``gmd26 train`` and the matrix runner call. It loads the task's splits
(``train``, ``val``, ``id_test``, ``ood_test``) from a data directory, builds the model,
trains it with :class:`benchmark.training.trainer.Trainer`, evaluates the best (EMA) weights on
``id_test`` and ``ood_test``, and writes into ``out_dir``:

=============================  ===============================================================
file                           content
=============================  ===============================================================
``best.pt``, ``last.pt``       checkpoints (:mod:`deepset_moe.checkpoint`): ``best.pt``
                               inference-only after training, ``last.pt`` to resume
``metrics.json``               the result dict returned by :func:`train`
``predictions_<split>.npz``    ``benchmark.evaluation.predictions.Predictions``, id/ood test
``curve.json``                 the ID-OOD curve: step, ID (validation subset) and OOD (fixed
                               subset) force MAE and energy MAE per atom after every round
``probe.json``                 the best weights scored on the compositional probe
                               (:mod:`benchmark.evaluation.probe`; when the data have one)
``train.log``, ``tensorboard``  training log and TensorBoard events
=============================  ===============================================================

The budget is the preset's ``max_steps``; ``preset.max_minutes`` (or ``max_minutes``) is a
safety cap on training, reported in the result (``training.time_cap_hit``) when hit. The OOD
curve subset is the same for every model and seed of a task (:data:`CURVE_SUBSET_SEED`).

The output folder is checked before anything is written (:func:`check_run_folder`): a folder
holding a run is never overwritten silently (``resume`` continues it, ``overwrite`` replaces
it), and ``resume`` refuses a ``last.pt`` from another run (task, data, preset, seed, model).
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from baselines.registry import build_model, model_config
from benchmark.dataset.layout import DEFAULT_DATA_DIR, data_identity, load_split
from benchmark.dataset.splits import SPLITS, interleaved_id_split
from benchmark.dataset.tasks import TASK_NAMES
from benchmark.errors import ResumeMismatchError, RunFolderError
from benchmark.evaluation.metrics import generalisation_gap
from benchmark.evaluation.predictions import Predictions
from benchmark.evaluation.probe import PROBE_FILE, score_cell
from benchmark.jsonio import json_safe, write_json
from benchmark.training.distributed import DistributedContext, init_from_environment
from benchmark.training.loaders import seeded_subset
from benchmark.training.presets import TrainingPreset, get_preset
from benchmark.training.trainer import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    LOG_FILE,
    TENSORBOARD_DIR,
    Callback,
    Trainer,
    log_package_to,
    resume_mismatches,
)
from deepset_moe.checkpoint import CheckpointError, read_checkpoint, strip_training_state

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CURVE_FILE = "curve.json"
CURVE_SUBSET_SEED = 0
"""Seed of the OOD subset of the ID-OOD curves: one subset for every model and seed."""
TEST_SPLITS = ("id_test", "ood_test")
DEFAULT_RUNS_DIR = Path("runs")


def default_out_dir(model_name: str, task: str, preset: str, seed: int) -> Path:
    """``runs/<task>/<model>/<preset>-seed<seed>``."""
    return DEFAULT_RUNS_DIR / task / model_name / f"{preset}-seed{seed}"


def predictions_path(out_dir: str | Path, split: str) -> Path:
    return Path(out_dir) / f"predictions_{split}.npz"


def run_outputs(out_dir: str | Path) -> list[Path]:
    """The files and folders a run writes in ``out_dir`` that exist now (what ``overwrite``
    deletes; nothing else in the folder is touched)."""
    out_dir = Path(out_dir)
    names = (
        METRICS_FILE, CURVE_FILE, PROBE_FILE, BEST_CHECKPOINT, LAST_CHECKPOINT, LOG_FILE,
        TENSORBOARD_DIR,
    )
    paths = [out_dir / name for name in names]
    paths += [predictions_path(out_dir, split) for split in TEST_SPLITS]
    return [path for path in paths if path.exists()]


def check_run_folder(
    out_dir: str | Path,
    *,
    resume: bool,
    overwrite: bool,
    model_name: str,
    model_config: Mapping[str, Any],
    seed: int,
    preset: TrainingPreset,
    run_info: Mapping[str, Any],
) -> None:
    """Refuse to train into ``out_dir`` when that would lose or misreport earlier work.

    * without ``resume`` or ``overwrite``, a folder holding a run is refused: a finished one,
      an unfinished one (``last.pt``), a failed one with checkpoints (a run that failed
      before writing any checkpoint holds nothing to lose and is simply run again);
    * with ``resume``, ``last.pt`` must come from the same run (:func:`resume_mismatches`),
      and a finished run without ``last.pt`` cannot be continued.

    Raises:
        RunFolderError: the folder holds a run that would be overwritten.
        ResumeMismatchError: ``last.pt`` was written by another run.
        CheckpointError: ``last.pt`` cannot be read.
    """
    out_dir = Path(out_dir)
    if overwrite or not out_dir.is_dir():
        return
    last = out_dir / LAST_CHECKPOINT
    if resume and last.exists():
        payload = read_checkpoint(last)
        differences = resume_mismatches(
            payload,
            model_name=model_name,
            model_config=model_config,
            seed=seed,
            preset=preset,
            run_info=run_info,
        )
        if differences:
            raise ResumeMismatchError(
                f"cannot resume {last}: it was written by another run "
                f"({'; '.join(differences)}); resume with that run's settings, replace it "
                f"with --overwrite, or choose another --out"
            )
        return
    state = _run_state(out_dir)
    if state is None:
        return
    if resume:
        if state.startswith("a finished"):
            raise RunFolderError(
                f"{out_dir} holds {state} but no {LAST_CHECKPOINT} to resume from; replace it "
                f"with --overwrite or choose another --out"
            )
        return
    raise RunFolderError(
        f"{out_dir} already holds {state}; continue it with --resume, replace it with "
        f"--overwrite, or choose another --out"
    )


def _run_state(out_dir: Path) -> str | None:
    """How a folder's run looks (for messages), or None when it holds none."""
    metrics = out_dir / METRICS_FILE
    if metrics.exists():
        try:
            status = json.loads(metrics.read_text()).get("status")
        except (OSError, ValueError, AttributeError):
            status = None
        if status == "ok":
            return f"a finished run ({METRICS_FILE} status ok)"
        if any((out_dir / name).exists() for name in (LAST_CHECKPOINT, BEST_CHECKPOINT)):
            return f"a failed run with checkpoints ({METRICS_FILE} status {status!r})"
        return None  # failed before any checkpoint: nothing to lose (e.g. bad data, now fixed)
    if (out_dir / LAST_CHECKPOINT).exists():
        try:
            epoch = read_checkpoint(out_dir / LAST_CHECKPOINT)["training"].get("epoch")
        except (CheckpointError, KeyError, AttributeError):
            epoch = "?"
        return f"an unfinished run ({LAST_CHECKPOINT} at round {epoch})"
    if (out_dir / BEST_CHECKPOINT).exists():
        return f"a trained model ({BEST_CHECKPOINT})"
    return None


def train(
    model_name: str,
    task: str,
    preset: str = "quick",
    data_dir: str | Path = DEFAULT_DATA_DIR,
    out_dir: str | Path | None = None,
    seed: int = 0,
    *,
    resume: bool = False,
    overwrite: bool = False,
    max_minutes: float | None = None,
    device: str = "cpu",
    model_settings: Mapping[str, Any] | None = None,
    preset_overrides: Mapping[str, Any] | None = None,
    callbacks: Sequence[Callback] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and evaluate one (model, task) cell; returns the JSON-able result dict.

    Args:
        model_name: ``"deepset_moe"`` or a baseline name.
        task: one of ``benchmark.dataset.tasks.TASK_NAMES``.
        preset: a training preset name (``benchmark.training.presets``).
        data_dir: directory built by ``gmd26 build``.
        out_dir: where results go (default :func:`default_out_dir`).
        seed: seed of model initialisation, data order and everything else random.
        resume: continue from ``out_dir/last.pt`` when it exists (it must come from the
            same run: :func:`check_run_folder`).
        overwrite: replace the outputs of a run already in ``out_dir`` (:func:`run_outputs`);
            without it (or ``resume``) such a folder is refused.
        max_minutes: overrides the preset's wall-clock safety cap.
        device: ``"cpu"`` or ``"cuda"``.
        model_settings: model hyperparameters (defaults of the model otherwise).
        preset_overrides: changed preset fields (e.g. ``{"max_steps": 100}``).
        callbacks: trainer callbacks; default: the routing TensorBoard callback for a model
            that declares ``has_routing``, none otherwise.
        progress: show progress bars.

    Returns:
        ``{"status": "ok" | "failed", "reason", "model", "task", "preset", "seed",
        "metrics": {"id_test": {...}, "ood_test": {...}, "gap": {...}},
        "per_fragment_force_mae": {...}, "throughput_frames_per_second", "wall_seconds",
        "params", "training": {...}, ...}``; also written to ``out_dir/metrics.json``.

    Raises:
        RunFolderError, ResumeMismatchError: the output folder is refused
            (:func:`check_run_folder`); nothing is written. Every later error is returned as
            a failed result (a failed cell must not stop a matrix).
    """
    started = time.monotonic()
    if task not in TASK_NAMES:
        raise ValueError(f"unknown task {task!r}; choose one of {list(TASK_NAMES)}")
    overrides = dict(preset_overrides or {})
    if max_minutes is not None:
        overrides["max_minutes"] = max_minutes
    training_preset = get_preset(preset, **overrides)
    out_dir = (
        Path(out_dir) if out_dir is not None else default_out_dir(model_name, task, preset, seed)
    )
    run_info = {"task": task, "preset_name": training_preset.name, "data_dir": str(data_dir)}
    identity = data_identity(data_dir)
    if identity is not None:
        run_info["data_build"] = identity
    try:
        settings = model_config(model_name, **{**dict(model_settings or {}), "seed": seed})
    except (ValueError, TypeError, ImportError):
        settings = None  # reported as the cell's failure below
    if settings is not None:
        check_run_folder(
            out_dir,
            resume=resume,
            overwrite=overwrite,
            model_name=model_name,
            model_config=settings,
            seed=seed,
            preset=training_preset,
            run_info=run_info,
        )
    context = init_from_environment(device)
    if device.startswith("cuda") and context.is_distributed:
        device = f"cuda:{context.local_rank}"
    if overwrite and context.is_main:
        for path in run_outputs(out_dir):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    result: dict[str, Any] = {
        "status": "failed",
        "reason": "",
        "model": model_name,
        "task": task,
        "preset": training_preset.name,
        "seed": seed,
        "device": device,
        "world_size": context.world_size,
        "data_dir": str(data_dir),
        "out_dir": str(out_dir),
    }
    log_handler = _open_log(out_dir) if context.is_main else None
    try:
        result.update(
            _train_and_evaluate(
                model_name,
                task,
                training_preset,
                Path(data_dir),
                out_dir,
                seed,
                resume=resume,
                device=device,
                model_settings=dict(model_settings or {}),
                callbacks=callbacks,
                progress=progress,
                context=context,
                started=started,
                run_info=run_info,
            )
        )
        result["status"] = "ok"
    except Exception as error:  # a failed cell must not stop a benchmark matrix
        result["reason"] = f"{type(error).__name__}: {error}"
        logger.error("training %s on %s failed:\n%s", model_name, task, traceback.format_exc())
    finally:
        if log_handler is not None:
            logging.getLogger("benchmark").removeHandler(log_handler)
            log_handler.close()
    result["wall_seconds"] = time.monotonic() - started
    if context.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / METRICS_FILE).write_text(json.dumps(json_safe(result), indent=2) + "\n")
    return json_safe(result)


def _open_log(out_dir: Path) -> logging.Handler:
    """Log the ``benchmark`` package to ``out_dir/train.log`` for the whole cell (data loading
    and a failure's traceback included; the trainer reuses this handler), not to stderr."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return log_package_to(out_dir / LOG_FILE)


def _train_and_evaluate(
    model_name: str,
    task: str,
    preset: Any,
    data_dir: Path,
    out_dir: Path,
    seed: int,
    *,
    resume: bool,
    device: str,
    model_settings: dict[str, Any],
    callbacks: Sequence[Callback] | None,
    progress: bool,
    context: DistributedContext,
    started: float,
    run_info: Mapping[str, Any],
) -> dict[str, Any]:
    frames = {split: load_split(data_dir, task, split) for split in SPLITS}
    if preset.id_split == "interleaved":
        frames["train"], frames["id_test"] = interleaved_id_split(
            frames["train"], len(frames["id_test"]), seed
        )
    settings = model_config(model_name, **{**model_settings, "seed": seed})
    torch.manual_seed(seed)
    network = build_model(model_name, **settings)
    if callbacks is None:
        callbacks = _default_callbacks(network, preset.rounds)
    trainer = Trainer(
        network,
        model_name,
        settings,
        preset,
        frames["train"],
        frames["val"],
        out_dir,
        seed=seed,
        device=device,
        test_frames={split: frames[split] for split in TEST_SPLITS},
        curve_frames=seeded_subset(frames["ood_test"], preset.ood_curve_frames, CURVE_SUBSET_SEED)
        if preset.ood_curve_frames
        else None,
        callbacks=callbacks,
        context=context,
        deadline=None if preset.max_minutes is None else started + 60.0 * preset.max_minutes,
        progress=progress,
        run_info=run_info,
    )
    summary = trainer.fit(resume=resume and (out_dir / LAST_CHECKPOINT).exists())
    trainer.load_best()
    predictions: dict[str, Predictions] = {
        split: trainer.evaluate(frames[split]) for split in TEST_SPLITS
    }
    curve = id_ood_curve(summary.history)
    if context.is_main:
        for split, split_predictions in predictions.items():
            split_predictions.save(predictions_path(out_dir, split))
        write_json(out_dir / CURVE_FILE, {"points": curve})
        # best.pt becomes inference-only (weights, config, E0, run facts); last.pt keeps
        # everything needed to resume.
        strip_training_state(trainer.best_checkpoint, trainer.best_checkpoint)
    split_metrics = {split: p.metrics() for split, p in predictions.items()}
    identity = {"task": task, "model": model_name, "seed": seed, "metrics": split_metrics}
    score_cell(out_dir, data_dir, trainer.evaluate, result=identity, write=context.is_main)
    return {
        "metrics": {
            **split_metrics,
            "gap": generalisation_gap(split_metrics["id_test"], split_metrics["ood_test"]),
        },
        "per_fragment_force_mae": {
            split: p.per_fragment_force_mae() for split, p in predictions.items()
        },
        "curve": curve,
        "throughput_frames_per_second": summary.frames_per_second,
        "params": sum(p.numel() for p in network.parameters()),
        "has_routing": bool(getattr(network, "has_routing", False)),
        "frames": {split: len(split_frames) for split, split_frames in frames.items()},
        "checkpoint": str(trainer.best_checkpoint),
        "predictions": {split: str(predictions_path(out_dir, split)) for split in TEST_SPLITS},
        "e0": {str(z): e for z, e in trainer.model.e0.as_dict().items()},
        "preset_settings": preset.to_dict(),
        "model_config": trainer.model_config,
        "training": summary.to_dict(),
    }


def id_ood_curve(history: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
    """The ID-OOD curve points of a training history (rounds with an OOD evaluation)."""
    return [
        {
            "step": int(record["step"]),
            "id_force_mae": record["val_force_mae"],
            "ood_force_mae": record["ood_force_mae"],
            "id_energy_per_atom_mae": record["val_energy_per_atom_mae"],
            "ood_energy_per_atom_mae": record["ood_energy_per_atom_mae"],
        }
        for record in history
        if "ood_force_mae" in record
    ]


def _default_callbacks(network: torch.nn.Module, final_epoch: int) -> list[Callback]:
    """The routing TensorBoard callback for a model that routes atoms to experts."""
    if not getattr(network, "has_routing", False):
        return []
    try:
        routing_logging = importlib.import_module("deepset_moe.routing_logging")
    except ImportError as error:
        logger.warning("routing logging unavailable (%s); training without it", error)
        return []
    return [routing_logging.RoutingTensorBoardCallback(final_epoch=final_epoch)]
