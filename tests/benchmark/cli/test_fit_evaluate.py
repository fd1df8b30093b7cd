"""``gmd26 fit`` and ``gmd26 evaluate`` end to end on a data set written the way ASE users write
theirs (SinglePointCalculator ``energy`` / ``forces``, MMFF94 labels, with F and Cl): train
DeepSet-MoE and a baseline, evaluate both on the files, and run MD with the checkpoint through
the ASE calculator."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
import yaml
from ase import units
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet

from benchmark.cli import main
from deepset_moe.calculator import PotentialCalculator
from tests.own_data import (
    HALIDE_PATTERN,
    TEST_SMILES,
    TINY_DEEPSET_MOE,
    TINY_PAINN,
    TINY_TRAINING,
    TRAIN_SMILES,
    write_ase_style,
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Data files and two configs (relative paths: resolved against the config's folder)."""
    root = tmp_path_factory.mktemp("own_data_cli")
    write_ase_style(root / "train.xyz", TRAIN_SMILES, 6)
    write_ase_style(root / "test.xyz", TEST_SMILES, 3, seed=20)
    common = {
        "train_file": "train.xyz",
        "valid_fraction": 0.2,
        "test_file": ["test.xyz"],
        "energy_key": "energy",
        "forces_key": "forces",
        "e0": "fit",
        "training": TINY_TRAINING,
        "seed": 0,
        "routing_logging": False,
    }
    configs = {
        "deepset_moe": {
            **common,
            "model": {"name": "deepset_moe", "router_mode": "hybrid", **TINY_DEEPSET_MOE},
            "fragments": {"source": "perceive", "patterns": HALIDE_PATTERN},
            "out": "runs/deepset_moe",
        },
        "painn": {**common, "model": {"name": "painn", **TINY_PAINN}, "out": "runs/painn"},
    }
    for name, config in configs.items():
        (root / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def trained(workspace):
    """``gmd26 fit`` of both configs; returns the output folders."""
    outs = {}
    for name in ("deepset_moe", "painn"):
        code = main(["fit", str(workspace / f"{name}.yaml"), "--no-progress"])
        assert code == 0, name
        outs[name] = workspace / "runs" / name
    return outs


def test_fit_writes_checkpoint_config_and_tensorboard(trained, capsys):
    for name, out in trained.items():
        assert (out / "best.pt").exists() and (out / "fit_config.yaml").exists()
        assert list((out / "tensorboard").glob("events.out.tfevents.*")), name
        resolved = yaml.safe_load((out / "fit_config.yaml").read_text())
        assert resolved["resolved"]["elements"] == ["H", "C", "O", "F", "Cl"]
        metrics = json.loads((out / "metrics.json").read_text())
        assert set(metrics["metrics"]) == {"valid", "test.xyz"}
    dsm = yaml.safe_load((trained["deepset_moe"] / "fit_config.yaml").read_text())
    assert dsm["model"]["atomic_numbers"] == [1, 6, 8, 9, 17]
    assert "halide" in dsm["resolved"]["fragment_vocabulary"]


def test_evaluate_reports_per_file_and_per_element(trained, workspace, capsys):
    files = [str(workspace / "test.xyz"), str(workspace / "train.xyz@0:5")]
    for name, out in trained.items():
        report = workspace / f"eval_{name}.json"
        code = main(["evaluate", str(out / "best.pt"), *files, "--json", str(report)])
        printed = capsys.readouterr().out
        assert code == 0, name
        assert "Force MAE (eV/Å)" in printed and "per element" in printed
        assert "test.xyz" in printed and "Cl" in printed
        result = json.loads(report.read_text())
        assert set(result["metrics"]) == {"test.xyz", "train.xyz@0:5", "all"}
        assert result["metrics"]["train.xyz@0:5"]["frames"] == 5
        assert result["metrics"]["all"]["frames"] == 5 + 3
        assert set(result["per_element"]["all"]) == {"H", "C", "O", "F", "Cl"}
        assert result["keys"]["test.xyz"] == {"energy": "energy", "forces": "forces"}
        assert np.isfinite(result["metrics"]["all"]["force_mae"])
        if name == "deepset_moe":  # fragments perceived with the checkpoint's vocabulary
            assert result["fragments"] == "perceive"
            assert "halide" in result["per_fragment"]["all"]
        else:
            assert result["fragments"] == "none" and result["per_fragment"] is None


def test_md_with_the_checkpoint_through_the_ase_calculator(trained):
    """Fragment-aware DeepSet-MoE on a molecule with both halogens: the calculator perceives
    the fragments (halide included) from the geometry, and NVE dynamics run and conserve energy."""
    atoms = ase.io.read(trained["deepset_moe"].parent.parent / "test.xyz", 0)
    atoms.calc = PotentialCalculator(trained["deepset_moe"] / "best.pt")
    thermalize_momenta(atoms, 300, rng=np.random.default_rng(0))
    total = []
    dynamics = VelocityVerlet(atoms, timestep=0.25 * units.fs)
    dynamics.attach(lambda: total.append(atoms.get_total_energy()), interval=1)
    dynamics.run(20)
    assert np.isfinite(total).all() and atoms.get_forces().shape == (len(atoms), 3)
    assert np.ptp(total) < 1e-3, np.ptp(total)  # eV, over 5 fs
    names = atoms.calc.vocabulary.names
    labels = atoms.calc.fragment_labels(atoms)
    assert (labels[np.isin(atoms.numbers, (9, 17))] == names.index("halide")).all()


def test_wrong_key_fails_before_training(workspace, capsys):
    config = yaml.safe_load((workspace / "painn.yaml").read_text())
    config.update(energy_key="dft_energy", out="runs/wrong_key")
    path = workspace / "wrong_key.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["fit", str(path)]) == 2  # input refused, nothing trained
    error = capsys.readouterr().err
    assert error.startswith("gmd26 fit: ") and "no energy under energy_key 'dft_energy'" in error
    assert "calculator results ['energy', 'forces']" in error
    assert not (workspace / "runs" / "wrong_key").exists()


def test_evaluate_refuses_unknown_elements(trained, workspace, capsys):
    from tests.own_data import labelled_structures

    amine = workspace / "amine.xyz"
    ase.io.write(amine, labelled_structures("NCCO", 1), format="extxyz")
    assert main(["evaluate", str(trained["painn"] / "best.pt"), str(amine)]) == 2
    assert "['N'] the model was not trained on" in capsys.readouterr().err
