"""The hierarchy of cutoffs of DeepSet-MoE (``many_body_cutoff``): a neighbour between the
many-body cutoff and the cutoff reaches the pair term's scalar densities and nothing else; the
setting is validated and round-trips, and configs without it keep one cutoff. Its physics
(invariances, forces, smoothness across both envelopes) runs in
``tests/deepset_moe/test_physics.py``."""

from __future__ import annotations

import pytest
import torch

from deepset_moe import DeepSetMoE, DeepSetMoEConfig
from deepset_moe.encoder import EncodedAtoms
from deepset_moe.graph import edge_vectors, radius_graph
from tests.small_deepset_moe import SMALL_CONFIG

MANY_BODY_CUTOFF = 3.0
"""Å; the small model's cutoff is 5 Å."""


def encode(model: DeepSetMoE, z: list[int], pos: list[list[float]]) -> EncodedAtoms:
    positions = torch.tensor(pos, dtype=torch.float64)
    edge_index = radius_graph(positions, torch.tensor([0, len(z)]), model.cutoff)
    vectors, lengths = edge_vectors(positions, edge_index)
    with torch.no_grad():
        return model.encoder.encode(torch.tensor(z), vectors, lengths, edge_index)


def test_a_neighbour_beyond_the_many_body_cutoff_reaches_only_the_pair_densities():
    model = DeepSetMoE.from_config(
        **{
            **SMALL_CONFIG,
            "body_order": 3,
            "many_body_cutoff": MANY_BODY_CUTOFF,
            "num_interactions": 1,
        }
    ).double()
    assert model.cutoff == 5.0
    # C at the origin, O bonded to it; N 4 Å from C (between the cutoffs), 5.4 Å from O
    near = encode(model, [6, 8], [[0.0, 0.0, 0.0], [1.4, 0.0, 0.0]])
    far = encode(model, [6, 8, 7], [[0.0, 0.0, 0.0], [1.4, 0.0, 0.0], [-4.0, 0.0, 0.0]])
    channels = model.config.num_channels
    assert torch.allclose(far.latent[:2], near.latent, atol=1e-12, rtol=0)
    assert torch.allclose(far.invariants[:2, channels:], near.invariants[:, channels:], atol=1e-12)
    pair_change = (far.invariants[0, :channels] - near.invariants[0, :channels]).abs().max()
    assert pair_change > 1e-4  # the pair term still sees N
    # without the second cutoff, N reaches C's power spectrum and latent
    one_cutoff = DeepSetMoE.from_config(**{**SMALL_CONFIG, "body_order": 3}).double()
    alone = encode(one_cutoff, [6, 8], [[0.0, 0.0, 0.0], [1.4, 0.0, 0.0]])
    joined = encode(one_cutoff, [6, 8, 7], [[0.0, 0.0, 0.0], [1.4, 0.0, 0.0], [-4.0, 0.0, 0.0]])
    assert (joined.latent[0] - alone.latent[0]).abs().max() > 1e-4


def test_many_body_cutoff_is_validated_round_trips_and_defaults_to_one_cutoff_when_absent():
    with pytest.raises(ValueError, match="many_body_cutoff must be None or in"):
        DeepSetMoEConfig(many_body_cutoff=5.0)
    with pytest.raises(ValueError, match="many_body_cutoff must be None or in"):
        DeepSetMoEConfig(many_body_cutoff=0.0)
    with pytest.raises(ValueError, match="many_body_cutoff needs body_order 2 or 3"):
        DeepSetMoEConfig(body_order=0, many_body_cutoff=4.0)
    config = DeepSetMoEConfig(body_order=2, many_body_cutoff=4.0)
    assert DeepSetMoEConfig.from_dict(config.to_dict()) == config
    saved_before = {k: v for k, v in config.to_dict().items() if k != "many_body_cutoff"}
    assert DeepSetMoEConfig.from_dict(saved_before).many_body_cutoff is None
