"""PaiNN, the polarizable atom interaction neural network (Schütt, Unke, Gastegger, ICML 2021).

Written from the paper (schnetpack 2.1.1, its reference implementation, does not install with
torch 2.13). Every atom carries scalar features s_i [F] and vector features v_i [3, F]
(v_i = 0 at the start). Each layer is a message block followed by an update block:

message (eq. 7-8), over neighbours j of i with r_ij = pos_j - pos_i:
    (a, b, c) = phi(s_j) * W(|r_ij|),  phi = Linear-SiLU-Linear,  W = Linear(rbf) * f_cut
    s_i += sum_j a
    v_i += sum_j b * v_j + c * r_ij / |r_ij|

update (eq. 9-11), per atom, with U, V linear maps over the feature axis:
    (a_vv, a_sv, a_ss) = MLP(s_i, ||V v_i||)
    v_i += a_vv * U v_i
    s_i += a_sv * <U v_i, V v_i> + a_ss

rbf_n(r) = sin(n pi r / r_c) / r (n = 1..R), f_cut the cosine cutoff; the atomic energy is an
MLP of the final scalar features. Energies in eV, lengths in Å.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from baselines.base import DEFAULT_ELEMENTS, AtomisticBaseline, seeded
from deepset_moe.graph import edge_vectors, radius_graph
from kernels.segment_sum import segment_sum_index

VECTOR_NORM_EPS = 1e-8
"""Added under the square root of ||V v||^2 so that its gradient stays finite at v = 0."""


class SineRadialBasis(nn.Module):
    """rbf_n(r) = sin(n pi r / r_c) / r for n = 1..num_radial; [E] Å -> [E, num_radial]."""

    def __init__(self, num_radial: int, cutoff: float) -> None:
        super().__init__()
        self.register_buffer(
            "frequencies", torch.arange(1, num_radial + 1, dtype=torch.float32) * math.pi / cutoff
        )

    def forward(self, length: Tensor) -> Tensor:
        return torch.sin(length.unsqueeze(-1) * self.frequencies) / length.unsqueeze(-1)


def cosine_cutoff(length: Tensor, cutoff: float) -> Tensor:
    """f(r) = (cos(pi r / r_c) + 1) / 2 for r < r_c, else 0; value and slope vanish at r_c."""
    return 0.5 * (torch.cos(length * math.pi / cutoff) + 1.0) * (length < cutoff)


class PaiNNMessage(nn.Module):
    """Equivariant message block: neighbour features filtered by the edge (eq. 7-8)."""

    def __init__(self, features: int, num_radial: int) -> None:
        super().__init__()
        self.features = features
        self.context = nn.Sequential(
            nn.Linear(features, features), nn.SiLU(), nn.Linear(features, 3 * features)
        )
        self.filter = nn.Linear(num_radial, 3 * features)

    def forward(
        self,
        s: Tensor,
        v: Tensor,
        edge_index: Tensor,
        radial: Tensor,
        envelope: Tensor,
        direction: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Updated ``(s [N, F], v [N, 3, F])``; radial [E, R], envelope [E], direction [E, 3]."""
        source, target = edge_index
        num_nodes, num_edges = s.shape[0], source.numel()
        weights = self.context(s)[source] * self.filter(radial) * envelope.unsqueeze(-1)
        ds, dvv, dvs = weights.split(self.features, dim=-1)
        dv = dvv.unsqueeze(1) * v[source] + dvs.unsqueeze(1) * direction.unsqueeze(-1)
        s = s + segment_sum_index(ds, target, num_nodes)
        dv_sum = segment_sum_index(dv.reshape(num_edges, 3 * self.features), target, num_nodes)
        return s, v + dv_sum.reshape(v.shape)


class PaiNNUpdate(nn.Module):
    """Per-atom update block coupling scalars and vector norms / inner products (eq. 9-11)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = features
        self.vector_mix = nn.Linear(features, 2 * features, bias=False)
        self.scalar_net = nn.Sequential(
            nn.Linear(2 * features, features), nn.SiLU(), nn.Linear(features, 3 * features)
        )

    def forward(self, s: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Updated ``(s [N, F], v [N, 3, F])``."""
        uv, vv = self.vector_mix(v).split(self.features, dim=-1)
        vv_norm = torch.sqrt((vv * vv).sum(dim=1) + VECTOR_NORM_EPS)
        a_vv, a_sv, a_ss = self.scalar_net(torch.cat([s, vv_norm], dim=-1)).split(
            self.features, dim=-1
        )
        v = v + a_vv.unsqueeze(1) * uv
        s = s + a_sv * (uv * vv).sum(dim=1) + a_ss
        return s, v


class PaiNNPotential(AtomisticBaseline):
    """PaiNN energy model; ``forward(batch)`` per :class:`AtomisticBaseline`.

    Args:
        cutoff: interaction radius in Å.
        features: F, width of scalar and vector features.
        num_layers: message + update blocks.
        num_radial: R, sine radial basis size.
        elements: atomic numbers the model accepts.
        seed: initialisation seed.
    """

    def __init__(
        self,
        cutoff: float = 5.0,
        features: int = 96,
        num_layers: int = 3,
        num_radial: int = 20,
        elements: Sequence[int] = DEFAULT_ELEMENTS,
        seed: int = 0,
    ) -> None:
        super().__init__(cutoff, elements)
        with seeded(seed):
            self.embedding = nn.Embedding(len(self.element_index), features)
            self.radial_basis = SineRadialBasis(num_radial, cutoff)
            self.messages = nn.ModuleList(
                PaiNNMessage(features, num_radial) for _ in range(num_layers)
            )
            self.updates = nn.ModuleList(PaiNNUpdate(features) for _ in range(num_layers))
            self.readout = nn.Sequential(
                nn.Linear(features, features // 2), nn.SiLU(), nn.Linear(features // 2, 1)
            )

    def atomic_energies(self, z: Tensor, pos: Tensor, batch: Tensor, ptr: Tensor) -> Tensor:
        edge_index = radius_graph(pos, ptr, self.cutoff)
        vectors, lengths = edge_vectors(pos, edge_index)
        radial = self.radial_basis(lengths)
        envelope = cosine_cutoff(lengths, self.cutoff)
        direction = vectors / lengths.unsqueeze(-1)

        s = self.embedding(self.element_index(z))
        v = s.new_zeros(s.shape[0], 3, s.shape[1])
        for message, update in zip(self.messages, self.updates, strict=True):
            s, v = message(s, v, edge_index, radial, envelope, direction)
            s, v = update(s, v)
        return self.readout(s).squeeze(-1)
