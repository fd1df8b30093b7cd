"""Small DeepSet-MoE models and ID/OOD batches of real molecules for the routing, attribution
and calculator tests (a few thousand parameters, so each test runs in seconds on CPU), and
:func:`molecule_frame`, the test geometries of :mod:`deepset_moe.testing` as benchmark frames."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from rdkit import Chem

from benchmark.dataset.frames import Frame
from benchmark.evaluation.smoothness import SMALL_MODEL
from deepset_moe import DeepSetMoE, DeepSetMoEConfig
from deepset_moe.batch import Batch, collate
from deepset_moe.testing import Tolerances, embed_molecule

SMALL_CONFIG: dict[str, Any] = SMALL_MODEL
"""The small model of the routing, attribution and calculator tests (one definition, shared with
the smoothness recipes of :mod:`benchmark.evaluation.smoothness`, whose seeds assume it)."""

STABLE_ROUTING_SEED = 4
"""Initialisation seed of :data:`SMALL_CONFIG` models for which, in every router mode, each
test-molecule atom's k-th and (k+1)-th gate probabilities differ by more than
:data:`MIN_TOPK_MARGIN` (``deepset_moe.testing.TEST_SMILES``): finite-difference steps
(1e-4 Å) then cannot switch experts, so the piecewise-smooth energy is smooth there."""

MIN_TOPK_MARGIN = 1e-3

POSITION_DEPENDENT_ROUTING = ("learned", "hybrid", "spatial")
"""Router modes whose logits depend on positions (the others are lookups)."""


def physics_tolerances(config: DeepSetMoEConfig) -> Tolerances:
    """The physics kit's limits for a DeepSet-MoE: the hard ``topk`` gate on position-dependent
    logits makes the energy jump where an atom's experts change (piecewise smooth, by design);
    the ``smooth_topk`` gate and position-independent routing must be continuous everywhere."""
    hard_gate = getattr(config, "gate", "topk") == "topk"
    return Tolerances(
        routing_jumps=hard_gate and config.router_mode in POSITION_DEPENDENT_ROUTING,
        min_routing_margin=MIN_TOPK_MARGIN,
    )


ID_SMILES: tuple[str, ...] = ("OCCC", "NCCC", "OC(=O)CC", "O=CCCC")
"""Mono-substituted chains (the duplication task's training family)."""

OOD_SMILES: tuple[str, ...] = ("OCCCO", "NCCCN", "OC(=O)CC(=O)O")
"""The same fragments twice (the duplication task's OOD family)."""


def molecule_frame(smiles: str, seed: int = 0) -> Frame:
    """The physics kit's geometry of ``smiles`` (ETKDG seed ``seed``, MMFF-relaxed, jiggled by
    0.05 Å; :func:`deepset_moe.testing.embed_molecule`) as an unlabelled benchmark frame
    (energy and forces are zeros)."""
    geometry = embed_molecule(smiles, seed)
    return Frame(
        numbers=geometry.numbers,
        positions=geometry.positions,
        fragment=geometry.fragment,
        energy=0.0,
        forces=np.zeros_like(geometry.positions),
        smiles=Chem.MolToSmiles(Chem.MolFromSmiles(smiles)),
        molecule_id=smiles,
        trajectory_id=f"{smiles}/t{seed}",
        reference="none",
    )


def small_model(**overrides: Any) -> DeepSetMoE:
    """A seeded, randomly initialised small DeepSet-MoE (``overrides`` change the config)."""
    return DeepSetMoE(DeepSetMoEConfig(**{**SMALL_CONFIG, **overrides}))


def batches(smiles: Sequence[str], per_batch: int = 2, seed: int = 0) -> list[Batch]:
    """float32 batches of one labelled ETKDG conformer per SMILES, ``per_batch`` per batch."""
    frames = [molecule_frame(s, seed) for s in smiles]
    return [collate(frames[i : i + per_batch]) for i in range(0, len(frames), per_batch)]


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
