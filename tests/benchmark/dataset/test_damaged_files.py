"""Damaged data files are named, never read as "fewer frames", and a resumed build computes
them again (issue 12, case 2); overlapping atoms in a stored frame are refused (case 6)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.dataset import layout
from benchmark.dataset.build import build_dataset
from benchmark.dataset.frames import DataFormatError, read_frames, write_frames
from benchmark.dataset.layout import count_frames, read_trajectory
from benchmark.dataset.statistics import dataset_statistics
from tests.benchmark.dataset.test_frames import make_frame


def stored_bytes(out: Path) -> dict[str, bytes]:
    files = sorted((out / "frames").rglob("*")) + sorted((out / "manifests").glob("*.json"))
    files.append(out / "failures.json")
    return {str(p.relative_to(out)): p.read_bytes() for p in files if p.is_file()}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_empty_file_is_named_by_every_reader(tmp_path):
    path = tmp_path / "t0.xyz.gz"
    path.write_bytes(b"")
    for read in (read_frames, count_frames):
        with pytest.raises(DataFormatError, match=r"t0\.xyz\.gz: empty file \(0 bytes\)"):
            read(path)


def test_truncated_gzip_is_named_by_the_frame_counter(tmp_path):
    """``count_frames`` (used by the build) used to raise a bare EOFError naming no file."""
    path = tmp_path / "t1.xyz.gz"
    write_frames(path, [make_frame(np.random.default_rng(i), 8, i, True) for i in range(4)])
    _truncate(path)
    with pytest.raises(DataFormatError, match=r"t1\.xyz\.gz: unreadable \(Compressed file"):
        count_frames(path)


def test_a_valid_but_empty_trajectory_needs_a_failure_record(tmp_path):
    path = layout.trajectory_path(tmp_path, "oh-c2", 1)
    write_frames(path, [])  # a valid gzip stream of zero frames
    with pytest.raises(DataFormatError, match="holds no frames and no failure record"):
        read_trajectory(tmp_path, "oh-c2", 1)
    failures = layout.trajectory_failures_path(tmp_path, "oh-c2", 1)
    failures.write_text(json.dumps({"failures": []}))
    assert read_trajectory(tmp_path, "oh-c2", 1) == []


def test_overlapping_atoms_in_a_stored_frame_are_refused(tmp_path):
    frame = make_frame(np.random.default_rng(0), 5, 0, True)
    frame.positions = np.array([[0, 0, 0], [1.5, 0, 0], [1.5, 0.05, 0], [3, 0, 0], [0, 3, 0.0]])
    path = tmp_path / "overlap.xyz"
    write_frames(path, [frame])
    with pytest.raises(DataFormatError, match=r"overlap\.xyz frame 0: atoms 1 and 2 are 0\.05"):
        read_frames(path)


def test_info_and_resume_with_damaged_trajectories(smoke_data, tmp_path, capsys):
    """gmd26 info names the damaged file (exit 2) instead of counting fewer molecules; the
    resumed build names both damaged files, recomputes them and ends byte-identical, with
    build.json complete."""
    out = tmp_path / "damaged"
    shutil.copytree(smoke_data, out)
    empty = sorted((out / "frames").glob("*/t0.xyz.gz"))[0]
    truncated = sorted((out / "frames").glob("*/t1.xyz.gz"))[-1]
    empty.write_bytes(b"")
    _truncate(truncated)
    assert main(["info", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("gmd26 info: ") and "empty file (0 bytes)" in error
    assert len(error.splitlines()) == 1
    with pytest.raises(DataFormatError):
        dataset_statistics(out)

    reference = json.loads((smoke_data / "build.json").read_text())["reference"]
    summary = build_dataset(out, "smoke", reference, workers=1, progress=False)
    assert summary.ok and summary.computed_trajectories == 2
    names = {entry.split(":")[0] for entry in summary.damaged}
    expected = {f"{p.parent.name}/{p.name.removesuffix('.xyz.gz')}" for p in (empty, truncated)}
    assert names == expected
    log = (out / "build.log").read_text()
    assert "damaged trajectory" in log and "empty file (0 bytes)" in log
    assert stored_bytes(out) == stored_bytes(smoke_data)
    assert layout.read_build_info(out)["status"] == "complete"


def test_fewer_frames_without_a_failure_record_are_recomputed(smoke_data, tmp_path, capsys):
    out = tmp_path / "short"
    shutil.copytree(smoke_data, out)
    path = sorted((out / "frames").glob("*/t2.xyz.gz"))[0]
    write_frames(path, read_frames(path)[:-1])  # a valid file that lost its last frame
    reference = json.loads((smoke_data / "build.json").read_text())["reference"]
    argv = ["build", "--preset", "smoke", "--reference", reference, "--out", str(out)]
    assert main([*argv, "--workers", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "recomputed damaged trajectory" in printed and "and no failure record" in printed
    assert stored_bytes(out) == stored_bytes(smoke_data)
    with gzip.open(path, "rt") as handle:
        assert handle.read().count("Properties=") == layout.read_build_info(out)[
            "frames_per_trajectory"
        ]


def test_a_build_that_fails_says_so_in_build_json(smoke_data, tmp_path, monkeypatch):
    """An error after the build started leaves status 'failed' with the reason, never
    'running' (an interrupted one: 'interrupted', see tests/benchmark/cli/test_errors.py)."""
    from benchmark.dataset import build as build_module

    out = tmp_path / "failing"
    shutil.copytree(smoke_data, out)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(build_module, "_write_manifests", broken)
    reference = json.loads((smoke_data / "build.json").read_text())["reference"]
    with pytest.raises(RuntimeError, match="disk full"):
        build_dataset(out, "smoke", reference, workers=1, progress=False)
    record = layout.read_build_info(out)
    assert record["status"] == "failed" and record["stop_reason"] == "RuntimeError: disk full"
