"""Micro-benchmarks of the kernels, with their performance goals; the shared bench driver.

    python -m kernels.bench --json kernels_bench.json    # full sizes (meant for a GPU)
    python -m kernels.bench --quick --device cpu         # small sizes (smoke test, CPU)

Sections, in order (``--sections`` picks some; each is timed and a crash in one is recorded
without stopping the others; the JSON is rewritten after every section, so a run cut short
still leaves its measurements):

* ``copy``: device copy bandwidth, a ``clone`` of 1 GiB (one read and one write per byte),
  the ceiling the bandwidth figures are compared with;
* ``segment``: segment sums (atoms -> molecules, edges -> atoms, D = 1, long segments, a
  training-batch size): time, effective bandwidth (each input byte read once, each output
  byte written once), % of the copy bandwidth, and the ratio to ``torch.index_add_``,
  ``scatter_add_`` and, when installed, ``torch_scatter.segment_csr``;
* ``routing``: the fused MoE routing (gate -> dispatch -> gather -> combine) against the
  unfused PyTorch definitions, and its two halves separately;
* ``grouped``: the grouped expert MLP (Triton, no host sync) against one MLP per expert;
* ``tuning``: a sweep of rows per tile and warps per program of the segment-sum kernels at
  the headline size (data for choosing their defaults).

The goals are summarised at the end: segment sum >= 70 % of the copy bandwidth and >= 1.3x
``index_add_``; fused routing >= 2x the unfused path.

Model-level benchmarks (a DeepSet-MoE training step with the kernels on and off, MD-step
inference against MACE, training throughput of every registered model) are in
``benchmark.evaluation.speed``; they reuse the generic pieces of this module
(:class:`Settings`, :class:`Report`, :func:`measure`, :func:`bench_parser`,
:func:`print_banner`, :func:`run_sections`, :func:`print_goals`).

Timing: on CUDA, ``triton.testing.do_bench`` (warm-up, L2 flushed before each call, CUDA
events; the median and the 20/80 % quantiles are kept); on a CPU, the median of
``time.perf_counter`` over a few calls. On a CPU the public ops run the PyTorch reference, so
"kernel" and "reference" are the same code there.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kernels.backend import triton_available, triton_module, use_triton
from kernels.check import environment
from kernels.grouped import grouped_mlp, grouped_mlp_reference
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
SECTIONS = ("copy", "segment", "routing", "grouped", "tuning")
#: Goals: segment sum at >= 70 % of the copy bandwidth and >= 1.3x index_add_; fused routing
#: >= 2x the unfused PyTorch path.
GOAL_SEGMENT_BANDWIDTH = 0.70
GOAL_SEGMENT_VS_INDEX_ADD = 1.3
GOAL_ROUTING_SPEEDUP = 2.0


@dataclass
class Settings:
    """Sizes and timing: ``quick`` shrinks every size for a smoke run on a CPU."""

    device: torch.device
    quick: bool
    repeats: int
    seed: int = 0

    @property
    def cuda(self) -> bool:
        """Whether timings use CUDA events (``triton.testing.do_bench``)."""
        return self.device.type == "cuda"


@dataclass
class Report:
    """Everything measured, as written to ``--json``."""

    environment: dict[str, Any]
    settings: dict[str, Any]
    measurements: list[dict[str, Any]] = field(default_factory=list)
    goals: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, section: str, name: str, timing: dict[str, float], **extra: Any) -> None:
        """Record one timing (seconds) with its parameters and derived figures."""
        self.measurements.append({"section": section, "name": name, **timing, **extra})

    def goal(self, goal: str, value: float, target: float, detail: str) -> None:
        """Record a goal: met when ``value >= target``."""
        met = bool(math.isfinite(value) and value >= target)
        self.goals.append(
            {"goal": goal, "value": value, "target": target, "met": met, "detail": detail}
        )

    def note(self, text: str) -> None:
        """Print and keep a remark (a skipped comparison, an unavailable baseline)."""
        print(f"  note: {text}", flush=True)
        self.notes.append(text)

    def write(self, path: str | None) -> None:
        """Write the report as JSON to ``path`` (nothing when None)."""
        if path:
            Path(path).write_text(json.dumps(self.__dict__, indent=1, default=str))


# --------------------------------------------------------------------------------------------
# timing


def measure(fn: Callable[[], object], settings: Settings, rep_ms: float = 40.0) -> dict:
    """Time ``fn``: ``{"median_s", "p20_s", "p80_s"}`` (seconds).

    CUDA: ``triton.testing.do_bench`` for about ``rep_ms`` of calls after 10 ms of warm-up.
    CPU: one warm-up call, then ``settings.repeats`` calls timed with ``perf_counter``.
    """
    if settings.cuda:
        from triton.testing import do_bench

        median, low, high = do_bench(fn, warmup=10, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        return {"median_s": median / 1e3, "p20_s": low / 1e3, "p80_s": high / 1e3}
    fn()
    times = []
    for _ in range(settings.repeats):
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    times.sort()

    def quantile(q: float) -> float:
        return times[min(int(q * len(times)), len(times) - 1)]

    return {"median_s": statistics.median(times), "p20_s": quantile(0.2), "p80_s": quantile(0.8)}


def _bytes(*tensors: Tensor) -> int:
    """Total size of ``tensors`` in bytes."""
    return sum(t.numel() * t.element_size() for t in tensors)


def _us(seconds: float) -> str:
    """Seconds as a fixed-width microseconds string."""
    return f"{seconds * 1e6:10.1f} us"


# --------------------------------------------------------------------------------------------
# sections


def bench_copy(settings: Settings, report: Report) -> float:
    """GB/s of a ``clone`` (one read + one write per byte) of 1 GiB (16 MiB when quick)."""
    numel = (1 << 22) if settings.quick else (1 << 28)
    data = torch.empty(numel, dtype=torch.float32, device=settings.device).uniform_()
    timing = measure(data.clone, settings, rep_ms=100)
    gbps = 2 * _bytes(data) / timing["median_s"] / GIGA
    report.add("copy", "clone", timing, bytes=2 * _bytes(data), gbps=gbps)
    print(f"copy bandwidth (clone of {_bytes(data) / 2**20:.0f} MiB): {gbps:.1f} GB/s")
    return gbps


def _torch_scatter():
    """The ``torch_scatter`` module when installed, else None."""
    try:
        import torch_scatter
    except ImportError:
        return None
    return torch_scatter


def _random_ptr(segments: int, mean: int, settings: Settings) -> Tensor:
    """CSR offsets of ``segments`` segments of uniform random length in [0, 2 * mean]."""
    gen = torch.Generator(device=settings.device).manual_seed(settings.seed)
    lengths = torch.randint(0, 2 * mean + 1, (segments,), generator=gen, device=settings.device)
    return torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])


SEGMENT_SIZES = {  # name: (segments, mean rows per segment, features)
    "atoms->molecules D64": (131_072, 24, 64),
    "edges->atoms D16": (1_000_000, 16, 16),
    "edges->atoms D256": (100_000, 16, 256),
    "energies D1": (250_000, 16, 1),
    "long segments D64": (1_000, 4_000, 64),
    "training batch D64": (128, 24, 64),
}
QUICK_SEGMENT_SIZES = {"small D8": (256, 16, 8), "small D32": (1024, 8, 32)}
HEADLINE_SEGMENT = "atoms->molecules D64"


def bench_segment(settings: Settings, report: Report, copy_gbps: float) -> None:
    """Segment sums over CSR offsets and over an index, against PyTorch's scatter ops."""
    print(
        "\nsegment sums (time, effective GB/s, % of copy bandwidth, speed-up vs index_add_)\n"
        f"  {'size':<22} {'op':<26} {'time':>13} {'GB/s':>9} {'%copy':>6} {'x idx_add':>9}"
    )
    sizes = QUICK_SEGMENT_SIZES if settings.quick else SEGMENT_SIZES
    torch_scatter = _torch_scatter()
    for size_name, shape in sizes.items():
        _bench_segment_size(settings, report, copy_gbps, size_name, *shape)
    if torch_scatter is None:
        report.note("torch_scatter is not installed: no comparison with segment_csr")
    headline = HEADLINE_SEGMENT if not settings.quick else next(iter(sizes))
    csr = _find(report, "segment", "segment_sum_csr", size=headline)
    report.goal(
        "segment_sum_csr bandwidth >= 70% of copy",
        csr["fraction_of_copy"],
        GOAL_SEGMENT_BANDWIDTH,
        f"{headline}: {csr['gbps']:.0f} GB/s vs copy {copy_gbps:.0f} GB/s",
    )
    report.goal(
        "segment_sum_csr >= 1.3x index_add_",
        csr["speedup_vs_index_add"],
        GOAL_SEGMENT_VS_INDEX_ADD,
        f"{headline}, same sorted data",
    )
    index_op = _find(report, "segment", "segment_sum_index", size=headline)
    report.goal(
        "segment_sum_index >= 1.3x index_add_",
        index_op["speedup_vs_index_add"],
        GOAL_SEGMENT_VS_INDEX_ADD,
        f"{headline}, same data",
    )


def _bench_segment_size(
    settings: Settings,
    report: Report,
    copy_gbps: float,
    size_name: str,
    segments: int,
    mean: int,
    features: int,
) -> None:
    """Every segment-sum candidate on one size (float32 rows, random segment lengths)."""
    ptr = _random_ptr(segments, mean, settings)
    rows = int(ptr[-1])
    gen = torch.Generator(device=settings.device).manual_seed(settings.seed + 1)
    values = torch.randn(rows, features, generator=gen, device=settings.device)
    index = torch.repeat_interleave(torch.arange(segments, device=settings.device), ptr.diff())
    expanded = index.unsqueeze(1).expand(-1, features)
    out = values.new_empty(segments, features)
    by_index, by_ptr = _bytes(values, index, out), _bytes(values, ptr, out)
    candidates: dict[str, tuple[Callable[[], object], int]] = {
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
    for op, (fn, nbytes) in candidates.items():
        timing = measure(fn, settings)
        baseline = baseline or timing["median_s"]
        gbps = nbytes / timing["median_s"] / GIGA
        speedup = baseline / timing["median_s"]
        report.add(
            "segment",
            op,
            timing,
            size=size_name,
            segments=segments,
            rows=rows,
            features=features,
            bytes=nbytes,
            gbps=gbps,
            fraction_of_copy=gbps / copy_gbps,
            speedup_vs_index_add=speedup,
        )
        print(
            f"  {size_name:<22} {op:<26} {_us(timing['median_s'])} {gbps:9.1f} "
            f"{100 * gbps / copy_gbps:5.1f}% {speedup:8.2f}x",
            flush=True,
        )


def _find(report: Report, section: str, name: str, **match: Any) -> dict:
    """The last measurement of ``section``/``name`` whose fields equal ``match``."""
    for entry in reversed(report.measurements):
        if entry["section"] == section and entry["name"] == name:
            if all(entry.get(k) == v for k, v in match.items()):
                return entry
    raise KeyError(f"no measurement {section}/{name} {match}")


ROUTING_TOKENS = (3_072, 100_000, 1_000_000)
QUICK_ROUTING_TOKENS = (512, 4_096)


def bench_routing(settings: Settings, report: Report, copy_gbps: float) -> None:
    """Fused routing (gate -> dispatch -> gather -> combine) against the unfused references."""
    num_experts, top_k, features = 8, 2, 64
    print(
        f"\nMoE routing, K={num_experts} experts, k={top_k}, D={features} "
        "(time, speed-up vs the unfused PyTorch path)"
    )
    gen = torch.Generator(device=settings.device).manual_seed(settings.seed)
    for tokens in QUICK_ROUTING_TOKENS if settings.quick else ROUTING_TOKENS:
        logits = torch.randn(tokens, num_experts, generator=gen, device=settings.device)
        x = torch.randn(tokens, features, generator=gen, device=settings.device)
        gate = topk_gate(logits, top_k)
        routes = dispatch(gate.experts, num_experts)
        expert_out = x[routes.token]

        def unfused(logits=logits, x=x) -> Tensor:
            gate = topk_gate_reference(logits, top_k)
            routes = dispatch_reference(gate.experts, num_experts)
            return combine_reference(x[routes.token], gate.weights, routes)

        def fused(logits=logits, x=x) -> Tensor:
            gate = topk_gate(logits, top_k)
            routes = dispatch(gate.experts, num_experts)
            return combine(x[routes.token], gate.weights, routes)

        pairs = {
            "gate+dispatch+combine": (unfused, fused),
            "gate+dispatch": (
                lambda logits=logits: dispatch_reference(
                    topk_gate_reference(logits, top_k).experts, num_experts
                ),
                lambda logits=logits: dispatch(topk_gate(logits, top_k).experts, num_experts),
            ),
            "combine": (
                lambda e=expert_out, g=gate, r=routes: combine_reference(e, g.weights, r),
                lambda e=expert_out, g=gate, r=routes: combine(e, g.weights, r),
            ),
        }
        for name, (reference_fn, kernel_fn) in pairs.items():
            slow = measure(reference_fn, settings)
            fast = measure(kernel_fn, settings)
            speedup = slow["median_s"] / fast["median_s"]
            report.add("routing", f"{name} unfused", slow, tokens=tokens)
            report.add("routing", f"{name} fused", fast, tokens=tokens, speedup=speedup)
            print(
                f"  tokens {tokens:>9}  {name:<22} unfused {_us(slow['median_s'])}  "
                f"fused {_us(fast['median_s'])}  x{speedup:5.2f}",
                flush=True,
            )
        if not settings.quick or tokens == QUICK_ROUTING_TOKENS[-1]:
            entry = _find(report, "routing", "gate+dispatch+combine fused", tokens=tokens)
            report.goal(
                f"fused routing >= 2x unfused ({tokens} tokens)",
                entry["speedup"],
                GOAL_ROUTING_SPEEDUP,
                "gate + dispatch + gather + combine, forward",
            )


def bench_grouped(settings: Settings, report: Report) -> None:
    """The experts' grouped MLP: Triton (no host sync) against one MLP per expert."""
    num_experts, widths = 8, (128, 64, 64)
    print(f"\ngrouped expert MLP, K={num_experts}, widths {widths} (forward; forward + backward)")
    for rows in (512, 4_096) if settings.quick else (6_144, 200_000):
        _bench_grouped_size(settings, report, rows, num_experts, widths)


def _bench_grouped_size(
    settings: Settings, report: Report, rows: int, num_experts: int, widths: tuple[int, ...]
) -> None:
    """Per-expert loop and grouped kernel on ``rows`` rows routed to their argmax expert."""
    gen = torch.Generator(device=settings.device).manual_seed(settings.seed)
    logits = torch.randn(rows, num_experts, generator=gen, device=settings.device)
    offsets = dispatch(logits.argmax(1, keepdim=True), num_experts).offsets
    x = torch.randn(rows, widths[0], generator=gen, device=settings.device)
    weights = [
        (torch.randn(num_experts, a, b, device=settings.device) / a**0.5).requires_grad_()
        for a, b in itertools.pairwise(widths)
    ]
    biases = [
        torch.zeros(num_experts, b, device=settings.device, requires_grad=True) for b in widths[1:]
    ]
    args = (x, weights[0], biases[0], weights[1], biases[1], offsets)
    for label, fn in (("per-expert", grouped_mlp_reference), ("grouped", grouped_mlp)):
        forward = measure(lambda fn=fn: fn(*args), settings)
        backward = measure(lambda fn=fn: fn(*args).square().sum().backward(), settings)
        report.add("grouped", f"{label} forward", forward, rows=rows)
        report.add("grouped", f"{label} forward+backward", backward, rows=rows)
        print(
            f"  rows {rows:>7}  {label:<11} forward {_us(forward['median_s'])}  "
            f"forward+backward {_us(backward['median_s'])}",
            flush=True,
        )


def bench_tuning(settings: Settings, report: Report, copy_gbps: float) -> None:
    """Rows per tile x warps of the segment-sum kernels at the headline size."""
    if not (settings.cuda and triton_available()):
        report.note("tuning sweep skipped: it calls the Triton kernels directly (CUDA only)")
        return
    kernels = triton_module("triton_segment_sum")
    segments, mean, features = SEGMENT_SIZES[HEADLINE_SEGMENT]
    ptr = _random_ptr(segments, mean, settings)
    values = torch.randn(int(ptr[-1]), features, device=settings.device)
    index = torch.repeat_interleave(torch.arange(segments, device=settings.device), ptr.diff())
    out = values.new_empty(segments, features)
    print(f"\ntuning sweep at {HEADLINE_SEGMENT} (GB/s, % of copy bandwidth)")
    sweeps = {
        "segment_sum_csr": (
            lambda block_n, warps: kernels.segment_sum_csr(values, ptr, block_n, warps),
            _bytes(values, ptr, out),
            (8, 16, 32, 64),
        ),
        "segment_sum_index": (
            lambda block_n, warps: kernels.segment_sum_index(
                values, index, segments, block_n, warps
            ),
            _bytes(values, index, out),
            (16, 32, 64, 128),
        ),
    }
    for op, (fn, nbytes, blocks) in sweeps.items():
        for block_n in blocks:
            cells = []
            for warps in (1, 2, 4, 8):
                timing = measure(lambda f=fn, b=block_n, w=warps: f(b, w), settings, rep_ms=25)
                gbps = nbytes / timing["median_s"] / GIGA
                report.add(
                    "tuning", op, timing, block_n=block_n, num_warps=warps, gbps=gbps,
                    fraction_of_copy=gbps / copy_gbps,
                )  # fmt: skip
                cells.append(f"w{warps} {gbps:7.0f} ({100 * gbps / copy_gbps:3.0f}%)")
            print(f"  {op:<18} BLOCK_N {block_n:>3}: " + "  ".join(cells), flush=True)


# --------------------------------------------------------------------------------------------
# driver


def print_goals(report: Report) -> None:
    """The goals table: goal, measured value, target, met or missed."""
    print(f"\n{'goal':<46} {'measured':>9} {'target':>7}  status  detail")
    for goal in report.goals:
        status = "met" if goal["met"] else "MISSED"
        print(
            f"{goal['goal']:<46} {goal['value']:9.2f} {goal['target']:7.2f}  {status:<6}  "
            f"{goal['detail']}"
        )
    for note in report.notes:
        print(f"note: {note}")


def bench_parser(description: str, sections: Sequence[str]) -> argparse.ArgumentParser:
    """The options every bench takes: ``--quick``, ``--device``, ``--repeats``,
    ``--sections`` (choices and default: ``sections``), ``--budget`` and ``--json``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per CPU timing")
    parser.add_argument("--sections", nargs="+", choices=sections, default=list(sections))
    parser.add_argument(
        "--budget", type=float, default=200.0, help="seconds; later sections are skipped after"
    )
    parser.add_argument("--json", metavar="PATH", help="write every raw measurement as JSON")
    return parser


def default_repeats(args: argparse.Namespace) -> int:
    """Timed calls per CPU timing: ``--repeats``, else 3 when quick and 20 otherwise."""
    return args.repeats or (3 if args.quick else 20)


def print_banner(name: str, report: Report, device: torch.device) -> None:
    """First line of a run: device, library versions and the backend the public ops use."""
    backend = "Triton" if use_triton(torch.empty(1, device=device)) else "PyTorch reference"
    env = report.environment
    print(
        f"{name} on {env['device_name']} ({device}), torch {env['torch']}, "
        f"triton {env['triton']}, CUDA {env['cuda']}; public ops run the {backend} backend"
    )
    if backend != "Triton":
        print("(Triton kernels need CUDA: these numbers measure the reference, not the kernels)")


def run_sections(
    runners: dict[str, Callable[[], object]],
    selected: Sequence[str],
    settings: Settings,
    report: Report,
    budget: float,
    json_path: str | None,
    results: dict[str, object] | None = None,
) -> int:
    """Run the ``selected`` sections in the order of ``runners``, then print the goals.

    Each section is timed; one that raises is recorded as an error and the others still run;
    once ``budget`` seconds have passed the remaining sections are skipped. The report is
    rewritten to ``json_path`` after every section. A section's return value is stored in
    ``results`` (for later sections that need it, e.g. the copy bandwidth).

    Returns:
        the exit status: 1 when a section failed, else 0.
    """
    results = {} if results is None else results
    start = time.perf_counter()
    failed = False
    for section, runner in runners.items():
        if section not in selected:
            continue
        elapsed = time.perf_counter() - start
        if elapsed > budget:
            report.note(f"section {section} skipped: {elapsed:.0f} s > budget {budget:.0f} s")
            report.sections[section] = {"status": "skipped (budget)"}
            continue
        section_start = time.perf_counter()
        try:
            results[section] = runner()
            status = "ok"
        except Exception as error:  # record and go on with the other sections
            failed = True
            status = f"error: {error!r}"
            print(f"\nsection {section} FAILED:\n{traceback.format_exc()}", flush=True)
        if settings.cuda:
            torch.cuda.empty_cache()
        seconds = time.perf_counter() - section_start
        report.sections[section] = {"status": status, "seconds": seconds}
        print(f"[{section}: {status}, {seconds:.1f} s]", flush=True)
        report.write(json_path)
    print_goals(report)
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    report.write(json_path)
    if json_path:
        print(f"wrote {json_path}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = bench_parser(__doc__.split("\n\n")[0], SECTIONS).parse_args(argv)
    device = torch.device(args.device)
    settings = Settings(device, args.quick, default_repeats(args))
    report = Report(environment(device), {**vars(args), "device": str(device)})
    print_banner("kernels.bench", report, device)
    results: dict[str, object] = {}

    def copy_gbps() -> float:  # nan when the copy section did not run or failed
        return results.get("copy", math.nan)  # type: ignore[return-value]

    runners: dict[str, Callable[[], object]] = {
        "copy": lambda: bench_copy(settings, report),
        "segment": lambda: bench_segment(settings, report, copy_gbps()),
        "routing": lambda: bench_routing(settings, report, copy_gbps()),
        "grouped": lambda: bench_grouped(settings, report),
        "tuning": lambda: bench_tuning(settings, report, copy_gbps()),
    }
    return run_sections(runners, args.sections, settings, report, args.budget, args.json, results)


if __name__ == "__main__":
    sys.exit(main())
