"""``gmd26 run`` and ``gmd26 build`` on a dask cluster (``--scheduler``) and GPU placement
(``--devices``): refused before any work with one line and exit status 2, and a real run
through a scheduler file."""

from __future__ import annotations

import json
import socket

import torch

import benchmark.executors
from benchmark.cli import main
from benchmark.matrix import RUN_JSON

RUN = ["run", "--tasks", "duplication", "--preset", "smoke", "--no-report"]


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"gmd26 {command}: "), err
    return err


def unused_address() -> str:
    """A local address where no scheduler listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def test_an_unreachable_scheduler_is_refused_before_any_work(
    smoke_data, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(benchmark.executors, "SCHEDULER_TIMEOUT_S", 1.0)
    address = unused_address()
    out = tmp_path / "out"
    run = [*RUN, "--models", "schnet", "--data", str(smoke_data), "--out", str(out)]
    build = ["build", "--preset", "smoke", "--reference", "mmff", "--out", str(out)]
    for command, argv in (("run", run), ("build", build)):
        assert main([*argv, "--scheduler", address]) == 2
        error = one_error_line(capsys, command)
        assert f"--scheduler {address}: no dask scheduler answered" in error
        assert "leave out --scheduler to run on this machine" in error
        assert not out.exists(), "nothing may be written before the scheduler answers"


def test_scheduler_and_device_options_are_checked_first(smoke_data, tmp_path, capsys):
    out = tmp_path / "out"
    run = [*RUN, "--models", "schnet", "--data", str(smoke_data), "--out", str(out)]
    cases = [
        ([*run, "--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"],
         "--workers 2 and --scheduler tcp://127.0.0.1:8786: the cluster's workers decide"),
        ([*run, "--scheduler", "localhost"], "--scheduler localhost: not a dask scheduler"),
        ([*run, "--devices", "cpu,cuda:0"], "--devices cpu,cuda:0: devices of one kind"),
        ([*run, "--device", "cpu", "--devices", "cuda:0"], "and --device cpu: devices of one"),
        ([*run, "--devices", "tpu:0"], "'tpu:0' is not a device"),
    ]  # fmt: skip
    if not torch.cuda.is_available():
        cases.append(([*run, "--devices", "cuda:0,cuda:1"], "--devices cuda:0: no CUDA device"))
    for argv, message in cases:
        assert main(argv) == 2, message
        assert message in one_error_line(capsys, "run")
        assert not out.exists()
    build = ["build", "--preset", "smoke", "--out", str(out), "--workers", "2"]
    assert main([*build, "--scheduler", "tcp://127.0.0.1:8786"]) == 2
    assert "--workers 2 and --scheduler" in one_error_line(capsys, "build")


def test_run_and_build_through_a_scheduler_file(smoke_data, tmp_path, dask_client, capsys):
    scheduler_file = tmp_path / "scheduler.json"
    scheduler_file.write_text(json.dumps({"address": dask_client.scheduler.address}))
    data = tmp_path / "data"
    build = ["build", "--preset", "smoke", "--reference", "mmff", "--no-progress"]
    assert main([*build, "--out", str(data), "--scheduler", str(scheduler_file)]) == 0
    assert json.loads((data / "build.json").read_text())["status"] == "complete"
    out = tmp_path / "run"
    run = [*RUN, "--models", "schnet", "--data", str(smoke_data), "--out", str(out)]
    overrides = ["--preset-overrides", '{"max_steps": 2}', "--devices", "cpu"]
    assert main([*run, *overrides, "--scheduler", str(scheduler_file)]) == 0, capsys.readouterr()
    record = json.loads((out / RUN_JSON).read_text())
    executor = record["invocations"][-1]["executor"]
    assert executor == f"dask scheduler {dask_client.scheduler.address}"
    assert record["plan"]["devices"] == ["cpu"] and record["cells"][0]["status"] == "ok"
