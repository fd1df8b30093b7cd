"""Training presets: how long, how fast and on what every model of the benchmark is trained.

Every model uses the same preset of a run, so the comparison is fair. Training stops at the
first of ``max_epochs``, early stopping (``patience`` epochs without a better validation
score), the learning rate falling below ``min_lr``, or the wall-clock budget ``max_minutes``
(which includes the final ID / OOD evaluation: the trainer stops early enough to leave time
for it).

========  ==========================================================================
preset    purpose
========  ==========================================================================
smoke     seconds; tests and CI
quick     <= 10 minutes per (model, task) on 2 CPU cores, evaluation included
full      a GPU; hours, until early stopping
========  ==========================================================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrainingPreset:
    """Hyperparameters of one training run.

    Attributes:
        name: preset name.
        max_epochs: upper bound on epochs.
        max_minutes: wall-clock budget of training plus final evaluation (None: unbounded).
        batch_size: molecules per optimisation step, summed over all processes.
        eval_batch_size: molecules per batch in validation and test evaluation.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW decoupled weight decay.
        warmup_steps: linear learning-rate warmup from ``lr / warmup_steps`` to ``lr``.
        plateau_factor: factor applied to the learning rate on a validation plateau.
        plateau_patience: epochs without improvement before the learning rate is reduced.
        min_lr: training stops once the learning rate falls below this.
        patience: early-stopping patience in epochs (validation score, see trainer).
        energy_weight: w_E of the loss (on squared per-atom energy errors, (eV/atom)^2).
        force_weight: w_F of the loss (on squared force-error norms, (eV/Å)^2).
        ema_decay: decay of the exponential moving average of the weights.
        grad_clip: maximum global gradient norm (None: no clipping).
        max_frames_per_epoch: cap on training frames drawn per epoch (None: all), so that
            validation, checkpoints and the time budget are checked often on large sets.
        max_val_frames: cap on validation frames (a fixed seeded subset; None: all).
    """

    name: str
    max_epochs: int
    max_minutes: float | None
    batch_size: int
    eval_batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    plateau_factor: float
    plateau_patience: int
    min_lr: float
    patience: int
    energy_weight: float
    force_weight: float
    ema_decay: float
    grad_clip: float | None
    max_frames_per_epoch: int | None
    max_val_frames: int | None

    def __post_init__(self) -> None:
        problems = [
            message
            for ok, message in (
                (self.max_epochs >= 1, "max_epochs must be >= 1"),
                (self.max_minutes is None or self.max_minutes > 0, "max_minutes must be > 0"),
                (self.batch_size >= 1 and self.eval_batch_size >= 1, "batch sizes must be >= 1"),
                (self.lr > 0 and self.min_lr >= 0, "lr must be > 0 and min_lr >= 0"),
                (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
                (0 < self.plateau_factor < 1, "plateau_factor must be in (0, 1)"),
                (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)"),
                (self.energy_weight >= 0 and self.force_weight >= 0, "loss weights must be >= 0"),
            )
            if not ok
        ]
        if problems:
            raise ValueError(f"preset {self.name!r}: {'; '.join(problems)}")

    def replace(self, **changes: Any) -> TrainingPreset:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, TrainingPreset] = {
    "smoke": TrainingPreset(
        name="smoke",
        max_epochs=3,
        max_minutes=2.0,
        batch_size=8,
        eval_batch_size=32,
        lr=2e-3,
        weight_decay=0.0,
        warmup_steps=2,
        plateau_factor=0.5,
        plateau_patience=2,
        min_lr=1e-6,
        patience=5,
        energy_weight=10.0,
        force_weight=1.0,
        ema_decay=0.9,
        grad_clip=10.0,
        max_frames_per_epoch=64,
        max_val_frames=32,
    ),
    "quick": TrainingPreset(
        name="quick",
        max_epochs=200,
        max_minutes=10.0,
        batch_size=16,
        eval_batch_size=64,
        lr=2e-3,
        weight_decay=1e-6,
        warmup_steps=50,
        plateau_factor=0.5,
        plateau_patience=4,
        min_lr=1e-5,
        patience=12,
        energy_weight=10.0,
        force_weight=1.0,
        ema_decay=0.99,
        grad_clip=10.0,
        max_frames_per_epoch=512,
        max_val_frames=128,
    ),
    "full": TrainingPreset(
        name="full",
        max_epochs=1000,
        max_minutes=None,
        batch_size=32,
        eval_batch_size=128,
        lr=1e-3,
        weight_decay=1e-6,
        warmup_steps=1000,
        plateau_factor=0.5,
        plateau_patience=10,
        min_lr=1e-6,
        patience=40,
        energy_weight=10.0,
        force_weight=1.0,
        ema_decay=0.999,
        grad_clip=10.0,
        max_frames_per_epoch=None,
        max_val_frames=None,
    ),
}


def get_preset(name: str, **overrides: Any) -> TrainingPreset:
    """The preset called ``name``, with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown training preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
