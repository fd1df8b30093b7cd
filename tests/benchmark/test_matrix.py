"""The benchmark matrix runner: cells, resumability, failures, run records, executors (a
process pool, a real dask cluster) and device placement."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from benchmark.errors import UsageError
from benchmark.matrix import (
    ERROR_FILE,
    RESULT_FILE,
    RUN_JSON,
    RUN_LOG,
    TEST_SPLITS,
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
    # every invocation names the code that ran it (a run folder may grow over several commits)
    assert record["invocations"][0]["git_commit"] == record["machine"]["git_commit"]
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


def _comparable(run: Path, model: str) -> dict[str, Any]:
    """A cell's ``result.json`` without what depends on the machine's load (times, speeds) or
    the run folder's path."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if "second" not in k}
        return [strip(v) for v in value] if isinstance(value, list) else value

    text = (cell_dir(run, "duplication", model, 0) / RESULT_FILE).read_text()
    return strip(json.loads(text.replace(str(run), "<run>")))


def _cells(run: Path) -> list[dict[str, Any]]:
    """``run.json``'s cell records without their times."""
    cells = json.loads((run / RUN_JSON).read_text())["cells"]
    return [{k: v for k, v in cell.items() if k != "cell_seconds"} for cell in cells]


def test_same_plan_same_results_sequentially_in_a_pool_and_on_a_dask_cluster(
    smoke_data, tmp_path, dask_client
):
    """Step budgets: sequential, two workers with a busy process beside, and a real dask
    cluster of two worker processes give the same metrics, cell results and ``run.json``
    cells; a folder trained on one executor is continued on another without retraining."""
    models = ("deepset_moe", "schnet")
    runs = {name: tmp_path / name for name in ("sequential", "pool", "dask")}

    def plan(out, workers=1):
        return MatrixPlan(
            out_dir=out,
            data_dir=smoke_data,
            tasks=("duplication",),
            models=models,
            preset="smoke",
            preset_overrides={"max_steps": 8},
            workers=workers,
        )

    run_matrix(plan(runs["sequential"]), stream=io.StringIO())
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        run_matrix(plan(runs["pool"], 2), stream=io.StringIO())
    finally:
        burner.kill()
    summary = run_matrix(plan(runs["dask"]), stream=io.StringIO(), executor=dask_client)
    assert summary["invocations"][-1]["executor"].startswith("dask scheduler tcp://")
    sequential, pool, dask = (_metrics(run, models) for run in runs.values())
    assert sequential == pool == dask
    for model in models:
        assert _comparable(runs["sequential"], model) == _comparable(runs["dask"], model)
        assert _comparable(runs["pool"], model) == _comparable(runs["dask"], model)
    assert _cells(runs["sequential"]) == _cells(runs["pool"]) == _cells(runs["dask"])
    result = _result(runs["dask"], "deepset_moe")
    assert result["training"]["steps"] == 8 and not result["training"]["time_cap_hit"]
    assert result["curve"][-1]["step"] == 8 and len(result["curve"]) == result["training"]["epochs"]
    # resumable across executors: finished cells are kept whichever executor trained them
    again = run_matrix(plan(runs["dask"], 2), stream=io.StringIO())
    assert again["invocations"][-1]["cells_computed"] == 0
    again = run_matrix(plan(runs["pool"]), stream=io.StringIO(), executor=dask_client)
    assert again["invocations"][-1]["cells_computed"] == 0


def placement_train(model, task, preset, data_dir, out_dir, seed, **settings):
    """A stand-in trainer (picklable) that records the device and the time span it ran in."""
    started = time.time()
    time.sleep(0.4)
    record = {"device": settings["device"], "started": started, "ended": time.time()}
    (Path(out_dir) / "placement.json").write_text(json.dumps(record))
    split_metrics = {"force_mae": 0.1, "energy_mae": 0.1}
    return {"status": "ok", "metrics": {split: split_metrics for split in TEST_SPLITS}}


def _placements(run: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(run.glob("*/*/*/placement.json"))]


@pytest.mark.parametrize("executor", ["process pool", "executor"])
def test_each_cell_in_flight_gets_its_own_device(smoke_data, tmp_path, executor):
    """``devices`` with as many cells in flight as devices: cells that ran at the same time
    were handed distinct devices of the list, every device was used, and cells did overlap
    (two workers of a pool, or a 4-thread executor held to 2 cells by the 2 devices)."""
    devices = ("cuda:0", "cuda:1")
    plan = MatrixPlan(
        out_dir=tmp_path,
        data_dir=smoke_data,
        tasks=("duplication",),
        models=("deepset_moe", "schnet"),
        seeds=3,
        preset="smoke",
        device="cuda",
        devices=devices,
        workers=2,
    )
    if executor == "process pool":
        summary = run_matrix(plan, train=placement_train, stream=io.StringIO())
    else:
        with ThreadPoolExecutor(4) as threads:
            summary = run_matrix(
                plan, train=placement_train, stream=io.StringIO(), executor=threads
            )
    assert [cell["status"] for cell in summary["cells"]] == ["ok"] * 6
    placements = _placements(tmp_path)
    assert len(placements) == 6 and {p["device"] for p in placements} == set(devices)
    overlaps = [
        (a, b)
        for i, a in enumerate(placements)
        for b in placements[i + 1 :]
        if a["started"] < b["ended"] and b["started"] < a["ended"]
    ]
    assert overlaps, "no two cells ran at the same time"
    assert all(a["device"] != b["device"] for a, b in overlaps)
    assert "submitted on cuda:1" in (tmp_path / RUN_LOG).read_text()


def test_devices_must_be_of_the_plan_device_kind(smoke_data, tmp_path):
    with pytest.raises(UsageError, match=r"devices \['cuda:0'\] are not cpu devices"):
        MatrixPlan(out_dir=tmp_path, data_dir=smoke_data, devices=("cpu", "cuda:0"))
    with pytest.raises(UsageError, match="'gpu:0' is not a device"):
        MatrixPlan(out_dir=tmp_path, data_dir=smoke_data, device="cuda", devices=("gpu:0",))


def killing_train(model, task, preset, data_dir, out_dir, seed, **settings):
    """A stand-in trainer that kills its own worker process for DeepSet-MoE cells."""
    if model == "deepset_moe":
        os.kill(os.getpid(), signal.SIGKILL)
    return placement_train(model, task, preset, data_dir, out_dir, seed, **settings)


def test_a_cell_whose_dask_worker_dies_is_recorded_and_the_rest_go_on(
    smoke_data, tmp_path, dask_client
):
    """The worker of the first cell is killed (SIGKILL): that cell is recorded ``failed``
    with the worker's error (``result.json``, ``error.log``, ``run.json``), the next cell
    trains on the cluster. One device: one cell in flight, so the order is fixed."""
    plan = MatrixPlan(
        out_dir=tmp_path,
        data_dir=smoke_data,
        tasks=("duplication",),
        models=("deepset_moe", "schnet"),
        preset="smoke",
        devices=("cpu",),
    )
    summary = run_matrix(plan, train=killing_train, stream=io.StringIO(), executor=dask_client)
    lost, trained = summary["cells"]
    assert lost["model"] == "deepset_moe" and lost["status"] == "failed"
    assert lost["reason"].startswith("worker failed: KilledWorker")
    assert read_result(cell_dir(tmp_path, "duplication", "deepset_moe", 0))["status"] == "failed"
    error_log = cell_dir(tmp_path, "duplication", "deepset_moe", 0) / ERROR_FILE
    assert "KilledWorker" in error_log.read_text()
    assert trained["model"] == "schnet" and trained["status"] == "ok"
    assert "DONE duplication/deepset_moe/seed0: failed" in (tmp_path / RUN_LOG).read_text()


def test_a_run_folder_refuses_another_protocol(smoke_matrix, smoke_data):
    plan = smoke_matrix_plan(smoke_matrix, smoke_data)
    plan.preset_overrides = {"max_steps": 16}
    with pytest.raises(PlanMismatchError, match="preset_overrides"):
        run_matrix(plan, stream=io.StringIO())


def test_a_finished_cell_of_another_model_version_is_refused(smoke_matrix, smoke_data, tmp_path):
    """A default that changed since a cell ran: the plan's settings are the same, the model it
    builds is not; the folder is refused (before anything is written) instead of mixing
    cells of two models under one name."""
    run = tmp_path / "run"
    shutil.copytree(smoke_matrix, run)
    result_path = cell_dir(run, "duplication", "deepset_moe", 0) / RESULT_FILE
    result = json.loads(result_path.read_text())
    result["model_config"]["many_body_cutoff"] = 3.0
    result_path.write_text(json.dumps(result))
    before = (run / RUN_JSON).read_bytes()
    with pytest.raises(
        PlanMismatchError, match=r"deepset_moe/seed0 .*many_body_cutoff 3\.0 -> 4\.0"
    ):
        run_matrix(smoke_matrix_plan(run, smoke_data), stream=io.StringIO())
    assert (run / RUN_JSON).read_bytes() == before
    # a config saved before a setting existed reads as that version built it (one cutoff)
    del result["model_config"]["many_body_cutoff"]
    result_path.write_text(json.dumps(result))
    with pytest.raises(PlanMismatchError, match=r"many_body_cutoff None -> 4\.0"):
        run_matrix(smoke_matrix_plan(run, smoke_data), stream=io.StringIO())


def test_canonical_config_completes_old_configs_and_keeps_baselines_as_json():
    from baselines.registry import canonical_config, model_config

    current = model_config("deepset_moe", seed=0)
    assert canonical_config("deepset_moe", current) == json.loads(json.dumps(current))
    old = {k: v for k, v in current.items() if k not in ("body_order", "many_body_cutoff")}
    completed = canonical_config("deepset_moe", old)
    assert completed["body_order"] == 0 and completed["many_body_cutoff"] is None
    schnet = model_config("schnet", seed=1)
    assert canonical_config("schnet", schnet) == json.loads(json.dumps(schnet))


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
