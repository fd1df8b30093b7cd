"""What every baseline shares: the DESIGN.md forward (graph, energy, autograd forces) and the
mapping from atomic numbers to the model's element channels.

A baseline only defines :meth:`AtomisticBaseline.atomic_energies`, the per-atom energy of a
batch, building its neighbour graph with :func:`deepset_moe.graph.radius_graph` (directly or
through a library hook); :meth:`AtomisticBaseline.forward` sums atoms into molecules and
differentiates the energy for the forces. Energies are residuals in eV (E0 is added outside, by
:class:`deepset_moe.e0.PotentialWithE0`), forces are in eV/Å.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from deepset_moe.forces import forces_from_energy
from deepset_moe.species import SpeciesIndex
from kernels.segment_sum import segment_sum_csr

DEFAULT_ELEMENTS: tuple[int, ...] = (1, 6, 7, 8)
"""Atomic numbers of H, C, N, O (the GMD-26 elements): the default element channels."""


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator inside the block, restoring the caller's state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class AtomisticBaseline(nn.Module):
    """Base of every baseline: ``forward(batch)`` with the DESIGN.md outputs.

    Subclasses pass ``cutoff`` (Å) and their ``elements`` to ``__init__`` and implement
    :meth:`atomic_energies`; ``self.element_index`` maps atomic numbers to element channels
    (and rejects the others, naming them).
    """

    def __init__(self, cutoff: float, elements: Sequence[int]) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.element_index = SpeciesIndex(elements)

    @classmethod
    def from_config(cls, **settings: Any) -> AtomisticBaseline:
        """Build from keyword settings (the registry's and the checkpoint loader's
        constructor)."""
        return cls(**settings)

    def atomic_energies(self, z: Tensor, pos: Tensor, batch: Tensor, ptr: Tensor) -> Tensor:
        """Per-atom residual energies [N] in eV.

        Args:
            z: [N] atomic numbers.
            pos: [N, 3] positions in Å (requires grad; edge vectors must be taken from it).
            batch: [N] molecule index of each atom.
            ptr: [B+1] CSR offsets of the molecules.
        """
        raise NotImplementedError

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Energy [B] (eV), forces [N, 3] = -dE/dpos (eV/Å) and node_energy [N] (eV).

        Forces keep their graph (``create_graph``) in training mode so force losses train the
        weights. Gradients are enabled even under ``torch.no_grad`` (evaluation).
        """
        ptr = batch["ptr"]
        with torch.enable_grad():
            pos = batch["pos"]
            if not pos.requires_grad:
                pos = pos.detach().requires_grad_(True)
            node_energy = self.atomic_energies(batch["z"], pos, batch["batch"], ptr)
            energy = segment_sum_csr(node_energy.unsqueeze(-1), ptr).squeeze(-1)
            forces = forces_from_energy(energy, pos, create_graph=self.training)
        return {"energy": energy, "forces": forces, "node_energy": node_energy}
