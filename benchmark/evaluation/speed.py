"""Speed of the models: a DeepSet-MoE training step and MD-step inference with the kernels on
and off (against MACE), and the training throughput of every registered model.

    python -m benchmark.evaluation.speed --sections training inference --json model_speed.json
    python -m benchmark.evaluation.speed --sections throughput --models schnet painn --threads 2
    python -m benchmark.evaluation.speed --quick --device cpu        # smoke run of every section

Sections, in order (``--sections`` picks some; the driver, timing and JSON report are those of
:mod:`kernels.bench`, whose kernel micro-benchmarks this module complements):

* ``training``: one DeepSet-MoE optimiser step (the trainer's energy + force loss,
  :func:`benchmark.training.loss.energy_force_loss`, so double backward through every kernel,
  then Adam) with the kernels on and off, on a batch of organic molecules; also the host
  synchronisations of one step (``torch.cuda`` sync debug mode), with the source lines that
  cause them. Goal: the step is faster with the kernels;
* ``inference``: DeepSet-MoE energy + forces per MD step, in microseconds per atom, for one
  molecule and for a batch, kernels on and off, against MACE of the same size class
  (``baselines.mace_models.MACEPotential`` defaults; reported unavailable when mace-torch
  cannot be imported, skipped with ``--baseline none``);
* ``throughput``: training frames per second of every registered model that is installed
  (or ``--models``): forward in training mode (forces with ``create_graph``), the same
  energy + force loss and the backward pass to the weights, on ETKDG conformers of
  GMD-26-like molecules of 24-30 atoms (RDKit). Meant for a CPU (``--threads`` sets the
  intra-op threads); no goal.

Test molecules of ``training`` and ``inference`` are built without RDKit (the GPU machine has
none): zig-zag chains of 6-12 heavy atoms (C, with N and O in and at the ends of the chain)
saturated with hydrogens at tetrahedral positions, 11-38 atoms each (25 on average, about 12
neighbours within 5 Å), randomly rotated and slightly jittered; no two atoms closer than
0.9 Å.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import sys
import types
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from benchmark.training.loss import energy_force_loss
from kernels.backend import forced_mode
from kernels.bench import (
    Report,
    Settings,
    bench_parser,
    default_repeats,
    measure,
    print_banner,
    run_sections,
)
from kernels.check import environment

SECTIONS = ("training", "inference", "throughput")

BENCHMARK_SMILES: tuple[str, ...] = (
    "OCCCCCCCC(=O)O",
    "NCCCCCCCC=O",
    "CC(O)CCCCCC",
    "OCCCCCCCCO",
)
"""Throughput molecules: functionalised chains of 24-30 atoms (with hydrogens)."""


@dataclass
class SpeedSettings(Settings):
    """:class:`kernels.bench.Settings` plus the model comparison: the inference baseline
    (``mace`` or ``none``) and the throughput models, batch size and timed steps (None: every
    installed model; 2 frames and 1 step when quick, else 16 and 5)."""

    baseline: str = "mace"
    models: tuple[str, ...] | None = None
    batch_size: int | None = None
    steps: int | None = None


# --------------------------------------------------------------------------------------------
# molecules and models


def organic_molecule(heavy_atoms: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """A saturated organic chain without RDKit: atomic numbers [n] and positions [n, 3] (Å).

    Heavy atoms form a planar zig-zag (bonds 1.53 Å, angles 111°); interior atoms are C, or N
    / O with probability 0.1 each, ends C, N or O. Each heavy atom gets 4, 3 or 2 (C, N, O)
    minus its heavy neighbours hydrogens (C-H 1.09, N-H 1.01, O-H 0.96 Å): two above and
    below the chain plane at the tetrahedral angle, and at the ends one in the plane along
    the chain direction. The molecule is rotated at random and every coordinate jittered
    uniformly within ±0.015 Å (so the shortest bond, O-H, stays above 0.9 Å).
    """
    half_angle = math.radians(111.0) / 2
    step = torch.tensor([1.53 * math.sin(half_angle), 1.53 * math.cos(half_angle), 0.0])

    def backbone(i: int) -> Tensor:  # position of chain atom i (also i = -1 and i = n)
        return torch.tensor([i * step[0], (i % 2) * step[1], 0.0])

    u = torch.rand(heavy_atoms, generator=gen)
    elements = torch.where(u < 0.1, 7, torch.where(u < 0.2, 8, 6))
    ends = torch.tensor([6, 6, 7, 8])[torch.randint(0, 4, (2,), generator=gen)]
    elements[0], elements[-1] = ends
    bond = {6: 1.09, 7: 1.01, 8: 0.96}
    valence = {6: 4, 7: 3, 8: 2}
    tilt = math.radians(109.5) / 2
    z, pos = elements.tolist(), [backbone(i) for i in range(heavy_atoms)]
    for i, element in enumerate(elements.tolist()):
        here, before, after = backbone(i), backbone(i - 1), backbone(i + 1)
        outward = (here - before) + (here - after)
        outward = outward / outward.norm()
        normal = torch.tensor([0.0, 0.0, 1.0])
        sites = [
            math.cos(tilt) * outward + math.sin(tilt) * normal,
            math.cos(tilt) * outward - math.sin(tilt) * normal,
        ]
        for end, virtual in ((0, before), (heavy_atoms - 1, after)):
            if i == end:
                along = virtual - here
                sites.insert(0, along / along.norm())
        neighbours = (i > 0) + (i < heavy_atoms - 1)
        for site in sites[: max(valence[element] - neighbours, 0)]:
            z.append(1)
            pos.append(here + bond[element] * site)
    positions = torch.stack(pos)
    rotation, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen))
    jitter = 0.03 * torch.rand(positions.shape, generator=gen) - 0.015
    positions = positions @ rotation.T + jitter
    distances = torch.cdist(positions, positions) + 10 * torch.eye(len(z))
    if float(distances.min()) < 0.9:
        raise RuntimeError("organic_molecule: atoms closer than 0.9 Å (a bug in the builder)")
    return torch.tensor(z), positions


def molecule_batch(
    molecules: int, device: torch.device, seed: int, num_fragments: int = 1
) -> dict[str, Tensor]:
    """A batch (DeepSet-MoE / baseline interface) of ``molecules`` organic chains of 6-12
    heavy atoms (11-38 atoms, 25 on average, :func:`organic_molecule`), with random fragment
    labels in [0, num_fragments) and random energy (eV, float64) and force (eV/Å) labels."""
    gen = torch.Generator().manual_seed(seed)
    parts = [
        organic_molecule(int(torch.randint(6, 13, (1,), generator=gen)), gen)
        for _ in range(molecules)
    ]
    counts = torch.tensor([len(z) for z, _ in parts])
    num_atoms = int(counts.sum())
    batch = {
        "z": torch.cat([z for z, _ in parts]),
        "pos": torch.cat([p for _, p in parts]).float(),
        "batch": torch.repeat_interleave(torch.arange(molecules), counts),
        "ptr": torch.cat([counts.new_zeros(1), counts.cumsum(0)]),
        "n_atoms": counts,
        "fragment": torch.randint(0, num_fragments, (num_atoms,), generator=gen),
        "energy": torch.randn(molecules, generator=gen, dtype=torch.float64),
        "forces": torch.randn(num_atoms, 3, generator=gen),
    }
    return {key: value.to(device) for key, value in batch.items()}


def _deepset_moe(report: Report, device: torch.device) -> torch.nn.Module | None:
    """A default DeepSet-MoE on ``device``, or None (noted) when it cannot be imported."""
    try:
        from deepset_moe import DeepSetMoE
    except Exception as error:  # the bench goes on with the other models and sections
        report.note(f"DeepSet-MoE is not importable here: {error!r}")
        return None
    return DeepSetMoE().to(device)


def _num_fragments(model: torch.nn.Module) -> int:
    """Size of the model's fragment vocabulary (labels for the hybrid router)."""
    return int(model.config.num_fragments)


def _mace(report: Report, device: torch.device) -> torch.nn.Module | None:
    """``baselines.mace_models.MACEPotential()`` (its default hyper-parameters) on ``device``,
    or None (noted) when mace-torch cannot be imported.

    mace-torch imports matplotlib and pandas only for its training plots
    (``mace.cli.visualise_train``, imported by ``mace.tools.train``); where they are missing
    (the GPU machine) that module is replaced by an empty stand-in so the model code imports.
    """
    if any(importlib.util.find_spec(name) is None for name in ("matplotlib", "pandas")):
        stand_in = types.ModuleType("mace.cli.visualise_train")
        stand_in.TrainingPlotter = None
        sys.modules.setdefault("mace.cli.visualise_train", stand_in)
    try:
        from baselines.mace_models import MACEPotential

        return MACEPotential().to(device)
    except Exception as error:
        report.note(f"MACE unavailable: {error!r}")
        return None


@contextmanager
def _host_syncs(settings: Settings) -> Iterator[Counter]:
    """Count synchronising CUDA calls in the block by source line (empty on CPU)."""
    counts: Counter = Counter()
    if not settings.cuda:
        yield counts
        return
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield counts
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    root = str(Path(__file__).resolve().parents[2]) + "/"  # the repository
    for warning in caught:
        if "synchroniz" in str(warning.message):
            counts[f"{warning.filename.removeprefix(root)}:{warning.lineno}"] += 1


def bench_training(settings: SpeedSettings, report: Report) -> None:
    """One optimiser step of DeepSet-MoE (the trainer's energy + force loss,
    :func:`benchmark.training.loss.energy_force_loss`, then Adam), kernels on vs off."""
    model = _deepset_moe(report, settings.device)
    if model is None:
        return
    model.train()
    molecules = 2 if settings.quick else 128
    batch = molecule_batch(molecules, settings.device, settings.seed, _num_fragments(model))
    atoms = batch["z"].numel()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)

    def step() -> None:
        loss = energy_force_loss(model(batch), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    parameters = sum(p.numel() for p in model.parameters())
    print(
        f"\nDeepSet-MoE training step: {molecules} molecules, {atoms} atoms, default config "
        f"({parameters} parameters), energy + force loss, Adam"
    )
    times = {}
    for label, mode in (("kernels on", "auto"), ("kernels off", "reference")):
        with forced_mode(mode):
            timing = measure(step, settings, rep_ms=1000)
            with _host_syncs(settings) as syncs:
                step()
            times[label] = timing["median_s"]
        report.add(
            "training",
            label,
            timing,
            molecules=molecules,
            atoms=atoms,
            parameters=parameters,
            host_syncs=sum(syncs.values()),
            host_sync_lines=dict(syncs.most_common()),
        )
        where = ", ".join(f"{line} x{n}" for line, n in syncs.most_common(6)) or "-"
        print(
            f"  {label:<12} {timing['median_s'] * 1e3:9.2f} ms/step  "
            f"{timing['median_s'] / atoms * 1e6:7.2f} us/atom   host syncs "
            f"{sum(syncs.values())}: {where}",
            flush=True,
        )
    speedup = times["kernels off"] / times["kernels on"]
    print(f"  speed-up     x{speedup:.2f}")
    report.goal(
        "training step faster with kernels",
        speedup,
        1.0,
        f"{molecules} molecules / {atoms} atoms, kernels off / on",
    )


def bench_inference(settings: SpeedSettings, report: Report) -> None:
    """Energy + forces per MD step in microseconds per atom: DeepSet-MoE (kernels on and off)
    and MACE, for one molecule and a batch."""
    model = _deepset_moe(report, settings.device)
    mace = _mace(report, settings.device) if settings.baseline == "mace" else None
    if settings.baseline != "mace":
        report.note("MACE comparison skipped (--baseline none)")
    models = {}
    if model is not None:
        models["DeepSet-MoE kernels on"] = (model.eval(), "auto")
        models["DeepSet-MoE kernels off"] = (model, "reference")
    if mace is not None:
        models["MACE"] = (mace.eval(), "auto")
    if not models:
        return
    fragments = _num_fragments(model) if model is not None else 1
    print("\ninference: energy + forces per MD step (eval mode, float32)")
    for label, molecules in (("1 molecule", 1), ("batch", 4 if settings.quick else 64)):
        batch = molecule_batch(molecules, settings.device, settings.seed + 7, fragments)
        for name, (network, mode) in models.items():
            _bench_md_step(settings, report, name, network, mode, label, batch)


def _bench_md_step(
    settings: Settings,
    report: Report,
    name: str,
    network: torch.nn.Module,
    mode: str,
    label: str,
    batch: dict[str, Tensor],
) -> None:
    """One model's energy + forces on ``batch`` under kernel mode ``mode``."""
    atoms = batch["z"].numel()
    parameters = sum(p.numel() for p in network.parameters())

    def md_step() -> None:
        with torch.no_grad():
            network(batch)["forces"]

    with forced_mode(mode):
        timing = measure(md_step, settings, rep_ms=300)
        with _host_syncs(settings) as syncs:
            md_step()
    per_atom = timing["median_s"] / atoms * 1e6
    report.add(
        "inference",
        name,
        timing,
        batch=label,
        molecules=batch["ptr"].numel() - 1,
        atoms=atoms,
        parameters=parameters,
        us_per_atom=per_atom,
        host_syncs=sum(syncs.values()),
    )
    print(
        f"  {label:<10} ({atoms:>4} atoms) {name:<24} {parameters:>7} params "
        f"{timing['median_s'] * 1e3:8.2f} ms/step {per_atom:8.2f} us/atom/step  "
        f"host syncs {sum(syncs.values())}",
        flush=True,
    )


# --------------------------------------------------------------------------------------------
# throughput


def conformer_batch(batch_size: int, seed: int = 0) -> dict[str, Tensor]:
    """``batch_size`` ETKDG conformers cycling through :data:`BENCHMARK_SMILES` (zero labels)."""
    from benchmark.dataset.conformers import unlabelled_frame  # RDKit: only this section
    from deepset_moe.batch import collate

    frames = [
        unlabelled_frame(BENCHMARK_SMILES[index % len(BENCHMARK_SMILES)], seed + index)
        for index in range(batch_size)
    ]
    return collate(frames)


def installed_models(report: Report) -> list[str]:
    """Registered models that can be built here; notes why each other one is skipped."""
    from baselines.registry import available_models, list_models, missing_requirement

    available = available_models()
    for name in list_models():
        if name not in available:
            report.note(f"throughput: skipping {name}: {missing_requirement(name)}")
    return available


def bench_throughput(settings: SpeedSettings, report: Report) -> None:
    """Training frames per second of each model: energy + force loss and backward (no
    optimiser step), timed over ``settings.steps`` steps after one warm-up step."""
    from baselines.registry import build_model
    from deepset_moe.batch import batch_to

    batch_size = settings.batch_size or (2 if settings.quick else 16)
    steps = settings.steps or (1 if settings.quick else 5)
    batch = batch_to(conformer_batch(batch_size, settings.seed), settings.device)
    atoms = batch["z"].numel()
    print(
        f"\ntraining throughput: {batch_size} frames, {atoms} atoms, energy + force loss, "
        f"{steps} timed steps, {torch.get_num_threads()} threads"
    )
    timed = dataclasses.replace(settings, repeats=steps)
    failures = []
    for name in settings.models or installed_models(report):
        try:
            model = build_model(name, seed=settings.seed).to(settings.device).train()
        except Exception as error:  # record and go on with the other models
            failures.append(f"{name}: {error!r}")
            report.note(f"throughput: {name} could not be built: {error!r}")
            continue

        def step(model: torch.nn.Module = model) -> None:
            loss = energy_force_loss(model(batch), batch)
            model.zero_grad(set_to_none=True)
            loss.backward()

        parameters = sum(p.numel() for p in model.parameters())
        try:
            timing = measure(step, timed, rep_ms=1000)
        except Exception as error:
            failures.append(f"{name}: {error!r}")
            report.note(f"throughput: {name} failed: {error!r}")
            continue
        rate = batch_size / timing["median_s"]
        report.add(
            "throughput", name, timing, frames=batch_size, atoms=atoms, parameters=parameters,
            frames_per_second=rate,
        )  # fmt: skip
        print(f"  {name:<12} params {parameters:9d}  {rate:8.1f} frames/s", flush=True)
    if failures:
        raise RuntimeError("throughput failed for " + "; ".join(failures))


# --------------------------------------------------------------------------------------------
# driver


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__.split("\n\n")[0], SECTIONS)
    parser.add_argument(
        "--baseline", choices=["mace", "none"], default="mace", help="inference comparison"
    )
    parser.add_argument("--models", nargs="+", help="throughput: models (default: installed)")
    parser.add_argument("--batch-size", type=int, help="throughput: frames (16; quick 2)")
    parser.add_argument("--steps", type=int, help="throughput: timed steps (5; quick 1)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    settings = SpeedSettings(
        device,
        args.quick,
        default_repeats(args),
        baseline=args.baseline,
        models=tuple(args.models) if args.models else None,
        batch_size=args.batch_size,
        steps=args.steps,
    )
    report = Report(environment(device), {**vars(args), "device": str(device)})
    print_banner("benchmark.evaluation.speed", report, device)
    runners: dict[str, Callable[[], object]] = {
        "training": lambda: bench_training(settings, report),
        "inference": lambda: bench_inference(settings, report),
        "throughput": lambda: bench_throughput(settings, report),
    }
    return run_sections(runners, args.sections, settings, report, args.budget, args.json)


if __name__ == "__main__":
    sys.exit(main())
