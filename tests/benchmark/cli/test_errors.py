"""Bad input and interrupted work on the command line (issue 12): one-line errors with exit
status 2 before any work, exit status 1 for failed work, 130 / 143 for Ctrl-C / SIGTERM with
no worker left behind and a resumable state.

Exit codes and signals of real processes are tested in subprocesses; the rest calls
:func:`benchmark.cli.main` in this process (a subprocess costs seconds of imports).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from benchmark.cli import build_parser, main
from benchmark.dataset import layout
from benchmark.matrix import RUN_JSON

REPO = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _default_sigint() -> None:
    """In the child: Ctrl-C as in a terminal, even when the tests run in a background job
    (which ignores SIGINT, and a process inherits that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def gmd26(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmark.cli", *args],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"gmd26 {command}: "), err
    return err


linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


# ---------------------------------------------------------------------- refused input: exit 2


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    assert main(["info", str(tmp_path / "missing"), "--debug"]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    monkeypatch.setenv("GMD26_DEBUG", "1")
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "Traceback" in capsys.readouterr().err


TRAIN = ["train", "--task", "duplication", "--preset", "smoke", "--no-progress"]


def test_train_refuses_bad_arguments_before_training(smoke_data, tmp_path, capsys):
    data = ["--data", str(smoke_data)]
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cases = [
        (["--model", "deepset_mo", *data, "--out", str(tmp_path / "typo")],
         "unknown model 'deepset_mo' (did you mean 'deepset_moe'?)"),
        (["--model", "schnet", *data, "--out", str(a_file)],
         f"--out {a_file}: is a file, not a folder"),
        (["--model", "schnet", "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "x")],
         f"--data {tmp_path / 'nodata'}: no such folder"),
        (["--model", "schnet", *data, "--model-config", '{"hidden": 3}'],
         "--model-config for model 'schnet': unknown settings ['hidden']"),
        (["--model", "schnet", *data, "--model-config", "[1, 2]"], "must be a JSON object"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main([*TRAIN, *argv]) == 2, message
        assert message in one_error_line(capsys, "train")
    assert not (tmp_path / "typo").exists() and not (tmp_path / "x").exists()


@linux_only
def test_unwritable_output_folder_is_refused(smoke_data, capsys):
    try:  # root may write almost anywhere; /sys refuses even root
        tempfile.TemporaryFile(dir="/sys").close()
        pytest.skip("/sys is writable here")
    except OSError:
        pass
    argv = [*TRAIN, "--model", "schnet", "--data", str(smoke_data), "--out", "/sys/gmd26-run"]
    assert main(argv) == 2
    assert "--out /sys/gmd26-run: cannot write in /sys" in one_error_line(capsys, "train")


def test_unfinished_build_is_refused_as_training_data(smoke_data, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "manifests").mkdir(parents=True)
    build = json.loads((smoke_data / "build.json").read_text())
    (data / "build.json").write_text(json.dumps({**build, "status": "interrupted"}))
    argv = [*TRAIN, "--model", "schnet", "--data", str(data), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "its build did not finish (status 'interrupted')" in one_error_line(capsys, "train")


RUN = ["run", "--tasks", "duplication", "--preset", "smoke", "--no-report"]


def test_run_checks_the_whole_plan_before_the_first_cell(smoke_data, tmp_path, capsys):
    out = tmp_path / "run"
    data = ["--data", str(smoke_data), "--out", str(out)]
    cases = [
        (["--models", "deepset_moe", "schnett", *data], "unknown model 'schnett' (did you mean"),
        (["--models", "schnet", *data, "--model-configs", '{"schnet": {"hidden": 1}}'],
         "--model-configs for model 'schnet': unknown settings ['hidden']"),
        (["--models", "schnet", *data, "--model-configs", '{"painn": {}}'],
         "--model-configs: ['painn'] not among --models"),
        (["--models", "schnet", *data, "--preset-overrides", '{"max_stepz": 3}'],
         "--preset-overrides: unknown preset fields ['max_stepz']"),
        (["--models", "schnet", *data, "--preset-overrides", '{"lr": -1}'], "lr must be > 0"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main([*RUN, *argv]) == 2, message
        assert message in one_error_line(capsys, "run")
        assert not out.exists(), "a refused plan must not create the run folder"
    with pytest.raises(SystemExit) as stop:  # argparse: one usage line, exit 2
        main([*RUN, "--models", "schnet", *data, "--seeds", "0"])
    assert stop.value.code == 2
    assert "--seeds: expected a whole number >= 1, got 0" in capsys.readouterr().err


def test_run_into_a_folder_of_another_protocol(smoke_data, tmp_path, capsys):
    """Issue 12 case 4 through the CLI: one line, exit 2, no cell started."""
    out = tmp_path / "run"
    out.mkdir()
    plan = {"preset": "quick", "preset_overrides": {}, "model_configs": {},
            "data_dir": str(smoke_data), "cell_minutes": None, "threads_per_cell": 1}  # fmt: skip
    (out / RUN_JSON).write_text(json.dumps({"plan": plan}))
    assert main([*RUN, "--models", "schnet", "--data", str(smoke_data), "--out", str(out)]) == 2
    assert "holds a run with another protocol (preset 'quick' -> 'smoke')" in one_error_line(
        capsys, "run"
    )
    assert sorted(p.name for p in out.iterdir()) == [RUN_JSON]


def test_damaged_run_record_is_named(smoke_data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / RUN_JSON).write_text('{"plan": {"preset"')  # damaged from outside
    assert main([*RUN, "--models", "schnet", "--data", str(smoke_data), "--out", str(out)]) == 2
    error = one_error_line(capsys, "run")
    assert f"{out / RUN_JSON}: damaged" in error and "move it away" in error


def test_other_commands_refuse_bad_paths_first(smoke_data, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cases = [
        ("build", ["build", "--preset", "smoke", "--out", str(a_file)], "is a file, not a folder"),
        ("explain", ["explain", str(tmp_path / "none.pt"), "--out", str(a_file)],
         "is a file, not a folder"),  # found before the checkpoint is read or anything computed
        ("explain", ["explain", str(tmp_path / "none.pt"), "--out", str(tmp_path / "e")],
         "no checkpoint at"),
        ("report", ["report", str(tmp_path / "none")], "no such folder"),
        ("info", ["info", str(a_file)], "is a file, not a folder"),
    ]  # fmt: skip
    for command, argv, message in cases:
        assert main(argv) == 2, argv
        assert message in one_error_line(capsys, command)


def test_help_shows_defaults_and_right_examples():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    build, train, run = (commands[n].format_help() for n in ("build", "train", "run"))
    assert "default: standard" in build and "40 min" in build
    assert str(layout.DEFAULT_DATA_DIR) in " ".join(build.split())
    assert "default: quick" in train and "runs/<task>/<model>/<preset>-seed<seed>" in train
    assert "--data data " not in train and "--resume" in train and "--overwrite" in train
    assert "(default runs/gmd26)" in run and "exit status" in parser.format_help().lower()


# ---------------------------------------------------------------------- signals: 130 / 143


@linux_only
def test_ctrl_c_stops_a_build_and_its_workers_and_resume_is_identical(smoke_data, tmp_path):
    out = tmp_path / "build"
    reference = json.loads((smoke_data / "build.json").read_text())["reference"]
    argv = ["build", "--preset", "smoke", "--reference", reference, "--out", str(out)]
    process = gmd26(*argv, "--workers", "2", "--no-progress")
    frames = out / "frames"
    wait_for(lambda: len(children(process.pid)) >= 2 or process.poll() is not None, 120, "pool")
    wait_for(lambda: any(frames.glob("*/t*.xyz.gz")) or process.poll() is not None, 120, "frame")
    workers = children(process.pid)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        "gmd26 build: interrupted (SIGINT); run the same command again to resume"
    )
    wait_for(lambda: not any(alive(pid) for pid in workers), 10, "workers to end")
    build = layout.read_build_info(out)
    assert build["status"] == "interrupted" and build["stop_reason"] == "SIGINT"
    assert len(list(frames.glob("*/t*.xyz.gz"))) < 36
    assert not list(frames.glob("*/*.partial*"))
    assert main([*argv, "--workers", "1", "--no-progress"]) == 0
    assert layout.read_build_info(out)["status"] == "complete"
    for name in ("frames", "manifests"):
        for path in sorted((smoke_data / name).rglob("*")):
            if path.is_file():
                assert (out / path.relative_to(smoke_data)).read_bytes() == path.read_bytes()


@linux_only
def test_sigterm_stops_a_matrix_and_its_cells(smoke_data, tmp_path):
    out = tmp_path / "run"
    process = gmd26(
        *RUN, "--models", "schnet", "--seeds", "2", "--data", str(smoke_data), "--out", str(out),
        "--workers", "2", "--preset-overrides", '{"max_steps": 100000, "eval_every": 100000}',
    )  # fmt: skip
    def training() -> bool:
        return any(out.glob("duplication/schnet/seed*/train.log")) or process.poll() is not None

    wait_for(training, 180, "a cell to train")
    workers = children(process.pid)
    assert len(workers) >= 2
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("gmd26 run: interrupted (SIGTERM)")
    wait_for(lambda: not any(alive(pid) for pid in workers), 10, "cells to end")
    record = json.loads((out / RUN_JSON).read_text())
    assert record["invocations"][-1]["interrupted"] == "SIGTERM"
    assert not list(out.glob("*/*/seed*/result.json"))  # unfinished cells stay unfinished
