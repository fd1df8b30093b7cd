"""MACE (Batatia et al., NeurIPS 2022) from ``mace-torch``, fed with the shared radius graph.

``mace.modules.ScaleShiftMACE`` is built directly in Python (no ``mace_run_train``) and called
with a MACE data dictionary assembled from our batch: one-hot ``node_attrs`` over the model's
elements, ``edge_index`` from :func:`deepset_moe.graph.radius_graph` (the same sender/receiver
convention as MACE), zero ``shifts`` (molecules are not periodic). MACE's own atomic energies
are zero and its shift is zero, because E0 is added outside the network; ``atomic_inter_scale``
may be set to the force RMS of the training data, as MACE does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from e3nn import o3
from mace.modules import ScaleShiftMACE, interaction_classes
from torch import Tensor

from baselines.base import DEFAULT_ELEMENTS, AtomisticBaseline, seeded
from deepset_moe.graph import radius_graph


class MACEPotential(AtomisticBaseline):
    """MACE energy model; ``forward(batch)`` per :class:`AtomisticBaseline`.

    Args:
        cutoff: r_max in Å (polynomial cutoff of order ``num_polynomial_cutoff``).
        hidden_irreps: node feature irreps, e.g. ``"64x0e + 64x1o"``.
        max_ell: highest spherical-harmonic order of the edge attributes.
        correlation: body order of the symmetric contraction minus one.
        num_interactions: message-passing layers.
        num_bessel: radial Bessel functions.
        num_polynomial_cutoff: exponent of the polynomial envelope.
        radial_mlp: hidden widths of the radial MLP.
        mlp_irreps: hidden irreps of the non-linear last readout.
        avg_num_neighbors: normalisation of the neighbour sums (typical count within r_max).
        atomic_inter_scale: scale of the per-atom interaction energy (eV).
        interaction: MACE interaction block class name (``mace.modules.interaction_classes``).
        elements: atomic numbers the model accepts (one-hot channels).
        seed: initialisation seed.
    """

    def __init__(
        self,
        cutoff: float = 5.0,
        hidden_irreps: str = "64x0e + 64x1o",
        max_ell: int = 2,
        correlation: int = 3,
        num_interactions: int = 2,
        num_bessel: int = 8,
        num_polynomial_cutoff: int = 5,
        radial_mlp: Sequence[int] = (64, 64, 64),
        mlp_irreps: str = "16x0e",
        avg_num_neighbors: float = 12.0,
        atomic_inter_scale: float = 1.0,
        interaction: str = "RealAgnosticResidualInteractionBlock",
        elements: Sequence[int] = DEFAULT_ELEMENTS,
        seed: int = 0,
    ) -> None:
        if interaction not in interaction_classes:
            raise ValueError(
                f"unknown MACE interaction {interaction!r}; choose one of "
                f"{sorted(interaction_classes)}"
            )
        super().__init__(cutoff, elements)
        with seeded(seed):
            self.mace = ScaleShiftMACE(
                r_max=cutoff,
                num_bessel=num_bessel,
                num_polynomial_cutoff=num_polynomial_cutoff,
                max_ell=max_ell,
                interaction_cls=interaction_classes[interaction],
                interaction_cls_first=interaction_classes[interaction],
                num_interactions=num_interactions,
                num_elements=len(self.element_index),
                hidden_irreps=o3.Irreps(hidden_irreps),
                MLP_irreps=o3.Irreps(mlp_irreps),
                atomic_energies=np.zeros(len(self.element_index)),
                avg_num_neighbors=avg_num_neighbors,
                atomic_numbers=list(self.element_index.elements),
                correlation=correlation,
                gate=torch.nn.functional.silu,
                radial_MLP=list(radial_mlp),
                atomic_inter_scale=atomic_inter_scale,
                atomic_inter_shift=0.0,
            )

    def atomic_energies(self, z: Tensor, pos: Tensor, batch: Tensor, ptr: Tensor) -> Tensor:
        edge_index = radius_graph(pos, ptr, self.cutoff)
        node_attrs = torch.nn.functional.one_hot(self.element_index(z), len(self.element_index)).to(
            pos.dtype
        )
        data = {
            "positions": pos,
            "node_attrs": node_attrs,
            "edge_index": edge_index,
            "shifts": pos.new_zeros(edge_index.shape[1], 3),
            "batch": batch,
            "ptr": ptr,
            "cell": pos.new_zeros(ptr.numel() - 1, 3, 3),
        }
        out = self.mace(data, training=self.training, compute_force=False)
        return out["node_energy"].to(pos.dtype)
