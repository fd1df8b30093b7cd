"""The GMD-26 report of a matrix run: tables, figures, model analyses, caching."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmark.evaluation.metrics import METRIC_LABELS
from benchmark.evaluation.stability import StabilitySettings
from benchmark.matrix import cell_dir
from benchmark.report.build import REPORT_JSON, REPORT_MD, build_report
from benchmark.report.collect import aggregate
from benchmark.report.sections import FIGURES_DIR, ReportOptions
from benchmark.report.tables import markdown_table

FAST = ReportOptions(
    stability_settings=StabilitySettings(steps=40, check_every=10),
    stability_molecules=1,
    routing_frames=16,
    attribution_molecules=4,
    attribution_steps=8,
)


@pytest.fixture(scope="module")
def report(smoke_matrix):
    return build_report(smoke_matrix, FAST)


def test_markdown_tables_have_the_gmd26_columns(smoke_matrix, report):
    text = (smoke_matrix / REPORT_MD).read_text()
    assert "| model | duplication |" in text  # headline
    assert "| model | metric | ID | OOD | OOD/ID |" in text
    for label in METRIC_LABELS.values():
        assert f"| {label} |" in text
    assert "| model | parameters | train frames/s | epochs | wall time (s) | seeds ok |" in text
    assert "| fragment | deepset_moe ID / OOD | schnet ID / OOD |" in text
    assert "| model | ID MAE | OOD MAE, d ≤ d95(ID) |" in text
    assert "| routing metric | ID | OOD |" in text
    assert "| fragment | ID atoms | ID meV/atom | OOD atoms | OOD meV/atom |" in text
    assert "`painn` seed 0: " in text and "no_such_hyperparameter" in text
    assert "### Compositional probe (molecules no task lists)" in text
    assert "Energy ratios of this task: the training set does not identify" in text
    header = "| model (seeds) | ID | task OOD | probe long_di | probe long_mixed | probe all |"
    assert header in text
    for line in text.splitlines():
        if line.startswith("|"):
            assert line.endswith("|"), line


def test_header_counts_finished_seeds_and_names_models_not_run(smoke_matrix, report):
    """The header counts the cells that finished (painn's only cell failed), not the plan's
    seeds, and names the registered models the run has no cell of."""
    text = (smoke_matrix / REPORT_MD).read_text()
    assert "Finished seeds per task: deepset_moe 1, schnet 1, painn 0." in text
    absent = text.split("Registered models without a cell here: ")[1].split(".")[0].split(", ")
    assert "mace" in absent and "nequip" in absent
    assert not {"deepset_moe", "schnet", "painn"} & set(absent)


def test_json_numbers_match_the_cells(smoke_matrix, report):
    stored = json.loads((smoke_matrix / REPORT_JSON).read_text())
    cell = json.loads(
        (cell_dir(smoke_matrix, "duplication", "schnet", 0) / "result.json").read_text()
    )
    schnet = stored["tasks"]["duplication"]["models"]["schnet"]
    assert schnet["metrics"]["ood"]["force_mae"]["mean"] == pytest.approx(
        cell["metrics"]["ood_test"]["force_mae"]
    )
    assert schnet["metrics"]["ratio"]["force_mae"]["mean"] == pytest.approx(
        cell["metrics"]["gap"]["force_mae"]
    )
    assert stored["tasks"]["duplication"]["models"]["painn"]["seeds_ok"] == []
    probe = json.loads(
        (cell_dir(smoke_matrix, "duplication", "schnet", 0) / "probe.json").read_text()
    )
    assert schnet["probe"]["molecules"] == {"long_di": 2, "long_mixed": 1}
    assert schnet["probe"]["ratio_to_id"]["all"]["force_mae"]["mean"] == pytest.approx(
        probe["ratio_to_id"]["all"]["force_mae"]
    )
    assert stored["headline"]["duplication"]["schnet"]["id"] == pytest.approx(
        cell["metrics"]["id_test"]["force_mae"]
    )


def test_figures_are_written(smoke_matrix, report):
    figures = smoke_matrix / FIGURES_DIR
    for name in (
        "headline",
        "duplication_comparison",
        "duplication_parity",
        "duplication_fragments",
        "duplication_extrapolation",
        "duplication_routing",
        "duplication_attribution",
    ):
        path = figures / f"{name}.png"
        assert path.exists() and path.stat().st_size > 10_000, name


def test_comparison_at_matched_accuracy(smoke_matrix, report):
    stored = json.loads((smoke_matrix / REPORT_JSON).read_text())
    comparison = stored["tasks"]["duplication"]["comparison"]
    keys = ("models", "curves", "matched_id", "final", "effective_robustness", "notes")
    assert set(comparison) >= set(keys)
    assert comparison["models"] == ["deepset_moe", "schnet"]  # the failed painn is left out
    cells = {
        m: json.loads((cell_dir(smoke_matrix, "duplication", m, 0) / "result.json").read_text())
        for m in comparison["models"]
    }
    for model, cell in cells.items():
        (run,) = comparison["curves"][model]  # the smoke preset records curves
        assert run["step"] == [p["step"] for p in cell["curve"]] and run["step"]
        assert comparison["final"][model]["points"] == [
            [cell["metrics"]["id_test"]["force_mae"], cell["metrics"]["ood_test"]["force_mae"]]
        ]
    matched = comparison["matched_id"]
    levels = matched["levels"]
    if levels:  # the two curves overlap in ID force MAE
        assert all(math.isfinite(level) and level > 0 for level in levels)
        for model in cells:
            assert len(matched["ood"][model]) == len(levels)
            assert all(math.isfinite(v) and v > 0 for v in matched["ood"][model])
    else:
        assert levels == [] and any("share no ID" in n for n in comparison["notes"])
    robustness = comparison["effective_robustness"]
    assert math.isfinite(robustness["slope"]) and math.isfinite(robustness["intercept"])
    for model in cells:
        assert math.isfinite(robustness["residual"][model])
        assert robustness["factor"][model] == pytest.approx(10 ** robustness["residual"][model])
    summary = stored["comparison"]["duplication"]
    assert summary["levels"] == levels
    assert set(summary["models"]) == set(cells)
    assert summary["models"]["schnet"]["id_force_mae"] == pytest.approx(
        cells["schnet"]["metrics"]["id_test"]["force_mae"]
    )
    text = (smoke_matrix / REPORT_MD).read_text()
    header = "| model | ID force MAE | OOD force MAE | OOD/ID | "
    assert text.count(header) == 2  # the headline and the task section
    assert text.index(header) < text.index("## Task: duplication") < text.rindex(header)
    assert text.rindex(header) < text.index("### GMD-26 metrics")  # first in the task section
    assert "effective robustness, decades (factor) |" in text
    assert "| painn (no seed finished ok) |" in text
    assert "![comparison](figures/duplication_comparison.png)" in text


def test_extrapolation_and_model_analyses(smoke_matrix, report):
    task = report["tasks"]["duplication"]
    for model in ("deepset_moe", "schnet"):
        analysis = task["extrapolation"][model]
        assert 0.0 <= analysis["ood_fraction_beyond"] <= 1.0
        assert analysis["mean_distance"]["ood"] >= 0.0
        assert len(analysis["curves"]["ood"]["mean"]) == len(analysis["curves"]["ood"]["center"])
        study = task["stability"][model]
        assert len(study["runs"]) == 1 and 0.0 <= study["fraction_stable"] <= 1.0
        assert 0 < study["mean_time_to_failure_fs"] <= 20.0
    assert task["routing"]["num_experts"] >= 2
    assert set(task["attribution"]) == {"id", "ood"}
    assert "painn" not in task["stability"]


def test_second_report_reuses_caches(smoke_matrix, report):
    deepset = cell_dir(smoke_matrix, "duplication", "deepset_moe", 0)
    cached = [deepset / f"analysis_{n}.json" for n in ("stability", "routing", "attribution")]
    cached.append(smoke_matrix / "duplication" / "soap_distances.npz")
    stamps = [path.stat().st_mtime_ns for path in cached]
    again = build_report(smoke_matrix, FAST)
    assert [path.stat().st_mtime_ns for path in cached] == stamps
    assert again["tasks"]["duplication"]["stability"] == report["tasks"]["duplication"]["stability"]


def test_aggregate_and_markdown_table():
    stats = aggregate([1.0, 3.0, None, float("nan")])
    assert stats["n"] == 2 and stats["mean"] == 2.0
    assert stats["std"] == pytest.approx(np.sqrt(2.0))
    assert aggregate([5.0])["std"] is None
    assert aggregate([])["mean"] is None
    table = markdown_table(["a", "b"], [["x", "1"]]).splitlines()
    assert table == ["| a | b |", "|:---|---:|", "| x | 1 |"]


def test_run_header_names_the_commit_of_every_invocation():
    from benchmark.report.markdown import _run_header

    machine = {"platform": "x", "cpu_count": 2, "torch": "2", "git_commit": "aaa"}
    one = {"run_dir": "r", "data_dir": "d", "run": {"machine": machine, "invocations": []}}
    assert "git commit `aaa`." in _run_header(one)[0]
    invocations = [{"git_commit": "aaa"}, {"git_commit": "bbb"}, {"git_commit": "aaa"}, {}]
    two = {"run_dir": "r", "data_dir": "d", "run": {"machine": machine, "invocations": invocations}}
    header = _run_header(two)[0]
    assert "git commits `aaa`, `bbb` (one per invocation of the matrix)." in header
