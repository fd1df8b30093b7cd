"""The committed GMD-26 dataset (data/gmd26): size, split rules and chemically intact frames.

(Its labels are recomputed with GFN2-xTB in ``test_generation.py``.)
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.dataset import layout
from benchmark.dataset.probe import PROBE_TRAJECTORIES, probe_molecules, read_probe_manifest
from benchmark.dataset.splits import read_manifest
from benchmark.dataset.tasks import TASK_NAMES
from deepset_moe.fragments import fragments_from_geometry

SHIPPED = layout.DEFAULT_DATA_DIR
PROBE_IDS = {m.molecule_id for m in probe_molecules("standard")}


@pytest.fixture(scope="module")
def build_info() -> dict:
    assert (SHIPPED / "build.json").exists(), f"the shipped dataset is missing at {SHIPPED}"
    return layout.read_build_info(SHIPPED)


def test_size_and_completeness(build_info: dict) -> None:
    counts = build_info["counts"]
    assert build_info["status"] == "complete" and build_info["reference"] == "xtb"
    assert counts["molecules"] >= 100 and counts["frames"] >= 20_000
    assert counts["failures"] == 0 and counts["missing_trajectories"] == 0
    assert layout.read_failures(SHIPPED) == []
    probe = read_probe_manifest(SHIPPED)  # the compositional probe ships with the data
    assert {entry["molecule_id"] for entry in probe["molecules"]} == PROBE_IDS


@pytest.mark.parametrize("task", TASK_NAMES)
def test_manifest_obeys_the_task_rules(task: str, build_info: dict) -> None:
    manifest = read_manifest(layout.manifest_path(SHIPPED, task))  # validates every rule
    splits = manifest["splits"]
    ood = {entry["smiles"] for entry in splits["ood_test"]}
    for split in ("train", "val", "id_test"):
        assert ood.isdisjoint(entry["smiles"] for entry in splits[split])
    train = {(e["molecule_id"], t) for e in splits["train"] for t in e["trajectories"]}
    for split in ("val", "id_test"):
        held_out = {(e["molecule_id"], t) for e in splits[split] for t in e["trajectories"]}
        assert train.isdisjoint(held_out)
    for molecule_id, index in layout.split_trajectories(SHIPPED, task, "ood_test"):
        assert layout.trajectory_path(SHIPPED, molecule_id, index).exists()


def test_last_frames_keep_the_molecule_topology(build_info: dict) -> None:
    """500 K MD broke no bond and moved no proton: bonds perceived from the geometry of the
    last frame of one trajectory per molecule give exactly the stored fragment labels."""
    molecule_ids = sorted(p.name for p in (SHIPPED / "frames").iterdir())
    assert len(molecule_ids) == build_info["counts"]["molecules"]
    for molecule_id in molecule_ids:
        last = (
            PROBE_TRAJECTORIES
            if molecule_id in PROBE_IDS
            else build_info["trajectories_per_molecule"]
        )
        frame = layout.read_trajectory(SHIPPED, molecule_id, last - 1)[-1]
        assert frame.fragment.shape == frame.numbers.shape
        perceived = fragments_from_geometry(frame.numbers, frame.positions)
        np.testing.assert_array_equal(perceived, frame.fragment, err_msg=molecule_id)
