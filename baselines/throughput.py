"""Training throughput of the baselines: frames per second of one energy + force training step.

A step is what the trainer does per batch: forward in training mode (forces with
``create_graph``), a loss on energies and forces, and the backward pass to the weights. The
batch holds ETKDG conformers of GMD-26-like molecules of 20-30 atoms.

    python -m baselines.throughput --models schnet painn --batch-size 16 --steps 5
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch
from torch import nn

from baselines.registry import (
    available_models,
    build_model,
    list_models,
    missing_requirement,
)
from benchmark.conformers import unlabelled_frame
from benchmark.datasets import Batch, collate_frames

BENCHMARK_SMILES: tuple[str, ...] = (
    "OCCCCCCCC(=O)O",
    "NCCCCCCCC=O",
    "CC(O)CCCCCC",
    "OCCCCCCCCO",
)
"""Functionalised chains of 24-30 atoms (with hydrogens)."""


def conformer_batch(batch_size: int, seed: int = 0) -> Batch:
    """``batch_size`` ETKDG conformers cycling through :data:`BENCHMARK_SMILES` (zero labels)."""
    frames = [
        unlabelled_frame(BENCHMARK_SMILES[index % len(BENCHMARK_SMILES)], seed + index)
        for index in range(batch_size)
    ]
    return collate_frames(frames)


def training_frames_per_second(model: nn.Module, batch: Batch, steps: int = 5) -> float:
    """Frames/s of energy + force training steps (one warm-up step is not timed)."""
    model.train()
    num_frames = batch["ptr"].numel() - 1
    elapsed = 0.0
    for step in range(steps + 1):
        start = time.perf_counter()
        out = model(batch)
        loss = (out["energy"] - batch["energy"].to(out["energy"].dtype)).pow(2).mean()
        loss = loss + (out["forces"] - batch["forces"]).pow(2).mean()
        model.zero_grad(set_to_none=True)
        loss.backward()
        if step > 0:
            elapsed += time.perf_counter() - start
    return steps * num_frames / elapsed


def installed_models() -> list[str]:
    """Registered baselines that can be built here; prints why each other one is skipped."""
    available = available_models()
    for name in list_models():
        if name not in available:
            print(f"skipping {name}: {missing_requirement(name)}", flush=True)
    return available


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        help="baselines to time (default: every registered one that is installed)",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batch = conformer_batch(args.batch_size)
    atoms = batch["z"].numel()
    print(f"batch: {args.batch_size} frames, {atoms} atoms, {args.threads} threads")
    for name in args.models or installed_models():
        model = build_model(name)
        parameters = sum(p.numel() for p in model.parameters())
        rate = training_frames_per_second(model, batch, args.steps)
        print(f"{name:12s} params {parameters:9d}  {rate:8.1f} frames/s", flush=True)


if __name__ == "__main__":
    main()
