"""relprop.viz: the signed colour scale and the files it writes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import relprop
from relprop import viz
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
    batch = torch.arange(24.0).view(2, 3, 2, 2)  # an attribute() result: one (H, W) map per image
    np.testing.assert_allclose(to_map(batch), batch.sum(dim=1).numpy())
    np.testing.assert_allclose(to_map(a.numpy()), a.sum(dim=0).numpy())
    with pytest.raises(ValueError, match=r"\(N, C, H, W\); got shape \(4,\)"):
        to_map(torch.zeros(4))


def test_heatmaps_take_a_channel_map_as_attribute_returns_it(tmp_path):
    """A (C, H, W) tensor is summed over its channels (it was drawn as (C, H, W, 3) colours: a garbled PNG)."""
    a = torch.from_numpy(np.random.default_rng(2).normal(size=(3, 6, 10)))
    with Image.open(save_heatmap(a, tmp_path / "map.png")) as picture:
        assert picture.size == (10, 6)
        pixels = np.asarray(picture.convert("RGB")).astype(float) / 255
    np.testing.assert_allclose(pixels, signed_colors(a.sum(0).numpy()), atol=1 / 255 + 1e-9)
    with pytest.raises(ValueError, match=r"For a batch, pass one map per image: to_map\(maps\)"):
        save_heatmap(torch.zeros(2, 3, 6, 10), tmp_path / "batch.png")


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
        assert 1.5 < width / height < 2.5  # 1 + 3 columns and a colour bar, 2 rows and a legend
    else:
        assert "Grad-CAM" in path.read_text()
    with pytest.raises(ValueError, match="one map per image"):
        save_grid(images, {"RSP": [np.eye(8)]}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="one per image"):
        save_grid(images, maps, tmp_path / "bad.png", row_titles=["only one"])


def test_grid_takes_the_model_input_batch_and_the_attribute_result(tmp_path):
    """Channels-first, normalised image tensors (N, 3, H, W) are shown channels-last and rescaled to [0, 1];
    the maps may be the (N, C, H, W) result of ``attribute``.  Before, matplotlib refused the images."""
    x = torch.from_numpy(np.random.default_rng(3).normal(size=(2, 3, 8, 8)))
    maps = torch.from_numpy(np.random.default_rng(4).normal(size=(2, 3, 8, 8)))
    fig = viz.grid_figure(x, {"RSP": maps}, overlay_images=True)
    shown = fig.axes[0].get_images()[0].get_array()
    expected = (x[0].permute(1, 2, 0) - x[0].min()) / (x[0].max() - x[0].min())
    np.testing.assert_allclose(np.asarray(shown), expected.numpy(), atol=1e-12)
    assert save_grid(x, {"RSP": maps}, tmp_path / "grid.png").is_file()
    gray = viz.grid_figure([np.linspace(0, 1, 64).reshape(8, 8)], {"RSP": [np.eye(8)]})
    assert gray.axes[0].get_images()[0].get_cmap().name == "gray"
    with pytest.raises(ValueError, match=r"an image must be \(H, W, 3\), \(3, H, W\) or \(H, W\); got shape \(8, 8, 4\)"):
        viz.grid_figure([np.zeros((8, 8, 4))], {"RSP": [np.eye(8)]})


def test_grid_has_a_colour_bar_a_sign_legend_and_prediction_titles():
    """Issue 15 §3: a colour bar of the symmetric scale, a legend red = for / blue = against, and
    "prediction: class (p = …)" above each photo, long titles wrapped rather than cut."""
    images = [np.zeros((8, 8, 3), dtype=np.uint8)] * 2
    maps = {"RSP": [np.eye(8), -np.eye(8)], "a method with a rather long name indeed": [np.eye(8), np.eye(8)]}
    long_label = "German short-haired pointer, with many words after it"
    titles = [viz.prediction_title("tabby", 0.431), "photo.jpg\n" + viz.prediction_title(long_label, 0.05)]
    fig = viz.grid_figure(images, maps, row_titles=titles)
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1
    assert bars[0].get_ylim() == (-1.0, 1.0)
    assert [t.get_text() for t in bars[0].get_yticklabels()] == ["−max|R|\nagainst", "0", "+max|R|\nfor"]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["red: evidence for the class", "blue: evidence against it"]
    photo_titles = [ax.get_title() for ax in fig.axes[:: 1 + len(maps)]]
    assert photo_titles[0].replace("\u00a0", " ") == "prediction: tabby (p = 43.1%)"
    assert photo_titles[1].startswith("photo.jpg\nprediction: German")
    assert all(len(line) <= 34 for title in photo_titles for line in title.splitlines())
    assert photo_titles[1].replace("\n", " ").replace("\u00a0", " ").endswith(f"{long_label} (p = 5.0%)")
    fig.canvas.draw()  # the constrained layout keeps every title inside the figure
    box = fig.bbox
    for ax in fig.axes:
        if ax.get_title():
            extent = ax.title.get_window_extent()
            assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and extent.y1 <= box.y1, ax.get_title()


def test_viz_is_an_attribute_of_the_package_and_import_relprop_stays_light():
    """Issue 15: ``import relprop; relprop.viz.save_grid`` as the README shows, in a fresh interpreter;
    ``import relprop`` itself does not import matplotlib."""
    code = (
        "import sys, relprop; light = 'matplotlib' not in sys.modules; "
        "print(light, callable(relprop.viz.save_grid), callable(relprop.viz.signed_colors))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "True"]
    with pytest.raises(AttributeError, match="no attribute 'vizz'"):
        relprop.vizz  # noqa: B018


def test_viz_namespace_holds_only_its_documented_functions():
    """Issue 15: ``dir(relprop.viz)`` showed np, torch, Path and Mapping."""
    public = {name for name in dir(viz) if not name.startswith("_")}
    assert public == set(viz.__all__)
    assert all(callable(getattr(viz, name)) and getattr(viz, name).__doc__ for name in viz.__all__)
    assert not {"np", "torch", "Path", "Mapping", "Sequence", "annotations"} & public
