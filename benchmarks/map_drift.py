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

from compare_revisions import HERE, checked_out
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


def run_worker(src: Path, model_name: str, methods: list[str], size: int, batch: int, images: str | None,
               out: Path) -> None:
    """:func:`worker` in a fresh interpreter that imports relprop from ``src``."""
    command = [sys.executable, __file__, "--worker", json.dumps([model_name, methods, size, batch, images, str(out)])]
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
    from numerics import relative_error

    methods = args.methods.split(",")
    with checked_out(args.base) as base_src, tempfile.TemporaryDirectory() as tmp:
        print("| model | method | moved | float32 vs float64 (base → head) | batch vs alone (base → head) |")
        print("|---|---|---:|---:|---:|")
        for model_name in args.models.split(","):
            images = args.images if model_name == "efficientnet_lite0" else None
            runs = {}
            for label, src in (("base", base_src), ("head", HERE.parent / "src")):
                out = Path(tmp) / f"{label}.pt"
                run_worker(src, model_name, methods, args.size, args.batch, images, out)
                runs[label] = torch.load(out)
            for spec in methods:
                b, h = runs["base"][spec], runs["head"][spec]
                precision = [relative_error(r["batch32"], r["batch64"]) for r in (b, h)]
                invariance = [relative_error(r["alone32"], r["batch32"][1:2]) for r in (b, h)]
                print(f"| {model_name} | {spec} | {relative_error(h['batch64'], b['batch64']):.1e} "
                      f"| {precision[0]:.1e} → {precision[1]:.1e} | {invariance[0]:.1e} → {invariance[1]:.1e} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
