"""GemNet-OC (Gasteiger et al., TMLR 2022) and EquiformerV2 (Liao et al., ICLR 2024) from
``fairchem-core`` 1.3.0, fed with the shared radius graph.

The fairchem backbones are built directly in Python (no YAML / trainer) with
``otf_graph=False`` and ``use_pbc=False``: fairchem then reads ``edge_index`` (row 0 source j,
row 1 target i, the same convention as :func:`deepset_moe.graph.radius_graph`) from a PyG
``Data`` object, takes edge vectors ``pos[j] - pos[i]`` from our differentiable positions and
sets every cell offset to zero, so no cell is needed for our non-periodic molecules. Both are
built with ``regress_forces=False``: the per-atom energies come from the model's own energy
layers and :class:`baselines.base.AtomisticBaseline` differentiates them (DESIGN.md: forces are
always -dE/dpos, never a direct force head).

Two fairchem behaviours are adapted, each in one place:

* Both models fail on graphs that lack some kind of interaction: EquiformerV2 on a graph
  without edges, GemNet-OC on one without triplets (e.g. only atom pairs), and GemNet-OC raises
  ``"An image has no neighbors"`` for any image without edges. Energies of isolated atoms and
  of atom pairs need such graphs, so every graph gets a ghost molecule (four H atoms, all
  bonded, joined to no real atom; :func:`_add_ghost_molecule`) whose outputs are dropped.
  Nothing couples disconnected atoms in either model, so the real atoms' energies are
  unchanged. GemNet-OC uses the image sizes ``natoms`` only to count edges per image, so the
  batch is handed over as one image (molecules stay separate because no edge joins them).
* EquiformerV2 builds each edge's SO(2) frame from a *random* reference vector and detaches
  the frame and its Wigner-D matrices from the autograd graph (fine for its direct-force head,
  wrong for forces by autograd). :class:`ConservativeEquiformerV2` uses a fixed reference
  (:func:`edge_frames`) and keeps the Wigner-D matrices differentiable
  (:class:`DifferentiableSO3Rotation`), so forces are the exact gradient of a deterministic
  energy. The model stays only approximately rotation-equivariant: its S2 activations act on
  a finite sphere grid, so the choice of frame around each edge changes the output slightly.
  It has no cutoff envelope: energies jump when an atom crosses the cutoff.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch_geometric.data import Data

from baselines.base import DEFAULT_ELEMENTS, AtomisticBaseline, seeded
from deepset_moe.graph import radius_graph

FAIRCHEM_INSTALL = (
    "pip install -c constraints.txt --no-build-isolation torch-scatter torch-sparse && "
    "pip install -c constraints.txt --no-deps fairchem-core==1.3.0 && "
    "pip install -c constraints.txt lmdb numba orjson pyyaml requests"
)
"""The install steps of the optional ``fairchem`` extra: torch-scatter and torch-sparse compile
from source against the installed torch; fairchem-core is installed without its requirements
(they would replace numpy and pull in trainer-only packages) plus what its model modules import."""

try:
    from e3nn import o3
    from fairchem.core.models.equiformer_v2.equiformer_v2 import EquiformerV2Backbone
    from fairchem.core.models.equiformer_v2.heads.scalar import EqV2ScalarHead
    from fairchem.core.models.equiformer_v2.so3 import SO3_Rotation
    from fairchem.core.models.equiformer_v2.wigner import wigner_D
    from fairchem.core.models.gemnet_oc.gemnet_oc import GemNetOCBackbone
except ImportError as error:
    raise ImportError(
        f"the fairchem baselines (gemnet, equiformer_v2) need fairchem-core 1.3.0 and its "
        f"compiled dependencies ({error}); install them with: {FAIRCHEM_INSTALL}"
    ) from error


def _fairchem_data(
    atomic_numbers: Tensor, pos: Tensor, batch: Tensor, natoms: Tensor, edge_index: Tensor
) -> Data:
    """The PyG batch fairchem 1.x models read (``tags`` 0: every atom takes part in GemNet-OC's
    quadruplets; ``sid`` only appears in fairchem's error messages)."""
    return Data(
        atomic_numbers=atomic_numbers,
        pos=pos,
        batch=batch,
        natoms=natoms,
        edge_index=edge_index,
        tags=torch.zeros_like(atomic_numbers),
        sid=torch.arange(natoms.numel()),
    )


GHOST_ATOMS = 4
"""Size of the ghost molecule appended to every graph handed to fairchem."""


def _add_ghost_molecule(
    channels: Tensor, pos: Tensor, batch: Tensor, edge_index: Tensor, edge_length: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Append a ghost molecule: ``GHOST_ATOMS`` H atoms (channel 0) on a regular tetrahedron
    with sides ``edge_length`` Å, all bonded to each other and to nothing else.

    It gives every graph edges, triplets and quadruplets, which fairchem's index code needs.
    The ghost atoms are the last ``GHOST_ATOMS`` atoms and the last molecule; their edges keep
    ``edge_index`` sorted by target. Ghost positions are constants (no force flows to them).

    Returns:
        Extended ``(channels, pos, batch, edge_index)``.
    """
    corners = pos.new_tensor([[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1, -1, 1]])
    target, source = torch.meshgrid(
        torch.arange(GHOST_ATOMS, device=pos.device),
        torch.arange(GHOST_ATOMS, device=pos.device),
        indexing="ij",
    )
    bonded = source != target
    ghost_edges = torch.stack([source[bonded], target[bonded]]) + channels.numel()
    molecule = int(batch.max()) + 1 if batch.numel() else 0
    return (
        torch.cat([channels, channels.new_zeros(GHOST_ATOMS)]),
        torch.cat([pos, corners * (edge_length / 8.0**0.5)]),
        torch.cat([batch, batch.new_full((GHOST_ATOMS,), molecule)]),
        torch.cat([edge_index, ghost_edges], dim=1),
    )


class GemNetOCPotential(AtomisticBaseline):
    """GemNet-OC energy model (``fairchem.core.models.gemnet_oc``); forward per
    :class:`AtomisticBaseline`.

    GemNet-OC's main, atom-edge and atom-atom graphs are the shared radius graph; the middle
    edges of quadruplets are its edges shorter than ``cutoff_qint`` (bonds by default, so
    quadruplets carry dihedral angles). No neighbour cap is applied. All interaction types are
    on (``quad_interaction=False`` is ~3x faster). fairchem's scale factors are left unfitted
    (identity); fairchem fits them on data with its ``fit_scaling.py``.

    Args:
        cutoff: radius in Å of the GemNet-OC graphs (polynomial envelope of order
            ``envelope_exponent``).
        cutoff_qint: radius in Å of the middle edge of quadruplets (a subgraph of the shared
            graph, with its own envelope). The quadruplet count grows with the square of the
            neighbour count, so on 25-atom molecules a full 5 Å quadruplet graph is ~15x
            slower than bonds only.
        num_blocks: interaction blocks.
        emb_size_atom, emb_size_edge: atom and edge embedding widths.
        emb_size_trip_in, emb_size_trip_out: triplet interaction widths (down/up projection).
        emb_size_quad_in, emb_size_quad_out: quadruplet interaction widths.
        emb_size_aint_in, emb_size_aint_out: atom-edge, edge-atom and atom-atom widths.
        emb_size_rbf, emb_size_cbf, emb_size_sbf: radial, circular, spherical basis widths.
        num_spherical, num_radial: basis sizes.
        num_before_skip, num_after_skip, num_concat, num_atom, num_output_afteratom,
        num_atom_emb_layers, num_global_out_layers: residual-layer counts (fairchem names).
        quad_interaction, atom_edge_interaction, edge_atom_interaction, atom_interaction:
            GemNet-OC's optional interaction types.
        envelope_exponent: exponent of the polynomial cutoff envelope.
        elements: atomic numbers the model accepts (embedding rows).
        seed: initialisation seed.
    """

    def __init__(
        self,
        cutoff: float = 5.0,
        cutoff_qint: float = 2.0,
        num_blocks: int = 3,
        emb_size_atom: int = 48,
        emb_size_edge: int = 48,
        emb_size_trip_in: int = 24,
        emb_size_trip_out: int = 24,
        emb_size_quad_in: int = 16,
        emb_size_quad_out: int = 16,
        emb_size_aint_in: int = 16,
        emb_size_aint_out: int = 16,
        emb_size_rbf: int = 16,
        emb_size_cbf: int = 16,
        emb_size_sbf: int = 16,
        num_spherical: int = 7,
        num_radial: int = 32,
        num_before_skip: int = 1,
        num_after_skip: int = 1,
        num_concat: int = 1,
        num_atom: int = 2,
        num_output_afteratom: int = 2,
        num_atom_emb_layers: int = 1,
        num_global_out_layers: int = 1,
        quad_interaction: bool = True,
        atom_edge_interaction: bool = True,
        edge_atom_interaction: bool = True,
        atom_interaction: bool = True,
        envelope_exponent: int = 5,
        elements: Sequence[int] = DEFAULT_ELEMENTS,
        seed: int = 0,
    ) -> None:
        super().__init__(cutoff, elements)
        with seeded(seed):
            self.gemnet = GemNetOCBackbone(
                num_spherical=num_spherical,
                num_radial=num_radial,
                num_blocks=num_blocks,
                emb_size_atom=emb_size_atom,
                emb_size_edge=emb_size_edge,
                emb_size_trip_in=emb_size_trip_in,
                emb_size_trip_out=emb_size_trip_out,
                emb_size_quad_in=emb_size_quad_in,
                emb_size_quad_out=emb_size_quad_out,
                emb_size_aint_in=emb_size_aint_in,
                emb_size_aint_out=emb_size_aint_out,
                emb_size_rbf=emb_size_rbf,
                emb_size_cbf=emb_size_cbf,
                emb_size_sbf=emb_size_sbf,
                num_before_skip=num_before_skip,
                num_after_skip=num_after_skip,
                num_concat=num_concat,
                num_atom=num_atom,
                num_output_afteratom=num_output_afteratom,
                num_atom_emb_layers=num_atom_emb_layers,
                num_global_out_layers=num_global_out_layers,
                regress_forces=False,
                direct_forces=False,
                use_pbc=False,
                otf_graph=False,
                cutoff=cutoff,
                cutoff_qint=cutoff_qint,
                envelope={"name": "polynomial", "exponent": envelope_exponent},
                quad_interaction=quad_interaction,
                atom_edge_interaction=atom_edge_interaction,
                edge_atom_interaction=edge_atom_interaction,
                atom_interaction=atom_interaction,
                num_elements=len(self.element_index),
            )

    def atomic_energies(self, z: Tensor, pos: Tensor, batch: Tensor, ptr: Tensor) -> Tensor:
        num_atoms = z.numel()
        # ghost bonds shorter than every GemNet-OC cutoff: each of its graphs gets edges
        ghost_bond = min(self.cutoff, self.gemnet.cutoff_qint) / 2
        channels, pos, batch, edge_index = _add_ghost_molecule(
            self.element_index(z), pos, batch, radius_graph(pos, ptr, self.cutoff), ghost_bond
        )
        # GemNet-OC embeds atomic number Z in row Z - 1: channel c is passed as c + 1
        natoms = channels.new_tensor([channels.numel()])
        data = _fairchem_data(channels + 1, pos, batch, natoms, edge_index)
        features = self.gemnet(data)["xs_E"]
        hidden = self.gemnet.out_mlp_E(torch.cat(features, dim=-1))
        return self.gemnet.out_energy(hidden).squeeze(-1)[:num_atoms]


def edge_frames(vectors: Tensor) -> Tensor:
    """Rotation matrices [E, 3, 3] taking each edge direction to +y (e3nn's polar axis).

    The frame around the edge is fixed by a constant reference direction (a second one, normal
    to the first, for edges within 26 degrees of it), so the frame is a deterministic, smooth
    function of the edge vector (except on that switching cone). Rows are (normal, direction,
    -binormal), the layout of fairchem's ``init_edge_rot_mat``; the determinant is +1.

    Args:
        vectors: [E, 3] edge vectors in Å (non-zero).
    """
    direction = vectors / vectors.norm(dim=-1, keepdim=True)
    first = vectors.new_tensor([1.0, 2.0, 3.0]) / 14.0**0.5
    second = vectors.new_tensor([3.0, 0.0, -1.0]) / 10.0**0.5
    aligned = (direction @ first).abs().unsqueeze(-1) > 0.9
    reference = torch.where(aligned, second, first)
    normal = torch.linalg.cross(direction, reference)
    normal = normal / normal.norm(dim=-1, keepdim=True)
    binormal = torch.linalg.cross(direction, normal)
    return torch.stack([normal, direction, -binormal], dim=1)


def wigner_matrices(rotations: Tensor, lmax: int) -> Tensor:
    """Block-diagonal real Wigner-D matrices [E, (lmax+1)^2, (lmax+1)^2] of ``rotations``.

    Same Euler-angle convention as fairchem's ``SO3_Rotation.RotationToWignerDMatrix`` (angles
    of the rotated y axis, then the residual rotation about it), but differentiable and in the
    dtype of ``rotations``.
    """
    alpha, beta = o3.xyz_to_angles(rotations @ rotations.new_tensor([0.0, 1.0, 0.0]))
    residual = o3.angles_to_matrix(alpha, beta, torch.zeros_like(alpha)).transpose(-1, -2)
    residual = residual @ rotations
    gamma = torch.atan2(residual[..., 0, 2], residual[..., 0, 0])
    size = (lmax + 1) ** 2
    wigner = rotations.new_zeros(rotations.shape[0], size, size)
    for degree in range(lmax + 1):
        start, end = degree**2, (degree + 1) ** 2
        wigner[:, start:end, start:end] = wigner_D(degree, alpha, beta, gamma)
    return wigner


class DifferentiableSO3Rotation(SO3_Rotation):
    """fairchem's ``SO3_Rotation`` with Wigner-D matrices kept in the autograd graph."""

    def set_wigner(self, rot_mat3x3: Tensor) -> None:
        self.device, self.dtype = rot_mat3x3.device, rot_mat3x3.dtype
        self.wigner = wigner_matrices(rot_mat3x3, self.lmax)
        self.wigner_inv = self.wigner.transpose(1, 2)


class ConservativeEquiformerV2(EquiformerV2Backbone):
    """EquiformerV2 backbone whose edge frames are deterministic and differentiable.

    The rotation helpers are replaced inside fairchem's shared ``SO3_rotation`` list, which
    every attention block and the edge-degree embedding hold by reference.
    """

    def __init__(self, **settings) -> None:
        super().__init__(**settings)
        for index, lmax in enumerate(self.lmax_list):
            self.SO3_rotation[index] = DifferentiableSO3Rotation(lmax)

    def _init_edge_rot_mat(self, data: Data, edge_index: Tensor, edge_distance_vec: Tensor):
        return edge_frames(edge_distance_vec)


class EquiformerV2Potential(AtomisticBaseline):
    """EquiformerV2 energy model (``fairchem.core.models.equiformer_v2``); forward per
    :class:`AtomisticBaseline`.

    Per-atom energies are the l=0 output of fairchem's scalar-head feed-forward network
    divided by ``avg_num_nodes`` (fairchem's normalisation of the summed energy).

    Args:
        cutoff: radius in Å of the graph and of the Gaussian distance basis (no envelope).
        num_layers: transformer blocks.
        sphere_channels: channels per spherical-harmonic coefficient.
        attn_hidden_channels, num_heads, attn_alpha_channels, attn_value_channels: SO(2)
            graph attention sizes.
        ffn_hidden_channels: feed-forward width.
        lmax, mmax: highest degree and order of the node features (one resolution).
        grid_resolution: sphere grid of the S2 activations (None: fairchem's default).
        edge_channels: hidden width of the radial networks.
        norm_type: fairchem normalisation (``"rms_norm_sh"``, ``"layer_norm_sh"``, ...).
        alpha_drop, drop_path_rate, proj_drop: dropout rates (training only).
        avg_degree: neighbour-count normalisation of the edge-degree embedding and messages.
        avg_num_nodes: divisor of the per-atom energies (typical molecule size).
        elements: atomic numbers the model accepts (embedding rows).
        seed: initialisation seed.
    """

    def __init__(
        self,
        cutoff: float = 5.0,
        num_layers: int = 4,
        sphere_channels: int = 16,
        attn_hidden_channels: int = 16,
        num_heads: int = 4,
        attn_alpha_channels: int = 8,
        attn_value_channels: int = 8,
        ffn_hidden_channels: int = 32,
        lmax: int = 4,
        mmax: int = 2,
        grid_resolution: int | None = None,
        edge_channels: int = 16,
        norm_type: str = "rms_norm_sh",
        alpha_drop: float = 0.0,
        drop_path_rate: float = 0.0,
        proj_drop: float = 0.0,
        avg_degree: float = 15.0,
        avg_num_nodes: float = 25.0,
        elements: Sequence[int] = DEFAULT_ELEMENTS,
        seed: int = 0,
    ) -> None:
        super().__init__(cutoff, elements)
        with seeded(seed):
            self.equiformer = ConservativeEquiformerV2(
                use_pbc=False,
                regress_forces=False,
                otf_graph=False,
                max_radius=cutoff,
                max_num_elements=len(self.element_index),
                num_layers=num_layers,
                sphere_channels=sphere_channels,
                attn_hidden_channels=attn_hidden_channels,
                num_heads=num_heads,
                attn_alpha_channels=attn_alpha_channels,
                attn_value_channels=attn_value_channels,
                ffn_hidden_channels=ffn_hidden_channels,
                norm_type=norm_type,
                lmax_list=[lmax],
                mmax_list=[mmax],
                grid_resolution=grid_resolution,
                edge_channels=edge_channels,
                alpha_drop=alpha_drop,
                drop_path_rate=drop_path_rate,
                proj_drop=proj_drop,
                avg_num_nodes=avg_num_nodes,
                avg_degree=avg_degree,
            )
            self.head = EqV2ScalarHead(self.equiformer)

    def atomic_energies(self, z: Tensor, pos: Tensor, batch: Tensor, ptr: Tensor) -> Tensor:
        num_atoms = z.numel()
        channels, pos, batch, edge_index = _add_ghost_molecule(
            self.element_index(z), pos, batch, radius_graph(pos, ptr, self.cutoff), self.cutoff / 2
        )
        natoms = torch.cat([ptr[1:] - ptr[:-1], ptr.new_tensor([GHOST_ATOMS])])
        data = _fairchem_data(channels, pos, batch, natoms, edge_index)
        embedding = self.equiformer(data)["node_embedding"]
        scalar = self.head.energy_block(embedding).embedding[:, 0, 0]
        return scalar[:num_atoms] / self.equiformer.avg_num_nodes
