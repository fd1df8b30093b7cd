"""``gmd26`` command line: one sub-command per module in :mod:`benchmark.cli`.

Each command module defines ``register(subparsers) -> None``, which adds its parser and sets
``func`` (called with the parsed namespace; returns an exit code or ``None``). A command may
set the parser default ``interrupt_hint`` (what to do after Ctrl-C, e.g. how to resume).

Exit status of every command:

====  ======================================================================================
0     success
1     the work ran and failed (a failed cell, frame or training run; the reason is printed)
2     the input was refused before any work: a bad argument, file, folder or checkpoint.
      One line on stderr, ``gmd26 <command>: <message>``, naming the item and what to do
      (``--debug`` or ``GMD26_DEBUG=1`` adds the traceback)
130   interrupted by Ctrl-C (SIGINT); 143: stopped by SIGTERM. Long commands stop their
      worker processes and leave resumable state (``build.json`` status ``interrupted``,
      the last finished training round in ``last.pt``)
====  ======================================================================================

Any other exception is a bug and prints its traceback (exit status 1).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from benchmark.interrupts import exit_status, signal_name, sigterm_raises

COMMANDS = (
    "build", "info", "train", "explain", "run", "report", "ablation", "probe", "fit",
    "evaluate",
)


EPILOG = (
    "exit status: 0 success, 1 the work failed, 2 the input was refused (one line on stderr; "
    "--debug shows the traceback), 130/143 interrupted (SIGINT/SIGTERM; rerun to resume)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gmd26",
        description="GMD-26 compositional-generalisation benchmark and DeepSet-MoE.",
        epilog=EPILOG,
    )
    parser.add_argument("--debug", action="store_true", default=False,
                        help="show the traceback of refused input (also GMD26_DEBUG=1)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"benchmark.cli.{name}")
        module.register(subparsers)
    for subparser in subparsers.choices.values():
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                               help="show the traceback of refused input (also GMD26_DEBUG=1)")
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (exit status 2, one line): see the module docstring."""
    from benchmark.dataset.build import BuildConfigError
    from benchmark.dataset.frames import DataFormatError
    from benchmark.dataset.probe import ProbeError
    from benchmark.dataset.splits import ManifestError
    from benchmark.dataset.tasks import TaskRuleError
    from benchmark.errors import UsageError
    from benchmark.matrix import PlanMismatchError
    from deepset_moe.batch import BatchError
    from deepset_moe.checkpoint import CheckpointError
    from deepset_moe.fragments import FragmentError

    return (
        UsageError,
        BuildConfigError,
        DataFormatError,
        ManifestError,
        ProbeError,
        TaskRuleError,
        PlanMismatchError,
        BatchError,
        CheckpointError,
        FragmentError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
    )


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (an ``OSError`` keeps its file name)."""
    text = str(error) or type(error).__name__
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False)) or os.environ.get("GMD26_DEBUG", "") not in (
        "", "0"
    )
    prefix = f"gmd26 {args.command}"
    try:
        with sigterm_raises():
            code = args.func(args)
    except KeyboardInterrupt as error:
        hint = getattr(args, "interrupt_hint", None)
        print(f"{prefix}: interrupted ({signal_name(error)})" + (f"; {hint}" if hint else ""),
              file=sys.stderr)
        return exit_status(error)
    except user_errors() as error:
        if debug:
            traceback.print_exc()
        print(f"{prefix}: {one_line(error)}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
