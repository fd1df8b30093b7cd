"""Choice of kernel backend: Triton or the PyTorch reference.

Every public kernel (:mod:`kernels.segment_sum`, :mod:`kernels.routing`) asks
:func:`use_triton` with its tensor arguments before running. The rule:

* CUDA tensors run the Triton kernels when Triton is importable; everything else runs the
  PyTorch reference, which is the definition of each op.
* ``DEEPSET_MOE_KERNELS=reference`` forces the reference everywhere (debugging: the
  reference validates index values and PyTorch raises device-side asserts).
* ``DEEPSET_MOE_KERNELS=triton`` forces the Triton kernels, also on CPU tensors. CPU tensors
  need Triton's interpreter, which ``TRITON_INTERPRET=1`` switches on; Triton reads that
  variable when a kernel is *defined*, so it must be set before :mod:`kernels.triton_*` is
  first imported (in practice: in the environment of the process). This is how the tests
  exercise every kernel on CPU, in a subprocess (see :mod:`kernels.check`).
* ``DEEPSET_MOE_KERNELS=auto`` (or unset) is the default rule above.

The Triton modules are imported lazily, so this package works without Triton installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from types import ModuleType

from torch import Tensor

ENV_VAR = "DEEPSET_MOE_KERNELS"
MODES = ("auto", "reference", "triton")


def kernel_mode() -> str:
    """The backend mode from ``DEEPSET_MOE_KERNELS``: one of :data:`MODES` (default ``auto``)."""
    mode = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{ENV_VAR}={mode!r} is not one of {', '.join(MODES)}")
    return mode


@contextmanager
def forced_mode(mode: str) -> Iterator[None]:
    """Run a block with ``DEEPSET_MOE_KERNELS=mode`` (restored afterwards); for comparisons
    of the two backends in one process (:mod:`kernels.check`, :mod:`kernels.bench`)."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    previous = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = mode
    try:
        yield
    finally:
        if previous is None:
            del os.environ[ENV_VAR]
        else:
            os.environ[ENV_VAR] = previous


@cache
def triton_available() -> bool:
    """Whether the ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def triton_module(name: str) -> ModuleType:
    """Import ``kernels.<name>`` (a module of Triton kernels) on first use."""
    return importlib.import_module(f"kernels.{name}")


def use_triton(*tensors: Tensor) -> bool:
    """Whether an op on ``tensors`` should run its Triton kernel (see the module docstring).

    Raises:
        RuntimeError: if ``DEEPSET_MOE_KERNELS=triton`` but Triton cannot run these tensors
            (not installed, or CPU tensors without the interpreter).
    """
    mode = kernel_mode()
    if mode == "reference":
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if mode == "auto":
        return on_cuda and triton_available()
    if not triton_available():
        raise RuntimeError(f"{ENV_VAR}=triton but the triton package is not importable")
    if not on_cuda and not _interpreter_active():
        raise RuntimeError(
            f"{ENV_VAR}=triton with CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 "
            "in the environment before kernels.triton_* modules are imported"
        )
    return True


def _interpreter_active() -> bool:
    """Whether the Triton kernels are (or, once imported, will be) interpreted on the CPU."""
    return triton_module("triton_common").INTERPRETED
