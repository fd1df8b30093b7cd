"""Small DeepSet-MoE models and ID/OOD batches of real molecules for the routing, attribution
and calculator tests (a few thousand parameters, so each test runs in seconds on CPU)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from benchmark.datasets import Batch, collate_frames
from deepset_moe import DeepSetMoE, DeepSetMoEConfig
from tests.physics_suite import molecule_frame

SMALL_CONFIG: dict[str, Any] = dict(
    num_radial=6,
    radial_hidden=16,
    l_max=2,
    num_channels=4,
    species_dim=8,
    encoder_hidden=32,
    latent_dim=16,
    num_experts=4,
    top_k=2,
    fragment_dim=8,
    expert_hidden=16,
    expert_out_dim=16,
    readout_hidden=16,
)

ID_SMILES: tuple[str, ...] = ("OCCC", "NCCC", "OC(=O)CC", "O=CCCC")
"""Mono-substituted chains (the duplication task's training family)."""

OOD_SMILES: tuple[str, ...] = ("OCCCO", "NCCCN", "OC(=O)CC(=O)O")
"""The same fragments twice (the duplication task's OOD family)."""


def small_model(**overrides: Any) -> DeepSetMoE:
    """A seeded, randomly initialised small DeepSet-MoE (``overrides`` change the config)."""
    return DeepSetMoE(DeepSetMoEConfig(**{**SMALL_CONFIG, **overrides}))


def batches(smiles: Sequence[str], per_batch: int = 2, seed: int = 0) -> list[Batch]:
    """float32 batches of one labelled ETKDG conformer per SMILES, ``per_batch`` per batch."""
    frames = [molecule_frame(s, seed) for s in smiles]
    return [collate_frames(frames[i : i + per_batch]) for i in range(0, len(frames), per_batch)]


def loaders(seed: int = 0) -> dict[str, list[Batch]]:
    """The trainer's ``loaders`` dict with real ID and OOD molecules."""
    id_batches = batches(ID_SMILES, seed=seed)
    return {
        "train": id_batches,
        "val": id_batches,
        "id_test": id_batches,
        "ood_test": batches(OOD_SMILES, seed=seed),
    }


def scale_parameters(model: torch.nn.Module, factor: float) -> None:
    """Multiply every parameter by ``factor`` in place (larger, more non-linear outputs)."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(factor)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run with ``count`` intra-op threads (tiny models are fastest single-threaded on a
    shared CPU), restoring the previous setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
