"""Learning-rate schedule of the trainer: linear warmup, then reduce-on-plateau.

``lr = peak_lr * warmup(step) * scale`` with ``warmup(step) = min(1, (step + 1) / W)`` over the
first W optimiser steps, and ``scale`` multiplied by ``factor`` whenever the validation score
has not improved (relative threshold 1e-4) for more than ``patience`` rounds, never below
``min_lr``. The score is the ID validation score: OOD data never reaches this schedule.

Why plateau rather than cosine: reduce-on-plateau adapts to the progress each model actually
makes within the common step budget (as MACE and NequIP do by default).
"""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer

RELATIVE_THRESHOLD = 1e-4
"""A score counts as better when below ``best * (1 - RELATIVE_THRESHOLD)``."""


class WarmupPlateauSchedule:
    """Sets the learning rate of every parameter group of ``optimizer``."""

    def __init__(
        self,
        optimizer: Optimizer,
        peak_lr: float,
        warmup_steps: int,
        factor: float,
        patience: int,
        min_lr: float = 0.0,
    ) -> None:
        self.optimizer = optimizer
        self.peak_lr = peak_lr
        self.warmup_steps = warmup_steps
        self.factor = factor
        self.patience = patience
        self.min_scale = min_lr / peak_lr
        self.steps = 0
        self.scale = 1.0
        self.best_score = float("inf")
        self.bad_epochs = 0
        self._apply()

    @property
    def lr(self) -> float:
        warmup = 1.0 if self.warmup_steps == 0 else min(1.0, (self.steps + 1) / self.warmup_steps)
        return self.peak_lr * warmup * self.scale

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def step_batch(self) -> None:
        """Call after every optimiser step."""
        self.steps += 1
        self._apply()

    def step_epoch(self, score: float) -> None:
        """Call after every validation with its score (lower is better)."""
        if score < self.best_score * (1.0 - RELATIVE_THRESHOLD):
            self.best_score = score
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                self.scale = max(self.scale * self.factor, self.min_scale)
                self.bad_epochs = 0
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "scale": self.scale,
            "best_score": self.best_score,
            "bad_epochs": self.bad_epochs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.scale = float(state["scale"])
        self.best_score = float(state["best_score"])
        self.bad_epochs = int(state["bad_epochs"])
        self._apply()
