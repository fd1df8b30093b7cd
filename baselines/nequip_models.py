"""NequIP (Batzner et al., 2022) and Allegro (Musaelian et al., 2023) from ``nequip`` and
``nequip-allegro``, built in Python (no Hydra config files) and fed with the shared graph.

The models come from the packages' own builders, ``nequip.model.NequIPGNNModel`` and
``allegro.model.AllegroModel``, with ``do_derivatives=False``: they return per-atom energies and
:class:`baselines.base.AtomisticBaseline` differentiates them like every other baseline. The
per-type energy shift is 0 (E0 is added outside); the per-type scale is a setting.

nequip's builders require its process-wide "global state" (``set_global_state``). Setting it
would also change torch's default dtype to float64, reseed every generator and switch the
multiprocessing sharing strategy, and a build leaves e3nn's ``jit_mode`` at "script" (so every
e3nn module built later, MACE's included, would be TorchScript-compiled). Those side effects are
undone right away (:func:`_process_state_kept`) so that building a NequIP model leaves the rest
of the process as it was.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import e3nn
import numpy as np
import torch
from ase.data import chemical_symbols
from torch import Tensor

from baselines.base import DEFAULT_ELEMENTS, AtomisticBaseline
from deepset_moe.graph import radius_graph


@contextmanager
def _process_state_kept() -> Iterator[None]:
    """Restore on exit what nequip changes process-wide: torch's default dtype, the
    multiprocessing sharing strategy, the torch / numpy / Python generators and e3nn's
    optimisation defaults."""
    dtype = torch.get_default_dtype()
    sharing = torch.multiprocessing.get_sharing_strategy()
    torch_rng, python_rng = torch.get_rng_state(), random.getstate()
    numpy_rng = np.random.get_state()  # noqa: NPY002 (nequip reseeds numpy's legacy global RNG)
    e3nn_defaults = e3nn.get_optimization_defaults()
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)
        torch.multiprocessing.set_sharing_strategy(sharing)
        torch.set_rng_state(torch_rng)
        np.random.set_state(numpy_rng)  # noqa: NPY002
        random.setstate(python_rng)
        jit_mode = e3nn_defaults.pop("jit_mode")
        e3nn.set_optimization_defaults(**e3nn_defaults)
        # after jit_script_fx, which e3nn maps onto jit_mode ("script" when True)
        e3nn.set_optimization_defaults(jit_mode=jit_mode)


class NequIPFamilyPotential(AtomisticBaseline):
    """A nequip ``GraphModel`` behind the DESIGN.md interface.

    nequip's ``edge_index`` convention is (centre, neighbour), the reverse of ours, so the shared
    graph is flipped before it is handed over.

    nequip fixes a model's dtype when it is built (``model_dtype``, "float32" or "float64");
    ``.double()`` on a float32-built model does not convert nequip's internal casts, so build
    with ``model_dtype="float64"`` for double precision. Inputs of another dtype are cast to the
    model dtype and the energies cast back.

    Args:
        builder: ``"module:function"`` of the package's ``@model_builder`` (imported here, so
            that NequIP does not need nequip-allegro installed).
        cutoff: r_max in Å.
        elements: atomic numbers the model accepts (nequip ``type_names``).
        model_dtype: "float32" or "float64".
        seed: initialisation seed (nequip seeds its own generator with it).
        avg_num_neighbors: normalisation of the neighbour sums.
        per_type_energy_scales: scale of the per-atom energies (eV); the shifts are 0.
        settings: the architecture's own builder arguments.
    """

    def __init__(
        self,
        builder: str,
        cutoff: float,
        elements: Sequence[int],
        model_dtype: str,
        seed: int,
        avg_num_neighbors: float,
        per_type_energy_scales: float,
        **settings: Any,
    ) -> None:
        if model_dtype not in ("float32", "float64"):
            raise ValueError(f"model_dtype must be 'float32' or 'float64', got {model_dtype!r}")
        super().__init__(cutoff, elements)
        self.model_dtype = getattr(torch, model_dtype)
        from nequip.utils.global_state import global_state_initialized, set_global_state

        module_name, function_name = builder.split(":")
        build = getattr(importlib.import_module(module_name), function_name)
        with _process_state_kept():
            if not global_state_initialized():
                set_global_state()
            self.graph_model = build(
                type_names=[chemical_symbols[z] for z in self.element_index.elements],
                r_max=cutoff,
                model_dtype=model_dtype,
                seed=seed,
                avg_num_neighbors=avg_num_neighbors,
                per_type_energy_shifts=0.0,
                per_type_energy_scales=per_type_energy_scales,
                do_derivatives=False,
                **settings,
            )

    def atomic_energies(self, z: Tensor, pos: Tensor, batch: Tensor, ptr: Tensor) -> Tensor:
        edge_index = radius_graph(pos, ptr, self.cutoff)
        data = {
            "pos": pos.to(self.model_dtype),
            "edge_index": edge_index.flip(0).contiguous(),
            "atom_types": self.element_index(z),
            "batch": batch,
            "num_atoms": ptr[1:] - ptr[:-1],
        }
        return self.graph_model(data)["atomic_energy"].squeeze(-1).to(pos.dtype)


class NequIPPotential(NequIPFamilyPotential):
    """NequIP (``nequip.model.NequIPGNNModel``).

    Args:
        cutoff: r_max in Å (polynomial cutoff of order ``polynomial_cutoff_p``).
        num_layers: interaction (convolution) layers.
        l_max: highest rotation order of the features.
        parity: keep odd-parity features (the original NequIP).
        num_features: multiplicity of every irrep.
        radial_mlp_depth, radial_mlp_width: radial network.
        num_bessels: Bessel radial basis size.
        polynomial_cutoff_p: envelope exponent.
        avg_num_neighbors: normalisation of the neighbour sums.
        per_type_energy_scales: scale of the per-atom energies (eV).
        model_dtype: "float32" or "float64", fixed at build time.
        elements: atomic numbers the model accepts.
        seed: initialisation seed.
    """

    def __init__(
        self,
        cutoff: float = 5.0,
        num_layers: int = 3,
        l_max: int = 1,
        parity: bool = True,
        num_features: int = 32,
        radial_mlp_depth: int = 2,
        radial_mlp_width: int = 64,
        num_bessels: int = 8,
        polynomial_cutoff_p: int = 6,
        avg_num_neighbors: float = 12.0,
        per_type_energy_scales: float = 1.0,
        model_dtype: str = "float32",
        elements: Sequence[int] = DEFAULT_ELEMENTS,
        seed: int = 0,
    ) -> None:
        super().__init__(
            "nequip.model:NequIPGNNModel",
            cutoff,
            elements,
            model_dtype,
            seed,
            avg_num_neighbors,
            per_type_energy_scales,
            num_layers=num_layers,
            l_max=l_max,
            parity=parity,
            num_features=num_features,
            radial_mlp_depth=radial_mlp_depth,
            radial_mlp_width=radial_mlp_width,
            num_bessels=num_bessels,
            polynomial_cutoff_p=polynomial_cutoff_p,
        )


class AllegroPotential(NequIPFamilyPotential):
    """Allegro (``allegro.model.AllegroModel``): strictly local, per-edge energies.

    Args:
        cutoff: r_max in Å.
        l_max: highest rotation order of the tensor track.
        parity: keep odd-parity tensor features.
        num_layers: Allegro layers.
        num_scalar_features, num_tensor_features: widths of the scalar and tensor tracks.
        mlp_width: hidden width of the two-body, Allegro and readout MLPs.
        num_splines, spline_span: two-body spline embedding of (type pair, distance).
        avg_num_neighbors: normalisation of the neighbour sums.
        per_type_energy_scales: scale of the per-atom energies (eV).
        model_dtype: "float32" or "float64", fixed at build time.
        elements: atomic numbers the model accepts.
        seed: initialisation seed.
    """

    def __init__(
        self,
        cutoff: float = 5.0,
        l_max: int = 2,
        parity: bool = True,
        num_layers: int = 2,
        num_scalar_features: int = 128,
        num_tensor_features: int = 32,
        mlp_width: int = 128,
        num_splines: int = 8,
        spline_span: int = 6,
        avg_num_neighbors: float = 12.0,
        per_type_energy_scales: float = 1.0,
        model_dtype: str = "float32",
        elements: Sequence[int] = DEFAULT_ELEMENTS,
        seed: int = 0,
    ) -> None:
        super().__init__(
            "allegro.model:AllegroModel",
            cutoff,
            elements,
            model_dtype,
            seed,
            avg_num_neighbors,
            per_type_energy_scales,
            l_max=l_max,
            parity=parity,
            radial_chemical_embed={
                "_target_": "allegro.nn.TwoBodySplineScalarEmbed",
                "num_splines": num_splines,
                "spline_span": spline_span,
            },
            num_layers=num_layers,
            num_scalar_features=num_scalar_features,
            num_tensor_features=num_tensor_features,
            scalar_embed_mlp_hidden_layers_width=mlp_width,
            allegro_mlp_hidden_layers_width=mlp_width,
            readout_mlp_hidden_layers_width=mlp_width // 2,
        )
