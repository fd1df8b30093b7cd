"""One registry for every model of the project, DeepSet-MoE included: build by name with a
seed, list names, describe a model.

Model modules are imported only when a model is built or described, so listing names never
imports the third-party packages (some are optional extras, some are slow to import).
Default configurations are the keyword defaults of each model class (DeepSet-MoE: its config
dataclass): one source of truth. Every model class offers ``from_config(**settings)`` and takes
a ``seed`` setting that decides its initial weights. Trained models are loaded back with
:func:`deepset_moe.checkpoint.load_potential`, which needs no registry.
"""

from __future__ import annotations

import importlib
import inspect
import json
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """How to build one model and where it comes from.

    Attributes:
        target: ``"module:Class"`` of the network (a class with ``from_config``).
        package: the PyPI distribution providing the architecture.
        install: the pip requirement that makes it available.
        isolated_atom: what the network (before E0) predicts for an atom with no neighbour:
            ``"zero"`` (so the wrapped potential gives exactly E0), ``"constant per element"``
            or ``"constant, same for every element"`` (a learnable offset added to E0).
        paper: reference of the architecture.
    """

    target: str
    package: str
    install: str
    isolated_atom: str
    paper: str


_REGISTRY: dict[str, ModelSpec] = {
    "deepset_moe": ModelSpec(
        "deepset_moe.model:DeepSetMoE",
        "deepset-moe",
        "deepset-moe",
        "constant per element",
        "this repository",
    ),
    "schnet": ModelSpec(
        "baselines.schnet:SchNetPotential",
        "torch-geometric",
        "torch-geometric>=2.6",
        "constant per element",
        "Schütt et al., NeurIPS 2017",
    ),
    "dimenet++": ModelSpec(
        "baselines.dimenet:DimeNetPlusPlusPotential",
        "torch-geometric",
        "torch-geometric>=2.6",
        "constant, same for every element",
        "Gasteiger et al., arXiv:2011.14115 (2020)",
    ),
    "painn": ModelSpec(
        "baselines.painn:PaiNNPotential",
        "deepset-moe",
        "deepset-moe",
        "constant per element",
        "Schütt, Unke, Gastegger, ICML 2021",
    ),
    "mace": ModelSpec(
        "baselines.mace_models:MACEPotential",
        "mace-torch",
        "mace-torch>=0.3.16",
        "constant per element",
        "Batatia et al., NeurIPS 2022",
    ),
    "nequip": ModelSpec(
        "baselines.nequip_models:NequIPPotential",
        "nequip",
        "nequip>=0.19",
        "zero",
        "Batzner et al., Nat. Commun. 2022",
    ),
    "allegro": ModelSpec(
        "baselines.nequip_models:AllegroPotential",
        "nequip-allegro",
        "nequip-allegro>=0.8",
        "zero",
        "Musaelian et al., Nat. Commun. 2023",
    ),
    "gemnet": ModelSpec(
        "baselines.fairchem_models:GemNetOCPotential",
        "fairchem-core",
        "fairchem-core==1.3.0",
        "constant per element",
        "Gasteiger et al., TMLR 2022 (GemNet-OC)",
    ),
    "equiformer_v2": ModelSpec(
        "baselines.fairchem_models:EquiformerV2Potential",
        "fairchem-core",
        "fairchem-core==1.3.0",
        "constant per element",
        "Liao et al., ICLR 2024",
    ),
}


def list_models() -> list[str]:
    """Names of every registered model, DeepSet-MoE first."""
    return list(_REGISTRY)


def available_models() -> list[str]:
    """Registered models that can be built here (their package is installed and their
    module imports), in registry order. Imports the model modules of every baseline."""
    return [name for name in _REGISTRY if missing_requirement(name) is None]


def missing_requirement(name: str) -> str | None:
    """Why ``name`` cannot be built here (the package and its pip line), or None if it can."""
    spec = _spec(name)
    try:
        metadata.version(spec.package)
        _model_class(name)
    except metadata.PackageNotFoundError:
        return f"baseline {name!r} needs {spec.package!r}: pip install '{spec.install}'"
    except ImportError as error:
        return str(error)
    return None


def _spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {list_models()}")
    return _REGISTRY[name]


def _model_class(name: str) -> type[nn.Module]:
    spec = _spec(name)
    module_name, class_name = spec.target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(
            f"baseline {name!r} needs {spec.package!r}: pip install '{spec.install}' ({error})"
        ) from error
    return getattr(module, class_name)


def default_config(name: str) -> dict[str, Any]:
    """The default hyperparameters of ``name``, JSON-able: what its class declares
    (``default_settings()``), else the keyword defaults of its ``__init__``."""
    model_class = _model_class(name)
    declared = getattr(model_class, "default_settings", None)
    if declared is not None:
        return declared()
    parameters = inspect.signature(model_class.__init__).parameters
    return {
        key: (list(p.default) if isinstance(p.default, tuple) else p.default)
        for key, p in parameters.items()
        if key != "self" and p.default is not inspect.Parameter.empty
    }


def model_config(name: str, **config: Any) -> dict[str, Any]:
    """Complete JSON-able settings of ``name``: its defaults overridden by ``config``.

    Raises:
        ValueError: a setting the model does not have (the message lists the valid ones).
    """
    defaults = default_config(name)
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown settings {unknown} for model {name!r}; valid settings: {sorted(defaults)}"
        )
    settings = {**defaults, **config}
    if "seed" not in settings:
        raise TypeError(f"model {name!r} takes no 'seed' setting: every model must")
    return settings


def canonical_config(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` of ``name`` in the form that compares equal exactly when two settings build
    the same model: the class's ``canonical_settings()`` where it declares one (it completes a
    config saved by an older version with that version's values), else ``settings`` as
    JSON reads them back (tuples as lists)."""
    canonical = getattr(_model_class(name), "canonical_settings", None)
    return json.loads(json.dumps(canonical(settings) if canonical else settings))


def build_model(name: str, seed: int | None = None, **config: Any) -> nn.Module:
    """Build the model ``name`` with its defaults overridden by ``config``.

    Args:
        name: a registered name (:func:`list_models`).
        seed: seed of the initial weights (overrides ``config["seed"]``; default: the
            model's default seed, 0).
        **config: settings of the model (see :func:`default_config`).

    Raises:
        ValueError: unknown name (the message lists the registered ones) or unknown setting.
        ImportError: the package providing the architecture is not installed (with the pip line).
    """
    if seed is not None:
        config["seed"] = int(seed)
    return _model_class(name).from_config(**model_config(name, **config))


def model_info(name: str) -> dict[str, Any]:
    """Where model ``name`` comes from and how it is configured by default.

    Returns:
        ``name``, ``package`` and installed ``version`` (None if absent), ``install`` (pip
        requirement), ``paper``, ``isolated_atom`` and ``default_config`` (None if the package
        is not installed).
    """
    spec = _spec(name)
    try:
        version = metadata.version(spec.package)
    except metadata.PackageNotFoundError:
        version = None
    try:
        config = default_config(name)
    except ImportError:
        config = None
    return {
        "name": name,
        "package": spec.package,
        "version": version,
        "install": spec.install,
        "paper": spec.paper,
        "isolated_atom": spec.isolated_atom,
        "default_config": config,
    }
