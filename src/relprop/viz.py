"""Pictures of signed relevance maps (matplotlib).

Colours: red = positive (evidence for the explained class), blue = negative (evidence against
it), white = 0, on a symmetric scale ``[-max|R|, max|R|]`` per map (the linear blue-white-red ramp
of matplotlib's "bwr", computed exactly so that ``R`` and ``-R`` get mirrored colours).  Figures
carry a colour bar of that scale and a legend of the two signs; files are written as PNG or SVG
(chosen by the path's suffix).
"""

import textwrap as _textwrap
from collections.abc import Mapping as _Mapping
from collections.abc import Sequence as _Sequence
from pathlib import Path as _Path

import numpy as _np
import torch as _torch

__all__ = [
    "add_signed_scale",
    "grid_figure",
    "overlay",
    "prediction_title",
    "save_grid",
    "save_heatmap",
    "show_heatmap",
    "signed_colors",
    "to_map",
]

_FORMATS = (".png", ".svg")
_TITLE_WIDTH = 34  # characters per line of a photo's title in a grid
_SIGNS = (("red: evidence for the class", (1.0, 0.0, 0.0)), ("blue: evidence against it", (0.0, 0.0, 1.0)))


def to_map(attribution: _torch.Tensor) -> _np.ndarray:
    """(C, H, W) or (H, W) relevance -> (H, W) numpy map summed over channels."""
    a = attribution.detach().to("cpu", _torch.float64)
    return (a.sum(dim=0) if a.dim() == 3 else a).numpy()


def signed_colors(relevance: _np.ndarray) -> _np.ndarray:
    """(H, W) signed map -> (H, W, 3) RGB in [0, 1]: ``+max|R|`` red (1, 0, 0), ``0`` white,
    ``-max|R|`` blue (0, 0, 1), linear in between. An all-zero map is white."""
    r = _np.asarray(relevance, dtype=_np.float64)
    limit = float(_np.abs(r).max()) if r.size else 0.0
    t = r / limit if limit > 0 else _np.zeros_like(r)
    positive, negative = _np.clip(t, 0, 1), _np.clip(-t, 0, 1)
    return _np.stack([1 - negative, 1 - _np.abs(t), 1 - positive], axis=-1)


def overlay(relevance: _np.ndarray, image: _np.ndarray, alpha: float = 0.7) -> _np.ndarray:
    """The signed colours over a grayscale copy of ``image`` (H, W, 3) uint8 or float in [0, 1].

    Each pixel mixes in its colour with weight ``alpha · |R| / max|R|``: the image shows where the
    relevance is small. Returns (H, W, 3) RGB in [0, 1].
    """
    original = _np.asarray(image)
    picture = original.astype(_np.float64) / (255.0 if original.dtype.kind in "ui" else 1.0)
    gray = picture.mean(axis=2, keepdims=True) if picture.ndim == 3 else picture[..., None]
    if gray.shape[:2] != _np.shape(relevance):
        raise ValueError(f"image is {gray.shape[:2]} but the relevance map is {_np.shape(relevance)}.")
    r = _np.asarray(relevance, dtype=_np.float64)
    limit = float(_np.abs(r).max()) or 1.0
    weight = alpha * (_np.abs(r) / limit)[..., None]
    return (1 - weight) * gray + weight * signed_colors(r)


def prediction_title(label: str, probability: float, kind: str = "prediction") -> str:
    """The caption of a photo: ``prediction: tabby (p = 43.1%)`` (no line break inside the brackets);
    ``kind`` replaces the word ``prediction`` (e.g. ``explained`` for a class that is not the top-1)."""
    return f"{kind}: {label} (p\u00a0=\u00a0{probability:.1%})"


def show_heatmap(ax, relevance: _np.ndarray, image: "_np.ndarray | None" = None, alpha: float = 0.7) -> None:  # type: ignore[no-untyped-def]
    """Draw a signed map on a matplotlib ``ax`` (symmetric scale), optionally over ``image``."""
    ax.imshow(signed_colors(relevance) if image is None else overlay(relevance, image, alpha))
    ax.set_axis_off()


def add_signed_scale(fig, axes, handles: _Sequence = ()) -> None:  # type: ignore[no-untyped-def]
    """Add the key of :func:`signed_colors` to ``fig``: a colour bar beside ``axes`` (one axis or
    several) from ``-max|R|`` (blue, against) through 0 to ``+max|R|`` (red, for), and below the
    figure a legend of the two signs followed by ``handles`` (extra matplotlib artists to explain).

    The figure needs a layout engine that makes room for both (``layout="constrained"``).
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize
    from matplotlib.patches import Patch

    ramp = ListedColormap(signed_colors(_np.linspace(-1.0, 1.0, 257)), name="relprop_signed")
    bar = fig.colorbar(ScalarMappable(Normalize(-1.0, 1.0), ramp), ax=axes, shrink=0.9, aspect=25)
    bar.set_ticks([-1.0, 0.0, 1.0], labels=["−max|R|\nagainst", "0", "+max|R|\nfor"], fontsize=7)
    bar.set_label("relevance, each map on its own scale", fontsize=7)
    signs = [Patch(facecolor=colour, label=label) for label, colour in _SIGNS]
    fig.legend(handles=signs + list(handles), loc="outside lower center", ncols=len(signs) + len(handles), fontsize=8,
               frameon=False)


def save_heatmap(
    relevance: _np.ndarray, path: "str | _Path", image: "_np.ndarray | None" = None, alpha: float = 0.7
) -> _Path:
    """One signed map as a picture with one pixel per map element (PNG or SVG), optionally over
    ``image``; no colour bar (:func:`save_grid` writes a labelled figure)."""
    from matplotlib.image import imsave

    path = _checked(path)
    imsave(path, signed_colors(relevance) if image is None else overlay(relevance, image, alpha))
    return path


def grid_figure(
    images: _Sequence[_np.ndarray],
    maps: _Mapping[str, _Sequence[_np.ndarray]],
    row_titles: "_Sequence[str] | None" = None,
    overlay_images: bool = False,
):  # type: ignore[no-untyped-def]
    """Grid as a matplotlib ``Figure``: one row per image, the image then one signed heatmap per
    method (the mapping's keys are the column titles), a colour bar and the sign legend.

    images: N pictures (H, W, 3); maps: method name -> N maps (H, W); ``row_titles``: one caption
    per image, written above it (e.g. :func:`prediction_title`), wrapped to the column's width;
    ``overlay_images`` draws each map over a grayscale copy of its image.
    """
    from matplotlib.figure import Figure

    if any(len(m) != len(images) for m in maps.values()):
        raise ValueError("every method needs one map per image.")
    if row_titles is not None and len(row_titles) != len(images):
        raise ValueError(f"{len(row_titles)} row titles for {len(images)} images; give one per image.")
    columns = 1 + len(maps)
    fig = Figure(figsize=(2.3 * columns + 1.0, 2.6 * len(images) + 0.5), layout="constrained")
    axes = fig.subplots(len(images), columns, squeeze=False)
    for row, image in enumerate(images):
        axes[row, 0].imshow(image)
        axes[row, 0].set_axis_off()
        if row_titles:
            axes[row, 0].set_title(_wrapped(row_titles[row]), fontsize=8)
        for col, (method, method_maps) in enumerate(maps.items(), start=1):
            show_heatmap(axes[row, col], method_maps[row], image if overlay_images else None)
            if row == 0:
                axes[row, col].set_title(_wrapped(method), fontsize=10)
    add_signed_scale(fig, axes[:, 1:] if maps else axes)
    return fig


def save_grid(
    images: _Sequence[_np.ndarray],
    maps: _Mapping[str, _Sequence[_np.ndarray]],
    path: "str | _Path",
    row_titles: "_Sequence[str] | None" = None,
    overlay_images: bool = False,
) -> _Path:
    """The :func:`grid_figure` of the same arguments written to ``path`` (PNG or SVG by suffix)."""
    path = _checked(path)
    grid_figure(images, maps, row_titles, overlay_images).savefig(path, dpi=110)
    return path


def _wrapped(title: str) -> str:
    """``title`` with each of its lines wrapped to ``_TITLE_WIDTH`` characters."""
    return "\n".join(_textwrap.fill(line, _TITLE_WIDTH) for line in title.splitlines())


def _checked(path: "str | _Path") -> _Path:
    """``path`` as a Path with a supported suffix, its folder created."""
    path = _Path(path)
    if path.suffix.lower() not in _FORMATS:
        raise ValueError(f"cannot save '{path}': use one of the suffixes {', '.join(_FORMATS)}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
