"""``gmd26 ablation``: compare variants of one model, one run folder per variant.

Writes ``OUT/ablation.md`` (an across-task summary, then per task the comparison at matched
accuracy with the variants as rows and their compositional-probe scores), ``OUT/ablation.json``
and ``OUT/figures/<task>_ablation.png`` (:mod:`benchmark.report.ablation`). A variant is named
by its folder.

Example::

    bash tools/runs/ablation.sh                       # trains the variants (resumable)
    gmd26 ablation results/ablation results/ablation/*/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.dataset.layout import DEFAULT_DATA_DIR
from benchmark.errors import UsageError
from benchmark.preflight import check_output_dir
from benchmark.report.ablation import ABLATION_MD, AblationError, ablation_report


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ablation",
        help="compare variants of one model (one gmd26 run folder per variant)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out", help="folder for ablation.md, ablation.json and figures/")
    parser.add_argument("variants", nargs="+", help="run folders, one per variant")
    parser.add_argument("--data", default=str(DEFAULT_DATA_DIR),
                        help="dataset of the variants, for the routing metrics (default: the "
                        "shipped data/gmd26)")
    parser.add_argument("--model", default="deepset_moe",
                        help="the model whose variants are compared (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    missing = [folder for folder in args.variants if not Path(folder).is_dir()]
    if missing:
        raise UsageError(f"no such run folder: {', '.join(missing)} (the --out of gmd26 run)")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    check_output_dir(Path(args.out), option="output folder")
    try:
        ablation_report(args.variants, args.out, args.model, args.data)
    except AblationError as error:
        raise UsageError(str(error)) from error
    print(f"ablation: {Path(args.out) / ABLATION_MD}")
    return 0
