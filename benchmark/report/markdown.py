"""The ``report.md`` document: run header, headline and one section per task, rendered from
the ``report.json`` content (the tables themselves: :mod:`benchmark.report.tables`).

The headline is the comparison at matched accuracy of every task
(:func:`benchmark.report.tables.comparison_table`: test force MAE ID, OOD and OOD/ID beside the
OOD force MAE at matched ID levels and the effective robustness), then the force MAE ID / OOD
table across tasks; each task section opens with the same comparison, its notes and figure."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from benchmark.report.tables import (
    COMPARISON_READING,
    PROBE_READING,
    attribution_table,
    comparison_table,
    cost_table,
    extrapolation_table,
    fragment_table,
    gmd26_table,
    headline_table,
    probe_table,
    routing_table,
    stability_table,
)


def _seed_counts(report: Mapping[str, Any]) -> str:
    """Finished seeds per model over the tasks, e.g. ``deepset_moe 3, schnet 1-2``; the plans
    of the invocations may differ (a matrix grown across sessions), the cells do not lie."""
    counts: dict[str, list[int]] = {}
    for section in report.get("tasks", {}).values():
        for name, summary in section["models"].items():
            counts.setdefault(name, []).append(len(summary["seeds_ok"]))
    parts = []
    for name, per_task in counts.items():
        low, high = min(per_task), max(per_task)
        parts.append(f"{name} {low}" if low == high else f"{name} {low}-{high}")
    return ", ".join(parts)


def _models(report: Mapping[str, Any]) -> set[str]:
    """Names of the models with at least one cell (finished or failed) in any task."""
    return {name for section in report.get("tasks", {}).values() for name in section["models"]}


def _run_header(report: Mapping[str, Any]) -> list[str]:
    run = report.get("run", {})
    plan, machine = run.get("plan", {}), run.get("machine", {})
    lines = [f"Run directory `{report['run_dir']}`, data `{report['data_dir']}`."]
    if plan:
        cell_budget = plan.get("cell_minutes")
        lines.append(
            f"Preset `{plan.get('preset')}`"
            + (f" capped at {cell_budget} min per cell" if cell_budget else "")
            + f", device `{plan.get('device')}`."
        )
    with_cells = _models(report)
    if with_cells:
        lines.append(f"Finished seeds per task: {_seed_counts(report)}.")
    absent = [name for name in report.get("registered_models", []) if name not in with_cells]
    if absent:
        lines.append(f"Registered models without a cell here: {', '.join(absent)}.")
    invocations = run.get("invocations", [])
    if machine:
        commits = list(dict.fromkeys(i["git_commit"] for i in invocations if i.get("git_commit")))
        commits = commits or [machine.get("git_commit")]
        lines.append(
            f"Machine: {machine.get('platform')}, {machine.get('cpu_count')} CPUs, torch "
            f"{machine.get('torch')}, git commit{'s' if len(commits) > 1 else ''} "
            + ", ".join(f"`{commit}`" for commit in commits)
            + (" (one per invocation of the matrix)." if len(commits) > 1 else ".")
        )
    if invocations:
        total = sum(i.get("wall_seconds") or 0.0 for i in invocations)
        lines.append(f"Matrix wall time {total / 60:.1f} min ({len(invocations)} invocation(s)).")
    return [" ".join(lines), ""]


def _comparison(section: Mapping[str, Any]) -> str:
    failed = [name for name, s in section["models"].items() if not s["seeds_ok"]]
    return comparison_table(section["comparison"], failed)


def _comparison_section(section: Mapping[str, Any]) -> list[str]:
    comparison = section["comparison"]
    robustness = comparison["effective_robustness"]
    out = ["### Comparison at matched accuracy (force MAE, eV/Å)", "", _comparison(section), ""]
    out += [COMPARISON_READING, ""]
    slope, intercept = robustness["slope"], robustness["intercept"]
    if slope is not None and intercept is not None and math.isfinite(slope):
        out += [
            f"Accuracy line through {robustness['points']} final test point(s): log10 OOD = "
            f"{intercept:.3f} + {slope:.3f} log10 ID. ID / OOD / OOD/ID columns: full test "
            "splits; matched-ID columns: the ID-OOD curves (validation subset, fixed OOD-test "
            "subset).",
            "",
        ]
    if comparison["notes"]:
        out += [*[f"- {note}" for note in comparison["notes"]], ""]
    figure = section["figures"].get("comparison")
    if figure:
        out += [f"![comparison]({figure})", ""]
    return out


def render_markdown(report: Mapping[str, Any]) -> str:
    """The Markdown text of ``report.md`` from the ``report.json`` content."""
    out = ["# GMD-26 benchmark report", "", *_run_header(report)]
    out += [
        "Every table: mean ± sample standard deviation over the seeds that finished ok (no ± for "
        "one seed). Forces in eV/Å, energies in eV. OOD/ID is the generalisation gap.",
        "",
        "## Headline: comparison at matched accuracy (force MAE, eV/Å)",
        "",
        COMPARISON_READING,
        "",
    ]
    for task, section in report["tasks"].items():
        if "comparison" in section:
            out += [f"### {task}", "", _comparison(section), ""]
            if section["figures"].get("comparison"):
                out += [f"![{task} comparison]({section['figures']['comparison']})", ""]
    out += [
        "### Force MAE (eV/Å) across tasks, ID / OOD (OOD/ID)",
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
        if "comparison" in section:
            out += _comparison_section(section)
        out += [
            "### GMD-26 metrics",
            "",
            gmd26_table(models),
            "",
        ]
        if section.get("energy_not_identified"):
            out += [f"Energy ratios of this task: {section['energy_not_identified']}.", ""]
        out += [
            "### Cost",
            "",
            cost_table(models),
            "",
        ]
        if any(s.get("probe") for s in models.values()):
            out += ["### Compositional probe (molecules no task lists)", "", PROBE_READING, ""]
            out += [probe_table(models), ""]
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
