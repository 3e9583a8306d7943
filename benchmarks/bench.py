"""Benchmark entry point: same as ``relprop bench`` (see ``relprop bench --help``)."""

import sys

from relprop.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
