"""RoutingTensorBoardCallback writes scalars, histograms, heatmaps and the projector."""

from __future__ import annotations

import logging

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from baselines.schnet import SchNetPotential
from deepset_moe import AtomicReferenceEnergies, PotentialWithE0
from deepset_moe.routing_logging import RoutingTensorBoardCallback
from deepset_moe.routing_metrics import collect_routing
from tests.small_deepset_moe import loaders, small_model, torch_threads


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def split_loaders():
    return loaders()


def _read_events(log_dir) -> EventAccumulator:
    accumulator = EventAccumulator(
        str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "images": 0}
    )
    accumulator.Reload()
    return accumulator


def test_collect_routing_unwraps_e0_and_matches_direct_call(split_loaders):
    network = small_model()
    model = PotentialWithE0(network, AtomicReferenceEnergies({1: -10.0, 6: -1000.0}))
    model.train()
    stats = collect_routing(model, split_loaders["ood_test"])
    assert model.training, "train/eval mode must be restored"
    first = split_loaders["ood_test"][0]
    n_first = first["z"].numel()
    direct = network.eval()(first)["routing"]
    torch.testing.assert_close(stats.probs[:n_first], direct["probs"].double())
    assert torch.equal(stats.experts[:n_first], direct["experts"])
    total_atoms = sum(b["z"].numel() for b in split_loaders["ood_test"])
    assert stats.num_atoms == total_atoms and stats.latent.shape == (total_atoms, 16)


def test_callback_writes_event_file_and_projector(tmp_path, split_loaders):
    model = PotentialWithE0(small_model(), AtomicReferenceEnergies({1: -10.0}))
    callback = RoutingTensorBoardCallback(embedding_every=0, final_epoch=2, embedding_max_atoms=40)
    with SummaryWriter(tmp_path) as writer:
        for epoch in (1, 2):
            summary = callback.on_epoch_end(epoch, model, writer, split_loaders)
    assert summary is not None and summary["num_experts"] == 4

    events = _read_events(tmp_path)
    tags = events.Tags()
    for split in ("id", "ood"):
        assert f"routing/entropy_normalised/{split}" in tags["scalars"]
        assert f"routing/gate_probs/{split}" in tags["histograms"]
        assert f"routing/fragment_expert/{split}" in tags["images"]
        assert f"routing_utilisation_{split}/expert_3" in tags["scalars"]
    entropy = events.Scalars("routing/entropy_normalised/ood")
    assert [e.step for e in entropy] == [1, 2]
    assert entropy[-1].value == pytest.approx(summary["ood"]["entropy_normalised"], rel=1e-6)
    assert any(tag.startswith("routing_js/") for tag in tags["scalars"])
    histogram = events.Histograms("routing/gate_probs/id")[0].histogram_value
    id_atoms = sum(b["z"].numel() for b in split_loaders["id_test"])
    assert histogram.num == id_atoms * 4 and 0.0 <= histogram.min <= histogram.max <= 1.0
    image = events.Images("routing/fragment_expert/id")[0]
    assert image.width > 100 and image.height > 100

    config = (tmp_path / "projector_config.pbtxt").read_text()
    # first epoch seen and final epoch
    assert config.count('tensor_name: "routing_latent:') == 2
    metadata = sorted(tmp_path.glob("*/routing_latent/metadata.tsv"))
    assert len(metadata) == 2
    rows = metadata[0].read_text().strip().split("\n")
    assert rows[0] == "fragment\texpert\tsplit"
    assert len(rows) - 1 == 40  # capped: 20 ID + 20 OOD atoms
    assert {row.split("\t")[2] for row in rows[1:]} == {"id", "ood"}


def test_callback_skips_models_without_routing(tmp_path, split_loaders, caplog):
    model = PotentialWithE0(SchNetPotential(), AtomicReferenceEnergies())
    callback = RoutingTensorBoardCallback()
    with caplog.at_level(logging.INFO), SummaryWriter(tmp_path) as writer:
        assert callback.on_epoch_end(1, model, writer, split_loaders) is None
        assert callback.on_epoch_end(2, model, writer, split_loaders) is None
    assert callback.disabled
    assert sum("routing logging skipped" in r.message for r in caplog.records) == 1
    assert "routing/entropy_nats/id" not in _read_events(tmp_path).Tags()["scalars"]


def test_callback_skips_without_test_loaders(tmp_path, split_loaders):
    callback = RoutingTensorBoardCallback()
    partial = {"train": split_loaders["train"], "val": split_loaders["val"]}
    with SummaryWriter(tmp_path) as writer:
        assert callback.on_epoch_end(1, small_model(), writer, partial) is None
    assert callback.disabled
