"""The physics kit (:class:`deepset_moe.testing.PotentialPhysicsTests`) run by every registered
model, each with a small configuration and its declared tolerances.

Models of the optional fairchem extra are skipped, saying why, when it is not installed.
"""

from __future__ import annotations

from typing import Any

import pytest
from torch import nn

from baselines import list_models, model_config
from deepset_moe import DeepSetMoEConfig
from deepset_moe.testing import PotentialPhysicsTests, Tolerances
from tests.baselines.small_models import SMALL_CONFIGS, registered, small_model
from tests.small_deepset_moe import physics_tolerances

EQUIFORMER_V2_NOT_SMOOTH = (
    "EquiformerV2 has no cutoff envelope (Gaussian radial basis, softmax attention): an atom "
    "pair's energy jumps by ~1e-2 eV and its force is ~0.5 eV/Å just inside the cutoff"
)

TOLERANCES: dict[str, Tolerances] = {
    # continuous with the smooth top-k gate (the default); jumps allowed with the hard one
    "deepset_moe": physics_tolerances(
        DeepSetMoEConfig.from_dict(model_config("deepset_moe", **SMALL_CONFIGS["deepset_moe"]))
    ),
    "schnet": Tolerances(),
    # the small untrained DimeNet++ is stiff (|F| up to ~260 eV/Å; its energy changes by up to
    # ~10 eV per continuity-scan step), so the trapezoid rule misses ~1% of each change: a 2%
    # relative limit spares refining most steps (absolute-only passes too, in ~4 s)
    "dimenet++": Tolerances(continuity_rel=0.02),
    "painn": Tolerances(),
    "mace": Tolerances(),
    "nequip": Tolerances(),
    "allegro": Tolerances(),
    "gemnet": Tolerances(),
    # measured on the small float64 model: rotation max |dE| 1.5e-5 eV, max |dF| 1.1e-3 eV/Å
    # (the S2 activations sample each edge's features on a finite sphere grid, so the frame's
    # roll about the edge matters); permutation, translation and batching are exact. Its 600
    # Gaussians ~0.017 Å wide make the central difference's truncation error ~5e-5 eV/Å at a
    # 1e-4 Å step, ~5e-7 at 1e-5 Å.
    "equiformer_v2": Tolerances(
        rotation=2e-3,
        fd_step=1e-5,
        not_smooth=EQUIFORMER_V2_NOT_SMOOTH,
    ),
}
"""Declared limits of each registered model (the defaults are tight float64 limits)."""


def test_every_registered_model_declares_tolerances() -> None:
    assert sorted(TOLERANCES) == sorted(list_models()) == sorted(SMALL_CONFIGS)


class TestRegisteredModelPhysics(PotentialPhysicsTests):
    """Every property of the kit, for every registered model."""

    @pytest.fixture(scope="class", params=registered())
    def model_name(self, request: pytest.FixtureRequest) -> str:
        return request.param

    @pytest.fixture(scope="class")
    def model_config(self, model_name: str) -> dict[str, Any]:
        return model_config(model_name, **SMALL_CONFIGS[model_name])

    @pytest.fixture(scope="class")
    def model(self, model_name: str) -> nn.Module:
        return small_model(model_name)

    @pytest.fixture(scope="class")
    def tolerances(self, model_name: str) -> Tolerances:
        return TOLERANCES[model_name]
