"""The batch every model takes: a flat ``dict[str, Tensor]`` of molecules.

==============  ===========  ==================================================
key             shape        meaning
==============  ===========  ==================================================
z               [N] long     atomic numbers
pos             [N, 3]       positions, Å (float32 for training)
batch           [N] long     molecule index of each atom
ptr             [B+1] long   CSR offsets of the molecules
n_atoms         [B] long     atoms per molecule
fragment        [N] long     fragment label of each atom (when known)
energy          [B]          reference total energy, eV (float64; training labels only)
forces          [N, 3]       reference forces, eV/Å (training labels only)
==============  ===========  ==================================================

Energies stay float64 because total energies of organic molecules are hundreds of eV while
errors of interest are meV. :func:`collate` builds a batch from any structures that carry
``numbers`` and ``positions`` (and optionally ``fragment``, ``energy``, ``forces``);
:func:`atoms_to_batch` builds one from ``ase.Atoms``-like objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

Batch = dict[str, Tensor]

STRUCTURE_KEYS = ("z", "pos", "batch", "ptr", "n_atoms")
"""Keys every batch holds."""
LABEL_KEYS = ("energy", "forces")
"""Reference labels, present when every structure of the batch is labelled."""


class Structure(Protocol):
    """What :func:`collate` reads from each structure (e.g. ``benchmark`` frames)."""

    numbers: np.ndarray
    positions: np.ndarray


class BatchError(ValueError):
    """Structures that cannot be batched (empty, malformed or non-finite)."""


def check_positions(pos: np.ndarray | Tensor, where: str = "structure") -> None:
    """Raise :class:`BatchError` naming the first atom whose coordinates are not finite.

    Args:
        pos: [n, 3] positions, Å.
        where: how to name the structure in the message.
    """
    finite = torch.isfinite(torch.as_tensor(pos)).all(dim=-1)
    if not bool(finite.all()):
        atom = int(torch.nonzero(~finite)[0, 0])
        raise BatchError(
            f"{where}: atom {atom} has non-finite coordinates ({pos[atom].tolist()}); "
            f"check the geometry (NaN/inf positions cannot be evaluated)"
        )


def collate(structures: Sequence[Structure], dtype: torch.dtype = torch.float32) -> Batch:
    """Concatenate structures into one batch (module docstring).

    ``fragment``, ``energy`` and ``forces`` are included only when every structure has them.

    Args:
        structures: objects with ``numbers`` [n] and ``positions`` [n, 3] Å, optionally
            ``fragment`` [n], ``energy`` (eV) and ``forces`` [n, 3] (eV/Å).
        dtype: floating dtype of ``pos`` and ``forces``.

    Raises:
        BatchError: no structures, or an atom with non-finite coordinates.
    """
    if len(structures) == 0:
        raise BatchError("cannot collate an empty list of structures")
    counts = np.array([len(s.numbers) for s in structures], dtype=np.int64)
    positions = np.concatenate([np.asarray(s.positions, dtype=np.float64) for s in structures])
    if not np.isfinite(positions).all():
        for index, structure in enumerate(structures):
            name = getattr(structure, "molecule_id", None) or f"structure {index}"
            check_positions(np.asarray(structure.positions), where=str(name))
    batch: Batch = {
        "z": torch.from_numpy(np.concatenate([np.asarray(s.numbers) for s in structures])).long(),
        "pos": torch.from_numpy(positions).to(dtype),
        "batch": torch.repeat_interleave(torch.arange(len(structures)), torch.from_numpy(counts)),
        "ptr": torch.from_numpy(np.concatenate([[0], np.cumsum(counts)])),
        "n_atoms": torch.from_numpy(counts),
    }
    fragments = [getattr(s, "fragment", None) for s in structures]
    if all(f is not None for f in fragments):
        batch["fragment"] = torch.from_numpy(np.concatenate(fragments)).long()
    energies = [getattr(s, "energy", None) for s in structures]
    forces = [getattr(s, "forces", None) for s in structures]
    if all(e is not None for e in energies) and all(f is not None for f in forces):
        batch["energy"] = torch.tensor([float(e) for e in energies], dtype=torch.float64)
        batch["forces"] = torch.from_numpy(np.concatenate(forces)).to(dtype)
    return batch


def atoms_to_batch(
    atoms: Any,
    fragments: Sequence[np.ndarray] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Batch:
    """Batch of one or several ``ase.Atoms`` (no labels).

    Args:
        atoms: one ``ase.Atoms`` or a sequence of them (anything with
            ``get_atomic_numbers()`` and ``positions``).
        fragments: optional [n] fragment labels per structure.
        dtype: floating dtype of ``pos``.
    """
    many = atoms if isinstance(atoms, Sequence) else [atoms]
    labels = fragments if fragments is not None else [None] * len(many)
    structures = [
        _Unlabelled(a.get_atomic_numbers(), np.asarray(a.positions), f)
        for a, f in zip(many, labels, strict=True)
    ]
    return collate(structures, dtype=dtype)


class _Unlabelled:
    def __init__(self, numbers: np.ndarray, positions: np.ndarray, fragment: Any) -> None:
        self.numbers, self.positions, self.fragment = numbers, positions, fragment
        self.molecule_id = None


def batch_to(batch: Batch, device: torch.device | str) -> Batch:
    """Move every tensor of a batch to ``device``."""
    return {key: value.to(device) for key, value in batch.items()}
