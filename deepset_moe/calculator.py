"""ASE calculator for any trained potential of this project (DeepSet-MoE or a baseline).

Units are ASE's: energy in eV, forces in eV/Å, positions in Å. Molecules are
non-periodic (cell and pbc are ignored; no stress).

A model that declares ``needs_fragments`` (DeepSet-MoE with fragment-aware routing) reads
per-atom fragment labels. They are taken, in order, from

1. the ``fragments`` argument of the calculator (fixed for its lifetime);
2. ``atoms.arrays["fragment"]`` (frames read from GMD-26 extended XYZ carry them);
3. bond perception from the geometry with the model's own vocabulary
   (:meth:`deepset_moe.fragments.FragmentVocabulary.from_geometry`), done once per new atom
   set (when the atomic numbers change) and kept during dynamics, so that a stretched bond in
   MD never relabels atoms.

Isolated atoms (a lone atom, or an atom with no neighbour within bonding distance) need no
bond perception: they take the vocabulary's ``isolated_label`` (its ``other_label``, else the
alkyl class of a carbon with no H, ``"C"`` in the default vocabulary). So the energy of a lone
C, H or O atom is E0(Z) plus the network's value for that atom routed with that label, and its
forces are zero, for every model.

Other models (``learned`` routing, baselines) read no fragments and none are computed.

Geometry no model can evaluate is refused before anything else (bond perception included):
non-finite coordinates or two atoms closer than :data:`deepset_moe.batch.MIN_DISTANCE` raise
:class:`deepset_moe.batch.GeometryError` naming the atoms.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from torch import nn

from deepset_moe.batch import atoms_to_batch, batch_to, check_positions
from deepset_moe.checkpoint import load_potential
from deepset_moe.e0 import unwrap_model
from deepset_moe.fragments import DEFAULT_VOCABULARY


class PotentialCalculator(Calculator):
    """ASE calculator: energy (eV), forces (eV/Å) and per-atom ``energies`` when the model
    returns ``node_energy``. Any potential with the model interface of this project works.

    Args:
        model: checkpoint path of any registered model (loaded with
            :func:`deepset_moe.checkpoint.load_potential`) or a loaded potential (usually
            ``PotentialWithE0``); it is copied, so the caller's model is not changed.
        fragments: optional [n] fragment labels for every structure this calculator sees.
        device: torch device of the evaluation.
        dtype: parameter dtype of the evaluation (float64 gives the smoothest dynamics;
            ``None`` keeps the model's own dtype).
        charge: total molecular charge used for bond perception.
    """

    implemented_properties = ("energy", "free_energy", "forces", "energies")

    def __init__(
        self,
        model: str | Path | nn.Module,
        fragments: Sequence[int] | np.ndarray | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = torch.float64,
        charge: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(model, (str, Path)):
            model = load_potential(model, map_location=device)
        else:
            model = copy.deepcopy(model)
        self.potential = model.to(device).eval()
        network = unwrap_model(self.potential)
        if dtype is not None:
            network.to(dtype)  # only the network: E0 stays float64
        self.device = torch.device(device)
        self.charge = int(charge)
        self.fixed_fragments = None if fragments is None else np.asarray(fragments, np.int64)
        self.needs_fragments = bool(getattr(network, "needs_fragments", False))
        self.vocabulary = getattr(network, "fragment_vocabulary", DEFAULT_VOCABULARY)
        if not getattr(getattr(network, "config", None), "uses_node_energy", True):
            self.implemented_properties = ("energy", "free_energy", "forces")  # e.g. MLP rho
        self._perceived: tuple[np.ndarray, np.ndarray] | None = None

    def fragment_labels(self, atoms: Atoms) -> np.ndarray:
        """[n] fragment labels of ``atoms`` (module docstring: argument, array, perception).

        Raises:
            ValueError: labels of the wrong length or outside the vocabulary.
            FragmentError: bond perception failed (isolated atoms never need it).
        """
        numbers = atoms.get_atomic_numbers()
        if self.fixed_fragments is not None:
            labels, source = self.fixed_fragments, "the 'fragments' argument"
        elif "fragment" in atoms.arrays:
            labels, source = np.asarray(atoms.arrays["fragment"], np.int64), "atoms.arrays"
        else:
            cached = self._perceived
            if cached is None or not np.array_equal(cached[0], numbers):
                labels = self.vocabulary.from_geometry(
                    numbers, atoms.positions, charge=self.charge
                )
                self._perceived = (numbers.copy(), labels)
            labels, source = self._perceived[1], "bond perception"
        if labels.shape != numbers.shape:
            raise ValueError(
                f"{atoms.get_chemical_formula()}: {labels.shape[0]} fragment labels from "
                f"{source} for {numbers.shape[0]} atoms"
            )
        if labels.size and not (0 <= labels.min() and labels.max() < len(self.vocabulary)):
            raise ValueError(
                f"{atoms.get_chemical_formula()}: fragment labels from {source} outside "
                f"[0, {len(self.vocabulary)}) of the model's vocabulary {self.vocabulary.names}"
            )
        return labels

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        check_positions(atoms.positions, where=atoms.get_chemical_formula())  # before perception
        dtype = next(unwrap_model(self.potential).parameters()).dtype
        fragments = [self.fragment_labels(atoms)] if self.needs_fragments else None
        batch = batch_to(atoms_to_batch(atoms, fragments, dtype=dtype), self.device)
        with torch.no_grad():
            out = self.potential(batch)
        energy = float(out["energy"][0])
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["forces"] = out["forces"].detach().cpu().double().numpy()
        if "node_energy" in out:
            self.results["energies"] = out["node_energy"].detach().cpu().double().numpy()


DeepSetMoECalculator = PotentialCalculator
"""The calculator's earlier name, kept as an alias."""
