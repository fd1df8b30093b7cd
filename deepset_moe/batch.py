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

Geometry a model cannot evaluate is refused, never turned into a number: non-finite
coordinates and two atoms of one molecule closer than :data:`MIN_DISTANCE` raise
:class:`GeometryError` naming the structure and the atoms (:func:`check_positions` for one
structure; :func:`deepset_moe.graph.radius_graph`, which every model calls, for any batch,
including one built by hand). An atom far from every other one is legal (an isolated atom).
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


MIN_DISTANCE = 0.1
"""Å. Two atoms of one molecule closer than this are overlapping: no model of this project
can evaluate them (distances near zero give NaN or meaningless energies), so they raise
:class:`GeometryError`. The shortest real bond (H2) is 0.74 Å."""


class BatchError(ValueError):
    """Structures that cannot be batched (empty, malformed or non-finite)."""


class GeometryError(BatchError):
    """A structure a model cannot evaluate: non-finite coordinates or overlapping atoms.

    Attributes:
        molecule: index of the structure in its batch (``None`` when unknown).
        atoms: the atom indices concerned, counted inside the structure.
    """

    def __init__(self, message: str, molecule: int | None = None, atoms: tuple[int, ...] = ()):
        super().__init__(message)
        self.molecule = molecule
        self.atoms = tuple(atoms)


def geometry_problem(
    pos: np.ndarray | Tensor, where: str = "structure", molecule: int | None = None
) -> GeometryError | None:
    """The first problem of one structure's positions [n, 3] (Å), or None if it can be
    evaluated: an atom with non-finite coordinates, else the closest pair of atoms nearer than
    :data:`MIN_DISTANCE`."""
    pos = torch.as_tensor(pos).detach().to("cpu", torch.float64)
    finite = torch.isfinite(pos).all(dim=-1)
    if not bool(finite.all()):
        atom = int(torch.nonzero(~finite)[0, 0])
        return GeometryError(
            f"{where}: atom {atom} has non-finite coordinates ({pos[atom].tolist()}); "
            f"fix the geometry (NaN/inf positions cannot be evaluated)",
            molecule,
            (atom,),
        )
    if pos.shape[0] < 2:
        return None
    distance = torch.cdist(pos, pos)
    distance.fill_diagonal_(torch.inf)
    closest = int(torch.argmin(distance))
    i, j = divmod(closest, pos.shape[0])
    if float(distance[i, j]) >= MIN_DISTANCE:
        return None
    i, j = min(i, j), max(i, j)
    return GeometryError(
        f"{where}: atoms {i} and {j} are {float(distance[i, j]):.3g} Å apart (overlapping; "
        f"closer than {MIN_DISTANCE} Å); fix the geometry",
        molecule,
        (i, j),
    )


def check_positions(pos: np.ndarray | Tensor, where: str = "structure") -> None:
    """Raise :class:`GeometryError` if one structure's positions [n, 3] (Å) cannot be
    evaluated: non-finite coordinates (naming the atom) or two atoms closer than
    :data:`MIN_DISTANCE` (naming both); ``where`` names the structure in the message."""
    problem = geometry_problem(pos, where)
    if problem is not None:
        raise problem


def collate(structures: Sequence[Structure], dtype: torch.dtype = torch.float32) -> Batch:
    """Concatenate structures into one batch (module docstring).

    ``fragment``, ``energy`` and ``forces`` are included only when every structure has them.

    Args:
        structures: objects with ``numbers`` [n] and ``positions`` [n, 3] Å, optionally
            ``fragment`` [n], ``energy`` (eV) and ``forces`` [n, 3] (eV/Å).
        dtype: floating dtype of ``pos`` and ``forces``.

    Raises:
        BatchError: no structures, or (:class:`GeometryError`) an atom with non-finite
            coordinates. Overlapping atoms are found by the model's radius graph.
    """
    if len(structures) == 0:
        raise BatchError("cannot collate an empty list of structures")
    counts = np.array([len(s.numbers) for s in structures], dtype=np.int64)
    positions = np.concatenate([np.asarray(s.positions, dtype=np.float64) for s in structures])
    if not np.isfinite(positions).all():
        for index, structure in enumerate(structures):
            name = getattr(structure, "molecule_id", None) or f"structure {index}"
            problem = geometry_problem(np.asarray(structure.positions), str(name), index)
            if problem is not None:
                raise problem
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
