"""Micro-benchmarks of the kernels and an end-to-end DeepSet-MoE training step.

    python -m kernels.bench            # full sizes (meant for a GPU)
    python -m kernels.bench --quick    # small sizes, a few repeats (smoke test, CPU)

What is printed, for a range of sizes:

* device copy bandwidth: a large ``clone`` (reads and writes every byte once), the ceiling
  the other numbers are compared with;
* segment sums: time, effective bandwidth (bytes each input must be read once plus each
  output written once, over the time), % of the copy bandwidth, and the speed-up against
  ``torch.index_add_``, ``scatter_add_`` and, when installed, ``torch_scatter.segment_csr``;
* routing: the fused gate + dispatch against the unfused PyTorch reference (softmax, topk,
  bincount, stable sort), and combine against its reference;
* a DeepSet-MoE training step (energy + force loss, so double backward through every kernel)
  with the kernels on (default backend) and off (``DEEPSET_MOE_KERNELS=reference``).

On CUDA each time is the median of CUDA-event timings after warm-up. On a CPU the public ops
run the PyTorch reference (Triton kernels need CUDA), which the header states: the numbers
then measure the reference, and "on" and "off" are the same code.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from kernels.backend import forced_mode, use_triton
from kernels.routing import (
    combine,
    combine_reference,
    dispatch,
    dispatch_reference,
    topk_gate,
    topk_gate_reference,
)
from kernels.segment_sum import segment_sum_csr, segment_sum_index

GIGA = 1e9


@dataclass
class Settings:
    """How long and how big: ``quick`` shrinks every size for a smoke run."""

    device: torch.device
    quick: bool
    warmup: int
    repeats: int
    seed: int = 0


def median_seconds(fn: Callable[[], object], settings: Settings) -> float:
    """Median wall time of ``fn`` (CUDA events on GPU) after ``settings.warmup`` calls."""
    for _ in range(settings.warmup):
        fn()
    times = []
    for _ in range(settings.repeats):
        if settings.device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


def _bytes(*tensors: Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _row(name: str, seconds: float, nbytes: int, copy_gbps: float, baseline: float) -> str:
    gbps = nbytes / seconds / GIGA
    return (
        f"  {name:<26} {seconds * 1e6:11.1f} us {gbps:9.2f} GB/s {100 * gbps / copy_gbps:6.1f}%"
        f" copy   x{baseline / seconds:5.2f}"
    )


def copy_bandwidth(settings: Settings) -> float:
    """GB/s of a ``clone`` of a large float32 tensor (one read + one write per byte)."""
    numel = (1 << 22) if settings.quick else (1 << 28)
    data = torch.empty(numel, dtype=torch.float32, device=settings.device).uniform_()
    seconds = median_seconds(data.clone, settings)
    gbps = 2 * _bytes(data) / seconds / GIGA
    print(f"device copy bandwidth (clone of {_bytes(data) / 2**20:.0f} MiB): {gbps:.1f} GB/s")
    return gbps


def _random_ptr(segments: int, mean_length: int, gen: torch.Generator) -> Tensor:
    lengths = torch.randint(0, 2 * mean_length + 1, (segments,), generator=gen)
    return torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])


def bench_segment_sum(settings: Settings, copy_gbps: float) -> None:
    """Segment sums over CSR offsets and over an index, against PyTorch's scatter ops."""
    sizes = [(256, 16, 8), (1024, 8, 32)] if settings.quick else [
        (100_000, 16, 64), (1_000_000, 16, 64), (1_000_000, 32, 128), (250_000, 16, 1),
        (4_000_000, 16, 16), (50_000, 400, 128),
    ]  # fmt: skip
    print(
        "\nsegment sum: rows sorted into segments (time, effective GB/s, % copy, x vs index_add_)"
    )
    gen = torch.Generator().manual_seed(settings.seed)
    for segments, mean_length, features in sizes:
        ptr = _random_ptr(segments, mean_length, gen)
        values = torch.randn(int(ptr[-1]), features, generator=gen)
        _bench_segment_size(settings, copy_gbps, values, ptr)
    if _torch_scatter() is None:
        print(" (torch_scatter not installed: no comparison with it)")


def _torch_scatter():
    """The ``torch_scatter`` module when installed, else None."""
    try:
        import torch_scatter
    except ImportError:
        return None
    return torch_scatter


def _bench_segment_size(settings: Settings, copy_gbps: float, values: Tensor, ptr: Tensor) -> None:
    segments, features = ptr.numel() - 1, values.shape[1]
    index = torch.repeat_interleave(torch.arange(segments), ptr.diff()).to(settings.device)
    values, ptr = values.to(settings.device), ptr.to(settings.device)
    expanded = index.unsqueeze(1).expand(-1, features)
    out = values.new_empty(segments, features)
    print(f" rows {values.shape[0]}, segments {segments}, D {features}")
    by_index, by_ptr = _bytes(values, index, out), _bytes(values, ptr, out)
    candidates = {
        "torch index_add_": (
            lambda: values.new_zeros(segments, features).index_add_(0, index, values),
            by_index,
        ),
        "torch scatter_add_": (
            lambda: values.new_zeros(segments, features).scatter_add_(0, expanded, values),
            by_index,
        ),
        "segment_sum_csr": (lambda: segment_sum_csr(values, ptr), by_ptr),
        "segment_sum_index": (lambda: segment_sum_index(values, index, segments), by_index),
    }
    torch_scatter = _torch_scatter()
    if torch_scatter is not None:
        candidates["torch_scatter segment_csr"] = (
            lambda: torch_scatter.segment_csr(values, ptr),
            by_ptr,
        )
    baseline = None
    for name, (fn, nbytes) in candidates.items():
        seconds = median_seconds(fn, settings)
        baseline = baseline or seconds
        print(_row(name, seconds, nbytes, copy_gbps, baseline))


def bench_routing(settings: Settings, copy_gbps: float) -> None:
    """Fused gate + dispatch and combine against the unfused PyTorch definitions."""
    num_experts, top_k, features = 8, 2, 64
    token_counts = [512, 4096] if settings.quick else [10_000, 100_000, 1_000_000]
    print(f"\nrouting: K={num_experts}, k={top_k}, D={features} (time, GB/s, % copy, x vs unfused)")
    gen = torch.Generator().manual_seed(settings.seed)
    for tokens in token_counts:
        logits = torch.randn(tokens, num_experts, generator=gen).to(settings.device)
        expert_out = torch.randn(tokens * top_k, features, generator=gen).to(settings.device)
        print(f" tokens {tokens}")
        _bench_routing_size(settings, copy_gbps, logits, top_k, expert_out)


def _bench_routing_size(
    settings: Settings, copy_gbps: float, logits: Tensor, top_k: int, expert_out: Tensor
) -> None:
    num_experts = logits.shape[1]
    gate = topk_gate(logits, top_k)
    routes = dispatch(gate.experts, num_experts)
    routing_bytes = _bytes(logits, *gate, gate.experts, *routes)

    def unfused() -> None:
        reference = topk_gate_reference(logits, top_k)
        dispatch_reference(reference.experts, num_experts)

    def fused() -> None:
        dispatch(topk_gate(logits, top_k).experts, num_experts)

    baseline = median_seconds(unfused, settings)
    print(_row("unfused gate + dispatch", baseline, routing_bytes, copy_gbps, baseline))
    seconds = median_seconds(fused, settings)
    print(_row("fused gate + dispatch", seconds, routing_bytes, copy_gbps, baseline))

    out_bytes = logits.shape[0] * expert_out.shape[1] * expert_out.element_size()
    combine_bytes = _bytes(expert_out, gate.weights, routes.slot) + out_bytes
    baseline = median_seconds(lambda: combine_reference(expert_out, gate.weights, routes), settings)
    print(_row("combine reference", baseline, combine_bytes, copy_gbps, baseline))
    seconds = median_seconds(lambda: combine(expert_out, gate.weights, routes), settings)
    print(_row("combine", seconds, combine_bytes, copy_gbps, baseline))


def synthetic_batch(
    molecules: int, atoms: int, device: torch.device, seed: int
) -> dict[str, Tensor]:
    """Random H/C/N/O molecules of ``atoms`` atoms in a 2.5 Å-per-atom^(1/3) box, with random
    energy and force labels: the batch keys of the model interface (DESIGN.md)."""
    gen = torch.Generator().manual_seed(seed)
    side = 2.5 * atoms ** (1 / 3)
    num_atoms = molecules * atoms
    z = torch.tensor([1, 6, 7, 8])[torch.randint(0, 4, (num_atoms,), generator=gen)]
    batch = {
        "z": z,
        "pos": side * torch.rand(num_atoms, 3, generator=gen),
        "batch": torch.arange(molecules).repeat_interleave(atoms),
        "ptr": torch.arange(0, num_atoms + 1, atoms),
        "fragment": torch.randint(0, 8, (num_atoms,), generator=gen),
        "energy": torch.randn(molecules, generator=gen, dtype=torch.float64),
        "forces": torch.randn(num_atoms, 3, generator=gen),
        "n_atoms": torch.full((molecules,), atoms),
    }
    return {key: value.to(device) for key, value in batch.items()}


def bench_training_step(settings: Settings) -> None:
    """One optimiser step of DeepSet-MoE (energy + force loss), kernels on vs off."""
    try:
        from deepset_moe import DeepSetMoE
    except ImportError as error:
        print(f"\ntraining step: skipped, deepset_moe.DeepSetMoE is not importable ({error})")
        return
    molecules, atoms = (2, 8) if settings.quick else (128, 24)
    batch = synthetic_batch(molecules, atoms, settings.device, settings.seed)
    model = DeepSetMoE().to(settings.device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        out = model(batch)
        energy_loss = ((out["energy"] - batch["energy"].to(out["energy"].dtype)) ** 2).mean()
        loss = energy_loss + ((out["forces"] - batch["forces"]) ** 2).mean() + out["aux_loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    print(f"\nDeepSet-MoE training step ({molecules} molecules x {atoms} atoms, default config)")
    times = {}
    for label, mode in (("kernels on", "auto"), ("kernels off", "reference")):
        with forced_mode(mode):
            times[label] = median_seconds(step, settings)
        print(f"  {label:<12} {times[label] * 1e3:9.2f} ms")
    print(f"  speed-up     x{times['kernels off'] / times['kernels on']:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Benchmark the segment-sum and routing kernels.")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per measurement")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    repeats = args.repeats or (3 if args.quick else 50)
    settings = Settings(device, args.quick, warmup=1 if args.quick else 10, repeats=repeats)
    probe = torch.empty(1, device=device)
    backend = "Triton" if use_triton(probe) else "PyTorch reference"
    print(f"device {device}; public ops run the {backend} backend")
    if backend != "Triton":
        print("(Triton kernels need CUDA: these numbers measure the reference, not the kernels)")
    copy_gbps = copy_bandwidth(settings)
    bench_segment_sum(settings, copy_gbps)
    bench_routing(settings, copy_gbps)
    bench_training_step(settings)


if __name__ == "__main__":
    main()
