"""Session-wide fixtures shared by several test files.

``smoke_data``: a tiny MMFF dataset built once per session with ``gmd26 build --preset smoke``
(every task, every split). ``smoke_matrix``: a tiny benchmark matrix trained on it with the
smoke preset cut to one epoch (one task; DeepSet-MoE and SchNet train, PaiNN is given an
invalid model config so that its cell fails), shared by the matrix and report tests.
``dask_client``: a real ``dask.distributed`` cluster (two worker processes) for the tests of
the executors, the matrix and the build on a cluster.
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


@pytest.fixture(scope="session")
def dask_client():
    """A client of a real ``dask.distributed.LocalCluster``: two worker processes of one thread
    each, the scheduler in this process. ``allowed_failures=0``: a task whose worker dies fails
    at once with ``KilledWorker`` (dask's default runs it again, up to 3 times), so a test sees
    what a lost unit leaves behind."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        scheduler_kwargs={"allowed_failures": 0},
    )
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()
