"""TensorBoard logging of routing, ID (``id_test``) vs OOD (``ood_test``), once per epoch.

:class:`RoutingTensorBoardCallback` implements the trainer callback protocol
``on_epoch_end(epoch, model, writer, loaders)`` and writes, with ``global_step = epoch``:

* scalars ``routing/<metric>/id`` and ``routing/<metric>/ood`` for load balance, entropy
  (nats and normalised), fragment/top-1-expert NMI; ``routing_utilisation_<split>/expert_<e>``;
  ``routing_js/<fragment>`` and ``routing/js_divergence_mean`` (bits; see
  :mod:`deepset_moe.routing_metrics` for the definitions);
* histograms ``routing/gate_probs/<split>`` (every entry of the [N, K] gate probabilities)
  and ``routing/top1_prob/<split>`` (max probability per atom);
* images ``routing/fragment_expert/<split>``: fragment x expert heatmaps of the
  row-normalised assignment fractions;
* at the first epoch it sees, every ``embedding_every`` epochs and at ``final_epoch``
  (e.g. the trainer's ``max_epochs``; the trainer numbers epochs from 1): the per-atom
  latents of a seeded random subset of at most ``embedding_max_atoms`` atoms (half ID, half
  OOD) in the embedding projector, with metadata columns ``fragment``, ``expert`` (top-1) and
  ``split``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from deepset_moe.fragments import FRAGMENT_NAMES
from deepset_moe.routing_metrics import RoutingStats, collect_routing, routing_summary
from deepset_moe.routing_plots import fragment_expert_figure

logger = logging.getLogger(__name__)

SPLITS = {"id": "id_test", "ood": "ood_test"}
"""Short split name used in tags -> key of the trainer's ``loaders`` dict."""

SCALAR_METRICS = ("load_balance_cv", "entropy_nats", "entropy_normalised", "nmi_fragment_top1")


class RoutingTensorBoardCallback:
    """Writes routing metrics, histograms, heatmaps and latent embeddings to TensorBoard.

    Args:
        embedding_every: also write the embedding projector at epochs divisible by this
            (0: only at the first epoch seen and at ``final_epoch``).
        final_epoch: number of the last epoch, which always gets an embedding.
        embedding_max_atoms: cap on the atoms in the projector (split evenly ID / OOD).
        max_batches: cap on batches per split and epoch (``None``: whole split).
        fragment_names: fragment vocabulary (row labels).
        seed: seed of the atom subsampling for the projector.
    """

    def __init__(
        self,
        embedding_every: int = 10,
        final_epoch: int | None = None,
        embedding_max_atoms: int = 2000,
        max_batches: int | None = None,
        fragment_names: Sequence[str] = FRAGMENT_NAMES,
        seed: int = 0,
    ) -> None:
        if embedding_max_atoms < 2:
            raise ValueError(f"embedding_max_atoms must be >= 2, got {embedding_max_atoms}")
        self.embedding_every = embedding_every
        self.final_epoch = final_epoch
        self.embedding_max_atoms = embedding_max_atoms
        self.max_batches = max_batches
        self.fragment_names = tuple(fragment_names)
        self.seed = seed
        self.disabled = False
        self.last_summary: dict[str, Any] | None = None

    def on_epoch_end(
        self, epoch: int, model: nn.Module, writer: Any, loaders: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Collect ID/OOD routing and write it; returns :func:`routing_summary` (or ``None``).

        Models whose output has no ``routing``, a ``None`` writer (TensorBoard off) or
        missing ``id_test`` / ``ood_test`` loaders are skipped with one log line, and the
        callback stays disabled afterwards.
        """
        if self.disabled:
            return None
        missing = [key for key in SPLITS.values() if key not in loaders]
        if writer is None or missing:
            reason = "TensorBoard is off" if writer is None else f"no loaders {missing}"
            logger.info("routing logging skipped: %s", reason)
            self.disabled = True
            return None
        stats: dict[str, RoutingStats] = {}
        for split, key in SPLITS.items():
            collected = collect_routing(model, loaders[key], self.max_batches)
            if collected is None:
                logger.info(
                    "routing logging skipped: %s returns no 'routing' on %s",
                    type(model).__name__,
                    key,
                )
                self.disabled = True
                return None
            stats[split] = collected
        summary = routing_summary(stats["id"], stats["ood"], self.fragment_names)
        self._write_scalars(summary, writer, epoch)
        for split, split_stats in stats.items():
            self._write_histograms(split, split_stats, writer, epoch)
            fraction = np.array(summary[split]["fragment_expert_fraction"], dtype=np.float64)
            figure = fragment_expert_figure(
                fraction, self.fragment_names, f"{split.upper()} routing, epoch {epoch}"
            )
            writer.add_figure(f"routing/fragment_expert/{split}", figure, epoch)
        if self._is_embedding_epoch(epoch):
            self._write_embedding(stats, writer, epoch)
        writer.flush()
        self.last_summary = summary
        return summary

    def _is_embedding_epoch(self, epoch: int) -> bool:
        first = self.last_summary is None
        periodic = self.embedding_every > 0 and epoch % self.embedding_every == 0
        return first or periodic or epoch == self.final_epoch

    def _write_scalars(self, summary: dict[str, Any], writer: Any, epoch: int) -> None:
        for split in SPLITS:
            for metric in SCALAR_METRICS:
                value = summary[split][metric]
                if value is not None:
                    writer.add_scalar(f"routing/{metric}/{split}", value, epoch)
            for expert, value in enumerate(summary[split]["utilisation"]):
                writer.add_scalar(f"routing_utilisation_{split}/expert_{expert}", value, epoch)
        for name, value in summary["js_divergence"].items():
            if value is not None:
                writer.add_scalar(f"routing_js/{name}", value, epoch)
        if summary["js_divergence_mean"] is not None:
            writer.add_scalar("routing/js_divergence_mean", summary["js_divergence_mean"], epoch)

    @staticmethod
    def _write_histograms(split: str, stats: RoutingStats, writer: Any, epoch: int) -> None:
        writer.add_histogram(f"routing/gate_probs/{split}", stats.probs.reshape(-1), epoch)
        writer.add_histogram(f"routing/top1_prob/{split}", stats.probs.max(-1).values, epoch)

    def _write_embedding(self, stats: dict[str, RoutingStats], writer: Any, epoch: int) -> None:
        if any(s.latent is None for s in stats.values()):
            logger.info("routing embedding skipped: the model output has no 'latent'")
            return
        generator = torch.Generator().manual_seed(self.seed + epoch)
        latents, metadata = [], []
        per_split = self.embedding_max_atoms // len(stats)
        for split, split_stats in stats.items():
            chosen = torch.randperm(split_stats.num_atoms, generator=generator)[:per_split]
            chosen = chosen.sort().values
            latents.append(split_stats.latent[chosen])
            fragments = split_stats.fragment[chosen].tolist()
            experts = split_stats.experts[chosen, 0].tolist()
            metadata.extend(
                [self.fragment_names[f], str(e), split] for f, e in zip(fragments, experts)
            )
        writer.add_embedding(
            torch.cat(latents),
            metadata=metadata,
            metadata_header=["fragment", "expert", "split"],
            global_step=epoch,
            tag="routing_latent",
        )
