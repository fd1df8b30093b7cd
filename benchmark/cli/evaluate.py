"""``gmd26 evaluate``: the GMD-26 metrics of a checkpoint on any labelled files.

Example::

    gmd26 evaluate runs/my_fit/best.pt test.xyz other.xyz
    gmd26 evaluate best.pt md.traj@::10 --energy-key energy --forces-key forces --json out.json

Prints the metrics table (force MAE, cosine, magnitude MAE, energy MAE, energy MAE per atom,
RMSEs) with one column per file and one for all files together, then force errors per element
(and per fragment when labels are known). Keys and units default to those the checkpoint was
trained with (``gmd26 fit``), then to ASE's ``energy`` / ``forces`` and ``ref_energy`` /
``ref_forces``. A file that cannot be evaluated (a missing key, elements the model was not
trained on) is refused with exit status 2 and one line saying why.
"""

from __future__ import annotations

import argparse

from benchmark.dataset.external import ENERGY_UNITS, FORCES_UNITS, FRAGMENT_SOURCES
from benchmark.evaluation.files import evaluate_files, format_evaluation
from benchmark.jsonio import write_json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="metrics of a checkpoint on labelled files (per file, element, fragment)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", help="checkpoint of any model (e.g. <out>/best.pt)")
    parser.add_argument("files", nargs="+", help="labelled ASE-readable files (name@index ok)")
    parser.add_argument("--energy-key", default=None)
    parser.add_argument("--forces-key", default=None)
    parser.add_argument("--energy-unit", default=None, choices=sorted(ENERGY_UNITS))
    parser.add_argument("--forces-unit", default=None, choices=sorted(FORCES_UNITS))
    parser.add_argument("--fragments", default=None, choices=FRAGMENT_SOURCES)
    parser.add_argument("--fragment-key", default=None)
    parser.add_argument("--molecule-key", default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the result to this JSON file")
    parser.add_argument(
        "--predictions", default=None, help="folder for each file's predictions (.npz)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = evaluate_files(
        args.checkpoint,
        args.files,
        energy_key=args.energy_key,
        forces_key=args.forces_key,
        fragments=args.fragments,
        fragment_key=args.fragment_key,
        molecule_key=args.molecule_key,
        energy_unit=args.energy_unit,
        forces_unit=args.forces_unit,
        batch_size=args.batch_size,
        device=args.device,
        predictions_dir=args.predictions,
    )
    print(format_evaluation(result))
    if args.json:
        write_json(args.json, result)
        print(f"results: {args.json}")
    return 0
