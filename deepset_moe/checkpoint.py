"""Checkpoint format of every model: one file holds what inference needs, and nothing
outside it is needed to load it.

A checkpoint is a ``torch.save``-d dict:

=================  ============================================================
key                content
=================  ============================================================
format_version     int, :data:`FORMAT_VERSION`
library_version    :data:`deepset_moe.version.__version__` at save time
model_name         registry name (``"deepset_moe"`` or a baseline name)
model_target       ``"module:Class"`` of the network; ``Class.from_config(**model_config)``
                   rebuilds it (format 2; older files are resolved by ``model_name``)
model_config       JSON-able dict that rebuilds the network
network_state      ``state_dict`` of the network (no E0; EMA weights when trained)
e0                 ``{atomic number: E0 in eV}``
fragments          the fragment vocabulary (:class:`~deepset_moe.fragments.FragmentVocabulary`
                   dict) the model was trained with; format 1 stored only ``fragment_names``
training           trainer-owned dict (step, optimiser, scheduler, EMA, task, ...); in
                   inference-only files only the run facts (:func:`strip_training_state`)
=================  ============================================================

:func:`load_potential` is model-neutral: it imports ``model_target``, so a baseline checkpoint
loads without any registry and without this package knowing the baselines.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepset_moe.atomic_io import atomic_write
from deepset_moe.e0 import AtomicReferenceEnergies, PotentialWithE0
from deepset_moe.fragments import DEFAULT_VOCABULARY, FragmentVocabulary
from deepset_moe.version import __version__

FORMAT_VERSION = 2
REQUIRED_KEYS = ("format_version", "model_name", "model_config", "network_state", "e0")

LEGACY_TARGETS: dict[str, str] = {
    "deepset_moe": "deepset_moe.model:DeepSetMoE",
    "schnet": "baselines.schnet:SchNetPotential",
    "dimenet++": "baselines.dimenet:DimeNetPlusPlusPotential",
    "painn": "baselines.painn:PaiNNPotential",
    "mace": "baselines.mace_models:MACEPotential",
    "nequip": "baselines.nequip_models:NequIPPotential",
    "allegro": "baselines.nequip_models:AllegroPotential",
    "gemnet": "baselines.fairchem_models:GemNetOCPotential",
    "equiformer_v2": "baselines.fairchem_models:EquiformerV2Potential",
}
"""Network classes of the models known when checkpoints (format 1) did not name their class."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or of an unknown format."""


def save_checkpoint(
    path: str | Path,
    *,
    model_name: str,
    model_config: dict[str, Any],
    network: nn.Module,
    e0: AtomicReferenceEnergies,
    fragments: FragmentVocabulary = DEFAULT_VOCABULARY,
    training: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically (never a half-written file).

    Args:
        path: output file.
        model_name: registry name of the model.
        model_config: settings that rebuild the network with ``Class.from_config``.
        network: the network (its class becomes ``model_target``).
        e0: per-element reference energies.
        fragments: the vocabulary the training data was labelled with.
        training: trainer state; omit for an inference-only file.
    """
    cls = type(network)
    payload = {
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "model_name": model_name,
        "model_target": f"{cls.__module__}:{cls.__qualname__}",
        "model_config": model_config,
        "network_state": network.state_dict(),
        "e0": e0.as_dict(),
        "fragments": fragments.to_dict(),
        "fragment_names": list(fragments.names),
    }
    if training:
        payload["training"] = training
    with atomic_write(path) as partial:
        torch.save(payload, partial)


TRAINER_STATE_KEYS = ("network_state_live", "optimizer", "schedule", "ema", "rng", "history")
"""Entries of ``training`` needed only to resume training (dropped from inference files)."""


def strip_training_state(source: str | Path, target: str | Path) -> None:
    """Write an inference-only copy of a checkpoint: weights, config, E0 and vocabulary, and
    of ``training`` only the run facts (task, data, preset, seed, step); no optimiser, live
    weights, EMA, RNG or history. ``source`` and ``target`` may be the same file."""
    payload = read_checkpoint(source)
    training = payload.get("training", {})
    payload["training"] = {k: v for k, v in training.items() if k not in TRAINER_STATE_KEYS}
    with atomic_write(target) as partial:
        torch.save(payload, partial)


def checkpoint_vocabulary(payload: dict[str, Any]) -> FragmentVocabulary:
    """The fragment vocabulary stored in a checkpoint (format 1: the default one)."""
    if "fragments" in payload:
        return FragmentVocabulary.from_dict(payload["fragments"])
    return DEFAULT_VOCABULARY


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


def network_class(payload: dict[str, Any], path: str | Path = "checkpoint") -> type[nn.Module]:
    """The network class a checkpoint names (``model_target``, else by ``model_name``)."""
    target = payload.get("model_target") or LEGACY_TARGETS.get(payload["model_name"])
    if target is None:
        raise CheckpointError(
            f"{path}: model {payload['model_name']!r} names no network class (model_target)"
        )
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise CheckpointError(
            f"{path}: model {payload['model_name']!r} needs {module_name!r}, which cannot be "
            f"imported here ({error}); install the package that provides it"
        ) from error
    cls = getattr(module, class_name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise CheckpointError(f"{path}: {target} is not a model class with from_config")
    return cls


def load_potential(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> PotentialWithE0:
    """Rebuild ``PotentialWithE0(network, e0)`` from any model's checkpoint.

    Args:
        path: checkpoint file (trainer checkpoint or inference-only file).
        map_location: device of the returned potential.

    Raises:
        CheckpointError: missing or unreadable file, unknown format, a network class that
            cannot be imported, or weights that do not fit the stored config.
    """
    payload = read_checkpoint(path, map_location)
    network = network_class(payload, path).from_config(**payload["model_config"])
    try:
        network.load_state_dict(payload["network_state"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the stored config ({error})") from error
    e0 = AtomicReferenceEnergies({int(z): e for z, e in payload["e0"].items()})
    return PotentialWithE0(network, e0).to(map_location)
