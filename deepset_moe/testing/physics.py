"""The physics every potential of this project must obey, as a pytest mixin class.

Modelled on nequip's ``utils/unittests`` mixins: :class:`PotentialPhysicsTests` holds one test
per property and asks the subclass for the model through fixtures. A subclass provides

- ``model_name`` (str): the registry name stored in the checkpoint;
- ``model_config`` (dict): the complete settings that rebuild the model with
  ``type(model).from_config(**model_config)``;
- ``model``: the model itself (any dtype, any mode; the kit works on a float64 eval copy);

and may override ``tolerances`` (a :class:`Tolerances`, declared per model), ``molecules``
(the float64 test batch) and ``e0``. Fixtures are class-scoped, so one parametrised fixture
(e.g. ``model_name`` with ``params=``) runs the whole kit for several models::

    import pytest

    from deepset_moe.testing import PotentialPhysicsTests, Tolerances

    class TestMyModel(PotentialPhysicsTests):
        @pytest.fixture(scope="class")
        def model_name(self):
            return "my_model"

        @pytest.fixture(scope="class")
        def model_config(self):
            return {"cutoff": 5.0, "seed": 0}

        @pytest.fixture(scope="class")
        def model(self, model_config):
            return MyModel.from_config(**model_config)

        @pytest.fixture(scope="class")
        def tolerances(self):
            return Tolerances(equivariance=1e-6)

A model is a module with ``forward(batch) -> {"energy": [B] eV, "forces": [N, 3] eV/Å, ...}``
(batch keys of :mod:`deepset_moe.batch`; optional ``node_energy`` [N] eV), a ``cutoff``
attribute (Å) and a ``from_config(**settings)`` class method (the checkpoint loader's
constructor). Models that route atoms to experts return ``routing`` (``probs`` [N, K],
``experts`` [N, k]); the kit reads it to tell a top-k switch from a bug.

Test failures name the property, the molecule or atom and the measured violation. Models
whose design rules a property out declare it in their :class:`Tolerances` (``not_smooth``,
``routing_jumps``) instead of skipping the test, so the report shows why.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from deepset_moe.batch import Batch, collate
from deepset_moe.checkpoint import load_potential, save_checkpoint
from deepset_moe.e0 import AtomicReferenceEnergies, PotentialWithE0
from deepset_moe.fragments import DEFAULT_VOCABULARY
from deepset_moe.testing.molecules import MoleculeGeometry, make_batch, pair_batch

PER_ATOM_KEYS = ("z", "pos", "batch", "fragment", "forces", "atom_weights")
"""Batch entries indexed by atom (permuted with the atoms, sliced per molecule)."""

DEFAULT_E0: dict[int, float] = {1: -13.6, 6: -1029.8, 7: -1484.9, 8: -2041.3}
"""Reference energies (eV) of H, C, N, O stored in the round-trip checkpoints."""

MIN_FORCE_SIGNAL = 1e-3
"""eV/Å: below this largest |F| on the test molecules the force checks would test nothing."""


@dataclass(frozen=True)
class Tolerances:
    """Absolute limits of the physics checks, declared per model.

    Attributes:
        rotation: energy change (eV) and force error (F(Rx) = R F(x), eV/Å) under rotation.
        invariance: energy change under translation or permutation, eV.
        equivariance: force error under translation or permutation, eV/Å.
        fd_step: central finite-difference step, Å.
        fd_forces: |autograd force - finite-difference force|, eV/Å.
        fd_checks: number of (atom, axis) components compared with finite differences.
        batch: energy (eV) and force (eV/Å) difference between a molecule in a batch and
            alone.
        cutoff_width: an atom pair is placed this far (Å) inside and outside the cutoff.
        cutoff_energy: energy change (eV) between the pair just inside and just outside.
        cutoff_force: largest force (eV/Å) on the pair just inside the cutoff.
        not_smooth: why the model is, by design, not smooth at its cutoff (e.g. no
            envelope); the smoothness checks (inside the cutoff, and the continuity scan) are
            then expected failures that report this reason. ``None``: they must pass.
        scan_scales: number of points of the continuity scan (uniform dilation of each
            molecule about its centroid from 1.0x to ``scan_stretch``; pairs cross the cutoff).
        scan_stretch: largest dilation factor of the continuity scan.
        scan_subdivisions: a scan step the forces do not explain is cut into this many.
        scan_refinements: how many times a step may be cut before it fails.
        continuity: absolute part of the continuity limit, eV: each scan step's energy
            change must equal the trapezoid rule of dE/ds = -sum_i F_i . dx_i/ds (from the
            forces) to within ``continuity + continuity_rel * |that change|``; an energy jump,
            or forces that are not the energy's gradient, show up here.
        continuity_rel: relative part of the continuity limit (0: every step's change must
            be explained to ``continuity`` eV, refining where needed; a stiff model may allow
            a fraction of each change to save refinements).
        routing_jumps: the energy jumps, by design, where an atom's routed experts change
            (a hard top-k gate on position-dependent logits: piecewise smooth); scan steps
            with such a switch are left out (at most half of them). ``False``: the energy must
            be continuous across switches too.
        min_routing_margin: least gap between an atom's k-th and (k+1)-th gate probability on
            the test molecules, so that finite differences switch no expert (0: not checked).
        checkpoint: output difference (eV, eV/Å) after save_checkpoint -> load_potential.
        calculator: ASE calculator vs forward difference (eV, eV/Å).
    """

    rotation: float = 1e-7
    invariance: float = 1e-7
    equivariance: float = 1e-7
    fd_step: float = 1e-4
    fd_forces: float = 1e-5
    fd_checks: int = 6
    batch: float = 1e-7
    cutoff_width: float = 0.02
    cutoff_energy: float = 1e-4
    cutoff_force: float = 1e-3
    not_smooth: str | None = None
    scan_scales: int = 41
    scan_stretch: float = 1.3
    scan_subdivisions: int = 8
    scan_refinements: int = 3
    continuity: float = 1e-4
    continuity_rel: float = 0.0
    routing_jumps: bool = False
    min_routing_margin: float = 1e-3
    checkpoint: float = 0.0
    calculator: float = 1e-9


# ----------------------------------------------------------------------------- helpers


def evaluate(model: nn.Module, batch: Batch, pos: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Energy [B] (eV) and forces [N, 3] (eV/Å) of ``model``, detached float64.

    Args:
        model: the potential.
        batch: the batch.
        pos: optional [N, 3] positions (Å) replacing ``batch["pos"]``.
    """
    batch = dict(batch)
    if pos is not None:
        batch["pos"] = pos
    out = model(batch)
    return out["energy"].detach().double(), out["forces"].detach().double()


def random_rotation(seed: int) -> Tensor:
    """A random proper rotation matrix [3, 3] (float64, det = +1)."""
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def permute_atoms(batch: Batch, seed: int = 0) -> tuple[Batch, Tensor]:
    """The batch with the atoms of each molecule shuffled, and the order [N] used
    (``permuted[key] = batch[key][order]`` for every per-atom key)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.cat(
        [
            start + torch.randperm(end - start, generator=generator)
            for start, end in pairwise(batch["ptr"].tolist())
        ]
    )
    permuted = {
        key: value[order] if key in PER_ATOM_KEYS else value for key, value in batch.items()
    }
    return permuted, order


def single_molecule(batch: Batch, index: int) -> Batch:
    """Molecule ``index`` of ``batch`` as a batch of its own."""
    start, end = batch["ptr"][index : index + 2].tolist()
    single = {key: batch[key][start:end] for key in PER_ATOM_KEYS if key in batch}
    single["batch"] = torch.zeros(end - start, dtype=torch.long)
    single["ptr"] = torch.tensor([0, end - start])
    single["n_atoms"] = torch.tensor([end - start])
    return single


def molecules_of(batch: Batch) -> list[MoleculeGeometry]:
    """The molecules of ``batch`` as float64 numpy geometries (fragment labels kept)."""
    out = []
    for index in range(batch["ptr"].numel() - 1):
        single = single_molecule(batch, index)
        fragment = single.get("fragment")
        out.append(
            MoleculeGeometry(
                single["z"].numpy(),
                single["pos"].detach().double().numpy(),
                None if fragment is None else fragment.numpy(),
                f"molecule {index}",
            )
        )
    return out


def dilated(
    geometries: Sequence[MoleculeGeometry],
    points: Sequence[tuple[int, float]],
    dtype: torch.dtype = torch.float64,
) -> tuple[Batch, Tensor]:
    """A batch of stretched molecules: entry p is ``geometries[m]`` dilated about its centroid
    by the factor s, for ``(m, s) = points[p]``.

    Returns:
        The batch and dx/ds [N, 3] (Å per unit of scale), the direction each atom moves in
        as s grows.
    """
    structures, directions = [], []
    for molecule, scale in points:
        geometry = geometries[molecule]
        centred = geometry.positions - geometry.positions.mean(axis=0)
        structures.append(
            MoleculeGeometry(
                geometry.numbers,
                geometry.positions + (scale - 1.0) * centred,
                geometry.fragment,
                geometry.smiles,
            )
        )
        directions.append(centred)
    return collate(structures, dtype=dtype), torch.from_numpy(np.concatenate(directions))


def dilation_scan(batch: Batch, scales: Sequence[float]) -> tuple[Batch, Tensor]:
    """Every molecule of ``batch`` stretched about its centroid by each factor of ``scales``
    (molecule-major: molecule m at scale j is entry ``m * len(scales) + j``); see
    :func:`dilated`."""
    geometries = molecules_of(batch)
    points = [(m, float(scale)) for m in range(len(geometries)) for scale in scales]
    return dilated(geometries, points, batch["pos"].dtype)


@dataclass(frozen=True)
class ScanStep:
    """One step of a stretching scan of one molecule (:func:`scan_steps`).

    Attributes:
        molecule: index of the molecule in the test batch.
        start: dilation factor at the start of the step.
        end: dilation factor at its end.
        change: E(end) - E(start), eV.
        predicted: the change the forces predict, eV: trapezoid rule of
            dE/ds = -sum_i F_i . dx_i/ds.
        switch: whether some atom's set of routed experts differs between start and end.
    """

    molecule: int
    start: float
    end: float
    change: float
    predicted: float
    switch: bool

    def excess(self, tolerances: Tolerances) -> float:
        """How far (eV) the change exceeds the continuity limit (> 0: the step fails)."""
        limit = tolerances.continuity + tolerances.continuity_rel * abs(self.predicted)
        return abs(self.change - self.predicted) - limit


def scan_steps(
    potential: nn.Module,
    geometries: Sequence[MoleculeGeometry],
    intervals: Sequence[tuple[int, float, float]],
    steps: int,
    dtype: torch.dtype = torch.float64,
) -> list[ScanStep]:
    """Cut each ``(molecule, start, end)`` dilation interval into ``steps`` equal steps and
    evaluate them all in one batch."""
    points = [
        (molecule, float(scale))
        for molecule, start, end in intervals
        for scale in np.linspace(start, end, steps + 1)
    ]
    batch, direction = dilated(geometries, points, dtype)
    out = potential(batch)
    energy = out["energy"].detach().double()
    forces = out["forces"].detach().double()
    slope = -torch.zeros_like(energy).index_add(0, batch["batch"], (forces * direction).sum(-1))
    routing = out.get("routing")
    experts = None
    if isinstance(routing, dict) and "experts" in routing:
        experts = routing["experts"].detach().sort(dim=-1).values
    ptr = batch["ptr"].tolist()
    result = []
    for interval, (molecule, _, _) in enumerate(intervals):
        for step in range(steps):
            p = interval * (steps + 1) + step
            start, end = points[p][1], points[p + 1][1]
            switch = experts is not None and not torch.equal(
                experts[ptr[p] : ptr[p + 1]], experts[ptr[p + 1] : ptr[p + 2]]
            )
            result.append(
                ScanStep(
                    molecule,
                    start,
                    end,
                    float(energy[p + 1] - energy[p]),
                    (end - start) * float(slope[p] + slope[p + 1]) / 2,
                    bool(switch),
                )
            )
    return result


def routing_margin(out: dict[str, Any]) -> float | None:
    """Smallest gap between any atom's k-th and (k+1)-th gate probability (None: the model
    does not route, or routes to every expert)."""
    routing = out.get("routing")
    if not isinstance(routing, dict) or "probs" not in routing or "experts" not in routing:
        return None
    k = routing["experts"].shape[-1]
    probs = routing["probs"].detach().sort(dim=-1, descending=True).values
    if probs.shape[-1] <= k or probs.numel() == 0:
        return None
    return float((probs[:, k - 1] - probs[:, k]).min())


def _expected_failure(reason: str | None) -> Callable[[Callable[[], None]], None]:
    """Run a check; when ``reason`` declares the property absent by design, a failure becomes
    an expected failure (xfail) that reports the reason and the measured violation."""

    def run(check: Callable[[], None]) -> None:
        try:
            check()
        except AssertionError as error:
            if reason is None:
                raise
            pytest.xfail(f"{reason} (measured: {error})")

    return run


def _require_force_signal(forces: Tensor) -> None:
    largest = float(forces.abs().max())
    assert largest > MIN_FORCE_SIGNAL, (
        f"largest |F| on the test molecules is {largest:.2e} eV/Å: too small for the force "
        "checks to mean anything (scale the initial weights or use other molecules)"
    )


def _rotations_and_shifts(count: int = 3) -> Iterator[tuple[Tensor, Tensor]]:
    for seed in range(count):
        generator = torch.Generator().manual_seed(seed)
        yield random_rotation(seed), 10.0 * torch.randn(3, dtype=torch.float64, generator=generator)


# ----------------------------------------------------------------------------- the mixin


class PotentialPhysicsTests:
    """Physics tests every potential must pass (module docstring: the fixtures to provide).

    Each ``test_*`` checks one property on a float64, eval-mode copy of ``model``:
    rotation, translation and permutation invariance, force equivariance, forces equal to
    the negative finite-difference gradient, batch = single molecule, smoothness at the
    cutoff, continuity of the energy along a stretching scan, the checkpoint round trip and
    the ASE calculator agreeing with ``forward``.
    """

    # -- fixtures the subclass provides

    @pytest.fixture(scope="class")
    def model_name(self) -> str:
        """Registry name stored in the round-trip checkpoint (subclass provides)."""
        raise NotImplementedError("PotentialPhysicsTests subclasses provide 'model_name'")

    @pytest.fixture(scope="class")
    def model_config(self) -> dict[str, Any]:
        """Settings that rebuild ``model`` with ``type(model).from_config`` (subclass
        provides)."""
        raise NotImplementedError("PotentialPhysicsTests subclasses provide 'model_config'")

    @pytest.fixture(scope="class")
    def model(self) -> nn.Module:
        """The model under test (subclass provides; never modified by the kit)."""
        raise NotImplementedError("PotentialPhysicsTests subclasses provide 'model'")

    # -- fixtures the subclass may override

    @pytest.fixture(scope="class")
    def tolerances(self) -> Tolerances:
        """The limits of this model (default: tight float64 limits)."""
        return Tolerances()

    @pytest.fixture(scope="class")
    def molecules(self) -> Batch:
        """The float64 test batch (default: :data:`~deepset_moe.testing.TEST_SMILES`)."""
        return make_batch()

    @pytest.fixture(scope="class")
    def e0(self) -> AtomicReferenceEnergies:
        """Reference energies stored in the round-trip checkpoint."""
        return AtomicReferenceEnergies(DEFAULT_E0)

    # -- derived fixtures

    @pytest.fixture(scope="class")
    def potential(self, model: nn.Module) -> nn.Module:
        """A float64, eval-mode copy of ``model``."""
        return copy.deepcopy(model).double().eval()

    @pytest.fixture(scope="class")
    def reference(self, potential: nn.Module, molecules: Batch) -> tuple[Tensor, Tensor]:
        """Energy [B] and forces [N, 3] of the test molecules."""
        return evaluate(potential, molecules)

    @pytest.fixture(scope="class")
    def checkpoint(
        self,
        model: nn.Module,
        model_name: str,
        model_config: dict[str, Any],
        e0: AtomicReferenceEnergies,
        tmp_path_factory: pytest.TempPathFactory,
    ) -> Path:
        """``model`` written with :func:`~deepset_moe.checkpoint.save_checkpoint`."""
        path = tmp_path_factory.mktemp("physics_checkpoint") / "best.pt"
        save_checkpoint(
            path,
            model_name=model_name,
            model_config=model_config,
            network=model,
            e0=e0,
            fragments=getattr(model, "fragment_vocabulary", DEFAULT_VOCABULARY),
        )
        return path

    # -- invariances

    def test_rotation_invariance(
        self,
        potential: nn.Module,
        molecules: Batch,
        reference: tuple[Tensor, Tensor],
        tolerances: Tolerances,
    ) -> None:
        """E(R x) = E(x) for random proper rotations R."""
        energy, _ = reference
        for seed, (rotation, _) in enumerate(_rotations_and_shifts()):
            rotated, _ = evaluate(potential, molecules, molecules["pos"] @ rotation.T)
            torch.testing.assert_close(
                rotated,
                energy,
                atol=tolerances.rotation,
                rtol=0,
                msg=lambda m, seed=seed: f"energy not rotation invariant (rotation {seed}): {m}",
            )

    def test_translation_invariance(
        self,
        potential: nn.Module,
        molecules: Batch,
        reference: tuple[Tensor, Tensor],
        tolerances: Tolerances,
    ) -> None:
        """E(x + t) = E(x) and F(x + t) = F(x) for random shifts t of ~10 Å."""
        energy, forces = reference
        for _, shift in _rotations_and_shifts():
            moved_energy, moved_forces = evaluate(potential, molecules, molecules["pos"] + shift)
            torch.testing.assert_close(
                moved_energy,
                energy,
                atol=tolerances.invariance,
                rtol=0,
                msg=lambda m: f"energy not translation invariant: {m}",
            )
            torch.testing.assert_close(
                moved_forces,
                forces,
                atol=tolerances.equivariance,
                rtol=0,
                msg=lambda m: f"forces change under translation: {m}",
            )

    def test_permutation_invariance(
        self,
        potential: nn.Module,
        molecules: Batch,
        reference: tuple[Tensor, Tensor],
        tolerances: Tolerances,
    ) -> None:
        """Shuffling the atoms of each molecule leaves energies unchanged and permutes forces."""
        energy, forces = reference
        permuted, order = permute_atoms(molecules)
        energy_p, forces_p = evaluate(potential, permuted)
        torch.testing.assert_close(
            energy_p,
            energy,
            atol=tolerances.invariance,
            rtol=0,
            msg=lambda m: f"energy not permutation invariant: {m}",
        )
        torch.testing.assert_close(
            forces_p,
            forces[order],
            atol=tolerances.equivariance,
            rtol=0,
            msg=lambda m: f"forces not permuted with the atoms: {m}",
        )

    # -- forces

    def test_force_equivariance(
        self,
        potential: nn.Module,
        molecules: Batch,
        reference: tuple[Tensor, Tensor],
        tolerances: Tolerances,
    ) -> None:
        """F(R x + t) = R F(x): forces rotate with the molecule."""
        _, forces = reference
        _require_force_signal(forces)
        for seed, (rotation, shift) in enumerate(_rotations_and_shifts()):
            _, moved = evaluate(potential, molecules, molecules["pos"] @ rotation.T + shift)
            torch.testing.assert_close(
                moved,
                forces @ rotation.T,
                atol=tolerances.rotation,
                rtol=0,
                msg=lambda m, seed=seed: f"forces not equivariant (rotation {seed}): {m}",
            )

    def test_forces_are_negative_energy_gradient(
        self,
        potential: nn.Module,
        molecules: Batch,
        reference: tuple[Tensor, Tensor],
        tolerances: Tolerances,
    ) -> None:
        """F = -dE/dx: forces equal central finite differences of the energy."""
        _, forces = reference
        _require_force_signal(forces)
        if tolerances.min_routing_margin > 0:
            margin = routing_margin(potential(molecules))
            assert margin is None or margin > tolerances.min_routing_margin, (
                f"top-k routing margin {margin:.2e} <= {tolerances.min_routing_margin:.0e} at "
                "the test geometry: a finite-difference step may switch experts; pick another "
                "seed"
            )
        step = tolerances.fd_step
        generator = torch.Generator().manual_seed(1)
        atoms = torch.randint(
            0, molecules["pos"].shape[0], (tolerances.fd_checks,), generator=generator
        )
        errors = []
        for check, atom in enumerate(atoms.tolist()):
            axis = check % 3
            plus, minus = molecules["pos"].clone(), molecules["pos"].clone()
            plus[atom, axis] += step
            minus[atom, axis] -= step
            molecule = int(molecules["batch"][atom])
            e_plus = evaluate(potential, molecules, plus)[0][molecule]
            e_minus = evaluate(potential, molecules, minus)[0][molecule]
            numerical = float(-(e_plus - e_minus) / (2 * step))
            analytic = float(forces[atom, axis])
            if abs(numerical - analytic) >= tolerances.fd_forces:
                errors.append(
                    f"atom {atom} axis {axis}: autograd {analytic:.8f} vs finite difference "
                    f"{numerical:.8f} eV/Å"
                )
        assert not errors, f"forces are not -dE/dx (step {step} Å): " + "; ".join(errors)

    # -- batching

    def test_batch_equals_single_molecule(
        self,
        potential: nn.Module,
        molecules: Batch,
        reference: tuple[Tensor, Tensor],
        tolerances: Tolerances,
    ) -> None:
        """Each molecule alone gives the energy and forces it has inside the batch."""
        energy, forces = reference
        for index, (start, end) in enumerate(pairwise(molecules["ptr"].tolist())):
            energy_single, forces_single = evaluate(potential, single_molecule(molecules, index))
            torch.testing.assert_close(
                energy_single[0],
                energy[index],
                atol=tolerances.batch,
                rtol=0,
                msg=lambda m, index=index: f"molecule {index}: batched energy differs: {m}",
            )
            torch.testing.assert_close(
                forces_single,
                forces[start:end],
                atol=tolerances.batch,
                rtol=0,
                msg=lambda m, index=index: f"molecule {index}: batched forces differ: {m}",
            )

    # -- smoothness

    def test_smooth_at_cutoff(self, potential: nn.Module, tolerances: Tolerances) -> None:
        """An atom pair does not interact beyond the cutoff, and just inside it the energy
        has (nearly) reached its beyond-cutoff value and the force (nearly) vanished."""
        cutoff, width = float(potential.cutoff), tolerances.cutoff_width
        energy_out, forces_out = evaluate(potential, pair_batch(cutoff + width))
        energy_far, _ = evaluate(potential, pair_batch(cutoff + 1.0))
        torch.testing.assert_close(
            energy_out,
            energy_far,
            atol=1e-9,
            rtol=0,
            msg=lambda m: f"energy changes beyond the cutoff ({cutoff} Å): {m}",
        )
        assert float(forces_out.abs().max()) < 1e-9, "non-zero force beyond the cutoff"

        def inside() -> None:
            energy_in, forces_in = evaluate(potential, pair_batch(cutoff - width))
            jump = abs(float(energy_in[0] - energy_out[0]))
            assert jump < tolerances.cutoff_energy, (
                f"energy jumps by {jump:.2e} eV across the cutoff (r_c ± {width} Å)"
            )
            force = float(forces_in.abs().max())
            assert force < tolerances.cutoff_force, (
                f"force {force:.2e} eV/Å at r_c - {width} Å, not ~0"
            )

        _expected_failure(tolerances.not_smooth)(inside)

    def test_energy_continuous(
        self, potential: nn.Module, molecules: Batch, tolerances: Tolerances
    ) -> None:
        """Along a uniform stretch of each molecule (pairs cross the cutoff) every change of
        the energy is the work of the forces: no jumps, no force/energy mismatch.

        Steps whose change the trapezoid rule does not explain are cut into finer steps
        (``scan_subdivisions``, up to ``scan_refinements`` times): a smooth but steep
        stretch then passes (the rule's error falls as the step squared), a jump does not.
        """
        geometries = molecules_of(molecules)
        dtype = molecules["pos"].dtype
        stretch = tolerances.scan_stretch
        intervals = [(m, 1.0, stretch) for m in range(len(geometries))]
        steps = scan_steps(potential, geometries, intervals, tolerances.scan_scales - 1, dtype)
        switches = sum(step.switch for step in steps)
        if tolerances.routing_jumps:
            assert switches <= len(steps) / 2, (
                f"routed experts change in {switches} of {len(steps)} scan steps: too many to "
                "test continuity between them (shorten the scan)"
            )

        def unexplained(candidates: list[ScanStep]) -> list[ScanStep]:
            return [
                step
                for step in candidates
                if step.excess(tolerances) > 0 and not (tolerances.routing_jumps and step.switch)
            ]

        def continuous() -> None:
            failing = unexplained(steps)
            for _ in range(tolerances.scan_refinements):
                if not failing:
                    return
                finer = [(step.molecule, step.start, step.end) for step in failing]
                failing = unexplained(
                    scan_steps(potential, geometries, finer, tolerances.scan_subdivisions, dtype)
                )
            if failing:
                worst = max(failing, key=lambda step: step.excess(tolerances))
                note = " (its routed experts change in this step)" if worst.switch else ""
                raise AssertionError(
                    f"molecule {worst.molecule}: energy changes by {worst.change:.3e} eV "
                    f"between dilation {worst.start:.6f} and {worst.end:.6f}, the forces "
                    f"predict {worst.predicted:.3e} eV (limit {tolerances.continuity:.0e} + "
                    f"{tolerances.continuity_rel} x |prediction|; still after "
                    f"{tolerances.scan_refinements} refinements){note}"
                )

        _expected_failure(tolerances.not_smooth)(continuous)

    # -- files and interfaces

    def test_checkpoint_round_trip(
        self,
        model: nn.Module,
        checkpoint: Path,
        e0: AtomicReferenceEnergies,
        molecules: Batch,
        tolerances: Tolerances,
    ) -> None:
        """save_checkpoint -> load_potential rebuilds the same class with identical weights,
        E0 and outputs."""
        loaded = load_potential(checkpoint)
        assert type(loaded.network) is type(model), (
            f"checkpoint rebuilt {type(loaded.network).__name__}, not {type(model).__name__}"
        )
        expected_state, loaded_state = model.state_dict(), loaded.network.state_dict()
        assert list(loaded_state) == list(expected_state), "state_dict keys differ"
        for key, value in expected_state.items():
            assert torch.equal(loaded_state[key], value), f"weight {key!r} differs after loading"
        assert loaded.e0.as_dict() == e0.as_dict()
        original = PotentialWithE0(copy.deepcopy(model).double().eval(), e0)
        expected_energy, expected_forces = evaluate(original, molecules)
        energy, forces = evaluate(loaded.double().eval(), molecules)
        torch.testing.assert_close(energy, expected_energy, atol=tolerances.checkpoint, rtol=0)
        torch.testing.assert_close(forces, expected_forces, atol=tolerances.checkpoint, rtol=0)

    def test_calculator_equals_forward(
        self,
        potential: nn.Module,
        checkpoint: Path,
        e0: AtomicReferenceEnergies,
        molecules: Batch,
        tolerances: Tolerances,
    ) -> None:
        """PotentialCalculator(checkpoint path) gives the energy, forces and (when forward
        returns ``node_energy``) per-atom energies of ``forward``."""
        from ase import Atoms

        from deepset_moe.calculator import PotentialCalculator

        calculator = PotentialCalculator(checkpoint, dtype=torch.float64)
        reference = PotentialWithE0(potential, e0)
        for index, molecule in enumerate(molecules_of(molecules)):
            atoms = Atoms(numbers=molecule.numbers, positions=molecule.positions)
            if molecule.fragment is not None:
                atoms.arrays["fragment"] = molecule.fragment
            atoms.calc = calculator
            out = reference(single_molecule(molecules, index))
            energy, forces = out["energy"].detach().double(), out["forces"].detach().double()
            assert atoms.get_potential_energy() == pytest.approx(
                float(energy[0]), abs=tolerances.calculator
            ), f"molecule {index}: calculator energy differs from forward"
            np.testing.assert_allclose(
                atoms.get_forces(),
                forces.numpy(),
                atol=tolerances.calculator,
                rtol=0,
                err_msg=f"molecule {index}: calculator forces differ from forward",
            )
            if "node_energy" in out:
                np.testing.assert_allclose(
                    atoms.get_potential_energies(),
                    out["node_energy"].detach().double().numpy(),
                    atol=tolerances.calculator,
                    rtol=0,
                    err_msg=f"molecule {index}: calculator per-atom energies differ from forward",
                )
