"""The energy of DeepSet-MoE is continuous, with continuous forces, in every router mode.

Two tests per router mode, with the smooth top-k gate (:mod:`deepset_moe.gates`). The
recipes (geometry, seeds, fit, integrator, statistics) are one copy in
:mod:`benchmark.evaluation.smoothness`, shared with the before / after figures of the hard and
the smooth gate (``python -m benchmark.evaluation.smoothness --out results/smoothness``);
this module holds the bounds.

* Energy scan. One atom of butanoic acid (the hydroxyl O of the acid group; RDKit ETKDG
  geometry, seed 7) moves 0.5 Å along (1, 1, 1)/sqrt(3) in 2,000 steps of h = 0.25 mÅ; the
  energy and forces of a small, untrained float64 model (seed
  :data:`~benchmark.evaluation.smoothness.SCAN_MODEL_SEED`) are
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
  E_tot(0)| < :data:`DRIFT_BOUND_EV` = 1 meV (6 atoms). The seeds
  (:data:`~benchmark.evaluation.smoothness.NVE_SEEDS`) make
  the trajectory cross top-k changes in the position-dependent modes, which the test
  asserts. Measured when this was written, smooth gate: 0.2-0.5 meV in every mode (learned
  0.41 meV with 66 top-k changes, hybrid 0.37 meV / 98, spatial 0.38 meV / 64). The hard
  ``topk`` gate with the same recipe in ``spatial`` mode: 138 meV (74 changes).
  The runs of the modes whose routing cannot change in time (``fragment``, ``identity``,
  ``none``: constant gate weights) are marked ``slow``.

Runtime on one core: about 1 s per scan, 10-12 s per NVE run.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from benchmark.evaluation import smoothness
from benchmark.evaluation.smoothness import POSITION_DEPENDENT_MODES, MMFFData
from deepset_moe.batch import Batch
from deepset_moe.config import ROUTER_MODES
from tests.small_deepset_moe import torch_threads

STEP_BOUND = 25.0
"""Largest energy step / median step allowed on the scan (smooth gate: <= 4.7 measured)."""
CURVATURE_BOUND = 500.0
"""Largest |second difference| / median allowed on the scan (smooth gate: <= 9.9 measured)."""
WORK_BOUND = 1e-3
"""Largest |energy step - work of the forces| / median energy step (smooth: <= 4e-6)."""

DRIFT_BOUND_EV = 1e-3
"""max |E_tot(t) - E_tot(0)| over the 1 ps NVE run, eV."""
FIT_FORCE_RMSE_BOUND = 0.4
"""eV/Å: force RMSE the MMFF fit must reach (else the NVE run tests a bad fit)."""
MAX_DISTANCE = 4.0
"""Å: largest interatomic distance of methanol at the end of the NVE run."""


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


# ----------------------------------------------------------------------------- energy scan


@pytest.fixture(scope="module")
def scan_batch() -> Batch:
    """float64 batch of the 2,001 scan geometries (:func:`smoothness.scan_batch`)."""
    return smoothness.scan_batch()


def scan(router_mode: str, gate: str, batch: Batch) -> dict[str, float]:
    """Roughness of the energy along the scan: ``largest`` step (eV), ``step``,
    ``curvature`` and ``work`` ratios (module docstring) and top-k ``changes``."""
    return smoothness.scan_statistics(smoothness.energy_scan(router_mode, gate, batch))


@pytest.mark.parametrize("router_mode", ROUTER_MODES)
def test_energy_scan_is_smooth(router_mode: str, scan_batch: Batch) -> None:
    roughness = scan(router_mode, "smooth_topk", scan_batch)
    if router_mode in POSITION_DEPENDENT_MODES:
        assert roughness["changes"] >= 1, "the scan crosses no top-k change (new seed?)"
    else:
        assert roughness["changes"] == 0, f"{router_mode} routing must not depend on positions"
    message = smoothness.describe_scan(router_mode, "smooth_topk", roughness)
    print(message)
    assert roughness["step"] < STEP_BOUND, message
    assert roughness["curvature"] < CURVATURE_BOUND, message
    assert roughness["work"] < WORK_BOUND, message


def test_hard_topk_gate_jumps_on_the_same_scan(scan_batch: Batch) -> None:
    """The bounds above catch the discontinuity of the plain top-k gate."""
    roughness = scan("hybrid", "topk", scan_batch)
    message = smoothness.describe_scan("hybrid", "topk", roughness)
    print(message)
    assert roughness["changes"] >= 1
    assert roughness["step"] > 10 * STEP_BOUND, message
    assert roughness["curvature"] > 10 * CURVATURE_BOUND, message
    assert roughness["work"] > 1e4 * WORK_BOUND, message


# ----------------------------------------------------------------------------- NVE


@pytest.fixture(scope="module")
def methanol() -> MMFFData:
    """Methanol at its MMFF94 minimum, its fragment labels and MMFF94-labelled frames of
    seeded Langevin runs (:func:`smoothness.mmff_data`), once per module."""
    return smoothness.mmff_data()


@pytest.mark.parametrize(
    "router_mode",
    [
        mode if mode in POSITION_DEPENDENT_MODES else pytest.param(mode, marks=pytest.mark.slow)
        for mode in ROUTER_MODES
    ],
)
def test_nve_conserves_energy(router_mode: str, methanol: MMFFData) -> None:
    model, force_rmse = smoothness.fit(router_mode, "smooth_topk", methanol.batch)
    assert force_rmse < FIT_FORCE_RMSE_BOUND, (
        f"{router_mode}: MMFF fit did not converge (force RMSE {force_rmse})"
    )
    trace = smoothness.nve(model, methanol)
    assert trace.max_distance < MAX_DISTANCE, "methanol dissociated"
    drift = float(np.abs(trace.total - trace.total[0]).max())
    changes = int(smoothness.trajectory_switches(model, methanol, trace).sum())
    if router_mode in POSITION_DEPENDENT_MODES:
        assert changes >= 1, "no top-k change along the trajectory: the run tests no switch"
    assert drift < DRIFT_BOUND_EV, (
        f"{router_mode}: |E_tot(t) - E_tot(0)| reaches {1000 * drift:.3f} meV in 1 ps "
        f"(bound {1000 * DRIFT_BOUND_EV:.1f} meV; {changes} top-k changes on the way)"
    )
