"""Small configurations of every registered model, shared by the baseline and physics tests.

Small sizes keep the tests fast; the default sizes are reported by
``python -m benchmark.evaluation.speed --sections throughput``.
"""

from __future__ import annotations

import copy
import importlib.util
from functools import cache
from typing import Any

import pytest
from torch import nn

from baselines import build_model, list_models
from tests.small_deepset_moe import SMALL_CONFIG, STABLE_ROUTING_SEED

SMALL_CONFIGS: dict[str, dict[str, Any]] = {
    # routing is stable on the test molecules with this seed (finite differences switch no
    # expert); the other models use their default seed, 0
    "deepset_moe": {**SMALL_CONFIG, "seed": STABLE_ROUTING_SEED},
    # nequip models fix their dtype at build time: the float64 physics checks need float64 ones
    "schnet": {
        "hidden_channels": 16,
        "num_filters": 16,
        "num_interactions": 2,
        "num_gaussians": 10,
    },
    "dimenet++": {
        "hidden_channels": 16,
        "out_emb_channels": 16,
        "int_emb_size": 8,
        "basis_emb_size": 4,
        "num_blocks": 2,
        # PyG derives the spherical Bessel basis symbolically (sympy) at every construction:
        # its cost grows with num_spherical * num_radial
        "num_spherical": 2,
        "num_radial": 3,
    },
    "painn": {"features": 16, "num_layers": 2, "num_radial": 8},
    "mace": {
        "hidden_irreps": "8x0e + 8x1o",
        "correlation": 2,
        "radial_mlp": [16],
        "mlp_irreps": "8x0e",
    },
    "nequip": {
        "num_layers": 2,
        "num_features": 8,
        "radial_mlp_width": 16,
        "model_dtype": "float64",
    },
    "allegro": {
        "l_max": 1,
        "num_scalar_features": 16,
        "num_tensor_features": 4,
        "mlp_width": 16,
        "model_dtype": "float64",
    },
    "gemnet": {
        "num_blocks": 2,
        "emb_size_atom": 16,
        "emb_size_edge": 16,
        "emb_size_trip_in": 8,
        "emb_size_trip_out": 8,
        "emb_size_quad_in": 4,
        "emb_size_quad_out": 4,
        "emb_size_aint_in": 4,
        "emb_size_aint_out": 4,
        "emb_size_rbf": 4,
        "emb_size_cbf": 4,
        "emb_size_sbf": 4,
        "num_spherical": 3,
        "num_radial": 8,
    },
    "equiformer_v2": {
        "num_layers": 2,
        "sphere_channels": 8,
        "attn_hidden_channels": 8,
        "num_heads": 2,
        "attn_alpha_channels": 4,
        "attn_value_channels": 4,
        "ffn_hidden_channels": 8,
        "lmax": 2,
        "mmax": 1,
        "edge_channels": 8,
    },
}

FAIRCHEM_MODELS = ("gemnet", "equiformer_v2")
"""Baselines of the optional ``fairchem`` extra (fairchem-core 1.3.0, compiled torch-scatter and
torch-sparse): their tests run when it is installed and are skipped, saying so, when not."""

requires_fairchem = pytest.mark.skipif(
    importlib.util.find_spec("fairchem") is None,
    reason="optional 'fairchem' extra not installed (fairchem-core==1.3.0 + torch-scatter + "
    "torch-sparse; install lines in baselines.fairchem_models.FAIRCHEM_INSTALL / README)",
)


def registered(exclude: tuple[str, ...] = ()) -> list[Any]:
    """Every registered model as a pytest parameter; those of the fairchem extra need it."""
    return [
        pytest.param(name, marks=requires_fairchem) if name in FAIRCHEM_MODELS else name
        for name in list_models()
        if name not in exclude
    ]


@cache
def small_model(name: str) -> nn.Module:
    """A small float32 model with the seed of :data:`SMALL_CONFIGS` (shared: callers that
    change its dtype or mode use :func:`fresh_small_model`)."""
    return build_model(name, **SMALL_CONFIGS[name])


def fresh_small_model(name: str) -> nn.Module:
    """A private copy of :func:`small_model`."""
    return copy.deepcopy(small_model(name))
