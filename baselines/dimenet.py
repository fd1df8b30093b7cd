"""DimeNet++ (Gasteiger et al., 2020) from PyTorch Geometric, on the shared radius graph.

``torch_geometric.nn.models.DimeNetPlusPlus.forward`` builds its own graph (torch-cluster) and
its triplets (torch-sparse). :class:`DimeNetPlusPlusPotential` subclasses it and replaces only
that front end: edges from :func:`deepset_moe.graph.radius_graph`, triplets from
:func:`edge_triplets` (pure PyTorch), then PyG's own basis, embedding, interaction and output
blocks exactly as in its forward. The per-atom output of the output blocks is the atomic energy.

The output layers are initialised with PyG's ``glorot_orthogonal`` option scaled by
``output_init_scale`` (0.1) instead of PyG's default zeros. Zeros make E = 0 and F = 0 for every
input at the start, which hides a broken force path; the unscaled option gives initial forces
of ~10-100 eV/Å on small molecules, the scaled one ~1 eV/Å like the other baselines.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch_geometric.nn.models import DimeNetPlusPlus

from baselines.base import DEFAULT_ELEMENTS, AtomisticBaseline, seeded
from deepset_moe.graph import radius_graph


def edge_triplets(edge_index: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """All pairs of edges (k -> j, j -> i) with k != i: the angles DimeNet passes messages over.

    Args:
        edge_index: [2, E] directed edges, row 0 source, row 1 target.
        num_nodes: N.

    Returns:
        ``(idx_kj, idx_ji)``, each [T] long: for triplet t, edge ``idx_kj[t]`` ends where edge
        ``idx_ji[t]`` starts.
    """
    source, target = edge_index
    by_target = torch.argsort(target, stable=True)
    in_degree = torch.bincount(target, minlength=num_nodes)
    first_in = torch.cumsum(in_degree, 0) - in_degree
    per_edge = in_degree[source]
    idx_ji = torch.repeat_interleave(torch.arange(source.numel(), device=source.device), per_edge)
    offset = torch.arange(idx_ji.numel(), device=source.device) - torch.repeat_interleave(
        torch.cumsum(per_edge, 0) - per_edge, per_edge
    )
    idx_kj = by_target[first_in[source[idx_ji]] + offset]
    keep = source[idx_kj] != target[idx_ji]
    return idx_kj[keep], idx_ji[keep]


class DimeNetPlusPlusPotential(AtomisticBaseline):
    """DimeNet++ energy model; ``forward(batch)`` per :class:`AtomisticBaseline`.

    Args:
        cutoff: radius in Å (DimeNet's polynomial envelope with ``envelope_exponent``).
        hidden_channels, out_emb_channels, int_emb_size, basis_emb_size: block widths.
        num_blocks: interaction blocks.
        num_spherical, num_radial: spherical and radial basis sizes.
        envelope_exponent: smoothness of the envelope at the cutoff.
        output_init_scale: factor on the glorot-orthogonal initial output-layer weights.
        elements: atomic numbers the model accepts.
        seed: initialisation seed.
    """

    def __init__(
        self,
        cutoff: float = 5.0,
        hidden_channels: int = 64,
        out_emb_channels: int = 128,
        int_emb_size: int = 32,
        basis_emb_size: int = 8,
        num_blocks: int = 3,
        num_spherical: int = 7,
        num_radial: int = 6,
        envelope_exponent: int = 5,
        output_init_scale: float = 0.1,
        elements: Sequence[int] = DEFAULT_ELEMENTS,
        seed: int = 0,
    ) -> None:
        super().__init__(cutoff, elements)
        with seeded(seed):
            self.dimenet = DimeNetPlusPlus(
                hidden_channels=hidden_channels,
                out_channels=1,
                num_blocks=num_blocks,
                int_emb_size=int_emb_size,
                basis_emb_size=basis_emb_size,
                out_emb_channels=out_emb_channels,
                num_spherical=num_spherical,
                num_radial=num_radial,
                cutoff=cutoff,
                envelope_exponent=envelope_exponent,
                output_initializer="glorot_orthogonal",
            )
        with torch.no_grad():
            for output_block in self.dimenet.output_blocks:
                output_block.lin.weight.mul_(output_init_scale)

    def atomic_energies(self, z: Tensor, pos: Tensor, batch: Tensor, ptr: Tensor) -> Tensor:
        self.element_index(z)
        net = self.dimenet
        num_nodes = z.numel()
        edge_index = radius_graph(pos, ptr, self.cutoff)
        j, i = edge_index
        idx_kj, idx_ji = edge_triplets(edge_index, num_nodes)
        idx_i, idx_j, idx_k = i[idx_ji], j[idx_ji], j[idx_kj]

        dist = (pos[i] - pos[j]).norm(dim=-1)
        pos_ij, pos_jk = pos[idx_i] - pos[idx_j], pos[idx_j] - pos[idx_k]
        cosine_part = (pos_ij * pos_jk).sum(dim=-1)
        sine_part = torch.cross(pos_ij, pos_jk, dim=1).norm(dim=-1)
        angle = torch.atan2(sine_part, cosine_part)

        rbf = net.rbf(dist)
        sbf = net.sbf(dist, angle, idx_kj)
        x = net.emb(z, rbf, i, j)
        node_out = net.output_blocks[0](x, rbf, i, num_nodes=num_nodes)
        for interaction_block, output_block in zip(
            net.interaction_blocks, net.output_blocks[1:], strict=True
        ):
            x = interaction_block(x, rbf, sbf, idx_kj, idx_ji)
            node_out = node_out + output_block(x, rbf, i, num_nodes=num_nodes)
        return node_out.squeeze(-1)
