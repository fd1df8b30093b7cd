"""``gmd26 info``: build settings, counts and label statistics of a dataset directory."""

from __future__ import annotations

import argparse
from typing import Any

from benchmark.dataset.additivity import REFERENCE_MODELS, reference_fit_errors
from benchmark.dataset.layout import DEFAULT_DATA_DIR, load_split, manifest_path
from benchmark.dataset.splits import SPLITS
from benchmark.dataset.statistics import dataset_statistics
from benchmark.dataset.tasks import TASK_NAMES

SETTINGS = (
    "preset", "reference", "md_calculator", "temperature_K", "timestep_fs", "friction_per_fs",
    "equilibration_steps", "interval", "frames_per_trajectory", "trajectories_per_molecule",
    "seed", "generator_version", "tasks_version", "status", "total_wall_time_s",
)
COLUMNS = (
    ("task", 13), ("split", 10), ("molecules", 9), ("traj", 6), ("frames", 8), ("atoms", 9),
    ("E/atom mean", 12), ("E/atom std", 11), ("|F| mean", 9), ("|F| max", 8),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info", help="describe a built dataset",
        description="Print the build settings and, per task and split, molecule / frame / atom "
        "counts with energy (eV per atom) and force (eV/Å) statistics.",
    )
    parser.add_argument("data_dir", nargs="?", default=str(DEFAULT_DATA_DIR),
                        help="dataset directory (default: the shipped data/gmd26)")
    parser.add_argument("--additivity", action="store_true",
                        help="also fit per-element and per-fragment (group-additive) reference "
                        "energies on each task's training split and print their ID and OOD "
                        "energy errors and per-molecule bias (benchmark.dataset.additivity)")
    parser.set_defaults(func=run)


def _row(task: str, split: str, stats: dict[str, Any]) -> str:
    values = (
        task, split, stats["molecules"], stats["trajectories"], stats["frames"], stats["atoms"],
        f"{stats['energy_per_atom_eV']['mean']:.4f}", f"{stats['energy_per_atom_eV']['std']:.4f}",
        f"{stats['force_norm_eV_per_A']['mean']:.3f}", f"{stats['force_norm_eV_per_A']['max']:.2f}",
    )
    return "  ".join(str(v).rjust(w) if i > 1 else str(v).ljust(w)
                     for i, (v, (_, w)) in enumerate(zip(values, COLUMNS)))


def format_statistics(stats: dict[str, Any]) -> str:
    """The readable report printed by ``gmd26 info``."""
    build = stats["build"]
    lines = [f"{key:<27} {build[key]}" for key in SETTINGS if key in build]
    lines.append(f"{'failures':<27} {stats['failures']}")
    lines.append("")
    header = "  ".join(n.rjust(w) if i > 1 else n.ljust(w) for i, (n, w) in enumerate(COLUMNS))
    lines += [header, "-" * len(header)]
    for task, splits in stats["tasks"].items():
        lines += [_row(task, split, splits[split]) for split in SPLITS]
    lines += [_row("probe", family, values) for family, values in stats["probe"].items()]
    lines.append(_row("all", "", stats["all"]))
    return "\n".join(lines)


def format_additivity(data_dir: str) -> str:
    """Per task and reference model: E/atom MAE and per-molecule bias on ID and OOD test."""
    lines = [
        "",
        "Linear reference energies fitted on each training split (eV/atom; "
        "benchmark.dataset.additivity): MAE, mean signed per-molecule bias, mean |bias|, "
        "molecules with a positive bias / identified by the training split / all",
        f"{'task':<13} {'reference':<9} {'split':<8} {'MAE':>7} {'bias':>8} {'|bias|':>7} "
        f"{'positive':>14}",
    ]
    for task in TASK_NAMES:
        if not manifest_path(data_dir, task).exists():
            continue
        train = load_split(data_dir, task, "train")
        splits = {split: load_split(data_dir, task, split) for split in ("id_test", "ood_test")}
        for model in REFERENCE_MODELS:
            for split, row in reference_fit_errors(train, splits, model).items():
                lines.append(
                    f"{task:<13} {model:<9} {split.removesuffix('_test'):<8} "
                    f"{row['energy_per_atom_mae']:7.4f} {row['mean_molecule_bias']:+8.4f} "
                    f"{row['mean_abs_molecule_bias']:7.4f} "
                    f"{row['positive_molecules']:>4}/{row['identified_molecules']}"
                    f"/{row['molecules']}"
                )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    print(format_statistics(dataset_statistics(args.data_dir)))
    if args.additivity:
        print(format_additivity(args.data_dir))
    return 0
