"""Speed of two relprop revisions, measured interleaved so that a noisy machine moves both alike.

``relprop bench`` times one revision; on a shared machine its ratios drift by ±10 % between runs, more
than the change a speed-up or a precision fix makes.  This script checks out ``--base`` (any git
revision) into a temporary worktree and runs, round after round, one fresh worker per revision
(the order alternating per round): each worker builds the random-init model (seed 0), times the plain
gradient of the target logits and each method, and reports every method call's time as a ratio to the
mean of the two gradient calls timed just before and after it.  The table gives the median ratio over
rounds and repeats per revision.

    python benchmarks/compare_revisions.py --base 54a24ed --models vgg16,resnet50 --methods rsp,ae

``--head`` defaults to this working tree's ``src``; any folder holding a ``relprop`` package works, e.g. a
second worktree with an experimental change; give ``--head`` several times to compare several folders.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent


@contextlib.contextmanager
def checked_out(revision: str) -> Iterator[Path]:
    """The ``src`` folder of git ``revision`` checked out into a temporary worktree, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="relprop-base-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(HERE.parent), "worktree", "add", "--detach", "-q", str(tree), revision],
                       check=True)
        try:
            yield tree / "src"
        finally:
            subprocess.run(["git", "-C", str(HERE.parent), "worktree", "remove", "--force", str(tree)], check=False)


def _seconds(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def worker(src: str, model_name: str, batch: int, size: int, methods: list[str], repeats: int) -> dict:
    """Ratios of each method's time to the gradient's, on one model, with ``src`` first on the path.

    After one warm-up call of everything, each timed method call sits between two gradient calls and is
    divided by their mean, so that a machine whose speed drifts moves numerator and denominator alike.
    Returns {"relprop": the package file, "ratios": {method: [ratio per repeat]}, "seconds": {...}}.
    """
    sys.path.insert(0, src)
    import torch
    import torchvision

    import relprop

    torch.manual_seed(0)
    if model_name == "efficientnet_lite0":  # the pretrained build of relprop's model zoo
        from relprop.zoo import load_model

        model = load_model(model_name)[0].eval()
    else:
        model = getattr(torchvision.models, model_name)().eval()
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        targets = model(x).argmax(dim=1)

    def gradient() -> None:  # the input gradient only, as ``relprop bench`` times it
        inputs = x.detach().requires_grad_(True)
        torch.autograd.grad(model(inputs).gather(1, targets[:, None]).sum(), inputs)

    calls = {}
    for spec in methods:
        name, _, options = spec.partition(":")
        kwargs = {k: float(v) for k, v in (item.split("=") for item in options.split(",") if item)}
        method = relprop.get_method(name)(model, **kwargs)
        calls[spec] = functools.partial(method.attribute, x, target=targets)
    for call in [gradient, *calls.values()]:  # warm-up: tracing, planning, allocator
        call()
    ratios: dict[str, list[float]] = {spec: [] for spec in methods}
    seconds: dict[str, list[float]] = {spec: [] for spec in ["gradient", *methods]}
    for _ in range(repeats):
        for spec, call in calls.items():
            before, own, after = _seconds(gradient), _seconds(call), _seconds(gradient)
            ratios[spec].append(own / ((before + after) / 2))
            seconds["gradient"] += [before, after]
            seconds[spec].append(own)
    return {"relprop": relprop.__file__, "ratios": ratios, "seconds": seconds}


def run_worker(src: Path, args: argparse.Namespace, model_name: str) -> dict:
    command = [sys.executable, __file__, "--worker", str(src), "--models", model_name, "--batch", str(args.batch),
               "--size", str(args.size), "--methods", args.methods, "--repeats", str(args.repeats)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker for {src} on {model_name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", help="git revision to compare against (required unless --worker)")
    parser.add_argument("--head", action="append", help="folder holding the relprop package to measure; may be "
                        "repeated (default: this working tree's src)")
    parser.add_argument("--models", default="vgg16,resnet50",
                        help="torchvision model names or efficientnet_lite0 (default: %(default)s)")
    parser.add_argument("--methods", default="rsp,ae", help="registered method names, options as name:key=value "
                        "(default: %(default)s)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default: %(default)s)")
    parser.add_argument("--size", type=int, default=224, help="input side in pixels (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=4, help="workers per revision and model (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per method and worker, after one "
                        "warm-up call (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="also write the table and every round's seconds here (.md, .json)")
    parser.add_argument("--worker", metavar="SRC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    if args.worker:
        print(json.dumps(worker(args.worker, args.models, args.batch, args.size, methods, args.repeats)))
        return
    if not args.base:
        parser.error("--base is required")

    with checked_out(args.base) as base_src:
        heads = args.head or [str(HERE.parent / "src")]
        revisions = {"base": base_src} | {head: Path(head) for head in heads}
        rounds: dict[str, dict[str, list[dict]]] = {m: {w: [] for w in revisions} for m in args.models.split(",")}
        for r in range(args.rounds):
            order = list(revisions) if r % 2 == 0 else list(reversed(revisions))
            for model_name in rounds:
                for which in order:
                    result = run_worker(revisions[which], args, model_name)
                    rounds[model_name][which].append(result)
                    print(f"round {r + 1}/{args.rounds} {model_name} {which}: " + ", ".join(
                        f"{k} {statistics.median(v):.2f}×" for k, v in result["ratios"].items()), flush=True)

    lines = [f"base: `{args.base}`; " + "; ".join(f"head {i + 1}: `{h}`" for i, h in enumerate(heads))
             + f". Batch {args.batch}, {args.size}×{args.size}, {args.rounds} interleaved rounds, median over rounds and "
             f"repeats ({args.repeats} per round) of the method's time over the mean of the two gradient calls around "
             "it (change: relative to base).", "",
             "| model | method | base × gradient | " + " | ".join(f"head {i + 1} × gradient | change"
                                                           for i in range(len(heads))) + " |",
             "|---|---|---:|" + "---:|---:|" * len(heads)]
    for model_name, per in rounds.items():
        for spec in methods:
            ratio = {w: statistics.median(q for result in per[w] for q in result["ratios"][spec]) for w in per}
            lines.append(f"| {model_name} | {spec} | {ratio['base']:.2f} | " + " | ".join(
                f"{ratio[h]:.2f} | {100 * (ratio[h] / ratio['base'] - 1):+.1f} %" for h in heads) + " |")
    print("\n".join(lines))
    if args.out:
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
        args.out.with_suffix(".json").write_text(json.dumps({"args": vars(args) | {"out": str(args.out)},
                                                             "rounds": rounds}, indent=1, default=str))


if __name__ == "__main__":
    main()
