"""``benchmark.training.fit`` and ``benchmark.dataset.external``: training any model on your own
files (Python API). Data are written the way ASE users write theirs (tests/own_data.py), with
fluorine and chlorine, outside GMD-26's H, C, N, O."""

from __future__ import annotations

import ase
import ase.db
import ase.io
import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from benchmark.dataset import external
from benchmark.dataset.external import ExternalDataError
from benchmark.training.fit import (
    CONFIG_FILE,
    FitConfigError,
    fit,
    load_config,
    parse_config,
    prepare,
)
from deepset_moe.calculator import PotentialCalculator
from deepset_moe.checkpoint import load_potential, read_checkpoint
from tests.own_data import (
    HALIDE_PATTERN,
    TEST_SMILES,
    TINY_DEEPSET_MOE,
    TINY_TRAINING,
    TRAIN_SMILES,
    labelled_structures,
    write_ase_style,
    write_custom_keys,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_data")
    write_ase_style(root / "train.xyz", TRAIN_SMILES, 6)
    write_ase_style(root / "valid.xyz", TRAIN_SMILES, 2, seed=10)
    write_ase_style(root / "test.xyz", TEST_SMILES, 3, seed=20)
    write_custom_keys(root / "custom.xyz", TRAIN_SMILES, 3, "dft_energy", "dft_forces")
    return root


def config(data, **changes):
    base = {
        "model": {"name": "deepset_moe", **TINY_DEEPSET_MOE},
        "train_file": str(data / "train.xyz"),
        "valid_file": str(data / "valid.xyz"),
        "training": dict(TINY_TRAINING),
        "routing_logging": False,
    }
    base.update(changes)
    return base


def plan_of(raw):
    raw, base = load_config(raw)
    return prepare(parse_config(raw, base))


def test_wrong_key_fails_before_training_and_lists_the_keys(data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ExternalDataError) as error:
        fit(config(data, energy_key="total_energy", out=str(out)))
    message = str(error.value)
    assert "train.xyz frame 0" in message and "'total_energy'" in message
    assert "calculator results ['energy', 'forces']" in message
    assert not out.exists()  # nothing written, nothing trained

    with pytest.raises(ExternalDataError, match=r"per-atom arrays \['dft_forces'\]"):
        plan_of(
            config(
                data,
                train_file=str(data / "custom.xyz"),
                valid_fraction=0.25,
                valid_file=None,
                energy_key="dft_energy",
            )
        )


def test_label_keys_default_and_custom(data, tmp_path):
    ase_plan = plan_of(config(data))
    assert (ase_plan.energy_key, ase_plan.forces_key) == ("energy", "forces")
    reference = labelled_structures("FCCO", 1)[0]
    assert ase_plan.train[0].energy == pytest.approx(reference.get_potential_energy())
    np.testing.assert_allclose(ase_plan.train[0].forces, reference.get_forces(), atol=1e-6)

    custom = plan_of(
        config(
            data,
            train_file=str(data / "custom.xyz"),
            valid_file=None,
            valid_fraction=0.25,
            split_by="molecule",
            energy_key="dft_energy",
            forces_key="dft_forces",
            energy_unit="kcal/mol",
        )
    )
    assert custom.energy_key == "dft_energy"
    assert {f.molecule_id for f in custom.valid}.isdisjoint({f.molecule_id for f in custom.train})
    assert custom.valid_molecules and set(custom.valid_molecules) <= set(TRAIN_SMILES)
    structures = external.read_structures(data / "custom.xyz@0:1")
    (frame,) = external.frames_from_structures(
        structures,
        "custom.xyz",
        energy_key="dft_energy",
        forces_key="dft_forces",
        energy_scale=external.ENERGY_UNITS["kcal/mol"],
    )
    assert frame.energy == pytest.approx(0.0433641 * structures[0].info["dft_energy"], rel=1e-5)
    assert frame.molecule_id == TRAIN_SMILES[0]

    # GMD-26's own ref_energy / ref_forces are found without keys too; so is an ASE database
    gmd = tmp_path / "gmd.xyz"
    plain = []
    for atoms in labelled_structures("CCF", 3):
        copy = ase.Atoms(atoms.numbers, atoms.positions)
        copy.info["ref_energy"] = atoms.get_potential_energy()
        copy.arrays["ref_forces"] = atoms.get_forces()
        plain.append(copy)
    ase.io.write(gmd, plain, format="extxyz")
    database = tmp_path / "data.db"
    with ase.db.connect(database) as db:
        for atoms in labelled_structures("ClCCO", 3):
            db.write(atoms, molecule_id="ClCCO")
    for name in (gmd, database):
        structures = external.read_structures(name)
        keys = external.resolve_label_keys(structures, str(name))
        frames = external.frames_from_structures(
            structures, str(name), energy_key=keys[0], forces_key=keys[1]
        )
        assert len(frames) == 3 and np.isfinite(frames[0].forces).all()
    assert frames[0].molecule_id == "ClCCO"  # database key-value pairs are read
    assert len(external.read_structures(f"{database}@0:2")) == 2


def test_elements_and_routing_come_from_the_data(data):
    plan = plan_of(config(data))  # no fragment array in the files: fragments auto -> none
    assert plan.fragment_source == "none"
    assert plan.model_settings["atomic_numbers"] == [1, 6, 8, 9, 17]
    assert plan.model_settings["router_mode"] == "identity"  # the default reads no labels
    learned = plan_of(config(data, model={"name": "deepset_moe", "router_mode": "learned"}))
    assert learned.model_settings["router_mode"] == "learned"
    painn = plan_of(config(data, model={"name": "painn", "features": 8}))
    assert painn.model_settings["elements"] == [1, 6, 8, 9, 17]

    with pytest.raises(FitConfigError, match="router_mode 'hybrid' reads fragment labels"):
        plan_of(config(data, model={"name": "deepset_moe", "router_mode": "hybrid"}))
    with pytest.raises(FitConfigError, match=r"lacks training element\(s\) \['F', 'Cl'\]"):
        plan_of(config(data, model={"name": "deepset_moe", "atomic_numbers": [1, 6, 7, 8]}))
    with pytest.raises(FitConfigError, match=r"element\(s\) \['N'\] that no training frame has"):
        test = data / "amine.xyz"
        ase.io.write(test, labelled_structures("NCCF", 1), format="extxyz")
        plan_of(config(data, test_file=str(test)))


def test_identity_routing_trains_on_any_element_without_fragments(data, tmp_path):
    """No fragment labels anywhere: identity routing learns F and Cl, and the checkpoint
    drives the ASE calculator without perceiving anything."""
    raw = config(
        data,
        model={"name": "deepset_moe", **TINY_DEEPSET_MOE, "router_mode": "identity"},
        training={**TINY_TRAINING, "max_steps": 2},
        out=str(tmp_path / "identity"),
    )
    result = fit(raw, progress=False)
    assert result["status"] == "ok" and result["per_fragment"] is None
    assert {"F", "Cl"} <= set(result["per_element"]["valid"])
    atoms = labelled_structures(TEST_SMILES[0], 1)[0]
    atoms.calc = PotentialCalculator(result["checkpoint"])
    assert not atoms.calc.needs_fragments
    assert np.isfinite(atoms.get_potential_energy()) and np.isfinite(atoms.get_forces()).all()


def test_fragment_vocabulary_extended_from_the_config(data):
    plan = plan_of(
        config(
            data,
            model={"name": "deepset_moe", "router_mode": "hybrid"},
            fragments={"source": "perceive", "patterns": HALIDE_PATTERN},
        )
    )
    names = plan.vocabulary.names
    assert "halide" in names and plan.model_settings["router_mode"] == "hybrid"
    assert plan.model_settings["fragments"]["patterns"][-1] == ["halide", "[F,Cl,Br,I:1]"]
    for frame in plan.train:
        halogen = np.isin(frame.numbers, (9, 17))
        assert (frame.fragment[halogen] == names.index("halide")).all()
        hydroxyl_o = frame.numbers == 8
        assert (frame.fragment[hydroxyl_o] == names.index("hydroxyl")).all()

    # chlorine covered by no pattern: the error names the atom and the molecule
    only_f = {"source": "perceive", "patterns": {"fluoride": "[F:1]"}}
    with pytest.raises(ExternalDataError) as error:
        plan_of(config(data, fragments=only_f))
    message = str(error.value)
    assert (
        "train.xyz frame" in message and "(Cl)" in message and "covered by no fragment" in message
    )
    assert "molecule train.xyz:" in message

    other = plan_of(config(data, fragments={**only_f, "other": "other"}))
    chlorine = next(f for f in other.train if 17 in f.numbers)
    assert other.vocabulary.names[-1] == "other"
    assert (chlorine.fragment[chlorine.numbers == 17] == len(other.vocabulary) - 1).all()

    with pytest.raises(FitConfigError, match="invalid SMARTS"):
        plan_of(config(data, fragments={"source": "perceive", "patterns": {"bad": "[F"}}))


def test_e0_modes(data, tmp_path):
    fitted = plan_of(config(data)).e0.as_dict()
    assert set(fitted) == {1, 6, 8, 9, 17}
    average = plan_of(config(data, e0="average")).e0.as_dict()
    assert len(set(average.values())) == 1 and set(average) == {1, 6, 8, 9, 17}
    table = {"H": -1.0, "C": -2.0, "O": -3.0, "F": -4.0, "Cl": -5.0}
    assert plan_of(config(data, e0=table)).e0.as_dict() == {
        1: -1.0,
        6: -2.0,
        8: -3.0,
        9: -4.0,
        17: -5.0,
    }
    assert plan_of(config(data, e0="none")).e0.as_dict() == {}
    with pytest.raises(FitConfigError, match=r"lacks element\(s\) \['Cl'\]"):
        plan_of(config(data, e0={k: v for k, v in table.items() if k != "Cl"}))

    # isolated atoms in the training file give E0 and leave the training set
    atoms_file = tmp_path / "with_atoms.xyz"
    structures = list(ase.io.read(data / "train.xyz", ":"))
    for number, energy in zip((1, 6, 8, 9, 17), (-0.5, -1.5, -2.5, -3.5, -4.5), strict=True):
        atom = ase.Atoms(numbers=[number], positions=[[0, 0, 0]])
        atom.calc = ase.calculators.singlepoint.SinglePointCalculator(
            atom, energy=energy, forces=np.zeros((1, 3))
        )
        structures.append(atom)
    ase.io.write(atoms_file, structures, format="extxyz")
    isolated = plan_of(config(data, train_file=str(atoms_file), e0="isolated"))
    assert isolated.e0.as_dict() == {1: -0.5, 6: -1.5, 8: -2.5, 9: -3.5, 17: -4.5}
    assert isolated.isolated_atoms == 5 and min(f.n_atoms for f in isolated.train) > 1


def test_config_errors(data):
    with pytest.raises(FitConfigError, match="unknown config keys"):
        plan_of(config(data, learning_rate=1e-3))
    with pytest.raises(FitConfigError, match="exactly one of valid_file"):
        plan_of(config(data, valid_fraction=0.1))
    with pytest.raises(FitConfigError, match="unknown training settings"):
        plan_of(config(data, training={"preset": "smoke", "steps": 3}))
    with pytest.raises(FitConfigError, match=r"training\.e0 is not a fit setting"):
        plan_of(config(data, training={"preset": "smoke", "e0": "none"}))
    with pytest.raises(FitConfigError, match="unknown settings"):
        plan_of(config(data, model={"name": "deepset_moe", "latent": 3}))
    with pytest.raises(FitConfigError, match="unknown model"):
        plan_of(config(data, model="mystery"))
    with pytest.raises(FileNotFoundError):
        plan_of(config(data, train_file="missing.xyz"))


def test_fit_trains_writes_a_repeatable_config_and_a_usable_checkpoint(data, tmp_path):
    """DeepSet-MoE with fragment-aware (hybrid) routing on perceived, extended fragments; the
    routing TensorBoard callback runs with the extended vocabulary."""
    path = tmp_path / "fit.yaml"
    out = tmp_path / "run"
    raw = config(
        data,
        test_file=str(data / "test.xyz"),
        fragments={"source": "perceive", "patterns": HALIDE_PATTERN},
        training={**TINY_TRAINING, "max_steps": 2},
        routing_logging="auto",
        out=str(out),
    )
    path.write_text(yaml.safe_dump(raw))
    result = fit(path, progress=False)
    assert result["status"] == "ok" and result["training"]["steps"] == 2
    assert set(result["metrics"]) == {"valid", "test.xyz"}
    assert {"F", "Cl"} <= set(result["per_element"]["test.xyz"])
    assert "halide" in result["per_fragment"]["test.xyz"]
    for name in ("best.pt", "last.pt", CONFIG_FILE, "metrics.json", "train.log"):
        assert (out / name).exists(), name

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "val/force_mae", "schedule/lr"} <= scalars
    assert any(tag.startswith("routing") for tag in scalars)

    # the checkpoint carries the config and the extended vocabulary; it predicts unlabelled
    # molecules with halogens (fragments perceived with its own vocabulary)
    payload = read_checkpoint(out / "best.pt")
    assert payload["training"]["fit_config"]["energy_key"] == "energy"
    potential = load_potential(out / "best.pt")
    assert "halide" in potential.network.fragment_vocabulary.names
    assert potential.e0.as_dict().keys() == {1, 6, 8, 9, 17}

    # the resolved config repeats the run: it resolves to itself
    resolved = yaml.safe_load((out / CONFIG_FILE).read_text())
    again = fit(out / CONFIG_FILE, out=tmp_path / "again", dry_run=True)["config"]
    strip = lambda c: {k: v for k, v in c.items() if k not in ("out", "resolved")}  # noqa: E731
    assert strip(again) == strip(resolved)
    assert again["resolved"]["e0"] == resolved["resolved"]["e0"]

    # an existing run is never overwritten silently; resume checks the config
    with pytest.raises(FitConfigError, match="already holds a run"):
        fit(path, progress=False)
    with pytest.raises(FitConfigError, match=r"differs from the run .* \['seed'\]"):
        fit(path, overrides=["seed=1"], resume=True)
    resumed = fit(path, overrides=["training.max_steps=4"], resume=True, progress=False)
    assert resumed["training"]["steps"] == 4 and resumed["training"]["epochs"] == 2
    assert torch.isfinite(torch.tensor(resumed["metrics"]["valid"]["force_mae"]))
