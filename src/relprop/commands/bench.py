"""``relprop bench``: time RSP and AE against a plain gradient and other LRP libraries."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..benchmark import METHODS, MODELS

    parser = subparsers.add_parser(
        "bench",
        help="benchmark speed and memory against a plain gradient",
        description="Time every method on every model and batch size (random-init torchvision or timm:<name> models, random "
        "224 x 224 inputs; EfficientNet-Lite0 with its packaged weights): the median of --repeats calls after a "
        "warm-up, as seconds per image and as a multiple of one plain gradient, and the peak memory of one call "
        "in a fresh subprocess. Prints a Markdown table row per measurement and writes benchmark.json and "
        "benchmark.md into --out; captum_lrp and zennit_epsilon_plus_flat need those libraries.",
    )
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default: {','.join(MODELS)})")
    parser.add_argument("--batch-sizes", default="1,16", help="comma-separated batch sizes (default: 1,16)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated; relprop methods by registry name, 'name:reference' for reference "
                        f"mode (default: {','.join(METHODS)})")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls after one warm-up (default: 5)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-configuration memory subprocesses")
    parser.add_argument("--out", type=Path, default=Path("benchmark-results"), help="folder for benchmark.json / .md")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from ..benchmark import run, save

    if args.repeats < 1:
        raise ValueError("--repeats must be at least 1.")
    print("| model | batch | method | s / image | × gradient | peak memory (MB) | note |")
    results = run(
        models=tuple(args.models.split(",")),
        batches=tuple(int(b) for b in args.batch_sizes.split(",")),
        methods=tuple(args.methods.split(",")),
        device=args.device,
        repeats=args.repeats,
        memory=not args.no_memory,
        progress=not args.no_progress,
    )
    json_path, md_path = save(results, args.out)
    print(f"\nwrote {json_path} and {md_path}")
    return 0
