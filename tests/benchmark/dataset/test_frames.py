"""Extended-XYZ storage of labelled frames: exact round trip and loud failures."""

from __future__ import annotations

import gzip

import ase
import ase.io
import numpy as np
import pytest

from benchmark.dataset.frames import DataFormatError, Frame, read_frames, write_frames
from benchmark.dataset.layout import count_frames


def make_frame(rng: np.random.Generator, n_atoms: int, index: int, on_grid: bool) -> Frame:
    """A frame with random values; ``on_grid`` puts positions/forces on the 1e-8 storage grid."""
    positions = rng.normal(scale=3.0, size=(n_atoms, 3))
    forces = rng.normal(scale=2.0, size=(n_atoms, 3))
    if on_grid:
        positions = rng.integers(-(10**9), 10**9, size=(n_atoms, 3)) / 1e8
        forces = rng.integers(-(10**9), 10**9, size=(n_atoms, 3)) / 1e8
    return Frame(
        numbers=rng.choice([1, 6, 7, 8], size=n_atoms).astype(np.int64),
        positions=positions,
        fragment=rng.integers(0, 8, size=n_atoms).astype(np.int64),
        energy=float(rng.normal(scale=500.0)),
        forces=forces,
        smiles="CCO",
        molecule_id="oh-c2",
        trajectory_id="oh-c2/t1",
        reference="xtb",
        step=10 * index,
    )


def assert_same(a: Frame, b: Frame) -> None:
    for name in ("numbers", "positions", "fragment", "forces"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert a.energy == b.energy
    assert (a.smiles, a.molecule_id, a.trajectory_id, a.reference, a.step) == (
        b.smiles,
        b.molecule_id,
        b.trajectory_id,
        b.reference,
        b.step,
    )


@pytest.mark.parametrize("suffix", [".xyz", ".xyz.gz"])
def test_round_trip_is_bit_exact(tmp_path, suffix):
    rng = np.random.default_rng(0)
    frames = [make_frame(rng, n, i, on_grid=True) for i, n in enumerate((3, 9, 27))]
    path = tmp_path / f"frames{suffix}"
    write_frames(path, frames)
    back = read_frames(path)
    assert len(back) == len(frames)
    for original, read in zip(frames, back):
        assert_same(original, read)
    assert count_frames(path) == (3, 39)
    assert not list(tmp_path.glob("*.partial*"))


def test_arbitrary_values_quantised_once_then_stable(tmp_path):
    rng = np.random.default_rng(1)
    frames = [make_frame(rng, 12, i, on_grid=False) for i in range(4)]
    first, second = tmp_path / "a.xyz.gz", tmp_path / "b.xyz.gz"
    write_frames(first, frames)
    back = read_frames(first)
    for original, read in zip(frames, back):
        assert np.abs(read.positions - original.positions).max() <= 5.1e-9
        assert np.abs(read.forces - original.forces).max() <= 5.1e-9
        assert read.energy == original.energy  # energies are written with full precision
    write_frames(second, back)
    assert second.read_bytes() == first.read_bytes()  # deterministic bytes, no gzip time stamp


def write_atoms(path, atoms_list):
    ase.io.write(path, atoms_list, format="extxyz")


def good_atoms(index: int) -> ase.Atoms:
    rng = np.random.default_rng(index)
    return make_frame(rng, 5, index, on_grid=True).to_atoms()


@pytest.mark.parametrize(
    ("remove", "where"),
    [("ref_energy", "info"), ("ref_forces", "arrays"), ("fragment", "arrays")],
)
def test_missing_label_names_file_and_frame(tmp_path, remove, where):
    bad = good_atoms(1)
    del getattr(bad, where)[remove]
    path = tmp_path / "labels.xyz"
    write_atoms(path, [good_atoms(0), bad])
    message = rf"labels\.xyz frame 1: missing labels \['{remove}'\]"
    with pytest.raises(DataFormatError, match=message):
        read_frames(path)


def test_nan_coordinates_name_file_frame_and_atom(tmp_path):
    bad = good_atoms(1)
    bad.positions[3, 1] = np.nan
    path = tmp_path / "nan.xyz"
    write_atoms(path, [good_atoms(0), good_atoms(2), bad])
    with pytest.raises(DataFormatError, match=r"nan\.xyz frame 2: non-finite positions \(atom 3\)"):
        read_frames(path)


def test_truncated_gzip_names_file(tmp_path):
    path = tmp_path / "cut.xyz.gz"
    write_frames(path, [make_frame(np.random.default_rng(i), 30, i, True) for i in range(5)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match=r"cut\.xyz\.gz frame \d+: cannot parse"):
        read_frames(path)


def test_truncated_extxyz_names_file_and_frame(tmp_path):
    path = tmp_path / "cut.xyz"
    write_frames(path, [make_frame(np.random.default_rng(i), 6, i, True) for i in range(3)])
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: 2 * 8 + 4]))  # two whole frames, then half of the third
    with pytest.raises(DataFormatError, match=r"cut\.xyz frame 2"):
        read_frames(path)
    with pytest.raises(DataFormatError, match=r"cut\.xyz frame 2: file ends inside the frame"):
        count_frames(path)


def test_garbage_gzip_names_file(tmp_path):
    path = tmp_path / "garbage.xyz.gz"
    path.write_bytes(gzip.compress(b"3\nnot an extxyz comment line\nH 0 0\n"))
    with pytest.raises(DataFormatError, match=r"garbage\.xyz\.gz frame 0"):
        read_frames(path)


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "absent.xyz.gz"
    with pytest.raises(FileNotFoundError, match=r"absent\.xyz\.gz"):
        read_frames(path)
