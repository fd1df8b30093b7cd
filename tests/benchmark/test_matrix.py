"""The benchmark matrix runner: cells, resumability, failures, run records."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import pytest

from benchmark.matrix import (
    RESULT_FILE,
    RUN_JSON,
    RUN_LOG,
    MatrixPlan,
    PlanMismatchError,
    cell_dir,
    check_plan_matches,
    read_result,
    run_matrix,
)
from tests.conftest import SMOKE_MATRIX_MODELS, SMOKE_MATRIX_TASKS, smoke_matrix_plan


def _result(run, model, task="duplication", seed=0):
    return json.loads((cell_dir(run, task, model, seed) / RESULT_FILE).read_text())


def test_cells_train_and_broken_model_fails_without_stopping(smoke_matrix):
    for model in ("deepset_moe", "schnet"):
        result = _result(smoke_matrix, model)
        assert result["status"] == "ok", result.get("reason")
        cell = cell_dir(smoke_matrix, "duplication", model, 0)
        for name in (
            "best.pt",
            "metrics.json",
            "predictions_id_test.npz",
            "predictions_ood_test.npz",
        ):
            assert (cell / name).exists(), name
        assert result["metrics"]["ood_test"]["force_mae"] > 0
        assert result["cell_seconds"] > 0
    broken = _result(smoke_matrix, "painn")
    assert broken["status"] == "failed"
    assert "no_such_hyperparameter" in broken["reason"]


def test_run_json_records_command_machine_and_cells(smoke_matrix):
    record = json.loads((smoke_matrix / RUN_JSON).read_text())
    assert record["invocations"][0]["command"] == ["pytest", "smoke_matrix"]
    assert record["invocations"][0]["cells_computed"] == 3
    assert record["machine"]["cpu_count"] >= 1 and record["machine"]["torch"]
    assert "git_commit" in record["machine"]
    statuses = {(c["model"], c["status"]) for c in record["cells"]}
    assert statuses == {("deepset_moe", "ok"), ("schnet", "ok"), ("painn", "failed")}
    assert record["plan"]["preset"] == "smoke"


def test_rerun_skips_finished_cells_and_recomputes_unfinished(smoke_matrix, smoke_data):
    cells = [
        cell_dir(smoke_matrix, t, m, 0) for t in SMOKE_MATRIX_TASKS for m in SMOKE_MATRIX_MODELS
    ]
    stamps = {c: (c / RESULT_FILE).stat().st_mtime_ns for c in cells}
    progress = io.StringIO()
    summary = run_matrix(smoke_matrix_plan(smoke_matrix, smoke_data), stream=progress)
    assert summary["invocations"][-1]["cells_computed"] == 0
    assert summary["invocations"][-1]["cells_skipped"] == len(cells)
    assert all((c / RESULT_FILE).stat().st_mtime_ns == stamps[c] for c in cells)
    assert f"[{len(cells)}/{len(cells)}]" in progress.getvalue()
    # an unfinished cell (no result.json: e.g. the run was killed) is computed again
    painn = cell_dir(smoke_matrix, "duplication", "painn", 0)
    (painn / RESULT_FILE).unlink()
    summary = run_matrix(smoke_matrix_plan(smoke_matrix, smoke_data), stream=io.StringIO())
    assert summary["invocations"][-1]["cells_computed"] == 1
    assert read_result(painn)["status"] == "failed"
    # retry_failed trains failed cells again and keeps the ok ones
    plan = smoke_matrix_plan(smoke_matrix, smoke_data)
    plan.retry_failed = True
    summary = run_matrix(plan, stream=io.StringIO())
    assert summary["invocations"][-1]["cells_computed"] == 1
    assert all((c / RESULT_FILE).stat().st_mtime_ns == stamps[c] for c in cells[:2])
    log = (smoke_matrix / RUN_LOG).read_text()
    assert log.count("SKIP duplication/deepset_moe/seed0") == 3
    assert log.count("CELL duplication/painn/seed0") == 3


def test_diverging_training_is_recorded_as_failed(smoke_data, tmp_path):
    plan = MatrixPlan(
        out_dir=tmp_path,
        data_dir=smoke_data,
        tasks=("duplication",),
        models=("schnet",),
        preset="smoke",
        cell_minutes=None,
        preset_overrides={"lr": 1e12, "grad_clip": None, "warmup_steps": 0},
    )
    summary = run_matrix(plan, stream=io.StringIO())
    (cell,) = summary["cells"]
    assert cell["status"] == "failed"
    assert "non-finite" in cell["reason"].lower() or "nan" in cell["reason"].lower()


def _metrics(run, models, task="duplication"):
    return {model: _result(run, model, task)["metrics"] for model in models}


def test_same_plan_same_metrics_in_a_pool_and_beside_a_cpu_burner(smoke_data, tmp_path):
    """Step budgets: sequential, and two workers with a busy process beside, agree exactly."""
    models = ("deepset_moe", "schnet")

    def plan(out, workers):
        return MatrixPlan(
            out_dir=out,
            data_dir=smoke_data,
            tasks=("duplication",),
            models=models,
            preset="smoke",
            preset_overrides={"max_steps": 8},
            workers=workers,
        )

    run_matrix(plan(tmp_path / "sequential", 1), stream=io.StringIO())
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        run_matrix(plan(tmp_path / "pool", 2), stream=io.StringIO())
    finally:
        burner.kill()
    assert _metrics(tmp_path / "sequential", models) == _metrics(tmp_path / "pool", models)
    result = _result(tmp_path / "pool", "deepset_moe")
    assert result["training"]["steps"] == 8 and not result["training"]["time_cap_hit"]
    assert result["curve"][-1]["step"] == 8 and len(result["curve"]) == result["training"]["epochs"]


def test_a_run_folder_refuses_another_protocol(smoke_matrix, smoke_data):
    plan = smoke_matrix_plan(smoke_matrix, smoke_data)
    plan.preset_overrides = {"max_steps": 16}
    with pytest.raises(PlanMismatchError, match="preset_overrides"):
        run_matrix(plan, stream=io.StringIO())


def test_a_run_folder_follows_its_data_by_content_not_by_path(smoke_matrix, smoke_data, tmp_path):
    """A clone elsewhere continues a committed run; another dataset is refused."""
    previous = json.loads((smoke_matrix / RUN_JSON).read_text())
    moved = tmp_path / "moved" / "gmd26"
    shutil.copytree(smoke_data, moved)
    check_plan_matches(smoke_matrix_plan(smoke_matrix, moved), previous)
    build = json.loads((moved / "build.json").read_text())
    build["seed"] += 1
    (moved / "build.json").write_text(json.dumps(build))
    with pytest.raises(PlanMismatchError, match="data"):
        check_plan_matches(smoke_matrix_plan(smoke_matrix, moved), previous)
