"""Mirror check of issue 15: do the maps of horizontally mirrored images mirror?

    python benchmarks/mirror_check.py --weights efficientnet-lite0.pth IMAGE [IMAGE ...] \
        [--methods rsp ae gradcam] [--occlusion] [--size 224] [--shifts]

For every image and method it explains the image and its mirror (top class of the image) and prints
the x of the positive centre of mass of both maps (a map that mirrors gives ``x + x_mirror = 1``) and
the Pearson correlation of the mirror's map with the mirrored map, at full resolution and after
8×8 and 32×32 average pooling (Grad-CAM's own resolution).  ``--occlusion`` adds a model-agnostic
reference: the logit drop under a grey patch of about 32 pixels moved in steps of 8 (a grid that
mirrors exactly), i.e. how far the model's own evidence mirrors.  ``--shifts`` adds, per image, the
horizontal translation of the mirrored map (in pixels, positive = right, up to 48) that correlates best
with the mirror's map, and that correlation: a map that follows a network whose windows sit off-centre
by δ pixels mirrors up to a translation of 2δ.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
import torch.nn.functional as F

import relprop
from relprop.preprocess import load_image
from relprop.zoo import EFFICIENTNET_LITE0, load_model


def centre_x(maps: torch.Tensor) -> list[float]:
    """x of the positive centre of mass of each (N, H, W) map, 0 = left edge, 1 = right edge."""
    positive = maps.clamp(min=0)
    xs = torch.linspace(0, 1, maps.shape[-1], dtype=maps.dtype)
    return ((positive.sum(-2) * xs).sum(-1) / positive.sum((-2, -1))).tolist()


def correlation(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Pearson correlation of each pair of (N, H, W) maps."""
    a, b = a.flatten(1), b.flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).tolist()


def occlusion(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, step: int = 8) -> torch.Tensor:
    """Drop of the target logit with a zero (grey after normalisation) patch at each grid position: (N, h, w).
    The patch is about 32 pixels, sized so that the grid covers the image edge to edge (and so mirrors)."""
    patch = x.shape[-1] - step * ((x.shape[-1] - 32) // step)
    starts = range(0, x.shape[-1] - patch + 1, step)
    out = torch.zeros(x.shape[0], len(starts), len(starts))
    with torch.no_grad():
        for n in range(x.shape[0]):
            base = model(x[n : n + 1])[0, targets[n]]
            for i, top in enumerate(starts):
                batch = x[n : n + 1].repeat(len(starts), 1, 1, 1)
                for j, left in enumerate(starts):
                    batch[j, :, top : top + patch, left : left + patch] = 0
                out[n, i] = base - model(batch)[:, targets[n]]
    return out


def translated(maps: torch.Tensor, right: int, down: int = 0) -> torch.Tensor:
    """(..., H, W) maps moved ``right`` columns and ``down`` rows (negative: left, up); zeros enter."""
    out = torch.zeros_like(maps)
    height, width = maps.shape[-2:]
    rows_to, rows_from = slice(max(down, 0), height + min(down, 0)), slice(max(-down, 0), height - max(down, 0))
    cols_to, cols_from = slice(max(right, 0), width + min(right, 0)), slice(max(-right, 0), width - max(right, 0))
    out[..., rows_to, cols_to] = maps[..., rows_from, cols_from]
    return out


def best_shifts(maps: torch.Tensor, mirror_maps: torch.Tensor, pixels_per_cell: int) -> list[tuple[int, float]]:
    """Per sample, (shift in pixels, correlation) of the translation of the mirrored map, up to 48 pixels
    either way, that correlates best with the mirror's map."""
    reach = 48 // pixels_per_cell
    scores = {c: correlation(mirror_maps, translated(maps.flip(-1), c)) for c in range(-reach, reach + 1)}
    best = [max(scores, key=lambda c: scores[c][n]) for n in range(maps.shape[0])]
    return [(c * pixels_per_cell, scores[c][n]) for n, c in enumerate(best)]


def report(name: str, maps: torch.Tensor, mirror_maps: torch.Tensor, shifts: bool, pixels_per_cell: int = 1) -> None:
    line = f"{name:10s} centre x {[round(v, 3) for v in centre_x(maps)]} mirror {[round(v, 3) for v in centre_x(mirror_maps)]}"
    for pool in (1, 8, 32):
        if maps.shape[-1] >= 2 * pool:
            a = F.avg_pool2d(mirror_maps[:, None], pool)[:, 0]
            b = F.avg_pool2d(maps.flip(-1)[:, None], pool)[:, 0]
            line += f" | corr at {maps.shape[-1] // pool}px {[round(v, 3) for v in correlation(a, b)]}"
    if shifts:
        line += f" | best shift (px, corr) {[(s, round(c, 3)) for s, c in best_shifts(maps, mirror_maps, pixels_per_cell)]}"
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--model", default=EFFICIENTNET_LITE0, help="model name (default: %(default)s)")
    parser.add_argument("--weights", default=None, help="state-dict file (default: the model's default weights)")
    parser.add_argument("--methods", nargs="+", default=["rsp", "ae", "gradcam"], help="default: %(default)s")
    parser.add_argument("--size", type=int, default=None,
                        help="input side in pixels (default: the model's, 224 for EfficientNet-Lite0)")
    parser.add_argument("--occlusion", action="store_true", help="also the occlusion reference (slow)")
    parser.add_argument("--shifts", action="store_true", help="also the best horizontal translation of each mirrored map")
    args = parser.parse_args()
    model, preprocess = load_model(args.model, args.weights)
    if args.size:
        preprocess = dataclasses.replace(preprocess, size=args.size, resize=round(args.size * preprocess.resize / preprocess.size))
    x = torch.stack([preprocess(load_image(path)) for path in args.images])
    with torch.no_grad():
        targets = model(x).argmax(1)
    for name in args.methods:
        method = relprop.get_method(name)(model)
        report(name, method.attribute(x, targets).sum(1), method.attribute(x.flip(-1), targets).sum(1), args.shifts)
    if args.occlusion:
        step = 8
        report("occlusion", occlusion(model, x, targets, step), occlusion(model, x.flip(-1), targets, step), args.shifts, step)


if __name__ == "__main__":
    main()
