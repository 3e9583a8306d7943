"""Pictures of signed relevance maps (matplotlib).

Colours: red = positive, blue = negative, white = 0, on a symmetric scale ``[-max|R|, max|R|]``
per map (the linear blue-white-red ramp of matplotlib's "bwr", computed exactly so that ``R`` and
``-R`` get mirrored colours).  Files are written as PNG or SVG (chosen by the path's suffix).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

FORMATS = (".png", ".svg")


def to_map(attribution: torch.Tensor) -> np.ndarray:
    """(C, H, W) or (H, W) relevance -> (H, W) numpy map summed over channels."""
    a = attribution.detach().to("cpu", torch.float64)
    return (a.sum(dim=0) if a.dim() == 3 else a).numpy()


def signed_colors(relevance: np.ndarray) -> np.ndarray:
    """(H, W) signed map -> (H, W, 3) RGB in [0, 1]: ``+max|R|`` red (1, 0, 0), ``0`` white,
    ``-max|R|`` blue (0, 0, 1), linear in between. An all-zero map is white."""
    r = np.asarray(relevance, dtype=np.float64)
    limit = float(np.abs(r).max()) if r.size else 0.0
    t = r / limit if limit > 0 else np.zeros_like(r)
    positive, negative = np.clip(t, 0, 1), np.clip(-t, 0, 1)
    return np.stack([1 - negative, 1 - np.abs(t), 1 - positive], axis=-1)


def overlay(relevance: np.ndarray, image: np.ndarray, alpha: float = 0.7) -> np.ndarray:
    """The signed colours over a grayscale copy of ``image`` (H, W, 3) uint8 or float in [0, 1].

    Each pixel mixes in its colour with weight ``alpha · |R| / max|R|``: the image shows where the
    relevance is small. Returns (H, W, 3) RGB in [0, 1].
    """
    original = np.asarray(image)
    picture = original.astype(np.float64) / (255.0 if original.dtype.kind in "ui" else 1.0)
    gray = picture.mean(axis=2, keepdims=True) if picture.ndim == 3 else picture[..., None]
    if gray.shape[:2] != np.shape(relevance):
        raise ValueError(f"image is {gray.shape[:2]} but the relevance map is {np.shape(relevance)}.")
    r = np.asarray(relevance, dtype=np.float64)
    limit = float(np.abs(r).max()) or 1.0
    weight = alpha * (np.abs(r) / limit)[..., None]
    return (1 - weight) * gray + weight * signed_colors(r)


def show_heatmap(ax, relevance: np.ndarray, image: np.ndarray | None = None, alpha: float = 0.7) -> None:  # type: ignore[no-untyped-def]
    """Draw a signed map on a matplotlib ``ax`` (symmetric scale), optionally over ``image``."""
    ax.imshow(signed_colors(relevance) if image is None else overlay(relevance, image, alpha))
    ax.set_axis_off()


def save_heatmap(
    relevance: np.ndarray, path: str | Path, image: np.ndarray | None = None, alpha: float = 0.7
) -> Path:
    """One signed map as a picture with one pixel per map element (PNG or SVG), optionally over ``image``."""
    from matplotlib.image import imsave

    path = _checked(path)
    imsave(path, signed_colors(relevance) if image is None else overlay(relevance, image, alpha))
    return path


def save_grid(
    images: Sequence[np.ndarray],
    maps: Mapping[str, Sequence[np.ndarray]],
    path: str | Path,
    row_titles: Sequence[str] | None = None,
    overlay_images: bool = False,
) -> Path:
    """Grid figure: one row per image, the image then one signed heatmap per method (the mapping's
    keys are the column titles); PNG or SVG by suffix.

    images: N pictures (H, W, 3); maps: method name -> N maps (H, W); ``overlay_images`` draws
    each map over its image.
    """
    from matplotlib.figure import Figure

    path = _checked(path)
    if any(len(m) != len(images) for m in maps.values()):
        raise ValueError("every method needs one map per image.")
    columns = 1 + len(maps)
    fig = Figure(figsize=(2.4 * columns, 2.4 * len(images)))
    axes = fig.subplots(len(images), columns, squeeze=False)
    for row, image in enumerate(images):
        axes[row, 0].imshow(image)
        axes[row, 0].set_axis_off()
        if row_titles:
            axes[row, 0].set_title(row_titles[row], fontsize=8)
        for col, (method, method_maps) in enumerate(maps.items(), start=1):
            show_heatmap(axes[row, col], method_maps[row], image if overlay_images else None)
            if row == 0:
                axes[row, col].set_title(method, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _checked(path: str | Path) -> Path:
    """``path`` as a Path with a supported suffix, its folder created."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"cannot save '{path}': use one of the suffixes {', '.join(FORMATS)}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
