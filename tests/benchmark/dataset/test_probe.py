"""The compositional probe: listed by no task, scored only on fragments a task trained on."""

from __future__ import annotations

import json

import pytest

from benchmark.dataset.molecules import analyse_structure, mixed
from benchmark.dataset.probe import (
    PROBE_TRAJECTORIES,
    ProbeError,
    eligible_molecules,
    make_probe_manifest,
    probe_frames,
    probe_molecules,
    read_probe_manifest,
    write_probe_manifest,
)
from benchmark.dataset.tasks import TASK_NAMES, all_molecules, define_task


def test_no_task_lists_a_probe_molecule_and_every_task_can_score_it():
    listed = {analyse_structure(m.smiles).smiles for m in all_molecules("standard")}
    probe = probe_molecules("standard")
    assert len(probe) == 20 and not {analyse_structure(m.smiles).smiles for m in probe} & listed
    manifest = make_probe_manifest("standard")
    for task in TASK_NAMES:
        assert manifest["eligible_tasks"][task] == [m.molecule_id for m in probe]
    families = [entry["family"] for entry in manifest["molecules"]]
    assert families.count("long_di") == 8 and families.count("long_mixed") == 12


def test_a_probe_molecule_with_a_fragment_the_task_never_trained_on_is_not_scored():
    # smoke elongation trains on hydroxyl chains only: the amine-bearing probe molecules go
    manifest = make_probe_manifest("smoke")
    assert manifest["eligible_tasks"]["elongation"] == ["oh-c8-oh"]
    assert manifest["eligible_tasks"]["duplication"] == ["oh-c8-oh", "nh2-c8-nh2", "oh-c8-nh2"]


def test_a_probe_molecule_that_a_task_lists_is_refused():
    task = define_task("combination", "standard")
    listed = task.ood_molecules[0]
    with pytest.raises(ProbeError, match="is listed by a task"):
        eligible_molecules(
            {listed.molecule_id: listed.smiles},
            [m.smiles for m in task.id_molecules],
            [m.smiles for m in task.ood_molecules],
        )


def test_a_manifest_breaking_the_probe_rule_is_refused(tmp_path):
    manifest = make_probe_manifest("smoke")
    short = mixed("hydroxyl", "primary_amine", 3)  # n = 3: combination's OOD, not the probe's
    manifest["molecules"][0].update(molecule_id=short.molecule_id, smiles=short.smiles)
    with pytest.raises(ProbeError, match="breaks the probe rule"):
        write_probe_manifest(manifest, tmp_path)
    assert read_probe_manifest(tmp_path) is None  # nothing written, and no probe is no error


def test_the_build_writes_the_probe_and_its_frames_load_per_family(smoke_data):
    manifest = read_probe_manifest(smoke_data)
    assert manifest == json.loads(json.dumps(make_probe_manifest("smoke", {
        key: manifest[key] for key in manifest
        if key not in ("probe", "rule", "probe_version", "molecules", "eligible_tasks")
    })))
    frames = probe_frames(smoke_data, "duplication")
    assert sorted(frames) == ["long_di", "long_mixed"]
    assert {f.molecule_id for f in frames["long_di"]} == {"oh-c8-oh", "nh2-c8-nh2"}
    assert {f.molecule_id for f in frames["long_mixed"]} == {"oh-c8-nh2"}
    trajectories = {f.trajectory_id for family in frames.values() for f in family}
    assert len(trajectories) == 3 * PROBE_TRAJECTORIES
    assert set(probe_frames(smoke_data, "elongation")) == {"long_di"}
