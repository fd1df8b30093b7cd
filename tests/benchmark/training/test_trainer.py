"""The one trainer: E0, loss decrease, checkpoints, exact resume, NaN reports, DDP, CLI.

Frames are real MMFF94 labels (RDKit) of jiggled ETKDG conformers. The model is a tiny
pairwise-distance potential defined here, so the trainer is tested model-agnostically; the
CLI test trains DeepSet-MoE on the smoke dataset.

Run as ``torchrun --nproc_per_node P -m tests.benchmark.training.test_trainer FRAMES OUT``
this module trains the tiny model on FRAMES (the DDP test does this in a subprocess).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import ase
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor, nn

from benchmark.dataset.frames import Frame, read_frames, write_frames
from benchmark.dataset.references import MMFFCalculator
from benchmark.evaluation.predictions import Predictions, evaluate
from benchmark.training.distributed import EpochSampler, init_from_environment
from benchmark.training.experiment import train
from benchmark.training.presets import get_preset
from benchmark.training.trainer import STEP_BUDGET, TIME_CAP, NonFiniteLossError, Trainer
from deepset_moe.batch import GeometryError
from deepset_moe.checkpoint import load_potential, read_checkpoint
from deepset_moe.fragments import fragments_from_smiles
from deepset_moe.graph import edge_vectors, radius_graph
from tests.small_deepset_moe import SMALL_CONFIG, molecule_frame

REPO = Path(__file__).resolve().parents[3]
SMILES = ("OCCC(=O)O", "NCCC=O", "CCCO", "CCCN")
FRAMES_PER_MOLECULE = 12
SPECIES = torch.tensor([1, 6, 7, 8])


class PairPotential(nn.Module):
    """E = sum over pairs within the cutoff of MLP(species pair, radial basis) * cosine cutoff."""

    def __init__(self, cutoff: float = 4.0, hidden: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.species = nn.Embedding(len(SPECIES), 4)
        self.register_buffer("centres", torch.linspace(0.5, cutoff, 8))
        self.mlp = nn.Sequential(
            nn.Linear(16, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )

    @classmethod
    def from_config(cls, **settings: float) -> PairPotential:
        return cls(**settings)

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        pos = batch["pos"].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            edge_index = radius_graph(pos, batch["ptr"], self.cutoff)
            _, length = edge_vectors(pos, edge_index)
            embedding = self.species(torch.bucketize(batch["z"], SPECIES))
            source, target = embedding[edge_index[0]], embedding[edge_index[1]]
            features = torch.cat(
                [
                    source + target,
                    source * target,
                    torch.exp(-4 * (length[:, None] - self.centres) ** 2),
                ],
                dim=-1,
            )
            envelope = 0.5 * (torch.cos(torch.pi * length / self.cutoff) + 1)
            pair = 0.5 * self.mlp(features).squeeze(-1) * envelope
            node_energy = pos.new_zeros(pos.shape[0]).index_add(0, edge_index[1], pair)
            energy = pos.new_zeros(batch["ptr"].numel() - 1).index_add(
                0, batch["batch"], node_energy
            )
            (gradient,) = torch.autograd.grad(energy.sum(), pos, create_graph=self.training)
        return {"energy": energy, "forces": -gradient, "node_energy": node_energy}


def mmff_frames(seed: int = 0) -> list[Frame]:
    """FRAMES_PER_MOLECULE jiggled conformers of each of SMILES with MMFF94 energy and forces."""
    rng = np.random.default_rng(seed)
    frames = []
    for smiles in SMILES:
        calculator = MMFFCalculator(fragments_from_smiles(smiles)[0])
        base = molecule_frame(smiles, seed)
        for step in range(FRAMES_PER_MOLECULE):
            atoms = ase.Atoms(
                base.numbers, base.positions + rng.normal(0, 0.03, base.positions.shape)
            )
            atoms.calc = calculator
            frames.append(
                dataclasses.replace(
                    base,
                    positions=atoms.positions.copy(),
                    energy=float(atoms.get_potential_energy()),
                    forces=atoms.get_forces(),
                    reference="mmff",
                    step=step,
                )
            )
    return frames


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    return mmff_frames()


def split(frames: list[Frame]) -> tuple[list[Frame], list[Frame]]:
    """32 training and 16 validation frames, every molecule in both."""
    return [f for i, f in enumerate(frames) if i % 3], frames[::3]


def rounds(count: int) -> dict[str, int]:
    """Preset changes for ``count`` rounds of one pass over the 32 training frames each."""
    return {"eval_every": 4, "max_steps": 4 * count}


def make_trainer(
    frames: list[Frame],
    out_dir: Path,
    dropout: float = 0.0,
    callbacks=(),
    deadline: float | None = None,
    curve_frames: list[Frame] | None = None,
    **preset_changes,
) -> Trainer:
    torch.manual_seed(0)
    train, val = split(frames)
    preset = get_preset("smoke", **{**rounds(3), **preset_changes})
    return Trainer(
        PairPotential(dropout=dropout),
        "pair_potential",
        {"dropout": dropout},
        preset,
        train,
        val,
        out_dir,
        seed=3,
        callbacks=callbacks,
        deadline=deadline,
        progress=False,
        test_frames={"id_test": val, "ood_test": val},
        curve_frames=curve_frames,
    )


def test_e0_is_fitted_on_the_training_split(frames: list[Frame], tmp_path: Path) -> None:
    known = {1: -13.6, 6: -1030.0, 7: -1485.0, 8: -2040.0}
    exact = [dataclasses.replace(f, energy=sum(known[int(z)] for z in f.numbers)) for f in frames]
    trainer = make_trainer(exact, tmp_path)
    fitted = trainer.model.e0.as_dict()
    assert set(fitted) == set(known)
    for z, value in known.items():
        assert fitted[z] == pytest.approx(value, abs=1e-8)
    assert trainer.model.e0.table.dtype == torch.float64


def test_smoke_training_reduces_the_loss_and_writes_outputs(
    frames: list[Frame], tmp_path: Path
) -> None:
    trainer = make_trainer(frames, tmp_path, lr=1e-2, **rounds(8))
    summary = trainer.fit()
    history = summary.history
    assert summary.epochs == 8 and summary.stop_reason == STEP_BUDGET
    assert summary.steps == 32 and [h["step"] for h in history] == list(range(4, 33, 4))
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    assert history[-1]["val_score"] < history[0]["val_score"]
    assert summary.frames_per_second > 0
    assert (tmp_path / "train.log").read_text().count("epoch ") >= 8
    assert any((tmp_path / "tensorboard").iterdir())

    # best.pt holds the EMA weights of the best epoch and reloads as a potential.
    best = read_checkpoint(tmp_path / "best.pt")
    assert best["training"]["epoch"] == summary.best_epoch
    potential = load_potential(tmp_path / "best.pt")
    trainer.load_best()
    val = split(frames)[1]
    direct = trainer.evaluate(val)
    again = evaluate(potential, val)
    np.testing.assert_allclose(again.energy, direct.energy, rtol=0, atol=1e-9)
    assert direct.metrics()["force_mae"] == pytest.approx(
        history[summary.best_epoch - 1]["val_force_mae"]
    )


def comparable(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if "per_second" not in k} for h in history]


def test_resume_continues_exactly(frames: list[Frame], tmp_path: Path) -> None:
    # Dropout makes the result depend on the global RNG, which the checkpoint must restore.
    straight = make_trainer(frames, tmp_path / "straight", dropout=0.2, **rounds(4))
    straight.fit()
    first = make_trainer(frames, tmp_path / "resumed", dropout=0.2, **rounds(2))
    first.fit()
    second = make_trainer(frames, tmp_path / "resumed", dropout=0.2, **rounds(4))
    second.fit(resume=True)
    assert second.epoch == 4
    a = read_checkpoint(tmp_path / "straight" / "last.pt")
    b = read_checkpoint(tmp_path / "resumed" / "last.pt")
    for key in ("network_state", "training"):
        state_a = a[key] if key == "network_state" else a[key]["network_state_live"]
        state_b = b[key] if key == "network_state" else b[key]["network_state_live"]
        for name in state_a:
            torch.testing.assert_close(state_a[name], state_b[name], rtol=0, atol=0)
    assert comparable(a["training"]["history"]) == comparable(b["training"]["history"])


class PoisonLabel:
    """Callback: after epoch 1, set one training frame's energy to NaN."""

    def __init__(self, frame: Frame) -> None:
        self.frame = frame
        self.seen: list[tuple[int, list[str]]] = []

    def on_epoch_end(self, epoch, model, writer, loaders) -> None:
        self.seen.append((epoch, sorted(loaders)))
        assert writer is not None and not model.training
        if epoch == 1:
            self.frame.energy = math.nan
            self.frame.molecule_id = "poisoned-molecule"


def test_nan_label_stops_with_the_batch_named(frames: list[Frame], tmp_path: Path) -> None:
    frames = [dataclasses.replace(f) for f in frames]
    poison = PoisonLabel(split(frames)[0][5])
    trainer = make_trainer(frames, tmp_path, callbacks=[poison], **rounds(3))
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, batch \d+.*poisoned-molecule") as error:
        trainer.fit()
    assert "last good checkpoint" in str(error.value)
    assert "likely cause: non-finite reference energy in the data of ['poisoned-molecule" in str(
        error.value
    )
    assert poison.seen == [(1, ["id_test", "ood_test", "train", "val"])]
    kept = read_checkpoint(tmp_path / "last.pt")
    assert kept["training"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in kept["network_state"].values())
    assert "non-finite training loss" in (tmp_path / "train.log").read_text()


def test_overlapping_atoms_stop_training_naming_the_frame(
    frames: list[Frame], tmp_path: Path
) -> None:
    """Issue 12 case 6: not a NaN loss naming eight frames, but the frame and its two atoms."""
    frames = [dataclasses.replace(f) for f in frames]
    bad = split(frames)[0][5]
    bad.positions = bad.positions.copy()
    bad.positions[2] = bad.positions[1] + 0.01
    bad.molecule_id = "squashed-molecule"
    trainer = make_trainer(frames, tmp_path, **rounds(1))
    with pytest.raises(GeometryError, match=r"epoch 1, batch \d+, frame squashed-molecule/.*"
                       r"atoms 1 and 2 are 0\.017\d* Å apart \(overlapping"):
        trainer.fit()
    assert "squashed-molecule" in (tmp_path / "train.log").read_text()


def test_time_cap_stops_after_the_current_batch_and_says_so(
    frames: list[Frame], tmp_path: Path
) -> None:
    trainer = make_trainer(frames, tmp_path, deadline=time.monotonic(), **rounds(50))
    summary = trainer.fit()
    assert summary.stop_reason == TIME_CAP and summary.to_dict()["time_cap_hit"]
    assert summary.epochs == 1 and summary.train_frames == trainer.preset.batch_size
    assert read_checkpoint(tmp_path / "last.pt")["training"]["stop_reason"] == TIME_CAP


def test_ood_curve_is_recorded_and_never_decides(frames: list[Frame], tmp_path: Path) -> None:
    """Replacing the OOD curve frames by other frames changes the curve, not one weight."""
    train, val = split(frames)
    runs = {}
    for name, curve in (("a", val[:8]), ("b", train[:8]), ("none", None)):
        trainer = make_trainer(frames, tmp_path / name, curve_frames=curve, **rounds(4))
        runs[name] = (trainer.fit(), read_checkpoint(tmp_path / name / "last.pt"))
    (summary_a, ckpt_a), (summary_b, ckpt_b) = runs["a"], runs["b"]
    assert all("ood_force_mae" in h for h in summary_a.history)
    assert "ood_force_mae" not in runs["none"][0].history[0]
    assert [h["ood_force_mae"] for h in summary_a.history] != [
        h["ood_force_mae"] for h in summary_b.history
    ]
    for other in (ckpt_b, runs["none"][1]):
        for key in ("network_state",):
            for name, tensor in ckpt_a[key].items():
                assert torch.equal(tensor, other[key][name]), name
        assert other["training"]["schedule"] == ckpt_a["training"]["schedule"]
    assert summary_a.best_epoch == summary_b.best_epoch


def test_failed_cell_reports_the_reason(tmp_path: Path) -> None:
    result = train("deepset_moe", "duplication", "smoke", tmp_path / "no_data", tmp_path / "out")
    assert result["status"] == "failed"
    assert "no_data" in result["reason"]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == result


def test_epoch_sampler_shards_reassemble_the_single_process_batches() -> None:
    single = list(EpochSampler(50, seed=7, max_frames=40))
    shards = [list(EpochSampler(50, seed=7, max_frames=40, rank=r, world_size=2)) for r in (0, 1)]
    for t in range(5):  # global batch 8 = 4 per process
        assert sorted(single[8 * t : 8 * t + 8]) == sorted(
            shards[0][4 * t : 4 * t + 4] + shards[1][4 * t : 4 * t + 4]
        )
    other_epoch = EpochSampler(50, seed=7, max_frames=40)
    other_epoch.set_epoch(1)
    assert list(other_epoch) != single
    assert len(set(single)) == 40


def test_two_processes_match_one(frames: list[Frame], tmp_path: Path) -> None:
    frames_file = tmp_path / "frames.xyz"
    write_frames(frames_file, frames)
    train_tiny_model(frames_file, tmp_path / "one")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "tests.benchmark.training.test_trainer",
        str(frames_file),
        str(tmp_path / "two"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one = read_checkpoint(tmp_path / "one" / "last.pt")["training"]
    two = read_checkpoint(tmp_path / "two" / "last.pt")["training"]
    assert two["epoch"] == one["epoch"] == 2
    for name, value in one["network_state_live"].items():
        torch.testing.assert_close(two["network_state_live"][name], value, rtol=1e-5, atol=1e-6)
    # The weights moved: the comparison is not between two untrained models.
    torch.manual_seed(0)
    initial = PairPotential().state_dict()
    assert not torch.equal(initial["mlp.0.weight"], one["network_state_live"]["mlp.0.weight"])
    assert two["history"][-1]["val_score"] == pytest.approx(
        one["history"][-1]["val_score"], rel=1e-5
    )


def test_cli_trains_deepset_moe_on_smoke_data(smoke_data: Path, tmp_path: Path, capsys) -> None:
    from benchmark.cli import main

    out = tmp_path / "run"
    argv = ["train", "--task", "duplication", "--model", "deepset_moe", "--preset", "smoke"]
    argv += ["--model-config", json.dumps(SMALL_CONFIG), "--seed", "1", "--no-progress"]
    code = main([*argv, "--data", str(smoke_data), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "Force MAE (eV/Å)" in printed and "OOD/ID" in printed
    result = json.loads((out / "metrics.json").read_text())
    assert result["status"] == "ok" and result["params"] > 0
    assert result["model_config"]["latent_dim"] == SMALL_CONFIG["latent_dim"]
    assert result["model_config"]["seed"] == 1 and result["training"]["steps"] == 24
    for split in ("id_test", "ood_test"):
        assert result["metrics"][split]["force_mae"] > 0
        predictions = Predictions.load(out / f"predictions_{split}.npz")
        assert predictions.metrics()["force_mae"] == pytest.approx(
            result["metrics"][split]["force_mae"]
        )
    gap = result["metrics"]["gap"]["force_mae"]
    assert gap == pytest.approx(
        result["metrics"]["ood_test"]["force_mae"] / result["metrics"]["id_test"]["force_mae"]
    )
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/loss", "val/force_mae", "schedule/lr"} <= set(scalars)
    assert any(tag.startswith("routing/") for tag in scalars)  # routing callback attached


def train_tiny_model(frames_file: Path, out_dir: Path) -> None:
    """The run compared between 1 and 2 processes (joins torchrun's process group, if any)."""
    context = init_from_environment("cpu")
    torch.manual_seed(0)
    train_frames, val_frames = split(read_frames(frames_file))
    Trainer(
        PairPotential(),
        "pair_potential",
        {},
        get_preset("smoke", **rounds(2)),
        train_frames,
        val_frames,
        out_dir,
        seed=3,
        context=context,
        progress=False,
    ).fit()


if __name__ == "__main__":
    # as the CLIs do: leave the process group before exit (a gloo group left open can abort
    # one rank at interpreter shutdown, "terminate called without an active exception")
    try:
        train_tiny_model(Path(sys.argv[1]), Path(sys.argv[2]))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
