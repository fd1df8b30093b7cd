"""The ablation report compares variants of one model as the report compares models."""

from __future__ import annotations

import json
import shutil

import pytest

from benchmark.cli import main
from benchmark.matrix import cell_dir
from benchmark.report.ablation import ABLATION_MD, AblationError, ablation_report


def _variant(smoke_matrix, root, name, ood_factor=1.0):
    """A variant folder holding the smoke matrix's DeepSet-MoE cell, its OOD test error (and
    ratio) scaled by ``ood_factor``."""
    source = cell_dir(smoke_matrix, "duplication", "deepset_moe", 0)
    target = cell_dir(root / name, "duplication", "deepset_moe", 0)
    shutil.copytree(source, target)
    result = json.loads((target / "result.json").read_text())
    result["metrics"]["ood_test"]["force_mae"] *= ood_factor
    result["metrics"]["gap"]["force_mae"] *= ood_factor
    (target / "result.json").write_text(json.dumps(result))
    return root / name


def test_variants_are_compared_across_tasks(smoke_matrix, smoke_data, tmp_path):
    plain = _variant(smoke_matrix, tmp_path, "plain")
    worse = _variant(smoke_matrix, tmp_path, "worse_ood", ood_factor=2.0)
    report = ablation_report([plain, worse], tmp_path / "out", data_dir=smoke_data)
    rows = report["across_tasks"]
    assert rows["worse_ood"]["mean_ratio"] == pytest.approx(2 * rows["plain"]["mean_ratio"])
    assert rows["plain"]["id_relative_to_best"] == pytest.approx(1.0)
    assert rows["worse_ood"]["worst_ratio"] == pytest.approx(rows["worse_ood"]["mean_ratio"])
    probe = json.loads((plain / "duplication/deepset_moe/seed0/probe.json").read_text())
    assert rows["plain"]["mean_probe_ratio"] == pytest.approx(
        probe["ratio_to_id"]["all"]["force_mae"]
    )
    text = (tmp_path / "out" / ABLATION_MD).read_text()
    assert "| worse_ood | " in text and "| plain (2 seeds) |" not in text
    assert "| plain (1 seed) |" in text and "Compositional probe:" in text
    routing = report["tasks"]["duplication"]["routing"]
    assert set(routing) == {"plain", "worse_ood"} and routing["plain"] == routing["worse_ood"]
    assert 0 <= routing["plain"]["id"]["entropy_normalised"] <= 1
    assert "| plain (seed 0) |" in text
    assert (tmp_path / "out" / "figures" / "duplication_ablation.png").stat().st_size > 10_000


def test_folders_without_the_model_or_with_one_name_are_refused(smoke_matrix, tmp_path, capsys):
    plain = _variant(smoke_matrix, tmp_path, "plain")
    with pytest.raises(AblationError, match="no finished nequip cell"):
        ablation_report([plain], tmp_path / "out", model="nequip")
    with pytest.raises(AblationError, match="distinct names"):
        ablation_report([plain, plain], tmp_path / "out")
    assert main(["ablation", str(tmp_path / "out"), str(tmp_path / "missing")]) == 2
    assert "no such run folder" in capsys.readouterr().err
