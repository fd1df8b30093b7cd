"""Helpers shared by the Triton kernel modules: interpreter flag, accumulator types, block sizes.

Importing this module imports Triton; :mod:`kernels.backend` imports it only when a Triton
kernel is about to run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

#: Whether kernels defined from now on run in Triton's CPU interpreter (``TRITON_INTERPRET=1``
#: was set before import). Read once: Triton decides this when a kernel is defined.
INTERPRETED: bool = bool(triton.knobs.runtime.interpret)

_ACCUMULATOR = {
    torch.float16: tl.float32,
    torch.bfloat16: tl.float32,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}


def accumulator_type(dtype: torch.dtype) -> tl.dtype:
    """Triton type to accumulate sums of ``dtype`` in: float32, or float64 for float64 data."""
    if dtype not in _ACCUMULATOR:
        raise TypeError(f"Triton kernels take float16/bfloat16/float32/float64, got {dtype}")
    return _ACCUMULATOR[dtype]


def feature_block(num_features: int, cap: int = 128) -> int:
    """Power-of-two block over the feature axis: covers ``num_features`` up to ``cap``."""
    return min(max(triton.next_power_of_2(max(num_features, 1)), 4), cap)


def row_block(feature_block_size: int, elements: int = 4096, cap: int = 256) -> int:
    """Power-of-two block over rows so that a tile holds at most about ``elements`` values
    (at least 16 rows, at most ``cap``, itself a power of two)."""
    rows = max(elements // feature_block_size, 1)
    return min(max(1 << (rows.bit_length() - 1), 16), cap)
