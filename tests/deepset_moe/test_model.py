"""Tests of the DeepSet-MoE model: pair forces at the cutoff, extensivity, routing, sparse
experts, auxiliary losses, atom weights, configuration and checkpoints. The physics kit runs in
every router / pooling / readout combination in ``tests/deepset_moe/test_physics.py``."""

from __future__ import annotations

import json
import math

import pytest
import torch

from baselines import build_model
from deepset_moe import AtomicReferenceEnergies, DeepSetMoE, DeepSetMoEConfig, PotentialWithE0
from deepset_moe.checkpoint import CheckpointError, save_checkpoint
from deepset_moe.config import POOLINGS, READOUTS, ROUTER_MODES
from deepset_moe.experts import ExpertMLPs
from deepset_moe.fragments import DEFAULT_VOCABULARY, FRAGMENT_NAMES
from deepset_moe.radial import BesselBasis, PolynomialEnvelope
from deepset_moe.router import load_balancing_loss, router_z_loss
from deepset_moe.testing import evaluate, make_batch, pair_batch, routing_margin
from kernels.routing import topk_gate
from tests.small_deepset_moe import MIN_TOPK_MARGIN, SMALL_CONFIG, STABLE_ROUTING_SEED

SMALL = SMALL_CONFIG


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """One intra-op thread: these tiny models are dominated by thread hand-off otherwise."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def molecules() -> dict[str, torch.Tensor]:
    """float64 batch of three small molecules (all functional fragments)."""
    return make_batch()


def small_model(**overrides) -> DeepSetMoE:
    """A small DeepSet-MoE (``router_mode="none"``, the no-MoE control, gets its one expert)."""
    settings = {**SMALL, "seed": STABLE_ROUTING_SEED, **overrides}
    if settings.get("router_mode") == "none":
        settings.update(num_experts=1, top_k=1)
    return DeepSetMoE.from_config(**settings)


def float32(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        key: value.float() if value.is_floating_point() else value for key, value in batch.items()
    }


# ----------------------------------------------------------------------------- physics


def test_stable_routing_seed_keeps_every_router_mode_away_from_top_k_switches(molecules):
    """The physics kit's finite differences need it (tests/deepset_moe/test_physics.py)."""
    for router_mode in ROUTER_MODES:
        if router_mode == "none":  # one expert: nothing to switch
            continue
        for gate in ("smooth_topk", "topk"):
            model = small_model(router_mode=router_mode, gate=gate).double().eval()
            assert routing_margin(model(molecules)) > MIN_TOPK_MARGIN, (router_mode, gate)


def test_envelope_and_its_derivatives_vanish_at_the_cutoff():
    cutoff = 5.0
    envelope = PolynomialEnvelope(cutoff, exponent=6)
    r = torch.tensor([0.0, cutoff - 1e-9, cutoff, cutoff + 0.5], dtype=torch.float64)
    r.requires_grad_(True)
    value = envelope(r)
    (first,) = torch.autograd.grad(value.sum(), r, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), r)
    assert float(value[0].detach()) == 1.0
    for derivative in (value, first, second):
        assert float(derivative[1:].detach().abs().max()) < 1e-6
    basis = BesselBasis(cutoff, num_radial=8)(torch.tensor([1.0, cutoff, 6.0]))
    assert float(basis[0].abs().max()) > 0.1 and float(basis[1:].abs().max()) == 0.0


@pytest.mark.parametrize("router_mode", ROUTER_MODES)
def test_pair_force_decays_smoothly_to_zero_at_the_cutoff(router_mode):
    """The enveloped energy of a pair goes as (r_c - r)^3: |F| falls faster than (r_c - r)^2."""
    model = small_model(router_mode=router_mode).double().eval()
    for gap, bound in ((1e-1, 1e-4), (1e-2, 1e-7), (1e-3, 1e-9)):
        _, forces = evaluate(model, pair_batch(model.cutoff - gap))
        assert float(forces.abs().max()) < bound, f"|F| at r_c - {gap} Å is not ~0"


def test_sum_pooling_is_extensive_and_mean_pooling_intensive(molecules):
    """Two copies of a molecule 30 Å apart (beyond the cutoff) in one system."""
    end = int(molecules["ptr"][1])
    single = {
        "z": molecules["z"][:end],
        "pos": molecules["pos"][:end],
        "fragment": molecules["fragment"][:end],
        "batch": torch.zeros(end, dtype=torch.long),
        "ptr": torch.tensor([0, end]),
    }
    shift = torch.tensor([30.0, 0.0, 0.0], dtype=torch.float64)
    doubled = {
        "z": single["z"].repeat(2),
        "pos": torch.cat([single["pos"], single["pos"] + shift]),
        "fragment": single["fragment"].repeat(2),
        "batch": torch.zeros(2 * end, dtype=torch.long),
        "ptr": torch.tensor([0, 2 * end]),
    }
    for pooling, factor in (("sum", 2.0), ("mean", 1.0)):
        model = small_model(pooling=pooling).double().eval()
        e_single, e_doubled = model(single)["energy"], model(doubled)["energy"]
        torch.testing.assert_close(e_doubled, factor * e_single, atol=1e-10, rtol=0)


# ----------------------------------------------------------------------------- routing


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_each_atom_routed_to_k_distinct_experts(top_k, molecules):
    out = small_model(top_k=top_k).double().eval()(molecules)
    routing = out["routing"]
    n_atoms = molecules["z"].numel()
    assert routing["probs"].shape == (n_atoms, SMALL["num_experts"])
    assert routing["experts"].shape == routing["weights"].shape == (n_atoms, top_k)
    assert routing["experts"].dtype == torch.long
    assert all(len(set(row)) == top_k for row in routing["experts"].tolist())
    assert bool(((routing["experts"] >= 0) & (routing["experts"] < SMALL["num_experts"])).all())
    expected = routing["probs"].topk(top_k, dim=-1).indices
    assert torch.equal(routing["experts"], expected)
    assert bool((routing["weights"] > 0).all())
    torch.testing.assert_close(routing["weights"].sum(-1), torch.ones(n_atoms, dtype=torch.float64))
    torch.testing.assert_close(routing["probs"].sum(-1), torch.ones(n_atoms, dtype=torch.float64))


def test_fragment_routing_does_not_depend_on_positions():
    first, second = make_batch(seed=0), make_batch(seed=1)
    assert not torch.allclose(first["pos"], second["pos"])
    fragment_model = small_model(router_mode="fragment").double().eval()
    torch.testing.assert_close(
        fragment_model(first)["routing"]["probs"], fragment_model(second)["routing"]["probs"]
    )
    learned_model = small_model(router_mode="learned").double().eval()
    assert not torch.allclose(
        learned_model(first)["routing"]["probs"], learned_model(second)["routing"]["probs"]
    )


def test_hybrid_routing_uses_fragment_labels(molecules):
    model = small_model(router_mode="hybrid").double().eval()
    relabelled = dict(molecules, fragment=(molecules["fragment"] + 1) % len(FRAGMENT_NAMES))
    assert not torch.allclose(
        model(molecules)["routing"]["probs"], model(relabelled)["routing"]["probs"]
    )


@pytest.mark.parametrize("concentrated", [False, True])
def test_sparse_experts_equal_dense_reference(concentrated):
    generator = torch.Generator().manual_seed(0)
    num_experts, n_atoms = 5, 40
    experts = ExpertMLPs(num_experts, in_dim=7, hidden_dim=11, out_dim=3).double()
    x = torch.randn(n_atoms, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(n_atoms, num_experts, generator=generator, dtype=torch.float64)
    if concentrated:  # experts 3 and 4 receive no atom: empty slices in the sparse path
        logits[:, :3] += 20.0
    gate = topk_gate(logits, 2)
    assert (gate.counts == 0).any() == concentrated

    sparse = experts(x, gate.experts, gate.weights)
    dense = experts.dense_reference(x, gate.experts, gate.weights)
    torch.testing.assert_close(sparse, dense, atol=1e-12, rtol=0)

    probe = torch.randn(sparse.shape, generator=generator, dtype=torch.float64)
    grads_sparse = torch.autograd.grad((sparse * probe).sum(), [x, *experts.parameters()])
    grads_dense = torch.autograd.grad((dense * probe).sum(), [x, *experts.parameters()])
    for g_sparse, g_dense in zip(grads_sparse, grads_dense, strict=True):
        torch.testing.assert_close(g_sparse, g_dense, atol=1e-12, rtol=0)


def test_auxiliary_loss_definitions():
    num_experts = 4
    uniform = torch.full((8, num_experts), 1.0 / num_experts)
    counts = torch.full((num_experts,), 4)
    assert float(load_balancing_loss(uniform, counts)) == pytest.approx(1.0)
    collapsed = torch.zeros(8, num_experts)
    collapsed[:, 0] = 1.0
    assert float(load_balancing_loss(collapsed, torch.tensor([16, 0, 0, 0]))) == pytest.approx(
        num_experts
    )
    assert float(router_z_loss(torch.zeros(8, num_experts))) == pytest.approx(
        math.log(num_experts) ** 2
    )


@pytest.mark.parametrize("router_mode", ROUTER_MODES)
def test_aux_loss_is_finite_nonnegative_and_trains_the_router(router_mode, molecules):
    model = small_model(router_mode=router_mode).train()
    aux_loss = model(float32(molecules))["aux_loss"]
    assert aux_loss.dim() == 0
    value = float(aux_loss.detach())
    assert math.isfinite(value) and value >= 0
    if router_mode == "none":  # no router: nothing to train, no loss
        assert value == 0.0 and not hasattr(model.router, "logits")
        return
    aux_loss.backward()
    router_grad = model.router.logits.weight.grad
    assert router_grad is not None and float(router_grad.abs().sum()) > 0
    embedding = {"fragment": "fragment_embedding", "hybrid": "fragment_embedding"}.get(
        router_mode, "species_embedding" if router_mode == "identity" else None
    )
    if embedding is not None:
        assert float(getattr(model.router, embedding).weight.grad.abs().sum()) > 0


def test_router_noise_is_seeded_and_training_only(molecules):
    batch = float32(molecules)
    noisy = [small_model(router_noise_std=1.0).train() for _ in range(2)]
    probs = [model(batch)["routing"]["probs"] for model in noisy]
    torch.testing.assert_close(probs[0], probs[1])
    clean = small_model().eval()
    assert not torch.allclose(probs[0], clean(batch)["routing"]["probs"])
    torch.testing.assert_close(
        noisy[0].eval()(batch)["routing"]["probs"], clean(batch)["routing"]["probs"]
    )


# ----------------------------------------------------------------------------- outputs


def test_output_contract_and_node_energy_sums_to_energy(molecules):
    model = small_model().double().eval()
    out = model(molecules)
    n_atoms, n_molecules = molecules["z"].numel(), molecules["ptr"].numel() - 1
    assert out["energy"].shape == (n_molecules,)
    assert out["forces"].shape == (n_atoms, 3)
    assert out["latent"].shape == (n_atoms, SMALL["latent_dim"])
    assert set(out["routing"]) == {"probs", "experts", "weights"}
    assert out["node_energy"].shape == (n_atoms,)
    per_molecule = torch.zeros(n_molecules, dtype=torch.float64).index_add(
        0, molecules["batch"], out["node_energy"]
    )
    torch.testing.assert_close(per_molecule, out["energy"], atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("pooling", "readout"), [("mean", "linear"), ("attention", "linear"), ("sum", "mlp")]
)
def test_no_node_energy_without_sum_pooling_and_linear_rho(pooling, readout, molecules):
    out = small_model(pooling=pooling, readout=readout).double().eval()(molecules)
    assert "node_energy" not in out


@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("pooling", POOLINGS)
def test_zero_atom_weights_give_rho_of_zero(pooling, readout, molecules):
    model = small_model(pooling=pooling, readout=readout).double().eval()
    n_molecules = molecules["ptr"].numel() - 1
    zeros = torch.zeros(molecules["z"].numel(), dtype=torch.float64)
    out = model(dict(molecules, atom_weights=zeros))
    rho_of_zero = model.readout(
        torch.zeros(1, SMALL["expert_out_dim"], dtype=torch.float64)
    ).detach()
    assert (float(rho_of_zero.abs()) > 1e-3) == (readout == "mlp")  # linear rho: rho(0) = 0
    torch.testing.assert_close(out["energy"], rho_of_zero.expand(n_molecules), atol=1e-12, rtol=0)
    assert float(out["forces"].abs().max()) == 0.0
    ones = torch.ones_like(zeros)
    torch.testing.assert_close(
        model(dict(molecules, atom_weights=ones))["energy"], model(molecules)["energy"]
    )


def test_atom_weight_gradient_is_node_energy(molecules):
    """With sum pooling and linear rho, dE/da_i at a = 1 is exactly node_energy_i."""
    model = small_model().double().eval()
    weights = torch.ones(molecules["z"].numel(), dtype=torch.float64, requires_grad=True)
    out = model(dict(molecules, atom_weights=weights))
    (gradient,) = torch.autograd.grad(out["energy"].sum(), weights)
    torch.testing.assert_close(gradient, out["node_energy"].detach(), atol=1e-12, rtol=0)


def test_forward_leaves_caller_positions_alone_and_honours_no_grad(molecules):
    model = small_model().double().eval()
    pos = molecules["pos"].clone()
    with_grad = model(molecules)
    assert torch.equal(molecules["pos"], pos) and not molecules["pos"].requires_grad
    with torch.no_grad():
        without_grad = model(molecules)
    torch.testing.assert_close(without_grad["forces"], with_grad["forces"].detach())
    assert not without_grad["energy"].requires_grad
    assert not without_grad["routing"]["probs"].requires_grad


def test_training_forces_are_differentiable(molecules):
    model = small_model().train()
    out = model(float32(molecules))
    out["forces"].square().sum().backward()
    radial_weight = next(model.encoder.radial.parameters())
    assert radial_weight.grad is not None and float(radial_weight.grad.abs().sum()) > 0


def test_bad_inputs_raise_clear_errors(molecules):
    model = small_model(router_mode="hybrid").double().eval()  # a mode that reads labels
    chlorine = dict(molecules, z=molecules["z"].clone())
    chlorine["z"][0] = 17
    with pytest.raises(ValueError, match=r"\[17\]"):
        model(chlorine)
    bad_fragment = dict(molecules, fragment=molecules["fragment"].clone())
    bad_fragment["fragment"][0] = len(FRAGMENT_NAMES)
    with pytest.raises(ValueError, match="fragment label"):
        model(bad_fragment)
    without_fragment = {key: value for key, value in molecules.items() if key != "fragment"}
    with pytest.raises(KeyError, match="fragment"):
        model(without_fragment)
    for mode in ("learned", "identity"):  # identity: the default
        unlabelled = small_model(router_mode=mode).double().eval()
        assert unlabelled(without_fragment)["energy"].shape == (molecules["ptr"].numel() - 1,)
    with pytest.raises(ValueError, match="atom_weights"):
        model(dict(molecules, atom_weights=torch.ones(3, dtype=torch.float64)))


# ----------------------------------------------------------------------------- configuration


def test_config_round_trip_and_validation(molecules):
    config = DeepSetMoEConfig(**SMALL, router_mode="learned", pooling="attention", readout="mlp")
    restored = DeepSetMoEConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    first, second = DeepSetMoE(config).double().eval(), DeepSetMoE(restored).double().eval()
    torch.testing.assert_close(first(molecules)["energy"], second(molecules)["energy"])
    with pytest.raises(ValueError, match="router_mode"):
        DeepSetMoEConfig(router_mode="random")
    with pytest.raises(ValueError, match="top_k"):
        DeepSetMoEConfig(num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="unknown keys"):
        DeepSetMoEConfig.from_dict({"cutof": 5.0})


def test_default_model_size_and_cutoff():
    model = DeepSetMoE()
    assert model.cutoff == 5.0
    assert 100_000 <= sum(p.numel() for p in model.parameters()) <= 300_000


def test_from_checkpoint_restores_network_and_e0(tmp_path, molecules):
    config = DeepSetMoEConfig(**SMALL, seed=STABLE_ROUTING_SEED)
    network = DeepSetMoE(config).eval()
    e0 = AtomicReferenceEnergies({1: -13.5, 6: -1030.0, 7: -1480.0, 8: -2040.0})
    path = tmp_path / "model.pt"
    save_checkpoint(
        path,
        model_name="deepset_moe",
        model_config=config.to_dict(),
        network=network,
        e0=e0,
        fragments=DEFAULT_VOCABULARY,
    )
    potential = DeepSetMoE.from_checkpoint(path)
    assert isinstance(potential, PotentialWithE0) and potential.cutoff == config.cutoff
    assert potential.network.fragment_vocabulary == DEFAULT_VOCABULARY
    batch = float32(molecules)
    expected = PotentialWithE0(network, e0)(batch)
    loaded = potential.eval()(batch)
    torch.testing.assert_close(loaded["energy"], expected["energy"])
    torch.testing.assert_close(loaded["forces"], expected["forces"])


def test_from_checkpoint_refuses_a_baseline_checkpoint(tmp_path):
    """A SchNet checkpoint loads with load_potential but is not a DeepSet-MoE."""
    schnet = build_model("schnet", hidden_channels=8, num_filters=8, num_interactions=1)
    path = tmp_path / "schnet.pt"
    save_checkpoint(
        path,
        model_name="schnet",
        model_config={"hidden_channels": 8, "num_filters": 8, "num_interactions": 1},
        network=schnet,
        e0=AtomicReferenceEnergies({1: -13.5}),
    )
    with pytest.raises(CheckpointError, match=r"SchNetPotential, not DeepSetMoE"):
        DeepSetMoE.from_checkpoint(path)
