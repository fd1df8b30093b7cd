"""Every registered model (DeepSet-MoE and the baselines): output contract, E0 limit, seeds,
registry errors and baseline-specific checks. The physics of every registered model is tested
in ``tests/baselines/test_physics.py`` with the kit of :mod:`deepset_moe.testing`.

Small configurations (``tests/baselines/small_models.py``) keep the file fast; the default
sizes are reported by ``python -m benchmark.evaluation.speed --sections throughput``.
"""

from __future__ import annotations

import importlib.util
import itertools
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from baselines import available_models, build_model, list_models, model_info
from baselines.dimenet import edge_triplets
from baselines.registry import default_config, missing_requirement
from deepset_moe.e0 import AtomicReferenceEnergies, PotentialWithE0
from deepset_moe.graph import radius_graph
from deepset_moe.testing import make_batch, pair_batch
from tests.baselines.small_models import (
    FAIRCHEM_MODELS,
    SMALL_CONFIGS,
    fresh_small_model,
    registered,
    requires_fairchem,
    small_model,
)

E0 = {1: -13.6, 6: -1029.8, 7: -1484.9, 8: -2041.3}


def test_every_registered_model_is_tested() -> None:
    assert sorted(SMALL_CONFIGS) == sorted(list_models())
    assert list_models()[0] == "deepset_moe"


@pytest.mark.parametrize("name", registered())
def test_outputs_and_training_graph(name: str) -> None:
    model = fresh_small_model(name).train()
    batch = {key: v.float() if v.is_floating_point() else v for key, v in make_batch().items()}
    out = model(batch)
    num_molecules, num_atoms = batch["ptr"].numel() - 1, batch["z"].numel()
    assert out["energy"].shape == (num_molecules,)
    assert out["forces"].shape == (num_atoms, 3)
    assert out["node_energy"].shape == (num_atoms,)
    assert out["energy"].dtype == out["forces"].dtype == torch.float32
    torch.testing.assert_close(
        torch.zeros(num_molecules).index_add(0, batch["batch"], out["node_energy"]),
        out["energy"],
    )
    # forces keep their graph in training mode: a force loss reaches the weights
    out["forces"].pow(2).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("name", registered())
def test_isolated_atoms_and_e0(name: str) -> None:
    """An atom alone gets E0 plus the network's isolated-atom constant (zero where designed)."""
    potential = PotentialWithE0(
        fresh_small_model(name).double().eval(), AtomicReferenceEnergies(E0)
    )
    far = pair_batch(potential.cutoff + 1.0, numbers=(6, 8))
    out = potential(far)
    alone = {}
    for index, z in enumerate((6, 8)):
        single = {
            "z": far["z"][index : index + 1],
            "pos": far["pos"][index : index + 1] + 3.0,
            "fragment": far["fragment"][index : index + 1],
            "batch": torch.zeros(1, dtype=torch.long),
            "ptr": torch.tensor([0, 1]),
        }
        alone[z] = potential(single)
        assert float(alone[z]["forces"].abs().max()) == 0.0
    torch.testing.assert_close(
        out["energy"][0], alone[6]["energy"][0] + alone[8]["energy"][0], atol=1e-10, rtol=0
    )
    offsets = {z: float(alone[z]["energy"][0].detach()) - E0[z] for z in alone}
    kind = model_info(name)["isolated_atom"]
    if kind == "zero":
        assert offsets == pytest.approx({6: 0.0, 8: 0.0}, abs=1e-12)
    elif kind == "constant, same for every element":
        assert offsets[6] == pytest.approx(offsets[8], abs=1e-12)
    else:
        assert kind == "constant per element"


def _build_under_global_seed(name: str, seed: int, global_seed: int) -> dict[str, torch.Tensor]:
    """State dict of ``name`` built with ``seed`` after seeding torch's, numpy's and Python's
    global generators with ``global_seed`` (their states are restored afterwards)."""
    config = {key: value for key, value in SMALL_CONFIGS[name].items() if key != "seed"}
    numpy_state, python_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(global_seed)
            np.random.seed(global_seed)  # noqa: NPY002
            random.seed(global_seed)
            model = build_model(name, seed=seed, **config)
    finally:
        np.random.set_state(numpy_state)  # noqa: NPY002
        random.setstate(python_state)
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


@pytest.mark.parametrize("name", registered())
def test_seed_decides_initial_weights(name: str) -> None:
    """The run seed, and nothing else, decides a model's initial weights: two builds with one
    seed (under different global RNG states) have identical weights; two seeds give
    different weights (and different energies)."""
    first = _build_under_global_seed(name, seed=0, global_seed=11)
    again = _build_under_global_seed(name, seed=0, global_seed=22)
    other = _build_under_global_seed(name, seed=1, global_seed=11)
    assert list(first) == list(again) == list(other)
    for key, value in first.items():
        assert torch.equal(value, again[key]), f"{name}: weight {key!r} differs with one seed"
    floating = [key for key, value in first.items() if value.is_floating_point()]
    differing = [key for key in floating if not torch.equal(first[key], other[key])]
    assert differing, f"{name}: seeds 0 and 1 give identical weights"
    models = []
    for state in (first, other):
        model = fresh_small_model(name)
        model.load_state_dict(state)
        models.append(model.double().eval())
    batch = make_batch()
    energies = [model(batch)["energy"].detach() for model in models]
    assert not torch.allclose(*energies), f"{name}: seeds 0 and 1 give the same energies"


@pytest.mark.parametrize("name", registered())
def test_model_info(name: str) -> None:
    info = model_info(name)
    assert info["version"], f"{info['package']} should be installed in the test environment"
    assert info["default_config"]["seed"] == 0
    assert info["default_config"]["cutoff"] == 5.0
    assert set(SMALL_CONFIGS[name]) <= set(default_config(name))


def test_available_models_are_the_installed_registered_ones() -> None:
    fairchem_installed = importlib.util.find_spec("fairchem") is not None
    expected = [n for n in list_models() if fairchem_installed or n not in FAIRCHEM_MODELS]
    assert available_models() == expected
    assert all(missing_requirement(name) is None for name in expected)


def test_unknown_name_lists_registered_models() -> None:
    with pytest.raises(ValueError, match="unknown model 'gemnet-xl'") as error:
        build_model("gemnet-xl")
    for name in list_models():
        assert name in str(error.value)
    with pytest.raises(ValueError, match="unknown model"):
        model_info("nope")


def test_unknown_setting_is_named() -> None:
    with pytest.raises(ValueError, match="hidden_size"):
        build_model("painn", hidden_size=8)


def test_unsupported_element_is_named() -> None:
    batch = make_batch()
    batch["z"] = batch["z"].clone()
    batch["z"][0] = 16
    with pytest.raises(ValueError, match=r"\[16\]"):
        small_model("painn")(batch)


def test_edge_triplets_match_brute_force() -> None:
    batch = make_batch()
    edge_index = radius_graph(batch["pos"], batch["ptr"], 3.0)
    idx_kj, idx_ji = edge_triplets(edge_index, batch["z"].numel())
    source, target = edge_index.tolist()
    expected = {
        (kj, ji)
        for kj, ji in itertools.product(range(len(source)), repeat=2)
        if target[kj] == source[ji] and source[kj] != target[ji]
    }
    found = set(zip(idx_kj.tolist(), idx_ji.tolist(), strict=True))
    assert found == expected and len(found) == idx_kj.numel()


NEQUIP_STATE_SCRIPT = """
import e3nn, numpy, torch
from baselines import build_model
torch.manual_seed(7); numpy.random.seed(7)
expected = torch.rand(3), numpy.random.rand(3)
torch.manual_seed(7); numpy.random.seed(7)
e3nn_defaults = e3nn.get_optimization_defaults()
build_model("nequip", num_layers=1, num_features=4, radial_mlp_width=8)
assert torch.get_default_dtype() == torch.float32, torch.get_default_dtype()
assert torch.equal(torch.rand(3), expected[0]) and (numpy.random.rand(3) == expected[1]).all()
assert e3nn.get_optimization_defaults() == e3nn_defaults, e3nn.get_optimization_defaults()
"""


def test_nequip_global_state_does_not_leak() -> None:
    """nequip's first build would set float64 as torch default, reseed every generator and
    switch e3nn to TorchScript."""
    result = subprocess.run(
        [sys.executable, "-c", NEQUIP_STATE_SCRIPT], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]


@requires_fairchem
@pytest.mark.parametrize("name", FAIRCHEM_MODELS)
def test_fairchem_lone_atom_energy_does_not_depend_on_the_batch(name: str) -> None:
    """A lone atom gets the same energy alone (a graph with only the ghost molecule's edges)
    as next to a molecule, and the molecule the same as without it: the ghost molecule and
    the one-image GemNet-OC batch couple nothing."""
    model = fresh_small_model(name).double().eval()
    molecule = make_batch(("NCCC=O",))
    count = molecule["z"].numel()
    lone = {
        "z": torch.tensor([6]),
        "pos": torch.zeros(1, 3, dtype=torch.float64),
        "batch": torch.zeros(1, dtype=torch.long),
        "ptr": torch.tensor([0, 1]),
    }
    together = {
        "z": torch.cat([molecule["z"], lone["z"]]),
        "pos": torch.cat([molecule["pos"], lone["pos"] + 50.0]),
        "batch": torch.cat([molecule["batch"], torch.ones(1, dtype=torch.long)]),
        "ptr": torch.tensor([0, count, count + 1]),
    }
    alone = model(lone)
    mixed = model(together)
    torch.testing.assert_close(mixed["energy"][1], alone["energy"][0], atol=1e-12, rtol=0)
    torch.testing.assert_close(mixed["energy"][0], model(molecule)["energy"][0], atol=1e-10, rtol=0)
    assert float(mixed["forces"][count:].abs().max()) == 0.0


@requires_fairchem
def test_edge_frames_are_rotations_and_match_fairchem_wigner() -> None:
    from fairchem.core.models.equiformer_v2.so3 import SO3_Rotation

    from baselines.fairchem_models import edge_frames, wigner_matrices

    vectors = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    vectors[0] = torch.tensor([1.0, 2.0, 3.0])  # along the first reference: second one is used
    frames = edge_frames(vectors)
    direction = vectors / vectors.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(
        frames @ frames.transpose(1, 2), torch.eye(3).expand(64, 3, 3), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(torch.linalg.det(frames), torch.ones(64), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        (frames @ direction.unsqueeze(-1)).squeeze(-1),
        torch.tensor([0.0, 1.0, 0.0]).expand(64, 3),
        atol=1e-6,
        rtol=0,
    )
    fairchem_rotation = SO3_Rotation(3)
    fairchem_rotation.set_wigner(frames)
    torch.testing.assert_close(
        wigner_matrices(frames, 3), fairchem_rotation.wigner, atol=1e-5, rtol=0
    )


def test_fairchem_models_name_install_steps_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without fairchem the registered names fail with the install lines (run either way:
    the import is blocked here)."""
    for module in ["fairchem", *(m for m in sys.modules if m.startswith("fairchem."))]:
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.delitem(sys.modules, "baselines.fairchem_models", raising=False)
    for name in FAIRCHEM_MODELS:
        with pytest.raises(ImportError, match=r"fairchem-core==1\.3\.0") as error:
            build_model(name)
        for requirement in ("torch-scatter", "torch-sparse", "--no-deps", "--no-build-isolation"):
            assert requirement in str(error.value)
        assert model_info(name)["default_config"] is None
        assert name not in available_models()
        assert "fairchem-core==1.3.0" in missing_requirement(name)


@requires_fairchem
def test_gemnet_quadruplet_cutoff_is_smooth() -> None:
    """Energy and forces are continuous as a bond crosses GemNet-OC's quadruplet cutoff."""
    model = fresh_small_model("gemnet").double().eval()
    cutoff_qint = default_config("gemnet")["cutoff_qint"]

    def chain(bond: float) -> dict[str, torch.Tensor]:
        pos = [[-0.8, 1.0, 0.0], [0.0, 0.0, 0.0], [bond, 0.0, 0.0], [bond + 0.8, 0.0, 1.0]]
        return {
            "z": torch.tensor([6, 6, 6, 8]),
            "pos": torch.tensor(pos, dtype=torch.float64),
            "batch": torch.zeros(4, dtype=torch.long),
            "ptr": torch.tensor([0, 4]),
        }

    inside, outside = model(chain(cutoff_qint - 1e-5)), model(chain(cutoff_qint + 1e-5))
    torch.testing.assert_close(inside["energy"], outside["energy"], atol=1e-5, rtol=0)
    torch.testing.assert_close(inside["forces"], outside["forces"], atol=1e-5, rtol=0)
