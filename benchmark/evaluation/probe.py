"""Scoring a trained cell on the compositional probe (:mod:`benchmark.dataset.probe`).

A cell trained on task T is scored on the probe molecules eligible for T (every fragment seen
in T's training molecules, none of them listed by any task), per probe family and over all of
them, with the GMD-26 metrics (:mod:`benchmark.evaluation.metrics`), and the result is written
beside the cell's ``result.json`` as ``probe.json``::

    {"probe_version", "task", "checkpoint", "molecules": {family: [id, ...]},
     "frames": {family: int},
     "metrics": {"all" | family: {metric: value}},
     "ratio_to_id": {"all" | family: {metric: probe value / id_test value}}}

The cell's training never sees the probe: it is scored once, from the selected (best)
weights, after training (:func:`benchmark.training.experiment.train`), or later for cells
trained before the probe existed (``gmd26 probe RUN_DIR``, :func:`probe_run`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmark.dataset.frames import Frame
from benchmark.dataset.probe import probe_frames as eligible_probe_frames
from benchmark.dataset.probe import read_probe_manifest
from benchmark.evaluation.cell_analysis import checkpoint_path
from benchmark.evaluation.metrics import generalisation_gap
from benchmark.evaluation.predictions import Predictions, evaluate
from benchmark.jsonio import write_json
from deepset_moe.checkpoint import load_potential

PROBE_FILE = "probe.json"
RESULT_FILE = "result.json"
"""A matrix cell's result (:data:`benchmark.matrix.RESULT_FILE`; the matrix imports this
module, not the other way round)."""

Evaluator = Callable[[Sequence[Frame]], Predictions]
"""Predictions of one model on a list of frames (E0 included)."""


def probe_metrics(
    evaluator: Evaluator,
    frames: Mapping[str, Sequence[Frame]],
    id_metrics: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Metrics of one model on the probe frames, per family and over all families.

    Args:
        evaluator: predicts a list of frames (e.g. ``Trainer.evaluate``).
        frames: ``{family: frames}`` (:func:`benchmark.dataset.probe.probe_frames`).
        id_metrics: the cell's ``id_test`` metrics; adds ``ratio_to_id``.
    """
    predictions = {family: evaluator(family_frames) for family, family_frames in frames.items()}
    metrics = {"all": Predictions.concatenate(list(predictions.values())).metrics()}
    metrics.update({family: p.metrics() for family, p in predictions.items()})
    summary: dict[str, Any] = {
        "molecules": {
            family: sorted({frame.molecule_id for frame in family_frames})
            for family, family_frames in frames.items()
        },
        "frames": {family: len(family_frames) for family, family_frames in frames.items()},
        "metrics": metrics,
    }
    if id_metrics is not None:
        summary["ratio_to_id"] = {
            name: generalisation_gap(id_metrics, values) for name, values in metrics.items()
        }
    return summary


def score_cell(
    cell_dir: str | Path,
    data_dir: str | Path,
    evaluator: Evaluator | None = None,
    *,
    result: Mapping[str, Any] | None = None,
    frames: Mapping[str, Sequence[Frame]] | None = None,
    write: bool = True,
    batch_size: int = 64,
    device: str = "cpu",
) -> dict[str, Any] | None:
    """Score one finished cell on the probe and write its ``probe.json``.

    Args:
        cell_dir: the cell's folder (``result.json`` with status ok, ``best.pt``).
        data_dir: the dataset the cell was trained on.
        evaluator: the cell's trained model as a function of frames; default: ``best.pt``
            through :func:`deepset_moe.checkpoint.load_potential`.
        result: the cell's result (``task``, ``model``, ``seed``, ``metrics.id_test``);
            default: its ``result.json``.
        frames: the probe frames of the cell's task by family (default: read from
            ``data_dir``; :func:`probe_run` reads them once per task).
        write: write ``probe.json`` (under ``torchrun`` every process scores, the main one
            writes).

    Returns:
        The ``probe.json`` content, or ``None`` when the dataset has no probe or no probe
        molecule is eligible for the cell's task.
    """
    cell_dir = Path(cell_dir)
    if result is None:
        result = json.loads((cell_dir / RESULT_FILE).read_text())
    manifest = read_probe_manifest(data_dir)
    if manifest is None:
        return None
    if frames is None:
        frames = eligible_probe_frames(data_dir, result["task"], manifest)
    if not frames:
        return None
    if evaluator is None:
        potential = load_potential(checkpoint_path(cell_dir), device)

        def evaluator(batch_frames: Sequence[Frame]) -> Predictions:
            return evaluate(potential, batch_frames, batch_size, device)

    summary = {
        "probe_version": manifest["probe_version"],
        "task": result["task"],
        "model": result.get("model"),
        "seed": result.get("seed"),
        **probe_metrics(evaluator, frames, result.get("metrics", {}).get("id_test")),
    }
    if write:
        write_json(cell_dir / PROBE_FILE, summary)
    return summary


def probe_run(
    run_dir: str | Path,
    data_dir: str | Path,
    *,
    overwrite: bool = False,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> dict[str, int]:
    """Score every finished ``ok`` cell of a matrix run that has ``best.pt`` and (unless
    ``overwrite``) no ``probe.json`` yet.

    Returns:
        Counts: ``scored``, ``kept`` (already scored), ``no_checkpoint`` (trained elsewhere,
        weights not in this copy), ``not_ok``.
    """
    counts = {"scored": 0, "kept": 0, "no_checkpoint": 0, "not_ok": 0}
    frames_of_task: dict[str, dict[str, list[Frame]]] = {}
    for path in sorted(Path(run_dir).glob(f"*/*/seed*/{RESULT_FILE}")):
        cell = path.parent
        label = "/".join(cell.parts[-3:])
        result = json.loads(path.read_text())
        if result.get("status", "ok") != "ok":
            counts["not_ok"] += 1
        elif (cell / PROBE_FILE).exists() and not overwrite:
            counts["kept"] += 1
        elif not checkpoint_path(cell).exists():
            counts["no_checkpoint"] += 1
            log(f"{label}: no {checkpoint_path(cell).name}, not scored")
        else:
            task = result["task"]
            if task not in frames_of_task:
                frames_of_task[task] = eligible_probe_frames(data_dir, task)
            summary = score_cell(
                cell, data_dir, result=result, frames=frames_of_task[task], device=device
            )
            if summary is None:
                log(f"{label}: no probe molecule for this task in {data_dir}")
                continue
            counts["scored"] += 1
            ratio = summary.get("ratio_to_id", {}).get("all", {}).get("force_mae")
            force = summary["metrics"]["all"]["force_mae"]
            log(f"{label}: probe force MAE {force:.4f} eV/Å (x{ratio:.2f} of ID)")
    return counts
