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


def to_map(attribution: "_torch.Tensor | _np.ndarray") -> _np.ndarray:
    """Relevance summed over channels as a float64 numpy array: (C, H, W) -> (H, W), a batch
    (N, C, H, W) -> (N, H, W) (iterating over it gives one map per image); (H, W) is kept."""
    a = _float64(attribution)
    if a.ndim not in (2, 3, 4):
        raise ValueError(f"relevance must be (H, W), (C, H, W) or (N, C, H, W); got shape {a.shape}.")
    return a.sum(axis=-3) if a.ndim > 2 else a


def _float64(values: "_torch.Tensor | _np.ndarray") -> _np.ndarray:
    if isinstance(values, _torch.Tensor):
        return values.detach().to("cpu", _torch.float64).numpy()
    return _np.asarray(values, dtype=_np.float64)


def _one_map(relevance: "_torch.Tensor | _np.ndarray") -> _np.ndarray:
    """One (H, W) map from (H, W), (C, H, W) or (1, C, H, W) relevance (channels summed)."""
    r = to_map(relevance)
    if r.ndim == 3 and r.shape[0] == 1:
        r = r[0]
    if r.ndim != 2:
        raise ValueError(
            f"a relevance map must be (H, W) or (C, H, W); got shape {r.shape}. For a batch, pass one map per "
            "image: to_map(maps) gives (N, H, W)."
        )
    return r


def _picture(image: "_torch.Tensor | _np.ndarray") -> _np.ndarray:
    """An image to show: (H, W, 3), (H, W) or channels-first (3, H, W) / (1, H, W), numpy or torch, uint8 or
    float.  Floats outside [0, 1] (a normalised model input) are rescaled to [0, 1] for display."""
    picture = image.detach().cpu().numpy() if isinstance(image, _torch.Tensor) else _np.asarray(image)
    if picture.ndim == 3 and picture.shape[0] in (1, 3) and picture.shape[-1] not in (1, 3):
        picture = _np.moveaxis(picture, 0, -1)
    if picture.ndim == 3 and picture.shape[-1] == 1:
        picture = picture[..., 0]
    if picture.ndim not in (2, 3) or (picture.ndim == 3 and picture.shape[-1] != 3):
        raise ValueError(f"an image must be (H, W, 3), (3, H, W) or (H, W); got shape {picture.shape}.")
    if picture.dtype.kind == "f" and picture.size and (picture.min() < 0 or picture.max() > 1):
        low, high = float(picture.min()), float(picture.max())
        picture = (picture - low) / (high - low if high > low else 1.0)
    return picture


def signed_colors(relevance: _np.ndarray) -> _np.ndarray:
    """(H, W) signed map -> (H, W, 3) RGB in [0, 1]: ``+max|R|`` red (1, 0, 0), ``0`` white,
    ``-max|R|`` blue (0, 0, 1), linear in between. An all-zero map is white."""
    r = _np.asarray(relevance, dtype=_np.float64)
    limit = float(_np.abs(r).max()) if r.size else 0.0
    t = r / limit if limit > 0 else _np.zeros_like(r)
    positive, negative = _np.clip(t, 0, 1), _np.clip(-t, 0, 1)
    return _np.stack([1 - negative, 1 - _np.abs(t), 1 - positive], axis=-1)


def overlay(relevance: _np.ndarray, image: _np.ndarray, alpha: float = 0.7) -> _np.ndarray:
    """The signed colours over a grayscale copy of ``image`` (an image as :func:`grid_figure` takes it).

    Each pixel mixes in its colour with weight ``alpha · |R| / max|R|``: the image shows where the
    relevance is small. Returns (H, W, 3) RGB in [0, 1].
    """
    original = _picture(image)
    picture = original.astype(_np.float64) / (255.0 if original.dtype.kind in "ui" else 1.0)
    gray = picture.mean(axis=2, keepdims=True) if picture.ndim == 3 else picture[..., None]
    r = _one_map(relevance)
    if gray.shape[:2] != r.shape:
        raise ValueError(f"image is {gray.shape[:2]} but the relevance map is {r.shape}.")
    limit = float(_np.abs(r).max()) or 1.0
    weight = alpha * (_np.abs(r) / limit)[..., None]
    return (1 - weight) * gray + weight * signed_colors(r)


def prediction_title(label: str, probability: float, kind: str = "prediction") -> str:
    """The caption of a photo: ``prediction: tabby (p = 43.1%)`` (no line break inside the brackets);
    ``kind`` replaces the word ``prediction`` (e.g. ``explained`` for a class that is not the top-1)."""
    return f"{kind}: {label} (p\u00a0=\u00a0{probability:.1%})"


def show_heatmap(ax, relevance: _np.ndarray, image: "_np.ndarray | None" = None, alpha: float = 0.7) -> None:  # type: ignore[no-untyped-def]
    """Draw a signed map (H, W) or (C, H, W), numpy or torch, on a matplotlib ``ax`` (symmetric scale),
    optionally over ``image``."""
    ax.imshow(signed_colors(_one_map(relevance)) if image is None else overlay(relevance, image, alpha))
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
    """One signed map (H, W) or (C, H, W) as a picture with one pixel per map element (PNG or SVG),
    optionally over ``image``; no colour bar (:func:`save_grid` writes a labelled figure)."""
    from matplotlib.image import imsave

    path = _checked(path)
    imsave(path, signed_colors(_one_map(relevance)) if image is None else overlay(relevance, image, alpha))
    return path


def grid_figure(
    images: _Sequence[_np.ndarray],
    maps: _Mapping[str, _Sequence[_np.ndarray]],
    row_titles: "_Sequence[str] | None" = None,
    overlay_images: bool = False,
):  # type: ignore[no-untyped-def]
    """Grid as a matplotlib ``Figure``: one row per image, the image then one signed heatmap per
    method (the mapping's keys are the column titles), a colour bar and the sign legend.

    images: N pictures (H, W, 3), (3, H, W) or (H, W), numpy or torch (a model's input batch works: floats
    outside [0, 1] are rescaled per image for display); maps: method name -> N maps (H, W) or (C, H, W)
    (an ``attribute`` result works); ``row_titles``: one caption per image, written above it (e.g.
    :func:`prediction_title`), wrapped to the column's width; ``overlay_images`` draws each map over a
    grayscale copy of its image.
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
        axes[row, 0].imshow(_picture(image), cmap="gray")
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
