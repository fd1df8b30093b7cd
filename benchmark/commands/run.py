"""``gmd26 run``: the benchmark matrix (models x tasks x seeds) through the one trainer, then
the report.

Each cell trains in ``OUT/<task>/<model>/seed<k>/``. Running the same command again resumes:
finished cells (ok or failed) are skipped. The defaults are the README's main job — DeepSet-MoE
and two fast baselines on the four tasks, one seed, the quick preset capped per cell — sized
for about 30 minutes on 2 CPU cores (see ``benchmark.matrix``).

Example::

    gmd26 run --out runs/gmd26
    gmd26 run --models deepset_moe schnet --tasks duplication --preset smoke --seeds 2
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmark.commands.report import add_report_arguments, options_from_args
from benchmark.dataset_dir import DEFAULT_DATA_DIR
from benchmark.matrix import (
    DEFAULT_CELL_MINUTES,
    DEFAULT_MODELS,
    DEFAULT_PRESET,
    DEFAULT_SEEDS,
    DEFAULT_TASKS,
    MatrixPlan,
    run_matrix,
)
from benchmark.presets import PRESETS
from benchmark.report import REPORT_MD, build_report
from benchmark.tasks import TASK_NAMES

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
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS))
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help="seeds 0..N-1")
    parser.add_argument("--data", default=str(DEFAULT_DATA_DIR),
                        help="built data directory (default: the shipped data, %(default)s)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="run directory")
    parser.add_argument(
        "--cell-minutes", type=float, default=None,
        help=f"wall-clock cap per cell (default {DEFAULT_CELL_MINUTES} for the quick preset, "
        "the preset's own budget otherwise)",
    )
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
    cell_minutes = args.cell_minutes
    if cell_minutes is None and args.preset == DEFAULT_PRESET:
        cell_minutes = DEFAULT_CELL_MINUTES
    plan = MatrixPlan(
        out_dir=args.out,
        data_dir=args.data,
        tasks=tuple(args.tasks),
        models=tuple(args.models),
        seeds=args.seeds,
        preset=args.preset,
        cell_minutes=cell_minutes,
        preset_overrides=args.preset_overrides,
        model_configs=args.model_configs,
        device=args.device,
        retry_failed=args.retry_failed,
    )
    summary = run_matrix(plan)
    failed = [c for c in summary["cells"] if c["status"] != "ok"]
    for cell in failed:
        print(f"failed: {cell['task']}/{cell['model']}/seed{cell['seed']}: {cell['reason']}",
              file=sys.stderr)
    if not args.no_report:
        build_report(plan.out_dir, options_from_args(args, args.data))
        print(f"report: {plan.out_dir / REPORT_MD}")
    return 0 if len(failed) < len(summary["cells"]) else 1
