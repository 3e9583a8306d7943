"""Pictures of signed relevance maps (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch


def to_map(attribution: torch.Tensor) -> np.ndarray:
    """(C, H, W) or (H, W) relevance -> (H, W) numpy map summed over channels."""
    a = attribution.detach().to("cpu", torch.float64)
    return (a.sum(dim=0) if a.dim() == 3 else a).numpy()


def show_heatmap(ax, relevance: np.ndarray, image: np.ndarray | None = None, alpha: float = 0.6) -> None:  # type: ignore[no-untyped-def]
    """Red = positive, blue = negative, symmetric scale ``[-max|R|, max|R|]``; optional overlay on ``image``."""
    limit = float(np.abs(relevance).max()) or 1.0
    if image is not None:
        ax.imshow(np.asarray(image).mean(axis=2), cmap="gray")
    ax.imshow(relevance, cmap="seismic", vmin=-limit, vmax=limit, alpha=alpha if image is not None else 1.0)
    ax.set_axis_off()


def save_grid(
    images: Sequence[np.ndarray],
    maps: Mapping[str, Sequence[np.ndarray]],
    path: str | Path,
    row_titles: Sequence[str] | None = None,
) -> Path:
    """One row per image: the image, then one signed heatmap per method (PNG or SVG by suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 1 + len(maps)
    fig, axes = plt.subplots(len(images), columns, figsize=(2.4 * columns, 2.4 * len(images)), squeeze=False)
    for row, image in enumerate(images):
        axes[row, 0].imshow(image)
        axes[row, 0].set_axis_off()
        if row_titles:
            axes[row, 0].set_title(row_titles[row], fontsize=8)
        for col, (method, method_maps) in enumerate(maps.items(), start=1):
            show_heatmap(axes[row, col], method_maps[row])
            if row == 0:
                axes[row, col].set_title(method, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
