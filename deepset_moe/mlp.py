"""The multilayer perceptron used throughout DeepSet-MoE (SiLU between linear layers)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import nn


def build_mlp(widths: Sequence[int], bias: bool = True) -> nn.Sequential:
    """``Linear(widths[0], widths[1]) -> SiLU -> ... -> Linear(widths[-2], widths[-1])``.

    No activation after the last layer. Weights are LeCun-normal (std 1/sqrt(fan_in), so
    activations keep their scale through depth); biases keep ``nn.Linear``'s initialisation.
    """
    if len(widths) < 2:
        raise ValueError(f"an MLP needs at least input and output widths, got {list(widths)}")
    layers: list[nn.Module] = []
    for index, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
        if index > 0:
            layers.append(nn.SiLU())
        linear = nn.Linear(width_in, width_out, bias=bias)
        nn.init.normal_(linear.weight, std=width_in**-0.5)
        layers.append(linear)
    return nn.Sequential(*layers)
