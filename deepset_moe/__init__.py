"""DeepSet-MoE interatomic potential: E = rho(pool_i h_i) with fragment-aware expert routing.

``from deepset_moe import DeepSetMoE`` is the entry point; per-element reference energies are
added outside the network by :class:`PotentialWithE0`.
"""

from deepset_moe.config import DeepSetMoEConfig
from deepset_moe.e0 import AtomicReferenceEnergies, PotentialWithE0
from deepset_moe.graph import radius_graph
from deepset_moe.model import DeepSetMoE

__version__ = "0.1.0"

__all__ = [
    "AtomicReferenceEnergies",
    "DeepSetMoE",
    "DeepSetMoEConfig",
    "PotentialWithE0",
    "__version__",
    "radius_graph",
]
