"""The physics kit (:class:`deepset_moe.testing.PotentialPhysicsTests`) run by DeepSet-MoE
variants: every router mode, every pooling x readout (with the learned, fragment and hybrid
routers), the hard top-k gate of older checkpoints, an interaction layer and the body-ordered
energy term (with non-zero weights).

The registry's DeepSet-MoE (hybrid routing, smooth top-k gate, sum pooling, linear rho) also
runs it in ``tests/baselines/test_physics.py``. The seed gives every variant top-k gate
margins above ``MIN_TOPK_MARGIN`` on the test molecules, so finite differences switch no
expert.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch

from deepset_moe import DeepSetMoE
from deepset_moe.body_order import BODY_ORDERS
from deepset_moe.config import POOLINGS, READOUTS, ROUTER_MODES
from deepset_moe.testing import PotentialPhysicsTests, Tolerances
from tests.small_deepset_moe import (
    POSITION_DEPENDENT_ROUTING,
    SMALL_CONFIG,
    STABLE_ROUTING_SEED,
    physics_tolerances,
)

NO_MOE = {"num_experts": 1, "top_k": 1}
"""``router_mode="none"``: the no-MoE control has one expert."""

VARIANTS: dict[str, dict[str, Any]] = {
    f"{router_mode}-{pooling}-{readout}": {
        "router_mode": router_mode,
        "pooling": pooling,
        "readout": readout,
    }
    for router_mode, pooling, readout in itertools.product(
        ("learned", "fragment", "hybrid"), POOLINGS, READOUTS
    )
}
VARIANTS.update(
    {
        f"{router_mode}-sum-linear": {
            "router_mode": router_mode,
            **(NO_MOE if router_mode == "none" else {}),
        }
        for router_mode in ROUTER_MODES
        if f"{router_mode}-sum-linear" not in VARIANTS
    }
)
VARIANTS.update(
    {
        f"{router_mode}-sum-linear-hard-topk": {"router_mode": router_mode, "gate": "topk"}
        for router_mode in (*POSITION_DEPENDENT_ROUTING, "fragment")
    }
)
VARIANTS["hybrid-sum-linear-interaction"] = {"router_mode": "hybrid", "num_interactions": 1}
VARIANTS.update(
    {
        f"identity-sum-linear-body-order-{order}": {"router_mode": "identity", "body_order": order}
        for order in BODY_ORDERS
        if order
    }
)
VARIANTS["identity-sum-linear-body-order-3-many-body-cutoff-interaction"] = {
    "router_mode": "identity",
    "body_order": 3,
    "many_body_cutoff": 3.0,
    "num_interactions": 1,
    "top_k": 4,  # every expert: no routing margin to guard (this seed's is below it)
}
VARIANTS["learned-mean-mlp-body-order-3"] = {
    "router_mode": "learned",
    "pooling": "mean",
    "readout": "mlp",
    "body_order": 3,
}


def test_variants_cover_every_router_mode_pooling_and_readout() -> None:
    settings = list(VARIANTS.values())
    assert {v["router_mode"] for v in settings} == set(ROUTER_MODES)
    assert {v.get("pooling", "sum") for v in settings} == set(POOLINGS)
    assert {v.get("readout", "linear") for v in settings} == set(READOUTS)


class TestDeepSetMoEVariantPhysics(PotentialPhysicsTests):
    """Every property of the kit, for every DeepSet-MoE variant."""

    @pytest.fixture(scope="class", params=list(VARIANTS))
    def variant(self, request: pytest.FixtureRequest) -> str:
        return request.param

    @pytest.fixture(scope="class")
    def model_name(self) -> str:
        return "deepset_moe"

    @pytest.fixture(scope="class")
    def model(self, variant: str) -> DeepSetMoE:
        model = DeepSetMoE.from_config(
            **{**SMALL_CONFIG, "seed": STABLE_ROUTING_SEED, **VARIANTS[variant]}
        )
        if model.body_order_energy is not None:  # starts at zero: give the term a value
            with torch.no_grad():
                generator = torch.Generator().manual_seed(0)
                model.body_order_energy.weight.normal_(generator=generator)
        return model

    @pytest.fixture(scope="class")
    def model_config(self, model: DeepSetMoE) -> dict[str, Any]:
        return model.config.to_dict()

    @pytest.fixture(scope="class")
    def tolerances(self, model: DeepSetMoE) -> Tolerances:
        return physics_tolerances(model.config)
