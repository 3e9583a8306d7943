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
    "relprop.commands.coverage",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relprop", description="Relevance propagation explanations for CNNs.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    for command in subparsers.choices.values():
        _show_defaults(command)
    return parser


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Add "(default: …)" to the help of every option that has a default its help does not mention
    (flags, whose default is off, and options without a default are left as they are)."""
    for action in parser._actions:
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if action.option_strings and not unset and "default" not in (action.help or "").lower():
            action.help = f"{action.help} (default: %(default)s)" if action.help else "default: %(default)s"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (RelpropError, FileNotFoundError, ValueError) as exc:
        print(f"relprop: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
