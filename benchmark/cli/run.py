"""``gmd26 run``: the benchmark matrix (models x tasks x seeds) through the one trainer, then
the report.

Each cell trains in ``OUT/<task>/<model>/seed<k>/``. Running the same command again resumes:
finished cells (ok or failed) are skipped, unfinished ones continue from their last round.
Budgets are optimiser steps (the preset's), so the same command gives the same metrics on any
machine load. The defaults are the README's main job — DeepSet-MoE and two fast baselines on
the four tasks, one seed, the quick preset, two cells at a time — sized for about 30 minutes
on 2 CPU cores (see ``benchmark.matrix``).

Example::

    gmd26 run --out runs/gmd26
    gmd26 run --models deepset_moe schnet --tasks duplication --preset smoke --seeds 2
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmark.cli.report import add_report_arguments, options_from_args
from benchmark.dataset.layout import DEFAULT_DATA_DIR
from benchmark.dataset.tasks import TASK_NAMES
from benchmark.matrix import (
    DEFAULT_MODELS,
    DEFAULT_PRESET,
    DEFAULT_SEEDS,
    DEFAULT_TASKS,
    DEFAULT_WORKERS,
    MatrixPlan,
    PlanMismatchError,
    run_matrix,
)
from benchmark.report.build import REPORT_MD, build_report
from benchmark.training.presets import TRAINING_PRESETS

DEFAULT_OUT = "runs/gmd26"


def _json_object(text: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


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
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help="seeds 0..N-1")
    parser.add_argument("--data", default=str(DEFAULT_DATA_DIR),
                        help="built data directory (default: the shipped data, %(default)s)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="run directory")
    parser.add_argument(
        "--cell-minutes", type=float, default=None,
        help="wall-clock safety cap per cell (default: the preset's); budgets are steps",
    )
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help="cells trained at once (default %(default)s)")
    parser.add_argument("--threads-per-cell", type=int, default=1,
                        help="torch threads per cell (part of the protocol; default 1)")
    parser.add_argument("--preset-overrides", type=_json_object, default={},
                        help='preset fields to change, JSON (e.g. \'{"lr": 0.001}\')')
    parser.add_argument("--model-configs", type=_json_object, default={},
                        help='per-model hyperparameters, JSON {model: {name: value}}')
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--retry-failed", action="store_true",
                        help="train failed cells again (finished ok cells are always kept)")
    parser.add_argument("--no-report", action="store_true", help="only run the matrix")
    add_report_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
        retry_failed=args.retry_failed,
        workers=args.workers,
        threads_per_cell=args.threads_per_cell,
    )
    try:
        summary = run_matrix(plan)
    except PlanMismatchError as error:
        print(f"gmd26 run: {error}", file=sys.stderr)
        return 2
    failed = [c for c in summary["cells"] if c["status"] != "ok"]
    for cell in failed:
        print(f"failed: {cell['task']}/{cell['model']}/seed{cell['seed']}: {cell['reason']}",
              file=sys.stderr)
    if not args.no_report:
        build_report(plan.out_dir, options_from_args(args, args.data))
        print(f"report: {plan.out_dir / REPORT_MD}")
    return 0 if len(failed) < len(summary["cells"]) else 1
