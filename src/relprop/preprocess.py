"""Turning image files into model inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TFLITE_MEAN = (127 / 255,) * 3  # EfficientNet-Lite: (x·255 − 127) / 128
TFLITE_STD = (128 / 255,) * 3


INTEGER_FULL_SCALE = 65535
"""Nominal white of 16-bit (and 32-bit integer) images: PNG/TIFF 16-bit samples run 0..65535."""


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as the 8-bit RGB picture an image viewer shows.

    The EXIF orientation is applied; alpha is composited on white; grayscale, palette and CMYK are
    converted to RGB. 16-bit (and 32-bit integer) samples are scaled from 0..65535 and float samples
    from [0, 1] to 0..255; values outside that range raise ValueError, as does an image too large
    for Pillow (its decompression-bomb limit), so that every caller treats it as unreadable.
    """
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
    except Image.DecompressionBombError as exc:
        raise ValueError(
            f"image too large to open: {exc} Raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file."
        ) from exc
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return _high_bit_depth_to_8_bits(image).convert("RGB")
    bands = image.getbands()
    if "A" in bands or "a" in bands or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_bit_depth_to_8_bits(image: Image.Image) -> Image.Image:
    """A single-band integer (0..65535) or float ([0, 1]) image as mode L, each value's share of full scale × 255."""
    values = np.asarray(image, dtype=np.float64)
    full_scale, expected = (1.0, "[0, 1]") if image.mode == "F" else (float(INTEGER_FULL_SCALE), "0..65535")
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > full_scale:
        found = "non-finite values" if not np.isfinite(values).all() else f"values {values.min():g}..{values.max():g}"
        raise ValueError(
            f"{image.mode} image with {found}; relprop reads {'float' if image.mode == 'F' else 'integer'} images "
            f"with values in {expected}: convert it to 8-bit RGB with the scaling it needs"
        )
    return Image.fromarray(np.round(values * (255.0 / full_scale)).astype(np.uint8), mode="L")


@dataclass(frozen=True)
class Preprocess:
    """Resize the short side to ``resize``, centre-crop ``size``, scale to [0, 1], normalise."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    size: int = 224
    resize: int = 256

    def crop(self, image: Image.Image) -> Image.Image:
        """The RGB crop the model sees (for display)."""
        w, h = image.size
        scale = self.resize / min(w, h)
        image = image.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))), Image.BILINEAR)
        w, h = image.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        return image.crop((left, top, left + self.size, top + self.size))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> normalised (3, size, size) float32 tensor."""
        array = np.asarray(self.crop(image), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (tensor - mean) / std
