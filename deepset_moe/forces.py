"""Forces as the negative gradient of the energy: the one copy every model uses."""

from __future__ import annotations

import torch
from torch import Tensor


def forces_from_energy(
    energy: Tensor, pos: Tensor, create_graph: bool, retain_graph: bool | None = None
) -> Tensor:
    """F = -dE/dpos [N, 3] (eV/Å) of the summed energies [B] (eV) w.r.t. positions (Å).

    Atoms that do not enter the energy (lone atoms without neighbours) get zero force, and an
    energy that does not depend on ``pos`` at all gives zeros.

    Args:
        energy: [B] energies, part of a graph from ``pos``.
        pos: [N, 3] positions that require grad.
        create_graph: keep the graph of the forces (force-loss training).
        retain_graph: keep the energy's graph for a later backward (default: ``create_graph``).
    """
    if not energy.requires_grad:
        return torch.zeros_like(pos)
    (gradient,) = torch.autograd.grad(
        energy.sum(),
        pos,
        create_graph=create_graph,
        retain_graph=retain_graph,
        allow_unused=True,
        materialize_grads=True,
    )
    return -gradient
