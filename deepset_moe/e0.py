"""Per-element reference energies (E0), fitted once and added outside every network.

The total energy of a molecule is modelled as ``E = sum_i E0(z_i) + E_network``. E0 is
fitted by linear least squares on the training split, ``E_b ≈ sum_Z c_bZ E0(Z)`` with
``c_bZ`` the count of element Z in molecule b, in float64. Every model — DeepSet-MoE and every
baseline — is wrapped in :class:`PotentialWithE0` in exactly the same way, so the networks
learn the same residual.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

MAX_ATOMIC_NUMBER = 118


class AtomicReferenceEnergies(nn.Module):
    """Lookup table E0(Z) in eV, stored as a float64 buffer of length 119."""

    def __init__(self, energies: Mapping[int, float] | None = None) -> None:
        super().__init__()
        table = torch.zeros(MAX_ATOMIC_NUMBER + 1, dtype=torch.float64)
        for number, energy in (energies or {}).items():
            table[int(number)] = float(energy)
        self.register_buffer("table", table)

    @classmethod
    def fit(
        cls, numbers_per_molecule: Sequence[np.ndarray], energies: Sequence[float]
    ) -> AtomicReferenceEnergies:
        """Least-squares E0 from molecules' atomic numbers and total energies (eV).

        Args:
            numbers_per_molecule: one [n_b] integer array per molecule.
            energies: [B] total energies, eV.

        Raises:
            ValueError: no molecules, or mismatched lengths.
        """
        if len(numbers_per_molecule) == 0 or len(numbers_per_molecule) != len(energies):
            raise ValueError(
                f"E0 fit needs one energy per molecule (got {len(numbers_per_molecule)} "
                f"molecules, {len(energies)} energies)"
            )
        elements = sorted({int(z) for numbers in numbers_per_molecule for z in numbers})
        column = {z: j for j, z in enumerate(elements)}
        counts = np.zeros((len(energies), len(elements)), dtype=np.float64)
        for row, numbers in enumerate(numbers_per_molecule):
            for z in numbers:
                counts[row, column[int(z)]] += 1.0
        solution, *_ = np.linalg.lstsq(counts, np.asarray(energies, dtype=np.float64), rcond=None)
        return cls({z: solution[column[z]] for z in elements})

    def as_dict(self) -> dict[int, float]:
        """Non-zero entries as ``{Z: E0 in eV}`` (JSON-friendly after key conversion)."""
        return {int(z): float(e) for z, e in enumerate(self.table.tolist()) if e != 0.0}

    def node_energies(self, z: Tensor) -> Tensor:
        """E0 of each atom, [N] float64."""
        return self.table[z]

    def forward(self, z: Tensor, batch: Tensor, num_molecules: int) -> Tensor:
        """Sum of E0 over the atoms of each molecule, [B] float64."""
        out = torch.zeros(num_molecules, dtype=torch.float64, device=z.device)
        return out.index_add(0, batch, self.table[z])


class PotentialWithE0(nn.Module):
    """Wraps a network (DESIGN.md interface) and adds per-element reference energies.

    ``energy`` [B] becomes ``network energy + sum_i E0(z_i)`` in float64 and ``node_energy``
    [N] (when the network returns it) gains ``E0(z_i)``. Forces are unchanged (E0 does not
    depend on positions). Every other output (``routing``, ``aux_loss``, ...) passes through.
    """

    def __init__(self, network: nn.Module, e0: AtomicReferenceEnergies) -> None:
        super().__init__()
        self.network = network
        self.e0 = e0

    @property
    def cutoff(self) -> float:
        return float(self.network.cutoff)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        out = dict(self.network(batch))
        num_molecules = batch["ptr"].numel() - 1
        out["energy"] = out["energy"].double() + self.e0(batch["z"], batch["batch"], num_molecules)
        if "node_energy" in out:
            out["node_energy"] = out["node_energy"].double() + self.e0.node_energies(batch["z"])
        return out


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare network inside ``DistributedDataParallel`` and ``PotentialWithE0`` wrappers.

    Routing does not depend on the per-element E0 shift, and calling the DDP wrapper from a
    single rank would enter collectives, so routing is always read from the bare network.
    """
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(model, PotentialWithE0):
            model = model.network
        else:
            return model
