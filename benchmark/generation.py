"""Labelled conformations of the GMD-26 molecules: ETKDG -> Langevin MD -> reference labels.

For each molecule, T RDKit ETKDG conformers are embedded (seeded by the molecule), relaxed with
MMFF94, and each starts one independent Langevin MD trajectory in ASE with its own seed. The
MD is driven by ``md_calculator``; after ``equilibration_steps`` one frame is kept every
``interval`` steps and labelled with the reference (when the reference *is* the MD
calculator, the MD's own energy and forces at that step are the labels). Frames carry the
fragment label of every atom (:func:`benchmark.fragments.fragments_from_smiles`, RDKit atom
order with explicit hydrogens).

A work unit is one (molecule, trajectory) pair. Units run on any executor with
``submit(fn, *args) -> future`` and futures with ``done()`` / ``result()`` (a
``concurrent.futures`` pool or a ``dask.distributed.Client``). Each finished trajectory is
written atomically as its own file, so an interrupted build resumes where it stopped and ends
byte-identical to an uninterrupted one: seeds derive from the build seed and the molecule id
through SHA-256, never from Python's randomised ``hash``.

A frame whose reference calculation raises or returns non-finite values is recorded in
``failures.json`` (molecule, trajectory, step, error), never dropped silently; a failure of
the MD calculator ends that trajectory and is recorded the same way.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.constraints import FixCom
from rdkit import Chem
from rdkit.Chem import AllChem
from tqdm import tqdm

from benchmark import dataset_dir as layout
from benchmark.fragments import fragments_from_smiles
from benchmark.jsonio import write_json
from benchmark.md import seeded_langevin
from benchmark.molecules import MoleculeSpec
from benchmark.references import get_calculator, reference_name
from benchmark.storage import Frame, write_frames
from benchmark.tasks import (
    GENERATOR_VERSION,
    TASK_NAMES,
    all_molecules,
    define_task,
    make_manifest,
    trajectory_id,
    write_manifest,
)

DATA_GENERATOR_VERSION = "gmd26-data-1.0"
"""Version of the sampling and labelling procedure; bump it whenever it changes."""

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

logger = logging.getLogger(__name__)


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
"""Sampling of each preset (molecule sets: :data:`benchmark.tasks.PRESETS`). ``standard``
(120 molecules x 6 trajectories x 30 frames = 21,600 frames) drives the MD with GFN2-xTB
itself; ``smoke`` uses MMFF94 for MD and labels."""


class BuildConfigError(ValueError):
    """An existing output directory was built with other settings; a resume would mix them."""


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


def _failure(spec: MoleculeSpec, index: int, step: int, stage: str, error: str) -> dict[str, Any]:
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
            failures.append(_failure(spec, index, step, "md", f"{type(error).__name__}: {error}"))
            break
        step += segment
        if position == 0:  # end of equilibration
            continue
        try:
            energy, forces = _label(atoms, labeller, same_as_md)
        except Exception as error:
            failures.append(
                _failure(spec, index, step, "reference", f"{type(error).__name__}: {error}")
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


class Executor(Protocol):
    """What the build needs from an executor (``concurrent.futures`` or ``dask``)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Any: ...


class SerialExecutor:
    """Runs each submitted call at once in this process (``workers <= 1``)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as error:
            future.set_exception(error)
        return future


@dataclass
class BuildSummary:
    """Outcome of :func:`build_dataset`."""

    out: Path
    frames: int
    trajectories: int
    computed_trajectories: int
    failures: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every trajectory exists and no frame failed."""
        return not self.failures and not self.missing


def build_config(
    preset: str, reference: str | Calculator, seed: int, settings: GenerationSettings
) -> dict[str, Any]:
    """The settings recorded in ``build.json`` (and compared on resume)."""
    return {
        "preset": preset,
        "reference": reference_name(reference),
        **dataclasses.asdict(settings),
        "seed": seed,
        "seed_derivation": "sha256('<seed>/<molecule_id>/conformers' | "
        "'<seed>/<molecule_id>/trajectory/<index>')[:4] little-endian & 0x7fffffff",
        "generator_version": DATA_GENERATOR_VERSION,
        "tasks_version": GENERATOR_VERSION,
    }


def _start_config(out: Path, config: dict[str, Any]) -> float:
    """Check ``config`` against a previous build in ``out``; return its accumulated wall time."""
    path = out / layout.BUILD_FILE
    previous: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    changed = sorted(k for k in config if k in previous and previous[k] != config[k])
    if changed:
        detail = ", ".join(f"{k}: {previous[k]!r} -> {config[k]!r}" for k in changed)
        raise BuildConfigError(
            f"{out} holds a build with other settings ({detail}); use another --out directory"
        )
    write_json(path, {**config, "status": "running"})
    return float(previous.get("total_wall_time_s", 0.0))


def _store(out: Path, result: TrajectoryResult) -> None:
    """Write a finished trajectory (failure records first, then the frames, both atomically)."""
    failures_path = layout.trajectory_failures_path(out, result.molecule_id, result.index)
    if result.failures:
        failures_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(failures_path, {"failures": result.failures})
    else:
        failures_path.unlink(missing_ok=True)
    write_frames(layout.trajectory_path(out, result.molecule_id, result.index), result.frames)


def _collect_failures(out: Path, unit_errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    records = list(unit_errors)
    for path in (out / layout.FRAMES_DIR).glob(f"*/*{layout.FAILURES_SUFFIX}"):
        records.extend(json.loads(path.read_text())["failures"])
    records.sort(key=lambda r: (r["molecule_id"], r["trajectory"], r["step"], r["stage"]))
    write_json(out / layout.FAILURES_FILE, {"count": len(records), "failures": records})
    return records


def _run_units(
    executor: Executor,
    fn: Callable[..., Any],
    calls: Sequence[tuple[Any, ...]],
    window: int,
    on_done: Callable[[tuple[Any, ...], Any], None],
) -> None:
    """Submit ``fn(*args)`` for each ``args`` (at most ``window`` in flight) and pass each
    finished future to ``on_done(args, future)`` as soon as it is done.

    Completion is detected by polling ``future.done()``, which the futures of every executor
    offer (``concurrent.futures.as_completed`` would reject dask futures).
    """
    queue = list(calls)[::-1]
    pending: list[tuple[Any, tuple[Any, ...]]] = []
    while queue or pending:
        while queue and len(pending) < window:
            args = queue.pop()
            pending.append((executor.submit(fn, *args), args))
        finished = [item for item in pending if item[0].done()]
        if not finished:
            time.sleep(0.05)
            continue
        for item in finished:
            pending.remove(item)
            on_done(item[1], item[0])


def _count_frames(out: Path, units: Sequence[tuple[MoleculeSpec, int]]) -> tuple[int, int, list]:
    """Frames and atoms stored for ``units``, and the trajectory ids with no file."""
    frames = atoms = 0
    missing = []
    for spec, index in units:
        path = layout.trajectory_path(out, spec.molecule_id, index)
        if not path.exists():
            missing.append(trajectory_id(spec.molecule_id, index))
            continue
        n_frames, n_atoms = layout.count_frames(path)
        frames += n_frames
        atoms += n_atoms
    return frames, atoms, missing


def _write_manifests(out: Path, preset: str, config: dict[str, Any]) -> None:
    metadata = {
        key: config[key]
        for key in ("preset", "reference", "md_calculator", "seed", "generator_version")
    }
    metadata["data_generator_version"] = metadata.pop("generator_version")
    n_trajectories = config["trajectories_per_molecule"]
    for task in TASK_NAMES:
        manifest = make_manifest(define_task(task, preset), n_trajectories, metadata)
        write_manifest(manifest, layout.manifest_path(out, task))


def _default_workers() -> int:
    return max(
        1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )


def build_dataset(
    out: str | Path,
    preset: str = "standard",
    reference: str | Calculator = "xtb",
    *,
    seed: int = 0,
    workers: int | None = None,
    executor: Executor | None = None,
    md_calculator: str | None = None,
    progress: bool = True,
) -> BuildSummary:
    """Build (or resume) the four GMD-26 tasks of ``preset`` into ``out``.

    Args:
        out: output directory (layout: :mod:`benchmark.dataset_dir`).
        preset: ``"smoke"`` or ``"standard"`` (:data:`GENERATION_PRESETS`, molecule sets of
            :data:`benchmark.tasks.PRESETS`).
        reference: ``"xtb"``, ``"mmff"``, ``"dft"`` or an ASE calculator labelling the frames.
        seed: build seed; every conformer and MD seed derives from it.
        workers: processes of the default ``ProcessPoolExecutor`` (default: available cores;
            ``<= 1`` runs in this process). Ignored when ``executor`` is given.
        executor: any object with ``submit(fn, *args)`` (e.g. a ``dask.distributed.Client``).
        md_calculator: overrides the preset's MD driver (``"xtb"`` or ``"mmff"``).
        progress: show a tqdm bar over trajectories.

    Trajectories already in ``out`` are kept (resume); ``out`` must have been built with the
    same settings, otherwise :class:`BuildConfigError` is raised.
    """
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if preset not in GENERATION_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {tuple(GENERATION_PRESETS)}")
    settings = GENERATION_PRESETS[preset]
    if md_calculator is not None:
        settings = dataclasses.replace(settings, md_calculator=md_calculator)
    config = build_config(preset, reference, seed, settings)
    handler = logging.FileHandler(out / layout.LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        previous_wall = _start_config(out, config)
        for stale in (out / layout.FRAMES_DIR).glob("*/*.partial"):
            stale.unlink()
        units = [
            (spec, index)
            for spec in all_molecules(preset)
            for index in range(settings.trajectories_per_molecule)
        ]
        todo = [
            (spec, index, settings, reference, seed)
            for spec, index in units
            if not layout.trajectory_path(out, spec.molecule_id, index).exists()
        ]
        logger.info(
            "build %s: %d trajectories, %d to compute, reference %s, MD by %s, seed %d",
            out,
            len(units),
            len(todo),
            config["reference"],
            settings.md_calculator,
            seed,
        )
        unit_errors: list[dict[str, Any]] = []
        bar = tqdm(
            total=len(units),
            initial=len(units) - len(todo),
            unit="traj",
            disable=not progress,
            desc=f"gmd26 build {preset}",
        )

        def on_done(args: tuple[Any, ...], future: Any) -> None:
            spec, index = args[0], args[1]
            try:
                result = future.result()
            except Exception as error:
                unit_errors.append(
                    _failure(spec, index, -1, "setup", f"{type(error).__name__}: {error}")
                )
                logger.error("%s t%d failed: %s", spec.molecule_id, index, error)
            else:
                _store(out, result)
                logger.info(
                    "%s t%d: %d frames, %d failures, %d MD steps, %.2f s",
                    spec.molecule_id,
                    index,
                    len(result.frames),
                    len(result.failures),
                    result.md_steps,
                    result.seconds,
                )
                for record in result.failures:
                    logger.warning(
                        "%s t%d step %d [%s] failed: %s",
                        spec.molecule_id,
                        index,
                        record["step"],
                        record["stage"],
                        record["error"],
                    )
            bar.update(1)

        if executor is not None:
            _run_units(executor, generate_trajectory, todo, max(1, len(todo)), on_done)
        else:
            n_workers = _default_workers() if workers is None else workers
            if n_workers <= 1:
                with single_threaded_openmp():
                    _run_units(SerialExecutor(), generate_trajectory, todo, 1, on_done)
            else:
                context = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(
                    n_workers, mp_context=context, initializer=limit_threads
                ) as pool:
                    _run_units(pool, generate_trajectory, todo, 2 * n_workers, on_done)
        bar.close()

        failures = _collect_failures(out, unit_errors)
        _write_manifests(out, preset, config)
        n_frames, n_atoms, missing = _count_frames(out, units)
        wall = time.perf_counter() - start
        write_json(
            out / layout.BUILD_FILE,
            {
                **config,
                "status": "complete" if not missing else "incomplete",
                "wall_time_s": round(wall, 1),
                "total_wall_time_s": round(previous_wall + wall, 1),
                "counts": {
                    "molecules": len({spec.molecule_id for spec, _ in units}),
                    "trajectories": len(units) - len(missing),
                    "frames": n_frames,
                    "atoms": n_atoms,
                    "failures": len(failures),
                    "missing_trajectories": len(missing),
                },
            },
        )
        logger.info(
            "done in %.1f s: %d frames, %d failures, %d missing trajectories",
            wall,
            n_frames,
            len(failures),
            len(missing),
        )
    finally:
        logger.removeHandler(handler)
        handler.close()
    return BuildSummary(
        out, n_frames, len(units) - len(missing), len(todo), failures, missing, wall
    )
