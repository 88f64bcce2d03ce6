"""The `histo` command: turns arguments and configs into library calls and reports errors per slide.

Exit codes: 0 success; 1 some slides failed (the others were done); 2 bad usage, config or input.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import histo
from histo.errors import HistoError

# Subcommand modules histo.cli.<name>, each with register(subparsers) and run(args) -> int; order = help order.
# To add a command, add its name here. register() must stay cheap: import heavy libraries (torch, Lightning,
# pandas, matplotlib) inside run(), so that `histo --help` and light commands start fast
# (tests/test_cli_startup.py checks it).
_COMMANDS = ("demo", "info", "tile", "synth", "train", "predict", "report", "ihc", "case", "register", "view", "cohort")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser with every available subcommand (or just ``only``, when it names one)."""
    parser = argparse.ArgumentParser(
        prog="histo",
        description="Histopathology slides: tiling, phantoms, models, grading and IHC (research use only).",
    )
    parser.add_argument("--version", action="version", version=f"histo {histo.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in (only,) if only in _COMMANDS else _COMMANDS:
        try:
            module = importlib.import_module(f"histo.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("histo.cli"):
                continue  # a subcommand not shipped in this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `histo` console command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv in (["--version"], ["-V"]):  # no subcommand module is imported for this
        print(f"histo {histo.__version__}")
        return 0
    # A command line naming a subcommand first only imports that subcommand's module (start-up time).
    parser = build_parser(only=argv[0] if argv else None)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except HistoError as exc:
        print(f"histo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"histo {args.command}: interrupted; finished outputs are kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
