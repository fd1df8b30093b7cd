"""The GMD-26 report of a matrix run: ``report.md``, ``report.json`` and ``figures/*.png``.

Input is a run directory written by :mod:`benchmark.matrix` (``<run>/<task>/<model>/seed<k>/``
with ``result.json``, ``best.pt`` and ``predictions_<split>.npz``) and the dataset it was
trained on (for the distance from the training set and the MD starting frames). Per task:

* the GMD-26 table: every metric of :mod:`benchmark.metrics`, ID and OOD side by side with the
  OOD/ID ratio, mean ± sample standard deviation over the seeds that finished ``ok``;
* cost: parameters, training throughput, wall time;
* parity plots and force MAE per fragment label (ID vs OOD);
* force error vs SOAP distance from the training set (:mod:`benchmark.extrapolation`);
* MD stability of each model on a few OOD molecules (:mod:`benchmark.stability`);
* for DeepSet-MoE, routing metrics and attributions per fragment, ID vs OOD.

plus a headline table (force MAE ID / OOD / ratio per model x task). Plots and model-based
analyses use the first seed that finished ``ok`` of each (task, model); tables use every seed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmark import figures
from benchmark.evaluation import Predictions
from benchmark.extrapolation import binned_error, task_distances
from benchmark.fragments import FRAGMENT_NAMES
from benchmark.jsonio import json_safe, write_json
from benchmark.matrix import RESULT_FILE, RUN_JSON, TEST_SPLITS
from benchmark.metrics import METRIC_LABELS, METRIC_NAMES
from benchmark.model_analysis import model_attribution, model_routing, model_stability
from benchmark.stability import StabilitySettings
from benchmark.storage import Frame
from benchmark.tasks import RULES, TASK_NAMES

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
FIGURES_DIR = "figures"
SPLIT_SHORT = {"id_test": "id", "ood_test": "ood"}
EXTRAPOLATION_BINS = 12
MIN_ATOMS_PER_BIN = 10
DEEPSET_MOE = "deepset_moe"


@dataclass
class ReportOptions:
    """What the report computes beyond the tables.

    Attributes:
        data_dir: dataset of the run (default: the one recorded in ``run.json``).
        extrapolation: compute the SOAP distance analysis.
        stability: run the MD stability study.
        stability_settings: MD settings (steps, time step, temperature, ...).
        stability_molecules: OOD molecules simulated per (task, model).
        routing_frames: test frames per split for the DeepSet-MoE routing metrics.
        attribution_molecules: test molecules per split for the attributions.
        attribution_steps: Integrated-Gradients quadrature steps.
        seed: seed of every subsample of the report.
    """

    data_dir: Path | None = None
    extrapolation: bool = True
    stability: bool = True
    stability_settings: StabilitySettings = field(default_factory=StabilitySettings)
    stability_molecules: int = 2
    routing_frames: int = 128
    attribution_molecules: int = 16
    attribution_steps: int = 16
    seed: int = 0


# ---------------------------------------------------------------------- collecting results


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


# ---------------------------------------------------------------------- extrapolation


def per_atom_force_error(predictions: Predictions, frames: Sequence[Frame]) -> np.ndarray:
    """Per-atom force MAE (mean over components, eV/Å) in the atom order of ``frames``.

    Raises:
        ValueError: the predictions do not cover exactly these frames (by atomic numbers).
    """
    order = np.argsort(predictions.frame_index, kind="stable")
    if predictions.frame_index[order].tolist() != list(range(len(frames))):
        raise ValueError(f"predictions cover {predictions.num_frames} frames, data {len(frames)}")
    error = np.abs(predictions.forces - predictions.forces_ref).mean(axis=1)
    first = np.cumsum(predictions.n_atoms) - predictions.n_atoms
    atoms = np.concatenate([np.arange(first[i], first[i] + predictions.n_atoms[i]) for i in order])
    if not np.array_equal(predictions.z[atoms], np.concatenate([f.numbers for f in frames])):
        raise ValueError("predictions and data frames hold different atoms")
    return error[atoms]


def extrapolation_analysis(
    distances: Mapping[str, np.ndarray], errors: Mapping[str, list[np.ndarray]]
) -> dict[str, Any]:
    """Binned force error vs distance and the in-range / beyond split of OOD atoms.

    Args:
        distances: ``{"id": [atoms], "ood": [atoms]}`` SOAP distances.
        errors: ``{"id": [per-seed per-atom errors], "ood": [...]}``.

    Bins are the quantiles of the pooled ID + OOD distances (:data:`EXTRAPOLATION_BINS`).

    Returns:
        ``{"curves": {split: binned_error dict (mean over seeds)}, "id_p95_distance",
        "ood_fraction_beyond", "id_mae", "ood_mae_in_range", "ood_mae_beyond"}``; the
        in-range threshold is the 95th percentile of the ID test distances.
    """
    finite = np.concatenate([d[np.isfinite(d)] for d in distances.values()])
    # quantile edges of the pooled ID + OOD distances: every bin holds test atoms
    edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, EXTRAPOLATION_BINS + 1)))
    curves = {}
    for split, per_seed in errors.items():
        binned = [binned_error(distances[split], e, edges, MIN_ATOMS_PER_BIN) for e in per_seed]
        stacked = np.array([b["mean"] for b in binned], dtype=np.float64)
        counts = np.isfinite(stacked).sum(axis=0)
        means = np.where(counts > 0, np.nansum(stacked, axis=0) / np.maximum(counts, 1), np.nan)
        curves[split] = {**binned[0], "mean": means.tolist()}
    threshold = float(np.percentile(distances["id"][np.isfinite(distances["id"])], 95))
    beyond = distances["ood"] > threshold
    mean_error = {split: np.mean(per_seed, axis=0) for split, per_seed in errors.items()}
    return {
        "curves": curves,
        "id_p95_distance": threshold,
        "mean_distance": {s: float(np.mean(d[np.isfinite(d)])) for s, d in distances.items()},
        "ood_fraction_beyond": float(beyond.mean()),
        "id_mae": float(mean_error["id"].mean()),
        "ood_mae_in_range": float(mean_error["ood"][~beyond].mean()) if (~beyond).any() else None,
        "ood_mae_beyond": float(mean_error["ood"][beyond].mean()) if beyond.any() else None,
    }


# ---------------------------------------------------------------------- Markdown


def _number(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.3g}"


def _mean_std(stats: Mapping[str, Any]) -> str:
    if stats["mean"] is None:
        return "–"
    if stats["std"] is None:
        return _number(stats["mean"])
    return f"{_number(stats['mean'])} ± {_number(stats['std'])}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table (first column left-aligned, the others right-aligned)."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def gmd26_table(models: Mapping[str, dict[str, Any]]) -> str:
    """Per task: one row per (model, metric) with ID, OOD and OOD/ID, mean ± std over seeds."""
    rows = []
    for name, summary in models.items():
        n = len(summary["seeds_ok"])
        if n == 0:
            rows.append([f"{name} (no seed finished ok)", "–", "–", "–", "–"])
            continue
        for metric in METRIC_NAMES:
            m = summary["metrics"]
            rows.append(
                [
                    f"{name} ({n} seed{'s' if n != 1 else ''})"
                    if metric == METRIC_NAMES[0]
                    else "",
                    METRIC_LABELS[metric],
                    _mean_std(m["id"][metric]),
                    _mean_std(m["ood"][metric]),
                    _mean_std(m["ratio"][metric]),
                ]
            )
    return markdown_table(["model", "metric", "ID", "OOD", "OOD/ID"], rows)


def cost_table(models: Mapping[str, dict[str, Any]]) -> str:
    rows = [
        [
            name,
            f"{int(s['params']):,}" if s["params"] is not None else "–",
            _mean_std(s["throughput_frames_per_second"]),
            _mean_std(s["epochs"]),
            _mean_std(s["wall_seconds"]),
            f"{len(s['seeds_ok'])}/{len(s['seeds'])}",
        ]
        for name, s in models.items()
    ]
    header = ["model", "parameters", "train frames/s", "epochs", "wall time (s)", "seeds ok"]
    return markdown_table(header, rows)


def headline_table(tasks: Mapping[str, dict[str, Any]]) -> str:
    """Force MAE (eV/Å) as ``ID / OOD (ratio×)`` per model (rows) and task (columns)."""
    names = list(dict.fromkeys(m for task in tasks.values() for m in task["models"]))
    rows = []
    for name in names:
        row = [name]
        for task in tasks.values():
            summary = task["models"].get(name)
            if summary is None or not summary["seeds_ok"]:
                row.append("–" if summary is None else "failed")
                continue
            id_, ood, ratio = (
                _number(summary["metrics"][split]["force_mae"]["mean"])
                for split in ("id", "ood", "ratio")
            )
            row.append(f"{id_} / {ood} ({ratio}×)")
        rows.append(row)
    return markdown_table(["model", *tasks], rows)


def fragment_table(models: Mapping[str, dict[str, Any]]) -> str:
    rows = []
    for fragment in FRAGMENT_NAMES:
        row = [fragment]
        for summary in models.values():
            split = summary["per_fragment_force_mae"]
            row.append(f"{_number(split['id'][fragment])} / {_number(split['ood'][fragment])}")
        rows.append(row)
    return markdown_table(["fragment", *[f"{m} ID / OOD" for m in models]], rows)


def extrapolation_table(analyses: Mapping[str, dict[str, Any]]) -> str:
    rows = [
        [
            name,
            _number(a["id_mae"]),
            _number(a["ood_mae_in_range"]),
            _number(a["ood_mae_beyond"]),
            f"{100 * a['ood_fraction_beyond']:.0f} %",
        ]
        for name, a in analyses.items()
    ]
    header = ["model", "ID MAE", "OOD MAE, d ≤ d95(ID)", "OOD MAE, d > d95(ID)", "OOD atoms beyond"]
    return markdown_table(header, rows)


def stability_table(studies: Mapping[str, dict[str, Any]]) -> str:
    rows = []
    for name, study in studies.items():
        if "error" in study:
            rows.append([name, "–", "–", "–", study["error"]])
            continue
        reasons = "; ".join(
            f"{r['molecule_id']}: {r['reason']} at {r['time_to_failure_fs']:.0f} fs"
            for r in study["runs"]
            if not r["stable"]
        )
        rows.append(
            [
                name,
                str(len(study["runs"])),
                f"{study['fraction_stable']:.2f}",
                f"{study['mean_time_to_failure_fs']:.0f}",
                reasons or "none",
            ]
        )
    header = ["model", "runs", "fraction stable", "mean time to failure (fs)", "failures"]
    return markdown_table(header, rows)


def routing_table(summary: Mapping[str, Any]) -> str:
    rows = [
        [label, _number(summary["id"][key]), _number(summary["ood"][key])]
        for key, label in (
            ("load_balance_cv", "load balance (CV of utilisation)"),
            ("entropy_normalised", "routing entropy / ln K"),
            ("nmi_fragment_top1", "NMI(fragment, top-1 expert)"),
        )
    ]
    js = summary["js_divergence"]
    divergence = markdown_table(
        ["Jensen-Shannon divergence ID↔OOD (bits)", *js],
        [["expert distribution per fragment", *(_number(value) for value in js.values())]],
    )
    return markdown_table(["routing metric", "ID", "OOD"], rows) + "\n\n" + divergence


def attribution_table(summaries: Mapping[str, dict[str, Any]]) -> str:
    rows = []
    for fragment in FRAGMENT_NAMES:
        row = [fragment]
        for split in ("id", "ood"):
            entry = summaries[split]["by_fragment"][fragment]
            mean = entry["mean_eV_per_atom"]
            row += [str(entry["atoms"]), "–" if mean is None else f"{1000 * mean:.2f}"]
        rows.append(row)
    header = ["fragment", "ID atoms", "ID meV/atom", "OOD atoms", "OOD meV/atom"]
    return markdown_table(header, rows)


# ---------------------------------------------------------------------- building the report


class _TaskData:
    """Lazily loaded splits of one task (``None`` splits when no data directory is known)."""

    def __init__(self, data_dir: Path | None, task: str) -> None:
        self.data_dir, self.task = data_dir, task
        self._frames: dict[str, list[Frame]] = {}

    @property
    def available(self) -> bool:
        return self.data_dir is not None and self.data_dir.exists()

    def split(self, name: str) -> list[Frame]:
        if name not in self._frames:
            from benchmark.dataset_dir import load_split

            self._frames[name] = load_split(self.data_dir, self.task, name)
        return self._frames[name]


def _first_ok(results: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    return next((r for r in results if r["status"] == "ok"), None)


def _figure(figure, figures_dir: Path, name: str) -> str:
    figures.save_figure(figure, figures_dir / name)
    return f"{FIGURES_DIR}/{name}"


def _task_report(
    task: str,
    results: Mapping[str, list[dict[str, Any]]],
    data: _TaskData,
    run_dir: Path,
    options: ReportOptions,
    gaps: list[str],
) -> dict[str, Any]:
    figures_dir = run_dir / FIGURES_DIR
    models = {name: summarise_model(cells) for name, cells in results.items()}
    report: dict[str, Any] = {"rule": RULES.get(task, ""), "models": models, "figures": {}}
    first_ok = {name: _first_ok(cells) for name, cells in results.items()}
    first_ok = {name: r for name, r in first_ok.items() if r is not None}
    if not first_ok:
        gaps.append(f"{task}: no cell finished ok; no plots or model analyses")
        return report
    parity = {}
    for name, result in first_ok.items():
        parity[name] = {}
        for split, p in load_predictions(result["cell_dir"]).items():
            shift = e0_sums(p, result.get("e0", {}))  # same shift for both: errors unchanged
            parity[name][split] = {
                "forces": p.forces,
                "forces_ref": p.forces_ref,
                "energy": p.energy - shift,
                "energy_ref": p.energy_ref - shift,
            }
    report["figures"]["parity"] = _figure(
        figures.parity_figure(
            parity,
            f"{task}: parity (seed {min(r['seed'] for r in first_ok.values())})",
            options.seed,
        ),
        figures_dir,
        f"{task}_parity.png",
    )
    report["figures"]["fragments"] = _figure(
        figures.fragment_error_figure(
            {name: models[name]["per_fragment_force_mae"] for name in first_ok},
            FRAGMENT_NAMES,
            f"{task}: force MAE per fragment label",
        ),
        figures_dir,
        f"{task}_fragments.png",
    )
    if not data.available:
        gaps.append(f"{task}: data directory not found; no extrapolation or MD stability")
        return report
    if options.extrapolation:
        _extrapolation_section(task, results, data, run_dir, options, report)
    if options.stability:
        report["stability"] = {}
        for name, result in first_ok.items():
            try:
                report["stability"][name] = model_stability(
                    result["cell_dir"],
                    data.split("ood_test"),
                    options.stability_settings,
                    options.stability_molecules,
                    options.seed,
                )
            except ImportError as error:
                report["stability"][name] = {"error": f"no ASE calculator ({error})"}
                gaps.append(f"{task}/{name}: MD stability not run ({error})")
    if DEEPSET_MOE in first_ok:
        _deepset_moe_section(task, first_ok[DEEPSET_MOE], data, figures_dir, options, report, gaps)
    return report


def _extrapolation_section(
    task: str,
    results: Mapping[str, list[dict[str, Any]]],
    data: _TaskData,
    run_dir: Path,
    options: ReportOptions,
    report: dict[str, Any],
) -> None:
    frames = {"id": data.split("id_test"), "ood": data.split("ood_test")}
    distances = task_distances(
        run_dir / task / "soap_distances.npz", data.split("train"), frames, seed=options.seed
    )
    analyses = {}
    for name, cells in results.items():
        errors: dict[str, list[np.ndarray]] = {"id": [], "ood": []}
        for result in (r for r in cells if r["status"] == "ok"):
            for split, p in load_predictions(result["cell_dir"]).items():
                errors[split].append(per_atom_force_error(p, frames[split]))
        if errors["id"]:
            analyses[name] = extrapolation_analysis(distances, errors)
    report["extrapolation"] = analyses
    report["figures"]["extrapolation"] = _figure(
        figures.extrapolation_figure(
            {name: a["curves"] for name, a in analyses.items()},
            distances,
            f"{task}: how far can it extrapolate?",
        ),
        run_dir / FIGURES_DIR,
        f"{task}_extrapolation.png",
    )


def _deepset_moe_section(
    task: str,
    result: dict[str, Any],
    data: _TaskData,
    figures_dir: Path,
    options: ReportOptions,
    report: dict[str, Any],
    gaps: list[str],
) -> None:
    from matplotlib.figure import Figure

    from deepset_moe.attribution import attribution_figure
    from deepset_moe.routing_plots import draw_fragment_expert_heatmap

    id_frames, ood_frames = data.split("id_test"), data.split("ood_test")
    routing = model_routing(
        result["cell_dir"], id_frames, ood_frames, options.routing_frames, options.seed
    )
    if routing is None:
        gaps.append(f"{task}: DeepSet-MoE returned no routing; routing metrics missing")
    else:
        report["routing"] = routing
        figure = Figure(figsize=(11.0, 4.2), layout="constrained")
        for index, split in enumerate(("id", "ood")):
            matrix = np.array(routing[split]["fragment_expert_fraction"], dtype=np.float64)
            draw_fragment_expert_heatmap(
                figure.add_subplot(1, 2, index + 1),
                matrix,
                FRAGMENT_NAMES,
                f"{split.upper()}: expert share per fragment",
                "fraction of assignments",
            )
        figure.suptitle(f"{task}: DeepSet-MoE routing")
        report["figures"]["routing"] = _figure(figure, figures_dir, f"{task}_routing.png")
    attribution = model_attribution(
        result["cell_dir"],
        id_frames,
        ood_frames,
        options.attribution_molecules,
        options.attribution_steps,
        options.seed,
    )
    report["attribution"] = attribution
    figure = attribution_figure(attribution)
    report["figures"]["attribution"] = _figure(figure, figures_dir, f"{task}_attribution.png")


def build_report(run_dir: str | Path, options: ReportOptions | None = None) -> dict[str, Any]:
    """Write ``report.md``, ``report.json`` and ``figures/`` for a matrix run directory.

    Returns:
        The ``report.json`` content.

    Raises:
        FileNotFoundError: the directory holds no finished cell.
    """
    run_dir = Path(run_dir)
    options = options or ReportOptions()
    results = collect_results(run_dir)
    if not results:
        raise FileNotFoundError(f"no finished cells (*/*/seed*/{RESULT_FILE}) under {run_dir}")
    run_json = json.loads((run_dir / RUN_JSON).read_text()) if (run_dir / RUN_JSON).exists() else {}
    data_dir = options.data_dir or (
        Path(run_json["plan"]["data_dir"]) if "plan" in run_json else None
    )
    gaps: list[str] = []
    tasks = {
        task: _task_report(task, cells, _TaskData(data_dir, task), run_dir, options, gaps)
        for task, cells in results.items()
    }
    headline = {
        task: {
            name: {split: s["metrics"][split]["force_mae"]["mean"] for split in ("id", "ood")}
            for name, s in report["models"].items()
            if s["seeds_ok"]
        }
        for task, report in tasks.items()
    }
    headline_png = _figure(
        figures.headline_figure(headline, list(tasks)), run_dir / FIGURES_DIR, "headline.png"
    )
    report = {
        "run_dir": str(run_dir),
        "data_dir": None if data_dir is None else str(data_dir),
        "run": run_json,
        "options": {**asdict(options), "data_dir": None if data_dir is None else str(data_dir)},
        "headline": headline,
        "headline_figure": headline_png,
        "tasks": tasks,
        "gaps": gaps,
    }
    write_json(run_dir / REPORT_JSON, report)
    (run_dir / REPORT_MD).write_text(render_markdown(report))
    return json_safe(report)


def _run_header(report: Mapping[str, Any]) -> list[str]:
    run = report.get("run", {})
    plan, machine = run.get("plan", {}), run.get("machine", {})
    lines = [f"Run directory `{report['run_dir']}`, data `{report['data_dir']}`."]
    if plan:
        cell_budget = plan.get("cell_minutes")
        lines.append(
            f"Preset `{plan.get('preset')}`"
            + (f" capped at {cell_budget} min per cell" if cell_budget else "")
            + f", {plan.get('seeds')} seed(s), device `{plan.get('device')}`."
        )
    if machine:
        lines.append(
            f"Machine: {machine.get('platform')}, {machine.get('cpu_count')} CPUs, torch "
            f"{machine.get('torch')}, git commit `{machine.get('git_commit')}`."
        )
    invocations = run.get("invocations", [])
    if invocations:
        total = sum(i.get("wall_seconds") or 0.0 for i in invocations)
        lines.append(f"Matrix wall time {total / 60:.1f} min ({len(invocations)} invocation(s)).")
    return [" ".join(lines), ""]


def render_markdown(report: Mapping[str, Any]) -> str:
    """The Markdown text of ``report.md`` from the ``report.json`` content."""
    out = ["# GMD-26 benchmark report", "", *_run_header(report)]
    out += [
        "Every table: mean ± sample standard deviation over the seeds that finished ok (no ± for "
        "one seed). Forces in eV/Å, energies in eV. OOD/ID is the generalisation gap.",
        "",
        "## Headline: force MAE (eV/Å), ID / OOD (OOD/ID)",
        "",
        headline_table(report["tasks"]),
        "",
        f"![headline]({report['headline_figure']})",
        "",
    ]
    for task, section in report["tasks"].items():
        out += [f"## Task: {task}", "", f"*{section['rule']}*", ""]
        models = section["models"]
        failed = [
            f"- `{name}` seed {f['seed']}: {f['reason']}"
            for name, s in models.items()
            for f in s["failed"]
        ]
        if failed:
            out += ["Failed cells:", "", *failed, ""]
        out += [
            "### GMD-26 metrics",
            "",
            gmd26_table(models),
            "",
            "### Cost",
            "",
            cost_table(models),
            "",
        ]
        figs = section["figures"]
        if "parity" in figs:
            out += ["### Parity", "", f"![parity]({figs['parity']})", ""]
        if "fragments" in figs:
            out += [
                "### Force MAE per fragment label (eV/Å), ID / OOD",
                "",
                "Which fragments' atoms carry the OOD error.",
                "",
                fragment_table({m: s for m, s in models.items() if s["seeds_ok"]}),
                "",
                f"![fragments]({figs['fragments']})",
                "",
            ]
        if "extrapolation" in section:
            out += [
                "### Distance from the training set",
                "",
                "SOAP distance of each test atom to the nearest training environment of the same "
                "element (r_cut 5 Å, unit-normalised spectra). Per-atom force MAE (eV/Å) of OOD "
                "atoms within the 95th percentile of ID distances vs beyond it:",
                "",
                extrapolation_table(section["extrapolation"]),
                "",
                f"![extrapolation]({figs['extrapolation']})",
                "",
            ]
        if "stability" in section:
            settings = report["options"]["stability_settings"]
            out += [
                "### MD stability",
                "",
                f"NVT Langevin, {settings['steps']} steps x {settings['timestep_fs']} fs at "
                f"{settings['temperature_k']} K, {report['options']['stability_molecules']} OOD "
                "molecules per model; failure = bond broken (> 1.5x covalent radii sum) or formed "
                "(< 1.0x), energy drift > "
                f"{settings['max_energy_drift_per_atom']} eV/atom, or non-finite output. Stable "
                "runs count their full length in the mean time to failure (a lower bound).",
                "",
                stability_table(section["stability"]),
                "",
            ]
        if "routing" in section:
            out += [
                "### DeepSet-MoE routing, ID vs OOD",
                "",
                routing_table(section["routing"]),
                "",
                f"![routing]({figs['routing']})",
                "",
            ]
        if "attribution" in section:
            out += [
                "### DeepSet-MoE attribution per fragment (Integrated Gradients), ID vs OOD",
                "",
                attribution_table(section["attribution"]),
                "",
                f"![attribution]({figs['attribution']})",
                "",
            ]
    if report["gaps"]:
        out += ["## Gaps", "", *[f"- {gap}" for gap in report["gaps"]], ""]
    return "\n".join(out)
