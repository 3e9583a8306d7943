"""``relprop coverage``: check that relprop's methods explain the named models (shape, finite, batch
invariance, conservation where claimed), one line per model and method, optionally as a Markdown table."""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import torch

from ..coverage import DEFAULT_METHODS, MethodCheck, check_methods, claim_for, relprop_factory


def coverage(args: argparse.Namespace) -> int:
    from ..errors import RelpropError
    from ..evaluation.distributed import resolve_device
    from ..evaluation.methods import parse_methods
    from .. import zoo
    from .classifier import checked_classifier, has_random_weights, warn_random_weights

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if not names:
        raise ValueError("--models names no model; e.g. --models resnet18,timm:convnext_tiny.")
    for name in names:
        zoo.check_name(name)
    if args.weights not in (None, "DEFAULT") and len(names) > 1:
        raise RelpropError("--weights FILE holds the weights of one model: name a single model with --models.")
    if args.batch_size < 2:
        raise ValueError(f"--batch-size must be at least 2 (batch invariance compares a sample alone and in "
                         f"the batch); got {args.batch_size}.")
    specs = parse_methods(args.methods)
    if any(spec.model_free for spec in specs):
        raise ValueError("'center' does not depend on the model; choose relprop methods.")
    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():
        raise RelpropError(f"--out {out} is a folder; give a file name such as coverage.md.")
    device = resolve_device(args.device)
    factories = {spec.label: relprop_factory(spec.name, dict(spec.kwargs)) for spec in specs}
    claims = {spec.label: claim_for(spec.name, dict(spec.kwargs)) for spec in specs}
    rows, failed = [], 0
    for name in names:
        one = argparse.Namespace(**{**vars(args), "model": name})
        torch.manual_seed(0)  # random weights as in docs/coverage.md, whatever models are listed before
        try:
            model, preprocess, _ = checked_classifier(one, args.size)
        except RelpropError as exc:  # it cannot be built or run (too small an input): its checks fail, not the run
            print(f"{name}\n  ✘ {exc}", flush=True)
            rows.append((name, args.size, {label: MethodCheck(label, note=str(exc)) for label in factories}))
            failed += len(factories)
            continue
        if has_random_weights(one):
            warn_random_weights(name, None)
        size = args.size or preprocess.size
        x = torch.randn(args.batch_size, 3, size, size, generator=torch.Generator().manual_seed(args.seed))
        start = time.perf_counter()
        checks = check_methods(model.to(device), factories, claims, x.to(device))
        print(f"{name} ({size} px, {time.perf_counter() - start:.1f} s)", flush=True)
        for label, check in checks.items():
            figures = [f"batch variance {check.invariance:.1e}"] if check.invariance is not None else []
            if check.conservation is not None:
                figures.append(f"conservation {check.conservation:.1e}")
            detail = f"  ({', '.join(figures)})" if figures and check.ok else ""
            print(f"  {label:<16} {check.mark}{detail}", flush=True)
            failed += not check.ok
        rows.append((name, size, checks))
        del model, checks
        gc.collect()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(_markdown(rows, list(factories)))
        print(f"wrote {out}")
    total = len(names) * len(factories)
    print(f"{total - failed} of {total} checks passed")
    return 1 if failed else 0


def _markdown(rows: list[tuple[str, int | None, dict[str, MethodCheck]]], labels: list[str]) -> str:
    """One row per model, one column per method; ✔, ✔¹, ✔² or ✘ with what failed (docs/coverage.md's marks)."""
    lines = ["| model | px | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for name, size, checks in rows:
        cells = [checks[label].mark.replace("|", "/") for label in labels]
        lines.append(f"| {name} | {size or '–'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from .classifier import add_weights_arguments

    parser = subparsers.add_parser(
        "coverage",
        help="check that relprop's methods explain your models",
        description="Explain a random normal batch with each method on each model and check the map: the "
        "input's shape, finite, not constant, batch invariant (a sample alone vs in the batch, within 1e-4 "
        "of max|R| in float32) and, where the method claims it, conserving in float64 (RSP: the seed's sum; "
        "RAP: zero; LRP-ε and the LRP composite, with ε = 0: the target logit of a bias-free copy). The "
        "models are not changed. Marks: ✔ passed; ✔¹ conservation confirmed only to float64's resolution "
        "of the map's mass; ✔² float32 batch variance from the model's own forward routing (the float64 "
        "check passed); ✘ the first check that failed. Exit status 1 when any check failed.",
    )
    parser.add_argument("--models", required=True,
                        help="comma-separated model names: torchvision classifiers, efficientnet_lite0, timm:<name>")
    add_weights_arguments(parser, None)
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated method specs, e.g. rsp,ae:ratio=1")
    parser.add_argument("--size", type=int, help="input side in pixels; default: each model's own input size")
    parser.add_argument("--batch-size", type=int, default=2, help="samples in the checked batch (at least 2)")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of the random normal batch (default: %(default)s); random weights are drawn after "
                             "torch.manual_seed(0), as in the coverage table")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--out", help="also write the results as a Markdown table to this file")
    parser.set_defaults(run=coverage)
