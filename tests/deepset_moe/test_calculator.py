"""PotentialCalculator (alias DeepSetMoECalculator): ASE properties, fragment labels, checkpoint
loading (DeepSet-MoE, a baseline, a format-1 file), bad geometries, NVE stability.

The NVE test fits a small DeepSet-MoE in ``fragment`` routing mode to MMFF94 energies and
forces of jiggled ethanol geometries (seconds), then runs velocity Verlet. ``fragment`` mode
matters: routing is then a function of the fragment labels only, so the energy is a smooth
function of positions and velocity Verlet conserves the total energy up to its O(dt^2)
fluctuation. In ``learned`` / ``hybrid`` mode a top-k switch (the k-th and (k+1)-th gate
probabilities of an atom crossing during the trajectory) makes the energy jump by a small,
finite amount that forces never see, which shows up as steps in the total energy.
"""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.md.velocitydistribution import Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet

from baselines import build_model
from benchmark.dataset.frames import Frame
from benchmark.dataset.references import MMFFCalculator
from deepset_moe import AtomicReferenceEnergies, DeepSetMoE, PotentialWithE0, load_potential
from deepset_moe.batch import BatchError, atoms_to_batch, collate
from deepset_moe.calculator import DeepSetMoECalculator, PotentialCalculator
from deepset_moe.checkpoint import read_checkpoint, save_checkpoint
from deepset_moe.fragments import DEFAULT_VOCABULARY, fragments_from_smiles
from tests.small_deepset_moe import molecule_frame, small_model, torch_threads

REPOSITORY = Path(__file__).resolve().parents[2]
FORMAT_1_RUN = REPOSITORY / "results/deepset_moe_quick/duplication/deepset_moe/seed0"
"""A committed DeepSet-MoE run whose best.pt predates checkpoint format 2 (no model_target,
fragment_names instead of the vocabulary, num_fragments in the model config)."""
FORMAT_1_FRAMES = REPOSITORY / "data/gmd26/frames/cooh-c1/t5.xyz.gz"
"""The first id_test trajectory of that run's task (its predictions start with it)."""

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
    batch = collate([molecule_frame("OCCC=O")], dtype=torch.float64)
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
        fragments=network.fragment_vocabulary,
    )
    atoms = _atoms("CCO")
    atoms.calc = DeepSetMoECalculator(path)
    direct = _atoms("CCO")
    direct.calc = DeepSetMoECalculator(PotentialWithE0(network, E0))
    assert atoms.get_potential_energy() == pytest.approx(direct.get_potential_energy(), abs=1e-9)
    assert "energies" not in atoms.calc.implemented_properties  # MLP rho: no per-atom energies


def test_loads_a_baseline_checkpoint(tmp_path):
    """PotentialCalculator("schnet best.pt"): the calculator loads any registered model's
    checkpoint, computes no fragment labels for it and offers its per-atom energies."""
    config = {"hidden_channels": 8, "num_filters": 8, "num_interactions": 1}
    schnet = build_model("schnet", seed=3, **config)
    path = tmp_path / "best.pt"
    save_checkpoint(path, model_name="schnet", model_config=config, network=schnet, e0=E0)
    atoms = _atoms("OCCC=O")
    atoms.calc = PotentialCalculator(path)
    assert not atoms.calc.needs_fragments
    reference = PotentialWithE0(schnet.double(), E0)(atoms_to_batch(atoms, dtype=torch.float64))
    assert atoms.get_potential_energy() == pytest.approx(
        float(reference["energy"][0].detach()), abs=1e-9
    )
    np.testing.assert_allclose(atoms.get_forces(), reference["forces"].detach(), atol=1e-9)
    np.testing.assert_allclose(
        atoms.get_potential_energies(), reference["node_energy"].detach(), atol=1e-9
    )
    assert atoms.calc._perceived is None, "no bond perception for a model without fragments"
    lone = Atoms("O", positions=[[0.0, 0.0, 0.0]])  # no bonds to perceive: needs none here
    lone.calc = PotentialCalculator(path)
    assert np.isfinite(lone.get_potential_energy())


def test_format_1_checkpoint_still_loads_and_reproduces_its_predictions():
    """A committed format-1 DeepSet-MoE checkpoint loads with load_potential (class from the
    model name, default vocabulary from num_fragments) and predicts what its run recorded."""
    path = FORMAT_1_RUN / "best.pt"
    payload = read_checkpoint(path)
    assert payload["format_version"] == 1, f"{path} must stay a format-1 file (loader test)"
    assert "model_target" not in payload
    assert "fragments" not in payload and payload["fragment_names"] == list(
        DEFAULT_VOCABULARY.names
    )
    assert payload["model_config"]["num_fragments"] == 8
    assert "fragments" not in payload["model_config"]

    potential = load_potential(path)
    assert isinstance(potential.network, DeepSetMoE)
    assert potential.network.fragment_vocabulary == DEFAULT_VOCABULARY
    frames = ase.io.read(FORMAT_1_FRAMES, index=":2")
    recorded = np.load(FORMAT_1_RUN / "predictions_id_test.npz")
    rows = np.flatnonzero((recorded["molecule_id"] == "cooh-c1") & (recorded["frame_index"] < 2))
    assert rows.tolist() == [0, 1]
    n_atoms = len(frames[0])
    np.testing.assert_array_equal(recorded["z"][: 2 * n_atoms], np.tile(frames[0].numbers, 2))
    batch = atoms_to_batch(frames, [frame.arrays["fragment"] for frame in frames])
    out = potential.eval()(batch)
    np.testing.assert_allclose(out["energy"].detach(), recorded["energy"][rows], atol=1e-5)
    np.testing.assert_allclose(
        out["forces"].detach(), recorded["forces"][: 2 * n_atoms], atol=1e-4, rtol=0
    )

    atoms = frames[0].copy()  # the calculator (float64) from the path, labels from the file
    atoms.calc = PotentialCalculator(path)
    assert atoms.get_potential_energy() == pytest.approx(recorded["energy"][0], abs=1e-4)


def test_synthesised_format_1_checkpoint_loads(tmp_path):
    """The format-1 layout (written before model_target and the stored vocabulary) loads:
    class from the model name, the default vocabulary from ``num_fragments``."""
    network = small_model(router_mode="fragment", readout="mlp")
    config = network.config.to_dict()
    del config["fragments"]
    config["num_fragments"] = len(DEFAULT_VOCABULARY)
    path = tmp_path / "best.pt"
    payload = {
        "format_version": 1,
        "library_version": "0.1.0",
        "model_name": "deepset_moe",
        "model_config": config,
        "network_state": network.state_dict(),
        "e0": E0.as_dict(),
        "fragment_names": list(DEFAULT_VOCABULARY.names),
        "training": {"epoch": 3},
    }
    torch.save(payload, path)
    potential = load_potential(path)
    assert isinstance(potential.network, DeepSetMoE)
    assert potential.network.config == network.config
    batch = collate([molecule_frame("OCCC(=O)O")])
    expected = PotentialWithE0(network.eval(), E0)(batch)
    loaded = potential.eval()(batch)
    torch.testing.assert_close(loaded["energy"], expected["energy"], atol=0, rtol=0)
    torch.testing.assert_close(loaded["forces"], expected["forces"], atol=0, rtol=0)


@pytest.mark.parametrize("labelled", [False, True])
def test_non_finite_position_names_the_atom(labelled):
    """NaN coordinates raise BatchError naming the atom, before any bond perception."""
    atoms = _atoms("OCCC=O")
    if labelled:
        atoms.arrays["fragment"] = fragments_from_smiles("OCCC=O")[1]
    atoms.positions[3, 1] = np.nan
    atoms.calc = PotentialCalculator(PotentialWithE0(small_model(), E0))  # hybrid: perceives
    with pytest.raises(BatchError, match=r"C3H6O2: atom 3 has non-finite coordinates"):
        atoms.get_potential_energy()


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
    batch = collate(frames)
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
        potential(collate([molecule_frame("CCO", seed)]))["routing"]["experts"] for seed in (0, 3)
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
