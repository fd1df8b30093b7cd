"""``gmd26 report DIR``: the GMD-26 report of a matrix run (``gmd26 run``).

Writes ``DIR/report.md`` (Markdown tables, readable on GitHub), ``DIR/report.json`` (every
number) and ``DIR/figures/*.png``. Model-based analyses (MD stability, DeepSet-MoE routing and
attributions) and the SOAP distances are cached in the run directory, so a second report is
fast.

Example::

    gmd26 report runs/gmd26 --stability-steps 1000 --stability-molecules 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.errors import UsageError
from benchmark.evaluation.stability import StabilitySettings
from benchmark.preflight import check_data_dir, check_output_dir, positive_int
from benchmark.report.build import REPORT_MD, build_report
from benchmark.report.sections import ReportOptions


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``gmd26 report`` and ``gmd26 run``."""
    group = parser.add_argument_group("report")
    group.add_argument("--no-extrapolation", action="store_true",
                       help="skip the SOAP distance-from-training-set analysis")
    group.add_argument("--no-stability", action="store_true", help="skip the MD stability runs")
    group.add_argument("--stability-steps", type=positive_int, default=StabilitySettings.steps,
                       help="MD steps per stability run (default %(default)s)")
    group.add_argument("--stability-timestep", type=float, default=StabilitySettings.timestep_fs,
                       help="MD time step in fs (default %(default)s)")
    group.add_argument("--stability-temperature", type=float,
                       default=StabilitySettings.temperature_k,
                       help="MD temperature in K (default %(default)s)")
    group.add_argument("--stability-molecules", type=positive_int,
                       default=ReportOptions.stability_molecules,
                       help="OOD molecules simulated per model and task (default %(default)s)")
    group.add_argument("--report-seed", type=int, default=0,
                       help="seed of the report's subsamples and MD runs")


def options_from_args(args: argparse.Namespace, data_dir: str | None) -> ReportOptions:
    return ReportOptions(
        data_dir=None if data_dir is None else Path(data_dir),
        extrapolation=not args.no_extrapolation,
        stability=not args.no_stability,
        stability_settings=StabilitySettings(
            steps=args.stability_steps,
            timestep_fs=args.stability_timestep,
            temperature_k=args.stability_temperature,
        ),
        stability_molecules=args.stability_molecules,
        seed=args.report_seed,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write report.md, report.json and figures for a matrix run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", help="directory written by gmd26 run")
    parser.add_argument("--data", default=None,
                        help="data directory (default: the one recorded in run.json)")
    add_report_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        what = "is a file" if run_dir.exists() else "no such folder"
        raise UsageError(f"{run_dir}: {what}; give the folder written by `gmd26 run --out`")
    if args.data is not None:
        check_data_dir(args.data)
    check_output_dir(run_dir, option="run folder")
    build_report(run_dir, options_from_args(args, args.data))
    print(f"report: {Path(args.run_dir) / REPORT_MD}")
    return 0
