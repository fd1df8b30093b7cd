"""Reading a matrix run's results: every cell's ``result.json``, aggregated over seeds.

A run directory written by :mod:`benchmark.matrix` holds ``<run>/<task>/<model>/seed<k>/`` with
``result.json`` and ``predictions_<split>.npz``. :func:`collect_results` groups the results by
task and model, :func:`summarise_model` reduces the seeds of one (task, model) to mean ±
sample standard deviation (:func:`aggregate`) over the seeds that finished ``ok``, and
:func:`load_predictions` reads a cell's test predictions (energies eV, forces eV/Å).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.dataset.tasks import TASK_NAMES
from benchmark.evaluation.metrics import METRIC_NAMES
from benchmark.evaluation.predictions import Predictions
from benchmark.evaluation.probe import PROBE_FILE
from benchmark.matrix import RESULT_FILE, RUN_JSON, TEST_SPLITS
from deepset_moe.fragments import FRAGMENT_NAMES

SPLIT_SHORT = {"id_test": "id", "ood_test": "ood"}
"""Short split names of the report (``report.json`` keys)."""


def collect_results(run_dir: str | Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every cell's ``result.json`` as ``{task: {model: [results sorted by seed]}}``.

    Each result gains ``cell_dir`` (its directory). Tasks follow the GMD-26 order, models the
    order of the run plan when known.
    """
    run_dir = Path(run_dir)
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for path in sorted(run_dir.glob(f"*/*/seed*/{RESULT_FILE}")):
        result = json.loads(path.read_text())
        result["cell_dir"] = str(path.parent)
        probe = path.parent / PROBE_FILE
        if probe.exists():
            result["probe"] = json.loads(probe.read_text())
        grouped.setdefault(result["task"], {}).setdefault(result["model"], []).append(result)
    plan = _run_plan(run_dir)
    model_order = list(plan.get("models", []))
    ordered = {}
    for task in sorted(grouped, key=lambda t: TASK_NAMES.index(t) if t in TASK_NAMES else 99):
        models = sorted(
            grouped[task],
            key=lambda m: (model_order.index(m) if m in model_order else len(model_order), m),
        )
        ordered[task] = {m: sorted(grouped[task][m], key=lambda r: r["seed"]) for m in models}
    return ordered


def _run_plan(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_JSON
    return json.loads(path.read_text()).get("plan", {}) if path.exists() else {}


def aggregate(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof 1; ``None`` for one value) of finite values."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return {"mean": None, "std": None, "n": 0, "values": []}
    return {
        "mean": float(np.mean(finite)),
        "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
        "n": len(finite),
        "values": finite,
    }


def summarise_model(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """GMD-26 metrics, per-fragment force MAE and cost of one (task, model), over seeds."""
    ok = [r for r in results if r["status"] == "ok"]
    metrics = {
        SPLIT_SHORT.get(split, split): {
            name: aggregate([r["metrics"][split].get(name) for r in ok]) for name in METRIC_NAMES
        }
        for split in (*TEST_SPLITS, "gap")
    }
    per_fragment = {
        SPLIT_SHORT[split]: {
            name: aggregate([r["per_fragment_force_mae"][split].get(name) for r in ok])["mean"]
            for name in FRAGMENT_NAMES
        }
        for split in TEST_SPLITS
    }
    return {
        "seeds": [r["seed"] for r in results],
        "seeds_ok": [r["seed"] for r in ok],
        "failed": [
            {"seed": r["seed"], "reason": r.get("reason")} for r in results if r["status"] != "ok"
        ],
        "metrics": {"id": metrics["id"], "ood": metrics["ood"], "ratio": metrics["gap"]},
        "per_fragment_force_mae": per_fragment,
        "params": aggregate([r.get("params") for r in ok])["mean"],
        "throughput_frames_per_second": aggregate(
            [r.get("throughput_frames_per_second") for r in ok]
        ),
        "wall_seconds": aggregate([r.get("wall_seconds") for r in ok]),
        "epochs": aggregate([r.get("training", {}).get("epochs") for r in ok]),
        "probe": summarise_probe(ok),
    }


def summarise_probe(ok: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Probe metrics and probe/ID ratios per family (``all`` included) over the seeds scored
    on the probe (:mod:`benchmark.evaluation.probe`), or ``None`` when none was."""
    scored = [r["probe"] for r in ok if "probe" in r]
    if not scored:
        return None
    families = list(dict.fromkeys(f for probe in scored for f in probe["metrics"]))
    return {
        "seeds": [r["seed"] for r in ok if "probe" in r],
        "molecules": {f: len(scored[0]["molecules"].get(f, ())) for f in families if f != "all"},
        **{
            key: {
                family: {
                    name: aggregate([p.get(key, {}).get(family, {}).get(name) for p in scored])
                    for name in METRIC_NAMES
                }
                for family in families
            }
            for key in ("metrics", "ratio_to_id")
        },
    }


def e0_sums(predictions: Predictions, e0: Mapping[str, float]) -> np.ndarray:
    """[B] sum over each frame's atoms of the cell's fitted E0(z_i), eV."""
    table = np.zeros(int(predictions.z.max()) + 1)
    for z, energy in e0.items():
        if int(z) < table.size:
            table[int(z)] = energy
    frames = predictions.num_frames
    frame_of_atom = np.repeat(np.arange(frames), predictions.n_atoms)
    return np.bincount(frame_of_atom, weights=table[predictions.z], minlength=frames)


def load_predictions(cell: str | Path) -> dict[str, Predictions]:
    """``{"id": ..., "ood": ...}`` predictions of a cell."""
    return {
        SPLIT_SHORT[split]: Predictions.load(Path(cell) / f"predictions_{split}.npz")
        for split in TEST_SPLITS
    }
