"""Run a model over a split and keep every prediction (float64 numpy), savable as ``.npz``.

:class:`Predictions` holds what the report needs without re-running the model: energies per
frame, forces per atom, atom counts, atomic numbers, fragment labels and molecule ids, for
parity plots, per-fragment errors and the GMD-26 metrics (:meth:`Predictions.metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from benchmark.dataset.frames import Frame
from benchmark.evaluation import metrics
from benchmark.training.distributed import DistributedContext, all_gather_objects
from benchmark.training.loaders import evaluation_loader, loader_frames
from deepset_moe.batch import GeometryError, batch_to


@dataclass
class Predictions:
    """Model outputs and references over the B frames and N atoms of one split.

    Attributes:
        energy, energy_ref: [B] total energies, eV (float64).
        forces, forces_ref: [N, 3] forces, eV/Å (float64).
        n_atoms: [B] atoms per frame.
        z: [N] atomic numbers.
        fragment: [N] fragment labels.
        molecule_id: [B] molecule id of each frame (str).
        frame_index: [B] position of each frame in the evaluated frame list.
    """

    energy: np.ndarray
    energy_ref: np.ndarray
    forces: np.ndarray
    forces_ref: np.ndarray
    n_atoms: np.ndarray
    z: np.ndarray
    fragment: np.ndarray
    molecule_id: np.ndarray
    frame_index: np.ndarray

    @property
    def num_frames(self) -> int:
        return int(self.energy.shape[0])

    def metrics(self) -> dict[str, float]:
        """The GMD-26 metrics of :mod:`benchmark.evaluation.metrics`."""
        return metrics.compute_metrics(
            self.energy, self.energy_ref, self.forces, self.forces_ref, self.n_atoms
        )

    def per_fragment_force_mae(self) -> dict[str, float]:
        return metrics.per_fragment_force_mae(self.forces, self.forces_ref, self.fragment)

    def save(self, path: str | Path) -> None:
        """Write to a compressed ``.npz`` (one array per attribute)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: str | Path) -> Predictions:
        with np.load(path, allow_pickle=False) as data:
            missing = [f.name for f in fields(cls) if f.name not in data]
            if missing:
                raise ValueError(f"{path}: not a predictions file (missing {missing})")
            return cls(**{f.name: data[f.name] for f in fields(cls)})

    @classmethod
    def concatenate(cls, parts: Sequence[Predictions]) -> Predictions:
        """Join predictions of disjoint frame sets and order them by ``frame_index``."""
        parts = [p for p in parts if p.num_frames > 0]
        if not parts:
            raise ValueError("no predictions to concatenate")
        joined = {f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)}
        order = np.argsort(joined["frame_index"], kind="stable")
        n_atoms = joined["n_atoms"]
        first_atom = np.cumsum(n_atoms) - n_atoms
        atom_order = np.concatenate(
            [np.arange(first_atom[i], first_atom[i] + n_atoms[i]) for i in order]
        )
        per_atom = {"forces", "forces_ref", "z", "fragment"}
        return cls(
            **{
                name: values[atom_order] if name in per_atom else values[order]
                for name, values in joined.items()
            }
        )


@torch.no_grad()
def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float64).numpy()


def evaluate(
    model: nn.Module,
    frames_or_loader: Sequence[Frame] | DataLoader,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    context: DistributedContext | None = None,
) -> Predictions:
    """Predictions of ``model`` (DESIGN.md interface, E0 included) on every frame.

    Args:
        model: the potential; evaluated in eval mode, restored to its previous mode after.
        frames_or_loader: frames, or a loader from :mod:`benchmark.training.loaders`.
        batch_size: molecules per batch when frames are given.
        device: where the model lives.
        context: under ``torchrun``, each process evaluates its shard and every process
            receives the joined predictions.
    """
    context = context or DistributedContext()
    if isinstance(frames_or_loader, DataLoader):
        loader = frames_or_loader
    else:
        loader = evaluation_loader(frames_or_loader, batch_size, context)
    frames = loader_frames(loader)
    was_training = model.training
    model.eval()
    parts: list[Predictions] = []
    try:
        for batch in loader:
            batch = batch_to(batch, device)
            index = batch["frame_index"].cpu().numpy()
            try:
                with torch.enable_grad():  # forces are -dE/dpos by autograd
                    out = model(batch)
            except GeometryError as error:
                if error.molecule is None:
                    raise
                frame = frames[int(index[error.molecule])]
                raise GeometryError(
                    f"frame {frame.trajectory_id}@{frame.step} ({frame.molecule_id}): {error}",
                    error.molecule,
                    error.atoms,
                ) from error
            parts.append(
                Predictions(
                    energy=_to_numpy(out["energy"]),
                    energy_ref=_to_numpy(batch["energy"]),
                    forces=_to_numpy(out["forces"]),
                    forces_ref=np.concatenate([frames[i].forces for i in index]).astype(np.float64),
                    n_atoms=batch["n_atoms"].cpu().numpy(),
                    z=batch["z"].cpu().numpy(),
                    fragment=batch["fragment"].cpu().numpy(),
                    molecule_id=np.array([frames[i].molecule_id for i in index], dtype=str),
                    frame_index=index,
                )
            )
    finally:
        model.train(was_training)
    gathered = [part for rank_parts in all_gather_objects(parts, context) for part in rank_parts]
    return Predictions.concatenate(gathered)
