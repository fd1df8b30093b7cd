"""The energy + force loss of the trainer: the one copy (training, throughput and speed
benchmarks all use it).

    loss = w_E * sum_b ((E'_b - E_b) / n_b)^2 / B  +  w_F * sum_i |F'_i - F_i|^2 / N  (+ aux)

with energies in eV (residual per atom, eV/atom), forces in eV/Å, B molecules and N atoms in
the (global) batch. The energy residual is taken in float64 (total energies are hundreds of
eV) and cast to float32 before squaring.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


def squared_error_sums(out: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> Tensor:
    """[2] tensor: sum over molecules of the squared per-atom energy residual (eV²/atom²)
    and sum over atoms and components of the squared force residual ((eV/Å)²)."""
    energy_residual = ((out["energy"].double() - batch["energy"]) / batch["n_atoms"]).float()
    force_residual = out["forces"] - batch["forces"].to(out["forces"].dtype)
    return torch.stack([energy_residual.square().sum(), force_residual.square().sum()])


def weighted_loss(
    energy_sq: Tensor,
    force_sq: Tensor,
    energy_weight: float,
    force_weight: float,
    molecules: float,
    atoms: float,
) -> Tensor:
    """``w_E * energy_sq / B + w_F * force_sq / N`` from :func:`squared_error_sums`."""
    return energy_weight * energy_sq / molecules + force_weight * force_sq / atoms


def energy_force_loss(
    out: Mapping[str, Tensor],
    batch: Mapping[str, Tensor],
    energy_weight: float = 1.0,
    force_weight: float = 1.0,
    molecules: float | None = None,
    atoms: float | None = None,
) -> Tensor:
    """The weighted loss of the module docstring plus the model's ``aux_loss`` (if any).

    Args:
        out: model outputs (``energy`` [B] eV, ``forces`` [N, 3] eV/Å, optional ``aux_loss``).
        batch: the batch with reference ``energy``, ``forces`` and ``n_atoms``.
        energy_weight, force_weight: w_E and w_F.
        molecules, atoms: normalisers B and N (default: this batch's; data-parallel training
            passes the global counts).
    """
    energy_sq, force_sq = squared_error_sums(out, batch)
    molecules = float(batch["n_atoms"].numel()) if molecules is None else molecules
    atoms = float(batch["z"].numel()) if atoms is None else atoms
    loss = weighted_loss(energy_sq, force_sq, energy_weight, force_weight, molecules, atoms)
    aux = out.get("aux_loss")
    return loss if aux is None else loss + aux
