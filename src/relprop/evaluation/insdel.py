"""Insertion / deletion AUC (RISE; evaluation.md §5).

Pixels are moved in order of decreasing saliency (ties by row-major index), ``step`` pixels at a
time, all channels of a pixel together. Deletion replaces them by the zero substrate (the mean
colour in normalised space), insertion copies them from the image onto the blurred substrate.
AUC = (Σ s_i − s_0/2 − s_n/2) / n over the n + 1 scores.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

Score = Callable[[Tensor], Tensor]
"""(B, C, H, W) perturbed inputs -> (B,) scores of the explained class."""


def blur_kernel(size: int = 11, sigma: float = 5.0) -> Tensor:
    """(size, size) kernel: a centred unit impulse Gaussian-filtered with σ (scipy defaults), as RISE."""
    from scipy.ndimage import gaussian_filter

    impulse = np.zeros((size, size))
    impulse[size // 2, size // 2] = 1.0
    return torch.from_numpy(gaussian_filter(impulse, sigma))


def blur(x: Tensor, size: int = 11, sigma: float = 5.0) -> Tensor:
    """Per-channel blur of (N, C, H, W) with :func:`blur_kernel`, zero padding (borders darken toward 0)."""
    channels = x.shape[1]
    kernel = blur_kernel(size, sigma).to(x.dtype).to(x.device)
    return F.conv2d(x, kernel.expand(channels, 1, size, size), padding=size // 2, groups=channels)


def auc(scores: Sequence[float] | np.ndarray) -> float:
    """Trapezoid area under n + 1 equally spaced scores on x ∈ [0, 1]."""
    s = np.asarray(scores, dtype=np.float64)
    n = s.size - 1
    return float((s.sum() - s[0] / 2 - s[-1] / 2) / n)


def causal_curve(
    score: Score,
    x: Tensor,
    saliency: Tensor,
    mode: str,
    *,
    step: int = 224,
    substrate: str | None = None,
    chunk: int = 32,
) -> np.ndarray:
    """Scores (n + 1,) of the explained class while pixels are deleted or inserted.

    x: (C, H, W) normalised image; saliency: (H, W) on the same grid. ``substrate``: ``"zero"`` or
    ``"blur"``; default zero for deletion and blur for insertion.
    """
    if mode not in ("insertion", "deletion"):
        raise ValueError(f"mode must be 'insertion' or 'deletion'; got {mode!r}.")
    if saliency.shape != x.shape[1:]:
        raise ValueError(f"saliency {tuple(saliency.shape)} must match the image grid {tuple(x.shape[1:])}.")
    substrate = substrate or ("zero" if mode == "deletion" else "blur")
    if substrate == "zero":
        filler = torch.zeros_like(x)
    elif substrate == "blur":
        filler = blur(x[None])[0]
    else:
        raise ValueError(f"substrate must be 'zero' or 'blur'; got {substrate!r}.")
    start, finish = (x, filler) if mode == "deletion" else (filler, x)
    pixels = saliency.numel()
    order = torch.from_numpy(np.argsort(-saliency.detach().cpu().double().numpy().ravel(), kind="stable"))
    n = math.ceil(pixels / step)
    # rank[p] = position of pixel p in the order; step i has moved the pixels with rank < i·step
    rank = torch.empty(pixels, dtype=torch.long)
    rank[order] = torch.arange(pixels)
    rank = rank.view(1, *saliency.shape).to(x.device)
    scores = []
    for first in range(0, n + 1, chunk):
        counts = torch.arange(first, min(n + 1, first + chunk), device=x.device) * step
        moved = (rank < counts.view(-1, 1, 1)).unsqueeze(1)  # (B, 1, H, W)
        batch = torch.where(moved, finish, start)
        with torch.no_grad():
            scores.append(score(batch).detach().double().cpu())
    return torch.cat(scores).numpy()
