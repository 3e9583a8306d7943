"""Pointing game with TorchRay semantics and the energy-based pointing game (evaluation.md §1-2).

A unit is one (image, class) pair. The point is the arg-max of the map at the original resolution
(first maximum in row-major order); it hits when some pixel of the class's region lies strictly
closer than ``tolerance`` pixels. Accuracy = mean over classes of hits / (hits + misses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from torch import Tensor

TOLERANCE = 15


def argmax_point(saliency: Tensor | np.ndarray) -> tuple[int, int]:
    """(u, v) = (column, row) of the first maximum of an (H, W) map in row-major order."""
    flat = torch.as_tensor(saliency).reshape(-1)
    index = int(torch.argmax(flat))  # torch returns the first maximal index
    width = saliency.shape[1]
    return index % width, index // width


def is_constant(saliency: Tensor | np.ndarray) -> bool:
    """Whether every value of the map is equal (such a map points at (0, 0))."""
    t = torch.as_tensor(saliency)
    return bool((t == t.reshape(-1)[0]).all())


def center_point(width: int, height: int) -> tuple[float, float]:
    """The "center" baseline's point (W/2, H/2) in original-image coordinates (§1.6)."""
    return width / 2, height / 2


def hit(region: np.ndarray, point: tuple[float, float], tolerance: float = TOLERANCE) -> bool:
    """Whether a pixel (x, y) of ``region`` (H, W bool) has (x − u)² + (y − v)² < tolerance² (§1.4)."""
    u, v = point
    height, width = region.shape
    x0, x1 = max(0, math.ceil(u - tolerance)), min(width - 1, math.floor(u + tolerance))
    y0, y1 = max(0, math.ceil(v - tolerance)), min(height - 1, math.floor(v + tolerance))
    if x0 > x1 or y0 > y1:
        return False
    ys, xs = np.mgrid[y0 : y1 + 1, x0 : x1 + 1]
    near = (xs - u) ** 2 + (ys - v) ** 2 < tolerance**2
    return bool((near & region[y0 : y1 + 1, x0 : x1 + 1]).any())


@dataclass(frozen=True)
class PointingUnit:
    """One scored pair: its class and whether it hit."""

    label: int
    hit: bool


def pointing_accuracy(units: Iterable[PointingUnit], class_names: tuple[str, ...]) -> dict:
    """Class-balanced accuracy in percent (§1.5): mean over classes with ≥ 1 scored pair.

    Also the overall hit rate Σhits / Σpairs and per-class accuracies and counts.
    """
    hits = np.zeros(len(class_names), dtype=np.int64)
    pairs = np.zeros(len(class_names), dtype=np.int64)
    for unit in units:
        pairs[unit.label] += 1
        hits[unit.label] += int(unit.hit)
    scored = pairs > 0
    if not scored.any():
        return {"accuracy": None, "overall": None, "pairs": 0, "classes": 0, "per_class": {}}
    per_class = {
        class_names[c]: {"accuracy": 100.0 * hits[c] / pairs[c], "hits": int(hits[c]), "pairs": int(pairs[c])}
        for c in np.flatnonzero(scored)
    }
    return {
        "accuracy": float(100.0 * np.mean(hits[scored] / pairs[scored])),
        "overall": float(100.0 * hits.sum() / pairs.sum()),
        "pairs": int(pairs.sum()),
        "classes": int(scored.sum()),
        "per_class": per_class,
    }


def energy_proportion(saliency: Tensor | np.ndarray, region: np.ndarray, negative: str = "clip") -> float:
    """Σ_{p ∈ B} S⁺(p) / Σ_p S⁺(p) on one grid (§2); NaN when Σ S⁺ = 0.

    ``negative="clip"``: S⁺ = max(S, 0); ``"abs"``: S⁺ = |S|.
    """
    s = np.asarray(torch.as_tensor(saliency).detach().cpu().double())
    if negative == "clip":
        s = np.maximum(s, 0.0)
    elif negative == "abs":
        s = np.abs(s)
    else:
        raise ValueError(f"negative must be 'clip' or 'abs'; got {negative!r}.")
    total = s.sum()
    if total <= 0:
        return float("nan")
    return float(s[region].sum() / total)
