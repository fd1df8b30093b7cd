"""The one trainer of the benchmark: every model, the same data, loss, schedule and stopping.

Recipe (identical for DeepSet-MoE and every baseline):

* **E0.** Per-element reference energies are fitted by least squares (float64) on the
  training frames and the network is wrapped in :class:`deepset_moe.PotentialWithE0`, so it
  learns the residual ``E - sum_i E0(z_i)``.
* **Loss.** ``w_E * mean_b((E'_b - E_b) / n_b)^2 + w_F * mean_i |F'_i - F_i|^2``
  (+ the model's ``aux_loss`` when it returns one). The energy residual is taken in float64
  (total energies are large) and cast to float32; the force term is the mean over atoms of
  the squared norm of the force error, (eV/Å)^2; the energy term is in (eV/atom)^2.
* **Optimiser.** AdamW with :class:`benchmark.training.schedule.WarmupPlateauSchedule` (linear
  warmup, then reduce-on-plateau on the validation score); optional gradient-norm clipping.
* **EMA.** An exponential moving average of the weights (:mod:`benchmark.training.ema`) is what is
  validated, checkpointed and evaluated.
* **Validation score** (lower is better; early stopping, best checkpoint, plateau):
  ``force MAE (eV/Å) + energy MAE per atom (eV/atom)`` on the validation split, i.e. both
  errors weighted equally in eV with a length scale of 1 Å.
* **Budget.** ``max_steps`` optimiser steps in rounds of ``eval_every`` steps (the round is
  the unit the code and logs call an epoch: ``eval_every`` global batches drawn from a seeded
  permutation of the training frames). Optional early stopping after ``patience`` rounds
  without a better score (presets leave it off: every model takes the same steps). The
  wall-clock ``deadline`` is only a safety cap: hitting it stops the run with stop reason
  ``"time cap"``, which the results report.
* **ID-OOD curve.** After every round the EMA weights are evaluated on ``curve_frames`` (a
  fixed OOD subset) too; the point (step, ID and OOD force MAE and energy MAE per atom) is
  recorded in the history and nothing else reads it: OOD data never decides the best
  checkpoint, the learning rate or stopping.
* **Checkpoints.** ``last.pt`` after every round and ``best.pt`` at every new best score
  (format of :mod:`deepset_moe.checkpoint`; ``network_state`` holds the EMA weights).
  ``training`` holds the live weights, optimiser, schedule, EMA, early-stopping state,
  history, RNG states, round and step, so ``resume=True`` continues exactly: the data order
  of round e depends only on ``(seed, e)`` (:class:`benchmark.training.distributed.EpochSampler`).
* **Failures.** A non-finite loss raises :class:`NonFiniteLossError` naming the epoch, batch
  and molecules and the likely cause (non-finite labels, a diverged model, an overflowing
  loss), before any update; the checkpoints of earlier epochs are left untouched. A geometry
  no model can evaluate (non-finite or overlapping atoms,
  :class:`deepset_moe.batch.GeometryError`) is named by its frame.
* **Resume** refuses a ``last.pt`` written by another run (:func:`resume_mismatches`: task,
  data, preset, seed, model or its settings differ; only the step budget and the safety cap
  may change) with :class:`benchmark.errors.ResumeMismatchError`. Ctrl-C / SIGTERM stop
  training between batches; ``last.pt`` keeps the last finished round.
* **Distributed.** Under ``torchrun`` the model is wrapped in ``DistributedDataParallel``
  (see :mod:`benchmark.training.distributed`); the loss is normalised by global molecule and atom
  counts so that P processes give the single-process gradient of the same global batch.
  Force training differentiates twice (forces use ``create_graph=True`` inside ``forward``;
  ``loss.backward()`` is the second pass); DDP's reducer only hooks the parameters'
  gradient accumulation, which happens once per step in that second pass, so it works
  unchanged. ``find_unused_parameters=True`` because a mixture of experts may leave an
  expert without atoms on one process.
* **Outputs** (rank 0 only): ``train.log``, TensorBoard scalars under ``tensorboard/``
  (losses, validation metrics, OOD curve, learning rate, throughput; global step = optimiser
  step), and the callbacks' output.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from benchmark.dataset.frames import Frame
from benchmark.errors import ResumeMismatchError
from benchmark.evaluation.predictions import Predictions, evaluate
from benchmark.training.distributed import DistributedContext, all_reduce_sum
from benchmark.training.ema import ExponentialMovingAverage
from benchmark.training.loaders import evaluation_loader, frame_ids, seeded_subset, training_loader
from benchmark.training.loss import squared_error_sums, weighted_loss
from benchmark.training.presets import TrainingPreset
from benchmark.training.schedule import WarmupPlateauSchedule
from deepset_moe.atomic_io import atomic_write
from deepset_moe.batch import GeometryError, batch_to
from deepset_moe.checkpoint import read_checkpoint, save_checkpoint
from deepset_moe.e0 import AtomicReferenceEnergies, PotentialWithE0
from deepset_moe.fragments import DEFAULT_VOCABULARY

logger = logging.getLogger(__name__)

STEP_BUDGET = "step budget"
TIME_CAP = "time cap"
"""Stop reasons: the normal end of a run, and the wall-clock safety cap."""
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
LOG_FILE = "train.log"
TENSORBOARD_DIR = "tensorboard"
CALLBACK_MAX_FRAMES = 128
"""Frames per split handed to epoch callbacks (e.g. routing metrics): a seeded subset drawn
from the whole split, so every molecule is represented whatever the cap."""


class Callback(Protocol):
    """Called on rank 0 after every epoch, with the EMA weights loaded and ``model.eval()``.

    ``model`` is the :class:`PotentialWithE0`-wrapped network; ``writer`` is ``None`` when
    TensorBoard is off; ``loaders`` has keys ``"train"``, ``"val"`` and, when test frames
    were given, ``"id_test"`` and ``"ood_test"`` (ordered, unsharded, batches carry
    ``frame_index``).
    """

    def on_epoch_end(
        self,
        epoch: int,
        model: nn.Module,
        writer: SummaryWriter | None,
        loaders: Mapping[str, DataLoader],
    ) -> None: ...


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the batch and the likely
    cause."""


MAX_LISTED_SETTINGS = 5
RESUMABLE_PRESET_CHANGES = ("max_steps", "max_minutes")
"""Preset fields a resumed run may change: a longer step budget, another safety cap."""


def resume_mismatches(
    payload: Mapping[str, Any],
    *,
    model_name: str,
    model_config: Mapping[str, Any],
    seed: int,
    preset: TrainingPreset,
    run_info: Mapping[str, Any],
) -> list[str]:
    """How the run that wrote checkpoint ``payload`` differs from the one about to resume it,
    as ``"<what> <stored> -> <current>"``; empty when it may be resumed.

    Compared: model name and settings, seed, task, preset name and settings (except
    :data:`RESUMABLE_PRESET_CHANGES`) and the data (the build identity ``data_build`` when
    both runs recorded it, else the resolved ``data_dir``). Facts a checkpoint does not hold
    (older files) are not compared.
    """
    training = payload.get("training") or {}
    differences = []

    def differ(what: str, stored: Any, current: Any) -> None:
        if _canonical(stored) != _canonical(current):
            differences.append(f"{what} {stored!r} -> {current!r}")

    differ("model", payload.get("model_name"), model_name)
    stored_config = payload.get("model_config") or {}
    if payload.get("model_name") == model_name:  # another model's settings all differ
        settings = [
            key
            for key in sorted(set(stored_config) | set(model_config))
            if _canonical(stored_config.get(key)) != _canonical(model_config.get(key))
        ]
        for key in settings[:MAX_LISTED_SETTINGS]:
            differ(f"model setting {key}", stored_config.get(key), model_config.get(key))
        if len(settings) > MAX_LISTED_SETTINGS:
            differences.append(f"{len(settings) - MAX_LISTED_SETTINGS} more model settings")
    if "seed" in training:
        differ("seed", training["seed"], seed)
    for key in ("task", "preset_name"):
        if key in training and key in run_info:
            differ(key.replace("_name", ""), training[key], run_info[key])
    stored_preset = training.get("preset")
    if isinstance(stored_preset, Mapping):
        current_preset = preset.to_dict()
        for key in sorted(set(stored_preset) | set(current_preset)):
            if key not in RESUMABLE_PRESET_CHANGES and key != "name":
                differ(f"preset setting {key}", stored_preset.get(key), current_preset.get(key))
    if training.get("data_build") and run_info.get("data_build"):
        for key in sorted(set(training["data_build"]) | set(run_info["data_build"])):
            differ(
                f"data {key}", training["data_build"].get(key), run_info["data_build"].get(key)
            )
    elif "data_dir" in training and "data_dir" in run_info:
        if Path(training["data_dir"]).resolve() != Path(run_info["data_dir"]).resolve():
            differences.append(f"data {training['data_dir']!r} -> {run_info['data_dir']!r}")
    return differences


def _canonical(value: Any) -> Any:
    """``value`` with tuples as lists, for comparing settings after a JSON / pickle trip."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def validation_score(metrics: Mapping[str, float]) -> float:
    """Force MAE (eV/Å) + energy MAE per atom (eV/atom); lower is better."""
    return float(metrics["force_mae"] + metrics["energy_per_atom_mae"])


@dataclass
class EarlyStopping:
    """Best validation score so far and epochs since it improved."""

    patience: int | None
    best_score: float = math.inf
    best_epoch: int = 0
    epochs_without_improvement: int = 0

    def update(self, score: float, epoch: int) -> bool:
        """Record an epoch's score; True when it is a new best."""
        if score < self.best_score:
            self.best_score, self.best_epoch = score, epoch
            self.epochs_without_improvement = 0
            return True
        self.epochs_without_improvement += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.epochs_without_improvement >= self.patience


@dataclass
class TrainingSummary:
    """What a finished (or stopped) run reports; JSON-able via :meth:`to_dict`."""

    epochs: int
    steps: int
    best_epoch: int
    best_score: float
    stop_reason: str
    train_seconds: float
    train_frames: int
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def frames_per_second(self) -> float:
        return self.train_frames / self.train_seconds if self.train_seconds > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "steps": self.steps,
            "time_cap_hit": self.stop_reason == TIME_CAP,
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "stop_reason": self.stop_reason,
            "train_seconds": self.train_seconds,
            "train_frames": self.train_frames,
            "train_frames_per_second": self.frames_per_second,
            "history": self.history,
        }


class Trainer:
    """Trains one network on one task split (see the module docstring for the recipe).

    Args:
        network: a model with the DESIGN.md interface, without E0.
        model_name, model_config: how to rebuild the network (stored in checkpoints).
        preset: training hyperparameters.
        train_frames, val_frames: training and validation splits.
        out_dir: where checkpoints, logs and TensorBoard files go.
        seed: seed of data order, validation subset and global RNGs (model initialisation
            is seeded by the caller before building the network).
        device: ``"cpu"`` or ``"cuda"``.
        test_frames: optional ``{"id_test": frames, "ood_test": frames}`` for callbacks.
        curve_frames: the fixed OOD subset of the ID-OOD curve (None: no curve).
        callbacks: objects following :class:`Callback`.
        context: process group description (single process by default).
        deadline: ``time.monotonic()`` safety cap of training (None: none).
        progress: show a tqdm bar (rank 0).
        run_info: extra JSON-able facts stored in checkpoints (task, preset name, ...).
        e0: per-element reference energies to use as given (None: fitted on the training
            frames or none at all, by ``preset.e0``).
    """

    def __init__(
        self,
        network: nn.Module,
        model_name: str,
        model_config: Mapping[str, Any],
        preset: TrainingPreset,
        train_frames: Sequence[Frame],
        val_frames: Sequence[Frame],
        out_dir: str | Path,
        *,
        seed: int = 0,
        device: str = "cpu",
        test_frames: Mapping[str, Sequence[Frame]] | None = None,
        curve_frames: Sequence[Frame] | None = None,
        callbacks: Sequence[Callback] = (),
        context: DistributedContext | None = None,
        deadline: float | None = None,
        progress: bool = True,
        run_info: Mapping[str, Any] | None = None,
        e0: AtomicReferenceEnergies | None = None,
    ) -> None:
        if len(train_frames) == 0 or len(val_frames) == 0:
            raise ValueError(
                f"need training and validation frames (got {len(train_frames)} train, "
                f"{len(val_frames)} val)"
            )
        self.model_name = model_name
        self.model_config = dict(model_config)
        self.preset = preset
        self.out_dir = Path(out_dir)
        self.seed = seed
        self.device = torch.device(device)
        self.context = context or DistributedContext()
        self.callbacks = list(callbacks)
        self.deadline = deadline
        self.progress = progress
        self.run_info = dict(run_info or {})

        if e0 is None:
            e0 = (
                AtomicReferenceEnergies.fit(
                    [f.numbers for f in train_frames], [f.energy for f in train_frames]
                )
                if preset.e0 == "fit"
                else AtomicReferenceEnergies()
            )
        self.model = PotentialWithE0(network, e0).to(self.device)
        self.train_model: nn.Module = self.model
        if self.context.is_distributed:
            # Double backward returns some gradients with a layout other than DDP's bucket
            # views (e.g. [1, F] weights); DDP copies them, which is correct, but warns.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
            self.train_model = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=preset.lr, weight_decay=preset.weight_decay
        )
        self.schedule = WarmupPlateauSchedule(
            self.optimizer,
            preset.lr,
            preset.warmup_steps,
            preset.plateau_factor,
            preset.plateau_patience,
            preset.min_lr,
        )
        self.ema = ExponentialMovingAverage(self.model, preset.ema_decay)
        self.early_stopping = EarlyStopping(preset.patience)

        self.train_loader = training_loader(
            train_frames, preset.batch_size, seed, self.context, preset.frames_per_round
        )
        self.val_frames = seeded_subset(val_frames, preset.max_val_frames, seed)
        self.val_loader = evaluation_loader(self.val_frames, preset.eval_batch_size, self.context)
        self.curve_loader = (
            evaluation_loader(list(curve_frames), preset.eval_batch_size, self.context)
            if curve_frames
            else None
        )
        splits = {"train": train_frames, "val": self.val_frames, **(test_frames or {})}
        self.callback_loaders: dict[str, DataLoader] = {
            split: evaluation_loader(
                seeded_subset(frames, CALLBACK_MAX_FRAMES, seed), preset.eval_batch_size
            )
            for split, frames in splits.items()
        }

        self.epoch = 0
        self.saved_epoch = 0
        """Round held by ``last.pt`` (0: none written by this trainer)."""
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self.train_frames_seen = 0
        self.stop_reason = ""
        self.writer: SummaryWriter | None = None

    # ------------------------------------------------------------------ public API

    @property
    def last_checkpoint(self) -> Path:
        return self.out_dir / LAST_CHECKPOINT

    @property
    def best_checkpoint(self) -> Path:
        return self.out_dir / BEST_CHECKPOINT

    def fit(self, resume: bool = False) -> TrainingSummary:
        """Train until a stopping rule fires; with ``resume``, continue from ``last.pt``."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        log_handler = self._open_log()
        try:
            if resume:
                self._restore(self.last_checkpoint)
            else:
                _seed_everything(self.seed)
            if self.context.is_main:
                self.writer = SummaryWriter(
                    self.out_dir / TENSORBOARD_DIR, purge_step=self.step + 1
                )
            logger.info(
                "training %s (%d parameters) with preset %s on %d frames, %d validation frames, "
                "%d process(es), device %s",
                self.model_name,
                sum(p.numel() for p in self.model.parameters()),
                self.preset.name,
                len(self.train_loader.dataset),
                len(self.val_frames),
                self.context.world_size,
                self.device,
            )
            while not self.stop_reason:
                self._run_epoch(self.epoch + 1)
        except KeyboardInterrupt:
            kept = (
                f"{self.last_checkpoint} keeps round {self.saved_epoch}: resume to continue"
                if self.saved_epoch
                else "no round was saved yet: start again"
            )
            logger.warning("interrupted in round %d (step %d); %s", self.epoch + 1, self.step, kept)
            raise
        finally:
            if self.writer is not None:
                self.writer.close()
                self.writer = None
            if log_handler is not None:
                logging.getLogger("benchmark").removeHandler(log_handler)
                log_handler.close()
        return self.summary()

    def summary(self) -> TrainingSummary:
        return TrainingSummary(
            epochs=self.epoch,
            steps=self.step,
            best_epoch=self.early_stopping.best_epoch,
            best_score=self.early_stopping.best_score,
            stop_reason=self.stop_reason,
            train_seconds=self.train_seconds,
            train_frames=self.train_frames_seen,
            history=list(self.history),
        )

    def load_best(self) -> None:
        """Load the EMA weights of ``best.pt`` into the model (for final evaluation)."""
        payload = read_checkpoint(self.best_checkpoint, map_location=self.device)
        self.model.network.load_state_dict(payload["network_state"])

    def evaluate(self, frames: Sequence[Frame]) -> Predictions:
        """Predictions of the current model weights on ``frames`` (all processes join in)."""
        return evaluate(self.model, frames, self.preset.eval_batch_size, self.device, self.context)

    # ------------------------------------------------------------------ one epoch

    def _run_epoch(self, epoch: int) -> None:
        train_stats = self._train_epoch(epoch)
        with self.ema.swapped_in():
            val_metrics = evaluate(
                self.model, self.val_loader, device=self.device, context=self.context
            ).metrics()
            ood_metrics = (
                evaluate(self.model, self.curve_loader, device=self.device, context=self.context)
                .metrics()
                if self.curve_loader is not None
                else {}
            )
        score = validation_score(val_metrics)
        improved = self.early_stopping.update(score, epoch)
        self.schedule.step_epoch(score)
        self.epoch = epoch
        record = {
            "epoch": epoch,
            "step": self.step,
            **train_stats,
            **{f"val_{name}": value for name, value in val_metrics.items()},
            **{f"ood_{name}": value for name, value in ood_metrics.items()},
            "val_score": score,
            "lr": self.schedule.lr,
        }
        self.history.append(record)
        if not self.stop_reason:
            self.stop_reason = self._stop_reason()
        logger.info(
            "epoch %d (step %d): loss %.5g, val force MAE %.4g eV/Å, val energy MAE %.4g "
            "eV/atom, score %.4g%s%s, lr %.3g%s",
            epoch,
            self.step,
            train_stats["train_loss"],
            val_metrics["force_mae"],
            val_metrics["energy_per_atom_mae"],
            score,
            " (best validation score so far)" if improved else "",
            f"; OOD curve force MAE {ood_metrics['force_mae']:.4g} eV/Å (recorded only)"
            if ood_metrics
            else "",
            self.schedule.lr,
            f"; stopping: {self.stop_reason}" if self.stop_reason else "",
        )
        if self.context.is_main:
            self._write_scalars(record)
            self._run_callbacks(epoch)
            self._save(improved)
        if self.context.is_distributed:
            torch.distributed.barrier()

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.train_loader.sampler.set_epoch(epoch)
        self.train_model.train()
        sums = torch.zeros(5, dtype=torch.float64)  # energy sq, force sq, aux, molecules, atoms
        frames_before = self.train_frames_seen
        started = time.monotonic()
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {epoch}",
            leave=False,
            disable=not (self.progress and self.context.is_main),
        )
        for index, batch in enumerate(bar):
            frame_index = batch.pop("frame_index")
            batch = batch_to(batch, self.device)
            terms = self._train_step(batch, epoch, index, frame_index)
            sums += terms
            self.train_frames_seen += int(terms[3])
            self.step += 1
            bar.set_postfix(loss=f"{self._epoch_losses(sums)['train_loss']:.4g}", refresh=False)
            if self.step >= self.preset.max_steps:
                break
            if self._out_of_time():
                self.stop_reason = TIME_CAP
                break
        elapsed = time.monotonic() - started
        self.train_seconds += elapsed
        totals = all_reduce_sum(sums, self.context)
        frames = self.train_frames_seen - frames_before
        return {
            **self._epoch_losses(totals),
            "train_frames_per_second": self.context.world_size * frames / elapsed,
        }

    def _train_step(
        self, batch: dict[str, torch.Tensor], epoch: int, index: int, frame_index: torch.Tensor
    ) -> torch.Tensor:
        """One optimiser step; returns this process's [energy sq sum, force sq sum, aux,
        molecules, atoms] (float64, detached)."""
        preset = self.preset
        n_atoms = batch["n_atoms"]
        local_counts = torch.tensor([n_atoms.numel(), batch["z"].numel()], dtype=torch.float64)
        molecules, atoms = all_reduce_sum(local_counts, self.context).tolist()
        try:
            out = self.train_model(batch)
        except GeometryError as error:
            raise self._named(error, epoch, index, frame_index) from error
        energy_sq, force_sq = squared_error_sums(out, batch)
        aux = out.get("aux_loss")
        aux = aux if aux is not None else energy_sq.new_zeros(())
        # DDP averages gradients over the P processes: scale by P so the result is the
        # gradient of the global-batch mean.
        loss = self.context.world_size * weighted_loss(
            energy_sq, force_sq, preset.energy_weight, preset.force_weight, molecules, atoms
        ) + aux
        self._check_finite(loss, epoch, index, frame_index, batch, out)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if preset.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), preset.grad_clip)
        self.optimizer.step()
        self.schedule.step_batch()
        self.ema.update()
        molecules_local, atoms_local = local_counts.tolist()
        return torch.tensor(
            [
                energy_sq.item(),
                force_sq.item(),
                aux.item() * molecules_local,
                molecules_local,
                atoms_local,
            ],
            dtype=torch.float64,
        )

    def _epoch_losses(self, sums: torch.Tensor) -> dict[str, float]:
        energy_sq, force_sq, aux, molecules, atoms = sums.tolist()
        energy_mse = energy_sq / max(molecules, 1.0)
        force_mse = force_sq / max(atoms, 1.0)
        aux_mean = aux / max(molecules, 1.0)
        return {
            "train_loss": self.preset.energy_weight * energy_mse
            + self.preset.force_weight * force_mse
            + aux_mean,
            "train_energy_per_atom_mse": energy_mse,
            "train_force_mse": force_mse,
            "train_aux_loss": aux_mean,
        }

    def _named(
        self, error: GeometryError, epoch: int, index: int, frame_index: torch.Tensor
    ) -> GeometryError:
        """``error`` with the frame it concerns named (the batch position alone says little)."""
        if error.molecule is None or error.molecule >= len(frame_index):
            frame = "a frame of the batch"
        else:
            frame = frame_ids(self.train_loader, frame_index[error.molecule : error.molecule + 1])
            frame = f"frame {frame[0]}"
        message = f"training epoch {epoch}, batch {index}, {frame}: {error}"
        logger.error(message)
        return GeometryError(message, error.molecule, error.atoms)

    def _check_finite(
        self,
        loss: torch.Tensor,
        epoch: int,
        index: int,
        frame_index: torch.Tensor,
        batch: Mapping[str, torch.Tensor] | None = None,
        out: Mapping[str, Any] | None = None,
    ) -> None:
        local_bad = torch.tensor([0.0 if torch.isfinite(loss).item() else 1.0])
        if all_reduce_sum(local_bad, self.context).item() == 0:
            return
        kept = (
            f"last good checkpoint {self.last_checkpoint} (epoch {self.epoch}) kept"
            if self.epoch > 0
            else "no checkpoint written yet"
        )
        if local_bad.item():
            where = f"molecules {frame_ids(self.train_loader, frame_index)}"
            cause = self._likely_cause(batch or {}, out or {}, frame_index)
        else:
            where, cause = "on another process", "see that process's log"
        message = (
            f"non-finite training loss ({loss.item()}) at epoch {epoch}, batch {index} "
            f"(rank {self.context.rank}), {where}; likely cause: {cause}; {kept}"
        )
        logger.error(message)
        raise NonFiniteLossError(message)

    def _likely_cause(
        self,
        batch: Mapping[str, torch.Tensor],
        out: Mapping[str, Any],
        frame_index: torch.Tensor,
    ) -> str:
        """Why the loss of a batch is not finite, from its labels and the model's outputs."""
        names = frame_ids(self.train_loader, frame_index)
        for key, what in (("energy", "reference energy"), ("forces", "reference forces")):
            labels = batch.get(key)
            if labels is None:
                continue
            labels = labels.detach().cpu()
            if key == "energy":
                bad_molecule = ~torch.isfinite(labels)
            else:
                bad_atom = ~torch.isfinite(labels).all(dim=-1)
                bad_molecule = torch.zeros(len(names), dtype=torch.bool)
                bad_molecule[batch["batch"].cpu()[bad_atom]] = True
            bad = [names[i] for i in torch.nonzero(bad_molecule).flatten().tolist()]
            if bad:
                return f"non-finite {what} in the data of {bad} (check those frames' labels)"
        for key in ("energy", "forces"):
            value = out.get(key)
            if isinstance(value, torch.Tensor) and not bool(torch.isfinite(value.detach()).all()):
                return (
                    f"the model's predicted {key} is not finite: training diverged (lower the "
                    f"learning rate, or keep gradient clipping on)"
                )
        return (
            "the loss overflowed although labels and predictions are finite (predictions far "
            "from the labels: check energy units and E0)"
        )

    def _out_of_time(self) -> bool:
        """Whether the safety cap has passed (any process deciding so stops all of them)."""
        if self.deadline is None:
            return False
        late = torch.tensor([float(time.monotonic() > self.deadline)])
        return bool(all_reduce_sum(late, self.context).item() > 0)

    def _stop_reason(self) -> str:
        if self.step >= self.preset.max_steps:
            return STEP_BUDGET
        if self.early_stopping.should_stop:
            return "early stopping"
        if self._out_of_time():
            return TIME_CAP
        return ""

    # ------------------------------------------------------------------ outputs

    def _write_scalars(self, record: Mapping[str, float]) -> None:
        if self.writer is None:
            return
        step = int(record["step"])
        for key, value in record.items():
            if key in ("epoch", "step"):
                continue
            prefixed = key.startswith(("train_", "val_", "ood_"))
            group = key.split("_", 1)[0] if prefixed else "schedule"
            name = key.split("_", 1)[1] if prefixed else key
            self.writer.add_scalar(f"{group}/{name}", value, step)
        self.writer.flush()

    def _run_callbacks(self, epoch: int) -> None:
        if not self.callbacks:
            return
        with self.ema.swapped_in():
            self.model.eval()
            try:
                for callback in self.callbacks:
                    callback.on_epoch_end(epoch, self.model, self.writer, self.callback_loaders)
            finally:
                self.model.train()

    def _training_state(self) -> dict[str, Any]:
        return {
            **self.run_info,
            "epoch": self.epoch,
            "step": self.step,
            "seed": self.seed,
            "preset": self.preset.to_dict(),
            "network_state_live": {
                k: v.detach().clone() for k, v in self.model.network.state_dict().items()
            },
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "ema": self.ema.state_dict(),
            "early_stopping": {
                "best_score": self.early_stopping.best_score,
                "best_epoch": self.early_stopping.best_epoch,
                "epochs_without_improvement": self.early_stopping.epochs_without_improvement,
            },
            "history": list(self.history),
            "stop_reason": self.stop_reason,
            "train_seconds": self.train_seconds,
            "train_frames_seen": self.train_frames_seen,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": np.random.get_state(),  # noqa: NPY002 (global state of legacy users)
                "python": random.getstate(),
            },
        }

    def _save(self, improved: bool) -> None:
        training = self._training_state()
        with self.ema.swapped_in():
            save_checkpoint(
                self.last_checkpoint,
                model_name=self.model_name,
                model_config=self.model_config,
                network=self.model.network,
                e0=self.model.e0,
                fragments=getattr(self.model.network, "fragment_vocabulary", DEFAULT_VOCABULARY),
                training=training,
            )
        self.saved_epoch = self.epoch
        if improved:
            with atomic_write(self.best_checkpoint) as partial:
                shutil.copyfile(self.last_checkpoint, partial)

    def _restore(self, path: Path) -> None:
        payload = read_checkpoint(path, map_location=self.device)
        differences = resume_mismatches(
            payload,
            model_name=self.model_name,
            model_config=self.model_config,
            seed=self.seed,
            preset=self.preset,
            run_info=self.run_info,
        )
        if differences:
            raise ResumeMismatchError(
                f"{path} was written by another run ({'; '.join(differences)}); resume it with "
                f"its own settings, or train into another folder"
            )
        state = payload["training"]
        self.model.network.load_state_dict(state["network_state_live"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.ema.load_state_dict(state["ema"])
        self.early_stopping = EarlyStopping(self.preset.patience, **state["early_stopping"])
        self.history = list(state["history"])
        self.epoch = self.saved_epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.train_seconds = float(state["train_seconds"])
        self.train_frames_seen = int(state["train_frames_seen"])
        # Stopping rules are re-checked with this run's preset and deadline: a run cut by
        # its safety cap continues; one that spent its steps stays finished.
        self.stop_reason = self._stop_reason()
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        if rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(rng["numpy"])  # noqa: NPY002
        random.setstate(rng["python"])
        logger.info("resumed from %s at epoch %d", path, self.epoch)

    def _open_log(self) -> logging.Handler | None:
        if not self.context.is_main:
            return None
        path = os.path.abspath(self.out_dir / LOG_FILE)
        for existing in logging.getLogger("benchmark").handlers:
            if getattr(existing, "baseFilename", None) == path:
                return None  # the caller already logs there (benchmark.training.experiment)
        return log_package_to(self.out_dir / LOG_FILE)


def log_package_to(path: str | Path) -> logging.Handler:
    """Send the ``benchmark`` package's log records (INFO and up) to the file ``path``; returns
    the handler, which the caller removes and closes when done."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    package_logger = logging.getLogger("benchmark")
    package_logger.addHandler(handler)
    if package_logger.level == logging.NOTSET or package_logger.level > logging.INFO:
        package_logger.setLevel(logging.INFO)
    return handler


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (seeds code that uses the legacy global RNG)
    torch.manual_seed(seed)
