"""RSP and AE on two builds of the same pretrained EfficientNet-Lite0: efficientnet-lite-pytorch and timm's
``tf_efficientnet_lite0`` with the same weights.

The two state dicts list the same 296 tensors in the same order with the same shapes, so the weights are
mapped by position.  The script checks that the logits agree, then explains the same images with both
builds and reports max|Δ| / max|R| per method (float64, so that only the graphs differ, not the rounding).
timm pads its stride-2 convolutions in ``forward`` ("SAME" padding computed from the input size), where the
other build pads with a fixed module; the maps must agree all the same.

    python benchmarks/lite0_builds.py --weights path/to/efficientnet-lite0-57934424.pth \\
        --images path/to/imagenet/val --count 4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import relprop
from relprop.preprocess import TFLITE_MEAN, TFLITE_STD, Preprocess, load_image


def builds(weights: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(efficientnet-lite-pytorch build, timm build), both with the same weights, float64, eval mode."""
    import timm
    from efficientnet_lite_pytorch import EfficientNet

    state = torch.load(weights, map_location="cpu", weights_only=True)
    reference = EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(state)
    other = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    names = list(other.state_dict())
    if len(names) != len(state) or any(other.state_dict()[n].shape != v.shape for n, v in zip(names, state.values())):
        raise SystemExit("the two state dicts do not line up tensor by tensor")
    other.load_state_dict(dict(zip(names, state.values())))
    return reference.double().eval(), other.double().eval()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().amax() / b.abs().amax()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="a folder of JPEG images")
    parser.add_argument("--count", type=int, default=4)
    args = parser.parse_args()
    reference, other = builds(args.weights)
    preprocess = Preprocess(mean=TFLITE_MEAN, std=TFLITE_STD)
    paths = sorted(args.images.glob("*.JPEG"))[: args.count]
    x = torch.stack([preprocess(load_image(p)) for p in paths]).double()
    with torch.no_grad():
        logits_ref, logits_other = reference(x), other(x)
    print(f"logits: max|Δ| / max|y| = {relative(logits_other, logits_ref):.2e}")
    targets = logits_ref.argmax(dim=1)
    for name, make in (("RSP", relprop.RSP), ("AE r=2", lambda m: relprop.AE(m, ratio=2.0))):
        try:
            maps = [make(m).attribute(x, target=targets) for m in (reference, other)]
        except relprop.RelpropError as error:
            print(f"{name}: {type(error).__name__}: {error}")
            continue
        print(f"{name}: max|Δ| / max|R| = {relative(maps[1], maps[0]):.2e} over {len(paths)} images")


if __name__ == "__main__":
    main()
