"""The model-level speed benchmark (``python -m benchmark.evaluation.speed``): a quick CPU run
of every section (DeepSet-MoE training step and MD-step inference with the kernels on and off,
training throughput), its JSON report, and its RDKit-free test molecules."""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter

import pytest
import torch

from benchmark.evaluation import speed
from benchmark.training.loss import energy_force_loss


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``speed.main`` with ``--quick --device cpu``, MACE skipped, throughput of two models."""
    path = tmp_path_factory.mktemp("speed") / "speed.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # intra-op threads only slow tiny ops down on a shared CPU
    options = ["--quick", "--device", "cpu", "--repeats", "1", "--baseline", "none"]
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            status = speed.main([*options, "--models", "deepset_moe", "painn", "--json", str(path)])
    finally:
        torch.set_num_threads(threads)
    return {"status": status, "printed": printed.getvalue(), "report": json.loads(path.read_text())}


def test_every_section_runs_and_is_reported(quick_run: dict) -> None:
    report = quick_run["report"]
    assert quick_run["status"] == 0
    assert "PyTorch reference backend" in quick_run["printed"]
    assert set(report["sections"]) == set(speed.SECTIONS)
    assert {s["status"] for s in report["sections"].values()} == {"ok"}
    assert {"device_name", "torch", "triton"} <= set(report["environment"])
    assert all(m["median_s"] > 0 for m in report["measurements"])
    assert "MACE comparison skipped (--baseline none)" in report["notes"]


def test_training_step_with_kernels_on_and_off(quick_run: dict) -> None:
    report = quick_run["report"]
    training = [m for m in report["measurements"] if m["section"] == "training"]
    assert {m["name"] for m in training} == {"kernels on", "kernels off"}
    assert all(m["atoms"] >= 22 and m["host_syncs"] == 0 for m in training)  # no syncs on CPU
    (goal,) = report["goals"]
    assert goal["goal"] == "training step faster with kernels" and goal["value"] > 0
    lines = [line.strip() for line in quick_run["printed"].splitlines()]
    assert any(line.startswith("kernels on") for line in lines)
    assert any(line.startswith("kernels off") for line in lines)


def test_inference_per_atom_for_one_molecule_and_a_batch(quick_run: dict) -> None:
    inference = [m for m in quick_run["report"]["measurements"] if m["section"] == "inference"]
    names = Counter((m["name"], m["batch"]) for m in inference)
    assert set(names) == {
        (name, batch)
        for name in ("DeepSet-MoE kernels on", "DeepSet-MoE kernels off")
        for batch in ("1 molecule", "batch")
    }
    assert all(m["us_per_atom"] > 0 and m["atoms"] >= 11 for m in inference)


def test_throughput_of_the_chosen_models(quick_run: dict) -> None:
    throughput = [m for m in quick_run["report"]["measurements"] if m["section"] == "throughput"]
    assert [m["name"] for m in throughput] == ["deepset_moe", "painn"]
    assert all(m["frames"] == 2 and m["frames_per_second"] > 0 for m in throughput)
    assert all(m["parameters"] > 0 for m in throughput)


def test_training_batches_take_the_trainer_loss() -> None:
    batch = speed.molecule_batch(3, torch.device("cpu"), seed=0, num_fragments=4)
    assert batch["n_atoms"].sum() == batch["z"].numel() == batch["fragment"].numel()
    assert int(batch["fragment"].max()) < 4 and batch["energy"].dtype == torch.float64
    out = {"energy": batch["energy"].float() + 1.0, "forces": batch["forces"]}
    expected = (1.0 / batch["n_atoms"].double()).square().mean().float()
    torch.testing.assert_close(energy_force_loss(out, batch), expected)


def test_bench_molecules_are_physical() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        z, pos = speed.organic_molecule(int(torch.randint(6, 13, (1,), generator=gen)), gen)
        distances = torch.cdist(pos, pos) + 10 * torch.eye(len(z))
        assert float(distances.min()) > 0.9
        heavy = z > 1
        bonded = (distances < 1.6) & heavy.unsqueeze(0)  # heavy-atom neighbours of each atom
        assert torch.equal(bonded[~heavy].sum(1), torch.ones(int((~heavy).sum()), dtype=torch.long))
        valence = {6: 4, 7: 3, 8: 2}
        neighbours = (distances < 1.6).sum(1)
        assert all(int(n) == valence[int(e)] for e, n in zip(z[heavy], neighbours[heavy]))
