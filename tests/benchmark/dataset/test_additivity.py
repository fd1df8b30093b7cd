"""Linear reference fits (benchmark.dataset.additivity) on synthetic energies with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.dataset.additivity import reference_fit_errors
from benchmark.dataset.frames import Frame

# per (element, fragment) energies of an exactly group-additive synthetic chemistry, eV
GROUP_ENERGY = {
    (6, 4): -10.0, (1, 4): -1.0, (6, 5): -9.5, (1, 5): -1.1, (8, 1): -20.0, (1, 1): -2.0,
    (7, 2): -15.0, (6, 6): -9.0, (1, 6): -1.5,
}


def frame(kinds: list[tuple[int, int]], molecule: str, shift: float = 0.0) -> Frame:
    """A frame with the given (Z, fragment) atoms, energy = group-additive sum + shift (eV)."""
    n = len(kinds)
    return Frame(
        numbers=np.array([z for z, _ in kinds]),
        positions=np.zeros((n, 3)),
        fragment=np.array([f for _, f in kinds]),
        energy=sum(GROUP_ENERGY[k] for k in kinds) + shift,
        forces=np.zeros((n, 3)),
        smiles="",
        molecule_id=molecule,
        trajectory_id=f"{molecule}/t0",
        reference="synthetic",
    )


CH3 = [(6, 4), (1, 4), (1, 4), (1, 4)]
CH2 = [(6, 5), (1, 5), (1, 5)]
CH = [(6, 6), (1, 6)]
OH = [(8, 1), (1, 1)]


def chain(groups: list[list[tuple[int, int]]]) -> list[tuple[int, int]]:
    return [kind for group in groups for kind in group]


TRAIN = [
    frame(chain([OH, CH2 * 1, CH3]), "oh-c2"),
    frame(chain([OH, *[CH2] * 2, CH3]), "oh-c3"),
    frame(chain([OH, CH3]), "oh-c1"),
    frame(chain([CH3, CH3]), "ethane"),
    frame(chain([CH3, *[CH2] * 3, CH3]), "pentane"),
    frame(chain([CH, CH3, CH3, CH3]), "isobutane"),
]


def test_group_additive_energies_are_fitted_exactly_and_a_shift_is_the_bias() -> None:
    shift = -0.6  # eV: the reference energy is lower than group additivity says
    ood = [frame(chain([OH, *[CH2] * 4, OH]), "oh-c4-oh", shift)]
    result = reference_fit_errors(TRAIN, {"train": TRAIN, "ood": ood}, "fragment")
    assert result["train"]["energy_per_atom_mae"] < 1e-10
    n_atoms = ood[0].n_atoms
    assert result["ood"]["mean_molecule_bias"] == pytest.approx(-shift / n_atoms, abs=1e-10)
    assert result["ood"]["positive_molecules"] == 1
    assert result["ood"]["identified_molecules"] == 1
    assert list(result["ood"]["molecule_bias"]) == ["oh-c4-oh"]


def test_element_reference_cannot_represent_fragment_energies() -> None:
    """CH3, CH2 and CH differ by unequal steps (1.3 and 1.2 eV): not a sum of element energies."""
    result = reference_fit_errors(TRAIN, {"train": TRAIN}, "element")
    assert result["train"]["energy_per_atom_mae"] > 1e-3


def test_unidentified_molecules_are_counted_apart() -> None:
    """Every training molecule has exactly one CH3 beside one OH: (CH3 - OH) is not identified."""
    train = [frame(chain([OH, *[CH2] * n, CH3]), f"oh-c{n + 1}") for n in range(1, 4)]
    ood = [frame(chain([OH, *[CH2] * 3, OH]), "oh-c3-oh"), frame(chain([OH, CH2, CH3]), "oh-c2")]
    result = reference_fit_errors(train, {"ood": ood}, "fragment")["ood"]
    assert result["molecules"] == 2
    assert result["identified_molecules"] == 1  # oh-c2 is a training molecule
    assert result["mean_molecule_bias"] == pytest.approx(0.0, abs=1e-10)


def test_molecules_with_atom_kinds_absent_from_training_are_not_identified() -> None:
    ood = [frame([(7, 2), *CH3], "nh-c1"), frame(chain([OH, CH2, CH3]), "oh-c2")]
    result = reference_fit_errors(TRAIN, {"ood": ood}, "fragment")["ood"]
    assert (result["molecules"], result["identified_molecules"]) == (2, 1)


def test_unknown_reference_model_is_refused() -> None:
    with pytest.raises(ValueError, match="reference model must be one of"):
        reference_fit_errors(TRAIN, {}, "bond")
