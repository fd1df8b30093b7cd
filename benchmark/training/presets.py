"""Training presets: how long, how fast and on what every model of the benchmark is trained.

Budgets are **optimiser steps**: every model of a run takes ``max_steps`` steps of
``batch_size`` molecules drawn in the same seeded order from the same training frames, so the
same command and seed give the same metrics whatever else runs on the machine. Every
``eval_every`` steps (one *round*) the EMA weights are evaluated on a fixed seeded ID
validation subset (``max_val_frames``), which decides the best checkpoint and the
learning-rate plateau, and on a fixed seeded OOD subset (``ood_curve_frames``), which is only
recorded (the ID-OOD curve) and never decides anything. ``max_minutes`` is a safety cap: a run
that hits it stops, and its result says so (``time_cap_hit``); it is not the normal stop.
``patience`` (rounds without a better validation score) enables early stopping; presets leave
it off, so every model gets the same number of steps.

The GMD-26 authors' protocol differs in two choices, available as options for comparison:
``id_split="interleaved"`` (ID test frames drawn at random from the training trajectories
instead of held-out trajectories) and ``e0="none"`` (no per-element reference energies).

==========  ==============================================================================
preset      purpose
==========  ==============================================================================
smoke       seconds; tests and CI
quick       the README main job: 300 steps x 16 molecules, ~2 min per cell on one core
protocol    the committed comparison: the paper's batch 8 and weight EMA 0.999, 3,000 steps
            (24,000 training frames, ~8 passes over duplication's training set), sized so
            the CPU-feasible matrix finishes in about 12 CPU-hours (docs/metrics.md)
full        a GPU: 30,000 steps of 32 molecules
==========  ==============================================================================

Not to be confused with the dataset presets (``smoke`` / ``standard`` molecule sets,
:data:`benchmark.dataset.tasks.DATASET_PRESETS`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

ID_SPLITS = ("held_out", "interleaved")
E0_MODES = ("fit", "none")


@dataclass(frozen=True)
class TrainingPreset:
    """Hyperparameters of one training run.

    Attributes:
        name: preset name.
        max_steps: optimiser steps of the run (the budget).
        eval_every: steps per round (validation, ID-OOD curve point, checkpoint).
        batch_size: molecules per optimisation step, summed over all processes.
        eval_batch_size: molecules per batch in validation and test evaluation.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW decoupled weight decay.
        warmup_steps: linear learning-rate warmup from ``lr / warmup_steps`` to ``lr``.
        plateau_factor: factor applied to the learning rate on a validation plateau.
        plateau_patience: rounds without improvement before the learning rate is reduced.
        min_lr: floor of the learning rate.
        energy_weight: w_E of the loss (on squared per-atom energy errors, (eV/atom)^2).
        force_weight: w_F of the loss (on squared force-error norms, (eV/Å)^2).
        ema_decay: decay of the exponential moving average of the weights.
        grad_clip: maximum global gradient norm (None: no clipping).
        max_val_frames: ID validation subset (fixed, seeded; None: the whole split).
        ood_curve_frames: OOD subset of the ID-OOD curve (fixed, seeded; 0: no curve).
        patience: early-stopping patience in rounds (None: no early stopping).
        max_minutes: wall-clock safety cap of training (None: none).
        id_split: ``held_out`` (ID test = unseen trajectories) or ``interleaved`` (the
            authors' protocol: ID test frames drawn from the training trajectories).
        e0: ``fit`` (least-squares per-element E0) or ``none`` (the authors' protocol).
    """

    name: str
    max_steps: int
    eval_every: int
    batch_size: int
    eval_batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    plateau_factor: float
    plateau_patience: int
    min_lr: float
    energy_weight: float
    force_weight: float
    ema_decay: float
    grad_clip: float | None
    max_val_frames: int | None
    ood_curve_frames: int = 0
    patience: int | None = None
    max_minutes: float | None = None
    id_split: str = "held_out"
    e0: str = "fit"

    def __post_init__(self) -> None:
        problems = [
            message
            for ok, message in (
                (self.max_steps >= 1, "max_steps must be >= 1"),
                (self.eval_every >= 1, "eval_every must be >= 1"),
                (self.max_minutes is None or self.max_minutes > 0, "max_minutes must be > 0"),
                (self.batch_size >= 1 and self.eval_batch_size >= 1, "batch sizes must be >= 1"),
                (self.lr > 0 and self.min_lr >= 0, "lr must be > 0 and min_lr >= 0"),
                (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
                (0 < self.plateau_factor < 1, "plateau_factor must be in (0, 1)"),
                (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)"),
                (self.energy_weight >= 0 and self.force_weight >= 0, "loss weights must be >= 0"),
                (self.ood_curve_frames >= 0, "ood_curve_frames must be >= 0"),
                (self.patience is None or self.patience >= 1, "patience must be >= 1 or None"),
                (self.id_split in ID_SPLITS, f"id_split must be one of {ID_SPLITS}"),
                (self.e0 in E0_MODES, f"e0 must be one of {E0_MODES}"),
            )
            if not ok
        ]
        if problems:
            raise ValueError(f"preset {self.name!r}: {'; '.join(problems)}")

    @property
    def rounds(self) -> int:
        """Evaluation rounds of the run, ceil(max_steps / eval_every)."""
        return math.ceil(self.max_steps / self.eval_every)

    @property
    def frames_per_round(self) -> int:
        """Training frames drawn per round (``eval_every`` global batches)."""
        return self.eval_every * self.batch_size

    def replace(self, **changes: Any) -> TrainingPreset:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_COMMON: dict[str, Any] = {
    "weight_decay": 1e-6,
    "plateau_factor": 0.5,
    "energy_weight": 10.0,
    "force_weight": 1.0,
    "grad_clip": 10.0,
}

TRAINING_PRESETS: dict[str, TrainingPreset] = {
    "smoke": TrainingPreset(
        name="smoke",
        max_steps=24,
        eval_every=8,
        batch_size=8,
        eval_batch_size=32,
        lr=2e-3,
        warmup_steps=2,
        plateau_patience=2,
        min_lr=1e-6,
        ema_decay=0.9,
        max_val_frames=32,
        ood_curve_frames=16,
        max_minutes=5.0,
        **{**_COMMON, "weight_decay": 0.0},
    ),
    "quick": TrainingPreset(
        name="quick",
        max_steps=300,
        eval_every=30,
        batch_size=16,
        eval_batch_size=64,
        lr=2e-3,
        warmup_steps=30,
        plateau_patience=3,
        min_lr=1e-5,
        ema_decay=0.99,
        max_val_frames=64,
        ood_curve_frames=64,
        max_minutes=30.0,
        **_COMMON,
    ),
    "protocol": TrainingPreset(
        name="protocol",
        max_steps=3000,
        eval_every=150,
        batch_size=8,
        eval_batch_size=64,
        lr=1e-3,
        warmup_steps=100,
        plateau_patience=4,
        min_lr=1e-5,
        ema_decay=0.999,
        max_val_frames=128,
        ood_curve_frames=128,
        max_minutes=240.0,
        **_COMMON,
    ),
    "full": TrainingPreset(
        name="full",
        max_steps=30000,
        eval_every=500,
        batch_size=32,
        eval_batch_size=128,
        lr=1e-3,
        warmup_steps=1000,
        plateau_patience=6,
        min_lr=1e-6,
        ema_decay=0.999,
        max_val_frames=None,
        ood_curve_frames=512,
        max_minutes=None,
        **_COMMON,
    ),
}


def get_preset(name: str, **overrides: Any) -> TrainingPreset:
    """The preset called ``name``, with optional field overrides."""
    if name not in TRAINING_PRESETS:
        raise ValueError(
            f"unknown training preset {name!r}; choose one of {sorted(TRAINING_PRESETS)}"
        )
    preset = TRAINING_PRESETS[name]
    return preset.replace(**overrides) if overrides else preset
