"""The ``relprop`` command line: one module per sub-command in :mod:`relprop.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import RelpropError

# Each module defines add_parser(subparsers), which registers its sub-command with
# set_defaults(run=callable(args) -> int | None).
COMMAND_MODULES = (
    "relprop.commands.demo",
    "relprop.commands.explain",
    "relprop.commands.bench",
    "relprop.commands.evaluate",
    "relprop.commands.sanity",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relprop", description="Relevance propagation explanations for CNNs.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (RelpropError, FileNotFoundError, ValueError) as exc:
        print(f"relprop: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
