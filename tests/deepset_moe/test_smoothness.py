"""The energy of DeepSet-MoE is continuous, with continuous forces, in every router mode.

Two tests per router mode, with the smooth top-k gate (:mod:`deepset_moe.gates`):

* Energy scan. One atom of butanoic acid (the hydroxyl O of the acid group; RDKit ETKDG
  geometry, seed 7) moves 0.5 Å along (1, 1, 1)/sqrt(3) in 2,000 steps of h = 0.25 mÅ; the
  energy and forces of a small, untrained float64 model (seed :data:`MODEL_SEED`) are
  evaluated at all 2,001 points. Three bounds, with dE_n = E_{n+1} - E_n:

      max |dE_n|                        <= STEP_BOUND      x median |dE_n|,
      max |E_{n+1} - 2 E_n + E_{n-1}|   <= CURVATURE_BOUND x median of the same,
      max |dE_n - W_n|                  <= WORK_BOUND      x median |dE_n|,

  with W_n = h (F_n + F_{n+1}) . u / 2 the trapezoid work done on the moving atom against
  its force (u the direction). The first two bound how much rougher than typical the energy
  may get anywhere (measured with the smooth gate: at most 5 and 10); the third holds for a
  C1 energy whose forces are its gradient, up to the trapezoid error h^3 |d3E/ds3| / 12
  (measured: at most 4e-6 x median step), and fails for a jump J
  (J / median step) and for a kink, i.e. a force jump dF (about h dF / 2 / median step). The
  hard ``topk`` gate on the same scan (``hybrid`` mode) violates all three by orders of
  magnitude (:func:`test_hard_topk_gate_jumps_on_the_same_scan`: ratios ~1e3, ~5e5, ~1e3),
  so the test can fail. For the modes whose routing depends on positions (``learned``,
  ``hybrid``, ``spatial``) the scan is checked to cross at least one change of an atom's
  top-k experts.
* NVE. The small test model is fitted for 200 Adam steps to MMFF94 energies and forces of
  methanol (48 frames of seeded Langevin runs at 300, 600 and 900 K; the hot frames teach it
  the walls that keep the molecule together) and run for 1 ps of velocity Verlet (0.5 fs,
  2,000 steps) through :class:`deepset_moe.calculator.PotentialCalculator` in float64, from
  the MMFF minimum with seeded 300 K Maxwell-Boltzmann velocities. Bound: max_t |E_tot(t) -
  E_tot(0)| < :data:`DRIFT_BOUND_EV` = 1 meV (6 atoms). The seeds (:data:`NVE_SEEDS`) make
  the trajectory cross top-k changes in the position-dependent modes, which the test
  asserts. Measured when this was written, smooth gate: 0.2-0.5 meV in every mode (learned
  0.41 meV with 66 top-k changes, hybrid 0.37 meV / 98, spatial 0.36 meV / 40). The hard
  ``topk`` gate with the same recipe in ``spatial`` mode: 138 meV (74 changes).
  The runs of the modes whose routing cannot change in time (``fragment``, ``identity``,
  ``none``: constant gate weights) are marked ``slow``.

Runtime on one core: about 1 s per scan, 10-12 s per NVE run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet
from rdkit.Chem import AllChem

from benchmark.dataset.references import MMFFCalculator
from deepset_moe import DeepSetMoE
from deepset_moe.batch import Batch, collate
from deepset_moe.calculator import PotentialCalculator
from deepset_moe.config import ROUTER_MODES
from deepset_moe.fragments import DEFAULT_VOCABULARY, mol_from_smiles
from tests.small_deepset_moe import SMALL_CONFIG, torch_threads

POSITION_DEPENDENT_MODES = ("learned", "hybrid", "spatial")
"""Router modes whose top-k experts can change when atoms move."""

SCAN_SMILES = "CCCC(=O)O"
SCAN_EMBED_SEED = 7
SCAN_ATOM = 5
"""The hydroxyl oxygen of the acid group (heavy atoms in SMILES order)."""
SCAN_LENGTH = 0.5
"""Å."""
SCAN_DIRECTION = np.ones(3) / np.sqrt(3.0)
SCAN_STEPS = 2000
MODEL_SEED = 3
"""Initial weights for which the scan crosses a top-k change in every position-dependent
mode."""

STEP_BOUND = 25.0
"""Largest energy step / median step allowed on the scan (smooth gate: <= 4.7 measured)."""
CURVATURE_BOUND = 500.0
"""Largest |second difference| / median allowed on the scan (smooth gate: <= 9.9 measured)."""
WORK_BOUND = 1e-3
"""Largest |energy step - work of the forces| / median energy step (smooth: <= 4e-6)."""

NVE_SMILES = "CO"
NVE_SEEDS: dict[str, int] = {"learned": 2, "hybrid": 2, "spatial": 1}
"""Initial weights (default 0) for which the fitted model's 1 ps trajectory crosses top-k
changes (66, 98 and 40 (atom, step) changes when this was written), so that the NVE run
exercises the gate where it switches experts."""
NVE_TEMPERATURE = 300.0
"""K."""
NVE_TIMESTEP_FS = 0.5
NVE_STEPS = 2000
"""1 ps."""
DRIFT_BOUND_EV = 1e-3
"""max |E_tot(t) - E_tot(0)| over the 1 ps NVE run, eV."""
FIT_STEPS = 200
FIT_FRAMES = 48
FIT_TEMPERATURES = (300.0, 600.0, 900.0)
"""K: Langevin runs (from the minimum) whose frames the model is fitted to; the hotter ones
teach it the walls that keep the 300 K NVE run bound."""
FIT_INTERVAL = 10
"""Steps (0.5 fs) between fitted frames."""


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def mode_settings(router_mode: str) -> dict[str, Any]:
    """Settings of ``router_mode`` (``none`` needs one expert and k = 1)."""
    if router_mode == "none":
        return {"router_mode": "none", "num_experts": 1, "top_k": 1}
    return {"router_mode": router_mode}


class _Structure:
    """What :func:`deepset_moe.batch.collate` reads."""

    def __init__(self, numbers: np.ndarray, positions: np.ndarray, fragment: np.ndarray) -> None:
        self.numbers, self.positions, self.fragment = numbers, positions, fragment


def topk_changes(out: dict[str, Any], num_frames: int) -> int:
    """Number of (consecutive frame pair, atom) where the atom's set of top-k experts changes,
    for ``out`` of a batch of ``num_frames`` copies of one molecule."""
    experts = out["routing"]["experts"].reshape(num_frames, -1, out["routing"]["experts"].shape[-1])
    chosen = experts.sort(dim=-1).values
    return int((chosen[1:] != chosen[:-1]).any(dim=-1).sum())


# ----------------------------------------------------------------------------- energy scan


@pytest.fixture(scope="module")
def scan_batch() -> Batch:
    """float64 batch of the 2,001 scan geometries (module docstring)."""
    mol = mol_from_smiles(SCAN_SMILES)
    assert AllChem.EmbedMolecule(mol, randomSeed=SCAN_EMBED_SEED) == 0
    numbers = np.array([atom.GetAtomicNum() for atom in mol.GetAtoms()])
    positions = mol.GetConformer().GetPositions()
    labels = DEFAULT_VOCABULARY.assign(mol)
    structures = []
    for shift in np.linspace(0.0, SCAN_LENGTH, SCAN_STEPS + 1):
        moved = positions.copy()
        moved[SCAN_ATOM] += shift * SCAN_DIRECTION
        structures.append(_Structure(numbers, moved, labels))
    return collate(structures, dtype=torch.float64)


def scan(router_mode: str, gate: str, batch: Batch) -> dict[str, float]:
    """Roughness of the energy along the scan: ``largest`` step (eV), ``step``,
    ``curvature`` and ``work`` ratios (module docstring) and top-k ``changes``."""
    settings = {**SMALL_CONFIG, **mode_settings(router_mode), "gate": gate, "seed": MODEL_SEED}
    model = DeepSetMoE.from_config(**settings).double().eval()
    with torch.no_grad():
        out = model(batch)
    energy = out["energy"].numpy()
    forces = out["forces"].numpy().reshape(SCAN_STEPS + 1, -1, 3)[:, SCAN_ATOM]
    h = SCAN_LENGTH / SCAN_STEPS
    steps = np.diff(energy)
    pull = forces @ SCAN_DIRECTION  # -dE/ds, eV/Å
    work = -h * (pull[1:] + pull[:-1]) / 2
    second = np.abs(np.diff(energy, 2))
    median_step = np.median(np.abs(steps))
    return {
        "largest": float(np.abs(steps).max()),
        "step": float(np.abs(steps).max() / median_step),
        "curvature": float(second.max() / np.median(second)),
        "work": float(np.abs(steps - work).max() / median_step),
        "changes": topk_changes(out, SCAN_STEPS + 1),
    }


def describe(router_mode: str, gate: str, roughness: dict[str, float]) -> str:
    """One line of the scan's roughness (for messages)."""
    return (
        f"{router_mode} ({gate}): largest step {roughness['largest']:.2e} eV = "
        f"{roughness['step']:.1f} x median, largest second difference "
        f"{roughness['curvature']:.1f} x median, largest step - work "
        f"{roughness['work']:.1e} x median step ({roughness['changes']} top-k changes)"
    )


@pytest.mark.parametrize("router_mode", ROUTER_MODES)
def test_energy_scan_is_smooth(router_mode: str, scan_batch: Batch) -> None:
    roughness = scan(router_mode, "smooth_topk", scan_batch)
    if router_mode in POSITION_DEPENDENT_MODES:
        assert roughness["changes"] >= 1, "the scan crosses no top-k change (new seed?)"
    else:
        assert roughness["changes"] == 0, f"{router_mode} routing must not depend on positions"
    message = describe(router_mode, "smooth_topk", roughness)
    print(message)
    assert roughness["step"] < STEP_BOUND, message
    assert roughness["curvature"] < CURVATURE_BOUND, message
    assert roughness["work"] < WORK_BOUND, message


def test_hard_topk_gate_jumps_on_the_same_scan(scan_batch: Batch) -> None:
    """The bounds above catch the discontinuity of the plain top-k gate."""
    roughness = scan("hybrid", "topk", scan_batch)
    message = describe("hybrid", "topk", roughness)
    print(message)
    assert roughness["changes"] >= 1
    assert roughness["step"] > 10 * STEP_BOUND, message
    assert roughness["curvature"] > 10 * CURVATURE_BOUND, message
    assert roughness["work"] > 1e4 * WORK_BOUND, message


# ----------------------------------------------------------------------------- NVE


@pytest.fixture(scope="module")
def methanol() -> dict[str, Any]:
    """:func:`methanol_data`, once per module."""
    return methanol_data()


def methanol_data() -> dict[str, Any]:
    """Methanol at its MMFF94 minimum, its fragment labels and MMFF94-labelled frames of a
    seeded 300 K Langevin trajectory (every 10th step of 0.5 fs)."""
    mol = mol_from_smiles(NVE_SMILES)
    assert AllChem.EmbedMolecule(mol, randomSeed=SCAN_EMBED_SEED) == 0
    AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)
    labels = DEFAULT_VOCABULARY.assign(mol)
    atoms = Atoms(
        numbers=[atom.GetAtomicNum() for atom in mol.GetAtoms()],
        positions=mol.GetConformer().GetPositions(),
    )
    minimum = atoms.copy()
    atoms.calc = MMFFCalculator(mol)
    rng = np.random.default_rng(0)
    frames: list[_Structure] = []
    energies, forces = [], []

    def record() -> None:
        frames.append(_Structure(atoms.numbers.copy(), atoms.positions.copy(), labels))
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())

    per_temperature = FIT_FRAMES // len(FIT_TEMPERATURES)
    for temperature in FIT_TEMPERATURES:
        atoms.positions = minimum.positions
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
        dynamics = Langevin(
            atoms, NVE_TIMESTEP_FS * units.fs, temperature_K=temperature, friction=0.02, rng=rng
        )
        dynamics.attach(record, interval=FIT_INTERVAL)
        dynamics.run(FIT_INTERVAL * per_temperature - 1)
    batch = collate(frames, dtype=torch.float32)
    batch["energy"] = torch.tensor(energies, dtype=torch.float64)
    batch["forces"] = torch.tensor(np.concatenate(forces), dtype=torch.float32)
    return {"minimum": minimum, "labels": labels, "batch": batch}


def fit(router_mode: str, gate: str, batch: Batch) -> DeepSetMoE:
    """The small test model fitted to the MMFF94 frames (energies relative to their mean)."""
    settings = {**SMALL_CONFIG, **mode_settings(router_mode), "gate": gate}
    model = DeepSetMoE.from_config(**settings, seed=NVE_SEEDS.get(router_mode, 0))
    model.train()
    target = (batch["energy"] - batch["energy"].mean()).float()
    num_atoms = float(batch["n_atoms"][0])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, FIT_STEPS)
    for _ in range(FIT_STEPS):
        out = model(batch)
        force_loss = (out["forces"] - batch["forces"]).square().mean()
        loss = force_loss + (out["energy"] - target).square().mean() / num_atoms
        optimizer.zero_grad()
        (loss + out["aux_loss"]).backward()
        optimizer.step()
        schedule.step()
    force_rmse = float(force_loss.detach().sqrt())
    assert force_rmse < 0.4, f"{router_mode}: MMFF fit did not converge (force RMSE {force_rmse})"
    return model.eval()


def nve(model: DeepSetMoE, methanol: dict[str, Any]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Total energies [steps+1] (eV) and positions of the 1 ps NVE run."""
    atoms = methanol["minimum"].copy()
    atoms.calc = PotentialCalculator(model, fragments=methanol["labels"], dtype=torch.float64)
    rng = np.random.default_rng(1)
    MaxwellBoltzmannDistribution(atoms, temperature_K=NVE_TEMPERATURE, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    dynamics = VelocityVerlet(atoms, timestep=NVE_TIMESTEP_FS * units.fs)
    total, positions = [], []

    def record() -> None:
        total.append(atoms.get_total_energy())
        positions.append(atoms.positions.copy())

    dynamics.attach(record, interval=1)
    dynamics.run(NVE_STEPS)
    assert atoms.get_all_distances().max() < 4.0, "methanol dissociated"
    return np.array(total), positions


@pytest.mark.parametrize(
    "router_mode",
    [
        mode if mode in POSITION_DEPENDENT_MODES else pytest.param(mode, marks=pytest.mark.slow)
        for mode in ROUTER_MODES
    ],
)
def test_nve_conserves_energy(router_mode: str, methanol: dict[str, Any]) -> None:
    model = fit(router_mode, "smooth_topk", methanol["batch"])
    total, positions = nve(model, methanol)
    drift = float(np.abs(total - total[0]).max())
    labels = methanol["labels"]
    numbers = methanol["minimum"].numbers
    trajectory = collate([_Structure(numbers, p, labels) for p in positions], dtype=torch.float64)
    with torch.no_grad():
        changes = topk_changes(model.double()(trajectory), len(positions))
    if router_mode in POSITION_DEPENDENT_MODES:
        assert changes >= 1, "no top-k change along the trajectory: the run tests no switch"
    assert drift < DRIFT_BOUND_EV, (
        f"{router_mode}: |E_tot(t) - E_tot(0)| reaches {1000 * drift:.3f} meV in 1 ps "
        f"(bound {1000 * DRIFT_BOUND_EV:.1f} meV; {changes} top-k changes on the way)"
    )
