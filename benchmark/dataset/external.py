"""Labelled structures from your own files (extended XYZ, ASE databases, anything ASE reads)
as benchmark :class:`~benchmark.dataset.frames.Frame` objects, so the one trainer and the one
evaluator take them unchanged.

Where the labels are found
--------------------------
An energy key ``K`` is looked up in ``atoms.info[K]``, then in the results of the structure's
calculator (``atoms.calc.results[K]``: ASE's extxyz reader moves ``energy`` / ``forces`` into a
``SinglePointCalculator``, and ASE databases store them there too). A forces key is looked up
in ``atoms.arrays[K]``, then in the calculator results. Without a key, the first of
:data:`DEFAULT_ENERGY_KEYS` / :data:`DEFAULT_FORCES_KEYS` that the first frame has is used (ASE's
own ``energy`` / ``forces``, then the GMD-26 ``ref_energy`` / ``ref_forces``). Every frame must
have the chosen keys; a missing key raises :class:`ExternalDataError` naming the file, the frame
and every key the frame does have, before anything is trained.

Other per-frame facts, all optional: ``molecule_id`` (``info[molecule_key]``, else
``<file stem>:<frame index>``, i.e. every frame its own molecule), ``trajectory_id`` (else the
molecule id), ``smiles`` (else ``""``), ``reference`` (else ``"external"``), ``step`` (else the
frame index) and ``charge`` (used by bond perception, default 0).

Fragment labels (``fragments``)
-------------------------------
=============  ==============================================================================
``array``      per-atom integer labels from ``atoms.arrays[fragment_key]`` (indices into the
               vocabulary)
``perceive``   bonds perceived from the geometry (RDKit), then the vocabulary's SMARTS rules
               (:meth:`deepset_moe.fragments.FragmentVocabulary.from_geometry`); once per
               molecule when frames carry a ``molecule_id``, else once per frame
``none``       no labels: every atom gets 0, and only models that read no fragments may use
               them (the caller checks)
``auto``       ``array`` when every frame of every file has ``fragment_key``, else ``none``
=============  ==============================================================================

A file name may carry an ASE index, ``traj.xyz@0:1000`` or ``md.traj@::10``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ase
import ase.io
import numpy as np
from ase import units
from ase.io.formats import parse_filename

from benchmark.dataset.frames import DataFormatError, Frame
from deepset_moe.fragments import PERIODIC_SYMBOLS, FragmentError, FragmentVocabulary

DEFAULT_ENERGY_KEYS: tuple[str, ...] = ("energy", "ref_energy")
"""Energy keys tried, in order, when none is given: ASE's own, then GMD-26's."""
DEFAULT_FORCES_KEYS: tuple[str, ...] = ("forces", "ref_forces")
"""Forces keys tried, in order, when none is given."""
DEFAULT_MOLECULE_KEY = "molecule_id"
DEFAULT_FRAGMENT_KEY = "fragment"
FRAGMENT_SOURCES: tuple[str, ...] = ("auto", "array", "perceive", "none")
DATABASE_SUFFIXES: tuple[str, ...] = (".db", ".aselmdb")

ENERGY_UNITS: dict[str, float] = {
    "eV": 1.0,
    "meV": 1e-3,
    "kcal/mol": units.kcal / units.mol,
    "kJ/mol": units.kJ / units.mol,
    "Hartree": units.Hartree,
}
"""Energy units of stored labels and their value in eV."""
FORCES_UNITS: dict[str, float] = {
    "eV/Å": 1.0,
    "eV/A": 1.0,
    "meV/Å": 1e-3,
    "meV/A": 1e-3,
    "kcal/mol/Å": units.kcal / units.mol,
    "kcal/mol/A": units.kcal / units.mol,
    "kJ/mol/Å": units.kJ / units.mol,
    "kJ/mol/A": units.kJ / units.mol,
    "Hartree/Bohr": units.Hartree / units.Bohr,
}
"""Forces units of stored labels and their value in eV/Å (positions must be in Å)."""


class ExternalDataError(DataFormatError):
    """A user data file cannot be read or lacks a label; the message names file and frame."""


# --------------------------------------------------------------------------- reading


def split_index(path: str | Path) -> tuple[Path, str]:
    """``"file.xyz@0:10"`` -> ``(Path("file.xyz"), "0:10")``; no ``@``: index ``":"``.

    A ``@`` that belongs to an existing file's name is kept in the name.
    """
    text = str(path)
    if Path(text).exists() or "@" not in Path(text).name:
        return Path(text), ":"
    name, index = text.rsplit("@", 1)
    return Path(name), index


def read_structures(path: str | Path) -> list[ase.Atoms]:
    """Every structure of an ASE-readable file (format guessed by ASE from the name/content).

    ASE databases (``.db``) are read row by row; a row's key-value pairs go to ``atoms.info``
    and its ``data`` entries to ``atoms.arrays`` (per-atom arrays) or ``atoms.info``.

    Raises:
        FileNotFoundError: no such file.
        ExternalDataError: ASE cannot parse the file (the message names it).
    """
    file, index = split_index(path)
    if not file.exists():
        raise FileNotFoundError(f"no data file at {file}")
    try:
        if file.suffix in DATABASE_SUFFIXES:
            structures = _read_database(file)
            _, selection = parse_filename(f"x@{index}")
            if isinstance(selection, int):
                return [structures[selection]]
            return structures[selection]
        structures = ase.io.read(file, index=index)
    except (FileNotFoundError, ExternalDataError):
        raise
    except Exception as error:  # ASE raises many types for unreadable files
        raise ExternalDataError(f"{path}: cannot be read by ASE ({error})") from error
    if isinstance(structures, ase.Atoms):
        structures = [structures]
    if not structures:
        raise ExternalDataError(f"{path}: holds no structures")
    return list(structures)


def _read_database(path: Path) -> list[ase.Atoms]:
    import ase.db

    structures = []
    with ase.db.connect(path) as database:
        for row in database.select():
            atoms = row.toatoms()
            atoms.info.update(row.key_value_pairs)
            for key, value in (row.data or {}).items():
                array = np.asarray(value)
                if array.ndim >= 1 and array.shape[0] == len(atoms):
                    atoms.arrays[key] = array
                else:
                    atoms.info[key] = value
            structures.append(atoms)
    return structures


def available_keys(atoms: ase.Atoms) -> dict[str, list[str]]:
    """The keys a structure holds: ``info``, per-atom ``arrays`` and ``calculator`` results."""
    results = getattr(atoms.calc, "results", None) or {}
    return {
        "info": sorted(atoms.info),
        "arrays": sorted(k for k in atoms.arrays if k not in ("numbers", "positions")),
        "calculator": sorted(results),
    }


def describe_keys(atoms: ase.Atoms) -> str:
    """``info: [...]; arrays: [...]; calculator results: [...]`` for error messages."""
    keys = available_keys(atoms)
    return (
        f"info keys {keys['info']}, per-atom arrays {keys['arrays']}, calculator results "
        f"{keys['calculator']}"
    )


def _calculator_result(atoms: ase.Atoms, key: str) -> Any:
    results = getattr(atoms.calc, "results", None) or {}
    return results.get(key)


def energy_value(atoms: ase.Atoms, key: str) -> Any:
    """``info[key]``, else the calculator result ``key``, else None."""
    if key in atoms.info:
        return atoms.info[key]
    return _calculator_result(atoms, key)


def forces_value(atoms: ase.Atoms, key: str) -> Any:
    """``arrays[key]``, else the calculator result ``key``, else None."""
    if key in atoms.arrays:
        return atoms.arrays[key]
    return _calculator_result(atoms, key)


def resolve_label_keys(
    structures: Sequence[ase.Atoms],
    where: str,
    energy_key: str | Sequence[str] | None = None,
    forces_key: str | Sequence[str] | None = None,
) -> tuple[str, str]:
    """The energy and forces keys to read, checked on every structure.

    Args:
        structures: the structures of one file.
        where: the file, for messages.
        energy_key, forces_key: the key asked for, or candidate keys tried in order (the
            first the first structure has wins); None: :data:`DEFAULT_ENERGY_KEYS` /
            :data:`DEFAULT_FORCES_KEYS`.

    Raises:
        ExternalDataError: a key is absent from some structure; the message lists the keys
            that structure has.
    """
    if not structures:
        raise ExternalDataError(f"{where}: holds no structures")
    first = structures[0]
    keys = []
    for asked, defaults, lookup, what in (
        (energy_key, DEFAULT_ENERGY_KEYS, energy_value, "energy"),
        (forces_key, DEFAULT_FORCES_KEYS, forces_value, "forces"),
    ):
        if isinstance(asked, str):
            candidates: Sequence[str] = (asked,)
            problem = f"no {what} under {what}_key {asked!r}"
        else:
            candidates = tuple(dict.fromkeys(asked)) if asked else defaults
            problem = f"no {what}_key given and none of {list(candidates)} found"
        found = next((key for key in candidates if lookup(first, key) is not None), None)
        if found is None:
            raise ExternalDataError(
                f"{where} frame 0: {problem}; the frame has {describe_keys(first)}. "
                f"Set {what}_key to the key that holds the {what}"
            )
        for index, atoms in enumerate(structures):
            if lookup(atoms, found) is None:
                raise ExternalDataError(
                    f"{where} frame {index}: no {what} under {what}_key {found!r}; the frame has "
                    f"{describe_keys(atoms)}"
                )
        keys.append(found)
    return keys[0], keys[1]


def resolve_fragment_source(
    source: str, structures_per_file: Mapping[str, Sequence[ase.Atoms]], fragment_key: str
) -> str:
    """``auto`` -> ``array`` when every structure has ``fragment_key``, else ``none``; other
    sources are checked (``array`` needs the key on every structure) and returned."""
    if source not in FRAGMENT_SOURCES:
        raise ExternalDataError(f"fragments must be one of {FRAGMENT_SOURCES}, got {source!r}")
    missing = [
        (name, index, atoms)
        for name, structures in structures_per_file.items()
        for index, atoms in enumerate(structures)
        if fragment_key not in atoms.arrays
    ]
    if source == "auto":
        return "none" if missing else "array"
    if source == "array" and missing:
        name, index, atoms = missing[0]
        raise ExternalDataError(
            f"{name} frame {index}: fragments: array, but no per-atom array {fragment_key!r}; "
            f"the frame has {describe_keys(atoms)}. Set the fragment key, use fragments: "
            f"perceive (from the geometry) or fragments: none"
        )
    return source


# --------------------------------------------------------------------------- frames


def _finite_number(value: Any, where: str, what: str) -> float:
    array = np.asarray(value, dtype=np.float64).reshape(-1)
    if array.size != 1 or not math.isfinite(float(array[0])):
        raise ExternalDataError(f"{where}: {what} is not a finite number ({value!r})")
    return float(array[0])


def frames_from_structures(
    structures: Sequence[ase.Atoms],
    source: str,
    *,
    energy_key: str,
    forces_key: str,
    fragments: str = "none",
    vocabulary: FragmentVocabulary | None = None,
    fragment_key: str = DEFAULT_FRAGMENT_KEY,
    molecule_key: str = DEFAULT_MOLECULE_KEY,
    energy_scale: float = 1.0,
    forces_scale: float = 1.0,
) -> list[Frame]:
    """Labelled frames from structures (module docstring for where each field comes from).

    Args:
        structures: the structures of one file.
        source: the file name (messages, default molecule ids).
        energy_key, forces_key: resolved keys (:func:`resolve_label_keys`).
        fragments: ``array``, ``perceive`` or ``none`` (``auto`` resolved by the caller).
        vocabulary: the vocabulary of ``array`` labels or of perception.
        fragment_key: the per-atom array of ``array`` labels.
        molecule_key: the ``info`` key of the molecule id.
        energy_scale, forces_scale: factors converting the stored labels to eV and eV/Å.

    Raises:
        ExternalDataError: a missing, non-finite or misshapen label; a fragment label outside
            the vocabulary; an atom no fragment rule covers (naming atom, molecule and frame).
    """
    if fragments not in ("array", "perceive", "none"):
        raise ExternalDataError(f"fragments must be array, perceive or none, got {fragments!r}")
    if fragments != "none" and vocabulary is None:
        raise ValueError("a fragment vocabulary is needed to read or perceive fragments")
    stem = Path(split_index(source)[0]).name
    perceived: dict[str, np.ndarray] = {}
    frames = []
    for index, atoms in enumerate(structures):
        where = f"{source} frame {index}"
        numbers = np.asarray(atoms.numbers, dtype=np.int64)
        positions = np.asarray(atoms.positions, dtype=np.float64)
        if numbers.size == 0:
            raise ExternalDataError(f"{where}: has no atoms")
        if not np.isfinite(positions).all():
            atom = int(np.argwhere(~np.isfinite(positions))[0, 0])
            raise ExternalDataError(f"{where}: non-finite positions (atom {atom})")
        raw_energy = energy_value(atoms, energy_key)
        raw_forces = forces_value(atoms, forces_key)
        if raw_energy is None or raw_forces is None:
            key = energy_key if raw_energy is None else forces_key
            raise ExternalDataError(
                f"{where}: no label {key!r}; the frame has {describe_keys(atoms)}"
            )
        energy = _finite_number(raw_energy, where, f"energy {energy_key!r}") * energy_scale
        forces = np.asarray(raw_forces, dtype=np.float64) * forces_scale
        if forces.shape != positions.shape:
            raise ExternalDataError(
                f"{where}: forces {forces_key!r} have shape {forces.shape}, expected "
                f"{positions.shape}"
            )
        if not np.isfinite(forces).all():
            atom = int(np.argwhere(~np.isfinite(forces))[0, 0])
            raise ExternalDataError(f"{where}: non-finite forces (atom {atom})")
        explicit_id = molecule_key in atoms.info
        molecule_id = str(atoms.info[molecule_key]) if explicit_id else f"{stem}:{index}"
        if fragments == "array":
            labels = _array_labels(atoms, fragment_key, vocabulary, where)
        elif fragments == "perceive":
            cached = perceived.get(molecule_id) if explicit_id else None
            if cached is None or cached.shape != numbers.shape:
                cached = _perceive(atoms, vocabulary, where, molecule_id)
                if explicit_id:
                    perceived[molecule_id] = cached
            labels = cached
        else:
            labels = np.zeros(numbers.size, dtype=np.int64)
        frames.append(
            Frame(
                numbers=numbers,
                positions=positions,
                fragment=labels,
                energy=energy,
                forces=forces,
                smiles=str(atoms.info.get("smiles", "")),
                molecule_id=molecule_id,
                trajectory_id=str(atoms.info.get("trajectory_id", molecule_id)),
                reference=str(atoms.info.get("reference", "external")),
                step=int(atoms.info.get("step", index)),
            )
        )
    return frames


def _array_labels(
    atoms: ase.Atoms, key: str, vocabulary: FragmentVocabulary, where: str
) -> np.ndarray:
    if key not in atoms.arrays:
        raise ExternalDataError(
            f"{where}: no per-atom fragment array {key!r}; the frame has {describe_keys(atoms)}"
        )
    labels = np.asarray(atoms.arrays[key])
    if labels.shape != (len(atoms),) or not np.issubdtype(labels.dtype, np.integer):
        raise ExternalDataError(
            f"{where}: fragment array {key!r} must be [n_atoms] integers, got {labels.dtype} "
            f"{labels.shape}"
        )
    bad = np.flatnonzero((labels < 0) | (labels >= len(vocabulary)))
    if bad.size:
        raise ExternalDataError(
            f"{where}: fragment label {int(labels[bad[0]])} of atom {int(bad[0])} is outside "
            f"[0, {len(vocabulary)}) of the vocabulary {vocabulary.names}"
        )
    return labels.astype(np.int64)


def _perceive(
    atoms: ase.Atoms, vocabulary: FragmentVocabulary, where: str, molecule_id: str
) -> np.ndarray:
    charge = int(atoms.info.get("charge", 0))
    try:
        return vocabulary.from_geometry(atoms.numbers, atoms.positions, charge=charge)
    except FragmentError as error:
        raise ExternalDataError(
            f"{where} (molecule {molecule_id}, {atoms.get_chemical_formula()}): {error}"
        ) from error


def read_labelled(
    path: str | Path,
    energy_key: str | None = None,
    forces_key: str | None = None,
    **options: Any,
) -> list[Frame]:
    """:func:`read_structures` + :func:`resolve_label_keys` + :func:`frames_from_structures`
    for one file (``options`` as for the latter; ``fragments`` must not be ``auto``)."""
    structures = read_structures(path)
    energy_key, forces_key = resolve_label_keys(structures, str(path), energy_key, forces_key)
    return frames_from_structures(
        structures, str(path), energy_key=energy_key, forces_key=forces_key, **options
    )


# --------------------------------------------------------------------------- helpers


def elements_of(frames: Sequence[Frame]) -> list[int]:
    """Sorted atomic numbers present in ``frames``."""
    present: set[int] = set()
    for frame in frames:
        present.update(int(z) for z in np.unique(frame.numbers))
    return sorted(present)


def element_symbol(number: int) -> str:
    """Chemical symbol of an atomic number (``Z<n>`` beyond xenon)."""
    from ase.data import chemical_symbols

    number = int(number)
    if 0 < number < len(chemical_symbols):
        return chemical_symbols[number]
    return f"Z{number}"


def atomic_number(symbol_or_number: str | int) -> int:
    """``"Cl"`` or ``17`` or ``"17"`` -> 17; unknown symbols raise ``ValueError``."""
    from ase.data import atomic_numbers

    if isinstance(symbol_or_number, (int, np.integer)):
        return int(symbol_or_number)
    text = str(symbol_or_number).strip()
    if text.isdigit():
        return int(text)
    if text not in atomic_numbers:
        raise ValueError(f"unknown element {symbol_or_number!r}")
    return int(atomic_numbers[text])


def vocabulary_symbols(numbers: Sequence[int]) -> list[str]:
    """Element symbols a fragment vocabulary may list (up to xenon) for ``numbers``."""
    return [PERIODIC_SYMBOLS[z] for z in numbers if 0 < z < len(PERIODIC_SYMBOLS)]


def mean_neighbours(frames: Sequence[Frame], cutoff: float, max_frames: int = 1000) -> float:
    """Average number of neighbours within ``cutoff`` (Å) per atom over (at most
    ``max_frames`` evenly spaced) frames: the data-derived ``avg_num_neighbors``."""
    if not frames:
        raise ValueError("no frames to count neighbours in")
    step = max(1, len(frames) // max_frames)
    pairs = atoms_seen = 0
    for frame in frames[::step]:
        delta = frame.positions[:, None, :] - frame.positions[None, :, :]
        distance = np.sqrt((delta**2).sum(-1))
        pairs += int(((distance < cutoff) & (distance > 0)).sum())
        atoms_seen += frame.n_atoms
    return pairs / atoms_seen
