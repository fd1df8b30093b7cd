"""Session-wide fixtures shared by several test files.

``smoke_data``: a tiny MMFF dataset built once per session with ``gmd26 build --preset smoke``
(every task, every split). ``smoke_matrix``: a tiny benchmark matrix trained on it with the
smoke preset cut to one epoch (one task; DeepSet-MoE and SchNet train, PaiNN is given an
invalid model config so that its cell fails), shared by the matrix and report tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Small models on a 2-core box run many times faster on one intra-op thread per worker
# (pytest-xdist already runs one worker per core).
torch.set_num_threads(1)

SMOKE_MATRIX_TASKS = ("duplication",)
SMOKE_MATRIX_MODELS = ("deepset_moe", "schnet", "painn")
SMOKE_MATRIX_BROKEN = {"painn": {"no_such_hyperparameter": 1}}
"""An invalid model configuration: the PaiNN cell must fail and the matrix go on."""


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from benchmark.cli import main

    out = tmp_path_factory.mktemp("smoke_data")
    assert main(["build", "--preset", "smoke", "--out", str(out)]) == 0
    return out


def smoke_matrix_plan(out: Path, data: Path):
    """The :class:`benchmark.matrix.MatrixPlan` of the ``smoke_matrix`` fixture."""
    from benchmark.matrix import MatrixPlan

    return MatrixPlan(
        out_dir=out,
        data_dir=data,
        tasks=SMOKE_MATRIX_TASKS,
        models=SMOKE_MATRIX_MODELS,
        seeds=1,
        preset="smoke",
        cell_minutes=None,
        preset_overrides={"max_steps": 8},
        model_configs=SMOKE_MATRIX_BROKEN,
    )


@pytest.fixture(scope="session")
def smoke_matrix(smoke_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from benchmark.matrix import run_matrix

    out = tmp_path_factory.mktemp("smoke_matrix")
    run_matrix(smoke_matrix_plan(out, smoke_data), command=["pytest", "smoke_matrix"])
    return out
