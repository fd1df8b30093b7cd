"""The GMD-26 report of a matrix run: ``report.md``, ``report.json`` and ``figures/*.png``.

Input is a run directory written by :mod:`benchmark.matrix` (``<run>/<task>/<model>/seed<k>/``
with ``result.json``, ``best.pt`` and ``predictions_<split>.npz``) and the dataset it was
trained on (for the distance from the training set and the MD starting frames).
:func:`build_report` runs the pipeline of the report:

* :mod:`benchmark.report.collect`: the cells' results, aggregated over seeds (mean ± sample
  standard deviation over the seeds that finished ``ok``);
* :mod:`benchmark.report.comparison`: per task, the comparison at matched accuracy (OOD
  force MAE at common ID force-MAE levels along the ID-OOD curves, effective robustness from the
  across-model line of log OOD vs log ID), summarised run-wide under ``comparison``;
* :mod:`benchmark.report.sections`: per task, figures and analyses (OOD vs ID force MAE,
  parity, force MAE per fragment, force error vs distance from the training set, MD stability,
  DeepSet-MoE routing and attributions);
* a headline figure (force MAE ID / OOD per model x task, eV/Å);
* ``report.json`` (:mod:`benchmark.jsonio`) and ``report.md`` (:mod:`benchmark.report.markdown`,
  tables of :mod:`benchmark.report.tables`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from baselines.registry import list_models
from benchmark.jsonio import json_safe, write_json
from benchmark.matrix import RESULT_FILE, RUN_JSON
from benchmark.report import figures
from benchmark.report.collect import collect_results
from benchmark.report.comparison import comparison_summary
from benchmark.report.markdown import render_markdown
from benchmark.report.sections import (
    FIGURES_DIR,
    ReportOptions,
    TaskData,
    save_report_figure,
    task_section,
)

REPORT_MD = "report.md"
REPORT_JSON = "report.json"


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
        task: task_section(task, cells, TaskData(data_dir, task), run_dir, options, gaps)
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
    headline_png = save_report_figure(
        figures.headline_figure(headline, list(tasks)), run_dir / FIGURES_DIR, "headline.png"
    )
    report = {
        "run_dir": str(run_dir),
        "data_dir": None if data_dir is None else str(data_dir),
        "run": run_json,
        "options": {**asdict(options), "data_dir": None if data_dir is None else str(data_dir)},
        "comparison": {
            task: comparison_summary(report["comparison"]) for task, report in tasks.items()
        },
        "headline": headline,
        "headline_figure": headline_png,
        "tasks": tasks,
        "registered_models": list_models(),
        "gaps": gaps,
    }
    write_json(run_dir / REPORT_JSON, report)
    (run_dir / REPORT_MD).write_text(render_markdown(report))
    return json_safe(report)
