"""The one radius-graph utility shared by DeepSet-MoE and every baseline.

Molecules in GMD-26 are small (at most a few dozen atoms) and non-periodic, so the graph is
built exactly by enumerating every ordered atom pair *inside each molecule* of the batch
(sum_b n_b^2 pairs, never N^2 across the batch) and keeping those closer than the cutoff.
Graph construction is not differentiated; edge vectors are recomputed from ``pos`` by the
models so that forces flow through them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def intra_molecule_pairs(ptr: Tensor) -> tuple[Tensor, Tensor]:
    """All ordered pairs (i, j), i != j, of atoms that belong to the same molecule.

    Args:
        ptr: [B+1] long, CSR offsets of the molecules in the flat atom arrays.

    Returns:
        ``(first, second)``, each [P] long with P = sum_b n_b (n_b - 1), grouped by molecule
        and ordered by ``first`` then ``second`` inside each molecule.
    """
    counts = ptr[1:] - ptr[:-1]
    pairs_per_molecule = counts * counts
    total = int(pairs_per_molecule.sum())
    device = ptr.device
    if total == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    molecule = torch.repeat_interleave(
        torch.arange(counts.numel(), device=device), pairs_per_molecule
    )
    pair_start = torch.cumsum(pairs_per_molecule, 0) - pairs_per_molecule
    local = torch.arange(total, device=device) - pair_start[molecule]
    n = counts[molecule]
    first = ptr[molecule] + torch.div(local, n, rounding_mode="floor")
    second = ptr[molecule] + local % n
    keep = first != second
    return first[keep], second[keep]


@torch.no_grad()
def radius_graph(pos: Tensor, ptr: Tensor, cutoff: float) -> Tensor:
    """Directed neighbour list within ``cutoff`` (Å), restricted to each molecule.

    Args:
        pos: [N, 3] positions in Å.
        ptr: [B+1] long CSR offsets of the molecules.
        cutoff: radius in Å; pairs with distance strictly below it are kept.

    Returns:
        ``edge_index`` [2, E] long in the PyG convention: row 0 is the source (neighbour j),
        row 1 the target (centre i), so messages flow ``edge_index[0] -> edge_index[1]``.
        Both directions of every pair are present; edges are sorted by target.
    """
    centre, neighbour = intra_molecule_pairs(ptr)
    distance = (pos[neighbour] - pos[centre]).norm(dim=-1)
    keep = distance < cutoff
    return torch.stack([neighbour[keep], centre[keep]])


def edge_vectors(pos: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
    """Differentiable edge vectors r_ij = pos[j] - pos[i] (Å) and lengths.

    Args:
        pos: [N, 3] positions (may require grad).
        edge_index: [2, E] from :func:`radius_graph` (source j, target i).

    Returns:
        ``(vectors [E, 3], lengths [E])`` in Å.
    """
    source, target = edge_index
    vectors = pos[source] - pos[target]
    return vectors, vectors.norm(dim=-1)
