"""A per-atom energy linear in the encoder's invariants: an explicitly body-ordered term.

E_body_i = sum_d W[z_i, d] * x_{i,d}, with x_i the invariants of
:meth:`deepset_moe.encoder.PowerSpectrumEncoder.invariants` up to a body order:

- order 2: the C scalar densities A_{i,c,0,0} = 1/N_avg sum_j R_{c,0}(r_ij) w_c(z_j). Linear in
  them, E_body is a learned pair potential sum_j V_{z_i z_j}(r_ij) (2-body);
- order 3: also the power spectrum B_{i,c,c',l} (3-body: i and two neighbours), the linear
  atomic cluster expansion truncated at body order 3.

The weights W [num_species, D] depend only on the centre element; there is no bias (the
per-element offsets are E0, outside the network). Added to the mixture-of-experts energy, the
term gives the model a part that is additive in neighbour pairs (and triplets) by
construction: an environment made of known pairs in a new combination gets the sum of their
known contributions there, whatever the non-linear experts extrapolate on top. W starts at
zero, so a new model's energy equals that of the model without the term.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

BODY_ORDERS = (0, 2, 3)
"""0: no body-ordered term; 2: pair potential; 3: pairs and triplets."""


class LinearBodyOrderEnergy(nn.Module):
    """Per-atom energies [N] (eV) linear in the first ``width`` invariants, per centre element.

    Args:
        num_species: rows of the weight (elements the model knows).
        width: how many leading invariants enter (all C scalar densities for order 2, all
            invariants for order 3).
    """

    def __init__(self, num_species: int, width: int) -> None:
        super().__init__()
        self.width = int(width)
        self.weight = nn.Parameter(torch.zeros(num_species, self.width))

    def forward(self, invariants: Tensor, species: Tensor) -> Tensor:
        """invariants [N, >= width], species [N] (row indices) -> energies [N] in eV."""
        return (invariants[:, : self.width] * self.weight[species]).sum(dim=-1)
