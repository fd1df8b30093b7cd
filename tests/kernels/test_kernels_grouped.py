"""Grouped linear layers and MLPs (the experts' per-group products): reference semantics,
autograd of the references, input validation, every Triton kernel against the reference under
Triton's CPU interpreter (through the ``python -m kernels.check`` command line, whose table,
JSON report and exit status are checked too), and the failure path of that command.

As in the other kernel test files, the interpreter runs in a subprocess, because
``TRITON_INTERPRET`` must be set before Triton defines a kernel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import check
from kernels.grouped import (
    grouped_linear,
    grouped_linear_reference,
    grouped_mlp,
    grouped_mlp_reference,
)

GROUPED_CASES = list(check.CASES["grouped"])


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``TRITON_INTERPRET=1 python -m kernels.check --family grouped --json PATH``."""
    path = tmp_path_factory.mktemp("check") / "check.json"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("DEEPSET_MOE_KERNELS", None)
    command = [sys.executable, "-m", "kernels.check", "--family", "grouped", "--device", "cpu"]
    done = subprocess.run(
        [*command, "--json", str(path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert path.exists(), done.stderr
    return {
        "returncode": done.returncode,
        "stdout": done.stdout,
        "report": json.loads(path.read_text()),
    }


@pytest.mark.parametrize("case", GROUPED_CASES)
def test_triton_kernel_matches_reference_in_interpreter(interpreted: dict, case: str) -> None:
    results = {r["case"]: r for r in interpreted["report"]["results"]}
    result = results[case]
    assert "crash" not in result, result.get("crash")
    assert result["dtype"] == ("float64" if case.endswith("_f64") else "float32")
    if not case.startswith("linear_no_rows"):
        assert any(q.startswith("double_backward") for q in result["errors"])
    assert result["passed"], result["errors"]


def test_check_command_prints_a_table_and_writes_its_environment(interpreted: dict) -> None:
    report = interpreted["report"]
    assert interpreted["returncode"] == 0
    assert report["backend"] == "triton-interpreter"
    assert report["failed"] == 0 and report["passed"] == len(GROUPED_CASES)
    assert {"device", "device_name", "torch", "triton", "cuda"} <= set(report["environment"])
    lines = interpreted["stdout"].splitlines()
    assert lines[0].startswith("kernels.check: backend triton-interpreter on cpu")
    assert sum(line.startswith("ok   grouped") for line in lines) == len(GROUPED_CASES)
    assert f"{len(GROUPED_CASES)} passed, 0 failed" in interpreted["stdout"]


def test_check_command_fails_when_a_kernel_cannot_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In this process Triton is not interpreted, so forcing it on CPU tensors raises: every
    float case must be reported as a crash and the exit status must be 1."""
    from kernels.triton_common import INTERPRETED

    if INTERPRETED:
        pytest.skip("TRITON_INTERPRET is set for the whole test session")
    path = tmp_path / "check.json"
    status = check.main(
        ["--family", "grouped", "--device", "cpu", "--jobs", "1", "--json", str(path)]
    )
    report = json.loads(path.read_text())
    assert status == 1
    assert report["failed"] == len(GROUPED_CASES)
    assert all("TRITON_INTERPRET" in r["crash"] for r in report["results"])
    assert f"0 passed, {len(GROUPED_CASES)} failed" in capsys.readouterr().out


def _groups(counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Offsets [G+1] and the group of each row [M]."""
    offsets = torch.cumsum(torch.tensor([0, *counts]), 0)
    return offsets, torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))


def test_grouped_linear_is_each_row_times_its_group_weight() -> None:
    gen = torch.Generator().manual_seed(0)
    offsets, group = _groups([3, 0, 5, 1])
    x = torch.randn(9, 4, generator=gen, dtype=torch.float64)
    weight = torch.randn(4, 4, 6, generator=gen, dtype=torch.float64)
    bias = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    expected = torch.einsum("mi,mio->mo", x, weight[group]) + bias[group]
    torch.testing.assert_close(grouped_linear(x, weight, bias, offsets), expected)
    torch.testing.assert_close(grouped_linear_reference(x, weight, bias, offsets), expected)


def test_grouped_mlp_is_two_grouped_linear_layers_with_silu() -> None:
    gen = torch.Generator().manual_seed(1)
    offsets, _ = _groups([2, 4, 0, 3])
    x = torch.randn(9, 5, generator=gen, dtype=torch.float64)
    w1, b1 = torch.randn(4, 5, 7, generator=gen), torch.randn(4, 7, generator=gen)
    w2, b2 = torch.randn(4, 7, 3, generator=gen), torch.randn(4, 3, generator=gen)
    params = [p.double() for p in (w1, b1, w2, b2)]
    hidden = torch.nn.functional.silu(grouped_linear(x, params[0], params[1], offsets))
    expected = grouped_linear(hidden, params[2], params[3], offsets)
    torch.testing.assert_close(grouped_mlp(x, *params, offsets), expected)
    assert grouped_mlp_reference(x[:0], *params, torch.zeros(5, dtype=torch.long)).shape == (0, 3)


def test_grouped_mlp_gradcheck_and_gradgradcheck_float64() -> None:
    gen = torch.Generator().manual_seed(2)
    offsets, _ = _groups([2, 0, 3])
    inputs = [
        torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_()
        for shape in ((5, 3), (3, 3, 4), (3, 4), (3, 4, 2), (3, 2))
    ]

    def op(*tensors: torch.Tensor) -> torch.Tensor:
        return grouped_mlp(*tensors, offsets)

    assert torch.autograd.gradcheck(op, inputs)
    assert torch.autograd.gradgradcheck(op, inputs)


@pytest.mark.parametrize(
    ("offsets", "message"),
    [
        (torch.tensor([1, 2, 4]), "from 0 to M=4"),
        (torch.tensor([0, 2, 3]), "from 0 to M=4"),
        (torch.tensor([0, 3, 1, 4]), None),
        (torch.tensor([0, 4]), r"G\+1 = 3 entries"),
        (torch.tensor([0.0, 2.0, 4.0]), "int32/int64"),
    ],
)
def test_bad_offsets_are_named(offsets: torch.Tensor, message: str | None) -> None:
    weight = torch.zeros(offsets.numel() - 1 if message is None else 2, 3, 5)
    bias = torch.zeros(weight.shape[0], 5)
    with pytest.raises(ValueError, match=message or "non-decreasing"):
        grouped_linear(torch.zeros(4, 3), weight, bias, offsets)


def test_bad_parameter_shapes_are_named() -> None:
    offsets = torch.tensor([0, 1, 2])
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"bias must be \[G, O\] = \(2, 5\)"):
        grouped_linear(x, torch.zeros(2, 3, 5), torch.zeros(5), offsets)
    with pytest.raises(ValueError, match=r"x must be \[M, I\] and weight \[G, I, O\]"):
        grouped_linear(x, torch.zeros(2, 4, 5), torch.zeros(2, 5), offsets)
    w1, b1 = torch.zeros(2, 3, 4), torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"w2 must be \[G, H, O\] with \(G, H\) = \(2, 4\)"):
        grouped_mlp(x, w1, b1, torch.zeros(2, 5, 1), torch.zeros(2, 1), offsets)
    with pytest.raises(ValueError, match=r"b2 must be \[G, O\] = \(2, 1\)"):
        grouped_mlp(x, w1, b1, torch.zeros(2, 4, 1), torch.zeros(2, 2), offsets)
