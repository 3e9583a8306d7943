"""Cross-check of relprop's target sensitivity against Quantus's ``RandomLogit`` on ImageNet sample images.

Run from the repository root: python benchmarks/target_sensitivity_quantus.py DATA [images] [method]
(DATA: the folder holding ``imagenet/`` and ``weights/efficientnet-lite0-57934424.pth``).

Quantus draws the other class itself (``num_classes=1000``, its own seed); the explanations it asks
for are recorded, and relprop's measures are computed on the same two maps (channel sums on the
224×224 input, as the evaluation). Spearman is the same statistic on both sides; Quantus 0.6's SSIM
compares the *flattened* maps (a 1-D SSIM, 7-sample uniform window, data range of both maps),
relprop's the 2-D maps (Gaussian window σ 1.5, min-max-normalised), so those two differ by design.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import torch

import relprop
from relprop.evaluation.contrast import target_similarity
from relprop.evaluation.maps import to_input
from relprop.preprocess import load_image
from relprop.zoo import load_model


def main(data: Path, count: int, method: str) -> None:
    import quantus

    root = data / "imagenet"
    rows = list(csv.DictReader(open(root / "val_labels.csv")))[:count]
    model, pre = load_model("efficientnet_lite0", data / "weights" / "efficientnet-lite0-57934424.pth")
    x = torch.stack(
        [to_input(load_image(root / "val" / r["image"]), (pre.size, pre.size), pre.mean, pre.std) for r in rows]
    ).numpy()
    y = np.array([int(r["label"]) for r in rows])
    asked: list[np.ndarray] = []

    def explain(model, inputs, targets, **kwargs):  # type: ignore[no-untyped-def]
        out = relprop.explain(model, inputs, targets, method=method)
        asked.append((np.asarray(targets).copy(), out[:, 0].copy()))
        return out

    a = relprop.explain(model, x, y, method=method)
    results = {}
    for name, func in (("spearman", quantus.similarity_func.correlation_spearman), ("ssim", quantus.similarity_func.ssim)):
        metric = quantus.RandomLogit(num_classes=1000, similarity_func=func, disable_warnings=True, display_progressbar=False)
        results[name] = metric(model=model, x_batch=x, y_batch=y, a_batch=a, explain_func=explain, device="cpu")
    others, other_maps = asked[0]
    print(f"{method}, {count} images; Quantus's other classes: {others.tolist()}")
    print("image | quantus spearman | relprop spearman | quantus ssim (1-D) | relprop ssim (2-D)")
    for i in range(count):
        ours = target_similarity(a[i, 0], other_maps[i])
        print(f"{rows[i]['image']} | {results['spearman'][i]:.6f} | {ours['spearman']:.6f} | "
              f"{results['ssim'][i]:.4f} | {ours['ssim']:.4f}")
    difference = max(abs(results["spearman"][i] - target_similarity(a[i, 0], other_maps[i])["spearman"]) for i in range(count))
    print(f"largest Spearman difference: {difference:.2e}")


if __name__ == "__main__":
    torch.set_num_threads(2)
    args = sys.argv[1:]
    main(Path(args[0]), int(args[1]) if len(args) > 1 else 4,
         args[2] if len(args) > 2 else "rsp")
