"""relprop.viz: the signed colour scale and the files it writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from relprop.viz import overlay, save_grid, save_heatmap, signed_colors, to_map


def test_colours_are_red_white_blue_on_a_symmetric_scale():
    r = np.array([[2.0, -1.0, 0.0, -2.0, 1.0]])
    colours = signed_colors(r)
    np.testing.assert_allclose(colours[0, 0], [1, 0, 0])  # +max|R|: red
    np.testing.assert_allclose(colours[0, 3], [0, 0, 1])  # -max|R|: blue
    np.testing.assert_allclose(colours[0, 2], [1, 1, 1])  # 0: white
    np.testing.assert_allclose(colours[0, 1], [0.5, 0.5, 1])  # -1 of a scale up to 2: half blue
    np.testing.assert_allclose(colours[0, 4], [1, 0.5, 0.5])
    np.testing.assert_allclose(signed_colors(np.zeros((2, 2))), np.ones((2, 2, 3)))


def test_negating_the_map_mirrors_the_colours():
    r = np.random.default_rng(0).normal(size=(6, 7)) * np.linspace(0.1, 3, 7)
    colours, mirrored = signed_colors(r), signed_colors(-r)
    np.testing.assert_allclose(mirrored[..., 0], colours[..., 2])
    np.testing.assert_allclose(mirrored[..., 2], colours[..., 0])
    np.testing.assert_allclose(mirrored[..., 1], colours[..., 1])
    np.testing.assert_allclose(signed_colors(5 * r), colours)  # the scale is per map


def test_overlay_shows_the_image_where_relevance_is_zero():
    image = np.full((2, 2, 3), 51, dtype=np.uint8)  # gray 0.2
    r = np.array([[0.0, 1.0], [-1.0, 0.5]])
    mixed = overlay(r, image, alpha=0.5)
    np.testing.assert_allclose(mixed[0, 0], [0.2, 0.2, 0.2])
    np.testing.assert_allclose(mixed[0, 1], 0.5 * 0.2 + 0.5 * np.array([1, 0, 0]))
    np.testing.assert_allclose(mixed[1, 0], 0.5 * 0.2 + 0.5 * np.array([0, 0, 1]))
    with pytest.raises(ValueError, match="relevance map"):
        overlay(np.zeros((3, 3)), image)


def test_to_map_sums_channels():
    a = torch.arange(12.0).view(3, 2, 2)
    np.testing.assert_allclose(to_map(a), a.sum(dim=0).numpy())


def test_save_heatmap_png_and_svg(tmp_path):
    r = np.random.default_rng(1).normal(size=(12, 20))
    png = save_heatmap(r, tmp_path / "sub" / "map.png")
    with Image.open(png) as picture:
        assert picture.format == "PNG" and picture.size == (20, 12)
        pixels = np.asarray(picture.convert("RGB")).astype(float) / 255
    np.testing.assert_allclose(pixels, signed_colors(r), atol=1 / 255 + 1e-9)
    svg = save_heatmap(r, tmp_path / "map.svg", image=np.zeros((12, 20, 3)))
    assert "<svg" in svg.read_text()
    with pytest.raises(ValueError, match=".png"):
        save_heatmap(r, tmp_path / "map.bmp")


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_save_grid(tmp_path, suffix):
    images = [np.zeros((8, 8, 3), dtype=np.uint8), np.full((8, 8, 3), 255, dtype=np.uint8)]
    maps = {name: [np.eye(8), -np.eye(8)] for name in ("RSP", "AE", "Grad-CAM")}
    path = save_grid(images, maps, tmp_path / f"grid{suffix}", row_titles=["a", "b"], overlay_images=True)
    assert path.is_file() and path.stat().st_size > 0
    if suffix == ".png":
        with Image.open(path) as picture:
            width, height = picture.size
        assert width / height == pytest.approx(4 / 2, rel=0.05)  # 1 + 3 columns, 2 rows
    else:
        assert "Grad-CAM" in path.read_text()
    with pytest.raises(ValueError, match="one map per image"):
        save_grid(images, {"RSP": [np.eye(8)]}, tmp_path / "bad.png")
