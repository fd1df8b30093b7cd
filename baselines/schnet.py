"""SchNet (Schütt et al., NeurIPS 2017) from PyTorch Geometric, on the shared radius graph.

``torch_geometric.nn.models.SchNet`` is used as is; its ``interaction_graph`` hook receives
:class:`SharedRadiusGraph`, so the neighbour list comes from :mod:`deepset_moe.graph` (PyG's own
``radius_graph`` would need torch-cluster / pyg-lib). The per-atom energies are the output of
SchNet's atom-wise layers (``lin1 -> act -> lin2``) before its sum readout: the steps of
``SchNet.forward`` up to the readout, applied to its own submodules.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch_geometric.nn.models import SchNet

from baselines.base import DEFAULT_ELEMENTS, AtomisticBaseline, seeded
from deepset_moe.graph import edge_vectors, radius_graph


class SharedRadiusGraph(nn.Module):
    """SchNet's ``interaction_graph`` hook: ``(pos, batch) -> (edge_index, edge_length)``."""

    def __init__(self, cutoff: float) -> None:
        super().__init__()
        self.cutoff = cutoff

    def forward(self, pos: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
        """Edges [2, E] within the cutoff (atoms sorted by molecule) and their lengths [E] (Å)."""
        counts = batch.bincount()
        ptr = nn.functional.pad(counts.cumsum(0), (1, 0))
        edge_index = radius_graph(pos, ptr, self.cutoff)
        return edge_index, edge_vectors(pos, edge_index)[1]


class SchNetPotential(AtomisticBaseline):
    """SchNet energy model; ``forward(batch)`` per :class:`AtomisticBaseline`.

    Args:
        cutoff: interaction radius in Å (cosine cutoff of the continuous filters).
        hidden_channels: atom feature width.
        num_filters: continuous-filter width.
        num_interactions: interaction blocks.
        num_gaussians: Gaussian radial basis size.
        elements: atomic numbers the model accepts.
        seed: initialisation seed.
    """

    def __init__(
        self,
        cutoff: float = 5.0,
        hidden_channels: int = 128,
        num_filters: int = 128,
        num_interactions: int = 4,
        num_gaussians: int = 50,
        elements: Sequence[int] = DEFAULT_ELEMENTS,
        seed: int = 0,
    ) -> None:
        super().__init__(cutoff, elements)
        with seeded(seed):
            self.schnet = SchNet(
                hidden_channels=hidden_channels,
                num_filters=num_filters,
                num_interactions=num_interactions,
                num_gaussians=num_gaussians,
                cutoff=cutoff,
                interaction_graph=SharedRadiusGraph(cutoff),
            )

    def atomic_energies(self, z: Tensor, pos: Tensor, batch: Tensor, ptr: Tensor) -> Tensor:
        self.element_index(z)
        net = self.schnet
        edge_index, edge_length = net.interaction_graph(pos, batch)
        h = net.embedding(z)
        edge_attr = net.distance_expansion(edge_length)
        for interaction in net.interactions:
            h = h + interaction(h, edge_index, edge_length, edge_attr)
        return net.lin2(net.act(net.lin1(h))).squeeze(-1)
