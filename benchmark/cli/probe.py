"""``gmd26 probe``: score a matrix run's cells on the compositional probe.

Cells trained since the probe exists are scored at the end of training; this command scores
the cells of older runs (and rescores with ``--overwrite``). Each cell gets ``probe.json``
(:mod:`benchmark.evaluation.probe`); ``gmd26 report`` shows them. A cell is scored from its
``best.pt``, so cells whose weights are not in this copy (baseline checkpoints are not
committed) keep the ``probe.json`` they have, or are listed as not scored.

Example::

    gmd26 build                     # adds the probe's trajectories to data/gmd26 (resumes)
    gmd26 probe results/protocol
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmark.dataset.layout import DEFAULT_DATA_DIR
from benchmark.dataset.probe import read_probe_manifest
from benchmark.errors import UsageError
from benchmark.evaluation.probe import probe_run
from benchmark.preflight import positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="score a run's cells on the compositional probe (molecules no task lists)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", help="a matrix run folder (gmd26 run --out)")
    parser.add_argument("--data", default=str(DEFAULT_DATA_DIR),
                        help="dataset the cells were trained on (default: the shipped data/gmd26)")
    parser.add_argument("--overwrite", action="store_true",
                        help="rescore cells that already have probe.json")
    parser.add_argument("--device", default="cpu", help="device of the evaluation (default: cpu)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads (default: torch's; 1 on a machine busy with other "
                        "jobs avoids oversubscription)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not Path(args.run_dir).is_dir():
        raise UsageError(f"{args.run_dir}: no such run folder (the --out of gmd26 run)")
    if read_probe_manifest(args.data) is None:
        raise UsageError(
            f"{args.data} has no probe (manifests/probe.json); run `gmd26 build --out {args.data}` "
            "with the dataset's own settings to add it"
        )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    counts = probe_run(args.run_dir, args.data, overwrite=args.overwrite, device=args.device)
    print(", ".join(f"{name.replace('_', ' ')}: {count}" for name, count in counts.items()))
    return 0
