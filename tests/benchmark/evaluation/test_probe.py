"""Cells are scored on the compositional probe after training, and later from best.pt alike."""

from __future__ import annotations

import json
import shutil

import pytest

from benchmark.cli import main
from benchmark.evaluation.probe import PROBE_FILE, probe_run
from benchmark.matrix import cell_dir


def _probe(run, model):
    path = cell_dir(run, "duplication", model, 0) / PROBE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def test_trained_cells_are_scored_on_the_probe_the_failed_one_is_not(smoke_matrix):
    for model in ("deepset_moe", "schnet"):
        probe = _probe(smoke_matrix, model)
        assert probe["task"] == "duplication" and probe["model"] == model
        assert probe["molecules"] == {"long_di": ["nh2-c8-nh2", "oh-c8-oh"],
                                      "long_mixed": ["oh-c8-nh2"]}
        result = json.loads((cell_dir(smoke_matrix, "duplication", model, 0)
                             / "result.json").read_text())
        id_force = result["metrics"]["id_test"]["force_mae"]
        for family in ("all", "long_di", "long_mixed"):
            force = probe["metrics"][family]["force_mae"]
            assert force > 0
            assert probe["ratio_to_id"][family]["force_mae"] == pytest.approx(force / id_force)
    assert _probe(smoke_matrix, "painn") is None


def test_scoring_later_from_best_pt_gives_what_the_cell_wrote(smoke_matrix, smoke_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(smoke_matrix, run)
    kept = probe_run(run, smoke_data, log=lambda line: None)
    assert kept == {"scored": 0, "kept": 2, "no_checkpoint": 0, "not_ok": 1}
    lines = []
    for model in ("deepset_moe", "schnet"):
        (cell_dir(run, "duplication", model, 0) / PROBE_FILE).unlink()
    (cell_dir(run, "duplication", "schnet", 0) / "best.pt").unlink()
    counts = probe_run(run, smoke_data, log=lines.append)
    assert counts == {"scored": 1, "kept": 0, "no_checkpoint": 1, "not_ok": 1}
    assert any("schnet/seed0: no best.pt" in line for line in lines)
    later, during = _probe(run, "deepset_moe"), _probe(smoke_matrix, "deepset_moe")
    for family, metrics in during["metrics"].items():
        for name, value in metrics.items():
            assert later["metrics"][family][name] == pytest.approx(value, rel=1e-5), (family, name)


def test_gmd26_probe_refuses_a_dataset_without_a_probe(smoke_matrix, tmp_path, capsys):
    (tmp_path / "data").mkdir()
    status = main(["probe", str(smoke_matrix), "--data", str(tmp_path / "data")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1
    assert err.startswith("gmd26 probe: ") and "has no probe" in err and "gmd26 build" in err


def test_gmd26_probe_scores_a_run(smoke_matrix, smoke_data, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(smoke_matrix, run)
    assert main(["probe", str(run), "--data", str(smoke_data), "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "duplication/deepset_moe/seed0: probe force MAE" in out
    assert "scored: 2, kept: 0, no checkpoint: 0, not ok: 1" in out
