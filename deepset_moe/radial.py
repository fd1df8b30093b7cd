"""Radial basis of edge lengths: Bessel functions times a smooth polynomial cutoff envelope.

For an edge of length r (Å) and cutoff r_c the basis is

    e_n(r) = sin(n * pi * r / r_c) / (r / r_c) * u(r / r_c),   n = 1..N,

dimensionless and of order one for bonded and non-bonded distances (n * pi times the
spherical Bessel function j_0(n * pi * r / r_c)),

with the polynomial envelope of exponent p (Klicpera et al., DimeNet)

    u(d) = 1 - (p+1)(p+2)/2 d^p + p(p+2) d^(p+1) - p(p+1)/2 d^(p+2)   (d < 1),  0 otherwise,

which equals 1 at d = 0 and whose value, first and second derivatives vanish at d = 1, so
energies, forces and force derivatives go to zero continuously as a neighbour leaves the
cutoff sphere.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PolynomialEnvelope(nn.Module):
    """Smooth cutoff u(r / r_c) (see module docstring), maps [E] lengths (Å) to [E]."""

    def __init__(self, cutoff: float, exponent: int = 6) -> None:
        super().__init__()
        if exponent < 2:
            raise ValueError(f"envelope exponent must be >= 2, got {exponent}")
        self.cutoff = float(cutoff)
        self.exponent = int(exponent)

    def forward(self, lengths: Tensor) -> Tensor:
        p = self.exponent
        d = lengths / self.cutoff
        value = (
            1.0
            - (p + 1) * (p + 2) / 2 * d**p
            + p * (p + 2) * d ** (p + 1)
            - p * (p + 1) / 2 * d ** (p + 2)
        )
        return torch.where(d < 1.0, value, torch.zeros_like(value))


class BesselBasis(nn.Module):
    """Enveloped Bessel radial basis: [E] lengths (Å) -> [E, num_radial]."""

    def __init__(self, cutoff: float, num_radial: int = 8, envelope_exponent: int = 6) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.num_radial = int(num_radial)
        frequencies = math.pi / self.cutoff * torch.arange(1, num_radial + 1, dtype=torch.float32)
        self.register_buffer("frequencies", frequencies)
        self.envelope = PolynomialEnvelope(cutoff, envelope_exponent)

    def forward(self, lengths: Tensor) -> Tensor:
        r = lengths.unsqueeze(-1)
        bessel = torch.sin(self.frequencies * r) * (self.cutoff / r)
        return bessel * self.envelope(lengths).unsqueeze(-1)
