"""Numerical check of every Triton kernel against its PyTorch reference.

Each case builds seeded random inputs of an awkward size (empty segments, one segment, rows
not a multiple of the block, D = 1, no rows, several feature blocks, unused experts), runs
the public op -- forward, backward with a random cotangent, and a second-order derivative
through the backward -- once with ``DEEPSET_MOE_KERNELS=reference`` and once with
``DEEPSET_MOE_KERNELS=triton``, and reports the largest error of each quantity relative to
the reference's magnitude (integer outputs must match exactly).

Run it on a GPU to validate the compiled kernels::

    python -m kernels.check

and on a CPU through Triton's interpreter (this is what the test-suite does, in a
subprocess, because ``TRITON_INTERPRET`` must be set before any kernel is defined)::

    TRITON_INTERPRET=1 python -m kernels.check --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable

import torch
from torch import Tensor

from kernels.backend import forced_mode, triton_module
from kernels.routing import combine, dispatch, topk_gate
from kernels.segment_sum import segment_sum_csr, segment_sum_index

#: Largest accepted relative error per float dtype (fp32 sums of a few hundred terms).
TOLERANCE = {torch.float32: 2e-5, torch.float64: 1e-12}
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


def _linear_derivatives(op: Callable[[Tensor], Tensor], values: Tensor, gen) -> dict[str, Tensor]:
    """Forward, vector-Jacobian product, and the derivative of that product in the cotangent
    (which runs the backward's backward, i.e. the op itself through the adjoint pair)."""
    out = op(values)
    cotangent = _randn(gen, out.shape, out.dtype, out.device).requires_grad_()
    (grad,) = torch.autograd.grad(out, values, cotangent, create_graph=True)
    probe = _randn(gen, grad.shape, grad.dtype, grad.device)
    (second,) = torch.autograd.grad(grad, cotangent, probe)
    return {"forward": out, "backward": grad, "double_backward": second}


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
            counts = torch.bincount(index, minlength=segments)
            ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(device)
            return _linear_derivatives(lambda v: segment_sum_csr(v, ptr), values, gen)
        index = index[torch.randperm(rows, generator=gen)].to(device)
        return _linear_derivatives(lambda v: segment_sum_index(v, index, segments), values, gen)

    return run


def gate_case(tokens: int, experts: int, k: int, normalize: bool = True) -> Case:
    """Top-k gate: outputs, gradient of a random linear functional, and its Hessian-vector
    product in the logits."""

    def run(device: torch.device) -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed(SEED)
        logits = _randn(gen, (tokens, experts), torch.float32, device).requires_grad_()
        gate = topk_gate(logits, k, normalize)
        probe_probs = _randn(gen, gate.probs.shape, torch.float32, device)
        probe_weights = _randn(gen, gate.weights.shape, torch.float32, device)
        loss = (gate.probs * probe_probs).sum() + (gate.weights * probe_weights).sum()
        (grad,) = torch.autograd.grad(loss, logits, create_graph=True)
        direction = _randn(gen, grad.shape, torch.float32, device)
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


def combine_case(tokens: int, experts: int, k: int, features: int) -> Case:
    """Combine with leaf expert outputs and weights: forward, both gradients, and the
    second-order derivative of those gradients in all three of (outputs, weights, cotangent)."""

    def run(device: torch.device) -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed(SEED)
        chosen = torch.rand((tokens, experts), generator=gen).topk(k, dim=1).indices.to(device)
        routes = dispatch(chosen, experts)
        expert_out = _randn(gen, (tokens * k, features), torch.float32, device).requires_grad_()
        weights = _randn(gen, (tokens, k), torch.float32, device).requires_grad_()
        out = combine(expert_out, weights, routes)
        cotangent = _randn(gen, out.shape, torch.float32, device).requires_grad_()
        inputs = (expert_out, weights)
        grads = torch.autograd.grad(out, inputs, cotangent, create_graph=True)
        probes = [_randn(gen, g.shape, torch.float32, device) for g in grads]
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


def routing_chain_case(tokens: int, experts: int, k: int, features: int) -> Case:
    """The MoE layer as the model uses it: gate -> dispatch -> per-expert nonlinear map ->
    combine; gradients in the token features and logits, and their second derivatives."""

    def run(device: torch.device) -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed(SEED)
        x = _randn(gen, (tokens, features), torch.float32, device).requires_grad_()
        logits = _randn(gen, (tokens, experts), torch.float32, device).requires_grad_()
        scales = _randn(gen, (experts, features), torch.float32, device)
        gate = topk_gate(logits, k)
        routes = dispatch(gate.experts, experts)
        expert_of_row = torch.repeat_interleave(
            torch.arange(experts, device=device), routes.offsets.diff()
        )
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


CASES: dict[str, dict[str, Case]] = {
    "segment_sum": {
        "csr_basic": segment_case("csr", 50, (7,), 6),
        "csr_empty_segments": segment_case("csr", 30, (5,), 12, empty=True),
        "csr_single_long_segment": segment_case("csr", 150, (3,), 1),
        "csr_d1": segment_case("csr", 45, (1,), 4),
        "csr_no_rows": segment_case("csr", 0, (3,), 3),
        "csr_two_feature_blocks": segment_case("csr", 20, (130,), 3),
        "csr_trailing_shape": segment_case("csr", 25, (2, 3), 4, empty=True),
        "csr_float64": segment_case("csr", 40, (6,), 5, dtype=torch.float64),
        "index_basic": segment_case("index", 50, (7,), 6),
        "index_empty_segments": segment_case("index", 30, (5,), 12, empty=True),
        "index_single_segment": segment_case("index", 300, (3,), 1),
        "index_d1": segment_case("index", 45, (1,), 4),
        "index_no_rows": segment_case("index", 0, (3,), 3),
        "index_two_feature_blocks": segment_case("index", 20, (130,), 3),
        "index_float64": segment_case("index", 40, (6,), 5, dtype=torch.float64),
    },
    "routing": {
        "gate_basic": gate_case(37, 5, 2),
        "gate_top1": gate_case(20, 4, 1),
        "gate_all_experts": gate_case(9, 3, 3),
        "gate_unnormalized": gate_case(30, 6, 2, normalize=False),
        "gate_one_expert": gate_case(5, 1, 1),
        "gate_no_tokens": gate_case(0, 4, 2),
        "gate_many_experts": gate_case(40, 33, 4),
        "dispatch_basic": dispatch_case(37, 5, 2),
        "dispatch_unused_experts": dispatch_case(50, 8, 2, used=3),
        "dispatch_many_tiles": dispatch_case(700, 4, 3),
        "dispatch_no_tokens": dispatch_case(0, 4, 2),
        "combine_basic": combine_case(37, 5, 2, 7),
        "combine_d1": combine_case(20, 4, 3, 1),
        "combine_two_feature_blocks": combine_case(12, 3, 2, 130),
        "combine_no_tokens": combine_case(0, 4, 2, 5),
        "routing_chain": routing_chain_case(29, 6, 2, 9),
    },
}


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


def run_case(family: str, name: str, device: torch.device) -> dict:
    """Run one case with both backends; the result lists each quantity's relative error."""
    case = CASES[family][name]
    with forced_mode("reference"):
        reference = case(device)
    with forced_mode("triton"):
        candidate = case(device)
    errors, passed = {}, True
    for key, expected in reference.items():
        error = _relative_error(candidate[key], expected)
        exact = not expected.is_floating_point()
        tolerance = 0.0 if exact else TOLERANCE[expected.dtype]
        errors[key] = {"error": error, "exact": exact}
        passed = passed and error <= tolerance
    return {"family": family, "case": name, "errors": errors, "passed": passed}


def _run_or_report(family: str, name: str, device: torch.device) -> dict:
    """:func:`run_case`, with a crash reported as a failed case instead of ending the run."""
    try:
        return run_case(family, name, device)
    except Exception as error:  # a failing kernel must not hide the other cases' results
        return {"family": family, "case": name, "errors": {}, "passed": False, "crash": repr(error)}


def backend_name(device: torch.device) -> str:
    """How the Triton kernels run on ``device``: compiled, or in the CPU interpreter."""
    interpreted = triton_module("triton_common").INTERPRETED
    return "triton-interpreter" if interpreted else f"triton-{device.type}"


def run_interpreted(family: str = "all", timeout: float = 300.0) -> dict:
    """Run this check on CPU in a fresh interpreter with ``TRITON_INTERPRET=1`` and return its
    JSON report (the variable must be set before Triton defines any kernel, hence the
    subprocess). Raises RuntimeError with the child's stderr if it crashes."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("DEEPSET_MOE_KERNELS", None)
    command = [sys.executable, "-m", "kernels.check", "--family", family, "--device", "cpu"]
    done = subprocess.run(
        [*command, "--json"], env=env, capture_output=True, text=True, timeout=timeout
    )
    if not done.stdout.strip():
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=["all", *CASES], default="all")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    families = list(CASES) if args.family == "all" else [args.family]
    results = [_run_or_report(f, name, device) for f in families for name in CASES[f]]
    report = {"backend": backend_name(device), "device": str(device), "results": results}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"backend {report['backend']} on {device}")
        for result in results:
            worst = max((e["error"] for e in result["errors"].values()), default=0.0)
            status = "ok  " if result["passed"] else "FAIL"
            print(
                f"{status} {result['family']:<12} {result['case']:<28} worst rel. error {worst:.2e}"
            )
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
