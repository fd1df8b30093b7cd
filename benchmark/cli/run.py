"""``gmd26 run``: the benchmark matrix (models x tasks x seeds) through the one trainer, then
the report.

Each cell trains in ``OUT/<task>/<model>/seed<k>/``. Running the same command again resumes:
finished cells (ok or failed) are skipped, unfinished ones continue from their last round.
Budgets are optimiser steps (the preset's), so the same command gives the same metrics on any
machine load. The defaults are the README's main job — DeepSet-MoE and two fast baselines on
the four tasks, one seed, the quick preset, two cells at a time — about 15 minutes on 2
idle CPU cores with the report (13.8 min measured; see ``benchmark.matrix``).

Cells run in --workers local processes, or on a dask.distributed cluster with --scheduler
(an address such as tcp://host:8786 or a scheduler file; --workers is then refused: the
cluster's workers decide). --devices cuda:0,cuda:1 places the cells: each cell in flight gets
the least-busy device of the list, so with --workers at most the number of devices every
running cell has a GPU of its own. Results, run.json and the report are the same on every
executor; see docs/cluster.md.

Example::

    gmd26 run --out runs/gmd26
    gmd26 run --models deepset_moe schnet --tasks duplication --preset smoke --seeds 2
    gmd26 run --scheduler tcp://head-node:8786 --devices cuda:0,cuda:1 --preset protocol

Everything is checked before the first cell trains: model names (and that their packages are
installed), model settings, preset overrides, devices, the data folder, the output folder,
that the --scheduler answers and, for an existing run folder, that the plan has the same
protocol. Ctrl-C or SIGTERM stop every local worker at once (on a cluster, cells not yet
started are cancelled); finished cells are kept and the same command continues the rest.

Exit status 0 when every cell finished ok, 1 when any cell failed (listed on stderr), 2 when
the input was refused (nothing trained), 130 or 143 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmark.cli.report import add_report_arguments, options_from_args
from benchmark.cli.train import check_device
from benchmark.dataset.layout import DEFAULT_DATA_DIR
from benchmark.dataset.tasks import TASK_NAMES
from benchmark.errors import UsageError
from benchmark.executors import scheduler_client
from benchmark.matrix import (
    DEFAULT_MODELS,
    DEFAULT_PRESET,
    DEFAULT_SEEDS,
    DEFAULT_TASKS,
    DEFAULT_WORKERS,
    MatrixPlan,
    device_kind,
    run_matrix,
)
from benchmark.preflight import (
    add_scheduler_argument,
    check_data_dir,
    check_model_settings,
    check_models,
    check_output_dir,
    check_preset,
    check_workers_or_scheduler,
    positive_float,
    positive_int,
)
from benchmark.report.build import REPORT_MD, build_report
from benchmark.training.presets import TRAINING_PRESETS

DEFAULT_OUT = "runs/gmd26"


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _device_list(text: str) -> tuple[str, ...]:
    """``argparse`` type of ``--devices``: comma-separated device names."""
    devices = tuple(name.strip() for name in text.split(",") if name.strip())
    if not devices:
        raise argparse.ArgumentTypeError(f"expected devices such as cuda:0,cuda:1, got {text!r}")
    return devices


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="train every model on every task (resumable) and write the report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), choices=TASK_NAMES)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        help="deepset_moe and/or baseline names (default %(default)s)")
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(TRAINING_PRESETS),
                        help="training preset (default %(default)s)")
    parser.add_argument("--seeds", type=positive_int, default=DEFAULT_SEEDS,
                        help="seeds 0..N-1 (default %(default)s)")
    parser.add_argument("--data", default=str(DEFAULT_DATA_DIR),
                        help="built data directory (default: the shipped data, %(default)s)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="run folder (default %(default)s)")
    parser.add_argument(
        "--cell-minutes", type=positive_float, default=None,
        help="wall-clock safety cap per cell (default: the preset's); budgets are steps",
    )
    parser.add_argument("--workers", type=positive_int, default=None,
                        help=f"cells trained at once, each in its own process (default "
                        f"{DEFAULT_WORKERS}; not with --scheduler)")
    add_scheduler_argument(parser, "cells")
    parser.add_argument("--threads-per-cell", type=positive_int, default=1,
                        help="torch threads per cell (part of the protocol; default 1)")
    parser.add_argument("--preset-overrides", type=_json_object, default={},
                        help='preset fields to change, JSON (e.g. \'{"lr": 0.001}\')')
    parser.add_argument("--model-configs", type=_json_object, default={},
                        help='per-model hyperparameters, JSON {model: {name: value}}')
    parser.add_argument("--device", default=None, choices=("cpu", "cuda"),
                        help="cpu or cuda (part of the protocol; default: the kind of --devices, "
                        "else cpu)")
    parser.add_argument("--devices", type=_device_list, default=(), metavar="LIST",
                        help="devices the cells are placed on, e.g. cuda:0,cuda:1: each cell in "
                        "flight gets the least-busy one (default: every cell on --device)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="train failed cells again (finished ok cells are always kept)")
    parser.add_argument("--no-report", action="store_true", help="only run the matrix")
    add_report_arguments(parser)
    parser.set_defaults(
        func=run, interrupt_hint="finished cells are kept; run the same command to continue"
    )


def check_arguments(args: argparse.Namespace) -> None:
    """Everything ``gmd26 run`` can check before the first cell (raises ``UsageError``)."""
    check_models(args.models, option="--models")
    unknown = sorted(set(args.model_configs) - set(args.models))
    if unknown:
        raise UsageError(
            f"--model-configs: {unknown} not among --models {args.models}; fix the names"
        )
    for model in args.models:
        check_model_settings(model, args.model_configs.get(model), option="--model-configs")
    overrides = dict(args.preset_overrides)
    if args.cell_minutes is not None:
        overrides.setdefault("max_minutes", args.cell_minutes)
    check_preset(args.preset, overrides)
    check_workers_or_scheduler(args.workers, args.scheduler)
    args.device = resolve_device(args.device, args.devices)
    if args.scheduler is None:  # on a cluster, the workers' devices count, not this machine's
        for device in args.devices or (args.device,):
            check_device(device, option="--devices" if args.devices else "--device")
    check_data_dir(args.data, args.tasks)
    check_output_dir(args.out)


def resolve_device(device: str | None, devices: tuple[str, ...]) -> str:
    """The device kind of the run: ``--device``, else the kind of ``--devices``, else cpu.

    Raises:
        UsageError: ``--devices`` mixes kinds or is not of the kind ``--device``.
    """
    kinds = sorted({device_kind(name) for name in devices})
    if len(kinds) > 1 or (device is not None and kinds and kinds != [device]):
        given = f" and --device {device}" if device is not None and len(kinds) == 1 else ""
        raise UsageError(
            f"--devices {','.join(devices)}{given}: devices of one kind are needed (cpu or "
            f"cuda); list e.g. cuda:0,cuda:1"
        )
    return device or (kinds[0] if kinds else "cpu")


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    plan = MatrixPlan(
        out_dir=args.out,
        data_dir=args.data,
        tasks=tuple(args.tasks),
        models=tuple(args.models),
        seeds=args.seeds,
        preset=args.preset,
        cell_minutes=args.cell_minutes,
        preset_overrides=args.preset_overrides,
        model_configs=args.model_configs,
        device=args.device,
        devices=args.devices,
        retry_failed=args.retry_failed,
        workers=args.workers or (1 if args.scheduler else DEFAULT_WORKERS),
        threads_per_cell=args.threads_per_cell,
    )
    with scheduler_client(args.scheduler) as client:  # unreachable: UsageError, exit 2
        summary = run_matrix(plan, executor=client)  # PlanMismatchError: exit 2 as well
    failed = [c for c in summary["cells"] if c["status"] != "ok"]
    for cell in failed:
        print(f"failed: {cell['task']}/{cell['model']}/seed{cell['seed']}: {cell['reason']}",
              file=sys.stderr)
    if not args.no_report:
        build_report(plan.out_dir, options_from_args(args, args.data))
        print(f"report: {plan.out_dir / REPORT_MD}")
    if failed:
        print(f"gmd26 run: {len(failed)} of {len(summary['cells'])} cells failed "
              f"(reasons above; --retry-failed trains them again)", file=sys.stderr)
    return 1 if failed else 0
