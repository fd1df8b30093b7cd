"""Test kit of the project: the physics every potential must pass, as a pytest mixin.

Import it from a test module (it needs pytest; ``import deepset_moe`` never imports it)::

    from deepset_moe.testing import PotentialPhysicsTests, Tolerances

:mod:`deepset_moe.testing.physics` documents the fixtures a subclass provides;
:mod:`deepset_moe.testing.molecules` builds the test geometries (RDKit, no benchmark data).
"""

from deepset_moe.testing.molecules import (
    TEST_SMILES,
    MoleculeGeometry,
    embed_molecule,
    make_batch,
    pair_batch,
)
from deepset_moe.testing.physics import (
    PotentialPhysicsTests,
    ScanStep,
    Tolerances,
    dilated,
    dilation_scan,
    evaluate,
    permute_atoms,
    random_rotation,
    routing_margin,
    scan_steps,
    single_molecule,
)

__all__ = [
    "TEST_SMILES",
    "MoleculeGeometry",
    "PotentialPhysicsTests",
    "ScanStep",
    "Tolerances",
    "dilated",
    "dilation_scan",
    "embed_molecule",
    "evaluate",
    "make_batch",
    "pair_batch",
    "permute_atoms",
    "random_rotation",
    "routing_margin",
    "scan_steps",
    "single_molecule",
]
