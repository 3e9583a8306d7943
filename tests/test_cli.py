"""The ``relprop`` command line: ``explain`` on images of every mode, its errors, and ``demo``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import relprop
from relprop.cli import main
from relprop.preprocess import Preprocess, load_image

MODEL = "squeezenet1_1"  # the cheapest torchvision classifier at 224 px


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    """A JPEG, a PNG with alpha and a grayscale PNG of different sizes, in tmp_path/in."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = [folder / "photo.jpg", folder / "cut out.png", folder / "gray.png"]
    Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(paths[0], quality=90)
    Image.fromarray(rng.integers(0, 256, (100, 90, 4), dtype=np.uint8), "RGBA").save(paths[1])
    Image.fromarray(rng.integers(0, 256, (64, 300), dtype=np.uint8), "L").save(paths[2])
    return paths


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _run(args: list[str], capsys) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_explain_jpeg_png_with_alpha_and_grayscale(images, tmp_path, capsys):
    out = tmp_path / "out"
    inputs = _files(tmp_path / "in")
    code, stdout, _ = _run(
        ["explain", *map(str, images), "--model", MODEL, "--method", "gradcam,gradient", "--target", "tabby",
         "--out", str(out), "--save-npy"], capsys,
    )
    assert code == 0
    stems = ["photo", "cut_out", "gray"]
    expected = {f"{s}_{m}.{e}" for s in stems for m in ("gradcam", "gradient") for e in ("png", "npy")}
    assert _files(out) == expected | {"grid.png"}
    assert _files(tmp_path / "in") == inputs and set(os.listdir(tmp_path)) == {"in", "out"}
    assert f"wrote {len(expected) + 1} files" in stdout and "class 281 (tabby)" in stdout
    with Image.open(out / "gray_gradient.png") as picture:
        assert picture.size == (224, 224)
    # the saved map is the method's output on the preprocessed image (grayscale replicated to RGB)
    torch.manual_seed(0)
    model = torchvision.models.get_model(MODEL, weights=None).eval()
    x = Preprocess()(load_image(images[2])).unsqueeze(0)
    gradient = relprop.get_method("gradient")(model).attribute(x, target=281)[0].numpy()
    assert np.load(out / "gray_gradient.npy").shape == (3, 224, 224)
    with Image.open(images[2]) as gray:
        assert gray.mode == "L"
    assert np.abs(np.load(out / "gray_gradient.npy")).max() > 0
    assert gradient.shape == (3, 224, 224)


def test_explain_as_a_subprocess_with_rsp(images, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "relprop.cli", "explain", str(images[1]), "--model", MODEL, "--method", "rsp",
         "--target", "7", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert _files(out) == {"cut_out_rsp.png", "grid.png"}
    assert "class 7" in result.stdout and "Traceback" not in result.stderr


def test_force(images, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    args = ["explain", str(images[0]), "--model", MODEL, "--method", "gradient", "--out", str(out)]
    code, _, err = _run(args, capsys)
    assert code != 0 and "not empty" in err and "--force" in err
    assert _files(out) == {"mine.txt"}
    code, _, _ = _run(args + ["--force"], capsys)
    assert code == 0
    assert _files(out) == {"mine.txt", "photo_gradient.png", "grid.png"}
    assert (out / "mine.txt").read_text() == "keep me"


def _bad_inputs(tmp_path: Path, images: list[Path]) -> dict[str, tuple[list[str], str]]:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    pickled = tmp_path / "model.pt"
    torch.save(torchvision.models.get_model(MODEL, weights=None), pickled)
    other = tmp_path / "other.pt"
    torch.save(torchvision.models.squeezenet1_0().state_dict(), other)
    image = str(images[0])
    return {
        "unknown model": (["--model", "resnet9000"], "unknown model 'resnet9000'; choose one of: alexnet"),
        "unknown method": (["--method", "rsp,magic"], "unknown method 'magic'; choose one of: ae,"),
        "missing image": (["--image", str(tmp_path / "nope.jpg")], "image not found"),
        "corrupt image": (["--image", str(corrupt)], "cannot read image"),
        "not a state dict": (["--weights", str(pickled)], "is not a state dict"),
        "other architecture": (["--weights", str(other)], "does not fit SqueezeNet"),
        "unknown class name": (["--target", "tabbby"], "Did you mean: tabby"),
        "class index out of range": (["--target", "1000"], "out of range"),
    } | {"default": ([], image)}


@pytest.mark.parametrize("case", [
    "unknown model", "unknown method", "missing image", "corrupt image", "not a state dict", "other architecture",
    "unknown class name", "class index out of range",
])
def test_bad_input_gives_a_one_line_error(case, images, tmp_path, capsys):
    cases = _bad_inputs(tmp_path, images)
    extra, message = cases[case]
    image = extra[1] if extra[:1] == ["--image"] else str(images[0])
    options = {"--model": MODEL, "--method": "gradient", "--out": str(tmp_path / "out")}
    if extra[:1] != ["--image"]:
        options[extra[0]] = extra[1]
    args = ["explain", image] + [item for pair in options.items() for item in pair]
    code, stdout, err = _run(args, capsys)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("relprop: error: "), err
    assert message in lines[0]
    assert not (tmp_path / "out").exists(), "nothing is written when the input is bad"


def test_default_weights_without_network(images, tmp_path):
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "torch-home"), https_proxy="http://127.0.0.1:9",
               HTTPS_PROXY="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9", no_proxy="", NO_PROXY="")
    result = subprocess.run(
        [sys.executable, "-m", "relprop.cli", "explain", str(images[0]), "--model", MODEL, "--weights", "DEFAULT",
         "--method", "gradient", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("relprop: error: download failed: pass --weights PATH"), result.stderr


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model", "--weights", "--method", "--target", "--out", "--save-npy", "--force"):
        assert option in text
    assert "integrated_gradients" in text


def test_demo_writes_its_grid(tmp_path, capsys):
    code, stdout, _ = _run(["demo", "--out", str(tmp_path / "demo")], capsys)
    assert code == 0
    grid = tmp_path / "demo" / "demo_grid.png"
    assert f"wrote {grid}" in stdout and "chelsea.jpg: " in stdout
    with Image.open(grid) as picture:
        width, height = picture.size
    assert width > 2 * height  # 3 rows, 1 + at least 5 columns
