"""Evaluate any trained checkpoint on any labelled files: ``gmd26 evaluate CHECKPOINT FILE...``.

Files are read with :mod:`benchmark.dataset.external` (extended XYZ, ASE databases, anything
ASE reads). Label keys, units and the molecule key default to those the checkpoint was trained
with (``gmd26 fit`` stores its resolved config in the checkpoint), then to ASE's
``energy`` / ``forces`` and GMD-26's ``ref_energy`` / ``ref_forces``.

Fragment labels are read only where they matter: a model whose router reads fragments gets
the file's ``fragment`` array when every frame has one, otherwise labels perceived from the
geometry with the checkpoint's own vocabulary; other models use the file's array when present
(for the per-fragment breakdown) and no labels otherwise.

The result holds the GMD-26 metrics (:mod:`benchmark.evaluation.metrics`) plus RMSEs of every
file and of all files together, and per-element (and, with labels, per-fragment) force errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmark.dataset import external
from benchmark.errors import UsageError
from benchmark.evaluation import breakdown
from benchmark.evaluation.predictions import Predictions, evaluate
from deepset_moe.checkpoint import checkpoint_vocabulary, load_potential, read_checkpoint
from deepset_moe.e0 import unwrap_model
from deepset_moe.fragments import FragmentVocabulary

ALL_FILES = "all"


class EvaluationError(UsageError):
    """Files a checkpoint cannot be evaluated on (e.g. elements the model does not know)."""


def model_elements(network: Any) -> list[int] | None:
    """Atomic numbers a network accepts (DeepSet-MoE ``atomic_numbers``, baselines'
    ``elements``), or None when it does not say."""
    config = getattr(network, "config", None)
    if config is not None and hasattr(config, "atomic_numbers"):
        return [int(z) for z in config.atomic_numbers]
    index = getattr(network, "element_index", None)
    if index is not None and hasattr(index, "elements"):
        return [int(z) for z in index.elements]
    return None


def evaluate_files(
    checkpoint: str | Path,
    files: Sequence[str | Path],
    *,
    energy_key: str | None = None,
    forces_key: str | None = None,
    fragments: str | None = None,
    fragment_key: str | None = None,
    molecule_key: str | None = None,
    energy_unit: str | None = None,
    forces_unit: str | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    predictions_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Metrics of a checkpoint on labelled files (module docstring for the defaults).

    Args:
        checkpoint: any model's checkpoint (``best.pt`` of ``gmd26 fit`` or ``gmd26 train``).
        files: ASE-readable labelled files (``name@index`` selects frames).
        energy_key, forces_key: label keys (default: the checkpoint's, then ASE's, then GMD-26's).
        fragments: ``auto``, ``array``, ``perceive`` or ``none`` (default: see module docstring).
        fragment_key, molecule_key: per-atom fragment array and molecule-id key.
        energy_unit, forces_unit: units of the stored labels (default: the checkpoint's, else
            eV and eV/Å).
        batch_size: molecules per evaluation batch.
        device: torch device.
        predictions_dir: also save each file's predictions there (``<file stem>.npz``).

    Returns:
        ``{"checkpoint", "model", "keys", "fragments", "files": {name: path}, "metrics":
        {name | "all": {...}}, "per_element": {name | "all": {symbol: {...}}},
        "per_fragment": {...} or None}``.

    Raises:
        ExternalDataError: a file lacks a key (listing those it has) or holds bad values.
        EvaluationError: a file holds elements the model was not trained on.
    """
    if not files:
        raise EvaluationError("no files to evaluate")
    payload = read_checkpoint(checkpoint)
    stored = dict((payload.get("training") or {}).get("fit_config") or {})
    stored_fragments = stored.get("fragments") or {}
    potential = load_potential(checkpoint, map_location=device)
    network = unwrap_model(potential)
    needs_fragments = bool(getattr(network, "needs_fragments", False))
    vocabulary = _vocabulary(payload, network)

    energy_unit = energy_unit or stored.get("energy_unit", "eV")
    forces_unit = forces_unit or stored.get("forces_unit", "eV/Å")
    for unit, table in ((energy_unit, external.ENERGY_UNITS), (forces_unit, external.FORCES_UNITS)):
        if unit not in table:
            raise EvaluationError(f"unknown unit {unit!r}; choose one of {list(table)}")
    fragment_key = fragment_key or stored_fragments.get("key", external.DEFAULT_FRAGMENT_KEY)
    molecule_key = molecule_key or stored.get("molecule_key", external.DEFAULT_MOLECULE_KEY)
    energy_keys = energy_key or [
        *([stored["energy_key"]] if stored.get("energy_key") else []),
        *external.DEFAULT_ENERGY_KEYS,
    ]
    forces_keys = forces_key or [
        *([stored["forces_key"]] if stored.get("forces_key") else []),
        *external.DEFAULT_FORCES_KEYS,
    ]

    structures = {str(name): external.read_structures(name) for name in files}
    keys = {
        name: external.resolve_label_keys(items, name, energy_keys, forces_keys)
        for name, items in structures.items()
    }
    source = _fragment_source(fragments, needs_fragments, structures, fragment_key)

    model_known = model_elements(network)
    frames = {}
    for name, items in structures.items():
        if model_known is not None:
            present = {int(z) for atoms in items for z in atoms.numbers}
            unknown = sorted(present - set(model_known))
            if unknown:
                raise EvaluationError(
                    f"{name} holds element(s) {[external.element_symbol(z) for z in unknown]} "
                    f"the model was not trained on (it knows "
                    f"{[external.element_symbol(z) for z in model_known]})"
                )
        frames[name] = external.frames_from_structures(
            items,
            name,
            energy_key=keys[name][0],
            forces_key=keys[name][1],
            fragments=source,
            vocabulary=vocabulary,
            fragment_key=fragment_key,
            molecule_key=molecule_key,
            energy_scale=external.ENERGY_UNITS[energy_unit],
            forces_scale=external.FORCES_UNITS[forces_unit],
        )

    names = breakdown.short_names(list(frames))
    predictions: dict[str, Predictions] = {}
    for name, file_frames in frames.items():
        predictions[names[name]] = evaluate(potential, file_frames, batch_size, device)
    offset = 0
    shifted = []
    for item in predictions.values():
        shifted.append(replace(item, frame_index=item.frame_index + offset))
        offset += item.num_frames
    everything = Predictions.concatenate(shifted)
    if predictions_dir is not None:
        folder = Path(predictions_dir)
        for name, item in predictions.items():
            item.save(folder / f"{breakdown.slug(name)}.npz")

    sets = {**predictions, ALL_FILES: everything} if len(predictions) > 1 else dict(predictions)
    fragment_names = vocabulary.names if source != "none" else None
    return {
        "checkpoint": str(checkpoint),
        "model": payload["model_name"],
        "keys": {
            names[name]: {"energy": keys[name][0], "forces": keys[name][1]} for name in frames
        },
        "units": {"energy": energy_unit, "forces": forces_unit},
        "fragments": source,
        "files": {names[name]: name for name in frames},
        "metrics": {name: breakdown.set_metrics(item) for name, item in sets.items()},
        "per_element": {name: breakdown.per_element_metrics(item) for name, item in sets.items()},
        "per_fragment": {
            name: breakdown.per_fragment_metrics(item, fragment_names)
            for name, item in sets.items()
        }
        if fragment_names
        else None,
    }


def _vocabulary(payload: Mapping[str, Any], network: Any) -> FragmentVocabulary:
    """The network's own vocabulary, else the one a fit run stored, else the checkpoint's."""
    own = getattr(network, "fragment_vocabulary", None)
    if own is not None:
        return own
    stored = (payload.get("training") or {}).get("fragment_vocabulary")
    if stored:
        return FragmentVocabulary.from_dict(stored)
    return checkpoint_vocabulary(dict(payload))


def _fragment_source(
    asked: str | None,
    needs_fragments: bool,
    structures: Mapping[str, Sequence[Any]],
    fragment_key: str,
) -> str:
    if asked is None:
        asked = "auto"
    source = external.resolve_fragment_source(asked, structures, fragment_key)
    if source == "none" and needs_fragments:
        if asked == "none":
            raise EvaluationError(
                "the model's router reads fragment labels: use fragments array or perceive"
            )
        return "perceive"
    return source


def format_evaluation(result: Mapping[str, Any]) -> str:
    """Plain-text tables: metrics per file (and all), per element and per fragment (all files)."""
    metrics = result["metrics"]
    last = ALL_FILES if ALL_FILES in metrics else next(iter(metrics))
    lines = [
        breakdown.format_set_table(metrics, f"{result['model']} ({result['checkpoint']})"),
        "",
        breakdown.format_atom_table(result["per_element"][last], f"per element ({last})"),
    ]
    if result.get("per_fragment"):
        lines += [
            "",
            breakdown.format_atom_table(
                result["per_fragment"][last], f"per fragment ({last})", first="fragment"
            ),
        ]
    return "\n".join(lines)
