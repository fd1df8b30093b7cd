"""``gmd26 explain`` on a tiny built dataset directory and a small DeepSet-MoE checkpoint."""

from __future__ import annotations

import dataclasses
import json

import pytest

from benchmark.cli import main
from benchmark.dataset.frames import write_frames
from benchmark.dataset.layout import manifest_path, trajectory_path
from benchmark.dataset.splits import make_manifest, trajectory_id
from benchmark.dataset.tasks import define_task
from deepset_moe import AtomicReferenceEnergies
from deepset_moe.checkpoint import save_checkpoint
from tests.small_deepset_moe import molecule_frame, small_model, torch_threads

TASK = "duplication"
TRAJECTORIES = 3


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Manifest of the smoke duplication task; one frame per id_test / ood_test trajectory."""
    root = tmp_path_factory.mktemp("data")
    manifest = make_manifest(define_task(TASK, "smoke"), TRAJECTORIES)
    manifest_path(root, TASK).parent.mkdir(parents=True)
    manifest_path(root, TASK).write_text(json.dumps(manifest))
    for split in ("id_test", "ood_test"):
        for entry in manifest["splits"][split]:
            for index in entry["trajectories"]:
                frame = dataclasses.replace(
                    molecule_frame(entry["smiles"], seed=index),
                    molecule_id=entry["molecule_id"],
                    trajectory_id=trajectory_id(entry["molecule_id"], index),
                )
                write_frames(trajectory_path(root, entry["molecule_id"], index), [frame])
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    network = small_model(readout="mlp")
    path = tmp_path_factory.mktemp("run") / "best.pt"
    save_checkpoint(
        path,
        model_name="deepset_moe",
        model_config=network.config.to_dict(),
        network=network,
        e0=AtomicReferenceEnergies({1: -13.6, 6: -1030.0}),
        training={"task": TASK},
    )
    return path


def test_explain_both_splits(data_dir, checkpoint, tmp_path, capsys):
    out = tmp_path / "explain"
    argv = ["explain", str(checkpoint), "--data", str(data_dir), "--out", str(out)]
    with torch_threads(1):
        code = main([*argv, "--max-molecules", "3", "--n-steps", "8"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "ID atoms" in printed and "OOD atoms" in printed and "expert_3" in printed
    payload = json.loads((out / "attribution.json").read_text())
    assert payload["task"] == TASK and set(payload["splits"]) == {"id", "ood"}
    assert payload["splits"]["id"]["molecules"] == 3  # evenly spaced subset of 4 frames
    assert payload["splits"]["ood"]["molecules"] == 3  # 2 molecules x 3 trajectories, capped
    assert payload["splits"]["ood"]["completeness"]["max_abs_delta"] < 1e-6
    assert (out / "attribution.png").stat().st_size > 10_000


def test_explain_errors_name_the_problem(data_dir, checkpoint, tmp_path, capsys):
    assert main(["explain", str(tmp_path / "missing.pt"), "--data", str(data_dir)]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    argv = ["explain", str(checkpoint), "--task", "elongation", "--data", str(data_dir)]
    assert main([*argv, "--split", "ood", "--out", str(tmp_path)]) == 2
    assert "elongation" in capsys.readouterr().err
