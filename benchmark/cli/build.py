"""``gmd26 build``: generate (or resume) the labelled frames and manifests of the four tasks."""

from __future__ import annotations

import argparse

from benchmark.dataset.build import build_dataset
from benchmark.dataset.layout import DEFAULT_DATA_DIR
from benchmark.dataset.references import REFERENCE_NAMES
from benchmark.dataset.sampling import GENERATION_PRESETS
from benchmark.executors import scheduler_client
from benchmark.preflight import (
    add_scheduler_argument,
    check_output_dir,
    check_workers_or_scheduler,
    positive_int,
)

MAX_LISTED_FAILURES = 20


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "build",
        help="generate the GMD-26 dataset (resumable)",
        description="Sample conformations by Langevin MD, label them with a reference method and "
        "write frames and task manifests. The standard build (GFN2-xTB, 21,600 frames) takes "
        "about 40 minutes on 2 cores; --preset smoke --reference mmff takes seconds. Re-running "
        "the same command resumes an interrupted build (Ctrl-C or SIGTERM stop the workers and "
        "leave build.json with status 'interrupted'); stored trajectory files are checked "
        "first and damaged ones computed again. Exit status 1 if any frame failed or a "
        "trajectory is missing, 2 if the arguments or the output folder are refused.",
    )
    parser.add_argument("--preset", choices=tuple(GENERATION_PRESETS), default="standard",
                        help="molecule set and sampling settings (default: %(default)s, the "
                        "shipped dataset: about 40 min on 2 cores)")
    parser.add_argument("--reference", choices=REFERENCE_NAMES, default="xtb",
                        help="reference method labelling the frames (default: xtb, GFN2-xTB)")
    parser.add_argument("--md-calculator", choices=("xtb", "mmff"), default=None,
                        help="method driving the MD (default: the preset's)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="worker processes (default: available cores; 1 = in-process; "
                        "not with --scheduler)")
    add_scheduler_argument(parser, "trajectories")
    parser.add_argument("--out", default=str(DEFAULT_DATA_DIR),
                        help="output folder (default: %(default)s, the shipped dataset's)")
    parser.add_argument("--seed", type=int, default=0, help="build seed (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run, interrupt_hint="run the same command again to resume")


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.out)
    check_workers_or_scheduler(args.workers, args.scheduler)
    with scheduler_client(args.scheduler) as client:  # unreachable: UsageError, exit 2
        summary = build_dataset(
            args.out,
            args.preset,
            args.reference,
            seed=args.seed,
            workers=args.workers,
            executor=client,
            md_calculator=args.md_calculator,
            progress=not args.no_progress,
        )
    print(
        f"{summary.out}: {summary.frames} frames in {summary.trajectories} trajectories "
        f"({summary.computed_trajectories} computed now, {summary.wall_time_s:.1f} s)"
    )
    for damaged in summary.damaged:
        print(f"recomputed damaged trajectory {damaged}")
    for record in summary.failures[:MAX_LISTED_FAILURES]:
        print(
            f"FAILED {record['molecule_id']} ({record['smiles']}) trajectory "
            f"{record['trajectory']} step {record['step']} [{record['stage']}]: "
            f"{record['error']}"
        )
    if len(summary.failures) > MAX_LISTED_FAILURES:
        print(f"... {len(summary.failures) - MAX_LISTED_FAILURES} more in failures.json")
    if summary.missing:
        print(f"missing trajectories: {', '.join(summary.missing)}")
    return 0 if summary.ok else 1
