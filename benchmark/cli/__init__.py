"""``gmd26`` command line: one sub-command per module in :mod:`benchmark.cli`.

Each command module defines ``register(subparsers) -> None``, which adds its parser and sets
``func`` (called with the parsed namespace; returns an exit code or ``None``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("build", "info", "train", "explain", "run", "report", "fit", "evaluate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gmd26",
        description="GMD-26 compositional-generalisation benchmark and DeepSet-MoE.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"benchmark.cli.{name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code = args.func(args)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
