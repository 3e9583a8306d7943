"""Grid pointing game (Böhle et al., CoDA-Nets, CVPR 2021; B-cos networks, CVPR 2022).

Four images of four different classes, each classified correctly by the model on its own, are put
side by side in a 2×2 mosaic (cells row-major: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right,
every cell ``cell`` × ``cell`` pixels). Each cell's class is explained on the whole mosaic and
scored by the share of the map's positive relevance that lies inside that cell: a uniform map
scores 0.25, a map whose positive relevance all lies in the right cell 1.0.

The images come from a *pool*: the correctly classified images (top-1 = the image's only
ground-truth class, at the cell's resolution), the most confident one per class, the ``size`` most
confident of those. The mosaics are drawn from the pool with a seeded generator, four different
images each, so the list depends only on the pool and the seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from .pointing import energy_proportion

CELLS = 4
HISTOGRAM_BINS = 10


@dataclass(frozen=True)
class Candidate:
    """One image as the model classified it on its own: its class, the model's top-1 and its confidence."""

    index: int
    label: int
    predicted: int
    confidence: float  # softmax probability of ``label``

    @property
    def correct(self) -> bool:
        return self.predicted == self.label


def select_pool(candidates: Iterable[Candidate], size: int) -> list[Candidate]:
    """The correctly classified candidates, the most confident per class, the ``size`` most confident
    of those (ties: lower image index first), most confident first."""
    best: dict[int, Candidate] = {}
    for c in candidates:
        if c.correct and (c.label not in best or (-c.confidence, c.index) < (-best[c.label].confidence, best[c.label].index)):
            best[c.label] = c
    return sorted(best.values(), key=lambda c: (-c.confidence, c.index))[:size]


def draw_mosaics(pool: Sequence[Candidate], count: int, seed: int) -> list[dict]:
    """``count`` mosaics ``{"number", "images", "labels"}`` of four different pool images each
    (so four different classes), drawn by ``numpy.random.default_rng(seed)``."""
    if len(pool) < CELLS:
        raise ValueError(f"the grid pointing game needs at least {CELLS} correctly classified images; found {len(pool)}.")
    rng = np.random.default_rng(seed)
    mosaics = []
    for number in range(count):
        picked = [pool[int(i)] for i in rng.choice(len(pool), size=CELLS, replace=False)]
        mosaics.append({"number": number, "images": [c.index for c in picked], "labels": [c.label for c in picked]})
    return mosaics


def assemble(cells: Tensor) -> Tensor:
    """(4, C, s, s) images -> (C, 2s, 2s) mosaic, cell k at row k // 2, column k % 2."""
    if cells.dim() != 4 or cells.shape[0] != CELLS:
        raise ValueError(f"a mosaic needs 4 images (4, C, s, s); got {tuple(cells.shape)}.")
    top = torch.cat([cells[0], cells[1]], dim=2)
    bottom = torch.cat([cells[2], cells[3]], dim=2)
    return torch.cat([top, bottom], dim=1)


def cell_mask(shape: tuple[int, int], cell: int) -> np.ndarray:
    """(H, W) bool mask of cell ``cell`` (0-3) of a 2×2 mosaic of shape (H, W) (H, W even)."""
    height, width = shape
    if height % 2 or width % 2:
        raise ValueError(f"a 2×2 mosaic has even sides; got {shape}.")
    mask = np.zeros(shape, dtype=bool)
    row, column = divmod(cell, 2)
    mask[row * height // 2 : (row + 1) * height // 2, column * width // 2 : (column + 1) * width // 2] = True
    return mask


def cell_share(saliency: Tensor | np.ndarray, cell: int) -> float:
    """Σ of the positive part of an (H, W) mosaic map inside cell ``cell`` / Σ of it over the mosaic;
    NaN when the map has no positive value."""
    return energy_proportion(saliency, cell_mask(tuple(saliency.shape), cell), "clip")  # type: ignore[arg-type]


def summarise(scores: Sequence[float | None]) -> dict:
    """Mean, quartiles and a 10-bin histogram over [0, 1] of the cell scores; an undefined score
    (None: a map without positive relevance) counts as 0 and is counted under ``undefined``."""
    values = np.array([0.0 if s is None else s for s in scores], dtype=np.float64)
    if values.size == 0:
        return {"all": None, "cells": 0, "undefined": 0}
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(0.0, 1.0))
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {
        "all": float(values.mean()),
        "difficult": None,
        "per_class": {},
        "median": float(median),
        "quartiles": [float(q1), float(median), float(q3)],
        "std": float(values.std()),
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
        "cells": int(values.size),
        "mosaics": int(values.size // CELLS),
        "undefined": sum(s is None for s in scores),
        "chance": 1.0 / CELLS,
        "note": "share of the positive relevance inside the explained class's cell; uniform map = 0.25",
    }
