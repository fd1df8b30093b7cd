"""Data generation: smoke build, resume, failures, executors, split loading, shipped dataset."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import all_changes
from ase.calculators.lj import LennardJones

from benchmark.cli import build as build_command
from benchmark.cli import info as info_command
from benchmark.dataset import layout
from benchmark.dataset.build import BuildConfigError, SerialExecutor, build_dataset, build_units
from benchmark.dataset.references import get_calculator
from benchmark.dataset.sampling import GENERATION_PRESETS, derive_seed, single_threaded_openmp
from benchmark.dataset.splits import SPLITS, read_manifest, trajectory_id
from benchmark.dataset.statistics import dataset_statistics
from benchmark.dataset.tasks import TASK_NAMES, all_molecules
from benchmark.executors import as_executor
from deepset_moe.fragments import NUM_FRAGMENTS, fragments_from_smiles

SMOKE = GENERATION_PRESETS["smoke"]
N_SMOKE_TRAJECTORIES = len(build_units("smoke", SMOKE.trajectories_per_molecule))


def stored_bytes(out: Path) -> dict[str, bytes]:
    """Every data file of a build (frames, failure records, manifests, failures.json)."""
    files = sorted((out / "frames").rglob("*")) + sorted((out / "manifests").glob("*.json"))
    files.append(out / "failures.json")
    return {str(p.relative_to(out)): p.read_bytes() for p in files if p.is_file()}


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory) -> Path:
    """An uninterrupted smoke build (MMFF MD and labels), in this process."""
    out = tmp_path_factory.mktemp("smoke")
    summary = build_dataset(out, "smoke", "mmff", workers=1, progress=False)
    assert summary.ok and summary.computed_trajectories == N_SMOKE_TRAJECTORIES
    return out


def test_derive_seed_is_stable_and_distinct():
    # a fixed value: seeds must not depend on the process (no Python hash randomisation)
    assert derive_seed(0, "oh-c2", "trajectory", 1) == 1102615884
    digest = hashlib.sha256(b"0/oh-c2/trajectory/1").digest()
    assert derive_seed(0, "oh-c2", "trajectory", 1) == int.from_bytes(digest[:4], "little") & (
        2**31 - 1
    )
    seeds = {derive_seed(0, m, "trajectory", i) for m in ("oh-c1", "oh-c2") for i in range(3)}
    assert len(seeds) == 6
    assert derive_seed(1, "oh-c2", "trajectory", 1) != derive_seed(0, "oh-c2", "trajectory", 1)


def test_smoke_build_layout_and_counts(smoke_dir):
    build = layout.read_build_info(smoke_dir)
    assert build["status"] == "complete"
    assert build["reference"] == "mmff" and build["md_calculator"] == "mmff"
    for key in (
        "temperature_K",
        "timestep_fs",
        "friction_per_fs",
        "interval",
        "equilibration_steps",
        "frames_per_trajectory",
        "trajectories_per_molecule",
        "seed",
        "generator_version",
        "tasks_version",
        "wall_time_s",
    ):
        assert key in build
    frames_expected = N_SMOKE_TRAJECTORIES * SMOKE.frames_per_trajectory
    assert build["counts"]["frames"] == frames_expected
    assert build["counts"]["failures"] == 0
    assert json.loads((smoke_dir / "failures.json").read_text()) == {"count": 0, "failures": []}
    assert "done in" in (smoke_dir / "build.log").read_text()
    for task in TASK_NAMES:
        manifest = read_manifest(layout.manifest_path(smoke_dir, task))  # validates split rules
        assert manifest["reference"] == "mmff" and manifest["seed"] == 0
    assert len(list((smoke_dir / "frames").glob("*/t*.xyz.gz"))) == N_SMOKE_TRAJECTORIES


def test_smoke_frames_have_labels_for_every_atom(smoke_dir):
    for spec in all_molecules("smoke"):
        molecule, fragments = fragments_from_smiles(spec.smiles)
        for index in range(SMOKE.trajectories_per_molecule):
            frames = layout.read_trajectory(smoke_dir, spec.molecule_id, index)
            assert len(frames) == SMOKE.frames_per_trajectory
            steps = [f.step for f in frames]
            first = SMOKE.equilibration_steps + SMOKE.interval
            assert steps == list(range(first, first + len(frames) * SMOKE.interval, SMOKE.interval))
            for frame in frames:
                assert frame.n_atoms == molecule.GetNumAtoms()
                assert frame.forces.shape == (frame.n_atoms, 3)
                np.testing.assert_array_equal(frame.fragment, fragments)
                assert 0 <= frame.fragment.min() and frame.fragment.max() < NUM_FRAGMENTS
                assert np.isfinite(frame.energy) and np.isfinite(frame.forces).all()
            # the stored label is the reference at the stored geometry
            last = frames[-1]
            atoms = Atoms(numbers=last.numbers, positions=last.positions)
            atoms.calc = get_calculator("mmff", molecule=molecule)
            assert atoms.get_potential_energy() == pytest.approx(last.energy, abs=1e-6)
            np.testing.assert_allclose(atoms.get_forces(), last.forces, atol=1e-6)
        # independent trajectories start from different conformers and seeds
        a, b = (layout.read_trajectory(smoke_dir, spec.molecule_id, i)[0] for i in (0, 1))
        assert not np.allclose(a.positions, b.positions)


class PollOnlyFuture:
    """A future with only ``done()`` and ``result()`` (as much as a dask future is relied on)."""

    def __init__(self, inner):
        self._inner = inner

    def done(self) -> bool:
        return self._inner.done()

    def result(self):
        return self._inner.result()


def test_resume_after_lost_files_on_a_dask_cluster(smoke_dir, tmp_path, dask_client):
    out = tmp_path / "resumed"
    shutil.copytree(smoke_dir, out)
    removed = sorted((out / "frames").glob("*/t*.xyz.gz"))[::5]
    for path in removed:
        path.unlink()
    # half-written files of an interrupted write: atomic_write's and the pre-atomic_write name
    names = ("t0.xyz.partial.gz", "t0.xyz.gz.partial")
    strays = [out / "frames" / "oh-c1" / name for name in names]
    for stray in strays:
        stray.write_bytes(b"half-written")
    summary = build_dataset(out, "smoke", "mmff", executor=dask_client, progress=False)
    assert summary.computed_trajectories == len(removed)
    assert not any(stray.exists() for stray in strays)
    assert stored_bytes(out) == stored_bytes(smoke_dir)


class InterruptingExecutor(SerialExecutor):
    """Serial executor interrupted (Ctrl-C) once ``collect`` finished units were collected."""

    def __init__(self, collect: int):
        self.left = collect

    def submit(self, fn, *args):
        return InterruptingFuture(self, super().submit(fn, *args))


class InterruptingFuture(PollOnlyFuture):
    def __init__(self, owner: InterruptingExecutor, inner):
        super().__init__(inner)
        self._owner = owner

    def result(self):
        if self._owner.left <= 0:
            raise KeyboardInterrupt
        self._owner.left -= 1
        return super().result()


def test_interrupted_build_resumes_to_identical_data(smoke_dir, tmp_path):
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        build_dataset(out, "smoke", "mmff", executor=InterruptingExecutor(7), progress=False)
    assert len(list((out / "frames").glob("*/t*.xyz.gz"))) == 7  # stored as they finished
    assert layout.read_build_info(out)["status"] == "interrupted"
    summary = build_dataset(out, "smoke", "mmff", workers=1, progress=False)
    assert summary.ok and summary.computed_trajectories == N_SMOKE_TRAJECTORIES - 7
    assert stored_bytes(out) == stored_bytes(smoke_dir)
    assert layout.read_build_info(out)["status"] == "complete"


def test_process_pool_and_dask_builds_are_identical(smoke_dir, tmp_path, dask_client):
    """In this process, in a pool of two processes, on a real dask cluster: the same bytes."""
    summary = build_dataset(tmp_path / "pool", "smoke", "mmff", workers=2, progress=False)
    assert summary.ok
    assert stored_bytes(tmp_path / "pool") == stored_bytes(smoke_dir)
    summary = build_dataset(tmp_path / "dask", "smoke", "mmff", executor=dask_client,
                            progress=False)  # fmt: skip
    assert summary.ok and summary.computed_trajectories == N_SMOKE_TRAJECTORIES
    assert stored_bytes(tmp_path / "dask") == stored_bytes(tmp_path / "pool")


def unit_killing_its_worker(victim: str, frames: str, fn, *args):
    """The build's unit, except that trajectory ``victim`` kills its dask worker process
    (SIGKILL) once a first trajectory has landed in ``frames``."""
    spec, index = args[0], args[1]
    if trajectory_id(spec.molecule_id, index) == victim:
        deadline = time.monotonic() + 60
        while not any(Path(frames).glob("*/t*.xyz.gz")) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
    return fn(*args)


class WorkerKillingExecutor:
    """The real dask client, running :func:`unit_killing_its_worker` around every unit."""

    def __init__(self, client, victim: str, frames: Path):
        self.dask, self.victim, self.frames = as_executor(client), victim, str(frames)

    def submit(self, fn, *args):
        return self.dask.submit(unit_killing_its_worker, self.victim, self.frames, fn, *args)


def test_a_killed_dask_worker_loses_no_finished_trajectory(smoke_dir, tmp_path, dask_client):
    """A worker dies mid-build: its unit is recorded (``KilledWorker``) and missing, every
    finished trajectory is kept, and resuming on the cluster computes only the lost units,
    rewrites no finished file and ends byte-identical to an uninterrupted build."""
    out = tmp_path / "killed"
    spec, index = build_units("smoke", SMOKE.trajectories_per_molecule)[N_SMOKE_TRAJECTORIES // 2]
    victim = trajectory_id(spec.molecule_id, index)
    executor = WorkerKillingExecutor(dask_client, victim, out / "frames")
    summary = build_dataset(out, "smoke", "mmff", executor=executor, progress=False)
    assert not summary.ok and victim in summary.missing
    assert any(r["stage"] == "setup" and "KilledWorker" in r["error"] for r in summary.failures)
    assert layout.read_build_info(out)["status"] == "incomplete"
    finished = {
        path: (path.stat().st_ino, path.stat().st_mtime_ns)
        for path in (out / "frames").glob("*/t*.xyz.gz")
    }
    assert len(finished) == N_SMOKE_TRAJECTORIES - len(summary.missing) > 0
    resumed = build_dataset(out, "smoke", "mmff", executor=dask_client, progress=False)
    assert resumed.ok and resumed.computed_trajectories == len(summary.missing)
    assert all((p.stat().st_ino, p.stat().st_mtime_ns) == stamp for p, stamp in finished.items())
    assert stored_bytes(out) == stored_bytes(smoke_dir)
    assert layout.read_build_info(out)["status"] == "complete"


def test_resume_with_other_settings_is_refused(smoke_dir, tmp_path):
    out = tmp_path / "other"
    shutil.copytree(smoke_dir, out)
    with pytest.raises(BuildConfigError, match=r"seed: 0 -> 1"):
        build_dataset(out, "smoke", "mmff", seed=1, workers=1, progress=False)


class FlakyReference(LennardJones):
    """A real ASE calculator (Lennard-Jones) that fails for methanol: it raises on its 3rd
    call and returns a NaN energy on its 5th (the build copies it for every trajectory)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.atoms.get_chemical_formula() != "CH4O":
            return
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("SCF exploded")
        if self.calls == 5:
            self.results["energy"] = float("nan")


def test_failing_reference_is_reported_by_molecule_trajectory_and_step(tmp_path):
    out = tmp_path / "flaky"
    summary = build_dataset(out, "smoke", FlakyReference(), workers=1, progress=False)
    assert not summary.ok
    first = SMOKE.equilibration_steps + SMOKE.interval
    expected = [
        (t, first + 2 * SMOKE.interval, "RuntimeError: SCF exploded")
        for t in range(SMOKE.trajectories_per_molecule)
    ] + [
        (t, first + 4 * SMOKE.interval, "FloatingPointError")
        for t in range(SMOKE.trajectories_per_molecule)
    ]
    records = json.loads((out / "failures.json").read_text())["failures"]
    assert records == summary.failures and len(records) == len(expected)
    for trajectory, step, error in expected:
        [record] = [r for r in records if r["trajectory"] == trajectory and r["step"] == step]
        assert record["molecule_id"] == "oh-c1" and record["stage"] == "reference"
        assert record["error"].startswith(error)
    frames = layout.read_trajectory(out, "oh-c1", 0)
    assert len(frames) == SMOKE.frames_per_trajectory - 2  # failed frames are not stored ...
    assert first + 2 * SMOKE.interval not in [f.step for f in frames]
    assert all(f.reference == "FlakyReference" for f in frames)
    other = layout.read_trajectory(out, "oh-c2", 0)  # ... and other molecules are untouched
    assert len(other) == SMOKE.frames_per_trajectory
    assert layout.read_build_info(out)["counts"]["failures"] == 6


def test_load_split_returns_exactly_the_listed_trajectories(smoke_dir):
    for task in TASK_NAMES:
        manifest = read_manifest(layout.manifest_path(smoke_dir, task))
        for split in SPLITS:
            frames = layout.load_split(smoke_dir, task, split)
            listed = {
                f"{entry['molecule_id']}/t{index}"
                for entry in manifest["splits"][split]
                for index in entry["trajectories"]
            }
            assert {f.trajectory_id for f in frames} == listed
            assert len(frames) == len(listed) * SMOKE.frames_per_trajectory
    train = {f.trajectory_id for f in layout.load_split(smoke_dir, "duplication", "train")}
    id_test = {f.trajectory_id for f in layout.load_split(smoke_dir, "duplication", "id_test")}
    assert not train & id_test


def test_load_split_names_a_missing_trajectory(smoke_dir, tmp_path):
    out = tmp_path / "holes"
    shutil.copytree(smoke_dir, out)
    layout.trajectory_path(out, "oh-c2", 1).unlink()
    with pytest.raises(FileNotFoundError, match=r"trajectory oh-c2/t1 is missing.*t1\.xyz\.gz"):
        layout.load_split(out, "duplication", "val")


def test_statistics_and_cli(smoke_dir, capsys):
    stats = dataset_statistics(smoke_dir)
    assert stats["all"]["frames"] == layout.read_build_info(smoke_dir)["counts"]["frames"]
    assert stats["all"]["molecules"] == len(all_molecules("smoke")) + 3  # + the probe's
    assert stats["probe"]["long_di"]["molecules"] == 2
    assert stats["probe"]["long_mixed"]["trajectories"] == 2
    for task in TASK_NAMES:
        frames = sum(stats["tasks"][task][split]["frames"] for split in SPLITS)
        assert 0 < frames <= stats["all"]["frames"]
    assert stats["all"]["force_norm_eV_per_A"]["mean"] > 0
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    info_command.register(subparsers)
    build_command.register(subparsers)
    args = parser.parse_args(["info", str(smoke_dir), "--additivity"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert all(task in printed for task in TASK_NAMES) and "ood_test" in printed
    assert "probe          long_mixed " in printed
    for task in TASK_NAMES:  # the linear reference fits: one ID and one OOD row per model
        assert re.search(rf"^{task} +fragment +ood +", printed, re.MULTILINE)
        assert re.search(rf"^{task} +element +id +\d", printed, re.MULTILINE)
    # re-running the finished build computes nothing and exits 0
    args = parser.parse_args(
        [
            "build",
            "--preset",
            "smoke",
            "--reference",
            "mmff",
            "--out",
            str(smoke_dir),
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    assert args.func(args) == 0
    assert "0 computed now" in capsys.readouterr().out


REPO_DATA = Path(__file__).resolve().parents[3] / "data" / "gmd26"


def test_shipped_dataset_matches_gfn2_xtb():
    """The committed dataset (data/gmd26) is labelled with GFN2-xTB: recompute a few frames."""
    assert (REPO_DATA / "build.json").exists(), f"the shipped dataset is missing at {REPO_DATA}"
    build = layout.read_build_info(REPO_DATA)
    assert build["reference"] == "xtb" and build["status"] == "complete"
    frames = []
    for task, split in (("duplication", "id_test"), ("elongation", "ood_test")):
        molecule_id, index = layout.split_trajectories(REPO_DATA, task, split)[0]
        frames += layout.read_trajectory(REPO_DATA, molecule_id, index)[::15]
    assert len(frames) >= 3
    with single_threaded_openmp():
        for frame in frames:
            atoms = Atoms(numbers=frame.numbers, positions=frame.positions)
            atoms.calc = get_calculator("xtb")
            assert atoms.get_potential_energy() == pytest.approx(frame.energy, abs=1e-4)
            np.testing.assert_allclose(atoms.get_forces(), frame.forces, atol=1e-3)
