"""Exponential moving average (EMA) of a model's floating-point parameters.

After every optimiser step, ``shadow <- d * shadow + (1 - d) * param`` with
``d = min(decay, (1 + n) / (10 + n))`` (n = number of updates so far), so that early, poorly
trained weights are forgotten quickly. Validation, checkpoints and evaluation use the shadow
weights (:meth:`ExponentialMovingAverage.swapped_in`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class ExponentialMovingAverage:
    """Shadow copies of the floating-point parameters of ``module``."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self._parameters = [p for p in module.parameters() if p.dtype.is_floating_point]
        self.shadow = [p.detach().clone() for p in self._parameters]

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move the shadow weights towards the current parameters."""
        decay = self.current_decay()
        for shadow, param in zip(self.shadow, self._parameters, strict=True):
            shadow.lerp_(param.detach(), 1.0 - decay)
        self.num_updates += 1

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Within the block the module holds the EMA weights; the live ones are restored after."""
        live = [p.detach().clone() for p in self._parameters]
        with torch.no_grad():
            for param, shadow in zip(self._parameters, self.shadow, strict=True):
                param.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, saved in zip(self._parameters, live, strict=True):
                    param.copy_(saved)

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "num_updates": self.num_updates,
            "shadow": [s.clone() for s in self.shadow],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(
                f"EMA state holds {len(state['shadow'])} tensors, the model {len(self.shadow)}"
            )
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        with torch.no_grad():
            for shadow, saved in zip(self.shadow, state["shadow"], strict=True):
                shadow.copy_(saved)
