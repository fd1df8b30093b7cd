"""MoE routing: reference semantics, the double-differentiable autograd wrappers (gradcheck and
gradgradcheck in float64), input validation, every Triton routing kernel against the
reference under Triton's CPU interpreter, and a smoke run of the kernel benchmark
(``python -m kernels.bench``; the model-level sections are tested in
``tests/benchmark/evaluation/test_speed.py``).

As in ``test_kernels_segment_sum.py``, the interpreter runs in one subprocess per file
(``kernels.check.run_interpreted``), because ``TRITON_INTERPRET`` must be set before Triton
defines a kernel; each case is reported as its own test.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from kernels import bench, check
from kernels.routing import (
    Dispatch,
    combine,
    combine_reference,
    dispatch,
    dispatch_reference,
    expert_counts,
    topk_gate,
    topk_gate_reference,
)

ROUTING_CASES = list(check.CASES["routing"])


@pytest.fixture(scope="module")
def interpreted() -> dict:
    report = check.run_interpreted("routing")
    return {result["case"]: result for result in report["results"]} | {"_backend": report}


@pytest.mark.parametrize("case", ROUTING_CASES)
def test_triton_kernel_matches_reference_in_interpreter(interpreted: dict, case: str) -> None:
    assert interpreted["_backend"]["backend"] == "triton-interpreter"
    result = interpreted[case]
    assert "crash" not in result, result.get("crash")
    quantities = set(result["errors"])
    if case.startswith("dispatch"):
        assert quantities == {"token", "slot", "offsets"}
    else:
        assert "forward" in quantities or "probs" in quantities
        assert any(q.startswith("double_backward") for q in quantities)
    assert result["passed"], result["errors"]


def _logits(tokens: int, experts: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(tokens, experts, generator=gen, dtype=torch.float64)


def test_gate_reference_semantics() -> None:
    logits = _logits(6, 5)
    gate = topk_gate(logits, 2)
    assert torch.equal(gate.experts, logits.topk(2, dim=1).indices)
    torch.testing.assert_close(gate.probs, torch.softmax(logits, 1))
    torch.testing.assert_close(gate.weights.sum(1), torch.ones(6, dtype=torch.float64))
    assert torch.equal(gate.counts, torch.bincount(gate.experts.flatten(), minlength=5))
    raw = topk_gate(logits, 2, normalize=False)
    torch.testing.assert_close(raw.weights, gate.probs.gather(1, gate.experts))


def test_dispatch_groups_stably_by_expert() -> None:
    experts = torch.tensor([[2, 0], [0, 3], [2, 3], [1, 0]])
    routes = dispatch(experts, 5)
    assert routes.offsets.tolist() == [0, 3, 4, 6, 8, 8]
    assert routes.slot.tolist() == [1, 2, 7, 6, 0, 4, 3, 5]
    assert torch.equal(routes.token, routes.slot // 2)
    assert all(torch.equal(a, b) for a, b in zip(routes, dispatch_reference(experts, 5)))


def test_combine_is_the_weighted_sum_over_slots() -> None:
    experts = torch.tensor([[2, 0], [0, 1], [1, 2]])
    routes = dispatch(experts, 3)
    gen = torch.Generator().manual_seed(5)
    weights = torch.rand(3, 2, generator=gen, dtype=torch.float64)
    per_expert = torch.randn(3, 3, 4, generator=gen, dtype=torch.float64)  # [expert, token, D]
    expert_out = per_expert[experts.flatten()[routes.slot], routes.token]
    expected = (weights.unsqueeze(-1) * per_expert[experts, torch.arange(3)[:, None]]).sum(1)
    torch.testing.assert_close(combine(expert_out, weights, routes), expected)


@pytest.mark.parametrize("normalize", [True, False])
def test_gate_gradcheck_and_gradgradcheck_float64(normalize: bool) -> None:
    logits = _logits(5, 4, seed=1).requires_grad_()

    def differentiable_outputs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate = topk_gate(x, 2, normalize)
        return gate.probs, gate.weights

    assert torch.autograd.gradcheck(differentiable_outputs, (logits,))
    assert torch.autograd.gradgradcheck(differentiable_outputs, (logits,))


def test_combine_gradcheck_and_gradgradcheck_float64() -> None:
    routes = dispatch(torch.tensor([[1, 0], [2, 1], [1, 2], [0, 2]]), 3)
    gen = torch.Generator().manual_seed(2)
    expert_out = torch.randn(8, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(4, 2, generator=gen, dtype=torch.float64, requires_grad=True)

    def op(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return combine(x, w, routes)

    assert torch.autograd.gradcheck(op, (expert_out, weights))
    assert torch.autograd.gradgradcheck(op, (expert_out, weights))


def test_routing_second_derivatives_match_autograd_of_the_references() -> None:
    """gate -> dispatch -> nonlinear experts -> combine, differentiated twice, against PyTorch
    autograd through the pure reference definitions."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(7, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    router = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    scale = torch.randn(4, 3, generator=gen, dtype=torch.float64)

    def second_order(gate_fn, dispatch_fn, combine_fn) -> tuple[torch.Tensor, torch.Tensor]:
        gate = gate_fn(torch.tanh(x @ router), 2)
        routes = dispatch_fn(gate.experts, 4)
        expert_of_row = gate.experts.flatten()[routes.slot]
        out = combine_fn(torch.sin(x[routes.token] * scale[expert_of_row]), gate.weights, routes)
        energy = (out**2).sum() + gate.probs.pow(3).sum()
        (grad,) = torch.autograd.grad(energy, x, create_graph=True)
        (second,) = torch.autograd.grad((grad**2).sum(), x)
        return grad.detach(), second

    expected = second_order(topk_gate_reference, dispatch_reference, combine_reference)
    for got, want in zip(second_order(topk_gate, dispatch, combine), expected):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: topk_gate(torch.zeros(3, 4), 5), r"k must be in \[1, K=4\], got 5"),
        (lambda: topk_gate(torch.zeros(4), 1), r"logits must be a float \[N, K\]"),
        (lambda: dispatch(torch.tensor([[0, 4]]), 4), r"experts values 0 \.\. 4 fall outside"),
        (lambda: dispatch(torch.tensor([0, 1]), 4), r"experts must be an \[N, k\]"),
        (
            lambda: combine(torch.zeros(5, 2), torch.zeros(3, 2), dispatch_reference(
                torch.zeros(3, 2, dtype=torch.long), 2)),
            r"expert_out must be \[N\*k=6, D\], got shape \(5, 2\)",
        ),
        (
            lambda: combine(torch.zeros(6, 2), torch.zeros(3, 2), Dispatch(
                torch.zeros(4, dtype=torch.long), torch.zeros(6, dtype=torch.long),
                torch.zeros(3, dtype=torch.long))),
            r"dispatch.token must be \[N\*k=6\]",
        ),
    ],
)  # fmt: skip
def test_bad_routing_input_is_named(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_expert_counts_match_bincount() -> None:
    experts = torch.tensor([[2, 0], [0, 3], [2, 3]], dtype=torch.int32)
    counts = expert_counts(experts, 6)
    assert counts.dtype == torch.long
    assert torch.equal(counts, torch.bincount(experts.flatten(), minlength=6))


def test_bench_quick_runs_on_cpu(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # intra-op threads only slow tiny ops down on a shared CPU
    path = tmp_path / "bench.json"
    try:
        status = bench.main(["--quick", "--device", "cpu", "--repeats", "1", "--json", str(path)])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert status == 0
    assert "PyTorch reference backend" in printed
    assert "copy bandwidth" in printed
    report = json.loads(path.read_text())
    assert set(report["sections"]) == set(bench.SECTIONS)
    assert {s["status"] for s in report["sections"].values()} == {"ok"}
    assert {"device_name", "torch", "triton"} <= set(report["environment"])
    names = Counter((m["section"], m["name"]) for m in report["measurements"])
    for section, name in [
        ("segment", "torch index_add_"), ("segment", "segment_sum_csr"),
        ("segment", "segment_sum_index"), ("routing", "gate+dispatch+combine fused"),
        ("routing", "gate+dispatch+combine unfused"), ("grouped", "grouped forward+backward"),
    ]:  # fmt: skip
        assert names[(section, name)] == 2, (section, name)  # one per quick size
    assert all(m["median_s"] > 0 for m in report["measurements"])
    assert {m["section"] for m in report["measurements"]} <= set(bench.SECTIONS)
    goals = {g["goal"].split(" ")[0] for g in report["goals"]}
    assert goals == {"segment_sum_csr", "segment_sum_index", "fused"}  # no model-level goal
    assert "tuning sweep skipped" in printed  # the sweep calls Triton directly: CUDA only
