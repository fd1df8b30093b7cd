"""The seed papers' MLIPs (SchNet, DimeNet++, PaiNN, MACE, NequIP, Allegro, ...) behind one
registry, all with the DESIGN.md interface and the shared radius graph.

    from baselines import available_models, build_model, list_models, model_info
    model = build_model("painn", features=64)
"""

from baselines.registry import available_models, build_model, list_models, model_info

__all__ = ["available_models", "build_model", "list_models", "model_info"]
