"""Checkpoint format shared by the trainer, ``DeepSetMoE.from_checkpoint`` and the calculator.

A checkpoint is a ``torch.save``-d dict:

=================  ============================================================
key                content
=================  ============================================================
format_version     int, :data:`FORMAT_VERSION`
library_version    ``deepset_moe.__version__`` at save time
model_name         registry name (``"deepset_moe"`` or a baseline name)
model_config       JSON-able dict that rebuilds the network
network_state      ``state_dict`` of the network (no E0; EMA weights when trained)
e0                 ``{atomic number: E0 in eV}``
fragment_names     fragment vocabulary the model was trained with
training           trainer-owned dict (epoch, optimiser, scheduler, EMA, task, ...)
=================  ============================================================
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepset_moe.e0 import AtomicReferenceEnergies, PotentialWithE0

FORMAT_VERSION = 1
LIBRARY_VERSION = "0.1.0"
REQUIRED_KEYS = ("format_version", "model_name", "model_config", "network_state", "e0")


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or of an unknown format."""


def save_checkpoint(
    path: str | Path,
    *,
    model_name: str,
    model_config: dict[str, Any],
    network: nn.Module,
    e0: AtomicReferenceEnergies,
    fragment_names: tuple[str, ...] | list[str],
    training: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically (temporary file + rename: never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION,
        "library_version": LIBRARY_VERSION,
        "model_name": model_name,
        "model_config": model_config,
        "network_state": network.state_dict(),
        "e0": e0.as_dict(),
        "fragment_names": list(fragment_names),
        "training": training or {},
    }
    partial = path.with_name(path.name + ".partial")
    torch.save(payload, partial)
    os.replace(partial, path)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint dict; errors name the file and what is wrong."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({error})") from error
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not a checkpoint dict")
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: missing keys {missing}")
    if payload["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {payload['format_version']} is newer than this library "
            f"({FORMAT_VERSION})"
        )
    return payload


def load_potential(
    path: str | Path,
    build_network: Callable[[str, dict[str, Any]], nn.Module],
    map_location: str | torch.device = "cpu",
) -> PotentialWithE0:
    """Rebuild ``PotentialWithE0(network, e0)`` from a checkpoint.

    Args:
        path: checkpoint file.
        build_network: ``(model_name, model_config) -> nn.Module`` (e.g.
            ``benchmark.models.build_model``), so this module stays registry-agnostic.
    """
    payload = read_checkpoint(path, map_location)
    network = build_network(payload["model_name"], payload["model_config"])
    network.load_state_dict(payload["network_state"])
    e0 = AtomicReferenceEnergies({int(z): e for z, e in payload["e0"].items()})
    return PotentialWithE0(network, e0).to(map_location)
