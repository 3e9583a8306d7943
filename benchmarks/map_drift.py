"""How far a change moves relprop's maps, and whether it costs float32 precision or batch invariance.

A rule change or a speed-up must be measured before it lands: this script runs the same methods on the
same inputs with two relprop revisions and prints, per (model, method),

* moved: max|R_head − R_base| / max|R_base| in float64 (the change itself, free of rounding),
* float32 vs float64: max|R₃₂ − R₆₄| / max|R₆₄| for base and head,
* batch vs alone: max|Δ| / max|R| between sample 1 of the batch and the same sample alone (float32),
  for base and head,

each the maximum over the samples.  ``--base`` is any git revision (checked out into a temporary
worktree); the head is this working tree's ``src``.  Random-init torchvision models (seed 0) get a random
normal batch; ``efficientnet_lite0`` (its bundled pretrained weights) gets the first ImageNet validation
images of ``--images`` when given.

    python benchmarks/map_drift.py --base HEAD --models resnet50,efficientnet_lite0 --size 224 \
        --images DIR_OF_JPEGS
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
METHODS = ["rsp", "ae:ratio=2", "rap", "lrp_composite"]


def worker(model_name: str, methods: list[str], size: int, batch: int, images: str | None, out: str) -> None:
    """Save each method's float32 batch map, float32 map of sample 1 alone and float64 batch map to ``out``."""
    import torch

    import relprop
    from relprop.preprocess import load_image
    from relprop.zoo import load_model

    torch.manual_seed(0)
    model, preprocess = load_model(model_name)
    if images:
        paths = sorted(Path(images).glob("*.JPEG"))[:batch]
        x = torch.stack([preprocess(load_image(p)) for p in paths])
    else:
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    maps = {}
    for spec in methods:
        name, _, option = spec.partition(":")
        options = {k: float(v) for k, v in (o.split("=") for o in option.split(",") if o)}
        explain = relprop.get_method(name)
        maps[spec] = {
            "batch32": explain(model, **options).attribute(x, target=targets),
            "alone32": explain(model, **options).attribute(x[1:2], target=targets[1:2]),
        }
        model.double()
        try:
            maps[spec]["batch64"] = explain(model, **options).attribute(x.double(), target=targets)
        finally:
            model.float()
    torch.save(maps, out)


def relative(value, reference) -> float:  # type: ignore[no-untyped-def]
    """max over samples of max|value − reference| / max|reference|."""
    delta = (value.double() - reference.double()).flatten(1).abs().amax(dim=1)
    return (delta / reference.double().flatten(1).abs().amax(dim=1)).max().item()


def run_worker(src: Path, args: argparse.Namespace, model_name: str, out: Path) -> None:
    command = [sys.executable, __file__, "--worker", json.dumps(
        [model_name, args.methods.split(","), args.size, args.batch, args.images, str(out)])]
    subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(src)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="git revision to compare against (required)")
    parser.add_argument("--models", default="resnet50,densenet121,mobilenet_v2,efficientnet_b0,efficientnet_lite0")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated method[:option=value] specs")
    parser.add_argument("--size", type=int, default=224, help="input side in pixels of the random batch")
    parser.add_argument("--batch", type=int, default=2, help="samples in the batch (at least 2)")
    parser.add_argument("--images", default=None, help="folder of ImageNet JPEGs for efficientnet_lite0")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*json.loads(args.worker))
        return 0
    if args.base is None:
        parser.error("--base REVISION is required")
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base), args.base], check=True, cwd=HERE)
        try:
            print("| model | method | moved | float32 vs float64 (base → head) | batch vs alone (base → head) |")
            print("|---|---|---:|---:|---:|")
            for model_name in args.models.split(","):
                runs = {}
                for label, src in (("base", base / "src"), ("head", HERE.parent / "src")):
                    out = Path(tmp) / f"{label}.pt"
                    images = args.images if model_name == "efficientnet_lite0" else None
                    run_worker(src, argparse.Namespace(**{**vars(args), "images": images}), model_name, out)
                    runs[label] = torch.load(out)
                for spec in args.methods.split(","):
                    b, h = runs["base"][spec], runs["head"][spec]
                    precision = [relative(r["batch32"], r["batch64"]) for r in (b, h)]
                    invariance = [relative(r["alone32"], r["batch32"][1:2]) for r in (b, h)]
                    print(f"| {model_name} | {spec} | {relative(h['batch64'], b['batch64']):.1e} "
                          f"| {precision[0]:.1e} → {precision[1]:.1e} | {invariance[0]:.1e} → {invariance[1]:.1e} |",
                          flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], check=True, cwd=HERE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
