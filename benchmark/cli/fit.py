"""``gmd26 fit``: train any registered model on your own labelled files from a YAML config.

Example::

    gmd26 fit my_fit.yaml
    gmd26 fit my_fit.yaml --set training.max_steps=2000 --set model.latent_dim=64
    gmd26 fit runs/my_fit/fit_config.yaml --out runs/my_fit_repeat   # repeat a run
    torchrun --nproc_per_node 2 -m benchmark.cli fit my_fit.yaml       # data parallel

The config names the model (and its settings), the data files, the label keys, E0, fragment
labels and the training preset; see ``docs/own_data.md``. Everything resolved (keys found,
elements, vocabulary, E0, the full model and preset settings) is written to
``<out>/fit_config.yaml`` beside the checkpoint. A config or data file that cannot be used is
refused before anything is trained (exit status 2, one line saying why: e.g. a missing label
key, with the keys the file has).
"""

from __future__ import annotations

import argparse
import os

import torch.distributed as dist

from benchmark.training.fit import METRICS_FILE, fit, format_result


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fit",
        help="train a model on your own files (extended XYZ, ASE db) from a YAML config",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="YAML config (docs/own_data.md)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a config value (dotted key, YAML value); repeatable",
    )
    parser.add_argument("--out", default=None, help="output folder (overrides the config's out)")
    parser.add_argument("--device", default=None, help="torch device (overrides the config's)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="read the data, resolve and write <out>/fit_config.yaml; train nothing",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(
        func=run, interrupt_hint="rerun with --resume to continue from <out>/last.pt"
    )


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={args.device}")
    try:
        result = fit(
            args.config,
            overrides=overrides,
            out=args.out,
            resume=args.resume,
            dry_run=args.dry_run,
            progress=not args.no_progress,
        )
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if result["status"] == "dry run":
        for note in result["config"]["resolved"]["notes"]:
            print(f"note: {note}")
        print(f"resolved config: {result['out_dir']}/fit_config.yaml (nothing trained)")
        return 0
    print(format_result(result))
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"checkpoint: {result['checkpoint']}")
    print(f"config: {result['config']}")
    print(f"results: {result['out_dir']}/{METRICS_FILE}")
    return 0
