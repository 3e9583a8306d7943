"""Turning image files into model inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TFLITE_MEAN = (127 / 255,) * 3  # EfficientNet-Lite: (x·255 − 127) / 128
TFLITE_STD = (128 / 255,) * 3


def load_image(path: str | Path) -> Image.Image:
    """Open an image file of any mode as RGB (alpha dropped, grayscale replicated)."""
    with Image.open(path) as image:
        image.load()
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")


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
