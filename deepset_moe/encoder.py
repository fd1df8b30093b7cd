"""phi: the local, rotation-invariant encoder of each atom's environment.

For centre atom i and its neighbours j within the cutoff (edge vector r_ij = pos_j - pos_i):

1. Atomic density in C channels, each channel mixing radial shape and neighbour species:

       A_{i,c,l,m} = 1/N_avg * sum_j R_{c,l}(r_ij) * w_c(z_j) * Y_lm(r_ij / |r_ij|)

   with R an e3nn ``FullyConnectedNet`` (bias-free, variance-preserving) of the enveloped
   Bessel basis, so R -> 0 smoothly at the cutoff; w an embedding of the neighbour's element;
   Y the real spherical harmonics of e3nn (``component`` normalisation) up to ``l_max``.
2. Rotation invariants (an ACE/SOAP-like power spectrum): the scalar density A_{i,c,0,0}
   and, for every l and channel pair c <= c',

       B_{i,c,c',l} = 1/(2l+1) * sum_m A_{i,c,l,m} A_{i,c',l,m},

   invariant because the real Wigner-D matrices are orthogonal within each l.
3. latent_i = MLP([A_{i,:,0,0}, B_i, embedding(z_i)]), width F.
4. Optional invariant interactions refine the latent from neighbours' latents.

With a ``many_body_cutoff`` r_mb < r_c, a second density A^mb weights each edge by a second
polynomial envelope u(r_ij / r_mb) as well; the power spectrum, the latent and the interactions
are computed from it (neighbours beyond r_mb do not reach them), while the scalar densities in
the invariants (the pair term's, body order 2) keep the full cutoff.

Every operation is a smooth function of the edge vectors inside the cutoff, sums over
neighbours (permutation invariant) and uses only relative positions (translation invariant).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from e3nn import o3
from e3nn.nn import FullyConnectedNet
from torch import Tensor, nn

from deepset_moe.config import DeepSetMoEConfig
from deepset_moe.mlp import build_mlp
from deepset_moe.radial import BesselBasis, PolynomialEnvelope
from deepset_moe.species import SpeciesIndex
from kernels.segment_sum import segment_sum_index


class EncodedAtoms(NamedTuple):
    """Outputs of :meth:`PowerSpectrumEncoder.encode` (shapes there)."""

    latent: Tensor
    invariants: Tensor
    species: Tensor


class InvariantInteraction(nn.Module):
    """One invariant message-passing refinement of the latent (residual update).

    m_i = 1/N_avg * sum_j R(r_ij) * (W h_j),  h_i <- h_i + MLP([h_i, m_i]),
    with R a bias-free linear map of the enveloped radial basis (vanishes at the cutoff).
    """

    def __init__(self, latent_dim: int, num_radial: int, avg_num_neighbors: float) -> None:
        super().__init__()
        self.radial = build_mlp([num_radial, latent_dim], bias=False)
        self.message = build_mlp([latent_dim, latent_dim], bias=False)
        self.update = build_mlp([2 * latent_dim, latent_dim, latent_dim])
        self.avg_num_neighbors = float(avg_num_neighbors)

    def forward(self, latent: Tensor, basis: Tensor, edge_index: Tensor) -> Tensor:
        """latent [N, F], basis [E, num_radial], edge_index [2, E] -> [N, F]."""
        source, target = edge_index
        messages = self.radial(basis) * self.message(latent)[source]
        pooled = segment_sum_index(messages, target, latent.shape[0]) / self.avg_num_neighbors
        return latent + self.update(torch.cat([latent, pooled], dim=-1))


class PowerSpectrumEncoder(nn.Module):
    """phi: per-atom invariant latent [N, F] from species and edge vectors (module docstring)."""

    def __init__(self, config: DeepSetMoEConfig) -> None:
        super().__init__()
        self.l_max = config.l_max
        self.num_channels = config.num_channels
        self.avg_num_neighbors = float(config.avg_num_neighbors)
        num_species = len(config.atomic_numbers)
        channels = config.num_channels

        self.species_index = SpeciesIndex(config.atomic_numbers)
        self.basis = BesselBasis(config.cutoff, config.num_radial, config.envelope_exponent)
        self.many_body_envelope = (
            None
            if config.many_body_cutoff is None
            else PolynomialEnvelope(config.many_body_cutoff, config.envelope_exponent)
        )
        self.radial = FullyConnectedNet(
            [config.num_radial, config.radial_hidden, channels * (config.l_max + 1)],
            act=torch.nn.functional.silu,
        )
        self.neighbour_embedding = nn.Embedding(num_species, channels)
        self.centre_embedding = nn.Embedding(num_species, config.species_dim)
        self.irreps = o3.Irreps.spherical_harmonics(config.l_max)

        pair_first, pair_second = torch.triu_indices(channels, channels)
        self.register_buffer("pair_first", pair_first, persistent=False)
        self.register_buffer("pair_second", pair_second, persistent=False)

        # width of invariants(): C scalar densities, then the power spectrum
        self.num_invariants = channels + pair_first.numel() * (config.l_max + 1)
        self.mlp = build_mlp(
            [self.num_invariants + config.species_dim, config.encoder_hidden, config.latent_dim]
        )
        self.interactions = nn.ModuleList(
            InvariantInteraction(config.latent_dim, config.num_radial, config.avg_num_neighbors)
            for _ in range(config.num_interactions)
        )

    def density(
        self,
        species: Tensor,
        vectors: Tensor,
        edge_index: Tensor,
        basis: Tensor,
        edge_weights: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Atomic density A [N, C, (l_max+1)^2] (step 1 of the module docstring). With
        ``edge_weights`` [E]: the scalar densities A_{i,c,0,0} of all edges, [N, C], and the
        density of the weighted edges, [N, C, (l_max+1)^2] (one segment sum for both)."""
        source, target = edge_index
        num_edges, num_atoms = vectors.shape[0], species.shape[0]
        radial = self.radial(basis).view(num_edges, self.num_channels, self.l_max + 1)
        channel_weights = self.neighbour_embedding(species[source]) / self.avg_num_neighbors
        radial = radial * channel_weights.unsqueeze(-1)
        harmonics = o3.spherical_harmonics(
            self.irreps, vectors, normalize=True, normalization="component"
        )
        edge_density = torch.cat(
            [
                radial[:, :, l : l + 1] * harmonics[:, None, l * l : (l + 1) * (l + 1)]
                for l in range(self.l_max + 1)
            ],
            dim=-1,
        )
        num_m = (self.l_max + 1) ** 2
        edge_density = edge_density.reshape(num_edges, self.num_channels * num_m)
        if edge_weights is None:
            density = segment_sum_index(edge_density, target, num_atoms)
            return density.view(num_atoms, self.num_channels, num_m)
        scalars = edge_density[:, ::num_m]  # the l = 0 column of each channel, [E, C]
        both = torch.cat([scalars, edge_density * edge_weights.unsqueeze(-1)], dim=-1)
        summed = segment_sum_index(both, target, num_atoms)
        near = summed[:, self.num_channels :].view(num_atoms, self.num_channels, num_m)
        return summed[:, : self.num_channels], near

    def invariant_width(self, body_order: int) -> int:
        """How many leading columns of :meth:`invariants` are of body order <= ``body_order``:
        the C scalar densities (2-body) for 2, every invariant (the power spectrum is 3-body)
        for 3."""
        return self.num_channels if body_order == 2 else self.num_invariants

    def invariants(self, density: Tensor) -> Tensor:
        """Scalar densities and power spectrum, [N, C + C(C+1)/2 * (l_max+1)] (step 2)."""
        features = [density[:, :, 0]]
        for l in range(self.l_max + 1):
            block = density[:, :, l * l : (l + 1) * (l + 1)]
            gram = torch.einsum("ncm,ndm->ncd", block, block) / (2 * l + 1)
            features.append(gram[:, self.pair_first, self.pair_second])
        return torch.cat(features, dim=-1)

    def forward(self, z: Tensor, vectors: Tensor, lengths: Tensor, edge_index: Tensor) -> Tensor:
        """Per-atom latent [N, latent_dim] (the first output of :meth:`encode`)."""
        return self.encode(z, vectors, lengths, edge_index).latent

    def encode(
        self, z: Tensor, vectors: Tensor, lengths: Tensor, edge_index: Tensor
    ) -> EncodedAtoms:
        """Per-atom latent with the invariants and species indices it was computed from.

        Args:
            z: [N] atomic numbers.
            vectors: [E, 3] edge vectors pos_j - pos_i (Å), differentiable.
            lengths: [E] edge lengths (Å).
            edge_index: [2, E] (source j, target i) from ``radius_graph``.

        Returns:
            :class:`EncodedAtoms`: ``latent`` [N, latent_dim] (rotation-, translation- and
            permutation-invariant), ``invariants`` [N, num_invariants] (step 2: the C scalar
            densities first, then the power spectrum) and ``species`` [N] (row indices of
            ``atomic_numbers``).
        """
        species = self.species_index(z)
        basis = self.basis(lengths)
        if self.many_body_envelope is None:
            density = self.density(species, vectors, edge_index, basis)
            invariants = many_body = self.invariants(density)
        else:
            near = self.many_body_envelope(lengths)
            scalars, near_density = self.density(species, vectors, edge_index, basis, near)
            many_body = self.invariants(near_density)
            invariants = torch.cat([scalars, many_body[:, self.num_channels :]], dim=-1)
            basis = basis * near.unsqueeze(-1)
        latent = self.mlp(torch.cat([many_body, self.centre_embedding(species)], dim=-1))
        for interaction in self.interactions:
            latent = interaction(latent, basis, edge_index)
        return EncodedAtoms(latent, invariants, species)
