"""One cell of the benchmark: train a model on a task, evaluate ID and OOD, write the results.

:func:`train` is what ``gmd26 train`` and the matrix runner call. It loads the task's splits
(``train``, ``val``, ``id_test``, ``ood_test``) from a data directory, builds the model,
trains it with :class:`benchmark.trainer.Trainer`, evaluates the best (EMA) weights on
``id_test`` and ``ood_test``, and writes into ``out_dir``:

=============================  ===============================================================
file                           content
=============================  ===============================================================
``best.pt``, ``last.pt``       checkpoints (:mod:`deepset_moe.checkpoint`)
``metrics.json``               the result dict returned by :func:`train`
``predictions_<split>.npz``    :class:`benchmark.evaluation.Predictions` of id_test / ood_test
``train.log``, ``tensorboard``  training log and TensorBoard events
=============================  ===============================================================

The wall-clock budget (``preset.max_minutes`` or ``max_minutes``) counts from the call and
covers data loading, training and the final evaluation.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmark.dataset_dir import DEFAULT_DATA_DIR, load_split
from benchmark.distributed import DistributedContext, init_from_environment
from benchmark.evaluation import Predictions
from benchmark.jsonio import json_safe
from benchmark.metrics import generalisation_gap
from benchmark.models import DEEPSET_MOE, build_model, model_config
from benchmark.presets import get_preset
from benchmark.tasks import SPLITS, TASK_NAMES
from benchmark.trainer import LAST_CHECKPOINT, Callback, Trainer

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
TEST_SPLITS = ("id_test", "ood_test")
DEFAULT_RUNS_DIR = Path("runs")


def default_out_dir(model_name: str, task: str, preset: str, seed: int) -> Path:
    """``runs/<task>/<model>/<preset>-seed<seed>``."""
    return DEFAULT_RUNS_DIR / task / model_name / f"{preset}-seed{seed}"


def predictions_path(out_dir: str | Path, split: str) -> Path:
    return Path(out_dir) / f"predictions_{split}.npz"


def train(
    model_name: str,
    task: str,
    preset: str = "quick",
    data_dir: str | Path = DEFAULT_DATA_DIR,
    out_dir: str | Path | None = None,
    seed: int = 0,
    *,
    resume: bool = False,
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
        task: one of ``benchmark.tasks.TASK_NAMES``.
        preset: ``smoke``, ``quick`` or ``full``.
        data_dir: directory built by ``gmd26 build``.
        out_dir: where results go (default :func:`default_out_dir`).
        seed: seed of model initialisation, data order and everything else random.
        resume: continue from ``out_dir/last.pt`` when it exists.
        max_minutes: overrides the preset's wall-clock budget.
        device: ``"cpu"`` or ``"cuda"``.
        model_settings: model hyperparameters (defaults of the model otherwise).
        preset_overrides: changed preset fields (e.g. ``{"max_epochs": 2}``).
        callbacks: trainer callbacks; default: the DeepSet-MoE routing TensorBoard callback
            for ``deepset_moe`` (when importable), none otherwise.
        progress: show progress bars.

    Returns:
        ``{"status": "ok" | "failed", "reason", "model", "task", "preset", "seed",
        "metrics": {"id_test": {...}, "ood_test": {...}, "gap": {...}},
        "per_fragment_force_mae": {...}, "throughput_frames_per_second", "wall_seconds",
        "params", "training": {...}, ...}``; also written to ``out_dir/metrics.json``.
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
    context = init_from_environment(device)
    if device.startswith("cuda") and context.is_distributed:
        device = f"cuda:{context.local_rank}"
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
            )
        )
        result["status"] = "ok"
    except Exception as error:  # a failed cell must not stop a benchmark matrix
        result["reason"] = f"{type(error).__name__}: {error}"
        logger.error("training %s on %s failed:\n%s", model_name, task, traceback.format_exc())
    result["wall_seconds"] = time.monotonic() - started
    if context.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / METRICS_FILE).write_text(json.dumps(json_safe(result), indent=2) + "\n")
    return json_safe(result)


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
) -> dict[str, Any]:
    frames = {split: load_split(data_dir, task, split) for split in SPLITS}
    if model_name == DEEPSET_MOE:
        model_settings.setdefault("seed", seed)
    torch.manual_seed(seed)
    network = build_model(model_name, model_settings)
    if callbacks is None:
        callbacks = _default_callbacks(model_name, preset.max_epochs)
    trainer = Trainer(
        network,
        model_name,
        model_config(model_name, network, model_settings),
        preset,
        frames["train"],
        frames["val"],
        out_dir,
        seed=seed,
        device=device,
        test_frames={split: frames[split] for split in TEST_SPLITS},
        callbacks=callbacks,
        context=context,
        deadline=None if preset.max_minutes is None else started + 60.0 * preset.max_minutes,
        reserve_eval_frames=sum(len(frames[split]) for split in TEST_SPLITS),
        progress=progress,
        run_info={"task": task, "preset_name": preset.name, "data_dir": str(data_dir)},
    )
    summary = trainer.fit(resume=resume and (out_dir / LAST_CHECKPOINT).exists())
    trainer.load_best()
    predictions: dict[str, Predictions] = {
        split: trainer.evaluate(frames[split]) for split in TEST_SPLITS
    }
    if context.is_main:
        for split, split_predictions in predictions.items():
            split_predictions.save(predictions_path(out_dir, split))
    split_metrics = {split: p.metrics() for split, p in predictions.items()}
    return {
        "metrics": {
            **split_metrics,
            "gap": generalisation_gap(split_metrics["id_test"], split_metrics["ood_test"]),
        },
        "per_fragment_force_mae": {
            split: p.per_fragment_force_mae() for split, p in predictions.items()
        },
        "throughput_frames_per_second": summary.frames_per_second,
        "params": sum(p.numel() for p in network.parameters()),
        "frames": {split: len(split_frames) for split, split_frames in frames.items()},
        "checkpoint": str(trainer.best_checkpoint),
        "predictions": {split: str(predictions_path(out_dir, split)) for split in TEST_SPLITS},
        "e0": {str(z): e for z, e in trainer.model.e0.as_dict().items()},
        "preset_settings": preset.to_dict(),
        "model_config": trainer.model_config,
        "training": summary.to_dict(),
    }


def _default_callbacks(model_name: str, final_epoch: int) -> list[Callback]:
    """The routing TensorBoard callback for DeepSet-MoE, when its module imports."""
    if model_name != DEEPSET_MOE:
        return []
    try:
        routing_logging = importlib.import_module("deepset_moe.routing_logging")
    except ImportError as error:
        logger.warning("routing logging unavailable (%s); training without it", error)
        return []
    return [routing_logging.RoutingTensorBoardCallback(final_epoch=final_epoch)]
