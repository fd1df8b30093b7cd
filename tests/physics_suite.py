"""Physics checks every model (DeepSet-MoE and every baseline) must pass.

Each ``check_*`` function takes a model with the DESIGN.md interface (``forward(batch)`` ->
``energy`` [B], ``forces`` [N, 3]; attribute ``cutoff``) and raises ``AssertionError`` with a
description when the property does not hold. Models are evaluated in float64 and eval mode so
that tolerances can be tight. Test files parametrise over models and call these functions:

    from tests.physics_suite import run_all_checks
    run_all_checks(model)
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import torch
from torch import Tensor, nn

from benchmark.conformers import unlabelled_frame
from benchmark.datasets import Batch, collate_frames
from benchmark.storage import Frame

TEST_SMILES: tuple[str, ...] = ("OCCC(=O)O", "NCCC=O", "CC(O)CC")
"""Small molecules covering the functional fragments and a secondary carbon."""


def molecule_frame(smiles: str, seed: int = 0) -> Frame:
    """One ETKDG conformer (MMFF-relaxed, then jiggled by 0.05 Å) of ``smiles``, unlabelled."""
    frame = unlabelled_frame(smiles, seed, relax=True)
    rng = np.random.default_rng(seed)
    frame.positions = frame.positions + rng.normal(0, 0.05, frame.positions.shape)
    return frame


def make_batch(smiles: Sequence[str] = TEST_SMILES, seed: int = 0) -> Batch:
    """A float64 batch of the given molecules (labels are zeros: physics checks need none)."""
    return collate_frames([molecule_frame(s, seed) for s in smiles], dtype=torch.float64)


def evaluate(model: nn.Module, batch: Batch, pos: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Energy [B] and forces [N, 3] of ``model`` on ``batch`` (optionally with new positions)."""
    batch = dict(batch)
    if pos is not None:
        batch["pos"] = pos
    out = model(batch)
    return out["energy"].detach().double(), out["forces"].detach().double()


def random_rotation(seed: int) -> Tensor:
    """A random proper rotation matrix [3, 3] (float64)."""
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def check_rotation_translation(model: nn.Module, batch: Batch, atol: float = 1e-7) -> None:
    """E(R x + t) = E(x) and F(R x + t) = R F(x) (forces rotate with the molecule)."""
    energy, forces = evaluate(model, batch)
    for seed in range(3):
        rotation = random_rotation(seed)
        shift = torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        moved = batch["pos"] @ rotation.T + 10.0 * shift
        energy_moved, forces_moved = evaluate(model, batch, moved)
        torch.testing.assert_close(
            energy_moved, energy, atol=atol, rtol=0, msg="energy not rotation/translation invariant"
        )
        torch.testing.assert_close(
            forces_moved, forces @ rotation.T, atol=atol, rtol=0, msg="forces not equivariant"
        )


def check_permutation(model: nn.Module, batch: Batch, atol: float = 1e-7) -> None:
    """Permuting atoms inside each molecule permutes forces and leaves energies unchanged."""
    energy, forces = evaluate(model, batch)
    generator = torch.Generator().manual_seed(0)
    ptr = batch["ptr"].tolist()
    order = torch.cat(
        [start + torch.randperm(end - start, generator=generator) for start, end in pairwise(ptr)]
    )
    permuted = {
        key: value[order] if key in ("z", "pos", "fragment", "forces", "batch") else value
        for key, value in batch.items()
    }
    energy_p, forces_p = evaluate(model, permuted)
    torch.testing.assert_close(
        energy_p, energy, atol=atol, rtol=0, msg="energy not permutation invariant"
    )
    torch.testing.assert_close(
        forces_p, forces[order], atol=atol, rtol=0, msg="forces not permuted"
    )


def check_finite_difference_forces(
    model: nn.Module, batch: Batch, step: float = 1e-4, atol: float = 1e-5, n_checks: int = 6
) -> None:
    """F = -dE/dpos: compare forces with central differences of the energy (float64)."""
    _, forces = evaluate(model, batch)
    generator = torch.Generator().manual_seed(1)
    atoms = torch.randint(0, batch["pos"].shape[0], (n_checks,), generator=generator)
    for atom, axis in zip(atoms.tolist(), torch.arange(n_checks).remainder(3).tolist()):
        plus, minus = batch["pos"].clone(), batch["pos"].clone()
        plus[atom, axis] += step
        minus[atom, axis] -= step
        molecule = int(batch["batch"][atom])
        e_plus = evaluate(model, batch, plus)[0][molecule]
        e_minus = evaluate(model, batch, minus)[0][molecule]
        numerical = -(e_plus - e_minus) / (2 * step)
        analytic = forces[atom, axis]
        assert abs(float(numerical - analytic)) < atol, (
            f"force on atom {atom} axis {axis}: autograd {float(analytic):.8f} vs finite "
            f"difference {float(numerical):.8f}"
        )


def check_batch_equals_single(model: nn.Module, batch: Batch, atol: float = 1e-7) -> None:
    """Each molecule evaluated alone gives the same energy and forces as inside the batch."""
    energy, forces = evaluate(model, batch)
    ptr = batch["ptr"].tolist()
    for b, (start, end) in enumerate(pairwise(ptr)):
        single = {
            "z": batch["z"][start:end],
            "pos": batch["pos"][start:end],
            "fragment": batch["fragment"][start:end],
            "batch": torch.zeros(end - start, dtype=torch.long),
            "ptr": torch.tensor([0, end - start]),
            "n_atoms": torch.tensor([end - start]),
        }
        energy_single, forces_single = evaluate(model, single)
        torch.testing.assert_close(
            energy_single[0],
            energy[b],
            atol=atol,
            rtol=0,
            msg=f"molecule {b}: batched energy differs from single",
        )
        torch.testing.assert_close(
            forces_single,
            forces[start:end],
            atol=atol,
            rtol=0,
            msg=f"molecule {b}: batched forces differ from single",
        )


def pair_batch(distance: float, numbers: tuple[int, int] = (6, 8)) -> Batch:
    """Two atoms on the x axis ``distance`` Å apart (fragments: CH2-like carbon, hydroxyl O)."""
    pos = torch.tensor([[0.0, 0.0, 0.0], [distance, 0.0, 0.0]], dtype=torch.float64)
    return {
        "z": torch.tensor(numbers),
        "pos": pos,
        "fragment": torch.tensor([5, 1]),
        "batch": torch.zeros(2, dtype=torch.long),
        "ptr": torch.tensor([0, 2]),
        "n_atoms": torch.tensor([2]),
    }


def check_smooth_cutoff(model: nn.Module, width: float = 0.02, atol: float = 1e-4) -> None:
    """Energy and forces of an atom pair vary continuously as it crosses the cutoff.

    Beyond the cutoff the pair does not interact: the energy is constant and forces vanish.
    Just inside, the interaction and its force must already have decayed to (nearly) zero.
    """
    cutoff = float(model.cutoff)
    energy_out, forces_out = evaluate(model, pair_batch(cutoff + width))
    energy_far, _ = evaluate(model, pair_batch(cutoff + 1.0))
    energy_in, forces_in = evaluate(model, pair_batch(cutoff - width))
    torch.testing.assert_close(
        energy_out, energy_far, atol=1e-9, rtol=0, msg="energy changes beyond the cutoff"
    )
    assert float(forces_out.abs().max()) < 1e-9, "non-zero force beyond the cutoff"
    assert abs(float(energy_in - energy_out)) < atol, (
        f"energy jumps at the cutoff: {float(energy_in):.8f} inside vs {float(energy_out):.8f}"
    )
    assert float(forces_in.abs().max()) < atol * 10, (
        f"force just inside the cutoff is {float(forces_in.abs().max()):.2e} eV/Å, not ~0"
    )


def run_all_checks(model: nn.Module, batch: Batch | None = None) -> None:
    """Run every check on ``model`` in float64 eval mode (the model is converted in place)."""
    model.double().eval()
    batch = make_batch() if batch is None else batch
    check_rotation_translation(model, batch)
    check_permutation(model, batch)
    check_finite_difference_forces(model, batch)
    check_batch_equals_single(model, batch)
    check_smooth_cutoff(model)
