"""The body-ordered energy term of DeepSet-MoE (``body_order``, :mod:`deepset_moe.body_order`):
order 2 is exactly a pair potential, order 3 is not; the term starts at zero; atom weights scale
it like the experts' energy. Its physics (invariances, forces, smoothness) runs in
``tests/deepset_moe/test_physics.py``."""

from __future__ import annotations

import pytest
import torch

from deepset_moe import DeepSetMoE, DeepSetMoEConfig
from deepset_moe.graph import edge_vectors, radius_graph
from deepset_moe.testing import make_batch
from tests.small_deepset_moe import SMALL_CONFIG


def small_model(body_order: int, seed: int = 0) -> DeepSetMoE:
    return DeepSetMoE.from_config(
        **{**SMALL_CONFIG, "router_mode": "identity", "body_order": body_order, "seed": seed}
    ).double()


def randomised(model: DeepSetMoE) -> DeepSetMoE:
    """The model with normal(0, 1) body-order weights (they start at zero)."""
    with torch.no_grad():
        model.body_order_energy.weight.normal_(generator=torch.Generator().manual_seed(1))
    return model


def centre_body_energy(model: DeepSetMoE, z: list[int], pos: list[list[float]]) -> float:
    """The body-ordered energy (eV) of atom 0 of one molecule."""
    positions = torch.tensor(pos, dtype=torch.float64)
    ptr = torch.tensor([0, len(z)])
    edge_index = radius_graph(positions, ptr, model.cutoff)
    vectors, lengths = edge_vectors(positions, edge_index)
    with torch.no_grad():
        encoded = model.encoder.encode(torch.tensor(z), vectors, lengths, edge_index)
    return float(model.body_order_energy(encoded.invariants, encoded.species)[0].detach())


# a C atom with an O and an N neighbour, 2.6 Å apart from each other (both within the cutoff)
CENTRE, FIRST, SECOND = [0.0, 0.0, 0.0], [1.4, 0.0, 0.0], [-0.5, 1.3, 0.2]


def pair_additivity_defect(model: DeepSetMoE) -> tuple[float, float]:
    """(|E(C,O,N) - E(C,O) - E(C,N)|, |E(C,O,N)|) for the centre's body-ordered energy."""
    both = centre_body_energy(model, [6, 8, 7], [CENTRE, FIRST, SECOND])
    first = centre_body_energy(model, [6, 8], [CENTRE, FIRST])
    second = centre_body_energy(model, [6, 7], [CENTRE, SECOND])
    return abs(both - first - second), abs(both)


def test_order_two_is_a_pair_potential_and_order_three_is_not():
    defect, size = pair_additivity_defect(randomised(small_model(2)))
    assert size > 1e-3
    assert defect < 1e-12 * max(1.0, size)
    defect, size = pair_additivity_defect(randomised(small_model(3)))
    assert defect > 1e-3 * size  # the power spectrum couples the two neighbours


def test_term_starts_at_zero_so_a_new_model_equals_the_model_without_it():
    batch = make_batch()
    with_term = small_model(3, seed=5)(batch)
    without = small_model(0, seed=5)(batch)
    assert torch.equal(with_term["energy"], without["energy"])
    assert torch.equal(with_term["forces"], without["forces"])


@pytest.mark.parametrize("body_order", [2, 3])
def test_atom_weights_scale_the_term_like_the_experts_energy(body_order):
    batch = make_batch()
    model = randomised(small_model(body_order))
    plain = model(batch)
    ones = model({**batch, "atom_weights": torch.ones(batch["z"].shape[0], dtype=torch.float64)})
    zeros = model({**batch, "atom_weights": torch.zeros(batch["z"].shape[0], dtype=torch.float64)})
    assert torch.allclose(ones["energy"], plain["energy"], atol=1e-12)
    assert torch.allclose(zeros["energy"], torch.zeros_like(plain["energy"]), atol=1e-12)


def test_body_order_is_validated_and_round_trips():
    with pytest.raises(ValueError, match="body_order must be one of"):
        DeepSetMoEConfig(body_order=1)
    config = DeepSetMoEConfig(body_order=3)
    assert DeepSetMoEConfig.from_dict(config.to_dict()) == config
