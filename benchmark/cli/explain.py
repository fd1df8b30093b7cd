"""``gmd26 explain``: Integrated-Gradients attribution of a trained DeepSet-MoE, ID vs OOD.

Example::

    gmd26 explain runs/duplication/deepset_moe/quick-seed0/best.pt --split both --max-molecules 64

For each requested split (``id`` = ``id_test``, ``ood`` = ``ood_test``) the command takes
``--max-molecules`` frames evenly spaced through the split (so every molecule of a small split
is represented), attributes each frame's energy to its atoms with Integrated Gradients
(:mod:`deepset_moe.attribution`), prints the per-fragment and per-expert tables and writes
``attribution.json`` and ``attribution.png`` to ``--out`` (default: ``<checkpoint
dir>/explain``). The task comes from the checkpoint's training metadata unless ``--task``
is given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmark.cli.train import check_device
from benchmark.dataset.frames import Frame
from benchmark.dataset.layout import DEFAULT_DATA_DIR, load_split
from benchmark.dataset.tasks import TASK_NAMES
from benchmark.preflight import check_output_dir, positive_int
from deepset_moe.attribution import (
    attribute_molecules,
    attribution_figure,
    format_attribution_tables,
    split_attribution_summary,
)
from deepset_moe.batch import collate
from deepset_moe.checkpoint import CheckpointError, read_checkpoint

SPLIT_KEYS = {"id": "id_test", "ood": "ood_test"}
JSON_FILE = "attribution.json"
FIGURE_FILE = "attribution.png"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="Integrated-Gradients attributions per fragment and expert, ID vs OOD",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", help="DeepSet-MoE checkpoint (e.g. best.pt)")
    parser.add_argument(
        "--split", default="both", choices=(*SPLIT_KEYS, "both"), help="test split(s) to explain"
    )
    parser.add_argument("--task", choices=TASK_NAMES, help="default: the checkpoint's task")
    parser.add_argument(
        "--data",
        default=None,
        help=f"built data directory (default: the checkpoint's, else {DEFAULT_DATA_DIR})",
    )
    parser.add_argument("--out", default=None,
                        help="output folder (default: <checkpoint folder>/explain)")
    parser.add_argument("--max-molecules", type=positive_int, default=64,
                        help="frames per split (default %(default)s)")
    parser.add_argument("--n-steps", type=positive_int, default=32,
                        help="IG quadrature points (default %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=16,
                        help="frames per model batch (default %(default)s)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="default %(default)s")
    parser.set_defaults(func=run)


def evenly_spaced(frames: list[Frame], count: int) -> list[Frame]:
    """At most ``count`` frames at evenly spaced positions (first and last included)."""
    if count >= len(frames):
        return list(frames)
    positions = np.unique(np.linspace(0, len(frames) - 1, count).round().astype(np.int64))
    return [frames[i] for i in positions]


def run(args: argparse.Namespace) -> int:
    """Errors of the input (checkpoint, data, output folder) propagate to
    :func:`benchmark.cli.main`: one line, exit status 2, found before any attribution."""
    from deepset_moe.model import DeepSetMoE

    check_device(args.device)
    checkpoint = Path(args.checkpoint)
    out_dir = check_output_dir(Path(args.out) if args.out else checkpoint.parent / "explain")
    training = read_checkpoint(checkpoint).get("training") or {}
    task = args.task or training.get("task")
    if task is None:
        raise CheckpointError(f"{checkpoint}: no task in its training metadata; pass --task")
    data_dir = args.data or training.get("data_dir") or DEFAULT_DATA_DIR
    model = DeepSetMoE.from_checkpoint(checkpoint, map_location=args.device)
    splits = list(SPLIT_KEYS) if args.split == "both" else [args.split]
    split_frames = {
        split: evenly_spaced(load_split(data_dir, task, SPLIT_KEYS[split]), args.max_molecules)
        for split in splits
    }
    summaries = {}
    for split, frames in split_frames.items():
        batches = (
            collate(frames[i : i + args.batch_size])
            for i in range(0, len(frames), args.batch_size)
        )
        result = attribute_molecules(model, batches, n_steps=args.n_steps)
        summaries[split] = split_attribution_summary(result)

    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"Integrated Gradients of {checkpoint} on task {task} ({args.n_steps} steps)\n")
    print(format_attribution_tables(summaries))
    payload = {
        "checkpoint": str(checkpoint),
        "task": task,
        "data_dir": str(data_dir),
        "n_steps": args.n_steps,
        "splits": summaries,
    }
    (out_dir / JSON_FILE).write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    attribution_figure(summaries).savefig(out_dir / FIGURE_FILE, dpi=120)
    print(f"\nwrote {out_dir / JSON_FILE} and {out_dir / FIGURE_FILE}")
    return 0
