"""Every registered baseline: physics checks, output contract, E0 limit, registry errors.

Small configurations keep the file fast; the default sizes are reported by
``python -m baselines.throughput``.
"""

from __future__ import annotations

import copy
import itertools
import subprocess
import sys
from functools import cache

import pytest
import torch

from baselines import build_model, list_models, model_info
from baselines.dimenet import edge_triplets
from baselines.registry import default_config
from deepset_moe.e0 import AtomicReferenceEnergies, PotentialWithE0
from deepset_moe.graph import radius_graph
from tests.physics_suite import make_batch, pair_batch, run_all_checks

SMALL_CONFIGS: dict[str, dict] = {
    # nequip models fix their dtype at build time: the float64 physics checks need float64 ones
    "schnet": {
        "hidden_channels": 16,
        "num_filters": 16,
        "num_interactions": 2,
        "num_gaussians": 10,
    },
    "dimenet++": {
        "hidden_channels": 16,
        "out_emb_channels": 16,
        "int_emb_size": 8,
        "basis_emb_size": 4,
        "num_blocks": 2,
        "num_spherical": 3,
        "num_radial": 4,
    },
    "painn": {"features": 16, "num_layers": 2, "num_radial": 8},
    "mace": {
        "hidden_irreps": "8x0e + 8x1o",
        "correlation": 2,
        "radial_mlp": [16],
        "mlp_irreps": "8x0e",
    },
    "nequip": {
        "num_layers": 2,
        "num_features": 8,
        "radial_mlp_width": 16,
        "model_dtype": "float64",
    },
    "allegro": {
        "l_max": 1,
        "num_scalar_features": 16,
        "num_tensor_features": 4,
        "mlp_width": 16,
        "model_dtype": "float64",
    },
}

E0 = {1: -13.6, 6: -1029.8, 7: -1484.9, 8: -2041.3}


@cache
def small_model(name: str, seed: int = 0) -> torch.nn.Module:
    """A small float32 model (callers that change dtype or mode use their own copy)."""
    return build_model(name, seed=seed, **SMALL_CONFIGS[name])


def fresh_small_model(name: str) -> torch.nn.Module:
    return copy.deepcopy(small_model(name))


def test_every_registered_model_is_tested() -> None:
    assert sorted(SMALL_CONFIGS) == sorted(list_models())


@pytest.mark.parametrize("name", list_models())
def test_physics_suite(name: str) -> None:
    run_all_checks(fresh_small_model(name))


@pytest.mark.parametrize("name", list_models())
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


@pytest.mark.parametrize("name", list_models())
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


@pytest.mark.parametrize("name", list_models())
def test_seed_reproducible(name: str) -> None:
    batch = make_batch()
    first = build_model(name, seed=3, **SMALL_CONFIGS[name]).double().eval()(batch)
    second = build_model(name, seed=3, **SMALL_CONFIGS[name]).double().eval()(batch)
    other = build_model(name, seed=4, **SMALL_CONFIGS[name]).double().eval()(batch)
    torch.testing.assert_close(first["energy"], second["energy"], atol=0, rtol=0)
    assert not torch.allclose(first["energy"], other["energy"])


@pytest.mark.parametrize("name", list_models())
def test_model_info(name: str) -> None:
    info = model_info(name)
    assert info["version"], f"{info['package']} should be installed in the test environment"
    assert info["default_config"]["seed"] == 0
    assert info["default_config"]["cutoff"] == 5.0
    assert set(SMALL_CONFIGS[name]) <= set(default_config(name))


def test_unknown_name_lists_registered_models() -> None:
    with pytest.raises(ValueError, match="unknown baseline 'gemnet-xl'") as error:
        build_model("gemnet-xl")
    for name in list_models():
        assert name in str(error.value)
    with pytest.raises(ValueError, match="unknown baseline"):
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
import numpy, torch
from baselines import build_model
torch.manual_seed(7); numpy.random.seed(7)
expected = torch.rand(3), numpy.random.rand(3)
torch.manual_seed(7); numpy.random.seed(7)
build_model("nequip", num_layers=1, num_features=4, radial_mlp_width=8)
assert torch.get_default_dtype() == torch.float32, torch.get_default_dtype()
assert torch.equal(torch.rand(3), expected[0]) and (numpy.random.rand(3) == expected[1]).all()
"""


def test_nequip_global_state_does_not_leak() -> None:
    """nequip's first build would set float64 as torch default and reseed every generator."""
    result = subprocess.run(
        [sys.executable, "-c", NEQUIP_STATE_SCRIPT], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
