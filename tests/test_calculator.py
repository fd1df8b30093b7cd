"""DeepSetMoECalculator: ASE properties, fragment labels, checkpoint loading, NVE stability.

The NVE test fits a small DeepSet-MoE in ``fragment`` routing mode to MMFF94 energies and
forces of jiggled ethanol geometries (seconds), then runs velocity Verlet. ``fragment`` mode
matters: routing is then a function of the fragment labels only, so the energy is a smooth
function of positions and velocity Verlet conserves the total energy up to its O(dt^2)
fluctuation. In ``learned`` / ``hybrid`` mode a top-k switch (the k-th and (k+1)-th gate
probabilities of an atom crossing during the trajectory) makes the energy jump by a small,
finite amount that forces never see, which shows up as steps in the total energy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.md.velocitydistribution import Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet

from benchmark.datasets import collate_frames
from benchmark.fragments import fragments_from_smiles
from benchmark.references import MMFFCalculator
from benchmark.storage import Frame
from deepset_moe import AtomicReferenceEnergies, PotentialWithE0
from deepset_moe.calculator import DeepSetMoECalculator
from deepset_moe.checkpoint import save_checkpoint
from tests.physics_suite import molecule_frame
from tests.small_deepset_moe import small_model, torch_threads

E0 = AtomicReferenceEnergies({1: -13.6, 6: -1030.0, 8: -2040.0})


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with torch_threads(1):
        yield


def _atoms(smiles: str, seed: int = 0) -> Atoms:
    frame = molecule_frame(smiles, seed)
    return Atoms(numbers=frame.numbers, positions=frame.positions)


def test_properties_match_the_potential():
    potential = PotentialWithE0(small_model(), E0)
    atoms = _atoms("OCCC=O")
    _, labels = fragments_from_smiles("OCCC=O")
    atoms.calc = DeepSetMoECalculator(potential, fragments=labels)
    batch = collate_frames([molecule_frame("OCCC=O")], dtype=torch.float64)
    reference = PotentialWithE0(small_model().double(), E0)(batch)
    assert atoms.get_potential_energy() == pytest.approx(
        float(reference["energy"][0].detach()), abs=1e-9
    )
    np.testing.assert_allclose(atoms.get_forces(), reference["forces"].detach(), atol=1e-9)
    energies = atoms.get_potential_energies()
    assert energies.sum() == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
    assert potential.network.experts.w1.dtype == torch.float32, "caller's model untouched"


def test_fragment_labels_from_geometry_arrays_and_argument():
    _, expected = fragments_from_smiles("OCCC(=O)O")
    atoms = _atoms("OCCC(=O)O")
    calculator = DeepSetMoECalculator(PotentialWithE0(small_model(), E0))
    np.testing.assert_array_equal(calculator.fragment_labels(atoms), expected)
    perceived = calculator._perceived
    atoms.positions += 0.3  # same atom set: no new bond perception during dynamics
    calculator.fragment_labels(atoms)
    assert calculator._perceived is perceived
    other = _atoms("NCCC")
    _, amine = fragments_from_smiles("NCCC")
    np.testing.assert_array_equal(calculator.fragment_labels(other), amine)

    other.arrays["fragment"] = np.full(len(other), 5)
    assert set(calculator.fragment_labels(other)) == {5}
    explicit = DeepSetMoECalculator(small_model(), fragments=[0, 1, 2])
    with pytest.raises(ValueError, match=r"C3H9N: 3 fragment labels .* for 13 atoms"):
        explicit.fragment_labels(other)


def test_loads_from_checkpoint(tmp_path):
    network = small_model(readout="mlp")
    path = tmp_path / "model.pt"
    save_checkpoint(
        path,
        model_name="deepset_moe",
        model_config=network.config.to_dict(),
        network=network,
        e0=E0,
        fragment_names=["unused"],
    )
    atoms = _atoms("CCO")
    atoms.calc = DeepSetMoECalculator(path)
    direct = _atoms("CCO")
    direct.calc = DeepSetMoECalculator(PotentialWithE0(network, E0))
    assert atoms.get_potential_energy() == pytest.approx(direct.get_potential_energy(), abs=1e-9)
    assert "energies" not in atoms.calc.implemented_properties  # MLP rho: no per-atom energies


def _fit_to_mmff(smiles: str, num_frames: int = 32, steps: int = 150) -> PotentialWithE0:
    """A fragment-routed small DeepSet-MoE briefly fitted to MMFF94 on jiggled geometries."""
    mol, labels = fragments_from_smiles(smiles)
    start = molecule_frame(smiles, 0)
    mmff = MMFFCalculator(mol)
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(num_frames):
        atoms = Atoms(start.numbers, start.positions + rng.normal(0, 0.08, (len(labels), 3)))
        atoms.calc = mmff
        frames.append(
            Frame(atoms.numbers, atoms.positions, labels, atoms.get_potential_energy(),
                  atoms.get_forces(), smiles, smiles, "jiggle", "mmff")
        )  # fmt: skip
    batch = collate_frames(frames)
    shift = float(batch["energy"].mean())
    target_energy = (batch["energy"] - shift).float()
    network = small_model(router_mode="fragment").train()
    optimizer = torch.optim.Adam(network.parameters(), lr=5e-3)
    for _ in range(steps):
        out = network(batch)
        loss = (out["forces"] - batch["forces"]).square().mean()
        loss = loss + (out["energy"] - target_energy).square().mean() / len(labels) ** 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5, f"MMFF fit did not converge (loss {loss.item():.3f})"
    return PotentialWithE0(network.eval(), AtomicReferenceEnergies())


def _nve_total_energy(potential, timestep_fs: float, steps: int) -> np.ndarray:
    atoms = _atoms("CCO")
    atoms.calc = DeepSetMoECalculator(potential)
    masses = atoms.get_masses()[:, None]
    thermal = np.sqrt(masses * units.kB * 300.0)  # Maxwell-Boltzmann momenta at 300 K
    atoms.set_momenta(thermal * np.random.default_rng(1).normal(size=(len(atoms), 3)))
    Stationary(atoms)
    ZeroRotation(atoms)
    dynamics = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    total = []
    dynamics.attach(lambda: total.append(atoms.get_total_energy()), interval=1)
    dynamics.run(steps)
    assert atoms.get_all_distances().max() < 4.0, "ethanol dissociated"
    return np.array(total)


def test_nve_conserves_energy_with_fragment_routing():
    potential = _fit_to_mmff("CCO")
    experts = [
        potential(collate_frames([molecule_frame("CCO", seed)]))["routing"]["experts"]
        for seed in (0, 3)
    ]
    assert torch.equal(*experts), "fragment routing must not depend on positions"

    deviations = {}
    for timestep, steps in ((0.5, 200), (0.25, 400)):  # 100 fs each
        total = _nve_total_energy(potential, timestep, steps)
        time_ps = np.arange(total.size) * timestep * 1e-3
        drift = np.polyfit(time_ps, total, 1)[0] * time_ps[-1]  # systematic change over the run
        deviations[timestep] = np.abs(total - total[0]).max()
        print(
            f"NVE ethanol (9 atoms) dt={timestep} fs, {steps} steps: linear-fit drift "
            f"{1000 * drift:+.3f} meV over {1000 * time_ps[-1]:.0f} fs "
            f"({1000 * drift / 9:+.3f} meV/atom), max |E_tot - E_tot(0)| "
            f"{1000 * deviations[timestep]:.3f} meV"
        )
        assert abs(drift) < 3e-3 and deviations[timestep] < 1e-2
    # velocity Verlet error ~ dt^2: halving dt cuts the fluctuation ~4x when forces are the
    # exact gradient of a smooth energy (a jump or a force/energy mismatch would not scale)
    assert deviations[0.5] / deviations[0.25] > 2.5
