"""A training run's folder is never overwritten or misreported (issue 12, case 3 and the
"train into a finished folder" case): refused without --resume / --overwrite, resume checks
task, data, preset, seed and model, and an interrupted run resumes from its last round."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.errors import ResumeMismatchError, RunFolderError
from benchmark.training.experiment import check_run_folder, train
from benchmark.training.presets import get_preset
from benchmark.training.trainer import resume_mismatches
from deepset_moe.checkpoint import read_checkpoint
from tests.small_deepset_moe import SMALL_CONFIG

SHORT = {"max_steps": 4, "eval_every": 2}
"""Two rounds of two steps: seconds."""


def _train(data: Path, out: Path, **kwargs):
    kwargs.setdefault("preset_overrides", SHORT)
    return train(
        "deepset_moe", "duplication", "smoke", data, out, 0,
        model_settings=SMALL_CONFIG, progress=False, **kwargs,
    )  # fmt: skip


@pytest.fixture(scope="module")
def finished(smoke_data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert _train(smoke_data, out)["status"] == "ok"
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _cli_train(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--task", "duplication", "--model", "deepset_moe", "--preset", "smoke",
        "--data", str(data), "--out", str(out), "--no-progress",
        "--model-config", json.dumps(SMALL_CONFIG), *extra,
    ]  # fmt: skip


def test_train_into_a_finished_folder_is_refused(smoke_data, finished, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    before = _snapshot(out)
    assert main(_cli_train(smoke_data, out)) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"gmd26 train: {out} already holds a finished run (metrics.json status ok); continue "
        "it with --resume, replace it with --overwrite, or choose another --out"
    )
    assert _snapshot(out) == before  # best.pt, last.pt, metrics.json untouched


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (["--task", "elongation"], "task 'duplication' -> 'elongation'"),
        (["--seed", "3"], "seed 0 -> 3"),
        (["--model", "schnet", "--model-config", "{}"], "model 'deepset_moe' -> 'schnet'"),
    ],
)
def test_resume_refuses_a_checkpoint_of_another_run(
    smoke_data, finished, tmp_path, capsys, change, expected
):
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    before = _snapshot(out)
    assert main([*_cli_train(smoke_data, out), "--resume", *change]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gmd26 train: cannot resume {out / 'last.pt'}: it was written by")
    assert expected in err and len(err.splitlines()) == 1
    assert _snapshot(out) == before


def test_resume_compares_preset_data_and_settings(finished, tmp_path):
    payload = read_checkpoint(finished / "last.pt")
    settings = payload["model_config"]
    training = payload["training"]
    preset = get_preset("smoke", **SHORT)
    run_info = {key: training[key] for key in ("task", "preset_name", "data_dir", "data_build")}
    same = dict(model_name="deepset_moe", model_config=settings, seed=0, run_info=run_info)
    assert resume_mismatches(payload, preset=preset, **same) == []
    # a longer budget or another safety cap may continue a run
    longer = preset.replace(max_steps=99, max_minutes=1)
    assert resume_mismatches(payload, preset=longer, **same) == []
    assert resume_mismatches(payload, preset=preset.replace(lr=0.5), **same) == [
        "preset setting lr 0.002 -> 0.5"
    ]
    other_data = {**run_info, "data_build": {**run_info["data_build"], "seed": 7}}
    assert resume_mismatches(payload, preset=preset, **{**same, "run_info": other_data}) == [
        "data seed 0 -> 7"
    ]
    moved = {**run_info, "data_dir": str(tmp_path / "moved")}  # same build elsewhere: fine
    assert resume_mismatches(payload, preset=preset, **{**same, "run_info": moved}) == []
    wider = {**settings, "latent_dim": 32}
    assert resume_mismatches(payload, preset=preset, **{**same, "model_config": wider}) == [
        f"model setting latent_dim {settings['latent_dim']} -> 32"
    ]


def test_resume_without_last_pt_of_a_finished_run_is_refused(finished, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    (out / "last.pt").unlink()
    payload = read_checkpoint(out / "best.pt")
    with pytest.raises(RunFolderError, match=r"no last\.pt to resume from"):
        check_run_folder(
            out, resume=True, overwrite=False, model_name="deepset_moe",
            model_config=payload["model_config"], seed=0, preset=get_preset("smoke"),
            run_info={},
        )  # fmt: skip


class InterruptAt:
    """A callback pressing Ctrl-C at the end of round ``epoch`` (before its checkpoint)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, epoch, model, writer, loaders) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_interrupted_training_keeps_the_last_round_and_resumes(smoke_data, finished, tmp_path):
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        _train(smoke_data, out, callbacks=[InterruptAt(2)])
    assert not (out / "metrics.json").exists()
    assert read_checkpoint(out / "last.pt")["training"]["epoch"] == 1
    assert "last.pt keeps round 1: resume to continue" in (out / "train.log").read_text()
    with pytest.raises(RunFolderError, match=r"an unfinished run \(last.pt at round 1\)"):
        _train(smoke_data, out)  # neither resume nor overwrite
    result = _train(smoke_data, out, resume=True, callbacks=[])
    assert result["status"] == "ok" and result["training"]["steps"] == SHORT["max_steps"]
    reference = json.loads((finished / "metrics.json").read_text())
    assert result["metrics"] == reference["metrics"]  # resumed exactly


def test_overwrite_replaces_the_run(smoke_data, finished, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ResumeMismatchError, match="seed 0 -> 1"):
        train("deepset_moe", "duplication", "smoke", smoke_data, out, 1, resume=True,
              model_settings=SMALL_CONFIG, preset_overrides=SHORT, progress=False)  # fmt: skip
    result = _train(smoke_data, out, overwrite=True, preset_overrides={**SHORT, "max_steps": 2})
    assert result["status"] == "ok" and result["training"]["steps"] == 2
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files are replaced
    log = (out / "train.log").read_text()
    assert log.count("training deepset_moe") == 1
