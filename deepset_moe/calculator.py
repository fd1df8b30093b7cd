"""ASE calculator for a trained DeepSet-MoE (or any PotentialWithE0-wrapped potential).

Units are ASE's: energy in eV, forces in eV/Å, positions in Å. Molecules are
non-periodic (cell and pbc are ignored; no stress).

The fragment-aware router needs per-atom fragment labels. They are taken, in order, from

1. the ``fragments`` argument of the calculator (fixed for its lifetime);
2. ``atoms.arrays["fragment"]`` (frames read from GMD-26 extended XYZ carry them);
3. bond perception from the geometry (:func:`benchmark.fragments.fragments_from_geometry`),
   done once per new atom set (when the atomic numbers change) and kept during dynamics, so
   that a stretched bond in MD never relabels atoms.

Routers in ``learned`` mode and models without a router (baselines) do not read fragments,
and none are computed for them.
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

from benchmark.fragments import NUM_FRAGMENTS, fragments_from_geometry
from deepset_moe.routing_metrics import unwrap_model


class DeepSetMoECalculator(Calculator):
    """ASE calculator: energy (eV), forces (eV/Å) and per-atom ``energies`` when the model
    decomposes its energy (sum pooling + linear rho). Any potential with the DESIGN.md
    interface works (baselines too: they ignore the fragment labels).

    Args:
        model: checkpoint path (loaded with ``DeepSetMoE.from_checkpoint``) or a loaded
            potential (usually ``PotentialWithE0``); it is copied, so the caller's model is
            not changed.
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
            from deepset_moe.model import DeepSetMoE

            model = DeepSetMoE.from_checkpoint(model, map_location=device)
        else:
            model = copy.deepcopy(model)
        self.potential = model.to(device).eval()
        network = unwrap_model(self.potential)
        if dtype is not None:
            network.to(dtype)  # only the network: E0 stays float64
        self.device = torch.device(device)
        self.charge = int(charge)
        self.fixed_fragments = None if fragments is None else np.asarray(fragments, np.int64)
        config = getattr(network, "config", None)
        self.needs_fragments = getattr(config, "router_mode", "learned") != "learned"
        if not getattr(config, "uses_node_energy", True):  # e.g. MLP rho: no per-atom energies
            self.implemented_properties = ("energy", "free_energy", "forces")
        self._perceived: tuple[np.ndarray, np.ndarray] | None = None

    def fragment_labels(self, atoms: Atoms) -> np.ndarray:
        """[n] fragment labels of ``atoms`` (module docstring: argument, array, perception).

        Raises:
            ValueError: labels of the wrong length or outside the vocabulary.
        """
        numbers = atoms.get_atomic_numbers()
        if self.fixed_fragments is not None:
            labels, source = self.fixed_fragments, "the 'fragments' argument"
        elif "fragment" in atoms.arrays:
            labels, source = np.asarray(atoms.arrays["fragment"], np.int64), "atoms.arrays"
        else:
            cached = self._perceived
            if cached is None or not np.array_equal(cached[0], numbers):
                labels = fragments_from_geometry(numbers, atoms.positions, charge=self.charge)
                self._perceived = (numbers.copy(), labels)
            labels, source = self._perceived[1], "bond perception"
        if labels.shape != numbers.shape:
            raise ValueError(
                f"{atoms.get_chemical_formula()}: {labels.shape[0]} fragment labels from "
                f"{source} for {numbers.shape[0]} atoms"
            )
        if labels.size and not (0 <= labels.min() and labels.max() < NUM_FRAGMENTS):
            raise ValueError(
                f"{atoms.get_chemical_formula()}: fragment labels from {source} outside "
                f"[0, {NUM_FRAGMENTS})"
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
        n_atoms = len(atoms)
        dtype = next(unwrap_model(self.potential).parameters()).dtype
        batch = {
            "z": torch.as_tensor(atoms.get_atomic_numbers(), dtype=torch.long),
            "pos": torch.as_tensor(atoms.positions, dtype=dtype),
            "batch": torch.zeros(n_atoms, dtype=torch.long),
            "ptr": torch.tensor([0, n_atoms], dtype=torch.long),
        }
        if self.needs_fragments:
            batch["fragment"] = torch.as_tensor(self.fragment_labels(atoms), dtype=torch.long)
        batch = {key: value.to(self.device) for key, value in batch.items()}
        with torch.no_grad():
            out = self.potential(batch)
        energy = float(out["energy"][0])
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["forces"] = out["forces"].detach().cpu().double().numpy()
        if "node_energy" in out:
            self.results["energies"] = out["node_energy"].detach().cpu().double().numpy()
