"""DeepSet-MoE interatomic potential: E = rho(pool_i h_i) with fragment-aware expert routing.

``from deepset_moe import DeepSetMoE`` is the entry point; per-element reference energies are
added outside the network by :class:`PotentialWithE0`. Everything a trained model needs at
inference lives in this package (batch, fragment vocabulary, E0, checkpoints, the ASE
calculator in :mod:`deepset_moe.calculator`); it never imports the benchmark.
"""

from deepset_moe.batch import Batch, atoms_to_batch, collate
from deepset_moe.checkpoint import load_potential
from deepset_moe.config import DeepSetMoEConfig
from deepset_moe.e0 import AtomicReferenceEnergies, PotentialWithE0
from deepset_moe.fragments import DEFAULT_VOCABULARY, FragmentVocabulary
from deepset_moe.graph import radius_graph
from deepset_moe.model import DeepSetMoE, matched_no_moe_config
from deepset_moe.version import __version__

__all__ = [
    "DEFAULT_VOCABULARY",
    "AtomicReferenceEnergies",
    "Batch",
    "DeepSetMoE",
    "DeepSetMoEConfig",
    "FragmentVocabulary",
    "PotentialWithE0",
    "__version__",
    "atoms_to_batch",
    "collate",
    "load_potential",
    "matched_no_moe_config",
    "radius_graph",
]
