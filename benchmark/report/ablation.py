"""The ablation report: variants of one model, one run folder each, compared task by task.

An ablation trains the same model under several settings (``gmd26 run --model-configs``), one
run folder per variant (``tools/runs/ablation.sh`` writes ``results/ablation/<variant>/``).
:func:`ablation_report` treats each variant as a model of the matched-accuracy comparison
(:func:`benchmark.report.comparison.task_comparison`), so a variant's OOD error is read at ID
errors every variant reaches and against the across-variant accuracy line, and adds its
compositional-probe score when the cells have one. It writes ``ablation.md``, ``ablation.json``
and ``figures/<task>_ablation.png`` into the output folder.

The across-task table ranks nothing by OOD error alone: the question is which settings move a
variant *off* the accuracy line (effective robustness, decades, negative = better OOD than its
ID error predicts) and which keep OOD/ID low while the ID error stays competitive.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.dataset.layout import DEFAULT_DATA_DIR
from benchmark.dataset.tasks import ENERGY_NOT_IDENTIFIED, TASK_NAMES
from benchmark.evaluation.cell_analysis import cell_has_routing, checkpoint_path, model_routing
from benchmark.jsonio import json_safe, write_json
from benchmark.report import figures
from benchmark.report.collect import collect_results, summarise_model
from benchmark.report.comparison import task_comparison
from benchmark.report.sections import (
    FIGURES_DIR,
    TaskData,
    first_ok_result,
    save_report_figure,
)
from benchmark.report.tables import (
    comparison_table,
    format_decades,
    format_number,
    markdown_table,
    probe_table,
)

ABLATION_MD = "ablation.md"
ABLATION_JSON = "ablation.json"


class AblationError(ValueError):
    """The variant folders hold no finished cell of the model, or share a name."""


def collect_variants(
    variant_dirs: Sequence[str | Path], model: str
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``{task: {variant: [cell results of model]}}``, the variant named by its folder."""
    names = [Path(d).name for d in variant_dirs]
    if len(set(names)) != len(names):
        raise AblationError(f"variant folders must have distinct names, got {names}")
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for name, folder in zip(names, variant_dirs):
        for task, models in collect_results(folder).items():
            if model in models:
                grouped.setdefault(task, {})[name] = models[model]
    if not grouped:
        raise AblationError(f"no finished {model} cell in {', '.join(map(str, variant_dirs))}")
    order = sorted(grouped, key=lambda t: TASK_NAMES.index(t) if t in TASK_NAMES else 99)
    return {task: grouped[task] for task in order}


def _mean(values: Sequence[float | None]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def across_tasks(tasks: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant, over the tasks it finished: mean and worst OOD/ID (forces), the mean
    effective robustness (decades), the geometric mean of its ID force MAE relative to the best
    variant of each task, the mean probe/ID force ratio, and the worst energy-per-atom OOD/ID
    over the tasks whose training set identifies the OOD energies
    (:data:`benchmark.dataset.tasks.ENERGY_NOT_IDENTIFIED`)."""
    variants = list(dict.fromkeys(v for t in tasks.values() for v in t["comparison"]["models"]))
    rows: dict[str, dict[str, Any]] = {}
    for variant in variants:
        ratios, residuals, relative_id, probe, energy = [], [], [], [], []
        for task, section in tasks.items():
            comparison = section["comparison"]
            if variant not in comparison["models"]:
                continue
            final = comparison["final"]
            ratios.append(final[variant]["ratio"]["mean"])
            residuals.append(comparison["effective_robustness"]["residual"][variant])
            best = min(final[v]["id"]["mean"] for v in comparison["models"])
            relative_id.append(final[variant]["id"]["mean"] / best)
            if task not in ENERGY_NOT_IDENTIFIED:
                stats = section["variants"][variant]["metrics"]["ratio"]["energy_per_atom_mae"]
                energy.append(stats["mean"])
            summary = section["variants"][variant].get("probe")
            if summary:
                probe.append(summary["ratio_to_id"]["all"]["force_mae"]["mean"])
        finite = [r for r in ratios if r is not None and math.isfinite(r)]
        rows[variant] = {
            "tasks": len(ratios),
            "mean_ratio": _mean(ratios),
            "worst_ratio": max(finite) if finite else math.nan,
            "mean_effective_robustness": _mean(residuals),
            "id_relative_to_best": float(np.exp(np.mean(np.log(relative_id))))
            if relative_id
            else math.nan,
            "mean_probe_ratio": _mean(probe),
            "worst_identified_energy_ratio": max(
                (e for e in energy if e is not None and math.isfinite(e)), default=math.nan
            ),
            "params": next(
                (t["variants"][variant]["params"] for t in tasks.values()
                 if variant in t["variants"]),
                None,
            ),
        }
    return rows


def across_tasks_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """The across-task summary as Markdown (see :func:`across_tasks`)."""
    header = [
        "variant", "parameters", "tasks", "OOD/ID forces, mean", "OOD/ID, worst task",
        "effective robustness, mean decades", "ID force MAE / best variant's (geo. mean)",
        "probe/ID forces, mean", "E/atom OOD/ID, worst task that identifies it",
    ]
    body = [
        [
            name,
            f"{int(row['params']):,}" if row["params"] is not None else "–",
            str(row["tasks"]),
            format_number(row["mean_ratio"]),
            format_number(row["worst_ratio"]),
            format_decades(row["mean_effective_robustness"]),
            format_number(row["id_relative_to_best"]),
            format_number(row["mean_probe_ratio"]),
            format_number(row["worst_identified_energy_ratio"]),
        ]
        for name, row in rows.items()
    ]
    return markdown_table(header, body)


ROUTING_FRAMES = 64
"""Test frames per split (seeded) of the per-variant routing metrics."""


def variant_routing(
    variants: Mapping[str, Sequence[Mapping[str, Any]]], data: TaskData
) -> dict[str, dict[str, Any]]:
    """Routing metrics ID vs OOD (:func:`benchmark.evaluation.cell_analysis.model_routing`) of
    each routed variant's lowest finished seed whose weights are here; cached in the cell."""
    routing = {}
    for name, cells in variants.items():
        result = first_ok_result(cells)
        if result is None or not cell_has_routing(result):
            continue
        if not checkpoint_path(result["cell_dir"]).exists() or not data.available:
            continue
        summary = model_routing(
            result["cell_dir"], data.split("id_test"), data.split("ood_test"), ROUTING_FRAMES, 0
        )
        if summary is not None:
            routing[name] = {"seed": result["seed"], **summary}
    return routing


def routing_comparison_table(routing: Mapping[str, Mapping[str, Any]]) -> str:
    """Per routed variant: load balance, routing entropy and NMI(fragment, top-1 expert), ID and
    OOD, and the mean ID↔OOD Jensen-Shannon divergence of the per-fragment expert use (bits)."""
    rows = []
    for name, summary in routing.items():
        row = [f"{name} (seed {summary['seed']})"]
        for key in ("load_balance_cv", "entropy_normalised", "nmi_fragment_top1"):
            row.append(
                f"{format_number(summary['id'][key])} / {format_number(summary['ood'][key])}"
            )
        divergences = [v for v in summary["js_divergence"].values() if v is not None]
        row.append(format_number(_mean(divergences)))
        rows.append(row)
    header = [
        "variant", "load balance CV, ID / OOD", "entropy / ln K, ID / OOD",
        "NMI(fragment, top-1), ID / OOD", "JS divergence ID↔OOD, mean over fragments (bits)",
    ]
    return markdown_table(header, rows)


def ablation_report(
    variant_dirs: Sequence[str | Path],
    out_dir: str | Path,
    model: str = "deepset_moe",
    data_dir: str | Path | None = DEFAULT_DATA_DIR,
) -> dict[str, Any]:
    """Write ``ablation.md``, ``ablation.json`` and the per-task figures into ``out_dir``.

    Args:
        data_dir: the dataset the variants were trained on (routing metrics on its test
            splits); ``None`` leaves the routing metrics out.

    Returns:
        The ``ablation.json`` content: ``{"model", "variants", "tasks": {task: {"variants":
        {variant: seed summary}, "comparison", "routing": {variant: summary}}},
        "across_tasks"}``.

    Raises:
        AblationError: no finished cell of ``model`` in the folders, or two folders share a
            name.
    """
    out_dir = Path(out_dir)
    grouped = collect_variants(variant_dirs, model)
    tasks: dict[str, Any] = {}
    for task, variants in grouped.items():
        comparison = task_comparison(variants)
        section = {
            "variants": {name: summarise_model(cells) for name, cells in variants.items()},
            "comparison": comparison,
            "routing": variant_routing(
                variants, TaskData(None if data_dir is None else Path(data_dir), task)
            ),
            "figures": {},
        }
        if comparison["models"]:
            robustness = comparison["effective_robustness"]
            section["figures"]["comparison"] = save_report_figure(
                figures.comparison_figure(
                    {v: comparison["curves"].get(v, []) for v in comparison["models"]},
                    {v: comparison["final"][v]["points"] for v in comparison["models"]},
                    comparison["matched_id"]["levels"],
                    (robustness["slope"], robustness["intercept"]),
                    f"{task}: {model} variants, OOD vs ID force MAE",
                ),
                out_dir / FIGURES_DIR,
                f"{task}_ablation.png",
            )
        tasks[task] = section
    report = {
        "model": model,
        "variants": [Path(d).name for d in variant_dirs],
        "tasks": tasks,
        "across_tasks": across_tasks(tasks),
    }
    write_json(out_dir / ABLATION_JSON, json_safe(report))
    (out_dir / ABLATION_MD).write_text(render_ablation(report))
    return report


def render_ablation(report: Mapping[str, Any]) -> str:
    """The Markdown of ``ablation.md``."""
    out = [
        f"# Ablation of {report['model']}",
        "",
        "Each variant is one run folder; forces in eV/Å, mean ± sample std over seeds. The "
        "matched-ID columns and the effective robustness compare the variants with each other "
        "(the accuracy line is fitted across variants).",
        "",
        "## Across tasks",
        "",
        across_tasks_table(report["across_tasks"]),
        "",
    ]
    for task, section in report["tasks"].items():
        out += [f"## {task}", "", comparison_table(section["comparison"]), ""]
        if section["routing"]:
            out += ["Routing:", "", routing_comparison_table(section["routing"]), ""]
        if any(s.get("probe") for s in section["variants"].values()):
            out += ["Compositional probe:", "", probe_table(section["variants"]), ""]
        notes = section["comparison"]["notes"]
        if notes:
            out += [*[f"- {note}" for note in notes], ""]
        if section["figures"].get("comparison"):
            out += [f"![{task}]({section['figures']['comparison']})", ""]
    return "\n".join(out)
