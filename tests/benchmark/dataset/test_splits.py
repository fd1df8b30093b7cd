"""Trajectory ids, the trajectory-level ID split and split manifests (make, validate, I/O)."""

from __future__ import annotations

import copy
import json

import pytest

from benchmark.dataset.splits import (
    SPLITS,
    ManifestError,
    id_trajectory_split,
    make_manifest,
    parse_trajectory_id,
    read_manifest,
    trajectory_id,
    validate_manifest,
    write_manifest,
)
from benchmark.dataset.tasks import GENERATOR_VERSION, TASK_NAMES, define_task


def test_trajectory_ids_and_split():
    assert trajectory_id("oh-c3", 2) == "oh-c3/t2"
    assert parse_trajectory_id("oh-sec-1-2/t11") == ("oh-sec-1-2", 11)
    with pytest.raises(ValueError, match="trajectory id"):
        parse_trajectory_id("oh-c3-2")
    assert id_trajectory_split(3) == {"train": [0], "val": [1], "id_test": [2]}
    assert id_trajectory_split(5) == {"train": [0, 1, 2], "val": [3], "id_test": [4]}
    with pytest.raises(ValueError, match="at least 3"):
        id_trajectory_split(2)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_manifest_splits_are_disjoint_and_valid(name, tmp_path):
    task = define_task(name, "smoke")
    manifest = make_manifest(task, 4, {"reference": "mmff", "seed": 3, "preset": "smoke"})
    assert list(manifest) == ["task", "rule", "generator_version", "reference", "seed",
                              "preset", "splits"]
    assert manifest["generator_version"] == GENERATOR_VERSION
    splits = manifest["splits"]
    assert tuple(splits) == SPLITS
    ids = {
        split: {trajectory_id(e["molecule_id"], t) for e in entries for t in e["trajectories"]}
        for split, entries in splits.items()
    }
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            assert not ids[a] & ids[b], (a, b)
    assert len(ids["train"]) == 2 * len(task.id_molecules)
    assert len(ids["ood_test"]) == 4 * len(task.ood_molecules)
    ood = {e["smiles"] for e in splits["ood_test"]}
    for split in ("train", "val", "id_test"):
        assert not ood & {e["smiles"] for e in splits[split]}
    validate_manifest(manifest)
    path = write_manifest(manifest, tmp_path / "sub" / f"{name}.json")
    assert read_manifest(path) == json.loads(json.dumps(manifest))


def test_manifest_rejects_reserved_metadata_and_few_trajectories():
    task = define_task("duplication", "smoke")
    with pytest.raises(ValueError, match="reserved"):
        make_manifest(task, 3, {"splits": {}})
    with pytest.raises(ValueError, match="at least 3"):
        make_manifest(task, 2, {})


def _broken(mutate):
    manifest = make_manifest(define_task("duplication", "smoke"), 3, {"reference": "mmff"})
    broken = copy.deepcopy(manifest)
    mutate(broken)
    return broken


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m.pop("generator_version"), "lacks keys"),
        (lambda m: m.update(task="rotation"), "unknown task"),
        (lambda m: m["splits"].pop("val"), "exactly the keys"),
        (lambda m: m["splits"]["id_test"][0].update(trajectories=[0]), "both train and id_test"),
        (lambda m: m["splits"]["val"][0].update(trajectories=[2]), "both val and id_test"),
        (lambda m: m["splits"]["train"].append(dict(m["splits"]["ood_test"][0])),
         "OOD molecules also in train"),
        (lambda m: m["splits"]["ood_test"].append(
            {"molecule_id": "oh-c7", "smiles": "CCCCCCCO", "trajectories": [0]}),
         "breaks the rule"),
        (lambda m: m["splits"]["ood_test"].append(
            {"molecule_id": "x", "smiles": "CC(C)=O", "trajectories": [0]}),
         "covered by no fragment"),
        (lambda m: m["splits"]["val"][0].update(molecule_id="ghost"), "not a train molecule"),
        (lambda m: m["splits"]["val"][0].update(trajectories=[-1]), "non-negative"),
        (lambda m: m["splits"].update(ood_test=[]), "non-empty"),
    ],
)
def test_validate_manifest_catches_violations(mutate, message):
    with pytest.raises(ManifestError, match=message):
        validate_manifest(_broken(mutate))


def test_read_and_write_manifest_name_the_file(tmp_path):
    bad = _broken(lambda m: m["splits"]["id_test"][0].update(trajectories=[0]))
    target = tmp_path / "bad.json"
    with pytest.raises(ManifestError, match=r"bad\.json"):
        write_manifest(bad, target)
    assert not target.exists()
    target.write_text(json.dumps(bad))
    with pytest.raises(ManifestError, match=r"bad\.json.*both train and id_test"):
        read_manifest(target)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(ManifestError, match=r"garbage\.json"):
        read_manifest(garbage)
    with pytest.raises(ManifestError, match=r"missing\.json"):
        read_manifest(tmp_path / "missing.json")
