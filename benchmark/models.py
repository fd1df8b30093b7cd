"""One entry point that builds every model of the benchmark by name.

``"deepset_moe"`` is :class:`deepset_moe.DeepSetMoE` built from
:class:`deepset_moe.DeepSetMoEConfig`; any other name goes to the baseline registry
(``baselines.registry.build_model``). The signature ``build_model(name, config)`` is also the
``build_network`` callback of :func:`deepset_moe.checkpoint.load_potential`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from torch import nn

DEEPSET_MOE = "deepset_moe"


def _baseline_registry() -> Any:
    return importlib.import_module("baselines.registry")


def model_names() -> list[str]:
    """Every buildable model name, DeepSet-MoE first."""
    return [DEEPSET_MOE, *_baseline_registry().model_names()]


def build_model(name: str, config: Mapping[str, Any] | None = None, **overrides: Any) -> nn.Module:
    """The network called ``name`` (no E0: the trainer wraps it in ``PotentialWithE0``).

    Args:
        name: ``"deepset_moe"`` or a baseline name (see :func:`model_names`).
        config: hyperparameters (e.g. a checkpoint's ``model_config``); defaults when omitted.
        **overrides: hyperparameters overriding ``config``.
    """
    settings = {**(config or {}), **overrides}
    if name == DEEPSET_MOE:
        from deepset_moe import DeepSetMoE, DeepSetMoEConfig

        return DeepSetMoE(DeepSetMoEConfig.from_dict(settings))
    registry = _baseline_registry()
    known = registry.model_names()
    if name not in known:
        raise ValueError(f"unknown model {name!r}; choose one of {[DEEPSET_MOE, *known]}")
    return registry.build_model(name, **settings)


def model_config(name: str, model: nn.Module, config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Complete JSON-able hyperparameters that rebuild ``model`` with :func:`build_model`.

    DeepSet-MoE stores its config dataclass; baselines store their registry defaults
    overridden by the settings they were built with.
    """
    if name == DEEPSET_MOE:
        return model.config.to_dict()
    return {**_baseline_registry().default_config(name), **(config or {})}
