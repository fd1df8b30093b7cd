"""Segment sums: the reference definitions, the double-differentiable autograd wrappers
(gradcheck and gradgradcheck in float64), backend selection, input validation, and every
Triton kernel against the reference under Triton's CPU interpreter.

The interpreter runs in a subprocess (``kernels.check.run_interpreted``): ``TRITON_INTERPRET``
must be set before Triton defines a kernel, so it cannot be switched on inside this process
without leaking into every other test. One subprocess per file runs all cases; each case is
reported as its own test below.
"""

from __future__ import annotations

import pytest
import torch

from kernels import check
from kernels.backend import ENV_VAR, forced_mode, kernel_mode, use_triton
from kernels.segment_sum import (
    segment_broadcast_csr,
    segment_broadcast_index,
    segment_sum_csr,
    segment_sum_csr_reference,
    segment_sum_index,
    segment_sum_index_reference,
)

SEGMENT_CASES = list(check.CASES["segment_sum"])


def _ptr(lengths: list[int]) -> torch.Tensor:
    return torch.cumsum(torch.tensor([0, *lengths]), 0)


@pytest.fixture(scope="module")
def interpreted() -> dict:
    report = check.run_interpreted("segment_sum")
    return {result["case"]: result for result in report["results"]} | {"_backend": report}


@pytest.mark.parametrize("case", SEGMENT_CASES)
def test_triton_kernel_matches_reference_in_interpreter(interpreted: dict, case: str) -> None:
    assert interpreted["_backend"]["backend"] == "triton-interpreter"
    result = interpreted[case]
    assert "crash" not in result, result.get("crash")
    assert set(result["errors"]) == {"forward", "backward", "double_backward"}
    assert result["passed"], result["errors"]


def test_csr_reference_is_the_loop_definition() -> None:
    gen = torch.Generator().manual_seed(0)
    lengths = [3, 0, 5, 1, 0]
    values = torch.randn(sum(lengths), 2, 3, generator=gen, dtype=torch.float64)
    ptr = _ptr(lengths)
    expected = torch.stack([values[ptr[s] : ptr[s + 1]].sum(0) for s in range(len(lengths))])
    torch.testing.assert_close(segment_sum_csr_reference(values, ptr), expected)
    torch.testing.assert_close(segment_sum_csr(values, ptr), expected)


def test_index_reference_is_the_loop_definition() -> None:
    gen = torch.Generator().manual_seed(1)
    index = torch.tensor([2, 0, 2, 4, 0, 2])
    values = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    expected = torch.zeros(6, 3, dtype=torch.float64)
    for row, segment in enumerate(index.tolist()):
        expected[segment] += values[row]
    torch.testing.assert_close(segment_sum_index_reference(values, index, 6), expected)
    torch.testing.assert_close(segment_sum_index(values, index, 6), expected)
    assert segment_sum_index(values[:, 0], index, 6).shape == (6,)


def test_broadcasts_are_the_adjoints_of_the_sums() -> None:
    """<sum(x), y> == <x, broadcast(y)> for both layouts."""
    gen = torch.Generator().manual_seed(2)
    ptr = _ptr([2, 0, 3, 4])
    index = torch.tensor([3, 0, 0, 2, 3, 1, 0, 2, 2])
    x = torch.randn(9, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    left_csr = (segment_sum_csr(x, ptr) * y).sum()
    torch.testing.assert_close(left_csr, (x * segment_broadcast_csr(y, ptr, 9)).sum())
    left_index = (segment_sum_index(x, index, 4) * y).sum()
    torch.testing.assert_close(left_index, (x * segment_broadcast_index(y, index)).sum())


@pytest.mark.parametrize(
    "op",
    [
        lambda x: segment_sum_csr(x, _ptr([2, 0, 3, 1])),
        lambda x: segment_sum_index(x, torch.tensor([1, 3, 1, 0, 3, 3]), 5),
        lambda x: segment_broadcast_csr(x[:4], _ptr([2, 0, 3, 1]), 6),
        lambda x: segment_broadcast_index(x, torch.tensor([5, 0, 0, 2])),
    ],
    ids=["sum_csr", "sum_index", "broadcast_csr", "broadcast_index"],
)
def test_gradcheck_and_gradgradcheck_float64(op) -> None:
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x.requires_grad_()
    assert torch.autograd.gradcheck(op, (x,))
    assert torch.autograd.gradgradcheck(op, (x,))


def test_double_backward_matches_plain_autograd_of_a_nonlinear_use() -> None:
    """A force-like loss: E = sum_s |segment_sum(tanh(x))|^2, gradient then its gradient."""
    gen = torch.Generator().manual_seed(4)
    ptr = _ptr([3, 1, 0, 4])
    x = torch.randn(8, 2, generator=gen, dtype=torch.float64, requires_grad=True)

    def second_order(op) -> torch.Tensor:
        energy = (op(torch.tanh(x)) ** 2).sum()
        (grad,) = torch.autograd.grad(energy, x, create_graph=True)
        (second,) = torch.autograd.grad((grad**2).sum(), x)
        return second

    expected = second_order(lambda v: segment_sum_csr_reference(v, ptr))
    torch.testing.assert_close(second_order(lambda v: segment_sum_csr(v, ptr)), expected)


def test_backend_selection_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.zeros(1)
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert kernel_mode() == "auto" and not use_triton(cpu)
    with forced_mode("reference"):
        assert not use_triton(cpu)
    monkeypatch.setenv(ENV_VAR, "fast")
    with pytest.raises(ValueError, match=ENV_VAR):
        kernel_mode()


def test_forced_triton_on_cpu_needs_the_interpreter() -> None:
    from kernels.triton_common import INTERPRETED

    with forced_mode("triton"):
        if INTERPRETED:
            assert use_triton(torch.zeros(1))
        else:
            with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
                segment_sum_csr(torch.ones(2, 1), _ptr([2]))


@pytest.mark.parametrize(
    ("ptr", "message"),
    [
        (torch.tensor([1, 2, 3]), "from 0 to N=3"),
        (torch.tensor([0, 2, 4]), "from 0 to N=3"),
        (torch.tensor([0, 2, 1, 3]), "non-decreasing"),
        (torch.tensor([0.0, 3.0]), "int32/int64"),
    ],
)
def test_bad_ptr_is_named(ptr: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        segment_sum_csr(torch.ones(3, 2), ptr)


@pytest.mark.parametrize(
    ("index", "segments", "message"),
    [
        (torch.tensor([0, 1, 5]), 3, r"index values 0 \.\. 5 fall outside \[0, 3\)"),
        (torch.tensor([0, -1, 2]), 3, "fall outside"),
        (torch.tensor([0, 1]), 3, "index has 2 entries but values has 3 rows"),
    ],
)
def test_bad_index_is_named(index: torch.Tensor, segments: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        segment_sum_index(torch.ones(3, 2), index, segments)
