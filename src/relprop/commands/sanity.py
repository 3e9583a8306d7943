"""``relprop sanity``: model-sensitivity curves (similarity vs randomised layer) for one method."""

from __future__ import annotations

import argparse
import dataclasses
import json
from importlib import resources
from pathlib import Path

import torch

from ..progress import Progress
from .demo import SAMPLES

MODES = ("cascading", "independent")


def sanity(args: argparse.Namespace) -> int:
    from ..errors import RelpropError
    from ..evaluation.datasets import open_image
    from ..evaluation.distributed import resolve_device
    from ..evaluation.methods import MethodSpec, explain
    from ..evaluation.report import sensitivity_plot
    from ..evaluation.sensitivity import MEASURES, model_sensitivity, randomisation_units
    from .classifier import checked_classifier, has_random_weights, warn_random_weights

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise RelpropError(f"--out {out} is a file; give a folder.")
    device = resolve_device(args.device)
    spec = MethodSpec.parse(args.method)
    modes = _modes(args.modes)
    if spec.model_free:
        raise ValueError("'center' does not depend on the model; choose a model-based method.")
    model, preprocess, _ = checked_classifier(args, args.size)
    spec.build(model)  # bad method options fail here, before any work
    if args.size:
        preprocess = dataclasses.replace(preprocess, size=args.size, resize=args.size)  # type: ignore[type-var]
    model = model.to(device)
    files = [Path(f) for f in args.images] or [Path(str(resources.files("relprop") / "data" / n)) for n in SAMPLES]
    x = torch.stack([preprocess(open_image(f)) for f in files]).to(device)  # type: ignore[operator]
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    random_weights = has_random_weights(args)
    if random_weights:
        warn_random_weights(args.model)
    measures = tuple(m.strip() for m in args.measures.split(",") if m.strip())
    reduce = args.reduce or spec.default_reduce
    units = [name for name, _ in randomisation_units(model, args.granularity)]
    step_names = _step_names(modes, units)
    progress = Progress("sanity", len(step_names), enabled=not args.no_progress)
    progress.note(f"{spec.label} maps of {len(files)} image(s), {' and '.join(modes)} randomisation of {len(units)} "
                  f"{args.granularity}s")
    steps = iter(step_names)

    def explain_maps(m: torch.nn.Module, xs: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        progress.step(next(steps))
        return explain(spec, spec.build(m), xs, ts, reduce)  # type: ignore[arg-type]

    summaries = {}
    for mode in modes:
        curves = model_sensitivity(
            model,
            explain_maps,
            x,
            targets,
            mode=mode,
            granularity=args.granularity,
            init=args.init,  # type: ignore[arg-type]
            reset_bn=args.reset_bn,
            seed=args.seed,
            measures=measures or MEASURES,
        )
        summaries[mode] = {"steps": curves.steps, "curves": curves.summary()}
    config = {
        "model": args.model,
        "weights": args.weights,
        "random_weights": random_weights,
        "method": spec.label,
        "images": [str(f) for f in files],
        "targets": targets.tolist(),
        "target_mode": "fixed (top-1 of the trained model)",
        "granularity": args.granularity,
        "init": args.init,
        "reset_bn": args.reset_bn,
        "seed": args.seed,
        "channel_reduction": reduce,
    }
    stem = "sanity_" + "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in spec.label)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps({"config": config, "curves": summaries}, indent=2) + "\n")
    title = f"{spec.label}, {args.model} (random weights)" if random_weights else spec.label
    (out / f"{stem}.png").write_bytes(sensitivity_plot(summaries, title))
    print(f"wrote {out / (stem + '.png')} and {out / (stem + '.json')}")
    return 0


def _modes(text: str) -> list[str]:
    """``--modes``: ``both`` or comma-separated names from MODES, in the given order."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    modes = list(dict.fromkeys(m for name in names for m in (MODES if name == "both" else (name,))))
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"--modes {text!r}: choose cascading, independent or both (comma-separated).")
    return modes


def _step_names(modes: list[str], units: list[str]) -> list[str]:
    """What each explainer call of model_sensitivity computes, in its order (units: output to input)."""
    names = []
    for mode in modes:
        names.append(f"{mode}: maps of the trained model")
        if mode == "cascading":
            names += [f"{mode}: maps after randomising down to {unit}" for unit in units]
        else:
            names += [f"{mode}: maps with only {unit} randomised" for unit in units]
    return names


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from .classifier import add_weights_arguments

    parser = subparsers.add_parser(
        "sanity",
        help="model-sensitivity curves: similarity of maps vs randomised layers",
        description="Randomise a copy of the model layer block by layer block (cascading: output to input, "
        "cumulative; independent: one block at a time) and plot how similar the method's maps stay.",
    )
    parser.add_argument("--model", required=True, help="model name (torchvision, efficientnet_lite0 or timm:<name>)")
    add_weights_arguments(parser, "the output")
    parser.add_argument("--method", required=True, help="method spec, e.g. rsp or ae:ratio=1")
    parser.add_argument("--images", nargs="*", default=[], help="image files (default: the bundled sample photos)")
    parser.add_argument(
        "--size", type=int, help="input size (short side resized to it, centre square); default: the model's"
    )
    parser.add_argument("--modes", default="cascading", help="cascading, independent or both (comma-separated)")
    parser.add_argument("--granularity", choices=("block", "layer"), default="block")
    parser.add_argument("--init", choices=("reset_parameters", "xavier_u01", "normal_0.01"), default="reset_parameters")
    parser.add_argument("--reset-bn", choices=("affine_only", "all", "none"), default="affine_only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measures", default="spearman_abs,spearman,ssim,hog")
    parser.add_argument(
        "--reduce", choices=("sum", "sum_abs", "max_abs"), help="channel reduction (default per method)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="relprop-sanity", help="output folder (default relprop-sanity)")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(run=sanity)
