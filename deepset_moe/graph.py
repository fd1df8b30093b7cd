"""The one radius-graph utility shared by DeepSet-MoE and every baseline.

Molecules in GMD-26 are small (at most a few dozen atoms) and non-periodic, so the graph is
built exactly by enumerating every ordered atom pair *inside each molecule* of the batch
(sum_b n_b^2 pairs, never N^2 across the batch) and keeping those closer than the cutoff.
Graph construction is not differentiated; edge vectors are recomputed from ``pos`` by the
models so that forces flow through them.

Because every model builds its graph here, this is also where model inputs are checked:
non-finite coordinates and overlapping atoms (closer than
:data:`deepset_moe.batch.MIN_DISTANCE`) raise :class:`deepset_moe.batch.GeometryError` naming
the molecule and the atoms, whatever built the batch. The check reuses the pair distances the
graph needs (one extra device synchronisation).
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor

from deepset_moe.batch import MIN_DISTANCE, GeometryError, geometry_problem


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

    Raises:
        GeometryError: an atom with non-finite coordinates, or two atoms of one molecule
            closer than :data:`~deepset_moe.batch.MIN_DISTANCE`; the message names the
            molecule (its index in the batch) and the atoms (indices inside the molecule).
    """
    centre, neighbour = intra_molecule_pairs(ptr)
    distance = (pos[neighbour] - pos[centre]).norm(dim=-1)
    # NaN distances fail ">=", so one reduction finds overlaps and non-finite atoms in pairs;
    # the isfinite term covers atoms without a partner (a lone atom).
    bad = (~(distance >= MIN_DISTANCE)).any() | (~torch.isfinite(pos)).any()
    if bool(bad):
        _raise_geometry_error(pos, ptr)
    keep = distance < cutoff
    return torch.stack([neighbour[keep], centre[keep]])


def _raise_geometry_error(pos: Tensor, ptr: Tensor) -> None:
    """Find the first molecule whose geometry cannot be evaluated and raise its error."""
    bounds = ptr.tolist()
    for molecule, (start, end) in enumerate(pairwise(bounds)):
        problem = geometry_problem(pos[start:end], f"molecule {molecule} of the batch", molecule)
        if problem is not None:
            raise problem
    raise GeometryError("non-finite or overlapping atoms outside every molecule of the batch")


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
