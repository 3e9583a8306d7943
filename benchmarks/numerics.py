"""float32 precision and batch invariance of every relevance method on stock models.

For each (model, method): max|Δ| / max|R| between float32 and float64, and between sample 1 of a batch
of 3 and the same sample alone (float32).  LRP-ε is also run with its default tiny ε next to Captum's
LRP (ε-rule) on the same model: with ε → 0 the rule divides by pre-activations near 0, so its float32
error is a property of the rule, not of the implementation.

    python benchmarks/numerics.py --models vgg16,resnet50 --size 64
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torchvision

import relprop

METHODS = [
    ("rsp", {}), ("ae", {"ratio": 1.0}), ("ae", {"ratio": 2.0}), ("rap", {}), ("lrp_epsilon", {}),
    ("lrp_epsilon", {"epsilon": 0.25}), ("lrp_zplus", {}), ("lrp_alpha1beta0", {}), ("lrp_alpha2beta1", {}),
    ("lrp_gamma", {}), ("lrp_composite", {}),
]
TARGETS = [1, 7, 42]


def build(name: str, weights: Path | None) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "efficientnet_lite0":
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name("efficientnet-lite0")
        if weights is not None:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return model.eval()
    kwargs = {"aux_logits": False, "init_weights": True} if name == "inception_v3" else {}
    return getattr(torchvision.models, name)(**kwargs).eval()


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    delta = (value.double() - reference.double()).abs().amax(dim=(1, 2, 3))
    return (delta / reference.double().abs().amax(dim=(1, 2, 3))).max().item()


def captum_lrp(model: torch.nn.Module, x: torch.Tensor, targets: list[int]) -> torch.Tensor:
    from captum.attr import LRP

    return LRP(model).attribute(x, target=targets)


def measure(model: torch.nn.Module, explain, x: torch.Tensor) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    batch32 = explain(model, x, TARGETS)
    alone32 = explain(model, x[1:2], TARGETS[1:2])
    try:
        batch64 = explain(model.double(), x.double(), TARGETS)
    finally:
        model.float()
    return relative_error(batch32, batch64), relative_error(alone32, batch32[1:2])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="vgg16,resnet50,densenet121,inception_v3,mobilenet_v2,efficientnet_lite0")
    parser.add_argument("--size", type=int, default=64, help="input side in pixels (inception_v3: at least 75)")
    parser.add_argument("--weights", type=Path, default=None, help="EfficientNet-Lite0 state dict (default: random init)")
    args = parser.parse_args(argv)
    print("| model | method | float32 vs float64 | batch of 3 vs alone | seconds |\n|---|---|---:|---:|---:|")
    for model_name in args.models.split(","):
        model = build(model_name, args.weights)
        size = max(args.size, 75) if model_name == "inception_v3" else args.size
        x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
        runs = [(f"{n} {kw or ''}".strip(), lambda m, x, t, n=n, kw=kw: relprop.get_method(n)(m, **kw).attribute(x, target=t))
                for n, kw in METHODS]
        runs.append(("Captum LRP", captum_lrp))
        for label, explain in runs:
            start = time.perf_counter()
            try:
                precision, batch = measure(model, explain, x)
                row = f"{precision:.1e} | {batch:.1e}"
            except Exception as error:  # a baseline that fails on a model is reported, not fatal
                row = f"fails: {type(error).__name__} | –"
            print(f"| {model_name} | {label} | {row} | {time.perf_counter() - start:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
