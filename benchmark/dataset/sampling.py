"""Labelled conformations of ONE trajectory: ETKDG conformer -> Langevin MD -> reference labels.

For each molecule, T RDKit ETKDG conformers are embedded (seeded by the molecule), relaxed with
MMFF94, and each starts one independent Langevin MD trajectory in ASE with its own seed. The
MD is driven by ``md_calculator``; after ``equilibration_steps`` one frame is kept every
``interval`` steps and labelled with the reference (when the reference *is* the MD
calculator, the MD's own energy and forces at that step are the labels). Frames carry the
fragment label of every atom (:func:`deepset_moe.fragments.fragments_from_smiles`, RDKit atom
order with explicit hydrogens). Units: positions Å, energies eV, forces eV/Å, temperature K,
time fs.

One (molecule, trajectory) pair is one work unit (:func:`generate_trajectory`), a pure function
of its arguments: seeds derive from the build seed and the molecule id through SHA-256
(:func:`derive_seed`), never from Python's randomised ``hash``. A frame whose reference
calculation raises or returns non-finite values is returned as a failure record (molecule,
trajectory, step, error), never dropped silently; a failure of the MD calculator ends the
trajectory and is recorded the same way. Running every unit of a dataset, resuming and writing
files is :mod:`benchmark.dataset.build`.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import hashlib
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.constraints import FixCom
from rdkit import Chem
from rdkit.Chem import AllChem

from benchmark.dataset.frames import Frame
from benchmark.dataset.md import seeded_langevin
from benchmark.dataset.molecules import MoleculeSpec
from benchmark.dataset.references import get_calculator, reference_name
from benchmark.dataset.splits import trajectory_id
from deepset_moe.fragments import fragments_from_smiles

DATA_GENERATOR_VERSION = "gmd26-data-1.0"
"""Version of the sampling and labelling procedure; bump it whenever it changes."""

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class GenerationSettings:
    """How conformations are sampled.

    Attributes:
        md_calculator: reference name driving the MD (``"xtb"`` or ``"mmff"``).
        temperature_K: Langevin bath and initial velocity temperature, K.
        timestep_fs: MD time step, fs.
        friction_per_fs: Langevin friction, 1/fs.
        equilibration_steps: MD steps discarded before the first kept frame.
        interval: MD steps between kept frames.
        frames_per_trajectory: frames kept per trajectory.
        trajectories_per_molecule: T independent trajectories per molecule (T >= 3: the
            manifests give 0..T-3 to train, T-2 to val and T-1 to id_test).
    """

    md_calculator: str
    temperature_K: float
    timestep_fs: float
    friction_per_fs: float
    equilibration_steps: int
    interval: int
    frames_per_trajectory: int
    trajectories_per_molecule: int

    @property
    def steps_per_trajectory(self) -> int:
        return self.equilibration_steps + self.interval * self.frames_per_trajectory


GENERATION_PRESETS: dict[str, GenerationSettings] = {
    "smoke": GenerationSettings(
        md_calculator="mmff",
        temperature_K=500.0,
        timestep_fs=0.5,
        friction_per_fs=0.02,
        equilibration_steps=20,
        interval=5,
        frames_per_trajectory=8,
        trajectories_per_molecule=3,
    ),
    "standard": GenerationSettings(
        md_calculator="xtb",
        temperature_K=500.0,
        timestep_fs=0.5,
        friction_per_fs=0.02,
        equilibration_steps=200,
        interval=10,
        frames_per_trajectory=30,
        trajectories_per_molecule=6,
    ),
}
"""Sampling settings of each dataset preset (its molecule sets:
:data:`benchmark.dataset.tasks.DATASET_PRESETS`). ``standard`` (120 molecules x 6 trajectories
x 30 frames = 21,600 frames) drives the MD with GFN2-xTB itself; ``smoke`` uses MMFF94 for MD
and labels."""


def derive_seed(seed: int, *parts: object) -> int:
    """A 31-bit seed from the build seed and labels (molecule id, purpose, index), via SHA-256."""
    text = "/".join(str(part) for part in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def _set_openmp_threads(count: int) -> int | None:
    """Set the OpenMP thread count of this thread in libgomp (tblite's OpenMP runtime on
    Linux), effective even after the runtime started; returns the previous count, or ``None``
    where libgomp is not available (then only ``OMP_NUM_THREADS`` applies)."""
    try:
        gomp = ctypes.CDLL("libgomp.so.1")
    except OSError:
        return None
    previous = int(gomp.omp_get_max_threads())
    gomp.omp_set_num_threads(count)
    return previous


@contextlib.contextmanager
def single_threaded_openmp() -> Iterator[None]:
    """Run this thread's OpenMP regions (tblite's) on one thread, restoring the count after.

    On a loaded machine tblite's OpenMP threads spin-wait for each other and a serial build
    becomes many times slower; one thread per process avoids that.
    """
    previous = _set_openmp_threads(1)
    try:
        yield
    finally:
        if previous is not None:
            _set_openmp_threads(previous)


def limit_threads() -> None:
    """Worker initializer: numerical libraries on one thread, so N workers use N cores."""
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    _set_openmp_threads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


@dataclass
class TrajectoryResult:
    """What one work unit returns: the kept frames and the failures of one trajectory."""

    molecule_id: str
    index: int
    frames: list[Frame]
    failures: list[dict[str, Any]]
    seconds: float
    md_steps: int


def _embed_conformer(molecule: Chem.Mol, spec: MoleculeSpec, index: int, count: int, seed: int):
    """Conformer ``index`` of ``count`` ETKDG conformers (seeded by the molecule), MMFF-relaxed."""
    params = AllChem.ETKDGv3()
    params.randomSeed = derive_seed(seed, spec.molecule_id, "conformers")
    params.numThreads = 1
    ids = list(AllChem.EmbedMultipleConfs(molecule, numConfs=count, params=params))
    if len(ids) < count:
        raise RuntimeError(
            f"{spec.molecule_id} ({spec.smiles}): ETKDG embedded {len(ids)} of {count} conformers"
        )
    AllChem.MMFFOptimizeMolecule(molecule, confId=ids[index], maxIters=500)
    return molecule.GetConformer(ids[index]).GetPositions()


def failure_record(
    spec: MoleculeSpec, index: int, step: int, stage: str, error: str
) -> dict[str, Any]:
    """One entry of ``failures.json``: what failed (``stage``: md, reference or setup) where."""
    return {
        "molecule_id": spec.molecule_id,
        "smiles": spec.smiles,
        "trajectory": index,
        "step": step,
        "stage": stage,
        "error": error,
    }


def _label(atoms: Atoms, calculator: Calculator, same_as_md: bool) -> tuple[float, np.ndarray]:
    """Reference energy (eV) and forces ([n, 3] eV/Å) at the current positions.

    Raises ``FloatingPointError`` on non-finite results and lets calculator errors propagate.
    """
    if same_as_md:  # the MD calculator already holds the results at these positions
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces(apply_constraint=False)
    else:
        probe = Atoms(numbers=atoms.numbers, positions=atoms.positions)
        probe.calc = calculator
        energy = probe.get_potential_energy()
        forces = probe.get_forces()
    forces = np.array(forces, dtype=np.float64)
    if not math.isfinite(energy) or not np.isfinite(forces).all():
        raise FloatingPointError(f"non-finite reference result (energy {energy})")
    return float(energy), forces


def generate_trajectory(
    spec: MoleculeSpec,
    index: int,
    settings: GenerationSettings,
    reference: str | Calculator,
    seed: int,
) -> TrajectoryResult:
    """Run trajectory ``index`` of one molecule and label its kept frames (one work unit).

    Args:
        spec: the molecule.
        index: trajectory index in ``0 .. settings.trajectories_per_molecule - 1``.
        settings: sampling settings.
        reference: reference name or ASE calculator (deep-copied, so units stay independent).
        seed: build seed; the conformer and MD seeds derive from it and the molecule id.

    Raises:
        RuntimeError / FragmentError: the molecule cannot be embedded or labelled at all.
    """
    start = time.perf_counter()
    molecule, fragments = fragments_from_smiles(spec.smiles)
    positions = _embed_conformer(molecule, spec, index, settings.trajectories_per_molecule, seed)
    atoms = Atoms(numbers=[a.GetAtomicNum() for a in molecule.GetAtoms()], positions=positions)
    atoms.set_constraint(FixCom())
    same_as_md = isinstance(reference, str) and reference == settings.md_calculator
    atoms.calc = get_calculator(settings.md_calculator, molecule=molecule)
    if same_as_md:
        labeller = atoms.calc
    elif isinstance(reference, Calculator):
        labeller = copy.deepcopy(reference)
    else:
        labeller = get_calculator(reference, molecule=molecule)
    name = reference_name(reference)

    rng = np.random.default_rng(derive_seed(seed, spec.molecule_id, "trajectory", index))
    dynamics = seeded_langevin(
        atoms,
        temperature_K=settings.temperature_K,
        timestep_fs=settings.timestep_fs,
        friction_per_fs=settings.friction_per_fs,
        rng=rng,
    )
    frames: list[Frame] = []
    failures: list[dict[str, Any]] = []
    segments = [settings.equilibration_steps] + [settings.interval] * (
        settings.frames_per_trajectory
    )
    step = 0
    for position, segment in enumerate(segments):
        try:
            dynamics.run(segment)
        except Exception as error:  # the MD cannot go on: record it and end the trajectory
            failures.append(
                failure_record(spec, index, step, "md", f"{type(error).__name__}: {error}")
            )
            break
        step += segment
        if position == 0:  # end of equilibration
            continue
        try:
            energy, forces = _label(atoms, labeller, same_as_md)
        except Exception as error:
            failures.append(
                failure_record(spec, index, step, "reference", f"{type(error).__name__}: {error}")
            )
            continue
        frames.append(
            Frame(
                numbers=atoms.numbers.astype(np.int64),
                positions=atoms.positions.copy(),
                fragment=fragments.copy(),
                energy=energy,
                forces=forces,
                smiles=spec.smiles,
                molecule_id=spec.molecule_id,
                trajectory_id=trajectory_id(spec.molecule_id, index),
                reference=name,
                step=step,
            )
        )
    return TrajectoryResult(
        spec.molecule_id, index, frames, failures, time.perf_counter() - start, step
    )
