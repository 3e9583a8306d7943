"""Pointing game with each map moved left and up by a few pixels: how much of a method's score does a
receptive-field offset of the network cost it?

    python benchmarks/offset_pointing.py --root IMAGENET --weights efficientnet-lite0.pth \
        [--methods rsp ae] [--shifts 15] [--limit 500] [--out offset-pointing]

EfficientNet-Lite0's five stride-2 convolutions pad more on the right and bottom ("SAME" padding), so
the receptive field of a cell of its last 7 x 7 map is centred 15.5 px right of and below where a
symmetric network would centre it. A rule that spreads relevance over each window's geometric extent
without reading the trained weights (RSP) places its map that far right and down; trained weights
compensate for the offset, so rules that read them are hardly displaced (AE here; LRP's best mirror
shifts in mirror_check.py are 1-3 px).  For every method M and
shift s this runs ``relprop evaluate`` (pointing game, ground-truth class) with M and with "M_left{s}",
M's map moved s px left and up (zeros enter at the right and bottom edges), side by side.
"""

from __future__ import annotations

import argparse
import sys

import torch

import relprop
from relprop.cli import main as relprop_main
from relprop.registry import register

from mirror_check import translated  # benchmarks/ is on sys.path when this script runs


def register_moved(name: str, shift: int) -> str:
    """Register method ``name`` with its maps moved by ``shift`` px as ``{name}_left{shift}``."""
    base = relprop.get_method(name)

    class Moved(base):  # type: ignore[misc, valid-type]
        def attribute(self, x: torch.Tensor, target=None) -> torch.Tensor:  # type: ignore[no-untyped-def]
            return translated(super().attribute(x, target), -shift, -shift)

    label = f"{name}_left{shift}"
    register(label)(Moved)
    return label


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="ImageNet folder (with val/)")
    parser.add_argument("--weights", required=True, help="EfficientNet-Lite0 state-dict file")
    parser.add_argument("--methods", nargs="+", default=["rsp", "ae"], help="default: %(default)s")
    parser.add_argument("--shifts", nargs="+", type=int, default=[15], help="pixels (default: %(default)s)")
    parser.add_argument("--limit", default="500", help="images (default: %(default)s)")
    parser.add_argument("--out", default="offset-pointing", help="output folder (default: %(default)s)")
    args = parser.parse_args()
    methods = [m for name in args.methods for m in [name, *(register_moved(name, s) for s in args.shifts)]]
    return relprop_main([
        "evaluate", "--dataset", "imagenet", "--root", args.root, "--model", "efficientnet_lite0",
        "--weights", args.weights, "--methods", ",".join(methods), "--metrics", "pointing",
        "--limit", args.limit, "--batch-size", "16", "--out", args.out, "--no-progress",
    ])


if __name__ == "__main__":
    sys.exit(main())
