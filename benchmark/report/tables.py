"""The Markdown tables of ``report.md``, from the ``report.json`` content.

Numbers are printed with 3 significant digits, ``mean ± std`` over seeds (no ± for one seed),
``–`` where a value is missing. Forces in eV/Å, energies in eV, times in s (MD: fs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from benchmark.evaluation.metrics import METRIC_LABELS, METRIC_NAMES
from deepset_moe.fragments import FRAGMENT_NAMES


def format_number(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.3g}"


def _mean_std(stats: Mapping[str, Any]) -> str:
    if stats["mean"] is None:
        return "–"
    if stats["std"] is None:
        return format_number(stats["mean"])
    return f"{format_number(stats['mean'])} ± {format_number(stats['std'])}"


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
    """Per model: parameters, training throughput (frames/s), epochs, wall time (s), seeds ok."""
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
                format_number(summary["metrics"][split]["force_mae"]["mean"])
                for split in ("id", "ood", "ratio")
            )
            row.append(f"{id_} / {ood} ({ratio}×)")
        rows.append(row)
    return markdown_table(["model", *tasks], rows)


def fragment_table(models: Mapping[str, dict[str, Any]]) -> str:
    """Force MAE (eV/Å) per fragment label (rows), ``ID / OOD`` per model (columns)."""
    rows = []
    for fragment in FRAGMENT_NAMES:
        row = [fragment]
        for summary in models.values():
            split = summary["per_fragment_force_mae"]
            id_error, ood_error = split["id"][fragment], split["ood"][fragment]
            row.append(f"{format_number(id_error)} / {format_number(ood_error)}")
        rows.append(row)
    return markdown_table(["fragment", *[f"{m} ID / OOD" for m in models]], rows)


def extrapolation_table(analyses: Mapping[str, dict[str, Any]]) -> str:
    """Per model: per-atom force MAE (eV/Å) of ID atoms and of OOD atoms within / beyond the
    95th percentile of the ID distances from the training set."""
    rows = [
        [
            name,
            format_number(a["id_mae"]),
            format_number(a["ood_mae_in_range"]),
            format_number(a["ood_mae_beyond"]),
            f"{100 * a['ood_fraction_beyond']:.0f} %",
        ]
        for name, a in analyses.items()
    ]
    header = ["model", "ID MAE", "OOD MAE, d ≤ d95(ID)", "OOD MAE, d > d95(ID)", "OOD atoms beyond"]
    return markdown_table(header, rows)


def stability_table(studies: Mapping[str, dict[str, Any]]) -> str:
    """Per model: MD runs, fraction stable, mean time to failure (fs) and the failures."""
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
    """DeepSet-MoE routing metrics ID vs OOD, then the ID↔OOD Jensen-Shannon divergence (bits)
    of the expert distribution of each fragment."""
    rows = [
        [label, format_number(summary["id"][key]), format_number(summary["ood"][key])]
        for key, label in (
            ("load_balance_cv", "load balance (CV of utilisation)"),
            ("entropy_normalised", "routing entropy / ln K"),
            ("nmi_fragment_top1", "NMI(fragment, top-1 expert)"),
        )
    ]
    js = summary["js_divergence"]
    divergence = markdown_table(
        ["Jensen-Shannon divergence ID↔OOD (bits)", *js],
        [["expert distribution per fragment", *(format_number(value) for value in js.values())]],
    )
    return markdown_table(["routing metric", "ID", "OOD"], rows) + "\n\n" + divergence


def attribution_table(summaries: Mapping[str, dict[str, Any]]) -> str:
    """Per fragment label: attributed atoms and mean attribution (meV/atom), ID and OOD."""
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


COMPARISON_READING = (
    "How to read: compare models down an \"OOD at ID L\" column (OOD force MAE when the model's "
    "ID force MAE on the validation subset first reached L during training, interpolated "
    "log-log along its curve: lower is more robust at equal ID accuracy); effective robustness "
    "is the offset of the final test point from the log OOD vs log ID line fitted through all "
    "models (decades, − is better; factor = 10^offset)."
)
"""The sentence printed under every comparison table."""


def format_decades(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    text = f"{value:+.2f}"
    return "0.00" if text in ("+0.00", "-0.00") else text.replace("-", "−")


def _with_std(mean: float | None, std: float | None, number=format_number) -> str:
    if mean is None or not math.isfinite(mean):
        return "–"
    if std is None or not math.isfinite(std):
        return number(mean)
    return f"{number(mean)} ± {number(std).lstrip('+')}"


def comparison_table(comparison: Mapping[str, Any], failed: Sequence[str] = ()) -> str:
    """One task's comparison at matched accuracy (:mod:`benchmark.report.comparison`).

    Columns: model (seeds), test force MAE ID and OOD, OOD/ID, OOD force MAE at each matched
    ID level (eV/Å, level in the header), effective robustness in decades with the factor
    ``10**residual``; mean ± std over seeds. ``failed`` models get a row of ``–``.
    """
    matched, robustness = comparison["matched_id"], comparison["effective_robustness"]
    levels = matched["levels"]
    header = [
        "model",
        "ID force MAE",
        "OOD force MAE",
        "OOD/ID",
        *[f"OOD at ID {format_number(level)} eV/Å" for level in levels],
        "effective robustness, decades (factor)",
    ]
    if not levels:
        header.insert(4, "OOD at matched ID")
    rows = []
    for name in comparison["models"]:
        final = comparison["final"][name]
        n = len(final["seeds"])
        row = [
            f"{name} ({n} seed{'s' if n != 1 else ''})",
            _mean_std(final["id"]),
            _mean_std(final["ood"]),
            _mean_std(final["ratio"]),
        ]
        if levels and name in matched.get("left_out", []):
            row += ["outside the shared ID range"] * len(levels)
        elif levels:
            row += [
                _with_std(mean, std)
                for mean, std in zip(matched["ood"][name], matched["ood_std"][name])
            ]
        else:
            row.append("no common level" if name in matched["models"] else "no curve")
        residual = robustness["residual"][name]
        factor = robustness["factor"][name]
        cell = _with_std(residual, robustness["residual_std"][name], format_decades)
        if cell != "–" and factor is not None and math.isfinite(factor):
            cell += f" ({factor:.2f}×)"
        rows.append([*row, cell])
    for name in failed:
        rows.append([f"{name} (no seed finished ok)", *["–"] * (len(header) - 1)])
    return markdown_table(header, rows)


PROBE_READING = (
    "Each model of this task scored on the probe (`gmd26 probe`, `benchmark.dataset.probe`): "
    "long chains (n = 8, 10) carrying a group on both ends, the same group twice (long_di) or "
    "two different ones (long_mixed). No task lists these molecules; every fragment of the "
    "eligible ones occurs in this task's training set. Force MAE in eV/Å; probe/ID divides by "
    "the same cell's ID test error. For duplication models the probe's energy carries the "
    "task's unidentifiable constant (docs/tasks.md): compare them by forces."
)


def probe_table(models: Mapping[str, dict[str, Any]]) -> str:
    """Force MAE (eV/Å) on the compositional probe per model: ID, the task's OOD, the probe per
    family and over all families, and probe/ID, mean ± std over the seeds scored."""
    scored = {name: s for name, s in models.items() if s.get("probe")}
    families = list(
        dict.fromkeys(f for s in scored.values() for f in s["probe"]["metrics"] if f != "all")
    )
    rows = []
    for name, summary in scored.items():
        probe = summary["probe"]
        row = [
            f"{name} ({len(probe['seeds'])})",
            _mean_std(summary["metrics"]["id"]["force_mae"]),
            _mean_std(summary["metrics"]["ood"]["force_mae"]),
        ]
        for family in (*families, "all"):
            stats = probe["metrics"].get(family)
            row.append(_mean_std(stats["force_mae"]) if stats else "–")
        row.append(_mean_std(probe["ratio_to_id"]["all"]["force_mae"]))
        row.append(_mean_std(probe["ratio_to_id"]["all"]["energy_per_atom_mae"]))
        rows.append(row)
    header = [
        "model (seeds)", "ID", "task OOD", *(f"probe {f}" for f in families), "probe all",
        "probe/ID forces", "probe/ID energy per atom",
    ]
    return markdown_table(header, rows)
