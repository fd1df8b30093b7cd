"""Model inputs no model can evaluate are refused with the atoms named, whatever built the batch
(``collate``, ``atoms_to_batch``, the ASE calculator or a dict made by hand); isolated atoms are
legal and, in the calculator, get a well-defined fragment label (issue 12, cases 1, 5, 6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms

from baselines import build_model
from deepset_moe import AtomicReferenceEnergies, PotentialWithE0
from deepset_moe.batch import MIN_DISTANCE, BatchError, GeometryError, atoms_to_batch, collate
from deepset_moe.calculator import PotentialCalculator
from deepset_moe.fragments import DEFAULT_VOCABULARY, FragmentError, FragmentVocabulary
from deepset_moe.graph import radius_graph
from tests.small_deepset_moe import molecule_frame, small_model, torch_threads

E0 = AtomicReferenceEnergies({1: -13.6, 6: -1030.0, 8: -2040.0})


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with torch_threads(1):
        yield


def _hand_made_batch(positions: torch.Tensor, z: list[int], fragment: bool = True) -> dict:
    """A batch dict written by hand (no collate): two molecules, the second one ``z``."""
    first = molecule_frame("CCO")
    z_all = torch.cat([torch.as_tensor(first.numbers), torch.tensor(z)]).long()
    pos = torch.cat([torch.as_tensor(first.positions, dtype=torch.float32), positions])
    counts = torch.tensor([first.n_atoms, len(z)])
    batch = {
        "z": z_all,
        "pos": pos,
        "batch": torch.repeat_interleave(torch.arange(2), counts),
        "ptr": torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]),
        "n_atoms": counts,
    }
    if fragment:
        batch["fragment"] = torch.zeros(len(z_all), dtype=torch.long)
    return batch


WATER = torch.tensor([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])


@pytest.mark.parametrize("name", ["deepset_moe", "schnet"])
def test_hand_made_batch_with_nan_raises_naming_the_atom(name):
    model = small_model() if name == "deepset_moe" else build_model("schnet", hidden_channels=16)
    pos = WATER.clone()
    pos[2, 1] = float("nan")
    batch = _hand_made_batch(pos, [8, 1, 1])
    with pytest.raises(GeometryError, match=r"molecule 1 of the batch: atom 2 has non-finite"):
        model(batch)
    with pytest.raises(GeometryError) as error:
        PotentialWithE0(model, E0)(batch)
    assert error.value.molecule == 1 and error.value.atoms == (2,)


def test_nan_on_a_lone_atom_is_found_too():
    """A lone atom has no pair distance; its coordinates are still checked."""
    batch = _hand_made_batch(torch.tensor([[float("inf"), 0.0, 0.0]]), [6])
    with pytest.raises(GeometryError, match=r"molecule 1 of the batch: atom 0 has non-finite"):
        small_model()(batch)


@pytest.mark.parametrize("name", ["deepset_moe", "schnet"])
def test_overlapping_atoms_raise_naming_both(name):
    model = small_model() if name == "deepset_moe" else build_model("schnet", hidden_channels=16)
    pos = WATER.clone()
    pos[2] = pos[1] + torch.tensor([0.0, 0.0, 0.5 * MIN_DISTANCE])
    with pytest.raises(GeometryError, match=r"molecule 1 of the batch: atoms 1 and 2 are 0\.05 Å"):
        model(_hand_made_batch(pos, [8, 1, 1]))


def test_far_apart_atoms_are_legal():
    """An atom 1e6 Å away is isolated, not an error: finite energy, zero force on it."""
    pos = torch.cat([WATER, torch.tensor([[1e6, 0.0, 0.0]])])
    out = small_model()(_hand_made_batch(pos, [8, 1, 1, 1]))
    assert torch.isfinite(out["energy"]).all() and torch.isfinite(out["forces"]).all()
    assert float(out["forces"][-1].detach().abs().max()) == 0.0


def test_radius_graph_accepts_atoms_just_above_the_threshold():
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.01 * MIN_DISTANCE, 0.0, 0.0]])
    edges = radius_graph(pos, torch.tensor([0, 2]), cutoff=5.0)
    assert edges.shape == (2, 2)


def test_collate_and_atoms_to_batch_name_the_structure():
    bad = molecule_frame("CCO")
    bad.positions = bad.positions.copy()
    bad.positions[4, 0] = np.nan
    with pytest.raises(BatchError, match=r"CCO: atom 4 has non-finite coordinates"):
        collate([molecule_frame("CCC"), bad])
    with pytest.raises(GeometryError, match=r"atom 1 has non-finite"):
        atoms_to_batch(Atoms("CO", positions=[[0, 0, 0], [np.nan, 0, 0]]))


@pytest.mark.parametrize("symbol", ["C", "H", "O"])
def test_lone_atom_in_the_calculator_with_fragment_routing(symbol):
    """A lone C, H or O: no bond perception, label ``isolated_label`` ('C' class), energy
    E0(Z) + the network's isolated-atom value, zero forces."""
    network = small_model(router_mode="fragment").eval()
    assert network.needs_fragments
    atoms = Atoms(symbol, positions=[[0.0, 0.0, 0.0]])
    calculator = PotentialCalculator(PotentialWithE0(network, E0), dtype=None)
    atoms.calc = calculator
    energy = atoms.get_potential_energy()
    label = DEFAULT_VOCABULARY.isolated_label
    assert DEFAULT_VOCABULARY.names[label] == "C"
    assert calculator.fragment_labels(atoms).tolist() == [label]
    z = int(atoms.numbers[0])
    alone = network(
        {
            "z": torch.tensor([z]),
            "pos": torch.zeros(1, 3),
            "batch": torch.zeros(1, dtype=torch.long),
            "ptr": torch.tensor([0, 1]),
            "n_atoms": torch.tensor([1]),
            "fragment": torch.tensor([label]),
        }
    )
    expected = E0.as_dict()[z] + float(alone["energy"][0])
    assert np.isfinite(energy) and energy == pytest.approx(expected, abs=1e-5)
    assert np.abs(atoms.get_forces()).max() == 0.0


def test_molecule_beside_a_far_atom_is_labelled_in_parts():
    frame = molecule_frame("OCCC=O")
    numbers = np.append(frame.numbers, 1)
    positions = np.vstack([frame.positions, [[50.0, 0.0, 0.0]]])
    labels = DEFAULT_VOCABULARY.from_geometry(numbers, positions)
    assert labels[:-1].tolist() == frame.fragment.tolist()
    assert labels[-1] == DEFAULT_VOCABULARY.isolated_label


def test_isolated_label_prefers_other_and_needs_one():
    with_other = DEFAULT_VOCABULARY.extended(other_label="other")
    assert with_other.names[with_other.isolated_label] == "other"
    bare = FragmentVocabulary(patterns=(("hydroxyl", "[OX2H1:1][CX4]"),), alkyl_classes=())
    with pytest.raises(FragmentError, match="no label for an isolated atom"):
        bare.from_geometry([8], [[0.0, 0.0, 0.0]])
    with pytest.raises(FragmentError, match=r"atom 0 \(Cl\): element outside"):
        DEFAULT_VOCABULARY.from_geometry([17], [[0.0, 0.0, 0.0]])


def test_calculator_refuses_overlapping_atoms_before_bond_perception():
    atoms = Atoms("COO", positions=[[0, 0, 0], [1.2, 0, 0], [1.2, 0.0, 0.01]])
    atoms.calc = PotentialCalculator(PotentialWithE0(small_model(), E0))  # hybrid: perceives
    with pytest.raises(GeometryError, match=r"CO2: atoms 1 and 2 are 0\.01 Å apart"):
        atoms.get_potential_energy()
