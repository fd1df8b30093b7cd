"""Train any registered model on your own labelled files: ``gmd26 fit CONFIG.yaml``.

:func:`fit` reads a YAML config (or a mapping), reads the files with
:mod:`benchmark.dataset.external`, resolves everything the data decide (label keys, elements,
fragment vocabulary, E0, the model's element list and routing), trains with the benchmark's
one :class:`~benchmark.training.trainer.Trainer` and evaluates the best (EMA) weights on the
validation and test files. The complete, resolved config is written beside the checkpoint
(``fit_config.yaml``, also stored inside the checkpoint), so ``gmd26 fit <out>/fit_config.yaml``
repeats the run. See ``docs/own_data.md`` for the config reference.

Output folder:

=============================  ===============================================================
file                           content
=============================  ===============================================================
``fit_config.yaml``            the resolved config (+ ``resolved``: facts the data decided)
``best.pt``, ``last.pt``       checkpoints; ``best.pt`` inference-only after training
``metrics.json``               metrics of the validation and test files (whole set, per
                               element, per fragment), E0, frame counts, training summary
``predictions_<name>.npz``     :class:`~benchmark.evaluation.predictions.Predictions`
``train.log``, ``tensorboard``  training log and TensorBoard scalars (as in the benchmark)
=============================  ===============================================================
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from baselines.registry import build_model, default_config, list_models, model_config
from benchmark.dataset import external
from benchmark.dataset.frames import Frame
from benchmark.errors import UsageError
from benchmark.evaluation import breakdown
from benchmark.evaluation.predictions import Predictions
from benchmark.jsonio import json_safe, write_json
from benchmark.training.distributed import DistributedContext, init_from_environment
from benchmark.training.presets import TRAINING_PRESETS, TrainingPreset, get_preset
from benchmark.training.trainer import LAST_CHECKPOINT, Callback, Trainer
from deepset_moe.atomic_io import atomic_write
from deepset_moe.checkpoint import strip_training_state
from deepset_moe.e0 import AtomicReferenceEnergies
from deepset_moe.fragments import DEFAULT_VOCABULARY, FragmentVocabulary
from deepset_moe.version import __version__

logger = logging.getLogger(__name__)

CONFIG_FILE = "fit_config.yaml"
METRICS_FILE = "metrics.json"
DEFAULT_PRESET = "quick"
VALID_NAME = "valid"
E0_MODES = ("fit", "average", "isolated", "none")
SPLIT_MODES = ("frame", "molecule")
FRAGMENT_ROUTER_MODES = ("fragment", "hybrid")
"""DeepSet-MoE router modes that read fragment labels (refused for data without labels)."""
RESERVED_PRESET_FIELDS = {
    "name": "give the preset as training.preset",
    "e0": "give E0 as the top-level e0 (fit, average, isolated, none or a table)",
    "id_split": "the split of your data is valid_file / valid_fraction",
    "ood_curve_frames": "there is no OOD curve in a fit run",
}
ELEMENT_SETTINGS = ("atomic_numbers", "elements")
"""Model settings that list the elements a model knows (DeepSet-MoE, baselines)."""

TOP_LEVEL_KEYS = (
    "model",
    "train_file",
    "valid_file",
    "valid_fraction",
    "split_by",
    "test_file",
    "energy_key",
    "forces_key",
    "molecule_key",
    "energy_unit",
    "forces_unit",
    "e0",
    "fragments",
    "training",
    "seed",
    "device",
    "out",
    "routing_logging",
    "resolved",
)
ALIASES = {"train_files": "train_file", "valid_files": "valid_file", "test_files": "test_file"}
FRAGMENT_KEYS = ("source", "key", "patterns", "other")


class FitConfigError(UsageError):
    """A fit config that cannot be run; the message says which key and why (``gmd26 fit``
    exits with status 2, the input was refused)."""


# --------------------------------------------------------------------------- config


@dataclass
class FragmentSettings:
    """``fragments`` of the config: where labels come from and the vocabulary's extensions."""

    source: str = "auto"
    key: str = external.DEFAULT_FRAGMENT_KEY
    patterns: tuple[tuple[str, str], ...] = ()
    other: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "key": self.key,
            "patterns": {name: smarts for name, smarts in self.patterns},
            "other": self.other,
        }


@dataclass
class FitSettings:
    """A parsed (not yet data-resolved) fit config; paths are absolute."""

    model: str
    model_options: dict[str, Any]
    train_files: list[str]
    valid_files: list[str]
    valid_fraction: float | None
    split_by: str
    test_files: list[str]
    energy_key: str | None
    forces_key: str | None
    molecule_key: str
    energy_unit: str
    forces_unit: str
    e0: str | dict[int, float]
    fragments: FragmentSettings
    preset: str
    preset_overrides: dict[str, Any]
    seed: int
    device: str
    out: Path
    routing_logging: str | bool
    config_path: Path | None = None


def load_config(
    config: str | Path | Mapping[str, Any], overrides: Sequence[str] | Mapping[str, Any] = ()
) -> tuple[dict[str, Any], Path]:
    """The raw config mapping and the folder relative paths are resolved against.

    Args:
        config: a YAML file, or a mapping (paths then relative to the working directory).
        overrides: ``"dotted.key=value"`` strings (values parsed as YAML) or a mapping of
            dotted keys to values, applied on top.
    """
    if isinstance(config, Mapping):
        raw, base = copy.deepcopy(dict(config)), Path.cwd()
    else:
        path = Path(config)
        if not path.is_file():
            raise FitConfigError(f"no config file at {path}")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise FitConfigError(f"{path}: not valid YAML ({error})") from error
        if not isinstance(raw, dict):
            raise FitConfigError(f"{path}: the config must be a mapping of keys to values")
        base = path.resolve().parent
    items = overrides.items() if isinstance(overrides, Mapping) else map(_parse_override, overrides)
    for dotted, value in items:
        _set_dotted(raw, dotted, value)
    return raw, base


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise FitConfigError(f"override {text!r} is not KEY=VALUE (e.g. training.max_steps=100)")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as error:
        raise FitConfigError(f"override {text!r}: value is not valid YAML ({error})") from error


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = raw
    for part in parents:
        child = node.get(part)
        if isinstance(child, str) and part in ("model", "training", "fragments"):
            child = {"model": {"name": child}, "training": {"preset": child}}.get(
                part, {"source": child}
            )
        if child is None:
            child = {}
        if not isinstance(child, dict):
            raise FitConfigError(f"override {dotted!r}: {part!r} is not a mapping")
        node[part] = child
        node = child
    node[last] = value


def _files(value: Any, key: str, base: Path) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, (str, Path)) else value
    if not isinstance(items, list) or not all(isinstance(v, (str, Path)) for v in items):
        raise FitConfigError(f"{key} must be a file name or a list of file names, got {value!r}")
    out = []
    for item in items:
        path, index = external.split_index(item)
        path = path if path.is_absolute() else base / path
        out.append(str(path.resolve()) + ("" if index == ":" else f"@{index}"))
    return out


def parse_config(
    raw: Mapping[str, Any], base: Path, config_path: Path | None = None
) -> FitSettings:
    """Validate the raw config (every key, type and choice) without reading data.

    Raises:
        FitConfigError: unknown key (listing the valid ones), missing ``model`` or
            ``train_file``, both or neither of ``valid_file`` / ``valid_fraction``, or a value
            of the wrong type or outside its choices.
    """
    raw = {ALIASES.get(k, k): v for k, v in raw.items()}
    unknown = sorted(set(raw) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise FitConfigError(f"unknown config keys {unknown}; valid keys: {list(TOP_LEVEL_KEYS)}")
    for key in ("model", "train_file"):
        if raw.get(key) in (None, "", []):
            raise FitConfigError(f"the config needs {key!r}")

    model = raw["model"]
    if isinstance(model, str):
        name, options = model, {}
    elif isinstance(model, Mapping) and isinstance(model.get("name"), str):
        options = {k: v for k, v in model.items() if k != "name"}
        name = model["name"]
    else:
        raise FitConfigError(
            f"model must be a registered name or a mapping with 'name' and the model's "
            f"settings, got {model!r}"
        )
    if name not in list_models():
        raise FitConfigError(f"unknown model {name!r}; registered models: {list_models()}")

    valid_files = _files(raw.get("valid_file"), "valid_file", base)
    fraction = raw.get("valid_fraction")
    if bool(valid_files) == (fraction is not None):
        raise FitConfigError(
            "give exactly one of valid_file (a validation file) or valid_fraction (a share of "
            "the training frames held out)"
        )
    if fraction is not None and not (
        isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 < fraction < 1
    ):
        raise FitConfigError(f"valid_fraction must be a number in (0, 1), got {fraction!r}")
    split_by = raw.get("split_by", "frame")
    if split_by not in SPLIT_MODES:
        raise FitConfigError(f"split_by must be one of {SPLIT_MODES}, got {split_by!r}")

    energy_unit = raw.get("energy_unit", "eV")
    if energy_unit not in external.ENERGY_UNITS:
        raise FitConfigError(
            f"energy_unit must be one of {list(external.ENERGY_UNITS)}, got {energy_unit!r}"
        )
    forces_unit = raw.get("forces_unit", "eV/Å")
    if forces_unit not in external.FORCES_UNITS:
        raise FitConfigError(
            f"forces_unit must be one of {list(external.FORCES_UNITS)}, got {forces_unit!r}"
        )
    for key in ("energy_key", "forces_key", "molecule_key"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise FitConfigError(f"{key} must be a string, got {raw[key]!r}")

    preset, overrides = _parse_training(raw.get("training", DEFAULT_PRESET))
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise FitConfigError(f"seed must be an integer, got {seed!r}")
    device = str(raw.get("device", "cpu"))
    out = (
        Path(raw["out"])
        if raw.get("out")
        else Path("runs") / (config_path.stem if config_path is not None else "fit")
    )
    routing_logging = raw.get("routing_logging", "auto")
    if routing_logging not in ("auto", True, False):
        raise FitConfigError(
            f"routing_logging must be auto, true or false, got {routing_logging!r}"
        )
    return FitSettings(
        model=name,
        model_options=dict(options),
        train_files=_files(raw["train_file"], "train_file", base),
        valid_files=valid_files,
        valid_fraction=None if fraction is None else float(fraction),
        split_by=split_by,
        test_files=_files(raw.get("test_file"), "test_file", base),
        energy_key=raw.get("energy_key"),
        forces_key=raw.get("forces_key"),
        molecule_key=raw.get("molecule_key") or external.DEFAULT_MOLECULE_KEY,
        energy_unit=energy_unit,
        forces_unit=forces_unit,
        e0=_parse_e0(raw.get("e0", "fit")),
        fragments=_parse_fragments(raw.get("fragments", "auto")),
        preset=preset,
        preset_overrides=overrides,
        seed=seed,
        device=device,
        out=(out if out.is_absolute() else base / out).resolve(),
        routing_logging=routing_logging,
        config_path=config_path,
    )


def _parse_training(value: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(value, str):
        value = {"preset": value}
    if not isinstance(value, Mapping):
        raise FitConfigError(f"training must be a preset name or a mapping, got {value!r}")
    overrides = dict(value)
    preset = overrides.pop("preset", DEFAULT_PRESET)
    if preset not in TRAINING_PRESETS:
        raise FitConfigError(
            f"training.preset must be one of {sorted(TRAINING_PRESETS)}, got {preset!r}"
        )
    reserved = sorted(set(overrides) & set(RESERVED_PRESET_FIELDS))
    if reserved:
        raise FitConfigError(
            f"training.{reserved[0]} is not a fit setting: {RESERVED_PRESET_FIELDS[reserved[0]]}"
        )
    valid = [f.name for f in fields(TrainingPreset) if f.name not in RESERVED_PRESET_FIELDS]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise FitConfigError(f"unknown training settings {unknown}; valid settings: {valid}")
    try:
        get_preset(preset, **overrides)
    except (TypeError, ValueError) as error:
        raise FitConfigError(f"training: {error}") from error
    return preset, overrides


def _parse_e0(value: Any) -> str | dict[int, float]:
    if isinstance(value, str):
        if value not in E0_MODES:
            raise FitConfigError(
                f"e0 must be one of {E0_MODES} or a table of element: energy (eV), got {value!r}"
            )
        return value
    if isinstance(value, Mapping) and value:
        table = {}
        for element, energy in value.items():
            try:
                number = external.atomic_number(element)
            except ValueError as error:
                raise FitConfigError(f"e0 table: {error}") from error
            if not isinstance(energy, (int, float)) or isinstance(energy, bool):
                raise FitConfigError(f"e0 table: {element}: {energy!r} is not a number (eV)")
            table[number] = float(energy)
        return table
    raise FitConfigError(f"e0 must be one of {E0_MODES} or a table of element: eV, got {value!r}")


def _parse_fragments(value: Any) -> FragmentSettings:
    if value is None or value is False:
        value = "none"
    if isinstance(value, str):
        value = {"source": value}
    if not isinstance(value, Mapping):
        raise FitConfigError(f"fragments must be a source name or a mapping, got {value!r}")
    unknown = sorted(set(value) - set(FRAGMENT_KEYS))
    if unknown:
        raise FitConfigError(f"unknown fragments keys {unknown}; valid keys: {list(FRAGMENT_KEYS)}")
    source = value.get("source", "auto")
    if source not in external.FRAGMENT_SOURCES:
        raise FitConfigError(
            f"fragments.source must be one of {external.FRAGMENT_SOURCES}, got {source!r}"
        )
    patterns = value.get("patterns") or {}
    if isinstance(patterns, Mapping):
        pairs = list(patterns.items())
    elif isinstance(patterns, list) and all(
        isinstance(p, (list, tuple)) and len(p) == 2 for p in patterns
    ):
        pairs = [tuple(p) for p in patterns]
    else:
        raise FitConfigError(
            f"fragments.patterns must map names to SMARTS (name: '[F,Cl:1]'), got {patterns!r}"
        )
    if not all(isinstance(n, str) and isinstance(s, str) for n, s in pairs):
        raise FitConfigError(f"fragments.patterns: names and SMARTS must be strings: {pairs}")
    other = value.get("other")
    if other is not None and not isinstance(other, str):
        raise FitConfigError(f"fragments.other must be a label name, got {other!r}")
    return FragmentSettings(
        source=source,
        key=str(value.get("key", external.DEFAULT_FRAGMENT_KEY)),
        patterns=tuple((str(n), str(s)) for n, s in pairs),
        other=other,
    )


# --------------------------------------------------------------------------- resolving


@dataclass
class FitPlan:
    """Everything a fit run needs, resolved from the config and the data (nothing trained)."""

    settings: FitSettings
    model_settings: dict[str, Any]
    preset: TrainingPreset
    e0: AtomicReferenceEnergies
    train: list[Frame]
    valid: list[Frame]
    tests: dict[str, list[Frame]]
    energy_key: str
    forces_key: str
    fragment_source: str
    vocabulary: FragmentVocabulary | None
    elements: list[int]
    notes: list[str] = field(default_factory=list)
    valid_molecules: list[str] | None = None
    isolated_atoms: int = 0

    @property
    def out(self) -> Path:
        return self.settings.out

    def config(self) -> dict[str, Any]:
        """The resolved config: rerunning it repeats this run (``resolved`` is ignored on read)."""
        s = self.settings
        model = {"name": s.model, **{k: v for k, v in self.model_settings.items() if k != "seed"}}
        split = (
            {"valid_file": s.valid_files}
            if s.valid_files
            else {"valid_fraction": s.valid_fraction, "split_by": s.split_by}
        )
        return json_safe(
            {
                "model": model,
                "train_file": s.train_files,
                **split,
                "test_file": s.test_files,
                "energy_key": self.energy_key,
                "forces_key": self.forces_key,
                "molecule_key": s.molecule_key,
                "energy_unit": s.energy_unit,
                "forces_unit": s.forces_unit,
                "e0": s.e0
                if isinstance(s.e0, str)
                else {external.element_symbol(z): e for z, e in s.e0.items()},
                "fragments": {**s.fragments.to_dict(), "source": self.fragment_source},
                "training": {
                    "preset": self.preset.name,
                    **{
                        k: v
                        for k, v in self.preset.to_dict().items()
                        if k not in RESERVED_PRESET_FIELDS
                    },
                },
                "seed": s.seed,
                "device": s.device,
                "out": str(s.out),
                "routing_logging": s.routing_logging,
                "resolved": self.facts(),
            }
        )

    def facts(self) -> dict[str, Any]:
        """What the data decided (written under ``resolved``; informational)."""
        files = [*self.settings.train_files, *self.settings.valid_files, *self.settings.test_files]
        return {
            "library_version": __version__,
            "elements": [external.element_symbol(z) for z in self.elements],
            "e0": {external.element_symbol(z): e for z, e in self.e0.as_dict().items()},
            "fragment_vocabulary": list(self.vocabulary.names) if self.vocabulary else None,
            "frames": {
                "train": len(self.train),
                VALID_NAME: len(self.valid),
                **{name: len(frames) for name, frames in self.tests.items()},
            },
            "valid_molecules": self.valid_molecules,
            "isolated_atom_frames": self.isolated_atoms,
            "sha256": {name: _sha256(name) for name in dict.fromkeys(files)},
            "notes": self.notes,
        }


def _sha256(name: str) -> str:
    path, _ = external.split_index(name)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def prepare(settings: FitSettings) -> FitPlan:
    """Read the data and resolve keys, fragments, elements, E0, model settings and preset.

    Everything that can be wrong with the data or the config fails here, before training.

    Raises:
        FitConfigError: an inconsistent config (e.g. fragment routing without fragments,
            elements a model setting does not list, an E0 table missing an element).
        benchmark.dataset.external.ExternalDataError: a file lacks a key (the message lists
            the keys it has), holds bad values, or a fragment rule covers no pattern of an atom.
        FileNotFoundError: a data file does not exist.
    """
    notes: list[str] = []
    try:
        defaults = default_config(settings.model)
    except ImportError as error:
        raise FitConfigError(str(error)) from error

    structures = {
        name: external.read_structures(name)
        for name in dict.fromkeys(
            [*settings.train_files, *settings.valid_files, *settings.test_files]
        )
    }
    first = settings.train_files[0]
    energy_key, forces_key = external.resolve_label_keys(
        structures[first], first, settings.energy_key, settings.forces_key
    )
    for name, items in structures.items():
        external.resolve_label_keys(items, name, energy_key, forces_key)
    source = external.resolve_fragment_source(
        settings.fragments.source, structures, settings.fragments.key
    )
    if settings.fragments.source == "auto":
        notes.append(f"fragments: auto resolved to {source}")

    numbers = sorted({int(z) for items in structures.values() for a in items for z in a.numbers})
    vocabulary = (
        _vocabulary(settings, external.vocabulary_symbols(numbers)) if source != "none" else None
    )

    def frames_of(name: str) -> list[Frame]:
        return external.frames_from_structures(
            structures[name],
            name,
            energy_key=energy_key,
            forces_key=forces_key,
            fragments=source,
            vocabulary=vocabulary,
            fragment_key=settings.fragments.key,
            molecule_key=settings.molecule_key,
            energy_scale=external.ENERGY_UNITS[settings.energy_unit],
            forces_scale=external.FORCES_UNITS[settings.forces_unit],
        )

    train = [frame for name in settings.train_files for frame in frames_of(name)]
    isolated: list[Frame] = []
    if settings.e0 == "isolated":
        isolated = [frame for frame in train if frame.n_atoms == 1]
        train = [frame for frame in train if frame.n_atoms > 1]
    valid_molecules = None
    if settings.valid_fraction is not None and settings.split_by == "molecule":
        named = any(
            settings.molecule_key in atoms.info
            for name in settings.train_files
            for atoms in structures[name]
        )
        if not named:
            notes.append(
                f"split_by: molecule, but no training frame has info[{settings.molecule_key!r}]: "
                f"every frame is its own molecule, so this is a split by frame"
            )
    if settings.valid_files:
        valid = [frame for name in settings.valid_files for frame in frames_of(name)]
    else:
        train, valid, valid_molecules = _split(
            train, settings.valid_fraction, settings.split_by, settings.seed
        )
    if not train:
        raise FitConfigError("no training frames left (check train_file and the valid split)")
    tests = {name: frames_of(name) for name in settings.test_files}

    elements = external.elements_of(train)
    for name, frames in {VALID_NAME: valid, **tests}.items():
        unseen = sorted(set(external.elements_of(frames)) - set(elements))
        if unseen:
            raise FitConfigError(
                f"{name} holds element(s) {[external.element_symbol(z) for z in unseen]} that "
                f"no training frame has; a model cannot learn them (training elements: "
                f"{[external.element_symbol(z) for z in elements]})"
            )
    e0 = _e0(settings.e0, train, isolated, elements)
    model_settings = _model_settings(settings, defaults, elements, source, vocabulary, train, notes)
    preset = get_preset(settings.preset, **settings.preset_overrides)
    return FitPlan(
        settings=settings,
        model_settings=model_settings,
        preset=preset,
        e0=e0,
        train=train,
        valid=valid,
        tests=tests,
        energy_key=energy_key,
        forces_key=forces_key,
        fragment_source=source,
        vocabulary=vocabulary,
        elements=elements,
        notes=notes,
        valid_molecules=valid_molecules,
        isolated_atoms=len(isolated),
    )


def _vocabulary(settings: FitSettings, symbols: Sequence[str]) -> FragmentVocabulary:
    """The model's vocabulary (its ``fragments`` setting, else the default) extended by the
    config's patterns (those not already in it), the data's elements and ``other``."""
    given = settings.model_options.get("fragments")
    try:
        base = FragmentVocabulary.from_dict(given) if given is not None else DEFAULT_VOCABULARY
        known = dict(base.patterns)
        extra = []
        for name, smarts in settings.fragments.patterns:
            if name in known and known[name] != smarts:
                raise FitConfigError(
                    f"fragments.patterns: {name!r} is already in the vocabulary with SMARTS "
                    f"{known[name]!r}; choose another name"
                )
            if name not in known:
                extra.append((name, smarts))
        if base.other_label and settings.fragments.other not in (None, base.other_label):
            raise FitConfigError(
                f"fragments.other {settings.fragments.other!r} differs from the model's "
                f"vocabulary's other label {base.other_label!r}"
            )
        _check_smarts(extra)
        vocabulary = base.extended(extra, symbols, settings.fragments.other)
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, FitConfigError):
            raise
        raise FitConfigError(f"fragments: {error}") from error
    return vocabulary


def _check_smarts(patterns: Sequence[tuple[str, str]]) -> None:
    """Every SMARTS parses (a typo fails before any frame is read)."""
    from rdkit import Chem, rdBase

    for name, smarts in patterns:
        with rdBase.BlockLogs():
            query = Chem.MolFromSmarts(smarts)
        if query is None:
            raise FitConfigError(f"fragments.patterns: {name!r} has an invalid SMARTS {smarts!r}")


def _split(
    frames: list[Frame], fraction: float, split_by: str, seed: int
) -> tuple[list[Frame], list[Frame], list[str] | None]:
    """Hold out ``fraction`` of the frames (``frame``) or of the molecules (``molecule``)."""
    rng = np.random.default_rng(seed)
    if split_by == "frame":
        count = max(1, round(fraction * len(frames)))
        held = set(rng.permutation(len(frames))[:count].tolist())
        molecules = None
    else:
        ids = sorted({frame.molecule_id for frame in frames})
        if len(ids) < 2:
            raise FitConfigError(
                f"split_by: molecule needs at least 2 molecules, the training files hold "
                f"{len(ids)}; use split_by: frame or a valid_file (frames without a "
                f"'molecule_id' are each their own molecule)"
            )
        count = min(len(ids) - 1, max(1, round(fraction * len(ids))))
        molecules = sorted(ids[i] for i in rng.permutation(len(ids))[:count])
        held = {i for i, frame in enumerate(frames) if frame.molecule_id in set(molecules)}
    train = [frame for i, frame in enumerate(frames) if i not in held]
    valid = [frame for i, frame in enumerate(frames) if i in held]
    if not train or not valid:
        raise FitConfigError(
            f"valid_fraction {fraction} of {len(frames)} frames leaves {len(train)} training and "
            f"{len(valid)} validation frames"
        )
    return train, valid, molecules


def _e0(
    mode: str | dict[int, float],
    train: Sequence[Frame],
    isolated: Sequence[Frame],
    elements: Sequence[int],
) -> AtomicReferenceEnergies:
    symbols = [external.element_symbol(z) for z in elements]
    if mode == "fit":
        return AtomicReferenceEnergies.fit([f.numbers for f in train], [f.energy for f in train])
    if mode == "none":
        return AtomicReferenceEnergies()
    if mode == "average":
        per_atom = float(np.mean([f.energy / f.n_atoms for f in train]))
        return AtomicReferenceEnergies({z: per_atom for z in elements})
    if mode == "isolated":
        table = {int(f.numbers[0]): f.energy for f in isolated}
        missing = [external.element_symbol(z) for z in elements if z not in table]
        if missing:
            raise FitConfigError(
                f"e0: isolated needs a single-atom frame of every training element in the "
                f"training files; missing {missing} (elements {symbols})"
            )
        return AtomicReferenceEnergies(table)
    missing = [external.element_symbol(z) for z in elements if z not in mode]
    if missing:
        raise FitConfigError(
            f"the e0 table lacks element(s) {missing}; the training data hold {symbols}"
        )
    return AtomicReferenceEnergies(mode)


def _model_settings(
    settings: FitSettings,
    defaults: Mapping[str, Any],
    elements: Sequence[int],
    source: str,
    vocabulary: FragmentVocabulary | None,
    train: Sequence[Frame],
    notes: list[str],
) -> dict[str, Any]:
    options = {k: v for k, v in settings.model_options.items() if v is not None}  # null: default
    name = settings.model
    for key in ELEMENT_SETTINGS:
        if key not in defaults:
            continue
        if key in options:
            listed = {int(z) for z in options[key]}
            missing = [external.element_symbol(z) for z in elements if z not in listed]
            if missing:
                raise FitConfigError(
                    f"model.{key} {sorted(listed)} lacks training element(s) {missing}; leave "
                    f"{key} out to take the elements from the data"
                )
        else:
            options[key] = list(elements)
    if "router_mode" in defaults:
        mode = options.get("router_mode", defaults["router_mode"])
        if source == "none" and mode in FRAGMENT_ROUTER_MODES:
            raise FitConfigError(
                f"model.router_mode {mode!r} reads fragment labels, but the data have none "
                f"(fragments: none); set fragments: perceive (bond perception from the "
                f"geometry) or fragments: array (labels in the file), or choose "
                f"router_mode identity (the default), learned or spatial"
            )
    if vocabulary is not None and "fragments" in defaults:
        options["fragments"] = vocabulary.to_dict()
    if options.get("avg_num_neighbors") == "auto":
        if "avg_num_neighbors" not in defaults:
            raise FitConfigError(f"model {name!r} has no avg_num_neighbors setting")
        cutoff = float(options.get("cutoff", defaults.get("cutoff", 5.0)))
        options["avg_num_neighbors"] = round(external.mean_neighbours(train, cutoff), 4)
        notes.append(f"model.avg_num_neighbors: {options['avg_num_neighbors']} (from the data)")
    options.pop("seed", None)
    try:
        return model_config(name, **{**options, "seed": settings.seed})
    except (TypeError, ValueError) as error:
        raise FitConfigError(f"model: {error}") from error


# --------------------------------------------------------------------------- running


def fit(
    config: str | Path | Mapping[str, Any],
    *,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    out: str | Path | None = None,
    resume: bool = False,
    dry_run: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callback] | None = None,
) -> dict[str, Any]:
    """Train and evaluate a model on your own files (module docstring); the Python twin of
    ``gmd26 fit``.

    Args:
        config: YAML file or mapping (``docs/own_data.md``).
        overrides: dotted ``KEY=VALUE`` changes (``"training.max_steps=100"``).
        out: output folder (overrides the config's ``out``).
        resume: continue the run in ``out`` from ``last.pt`` (the resolved config must match).
        dry_run: resolve and write ``fit_config.yaml`` only; nothing is trained.
        progress: show progress bars.
        callbacks: trainer callbacks (default: routing logging per ``routing_logging``).

    Returns:
        The JSON-able result, also written to ``out/metrics.json``: ``status``, ``out_dir``,
        ``checkpoint``, ``config``, ``metrics`` (``{valid | test file: {...}}``),
        ``per_element``, ``per_fragment``, ``e0``, ``frames``, ``params``, ``training``.

    Raises:
        FitConfigError, ExternalDataError, FileNotFoundError: before any training.
    """
    started = time.monotonic()
    raw, base = load_config(config, overrides)
    if out is not None:
        raw["out"] = str(Path(out).resolve())
    config_path = None if isinstance(config, Mapping) else Path(config)
    settings = parse_config(raw, base, config_path)
    plan = prepare(settings)
    resolved = plan.config()
    _check_out(plan.out, resolved, resume, dry_run)
    if dry_run:
        build_network(plan)  # the settings are valid
    context = DistributedContext() if dry_run else init_from_environment(settings.device)
    if context.is_main:
        plan.out.mkdir(parents=True, exist_ok=True)
        for note in plan.notes:
            logger.info("fit: %s", note)
        write_config(plan.out / CONFIG_FILE, resolved)
    if dry_run:
        return json_safe({"status": "dry run", "out_dir": str(plan.out), "config": resolved})
    return run(
        plan,
        resolved,
        resume=resume,
        progress=progress,
        callbacks=callbacks,
        started=started,
        context=context,
    )


def write_config(path: Path, resolved: Mapping[str, Any]) -> None:
    """Write a resolved config as YAML (atomically)."""
    text = (
        f"# written by gmd26 fit {__version__}; `gmd26 fit {path.name}` repeats the run\n"
        + yaml.safe_dump(json_safe(resolved), sort_keys=False, allow_unicode=True)
    )
    with atomic_write(path) as partial:
        partial.write_text(text)


RESUME_MAY_CHANGE = ("max_steps", "max_minutes")
"""Training settings a resumed run may change (a longer budget, another safety cap)."""


def _comparable(config: Mapping[str, Any], resuming: bool = False) -> dict[str, Any]:
    """The settings that define a run (``resuming``: minus :data:`RESUME_MAY_CHANGE`)."""
    out = {k: v for k, v in config.items() if k not in ("resolved", "device", "out")}
    if resuming and isinstance(out.get("training"), Mapping):
        out["training"] = {k: v for k, v in out["training"].items() if k not in RESUME_MAY_CHANGE}
    return out


def _check_out(out: Path, resolved: Mapping[str, Any], resume: bool, dry_run: bool) -> None:
    last = out / LAST_CHECKPOINT
    if dry_run:
        return
    if resume:
        if not last.exists():
            raise FitConfigError(f"resume: no {LAST_CHECKPOINT} in {out} to resume from")
        stored_path = out / CONFIG_FILE
        if stored_path.exists():
            stored_config = yaml.safe_load(stored_path.read_text()) or {}
            stored = _comparable(stored_config, resuming=True)
            current = _comparable(resolved, resuming=True)
            changed = sorted(
                k for k in set(stored) | set(current) if stored.get(k) != current.get(k)
            )
            hashes = (stored_config.get("resolved") or {}).get("sha256")
            current_hashes = (resolved.get("resolved") or {}).get("sha256")
            if hashes and current_hashes and hashes != current_hashes:
                changed.append("data file contents (sha256)")
            if changed:
                raise FitConfigError(
                    f"resume: the config differs from the run in {out} in {changed}; resume "
                    f"with the same config or choose another out"
                )
    elif last.exists():
        raise FitConfigError(
            f"{out} already holds a run ({LAST_CHECKPOINT}); pass --resume (resume=True) to "
            f"continue it, or choose another out"
        )


def build_network(plan: FitPlan) -> torch.nn.Module:
    """The planned network (seeded by the config's seed); invalid settings raise
    :class:`FitConfigError`."""
    try:
        network = build_model(plan.settings.model, **plan.model_settings)
    except (TypeError, ValueError) as error:
        raise FitConfigError(f"model {plan.settings.model!r}: {error}") from error
    if getattr(network, "needs_fragments", False) and plan.fragment_source == "none":
        raise FitConfigError(
            f"model {plan.settings.model!r} reads fragment labels but the data have none; set "
            f"fragments: perceive or array"
        )
    return network


def run(
    plan: FitPlan,
    resolved: Mapping[str, Any] | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callback] | None = None,
    started: float | None = None,
    context: DistributedContext | None = None,
) -> dict[str, Any]:
    """Train the planned model, evaluate it and write the outputs (see :func:`fit`). Under
    ``torchrun`` every process trains and evaluates its shard; process 0 writes."""
    started = time.monotonic() if started is None else started
    resolved = dict(resolved or plan.config())
    settings, preset = plan.settings, plan.preset
    context = context or DistributedContext()
    device = settings.device
    if device.startswith("cuda") and context.is_distributed:
        device = f"cuda:{context.local_rank}"
    torch.manual_seed(settings.seed)
    network = build_network(plan)
    test_frames: dict[str, list[Frame]] = {}
    if callbacks is None:
        callbacks, test_frames = _routing_callbacks(network, plan)
    fragment_vocabulary = plan.vocabulary.to_dict() if plan.vocabulary else None
    trainer = Trainer(
        network,
        settings.model,
        plan.model_settings,
        preset,
        plan.train,
        plan.valid,
        plan.out,
        seed=settings.seed,
        device=device,
        test_frames=test_frames,
        callbacks=callbacks,
        context=context,
        deadline=None if preset.max_minutes is None else started + 60.0 * preset.max_minutes,
        progress=progress,
        run_info={
            "task": "fit",
            "preset_name": preset.name,
            "fit_config": json_safe(_comparable(resolved)),
            "fragment_vocabulary": fragment_vocabulary,
        },
        e0=plan.e0,
    )
    summary = trainer.fit(resume=resume)
    trainer.load_best()
    sets = {VALID_NAME: plan.valid, **plan.tests}
    predictions: dict[str, Predictions] = {name: trainer.evaluate(f) for name, f in sets.items()}
    names = plan.vocabulary.names if plan.vocabulary else None
    file_names = breakdown.short_names(list(sets))
    if context.is_main:
        for name, split_predictions in predictions.items():
            split_predictions.save(plan.out / f"predictions_{breakdown.slug(file_names[name])}.npz")
        strip_training_state(trainer.best_checkpoint, trainer.best_checkpoint)
    result = {
        "status": "ok",
        "model": settings.model,
        "out_dir": str(plan.out),
        "checkpoint": str(trainer.best_checkpoint),
        "config": str(plan.out / CONFIG_FILE),
        "metrics": {file_names[n]: breakdown.set_metrics(p) for n, p in predictions.items()},
        "per_element": {
            file_names[n]: breakdown.per_element_metrics(p) for n, p in predictions.items()
        },
        "per_fragment": {
            file_names[n]: breakdown.per_fragment_metrics(p, names) for n, p in predictions.items()
        }
        if names
        else None,
        "files": {file_names[n]: n for n in predictions},
        "e0": {external.element_symbol(z): e for z, e in plan.e0.as_dict().items()},
        "frames": {"train": len(plan.train), **{file_names[n]: len(f) for n, f in sets.items()}},
        "params": sum(p.numel() for p in network.parameters()),
        "notes": plan.notes,
        "training": summary.to_dict(),
        "wall_seconds": time.monotonic() - started,
    }
    if context.is_main:
        write_json(plan.out / METRICS_FILE, result)
    return json_safe(result)


def _routing_callbacks(
    network: torch.nn.Module, plan: FitPlan
) -> tuple[list[Callback], dict[str, list[Frame]]]:
    """The benchmark's routing TensorBoard callback, with the validation frames as ``id`` and
    the first test file as ``ood``, when ``routing_logging`` asks for it (``auto``: a routing
    model, fragment labels and a test file)."""
    wanted = plan.settings.routing_logging
    possible = (
        bool(getattr(network, "has_routing", False))
        and plan.vocabulary is not None
        and bool(plan.tests)
    )
    if wanted is True and not possible:
        raise FitConfigError(
            "routing_logging: true needs a routing model (DeepSet-MoE), fragment labels "
            "(fragments: array or perceive) and a test_file (its routing is the second split)"
        )
    if not (possible and wanted in (True, "auto")):
        return [], {}
    try:
        routing_logging = importlib.import_module("deepset_moe.routing_logging")
    except ImportError as error:
        logger.warning("routing logging unavailable (%s); training without it", error)
        return [], {}
    callback = routing_logging.RoutingTensorBoardCallback(
        final_epoch=plan.preset.rounds, fragment_names=plan.vocabulary.names
    )
    first_test = next(iter(plan.tests.values()))
    return [callback], {"id_test": plan.valid, "ood_test": first_test}


def format_result(result: Mapping[str, Any]) -> str:
    """The metrics table of a fit result (one column per validation / test file) and the
    per-element table of the last evaluated file."""
    metrics = result["metrics"]
    title = (
        f"{result['model']}: {result['training']['steps']} steps, best round "
        f"{result['training']['best_epoch']}, {result['params']} parameters"
    )
    lines = [breakdown.format_set_table(metrics, title)]
    for name, groups in result["per_element"].items():
        lines += ["", breakdown.format_atom_table(groups, f"per element, {name}")]
    return "\n".join(lines)
