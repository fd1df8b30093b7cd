"""Numerical check of every Triton kernel against its PyTorch reference.

Each case builds seeded random inputs of an awkward size (empty segments, one segment, rows
not a multiple of the block, D = 1, no rows, several feature blocks, unused experts, groups
straddling row tiles), runs the public op -- forward, backward with a random cotangent, and a
second-order derivative through the backward -- once with ``DEEPSET_MOE_KERNELS=reference``
and once with ``DEEPSET_MOE_KERNELS=triton``, and reports the largest error of each quantity
relative to the reference's magnitude (integer outputs must match exactly). Every float case
runs in float32 and in float64. The ``large`` family (model-scale sizes: many programs per
launch, atomics under contention) runs by default only where the kernels are compiled.

Run it on a GPU to validate the compiled kernels (a table; exit status 1 if any case fails;
the JSON report adds the device name and the torch, Triton and CUDA versions)::

    python -m kernels.check --json kernels_check.json

There the cases run in up to 8 worker processes (``--jobs``), because compiling the ~150
kernel variants dominates the run and Triton compiles one at a time per process; a case that
kills its process is reported as a crash, and ``--deadline`` bounds the run.

and on a CPU through Triton's interpreter (this is what the test-suite does, in a
subprocess, because ``TRITON_INTERPRET`` must be set before any kernel is defined)::

    TRITON_INTERPRET=1 python -m kernels.check --device cpu --json -
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from kernels.backend import forced_mode, triton_module
from kernels.grouped import grouped_linear, grouped_mlp
from kernels.routing import combine, dispatch, topk_gate
from kernels.segment_sum import segment_sum_csr, segment_sum_index

#: Largest accepted relative error per float dtype (sums of up to a few hundred terms).
TOLERANCE = {torch.float32: 2e-5, torch.float64: 1e-12}
#: The same for the ``large`` family (sums of up to ~10^4 terms, in a different order).
LARGE_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}
DTYPES = {"f32": torch.float32, "f64": torch.float64}
SEED = 2024

Case = Callable[[torch.device], dict[str, Tensor]]


def _randn(gen: torch.Generator, shape, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.randn(shape, generator=gen, dtype=dtype).to(device)


def _sorted_index(rows: int, segments: int, empty: bool, gen: torch.Generator) -> Tensor:
    """Sorted segment of each row; with ``empty`` only every other segment gets rows (the
    first and last included among the empty ones when there are at least three)."""
    allowed = torch.arange(1, segments, 2) if empty and segments >= 3 else torch.arange(segments)
    picks = torch.randint(0, allowed.numel(), (rows,), generator=gen)
    return allowed[picks].sort().values


def _offsets(index: Tensor, segments: int) -> Tensor:
    """CSR offsets [segments+1] of a sorted segment index."""
    counts = torch.bincount(index, minlength=segments)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def _linear_derivatives(op: Callable[[Tensor], Tensor], values: Tensor, gen) -> dict[str, Tensor]:
    """Forward, vector-Jacobian product, and the derivative of that product in the cotangent
    (which runs the backward's backward, i.e. the op itself through the adjoint pair)."""
    out = op(values)
    cotangent = _randn(gen, out.shape, out.dtype, out.device).requires_grad_()
    (grad,) = torch.autograd.grad(out, values, cotangent, create_graph=True)
    probe = _randn(gen, grad.shape, grad.dtype, grad.device)
    (second,) = torch.autograd.grad(grad, cotangent, probe)
    return {"forward": out, "backward": grad, "double_backward": second}


def _separated_logits(gen, tokens: int, experts: int, dtype, device) -> Tensor:
    """Logits whose ranks differ by at least 0.3 within each row, so that rounding cannot
    reorder the top k (random logits of 10^5 rows would have float32 near-ties)."""
    ranks = torch.rand((tokens, experts), generator=gen).argsort(dim=1).to(dtype)
    noise = 0.2 * torch.rand((tokens, experts), generator=gen, dtype=dtype)
    return (0.5 * ranks + noise).to(device)


def segment_case(
    kind: str,
    rows: int,
    features: tuple[int, ...],
    segments: int,
    empty: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Case:
    """A segment-sum case: ``kind`` is ``csr`` (sorted) or ``index`` (shuffled rows)."""

    def run(device: torch.device) -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed(SEED)
        index = _sorted_index(rows, segments, empty, gen)
        values = _randn(gen, (rows, *features), dtype, device).requires_grad_()
        if kind == "csr":
            ptr = _offsets(index, segments).to(device)
            return _linear_derivatives(lambda v: segment_sum_csr(v, ptr), values, gen)
        index = index[torch.randperm(rows, generator=gen)].to(device)
        return _linear_derivatives(lambda v: segment_sum_index(v, index, segments), values, gen)

    return run


def gate_case(
    tokens: int,
    experts: int,
    k: int,
    normalize: bool = True,
    dtype: torch.dtype = torch.float32,
    separated: bool = False,
) -> Case:
    """Top-k gate: outputs, gradient of a random linear functional, and its Hessian-vector
    product in the logits (``separated``: logits without near-ties, for large cases)."""

    def run(device: torch.device) -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed(SEED)
        if separated:
            logits = _separated_logits(gen, tokens, experts, dtype, device)
        else:
            logits = _randn(gen, (tokens, experts), dtype, device)
        logits.requires_grad_()
        gate = topk_gate(logits, k, normalize)
        probe_probs = _randn(gen, gate.probs.shape, dtype, device)
        probe_weights = _randn(gen, gate.weights.shape, dtype, device)
        loss = (gate.probs * probe_probs).sum() + (gate.weights * probe_weights).sum()
        (grad,) = torch.autograd.grad(loss, logits, create_graph=True)
        direction = _randn(gen, grad.shape, dtype, device)
        (second,) = torch.autograd.grad((grad * direction).sum(), logits)
        return {
            "probs": gate.probs,
            "weights": gate.weights,
            "experts": gate.experts,
            "counts": gate.counts,
            "backward": grad,
            "double_backward": second,
        }

    return run


def dispatch_case(tokens: int, experts: int, k: int, used: int | None = None) -> Case:
    """Dispatch of random distinct experts per token, drawn from the first ``used`` experts."""

    def run(device: torch.device) -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed(SEED)
        scores = torch.rand((tokens, used or experts), generator=gen)
        chosen = scores.topk(k, dim=1).indices.to(device)
        token, slot, offsets = dispatch(chosen, experts)
        return {"token": token, "slot": slot, "offsets": offsets}

    return run


def combine_case(
    tokens: int, experts: int, k: int, features: int, dtype: torch.dtype = torch.float32
) -> Case:
    """Combine with leaf expert outputs and weights: forward, both gradients, and the
    second-order derivative of those gradients in all three of (outputs, weights, cotangent)."""

    def run(device: torch.device) -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed(SEED)
        chosen = torch.rand((tokens, experts), generator=gen).topk(k, dim=1).indices.to(device)
        routes = dispatch(chosen, experts)
        expert_out = _randn(gen, (tokens * k, features), dtype, device).requires_grad_()
        weights = _randn(gen, (tokens, k), dtype, device).requires_grad_()
        out = combine(expert_out, weights, routes)
        cotangent = _randn(gen, out.shape, dtype, device).requires_grad_()
        inputs = (expert_out, weights)
        grads = torch.autograd.grad(out, inputs, cotangent, create_graph=True)
        probes = [_randn(gen, g.shape, dtype, device) for g in grads]
        second = torch.autograd.grad(grads, (*inputs, cotangent), probes)
        return {
            "forward": out,
            "backward_expert_out": grads[0],
            "backward_weights": grads[1],
            "double_backward_expert_out": second[0],
            "double_backward_weights": second[1],
            "double_backward_cotangent": second[2],
        }

    return run


def routing_chain_case(
    tokens: int,
    experts: int,
    k: int,
    features: int,
    dtype: torch.dtype = torch.float32,
    separated: bool = False,
) -> Case:
    """The MoE routing as the model uses it: gate -> dispatch -> per-expert nonlinear map ->
    combine; gradients in the token features and logits, and their second derivatives."""

    def run(device: torch.device) -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed(SEED)
        x = _randn(gen, (tokens, features), dtype, device).requires_grad_()
        if separated:
            logits = _separated_logits(gen, tokens, experts, dtype, device)
        else:
            logits = _randn(gen, (tokens, experts), dtype, device)
        logits.requires_grad_()
        scales = _randn(gen, (experts, features), dtype, device)
        gate = topk_gate(logits, k)
        routes = dispatch(gate.experts, experts)
        expert_of_row = gate.experts.reshape(-1)[routes.slot]
        expert_out = torch.tanh(x[routes.token] * scales[expert_of_row])
        out = combine(expert_out, gate.weights, routes)
        energy = (out**2).sum() + (gate.probs**2).sum()
        grads = torch.autograd.grad(energy, (x, logits), create_graph=True)
        second = torch.autograd.grad(sum((g**2).sum() for g in grads), (x, logits))
        return {
            "forward": out,
            "backward_x": grads[0],
            "backward_logits": grads[1],
            "double_backward_x": second[0],
            "double_backward_logits": second[1],
        }

    return run


def _group_offsets(counts: list[int], device: torch.device) -> Tensor:
    """CSR offsets [G+1] of consecutive groups of ``counts`` rows."""
    return torch.cumsum(torch.tensor([0, *counts]), 0).to(device)


def _grouped_params(gen, groups: int, widths: tuple[int, ...], dtype, device) -> list[Tensor]:
    """Per-group weights [G, w_in, w_out] (scaled by 1/sqrt(w_in)) and biases [G, w_out] of
    consecutive layers of ``widths``, as leaves requiring grad."""
    params = []
    for width_in, width_out in itertools.pairwise(widths):
        weight = _randn(gen, (groups, width_in, width_out), dtype, device) / width_in**0.5
        params += [weight, _randn(gen, (groups, width_out), dtype, device)]
    return [p.requires_grad_() for p in params]


def grouped_linear_case(
    counts: list[int], width_in: int, width_out: int, dtype: torch.dtype = torch.float32
) -> Case:
    """One grouped linear layer: forward, gradients in rows, weights and biases, and the
    second-order derivative of the first two in (rows, weights, cotangent). Groups of
    ``counts`` rows; with no rows at all only the forward is compared."""

    def run(device: torch.device) -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed(SEED)
        offsets = _group_offsets(counts, device)
        x = _randn(gen, (sum(counts), width_in), dtype, device).requires_grad_()
        weight, bias = _grouped_params(gen, len(counts), (width_in, width_out), dtype, device)
        out = grouped_linear(x, weight, bias, offsets)
        if sum(counts) == 0:
            return {"forward": out}
        cotangent = _randn(gen, out.shape, dtype, device).requires_grad_()
        grads = torch.autograd.grad(out, (x, weight, bias), cotangent, create_graph=True)
        probes = [_randn(gen, g.shape, dtype, device) for g in grads[:2]]
        second = torch.autograd.grad(
            grads[:2], (x, weight, cotangent), probes, allow_unused=True, materialize_grads=True
        )
        return {
            "forward": out,
            "backward_x": grads[0],
            "backward_weight": grads[1],
            "backward_bias": grads[2],
            "double_backward_x": second[0],
            "double_backward_weight": second[1],
            "double_backward_cotangent": second[2],
        }

    return run


def grouped_mlp_case(
    counts: list[int], widths: tuple[int, int, int], dtype: torch.dtype = torch.float32
) -> Case:
    """A grouped two-layer SiLU MLP (the experts of DeepSet-MoE) under a force-like loss:
    gradients in rows and parameters, then the gradient of their squared norm."""

    def run(device: torch.device) -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed(SEED)
        offsets = _group_offsets(counts, device)
        x = _randn(gen, (sum(counts), widths[0]), dtype, device).requires_grad_()
        params = _grouped_params(gen, len(counts), widths, dtype, device)
        out = grouped_mlp(x, *params, offsets)
        inputs = (x, *params)
        grads = torch.autograd.grad((out**2).sum(), inputs, create_graph=True)
        second = torch.autograd.grad(sum((g**2).sum() for g in grads), inputs)
        names = ("x", "w1", "b1", "w2", "b2")
        return {
            "forward": out,
            **{f"backward_{n}": g for n, g in zip(names, grads)},
            **{f"double_backward_{n}": g for n, g in zip(names, second)},
        }

    return run


def moe_layer_case(
    tokens: int,
    experts: int,
    k: int,
    widths: tuple[int, int, int],
    dtype: torch.dtype = torch.float32,
    separated: bool = False,
) -> Case:
    """The whole sparse MoE layer of DeepSet-MoE: gate -> dispatch -> grouped MLP -> combine,
    differentiated twice in the token features and the logits."""

    def run(device: torch.device) -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed(SEED)
        x = _randn(gen, (tokens, widths[0]), dtype, device).requires_grad_()
        params = _grouped_params(gen, experts, widths, dtype, device)
        if separated:
            logits = _separated_logits(gen, tokens, experts, dtype, device)
        else:
            logits = _randn(gen, (tokens, experts), dtype, device)
        logits.requires_grad_()
        gate = topk_gate(logits, k)
        routes = dispatch(gate.experts, experts)
        out = combine(grouped_mlp(x[routes.token], *params, routes.offsets), gate.weights, routes)
        energy = (out**2).sum() + (gate.probs**2).sum()
        grads = torch.autograd.grad(energy, (x, logits), create_graph=True)
        second = torch.autograd.grad(sum((g**2).sum() for g in grads), (x, logits))
        return {
            "forward": out,
            "backward_x": grads[0],
            "backward_logits": grads[1],
            "double_backward_x": second[0],
            "double_backward_logits": second[1],
        }

    return run


def _both_dtypes(builders: dict[str, Callable[[torch.dtype], Case]]) -> dict[str, Case]:
    """``name_f32`` and ``name_f64`` cases from builders that take the float dtype."""
    return {
        f"{name}_{suffix}": build(dtype)
        for name, build in builders.items()
        for suffix, dtype in DTYPES.items()
    }


def _cases() -> dict[str, dict[str, Case]]:
    """Every case, by family."""
    segment = _both_dtypes(
        {
            "csr_basic": lambda d: segment_case("csr", 50, (7,), 6, dtype=d),
            "csr_empty_segments": lambda d: segment_case("csr", 30, (5,), 12, True, d),
            "csr_single_long_segment": lambda d: segment_case("csr", 150, (3,), 1, dtype=d),
            "csr_d1": lambda d: segment_case("csr", 45, (1,), 4, dtype=d),
            "csr_no_rows": lambda d: segment_case("csr", 0, (3,), 3, dtype=d),
            "csr_two_feature_blocks": lambda d: segment_case("csr", 20, (130,), 3, dtype=d),
            "csr_trailing_shape": lambda d: segment_case("csr", 25, (2, 3), 4, True, d),
            "index_basic": lambda d: segment_case("index", 50, (7,), 6, dtype=d),
            "index_empty_segments": lambda d: segment_case("index", 30, (5,), 12, True, d),
            "index_single_segment": lambda d: segment_case("index", 300, (3,), 1, dtype=d),
            "index_d1": lambda d: segment_case("index", 45, (1,), 4, dtype=d),
            "index_no_rows": lambda d: segment_case("index", 0, (3,), 3, dtype=d),
            "index_two_feature_blocks": lambda d: segment_case("index", 20, (130,), 3, dtype=d),
        }
    )
    routing = _both_dtypes(
        {
            "gate_basic": lambda d: gate_case(37, 5, 2, dtype=d),
            "gate_top1": lambda d: gate_case(20, 4, 1, dtype=d),
            "gate_all_experts": lambda d: gate_case(9, 3, 3, dtype=d),
            "gate_unnormalized": lambda d: gate_case(30, 6, 2, normalize=False, dtype=d),
            "gate_one_expert": lambda d: gate_case(5, 1, 1, dtype=d),
            "gate_no_tokens": lambda d: gate_case(0, 4, 2, dtype=d),
            "gate_many_experts": lambda d: gate_case(40, 33, 4, dtype=d),
            "combine_basic": lambda d: combine_case(37, 5, 2, 7, d),
            "combine_d1": lambda d: combine_case(20, 4, 3, 1, d),
            "combine_two_feature_blocks": lambda d: combine_case(12, 3, 2, 130, d),
            "combine_no_tokens": lambda d: combine_case(0, 4, 2, 5, d),
            "routing_chain": lambda d: routing_chain_case(29, 6, 2, 9, d),
        }
    )
    routing |= {
        "dispatch_basic": dispatch_case(37, 5, 2),
        "dispatch_unused_experts": dispatch_case(50, 8, 2, used=3),
        "dispatch_many_tiles": dispatch_case(700, 4, 3),
        "dispatch_no_tokens": dispatch_case(0, 4, 2),
    }
    grouped = _both_dtypes(
        {
            "linear_basic": lambda d: grouped_linear_case([5, 0, 40, 1, 33], 20, 7, d),
            "linear_one_group": lambda d: grouped_linear_case([70], 3, 5, d),
            "linear_empty_groups": lambda d: grouped_linear_case([0, 9, 0, 0], 4, 4, d),
            "linear_width1": lambda d: grouped_linear_case([3, 0, 2], 1, 1, d),
            "linear_no_rows": lambda d: grouped_linear_case([0, 0], 6, 3, d),
            "linear_many_blocks": lambda d: grouped_linear_case([17, 50, 3], 70, 130, d),
            "mlp_basic": lambda d: grouped_mlp_case([5, 0, 40, 1, 33], (20, 37, 5), d),
            "mlp_one_group": lambda d: grouped_mlp_case([70], (8, 16, 3), d),
            "moe_layer": lambda d: moe_layer_case(29, 6, 2, (9, 12, 5), d),
        }
    )
    large = _both_dtypes(
        {
            "csr": lambda d: segment_case("csr", 200_000, (64,), 10_000, True, d),
            "csr_long_segments": lambda d: segment_case("csr", 100_000, (16,), 7, dtype=d),
            "index": lambda d: segment_case("index", 200_000, (64,), 10_000, True, d),
            "index_d256": lambda d: segment_case("index", 50_000, (256,), 3_000, dtype=d),
            "gate": lambda d: gate_case(100_000, 8, 2, dtype=d, separated=True),
            "combine": lambda d: combine_case(50_000, 8, 2, 64, d),
            "routing_chain": lambda d: routing_chain_case(20_000, 8, 2, 64, d, separated=True),
            "grouped_mlp": lambda d: grouped_mlp_case(
                [2_000, 0, 7_001, 3, 500, 4_000, 1, 2_495], (128, 64, 64), d
            ),
            "moe_layer": lambda d: moe_layer_case(10_000, 8, 2, (128, 64, 64), d, separated=True),
        }
    )
    large["dispatch"] = dispatch_case(100_000, 8, 2)
    return {"segment_sum": segment, "routing": routing, "grouped": grouped, "large": large}


CASES: dict[str, dict[str, Case]] = _cases()
#: Families run by ``--family all`` in Triton's interpreter (``large`` would take minutes).
INTERPRETED_FAMILIES = ("segment_sum", "routing", "grouped")


def _relative_error(candidate: Tensor, reference: Tensor) -> float:
    """max |candidate - reference| / max |reference| (absolute when the reference is zero);
    infinite for a shape or dtype mismatch or a non-finite difference."""
    if candidate.shape != reference.shape or candidate.dtype != reference.dtype:
        return float("inf")
    if reference.numel() == 0:
        return 0.0
    difference = (candidate.double() - reference.double()).abs().max().item()
    if not math.isfinite(difference):
        return float("inf")
    scale = reference.double().abs().max().item()
    return difference / scale if scale > 0 else difference


def _case_dtype(reference: dict[str, Tensor]) -> str:
    """Float dtype of a case's outputs ("int" for integer-only cases such as dispatch)."""
    floats = {
        str(t.dtype).removeprefix("torch.") for t in reference.values() if t.is_floating_point()
    }
    return ", ".join(sorted(floats)) or "int"


def run_case(family: str, name: str, device: torch.device) -> dict:
    """Run one case with both backends; the result lists each quantity's relative error."""
    case = CASES[family][name]
    tolerances = LARGE_TOLERANCE if family == "large" else TOLERANCE
    start = time.perf_counter()
    with forced_mode("reference"):
        reference = case(device)
    with forced_mode("triton"):
        candidate = case(device)
    seconds = time.perf_counter() - start
    errors, passed = {}, True
    for key, expected in reference.items():
        error = _relative_error(candidate[key], expected)
        exact = not expected.is_floating_point()
        tolerance = 0.0 if exact else tolerances[expected.dtype]
        errors[key] = {"error": error, "exact": exact, "tolerance": tolerance}
        passed = passed and error <= tolerance
    return {
        "family": family,
        "case": name,
        "dtype": _case_dtype(reference),
        "errors": errors,
        "passed": passed,
        "seconds": seconds,
    }


def _run_or_report(family: str, name: str, device: torch.device) -> dict:
    """:func:`run_case`, with a crash reported as a failed case instead of ending the run."""
    try:
        return run_case(family, name, device)
    except Exception as error:  # a failing kernel must not hide the other cases' results
        return {
            "family": family,
            "case": name,
            "dtype": "?",
            "errors": {},
            "passed": False,
            "crash": f"crash: {error!r}"[:2000],
        }


def backend_name(device: torch.device) -> str:
    """How the Triton kernels run on ``device``: compiled, or in the CPU interpreter."""
    interpreted = triton_module("triton_common").INTERPRETED
    return "triton-interpreter" if interpreted else f"triton-{device.type}"


def environment(device: torch.device) -> dict:
    """Device name and library versions, for the JSON reports of check and bench."""
    import triton

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "device": str(device),
        "device_name": name or platform.machine(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host": platform.node(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run_interpreted(family: str = "all", timeout: float = 300.0) -> dict:
    """Run this check on CPU in a fresh interpreter with ``TRITON_INTERPRET=1`` and return its
    JSON report (the variable must be set before Triton defines any kernel, hence the
    subprocess). Raises RuntimeError with the child's stderr if it crashes."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("DEEPSET_MOE_KERNELS", None)
    command = [sys.executable, "-m", "kernels.check", "--family", family, "--device", "cpu"]
    done = subprocess.run(
        [*command, "--json", "-"], env=env, capture_output=True, text=True, timeout=timeout
    )
    if not done.stdout.strip():
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout)


def _worst(result: dict) -> tuple[str, float, float]:
    """(quantity, error, tolerance) of the quantity with the largest error relative to its
    tolerance (the largest error when all are within a zero tolerance)."""
    if not result["errors"]:
        return "-", float("nan"), float("nan")

    def score(item: tuple[str, dict]) -> tuple[float, float]:
        error, tolerance = item[1]["error"], item[1]["tolerance"]
        ratio = error / tolerance if tolerance > 0 else (math.inf if error > 0 else 0.0)
        return ratio, error

    key, worst = max(result["errors"].items(), key=score)
    return key, worst["error"], worst["tolerance"]


def print_table(report: dict) -> None:
    """One line per case: status, family, case, dtype, worst quantity, error, tolerance, time."""
    env = report["environment"]
    print(
        f"kernels.check: backend {report['backend']} on {env['device']} ({env['device_name']}), "
        f"torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}"
    )
    header = f"{'':4} {'family':<12} {'case':<30} {'dtype':<8} {'worst quantity':<28} "
    print(header + f"{'rel. error':>10} {'tolerance':>9} {'time s':>7}")
    for result in report["results"]:
        status = "ok" if result["passed"] else "FAIL"
        quantity, error, tolerance = _worst(result)
        print(
            f"{status:<4} {result['family']:<12} {result['case']:<30} {result['dtype']:<8} "
            f"{quantity:<28} {error:10.2e} {tolerance:9.0e} {result.get('seconds', 0.0):7.2f}"
        )
        if "crash" in result:
            print(f"     {result['crash']}")
    print(f"{report['passed']} passed, {report['failed']} failed ({report['seconds']:.1f} s)")


def _not_run(family: str, name: str, why: str) -> dict:
    """A failed result for a case that did not finish (deadline, dead worker)."""
    return {
        "family": family,
        "case": name,
        "dtype": "?",
        "errors": {},
        "passed": False,
        "crash": why,
    }


def _run_here(
    cases: list[tuple[str, str]], device: torch.device, deadline: float, emit_lines: bool
) -> list[dict]:
    """Run cases in this process; progress on stderr (the last line names a hanging case).
    With ``emit_lines`` each result is also printed to stdout as one JSON line (worker mode).
    Cases not started by ``deadline`` (a ``perf_counter`` time) are reported as not run."""
    results = []
    for family, name in cases:
        if time.perf_counter() > deadline:
            result = _not_run(family, name, "not run: deadline reached")
        else:
            print(f"  {family}/{name} ...", file=sys.stderr, flush=True)
            result = _run_or_report(family, name, device)
            status = "ok" if result["passed"] else "FAIL"
            print(f"  {family}/{name} {status}", file=sys.stderr, flush=True)
        results.append(result)
        if emit_lines:
            print(json.dumps(result), flush=True)
    return results


class _Worker:
    """A ``python -m kernels.check --cases ...`` process writing one JSON line per result."""

    def __init__(self, cases: list[tuple[str, str]], device: torch.device, deadline: float):
        seconds_left = max(deadline - time.perf_counter(), 1.0)
        command = [sys.executable, "-m", "kernels.check", "--device", str(device)]
        command += ["--deadline", f"{seconds_left:.0f}", "--cases"]
        command += [f"{family}/{name}" for family, name in cases]
        self.output = tempfile.TemporaryFile(mode="w+")  # not a pipe: a full pipe would block
        self.process = subprocess.Popen(command, stdout=self.output, text=True)

    def results(self, deadline: float) -> dict[tuple[str, str], dict]:
        """Wait (killing it 30 s past ``deadline``) and return its results by case."""
        grace = None if math.isinf(deadline) else max(deadline - time.perf_counter(), 0) + 30
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.output.seek(0)
        results = [json.loads(line) for line in self.output.read().splitlines()]
        self.output.close()
        return {(r["family"], r["case"]): r for r in results}


def _run_in_workers(
    cases: list[tuple[str, str]], device: torch.device, jobs: int, deadline: float
) -> list[dict]:
    """Run contiguous runs of cases in ``jobs`` worker processes, so that Triton compiles
    kernels in parallel. Cases a dead worker left (a kernel that crashed the process, or a GPU
    that takes one process at a time) are run again one worker at a time; a case during which
    that worker dies too is reported as a crash. Unfinished cases at ``deadline`` are reported
    as not run."""
    size = math.ceil(len(cases) / jobs)  # contiguous: a kernel's variants compile in one worker
    workers = [_Worker(cases[i : i + size], device, deadline) for i in range(0, len(cases), size)]
    done: dict[tuple[str, str], dict] = {}
    for worker in workers:
        done |= worker.results(deadline)
    pending = [case for case in cases if case not in done]
    while pending and time.perf_counter() < deadline:
        worker = _Worker(pending, device, deadline)
        done |= worker.results(deadline)
        pending = [case for case in pending if case not in done]
        if pending:  # the worker died during the first case it did not report
            why = f"crash: the worker process died (exit code {worker.process.returncode})"
            done[pending[0]] = _not_run(*pending[0], why)
            pending = pending[1:]
    for case in pending:
        done[case] = _not_run(*case, "not run: deadline reached")
    return [done[case] for case in cases]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--family",
        choices=["all", *CASES],
        default="all",
        help="cases to run (all: every family; 'large' only where kernels are compiled)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--json", metavar="PATH", help="also write the report as JSON to PATH ('-': stdout only)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="worker processes (default: 1 in the interpreter, else up to 8: Triton compiles "
        "each kernel variant once per process, so workers compile in parallel)",
    )
    parser.add_argument(
        "--deadline", type=float, default=math.inf, help="seconds; later cases are not run"
    )
    parser.add_argument("--cases", nargs="+", metavar="FAMILY/CASE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    backend = backend_name(device)
    start = time.perf_counter()
    deadline = start + args.deadline
    if args.cases:  # worker mode: one JSON line per result on stdout
        cases = [tuple(case.split("/", 1)) for case in args.cases]
        results = _run_here(cases, device, deadline, emit_lines=True)
        return 0 if all(r["passed"] for r in results) else 1
    if args.family != "all":
        families = [args.family]
    elif backend == "triton-interpreter":
        families = list(INTERPRETED_FAMILIES)
    else:
        families = list(CASES)
    cases = [(family, name) for family in families for name in CASES[family]]
    jobs = args.jobs or (1 if backend == "triton-interpreter" else min(8, os.cpu_count() or 1))
    print(
        f"kernels.check: {backend} on {device}; {', '.join(families)}; {len(cases)} cases, "
        f"{jobs} process(es)",
        file=sys.stderr,
        flush=True,
    )
    if jobs > 1:
        results = _run_in_workers(cases, device, jobs, deadline)
    else:
        results = _run_here(cases, device, deadline, emit_lines=False)
    report = {"backend": backend, "environment": environment(device), "results": results}
    report["passed"] = sum(r["passed"] for r in results)
    report["failed"] = len(results) - report["passed"]
    report["seconds"] = time.perf_counter() - start
    if args.json == "-":
        print(json.dumps(report))
    else:
        print_table(report)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
            print(f"wrote {args.json}")
    return 0 if report["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
