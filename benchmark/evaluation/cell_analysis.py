"""Analyses of a trained cell that need its model: MD stability, routing and attributions.

Each analysis loads the cell's ``best.pt`` (:func:`deepset_moe.checkpoint.load_potential`
with :func:`benchmark.models.build_model`) and is cached in the cell directory as
``analysis_<name>.json`` together with its settings and the checkpoint's size and mtime, so
re-running the report recomputes nothing unless the checkpoint or the settings changed.

The analyses evaluate one small molecule or a small batch at a time; they run on a single
torch thread (:func:`one_torch_thread`), which is several times faster than a multi-threaded
pool on such tiny tensors (thread synchronisation dominates), more so on a loaded machine.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from benchmark.dataset.frames import Frame
from benchmark.evaluation.stability import StabilitySettings, stability_study
from deepset_moe.atomic_io import atomic_write

BEST_CHECKPOINT = "best.pt"


def checkpoint_path(cell: str | Path) -> Path:
    return Path(cell) / BEST_CHECKPOINT


def load_cell_potential(cell: str | Path):
    """The cell's trained potential (``PotentialWithE0``, CPU, eval mode)."""
    from deepset_moe.checkpoint import load_potential

    return load_potential(checkpoint_path(cell)).eval()


def cell_has_routing(result: dict[str, Any]) -> bool:
    """Whether a finished cell's model routes atoms to experts: what its result records, or
    (results written before that was recorded) what its checkpoint's network class declares."""
    if "has_routing" in result:
        return bool(result["has_routing"])
    from deepset_moe.checkpoint import CheckpointError, network_class, read_checkpoint

    try:
        cls = network_class(read_checkpoint(checkpoint_path(result["cell_dir"])))
    except CheckpointError:
        return False
    return bool(getattr(cls, "has_routing", False))


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(1)``, restoring the previous count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def cached_analysis(
    cell: str | Path, name: str, settings: dict[str, Any], compute: Callable[[], Any]
) -> Any:
    """``compute()`` on one torch thread, cached in ``<cell>/analysis_<name>.json`` (keyed by
    the settings and the checkpoint's size and mtime)."""
    stat = checkpoint_path(cell).stat()
    key = json.loads(
        json.dumps({"settings": settings, "checkpoint": [stat.st_size, stat.st_mtime_ns]})
    )
    path = Path(cell) / f"analysis_{name}.json"
    if path.exists():
        try:
            cached = json.loads(path.read_text())
        except (OSError, ValueError):
            cached = {}  # a damaged cache is recomputed
        if isinstance(cached, dict) and cached.get("key") == key and "value" in cached:
            return cached["value"]
    with one_torch_thread():
        value = compute()
    with atomic_write(path) as partial:
        partial.write_text(json.dumps({"key": key, "value": value}, indent=1) + "\n")
    return value


def _calculator_factory(cell: Path) -> Callable[[], Any]:
    from deepset_moe.calculator import PotentialCalculator

    potential = load_cell_potential(cell)
    return lambda: PotentialCalculator(potential)


def model_stability(
    cell: str | Path,
    frames: Sequence[Frame],
    settings: StabilitySettings,
    n_molecules: int,
    seed: int,
) -> dict[str, Any]:
    """:func:`benchmark.evaluation.stability.stability_study` with the cell's model (cached)."""
    cell = Path(cell)
    options = {**asdict(settings), "n_molecules": n_molecules, "seed": seed}
    return cached_analysis(
        cell,
        "stability",
        options,
        lambda: stability_study(frames, _calculator_factory(cell), settings, n_molecules, seed),
    )


def model_routing(
    cell: str | Path,
    id_frames: Sequence[Frame],
    ood_frames: Sequence[Frame],
    max_frames: int,
    seed: int,
) -> dict[str, Any] | None:
    """``deepset_moe.routing_metrics.routing_summary`` of ID vs OOD test frames (cached).

    At most ``max_frames`` seeded frames per split; ``None`` for a model without routing.
    """
    from benchmark.training.loaders import evaluation_loader, seeded_subset
    from deepset_moe.routing_metrics import collect_routing, routing_summary

    cell = Path(cell)

    def compute() -> dict[str, Any] | None:
        potential = load_cell_potential(cell)
        stats = [
            collect_routing(potential, evaluation_loader(seeded_subset(f, max_frames, seed), 32))
            for f in (id_frames, ood_frames)
        ]
        return None if any(s is None for s in stats) else routing_summary(*stats)

    return cached_analysis(cell, "routing", {"max_frames": max_frames, "seed": seed}, compute)


def model_attribution(
    cell: str | Path,
    id_frames: Sequence[Frame],
    ood_frames: Sequence[Frame],
    max_molecules: int,
    n_steps: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Integrated-Gradients attribution summaries per fragment, ID and OOD (cached).

    ``deepset_moe.attribution.split_attribution_summary`` of at most ``max_molecules``
    seeded test frames per split.
    """
    from benchmark.training.loaders import evaluation_loader, seeded_subset
    from deepset_moe.attribution import attribute_molecules, split_attribution_summary

    cell = Path(cell)

    def compute() -> dict[str, dict[str, Any]]:
        potential = load_cell_potential(cell)
        summaries = {}
        for split, frames in (("id", id_frames), ("ood", ood_frames)):
            loader = evaluation_loader(seeded_subset(frames, max_molecules, seed), 8)
            result = attribute_molecules(potential, loader, max_molecules, n_steps)
            summaries[split] = split_attribution_summary(result)
        return summaries

    options = {"max_molecules": max_molecules, "n_steps": n_steps, "seed": seed}
    return cached_analysis(cell, "attribution", options, compute)
