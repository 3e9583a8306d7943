"""From an image to the model's input grid and from an attribution back to the image.

The evaluation never crops: the whole image is resized to the input grid, so every input pixel
has a known place in the original image and the way back is exact.

* ``input_mode="fixed"``: the image (W, H) is resized to (size, size) — the RSP/AE ImageNet setting
  (evaluation.md §6.3);
* ``input_mode="shorter_side"``: the shorter side becomes ``size`` and the longer one
  ``floor(size · long / short)`` — TorchRay's VOC/COCO setting (§1.7).

Both are bilinear resizes with ``align_corners=False`` (pixel-area convention: input pixel centre
``x_in + 0.5 = (x + 0.5) · w / W``), anti-aliased when shrinking. A map (h, w) on the input grid is
brought back to the original (H, W) with the bilinear resize of the same convention (§1.3 step 2),
and a ground-truth mask (H, W) is brought onto the input grid with ``nearest-exact``, which samples
the original pixel under each input pixel's centre (§3.3 step 1).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

InputMode = Literal["fixed", "shorter_side"]
Reduce = Literal["sum", "sum_abs", "max_abs"]
CAFFE_MEAN = (123.68 / 255, 116.779 / 255, 103.939 / 255)  # TorchRay "caffe": 0-255 pixels minus the means
CAFFE_STD = (1 / 255,) * 3


def input_shape(width: int, height: int, mode: InputMode, size: int) -> tuple[int, int]:
    """(h, w) of the input grid for an image of ``width`` × ``height``."""
    if mode == "fixed":
        return size, size
    if mode == "shorter_side":
        short, long = min(width, height), max(width, height)
        other = math.floor(size * long / short)
        return (size, other) if height <= width else (other, size)
    raise ValueError(f"input_mode must be 'fixed' or 'shorter_side'; got {mode!r}.")


def to_input(image: Image.Image, shape: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """RGB PIL image -> normalised float32 (3, h, w) on the input grid ``shape``."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    x = torch.from_numpy(array).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=shape, mode="bilinear", align_corners=False, antialias=True)[0]
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def reduce_channels(attribution: Tensor, how: Reduce = "sum") -> Tensor:
    """(N, C, h, w) attribution -> (N, h, w) map: signed channel sum, sum of |·|, or max of |·| (§1.3 step 1)."""
    if attribution.dim() == 3:
        attribution = attribution[:, None]
    if how == "sum":
        return attribution.sum(dim=1)
    if how == "sum_abs":
        return attribution.abs().sum(dim=1)
    if how == "max_abs":
        return attribution.abs().amax(dim=1)
    raise ValueError(f"reduce must be 'sum', 'sum_abs' or 'max_abs'; got {how!r}.")


def to_original(saliency: Tensor, height: int, width: int) -> Tensor:
    """(h, w) map on the input grid -> (H, W) map on the original image (bilinear, align_corners=False)."""
    resized = F.interpolate(saliency[None, None].double(), size=(height, width), mode="bilinear", align_corners=False)
    return resized[0, 0]


def to_grid(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool mask -> (h, w) bool mask on the input grid (nearest-exact: the pixel under each centre)."""
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8))[None, None].float()
    return F.interpolate(t, size=shape, mode="nearest-exact")[0, 0].numpy() > 0.5


def gaussian_smooth(saliency: Tensor, scale: float) -> Tensor:
    """Separable Gaussian blur of an (H, W) map with σ = scale · max(H, W) (§1.3 step 3).

    Half-width ⌈4σ⌉, kernel normalised to sum 1, replicate padding; ``scale = 0`` returns the map.
    """
    if scale <= 0:
        return saliency
    sigma = scale * max(saliency.shape)
    half = math.ceil(4 * sigma)
    offsets = torch.arange(-half, half + 1, dtype=saliency.dtype, device=saliency.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = F.pad(saliency[None, None], (half, half, half, half), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x[0, 0]


def center_map(height: int, width: int) -> Tensor:
    """The "center" baseline as a map: 1 − distance to (W/2, H/2) / largest distance, on integer pixel coordinates."""
    ys = torch.arange(height, dtype=torch.float64)[:, None]
    xs = torch.arange(width, dtype=torch.float64)[None, :]
    distance = torch.sqrt((xs - width / 2) ** 2 + (ys - height / 2) ** 2)
    return 1 - distance / distance.max().clamp_min(1e-12)
