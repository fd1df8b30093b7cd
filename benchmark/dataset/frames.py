"""Labelled frames on disk: extended XYZ with the ``ref_`` keys of DESIGN.md.

Per frame, ``atoms.info`` holds ``ref_energy`` (eV), ``smiles``, ``molecule_id``,
``trajectory_id`` and ``reference``; ``atoms.arrays`` holds ``ref_forces`` (eV/Å) and
``fragment`` (int). Files may be gzip-compressed (``.xyz.gz``); ASE reads and writes both, and
MACE / NequIP tools read them with ``energy_key="ref_energy"``, ``forces_key="ref_forces"``.

ASE writes per-atom arrays with 8 decimals. :func:`write_frames` therefore quantises positions
and forces to 1e-8 (Å, eV/Å) before writing, so that write -> read is exact bit for bit.
"""

from __future__ import annotations

import gzip
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import ase
import ase.io
import numpy as np

from deepset_moe.atomic_io import atomic_write
from deepset_moe.batch import geometry_problem

ARRAY_DECIMALS = 8
"""Decimals kept for positions (Å) and forces (eV/Å): the precision of ASE's extxyz writer."""

REQUIRED_INFO = ("ref_energy", "smiles", "molecule_id", "trajectory_id", "reference")
REQUIRED_ARRAYS = ("ref_forces", "fragment")


class DataFormatError(ValueError):
    """A stored file is empty, truncated or cannot be parsed, or a frame misses labels, holds
    non-finite values or overlapping atoms; the message names the file (and frame)."""


DAMAGED_HINT = "the file is damaged; delete it (gmd26 build recomputes a trajectory file)"


@dataclass
class Frame:
    """One labelled conformation of one molecule.

    Attributes:
        numbers: [n] atomic numbers.
        positions: [n, 3] Å.
        fragment: [n] fragment labels (indices into ``deepset_moe.fragments.FRAGMENT_NAMES``).
        energy: total reference energy, eV.
        forces: [n, 3] reference forces, eV/Å.
        smiles: canonical SMILES of the molecule.
        molecule_id: stable molecule identifier (shared by all tasks using the molecule).
        trajectory_id: identifier of the MD trajectory the frame was taken from.
        reference: name of the reference method (e.g. ``"xtb"``, ``"mmff"``).
        step: MD step the frame was taken at (-1 if unknown).
    """

    numbers: np.ndarray
    positions: np.ndarray
    fragment: np.ndarray
    energy: float
    forces: np.ndarray
    smiles: str
    molecule_id: str
    trajectory_id: str
    reference: str
    step: int = -1

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    def to_atoms(self) -> ase.Atoms:
        """The frame as ``ase.Atoms`` with the DESIGN.md keys (values quantised for storage)."""
        atoms = ase.Atoms(numbers=self.numbers, positions=np.round(self.positions, ARRAY_DECIMALS))
        atoms.info.update(
            ref_energy=float(self.energy),
            smiles=self.smiles,
            molecule_id=self.molecule_id,
            trajectory_id=self.trajectory_id,
            reference=self.reference,
            step=int(self.step),
        )
        atoms.arrays["ref_forces"] = np.round(
            np.asarray(self.forces, dtype=np.float64), ARRAY_DECIMALS
        )
        atoms.arrays["fragment"] = np.asarray(self.fragment, dtype=np.int64)
        return atoms

    @classmethod
    def from_atoms(cls, atoms: ase.Atoms, where: str = "<memory>") -> Frame:
        """Build a frame from ``ase.Atoms``, failing loudly (naming ``where``) on bad labels."""
        missing = [k for k in REQUIRED_INFO if k not in atoms.info]
        missing += [k for k in REQUIRED_ARRAYS if k not in atoms.arrays]
        if missing:
            raise DataFormatError(f"{where}: missing labels {missing}")
        positions = np.asarray(atoms.positions, dtype=np.float64)
        forces = np.asarray(atoms.arrays["ref_forces"], dtype=np.float64)
        energy = atoms.info["ref_energy"]
        if not isinstance(energy, (int, float, np.floating)) or not math.isfinite(energy):
            raise DataFormatError(f"{where}: ref_energy is not a finite number ({energy!r})")
        if forces.shape != positions.shape:
            raise DataFormatError(
                f"{where}: ref_forces has shape {forces.shape}, expected {positions.shape}"
            )
        for name, values in (("positions", positions), ("ref_forces", forces)):
            if not np.isfinite(values).all():
                atom = int(np.argwhere(~np.isfinite(values))[0, 0])
                raise DataFormatError(f"{where}: non-finite {name} (atom {atom})")
        problem = geometry_problem(positions, where)  # overlapping atoms
        if problem is not None:
            raise DataFormatError(str(problem))
        return cls(
            numbers=np.asarray(atoms.numbers, dtype=np.int64),
            positions=positions,
            fragment=np.asarray(atoms.arrays["fragment"], dtype=np.int64),
            energy=float(energy),
            forces=forces,
            smiles=str(atoms.info["smiles"]),
            molecule_id=str(atoms.info["molecule_id"]),
            trajectory_id=str(atoms.info["trajectory_id"]),
            reference=str(atoms.info["reference"]),
            step=int(atoms.info.get("step", -1)),
        )


def write_frames(path: str | Path, frames: Iterable[Frame]) -> None:
    """Write frames to an extended-XYZ file (gzip if ``path`` ends with ``.gz``).

    The file is written atomically (:func:`deepset_moe.atomic_io.atomic_write`: a temporary
    file renamed at the end), so an interrupted write never leaves a truncated file under the
    final name. The output is a function of the frames only: the gzip header carries no file
    name and no time stamp, so the same frames always give the same bytes.
    """
    path = Path(path)
    text = io.StringIO()
    ase.io.write(text, [f.to_atoms() for f in frames], format="extxyz")
    data = text.getvalue().encode()
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    with atomic_write(path) as partial:
        partial.write_bytes(data)


def read_frames(path: str | Path) -> list[Frame]:
    """Read and validate every frame of an extended-XYZ file.

    A file of zero bytes is never valid (a gzip file always has a header, and the build writes
    no empty trajectory file): it is the trace of a damaged copy or disk, not "no frames".

    Raises:
        FileNotFoundError: the file does not exist.
        DataFormatError: the file is empty (0 bytes), a frame cannot be parsed (truncated or
            corrupt file or gzip stream), misses a label, or holds non-finite values or
            overlapping atoms; the message names the file and frame index.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no data file at {path}")
    if path.is_dir():
        raise DataFormatError(f"{path}: is a folder, expected an extended-XYZ file")
    if path.stat().st_size == 0:
        raise DataFormatError(f"{path}: empty file (0 bytes); {DAMAGED_HINT}")
    frames: list[Frame] = []
    iterator = ase.io.iread(path, index=":", format="extxyz")
    while True:
        where = f"{path} frame {len(frames)}"
        try:
            atoms = next(iterator)
        except StopIteration:
            break
        except Exception as error:  # ASE raises many types for a corrupt/truncated file
            raise DataFormatError(f"{where}: cannot parse ({error}); {DAMAGED_HINT}") from error
        frames.append(Frame.from_atoms(atoms, where))
    return frames

