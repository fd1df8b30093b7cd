"""``gmd26 train``: train one model on one task, evaluate ID / OOD and print the GMD-26 table.

Example::

    gmd26 train --task duplication --model deepset_moe --preset quick --data data --out runs/x
    torchrun --nproc_per_node 2 -m benchmark.cli train --task duplication --model schnet

Exit code 0 when training and evaluation succeeded, 1 otherwise (the reason is printed and
stored in ``metrics.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch.distributed as dist

from benchmark.dataset.tasks import TASK_NAMES
from benchmark.evaluation.metrics import format_id_ood_table
from benchmark.training.experiment import DEFAULT_DATA_DIR, METRICS_FILE, default_out_dir, train
from benchmark.training.presets import TRAINING_PRESETS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model on a task and evaluate it ID and OOD",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--task", required=True, choices=TASK_NAMES)
    parser.add_argument("--model", required=True, help="deepset_moe or a baseline name")
    parser.add_argument("--preset", default="quick", choices=sorted(TRAINING_PRESETS))
    parser.add_argument("--data", default=str(DEFAULT_DATA_DIR), help="built data directory")
    parser.add_argument(
        "--out",
        default=None,
        help="output directory (default runs/<task>/<model>/<preset>-seed<S>)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="wall-clock safety cap (overrides the preset's; budgets are steps)",
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--model-config",
        default=None,
        help="model hyperparameters as a JSON object, or a path to a JSON file",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out_dir = args.out or default_out_dir(args.model, args.task, args.preset, args.seed)
    try:
        result = train(
            args.model,
            args.task,
            args.preset,
            data_dir=args.data,
            out_dir=out_dir,
            seed=args.seed,
            resume=args.resume,
            max_minutes=args.max_minutes,
            device=args.device,
            model_settings=_model_settings(args.model_config),
            progress=not args.no_progress,
        )
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if result["world_size"] > 1 and not _is_rank_zero():
        return 0 if result["status"] == "ok" else 1
    if result["status"] != "ok":
        print(f"gmd26 train: failed: {result['reason']}", file=sys.stderr)
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


def _model_settings(text: str | None) -> dict[str, Any] | None:
    """``--model-config``: inline JSON object or a JSON file."""
    if text is None:
        return None
    source = Path(text).read_text() if Path(text).is_file() else text
    try:
        settings = json.loads(source)
    except json.JSONDecodeError as error:
        raise SystemExit(f"gmd26 train: --model-config is not valid JSON ({error})") from error
    if not isinstance(settings, dict):
        raise SystemExit("gmd26 train: --model-config must be a JSON object")
    return settings


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
