"""Every model of the project behind one registry: DeepSet-MoE and the baselines of the
GMD-26 paper (SchNet, DimeNet++, PaiNN, MACE, NequIP, Allegro, GemNet-OC, EquiformerV2), all
with the same batch interface and the shared radius graph.

    from baselines import available_models, build_model, list_models, model_info
    model = build_model("painn", seed=1, features=64)
    potential = load_potential("runs/duplication/painn/quick-seed1/best.pt")
"""

from baselines.registry import (
    available_models,
    build_model,
    default_config,
    list_models,
    model_config,
    model_info,
)
from deepset_moe.checkpoint import load_potential

__all__ = [
    "available_models",
    "build_model",
    "default_config",
    "list_models",
    "load_potential",
    "model_config",
    "model_info",
]
