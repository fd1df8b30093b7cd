"""``gmd26 train``: train one model on one task, evaluate ID / OOD and print the GMD-26 table.

Example::

    gmd26 train --task duplication --model deepset_moe --preset quick --out runs/x
    gmd26 train --task duplication --model schnet --data my_build --out runs/y --resume
    torchrun --nproc_per_node 2 -m benchmark.cli train --task duplication --model schnet

Arguments, the data folder (a finished ``gmd26 build``) and the output folder are checked
before training. A folder that already holds a run is refused unless ``--resume`` (continue
it; its ``last.pt`` must come from the same task, data, preset, seed and model) or
``--overwrite`` (replace it). Ctrl-C stops training and keeps ``last.pt`` (the last finished
round): rerun with ``--resume``.

Exit status 0 when training and evaluation succeeded, 1 when they failed (the reason is
printed and stored in ``metrics.json``), 2 when the input was refused (nothing written), 130
or 143 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from baselines.registry import list_models
from benchmark.dataset.tasks import TASK_NAMES
from benchmark.errors import UsageError
from benchmark.evaluation.metrics import format_id_ood_table
from benchmark.preflight import (
    check_data_dir,
    check_model_settings,
    check_models,
    check_output_dir,
    check_preset,
    positive_float,
)
from benchmark.training.experiment import DEFAULT_DATA_DIR, METRICS_FILE, default_out_dir, train
from benchmark.training.presets import TRAINING_PRESETS
from benchmark.training.trainer import LOG_FILE


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model on a task and evaluate it ID and OOD",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--task", required=True, choices=TASK_NAMES)
    parser.add_argument("--model", required=True,
                        help=f"registered model: {', '.join(list_models())}")
    parser.add_argument("--preset", default="quick", choices=sorted(TRAINING_PRESETS),
                        help="training preset (default: %(default)s)")
    parser.add_argument("--data", default=str(DEFAULT_DATA_DIR),
                        help="built data folder (default: the shipped data, %(default)s)")
    parser.add_argument(
        "--out",
        default=None,
        help="output folder (default: runs/<task>/<model>/<preset>-seed<seed>)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its last.pt")
    group.add_argument("--overwrite", action="store_true",
                       help="replace the results of a run already in --out")
    parser.add_argument(
        "--max-minutes",
        type=positive_float,
        default=None,
        help="wall-clock safety cap (default: the preset's; budgets are steps)",
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="default: %(default)s")
    parser.add_argument(
        "--model-config",
        default=None,
        help="model hyperparameters as a JSON object, or a path to a JSON file",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(
        func=run, interrupt_hint="last.pt keeps the last finished round; rerun with --resume"
    )


def check_arguments(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """Everything ``gmd26 train`` can check before training (raises ``UsageError``); returns
    the model settings of ``--model-config``."""
    check_models([args.model])
    settings = _model_settings(args.model_config)
    check_model_settings(args.model, {**settings, "seed": args.seed})
    overrides = {} if args.max_minutes is None else {"max_minutes": args.max_minutes}
    check_preset(args.preset, overrides, option="--preset")
    check_device(args.device)
    check_data_dir(args.data, [args.task])
    check_output_dir(out_dir)
    return settings


def run(args: argparse.Namespace) -> int:
    out_dir = Path(args.out or default_out_dir(args.model, args.task, args.preset, args.seed))
    model_settings = check_arguments(args, out_dir)
    try:
        result = train(
            args.model,
            args.task,
            args.preset,
            data_dir=args.data,
            out_dir=out_dir,
            seed=args.seed,
            resume=args.resume,
            overwrite=args.overwrite,
            max_minutes=args.max_minutes,
            device=args.device,
            model_settings=model_settings,
            progress=not args.no_progress,
        )
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if result["world_size"] > 1 and not _is_rank_zero():
        return 0 if result["status"] == "ok" else 1
    if result["status"] != "ok":
        print(
            f"gmd26 train: failed: {result['reason']} (details in {out_dir / LOG_FILE})",
            file=sys.stderr,
        )
        return 1
    metrics = result["metrics"]
    title = (
        f"{args.model} on {args.task} ({args.preset}, seed {args.seed}): "
        f"{result['training']['epochs']} epochs, "
        f"{result['throughput_frames_per_second']:.1f} training frames/s"
    )
    print(format_id_ood_table(metrics["id_test"], metrics["ood_test"], title))
    print(f"results: {out_dir}/{METRICS_FILE}")
    return 0


def _model_settings(text: str | None) -> dict[str, Any]:
    """``--model-config``: inline JSON object or a JSON file."""
    if text is None:
        return {}
    source = Path(text).read_text() if Path(text).is_file() else text
    try:
        settings = json.loads(source)
    except json.JSONDecodeError as error:
        raise UsageError(
            f"--model-config {text!r}: neither a JSON file nor valid JSON ({error})"
        ) from error
    if not isinstance(settings, dict):
        raise UsageError(f"--model-config {text!r}: must be a JSON object {{name: value}}")
    return settings


def check_device(device: str, option: str = "--device") -> None:
    """``cuda`` needs a CUDA device, ``cuda:N`` the N-th one of this machine."""
    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise UsageError(f"{option} {device}: no CUDA device is available here; use cpu")
    index, count = torch.device(device).index, torch.cuda.device_count()
    if index is not None and index >= count:
        raise UsageError(
            f"{option} {device}: this machine has {count} CUDA device(s), cuda:0 to "
            f"cuda:{count - 1}; list devices it has"
        )


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
