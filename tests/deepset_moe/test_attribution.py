"""Integrated-Gradients attributions: completeness, exactness for linear rho, summaries."""

from __future__ import annotations

import json

import pytest
import torch

from deepset_moe import AtomicReferenceEnergies, PotentialWithE0
from deepset_moe.attribution import (
    attribute_molecules,
    attribution_figure,
    format_attribution_tables,
    split_attribution_summary,
)
from deepset_moe.fragments import FRAGMENT_NAMES
from tests.small_deepset_moe import (
    ID_SMILES,
    OOD_SMILES,
    batches,
    scale_parameters,
    small_model,
    torch_threads,
)

E0 = AtomicReferenceEnergies({1: -13.6, 6: -1030.0, 7: -1480.0, 8: -2040.0})


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def id_batches():
    return batches(ID_SMILES)


def _network_energy(network, batch, weights):
    """Direct model evaluation of E(a) in float64 (independent of Captum)."""
    with torch.no_grad():
        return network.double()({**batch, "atom_weights": weights.double()})["energy"]


def test_linear_rho_attribution_is_the_per_atom_energy(id_batches):
    network = small_model()
    assert network.config.uses_node_energy
    model = PotentialWithE0(network, E0)
    result = attribute_molecules(model, id_batches, n_steps=8)
    with torch.no_grad():
        node_energy = torch.cat([model.double()(b)["node_energy"] for b in id_batches])
        z = torch.cat([b["z"] for b in id_batches])
    # E0 does not depend on atom_weights: attribution = node_energy - E0(z), up to Captum's
    # float32 quadrature weights (relative ~1e-7)
    network_node_energy = node_energy - E0.node_energies(z)
    torch.testing.assert_close(result.attribution, network_node_energy, atol=1e-12, rtol=1e-6)
    torch.testing.assert_close(result.attribution, result.node_energy, atol=1e-12, rtol=1e-6)
    assert torch.all(result.baseline_energy == 0.0)  # bias-free linear rho: rho(0) = 0
    change = result.energy - result.baseline_energy
    assert torch.all(result.delta.abs() < 1e-6 * change.abs())


def test_mlp_rho_completeness_is_non_trivial(id_batches):
    network = small_model(readout="mlp")
    scale_parameters(network.readout, 3.0)  # make rho clearly non-linear
    result = attribute_molecules(network, id_batches, n_steps=32)
    assert result.node_energy is None
    batch = id_batches[0]
    n_atoms = batch["z"].numel()
    n_molecules = batch["ptr"].numel() - 1
    ones = torch.ones(n_atoms, dtype=torch.float64)
    change = _network_energy(network, batch, ones) - _network_energy(network, batch, 0 * ones)
    sums = torch.zeros(n_molecules, dtype=torch.float64).index_add_(
        0, batch["batch"], result.attribution[:n_atoms]
    )
    # completeness against an independent model evaluation, far below the energy change
    torch.testing.assert_close(sums, change, atol=1e-12, rtol=1e-6)
    assert change.abs().min() > 1e-3
    assert torch.all(result.delta[:n_molecules].abs() < 1e-6 * change.abs())
    assert torch.all(result.baseline_energy != 0.0)  # rho(0) != 0 for an MLP

    # non-trivial path integral: IG differs from gradient x input at a = 1
    weights = ones.clone().requires_grad_(True)
    energy = network({**batch, "atom_weights": weights})["energy"].sum()
    (gradient,) = torch.autograd.grad(energy, weights)
    assert (gradient - result.attribution[:n_atoms]).abs().max() > 1e-3


def test_summary_tables_and_figure():
    network = small_model(readout="mlp")
    results = {
        "id": attribute_molecules(network, batches(ID_SMILES), max_molecules=3, n_steps=8),
        "ood": attribute_molecules(network, batches(OOD_SMILES), n_steps=8),
    }
    assert results["id"].num_molecules == 3
    assert results["ood"].num_molecules == len(OOD_SMILES)
    summaries = {split: split_attribution_summary(r) for split, r in results.items()}
    json.dumps(summaries, allow_nan=False)
    for split, summary in summaries.items():
        total = float(results[split].attribution.sum())
        by_fragment = sum(v["sum_eV"] for v in summary["by_fragment"].values())
        by_expert = sum(v["sum_eV"] for v in summary["by_expert"].values())
        matrix_total = sum(map(sum, summary["fragment_expert_sum_eV"]))
        assert by_fragment == pytest.approx(total) and by_expert == pytest.approx(total)
        assert matrix_total == pytest.approx(total)
        assert sum(v["atoms"] for v in summary["by_fragment"].values()) == summary["atoms"]
    # the OOD molecules here have no CH3 and no aldehyde
    assert summaries["ood"]["by_fragment"]["aldehyde"]["mean_eV_per_atom"] is None

    text = format_attribution_tables(summaries)
    assert all(name in text for name in FRAGMENT_NAMES)
    assert "ID atoms" in text and "OOD atoms" in text and "convergence delta" in text
    figure = attribution_figure(summaries)
    assert len(figure.axes) >= 3  # bar chart + one heatmap per split (+ colour bars)
    assert figure.axes[0].get_title() == "attribution per fragment"
