"""MD stability: how long a trained potential runs NVT dynamics before the molecule falls apart.

A short Langevin (NVT) run (ASE) starts from a reference-labelled conformation of a molecule,
with Maxwell-Boltzmann velocities drawn from a seed. Every ``check_every`` steps the geometry
is compared with the molecule's reference topology; the run *fails* at the first check where

* a bond is **broken**: a bonded pair (i, j) is farther apart than
  ``BREAK_SCALE x (r_i + r_j)``;
* a bond is **formed**: a non-bonded pair comes closer than ``FORM_SCALE x (r_i + r_j)``;
* the energy **blows up**: |E(t) - E(0)| / n_atoms > ``max_energy_drift_per_atom`` (eV/atom);
* the energy or a force is **non-finite**.

r_i are ASE's covalent radii (Å). The reference topology is perceived on the starting
(reference-labelled, in-equilibrium) geometry with ``BOND_SCALE x (r_i + r_j)``. The criteria
have hysteresis: a bond perceived at 1.2x only counts as broken beyond 1.5x, and a new bond
only counts as formed below 1.0x, so that thermal vibrations around the perception threshold
are never reported as events. For a C-H bond (r sum 1.07 Å) that is: bonded below 1.28 Å at
the start, broken beyond 1.60 Å; for C...C (1.52 Å): formed below 1.52 Å.

The time to failure is the simulated time (fs) of the first failing check; a run that never
fails is *stable* and its time to failure is censored at the run length (the mean time to
failure of a model therefore is a lower bound when some runs are stable).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import ase
import numpy as np
from ase.calculators.calculator import Calculator
from ase.constraints import FixCom
from ase.data import covalent_radii

from benchmark.dataset.frames import Frame
from benchmark.dataset.md import seeded_langevin

BOND_SCALE = 1.2
"""Pairs closer than this x sum of covalent radii are bonded in the reference topology."""
BREAK_SCALE = 1.5
"""A reference bond longer than this x sum of covalent radii is broken."""
FORM_SCALE = 1.0
"""A non-bonded pair closer than this x sum of covalent radii has formed a bond."""


@dataclass(frozen=True)
class StabilitySettings:
    """Settings of one NVT stability run.

    Attributes:
        steps: MD steps.
        timestep_fs: time step, fs.
        temperature_k: thermostat and initial-velocity temperature, K.
        friction_per_fs: Langevin friction, 1/fs.
        check_every: steps between topology / energy checks.
        max_energy_drift_per_atom: energy blow-up threshold |E(t) - E(0)| / n_atoms, eV/atom.
    """

    steps: int = 1000
    timestep_fs: float = 0.5
    temperature_k: float = 300.0
    friction_per_fs: float = 0.01
    check_every: int = 10
    max_energy_drift_per_atom: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.check_every < 1 or self.timestep_fs <= 0:
            raise ValueError(f"invalid stability settings {self}")


@dataclass
class StabilityResult:
    """Outcome of one run.

    Attributes:
        molecule_id: the molecule simulated.
        stable: no failure during the run.
        time_to_failure_fs: time of the first failing check (the run length if stable), fs.
        steps_run: MD steps actually run.
        reason: why it failed (``None`` if stable).
    """

    molecule_id: str
    stable: bool
    time_to_failure_fs: float
    steps_run: int
    reason: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def _pair_thresholds(numbers: np.ndarray) -> np.ndarray:
    radii = covalent_radii[np.asarray(numbers)]
    return radii[:, None] + radii[None, :]


def _distances(positions: np.ndarray) -> np.ndarray:
    return np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1)


def reference_bonds(numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """[n, n] bool adjacency of the reference topology (d < BOND_SCALE x radii sum), no diagonal."""
    bonded = _distances(positions) < BOND_SCALE * _pair_thresholds(numbers)
    np.fill_diagonal(bonded, False)
    return bonded


def topology_violation(numbers: np.ndarray, positions: np.ndarray, bonds: np.ndarray) -> str | None:
    """Describe the first broken or formed bond of ``positions`` w.r.t. ``bonds``, or ``None``.

    Args:
        numbers: [n] atomic numbers.
        positions: [n, 3] Å.
        bonds: [n, n] bool reference adjacency (:func:`reference_bonds`).
    """
    if not np.isfinite(positions).all():
        return "non-finite positions"
    distance = _distances(positions)
    radii_sum = _pair_thresholds(numbers)
    upper = np.triu(np.ones_like(bonds), k=1)
    broken = np.argwhere(upper & bonds & (distance > BREAK_SCALE * radii_sum))
    if broken.size:
        i, j = broken[0]
        limit = BREAK_SCALE * radii_sum[i, j]
        return f"bond {i}-{j} broken ({distance[i, j]:.2f} Å > {limit:.2f} Å)"
    formed = np.argwhere(upper & ~bonds & (distance < FORM_SCALE * radii_sum))
    if formed.size:
        i, j = formed[0]
        limit = FORM_SCALE * radii_sum[i, j]
        return f"bond {i}-{j} formed ({distance[i, j]:.2f} Å < {limit:.2f} Å)"
    return None


def first_failure(
    numbers: np.ndarray, trajectory: Sequence[np.ndarray], bonds: np.ndarray | None = None
) -> tuple[int, str] | None:
    """Index and reason of the first frame of ``trajectory`` that breaks the topology.

    Args:
        numbers: [n] atomic numbers.
        trajectory: sequence of [n, 3] positions (Å); frame 0 defines the topology unless
            ``bonds`` is given.
    """
    bonds = reference_bonds(numbers, trajectory[0]) if bonds is None else bonds
    for index, positions in enumerate(trajectory):
        reason = topology_violation(numbers, np.asarray(positions), bonds)
        if reason is not None:
            return index, reason
    return None


def _energy_and_forces(atoms: ase.Atoms) -> tuple[float, np.ndarray]:
    return float(atoms.get_potential_energy()), np.asarray(atoms.get_forces())


def run_stability(
    frame: Frame, calculator: Calculator, settings: StabilitySettings, seed: int
) -> StabilityResult:
    """One seeded NVT run from ``frame``'s geometry with ``calculator`` (see module docstring)."""
    atoms = ase.Atoms(numbers=frame.numbers, positions=frame.positions)
    atoms.arrays["fragment"] = np.asarray(frame.fragment, dtype=np.int64)  # fragment-aware models
    atoms.calc = calculator
    atoms.set_constraint(FixCom())
    bonds = reference_bonds(frame.numbers, frame.positions)
    rng = np.random.default_rng(seed)
    dynamics = seeded_langevin(
        atoms,
        temperature_K=settings.temperature_k,
        timestep_fs=settings.timestep_fs,
        friction_per_fs=settings.friction_per_fs,
        rng=rng,
        zero_rotation=True,
    )

    def failed(step: int, reason: str) -> StabilityResult:
        return StabilityResult(frame.molecule_id, False, step * settings.timestep_fs, step, reason)

    try:
        start_energy, forces = _energy_and_forces(atoms)
    except Exception as error:  # a model may raise on its own output; that is a failure too
        return failed(0, f"calculator error at the start: {error}")
    if not (math.isfinite(start_energy) and np.isfinite(forces).all()):
        return failed(0, "non-finite energy or forces at the start")
    limit = settings.max_energy_drift_per_atom * len(atoms)
    step = 0
    while step < settings.steps:
        chunk = min(settings.check_every, settings.steps - step)
        try:
            dynamics.run(chunk)
            energy, forces = _energy_and_forces(atoms)
        except Exception as error:
            return failed(step + chunk, f"calculator error: {error}")
        step += chunk
        if not (math.isfinite(energy) and np.isfinite(forces).all()):
            return failed(step, "non-finite energy or forces")
        if abs(energy - start_energy) > limit:
            return failed(
                step,
                f"energy blow-up (|E - E0| = {abs(energy - start_energy):.3g} eV > "
                f"{settings.max_energy_drift_per_atom} eV/atom x {len(atoms)})",
            )
        reason = topology_violation(frame.numbers, atoms.positions, bonds)
        if reason is not None:
            return failed(step, reason)
    return StabilityResult(frame.molecule_id, True, step * settings.timestep_fs, step, None)


def pick_starting_frames(frames: Sequence[Frame], n_molecules: int, seed: int) -> list[Frame]:
    """One seeded frame from each of ``n_molecules`` distinct, seeded molecules of ``frames``."""
    rng = np.random.default_rng(seed)
    by_molecule: dict[str, list[Frame]] = {}
    for frame in frames:
        by_molecule.setdefault(frame.molecule_id, []).append(frame)
    names = sorted(by_molecule)
    chosen = rng.choice(len(names), size=min(n_molecules, len(names)), replace=False)
    return [by_molecule[names[i]][rng.integers(len(by_molecule[names[i]]))] for i in chosen]


def stability_study(
    frames: Sequence[Frame],
    make_calculator: Callable[[], Calculator],
    settings: StabilitySettings = StabilitySettings(),
    n_molecules: int = 2,
    seed: int = 0,
) -> dict:
    """Stability runs on a few seeded molecules of ``frames`` and their summary.

    Args:
        frames: candidate starting frames (e.g. the OOD test split).
        make_calculator: returns a fresh ASE calculator for each run.

    Returns:
        JSON-serialisable ``{"settings", "runs": [StabilityResult dicts],
        "mean_time_to_failure_fs", "fraction_stable"}`` (see the module docstring for the
        censoring of stable runs).
    """
    starts = pick_starting_frames(frames, n_molecules, seed)
    runs = [
        run_stability(frame, make_calculator(), settings, seed + index)
        for index, frame in enumerate(starts)
    ]
    return {
        "settings": asdict(settings),
        "runs": [run.to_dict() for run in runs],
        "mean_time_to_failure_fs": float(np.mean([r.time_to_failure_fs for r in runs])),
        "fraction_stable": float(np.mean([r.stable for r in runs])),
    }
