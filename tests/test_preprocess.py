"""``load_image``: every image file becomes the 8-bit RGB picture a viewer shows (issue 15 §2, issue 16 item 3).

16-bit and float images are scaled from their nominal range (0..65535, [0, 1]) instead of being
clipped to white or black; values outside that range are refused; the EXIF orientation is applied;
palette, CMYK and alpha images are converted; an image too large for Pillow is an unreadable image.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from relprop.preprocess import load_image

HEIGHT, WIDTH = 12, 16
RAMP16 = (np.arange(HEIGHT * WIDTH).reshape(HEIGHT, WIDTH) * 340).astype(np.uint16)  # 0 .. 64940


def _eight_bit(values: np.ndarray, full_scale: float) -> np.ndarray:
    """The expected 8-bit value of each pixel: its fraction of the nominal full scale, times 255."""
    return np.round(values.astype(np.float64) / full_scale * 255).astype(np.uint8)


def _png16(path: Path, pixels: np.ndarray) -> Path:
    """Write a 16-bit-per-channel PNG (gray, gray+alpha, RGB or RGBA) by hand: Pillow cannot write 16-bit RGB."""
    height, width, channels = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )
    return path


def _rgb(path: Path) -> np.ndarray:
    image = load_image(path)
    assert image.mode == "RGB"
    return np.asarray(image)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_grayscale_is_scaled_not_clipped(suffix: str, tmp_path: Path) -> None:
    path = tmp_path / f"gray16{suffix}"
    Image.fromarray(RAMP16).save(path)
    with Image.open(path) as opened:
        assert opened.mode.startswith("I;16")  # the case that convert("RGB") clips to white
    pixels = _rgb(path)
    expected = _eight_bit(RAMP16, 65535)
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], expected)


def test_32_bit_integer_image_within_16_bits_is_scaled(tmp_path: Path) -> None:
    path = tmp_path / "gray32.tif"
    Image.fromarray(RAMP16.astype(np.int32)).save(path)
    np.testing.assert_array_equal(_rgb(path)[..., 0], _eight_bit(RAMP16, 65535))


def test_32_bit_integer_image_beyond_16_bits_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gray32.tif"
    Image.fromarray(RAMP16.astype(np.int32) * 4).save(path)
    with pytest.raises(ValueError, match=r"0\.\.65535"):
        load_image(path)


@pytest.mark.parametrize("channels", [3, 4])
def test_16_bit_rgb_and_rgba_png(channels: int, tmp_path: Path) -> None:
    planes = [RAMP16, 65535 - RAMP16, np.full_like(RAMP16, 30000), np.full_like(RAMP16, 65535)][:channels]
    pixels = _rgb(_png16(tmp_path / "rgb16.png", np.stack(planes, axis=-1)))
    for channel in range(3):
        # Pillow keeps the high byte of each 16-bit sample: at most one 8-bit level from the exact scaling.
        difference = pixels[..., channel].astype(int) - _eight_bit(planes[channel], 65535)
        assert np.abs(difference).max() <= 1


def test_16_bit_gray_with_alpha_png(tmp_path: Path) -> None:
    path = _png16(tmp_path / "la16.png", np.stack([RAMP16, np.full_like(RAMP16, 65535)], axis=-1))
    assert np.abs(_rgb(path)[..., 0].astype(int) - _eight_bit(RAMP16, 65535)).max() <= 1


def test_float_image_in_the_unit_range_is_scaled(tmp_path: Path) -> None:
    values = np.linspace(0, 1, HEIGHT * WIDTH, dtype=np.float32).reshape(HEIGHT, WIDTH)
    path = tmp_path / "float.tif"
    Image.fromarray(values).save(path)
    with Image.open(path) as opened:
        assert opened.mode == "F"
    np.testing.assert_array_equal(_rgb(path)[..., 1], _eight_bit(values, 1.0))


@pytest.mark.parametrize("values", [np.full((4, 4), 200.0), np.full((4, 4), -0.5), np.full((4, 4), np.nan)])
def test_float_image_outside_the_unit_range_is_refused(values: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(values.astype(np.float32)).save(path)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_image(path)


def test_palette_image(tmp_path: Path) -> None:
    colours = [(10, 200, 30), (250, 5, 120)]
    image = Image.new("P", (WIDTH, HEIGHT))
    image.putpalette([c for colour in colours for c in colour])
    image.paste(1, (0, 0, WIDTH // 2, HEIGHT))
    image.save(tmp_path / "palette.png")
    pixels = _rgb(tmp_path / "palette.png")
    assert tuple(pixels[0, 0]) == colours[1] and tuple(pixels[0, -1]) == colours[0]


def test_palette_image_with_transparency_is_put_on_white(tmp_path: Path) -> None:
    image = Image.new("P", (WIDTH, HEIGHT))
    image.putpalette([10, 200, 30, 0, 0, 0])
    image.paste(1, (0, 0, WIDTH // 2, HEIGHT))
    image.save(tmp_path / "palette.png", transparency=1)
    pixels = _rgb(tmp_path / "palette.png")
    assert tuple(pixels[0, 0]) == (255, 255, 255) and tuple(pixels[0, -1]) == (10, 200, 30)


def test_cmyk_image(tmp_path: Path) -> None:
    Image.new("CMYK", (WIDTH, HEIGHT), (0, 255, 255, 0)).save(tmp_path / "cmyk.tif")  # no cyan, full magenta+yellow
    pixels = _rgb(tmp_path / "cmyk.tif")
    assert (pixels == np.array([255, 0, 0], dtype=np.uint8)).all()


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_is_applied(suffix: str, tmp_path: Path) -> None:
    """Orientation 6: the stored 40x20 picture is shown turned 90° clockwise (20 wide, 40 high), so
    its left half (red) ends up on top."""
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / f"rotated{suffix}"
    stored.save(path, exif=exif, quality=95)
    pixels = _rgb(path).astype(int)
    assert pixels.shape == (40, 20, 3)
    assert np.abs(pixels[5, 10] - [255, 0, 0]).max() < 20 and np.abs(pixels[35, 10] - [0, 0, 255]).max() < 20


def test_an_image_too_large_for_pillow_is_an_unreadable_image(tmp_path: Path) -> None:
    """A PNG header claiming 30000x30000 pixels: Pillow's DecompressionBombError (not an OSError) becomes
    the ValueError every caller treats as "unreadable image"."""
    path = _png16(tmp_path / "bomb.png", np.zeros((1, 1, 1), dtype=np.uint16))
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", 30000, 30000)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR CRC
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="too large.*900000000 pixels"):
        load_image(path)
