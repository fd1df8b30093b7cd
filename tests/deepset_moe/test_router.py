"""Router of DeepSet-MoE: the smooth top-k gate (:mod:`deepset_moe.gates`), the router modes
(``learned``, ``fragment``, ``hybrid``, ``identity``, ``spatial``, ``none``), the no-MoE
control and the configuration's gate settings (including configs saved before them)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from deepset_moe import DeepSetMoE, DeepSetMoEConfig
from deepset_moe.checkpoint import load_potential
from deepset_moe.config import GATES, ROUTER_MODES
from deepset_moe.gates import (
    apply_gate,
    smooth_kth_threshold,
    smooth_topk_gate,
    smoothstep,
    soft_floor,
)
from deepset_moe.model import count_parameters, matched_no_moe_config
from deepset_moe.radial import PolynomialEnvelope
from deepset_moe.router import SpatialDescriptor
from deepset_moe.testing import make_batch, pair_batch
from kernels.routing import topk_gate
from tests.small_deepset_moe import SMALL_CONFIG, torch_threads

REPOSITORY = Path(__file__).resolve().parents[2]
COMMITTED_CHECKPOINT = (
    REPOSITORY / "results/deepset_moe_quick/duplication/deepset_moe/seed0/best.pt"
)
"""A DeepSet-MoE trained before gates were selectable (its config has no ``gate`` and no
``body_order``)."""


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def molecules() -> dict[str, torch.Tensor]:
    """float64 batch of three small molecules with fragment labels."""
    return make_batch()


def small_model(router_mode: str, **overrides: Any) -> DeepSetMoE:
    """A float64 small model of ``router_mode`` (``none``: one expert, k = 1)."""
    settings: dict[str, Any] = {**SMALL_CONFIG, "router_mode": router_mode, "seed": 3}
    if router_mode == "none":
        settings.update(num_experts=1, top_k=1)
    return DeepSetMoE(DeepSetMoEConfig(**{**settings, **overrides})).double().eval()


def dense(weights: torch.Tensor, experts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """[N, K] gate weights with zeros for experts that were not chosen."""
    out = weights.new_zeros(weights.shape[0], num_experts)
    return out.scatter(1, experts, weights)


# ----------------------------------------------------------------------------- smooth gate


@pytest.mark.parametrize(("num_experts", "k"), [(8, 2), (4, 2), (8, 1), (3, 2), (5, 4)])
def test_threshold_is_the_smooth_kth_logit(num_experts: int, k: int) -> None:
    """t = S_{k+1} - S_k + log C(K, k) / beta (brute force over subsets) and
    l_(k+1) <= t <= l_(k+1) + delta."""
    generator = torch.Generator().manual_seed(0)
    width = 0.2
    for scale in (0.3, 30.0):
        logits = scale * torch.randn(200, num_experts, generator=generator, dtype=torch.float64)
        threshold = smooth_kth_threshold(logits, k, width)
        beta = math.log(math.comb(num_experts, k)) + math.log(math.comb(num_experts, k + 1))
        beta /= width

        def soft_sum(m: int, logits: torch.Tensor = logits, beta: float = beta) -> torch.Tensor:
            subsets = itertools.combinations(range(num_experts), m)
            sums = torch.stack([logits[:, list(s)].sum(-1) for s in subsets], dim=-1)
            return torch.logsumexp(beta * sums, dim=-1) / beta

        brute = soft_sum(k + 1) - soft_sum(k) + math.log(math.comb(num_experts, k)) / beta
        torch.testing.assert_close(threshold, brute, atol=1e-9 * scale, rtol=1e-12)
        kth = logits.sort(dim=-1, descending=True).values[:, k]
        assert bool((threshold >= kth).all()) and bool((threshold <= kth + width + 1e-12).all())


def test_smoothstep_and_soft_floor_are_c2() -> None:
    x = torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.5], dtype=torch.float64, requires_grad=True)
    value = smoothstep(x)
    (first,) = torch.autograd.grad(value.sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), x)
    torch.testing.assert_close(value.detach(), torch.tensor([0, 0, 0.5, 1, 1.0]).double())
    assert float(first[[0, 1, 3, 4]].abs().max()) == 0.0 and float(first[2].detach()) == 1.875
    assert float(second[[0, 1, 3, 4]].abs().max()) < 1e-12
    z = torch.tensor([0.0, 0.5, 1.0 - 1e-9, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    floor = soft_floor(z, 1.0)
    (slope,) = torch.autograd.grad(floor.sum(), z, create_graph=True)
    (curvature,) = torch.autograd.grad(slope.sum(), z)
    assert float(floor[0]) == 0.25 and bool((floor >= z).all())
    torch.testing.assert_close(slope[2:], torch.ones(3, dtype=torch.float64))
    assert abs(float(curvature[2])) < 1e-6 and bool((slope > 0).all())


def test_smooth_gate_outputs() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = 2.0 * torch.randn(300, 8, generator=generator, dtype=torch.float64)
    gate = smooth_topk_gate(logits, 2, 0.3)
    torch.testing.assert_close(gate.probs, torch.softmax(logits, dim=-1))
    assert torch.equal(gate.experts, gate.probs.topk(2, dim=-1).indices)
    assert gate.weights.shape == gate.experts.shape == (300, 2)
    assert bool((gate.weights >= 0).all()) and bool((gate.weights.sum(-1) <= 1 + 1e-12).all())
    assert torch.equal(gate.counts, torch.bincount(gate.experts.reshape(-1), minlength=8))
    ordered = logits.sort(dim=-1, descending=True).values
    clear = ordered[:, 0] - ordered[:, 2] > 0.3 + 0.15 + 0.1  # top expert fully on
    assert int(clear.sum()) > 100
    torch.testing.assert_close(gate.weights.sum(-1)[clear], torch.ones(int(clear.sum())).double())
    # experts far from the threshold get the renormalised top-k probabilities
    far = (ordered[:, 1] - ordered[:, 2]) > 0.3 + 0.15
    hard = topk_gate(logits, 2)
    torch.testing.assert_close(gate.weights[far], hard.weights[far])


def test_smooth_gate_special_cases() -> None:
    logits = torch.randn(5, 4, dtype=torch.float64)
    dense_gate = smooth_topk_gate(logits, 4, 0.3)  # k = K: the softmax
    torch.testing.assert_close(
        dense(dense_gate.weights, dense_gate.experts, 4), torch.softmax(logits, -1)
    )
    single = smooth_topk_gate(torch.zeros(3, 1, dtype=torch.float64), 1, 0.3)
    assert torch.equal(single.weights, torch.ones(3, 1, dtype=torch.float64))
    tied = torch.zeros(2, 6, dtype=torch.float64, requires_grad=True)  # full tie: all off
    gate = smooth_topk_gate(tied, 2, 0.3)
    assert float(gate.weights.abs().max()) == 0.0
    (grad,) = torch.autograd.grad(gate.weights.sum(), tied)
    assert bool(torch.isfinite(grad).all())
    with pytest.raises(ValueError, match="gate width"):
        smooth_topk_gate(logits, 2, 0.0)
    with pytest.raises(ValueError, match="unknown gate"):
        apply_gate("soft", logits, 2, 0.3)
    hard = apply_gate("topk", logits, 2, 0.3)
    reference = topk_gate(logits, 2)
    for got, want in zip(hard, reference, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [0.0, 0.1, 1.0, 100.0])
def test_smooth_gate_double_backward_is_finite(dtype: torch.dtype, scale: float) -> None:
    """Force training differentiates the gate twice, also for far-apart float32 logits."""
    generator = torch.Generator().manual_seed(2)
    logits = scale * torch.randn(64, 8, generator=generator, dtype=dtype)
    logits.requires_grad_(True)
    weights = smooth_topk_gate(logits, 2, 0.3).weights
    probe = torch.randn(weights.shape, generator=generator, dtype=dtype)
    (grad,) = torch.autograd.grad((weights * probe).sum(), logits, create_graph=True)
    (second,) = torch.autograd.grad(grad.square().sum(), logits)
    assert bool(torch.isfinite(weights).all() & torch.isfinite(second).all())


def test_smooth_gate_gradients_are_exact() -> None:
    logits = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda x: smooth_topk_gate(x, 2, 0.5).weights, (logits,))
    torch.autograd.gradgradcheck(lambda x: smooth_topk_gate(x, 2, 0.5).weights, (logits,))


def path_weights(gate: str, steps: int = 4000) -> tuple[torch.Tensor, float]:
    """Dense weights [S+1, K] along a logit path on which the 2nd, 3rd and 4th logits cross
    (so the top-2 set changes), and the step h of the path parameter."""
    s = torch.linspace(-1.0, 1.0, steps + 1, dtype=torch.float64)
    logits = torch.stack(
        [1.0 + 0.0 * s, 0.6 * s, -0.6 * s, 0.3 * torch.sin(3 * s), -0.5 + 0.0 * s], dim=-1
    )
    routed = apply_gate(gate, logits, 2, 0.3)
    return dense(routed.weights, routed.experts, 5), float(s[1] - s[0])


def test_weights_are_c2_where_the_topk_set_changes() -> None:
    """Along a path crossing top-2 changes, dense weights have bounded first and second
    differences (|dW| <= C h, |d2W| <= C h^2): continuous, with continuous derivatives. The
    hard top-k gate jumps on the same path."""
    weights, h = path_weights("smooth_topk")
    experts = weights > 0
    assert int((experts[1:] != experts[:-1]).any(-1).sum()) >= 2, "path crosses no change"
    first = (weights[1:] - weights[:-1]).abs().max()
    second = (weights[2:] - 2 * weights[1:-1] + weights[:-2]).abs().max()
    assert float(first) < 20 * h and float(second) < 200 * h**2
    hard, _ = path_weights("topk")
    assert float((hard[1:] - hard[:-1]).abs().max()) > 0.1  # a jump, not a ramp


# ----------------------------------------------------------------------------- router modes


@pytest.mark.parametrize("router_mode", ROUTER_MODES)
def test_every_mode_routes_every_atom(router_mode: str, molecules) -> None:
    model = small_model(router_mode)
    assert model.needs_fragments == (router_mode in ("fragment", "hybrid"))
    batch = (
        molecules
        if model.needs_fragments
        else {key: value for key, value in molecules.items() if key != "fragment"}
    )
    routing = model(batch)["routing"]
    n_atoms, k = batch["z"].numel(), model.config.top_k
    assert routing["probs"].shape == (n_atoms, model.config.num_experts)
    assert routing["experts"].shape == routing["weights"].shape == (n_atoms, k)
    assert routing["experts"].dtype == torch.long
    assert bool((routing["weights"] >= 0).all())
    assert bool((routing["weights"].sum(-1) <= 1 + 1e-12).all())


@pytest.mark.parametrize("router_mode", ["fragment", "hybrid"])
def test_fragment_modes_need_labels(router_mode: str, molecules) -> None:
    unlabelled = {key: value for key, value in molecules.items() if key != "fragment"}
    with pytest.raises(KeyError, match="fragment"):
        small_model(router_mode)(unlabelled)


def test_identity_routing_is_a_lookup_by_element(molecules) -> None:
    model = small_model("identity")
    probs = model(molecules)["routing"]["probs"]
    for z in molecules["z"].unique():
        rows = probs[molecules["z"] == z]
        torch.testing.assert_close(rows, rows[:1].expand_as(rows))
    moved = make_batch(seed=1)
    torch.testing.assert_close(model(moved)["routing"]["probs"], probs)
    distinct = {tuple(row) for row in probs.round(decimals=9).tolist()}
    assert len(distinct) == molecules["z"].unique().numel()  # one routing per element


def test_spatial_descriptor_is_a_smooth_distance_histogram() -> None:
    cutoff, bins = 5.0, 8
    descriptor = SpatialDescriptor(cutoff, bins, 6, avg_num_neighbors=1.0).double()
    lengths = torch.tensor([0.9, 1.5, 3.2, cutoff - 1e-5, cutoff], dtype=torch.float64)
    lengths.requires_grad_(True)
    edge_index = torch.tensor([[1, 2, 3, 4, 5], [0, 0, 0, 0, 0]])
    per_edge = [descriptor(lengths[i : i + 1], edge_index[:, i : i + 1], 1) for i in range(5)]
    envelope = PolynomialEnvelope(cutoff, 6)(lengths.detach())
    for i, histogram in enumerate(per_edge):  # one neighbour's memberships sum to u(r)
        torch.testing.assert_close(histogram.sum().detach(), envelope[i])
    assert int(per_edge[1].argmax()) == 2 and int(per_edge[2].argmax()) == 5  # bins of 0.625 Å
    total = descriptor(lengths, edge_index, 1)
    torch.testing.assert_close(total, sum(per_edge))
    (slope,) = torch.autograd.grad(total[0, -1], lengths, create_graph=True)
    (curvature,) = torch.autograd.grad(slope[3], lengths)
    assert abs(float(slope[3])) < 1e-9 and abs(float(curvature[3])) < 1e-4  # C2 at r_c
    assert float(slope[4]) == 0.0


def test_spatial_routing_follows_distances() -> None:
    model = small_model("spatial")
    near, far = model(pair_batch(1.2)), model(pair_batch(3.0))
    assert not torch.allclose(near["routing"]["probs"], far["routing"]["probs"])
    lonely = model(pair_batch(model.cutoff + 0.5))["routing"]["probs"]
    torch.testing.assert_close(lonely[0], lonely[1])  # no neighbours: the same (bias) logits


def test_none_mode_is_one_expert_with_weight_one(molecules) -> None:
    model = small_model("none")
    out = model(molecules)
    n_atoms = molecules["z"].numel()
    ones = torch.ones(n_atoms, 1, dtype=torch.float64)
    torch.testing.assert_close(out["routing"]["probs"], ones)
    torch.testing.assert_close(out["routing"]["weights"], ones)
    assert torch.equal(out["routing"]["experts"], torch.zeros(n_atoms, 1, dtype=torch.long))
    assert float(out["aux_loss"]) == 0.0
    assert count_parameters(model.router) == 0
    with pytest.raises(ValueError, match="num_experts=1 and top_k=1"):
        DeepSetMoEConfig(router_mode="none")


def test_matched_no_moe_config_matches_the_parameter_count() -> None:
    for config in (DeepSetMoEConfig(), DeepSetMoEConfig(**SMALL_CONFIG)):
        control = matched_no_moe_config(config)
        assert (control.router_mode, control.num_experts, control.top_k) == ("none", 1, 1)
        assert dataclasses_equal_except(config, control, {"router_mode", "num_experts"})
        reference, matched = (
            count_parameters(DeepSetMoE(config)),
            count_parameters(DeepSetMoE(control)),
        )
        per_hidden = config.latent_dim + 1 + config.expert_out_dim
        assert abs(matched - reference) <= per_hidden / 2
    default = matched_no_moe_config()
    assert default.expert_hidden == 515
    assert count_parameters(DeepSetMoE(DeepSetMoEConfig())) == 194_632
    assert count_parameters(DeepSetMoE(default)) == 194_563
    # the ablation's router_none control: hybrid router, one cutoff, no body-ordered term
    # (the defaults then)
    hybrid = DeepSetMoEConfig(router_mode="hybrid", body_order=0, many_body_cutoff=None)
    assert matched_no_moe_config(hybrid).expert_hidden == 521
    assert count_parameters(DeepSetMoE(hybrid)) == 193_480


def dataclasses_equal_except(first: DeepSetMoEConfig, second: DeepSetMoEConfig, keys) -> bool:
    """Whether the two configs agree on every field but ``keys`` (and the widened expert and
    k, which the no-MoE control changes by design)."""
    skip = set(keys) | {"top_k", "expert_hidden"}
    a, b = first.to_dict(), second.to_dict()
    return all(a[key] == b[key] for key in a if key not in skip)


@pytest.mark.parametrize("router_mode", ["identity", "spatial"])
def test_aux_loss_trains_the_new_routers(router_mode: str, molecules) -> None:
    model = small_model(router_mode).train()
    model(molecules)["aux_loss"].backward()
    assert float(model.router.logits.weight.grad.abs().sum()) > 0
    if router_mode == "identity":
        assert float(model.router.species_embedding.weight.grad.abs().sum()) > 0


# ----------------------------------------------------------------------------- configuration


def test_gate_settings_and_their_defaults() -> None:
    assert GATES == ("smooth_topk", "topk")
    config = DeepSetMoEConfig()
    assert config.gate == "smooth_topk" and config.router_mode == "identity"
    assert DeepSetMoEConfig.from_dict(config.to_dict()) == config
    assert DeepSetMoE.default_settings()["gate"] == "smooth_topk"
    legacy = config.to_dict()
    del legacy["gate"]  # a config saved before gates were selectable
    assert DeepSetMoEConfig.from_dict(legacy).gate == "topk"
    for bad in ({"gate": "soft"}, {"gate_width": 0.0}, {"spatial_bins": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DeepSetMoEConfig(**bad)


@pytest.mark.parametrize("router_mode", ["learned", "fragment", "hybrid"])
def test_the_gate_does_not_change_the_initial_weights(router_mode: str) -> None:
    """For one seed, both gates (and the code before gates existed) start from the same
    parameters: only the gate differs."""
    smooth = small_model(router_mode, gate="smooth_topk").state_dict()
    hard = small_model(router_mode, gate="topk").state_dict()
    assert list(smooth) == list(hard)
    assert all(torch.equal(smooth[key], hard[key]) for key in smooth)


def test_committed_checkpoint_keeps_the_hard_gate_and_no_body_order_term() -> None:
    assert COMMITTED_CHECKPOINT.exists(), f"{COMMITTED_CHECKPOINT} is committed; restore it"
    payload = torch.load(COMMITTED_CHECKPOINT, map_location="cpu", weights_only=False)
    assert "gate" not in payload["model_config"]
    assert "body_order" not in payload["model_config"]
    network = load_potential(COMMITTED_CHECKPOINT).network
    assert network.config.gate == "topk" and network.router.gate == "topk"
    assert network.config.body_order == 0 and network.body_order_energy is None
