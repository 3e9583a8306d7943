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
    torch.manual_seed(0)
    model = torchvision.models.get_model(MODEL, weights=None).eval()
    weights = tmp_path / "weights.pt"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "out"
    inputs = _files(tmp_path / "in")
    code, stdout, _ = _run(
        ["explain", *map(str, images), "--model", MODEL, "--weights", str(weights), "--method", "gradcam,gradient",
         "--target", "tabby", "--out", str(out), "--save-npy"], capsys,
    )
    assert code == 0
    stems = ["photo", "cut_out", "gray"]
    expected = {f"{s}_{m}.{e}" for s in stems for m in ("gradcam", "gradient") for e in ("png", "npy")}
    assert _files(out) == expected | {"grid.png"}
    assert _files(tmp_path / "in") == inputs and set(os.listdir(tmp_path)) == {"in", "out", "weights.pt"}
    assert f"wrote {len(expected) + 1} files" in stdout and stdout.count("class 281 (tabby)") == 3
    methods = {name: relprop.get_method(name)(model) for name in ("gradcam", "gradient")}
    for stem, image in zip(stems, images):
        with Image.open(out / f"{stem}_gradient.png") as picture:
            assert picture.size == (224, 224)
        x = Preprocess()(load_image(image)).unsqueeze(0)
        for name, method in methods.items():
            expected_map = method.attribute(x, target=281)[0].numpy()
            np.testing.assert_allclose(np.load(out / f"{stem}_{name}.npy"), expected_map, rtol=1e-5, atol=1e-7)


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


BAD_INPUTS = {
    # case: (option overrides, message); "IMAGE" replaces the image argument
    "unknown model": ({"--model": "resnet9000"}, "unknown model 'resnet9000'; choose one of: alexnet"),
    "unknown method": ({"--method": "rsp,magic"}, "unknown method 'magic'; choose one of: ae,"),
    "missing image": ({"IMAGE": "nope.jpg"}, "image not found"),
    "corrupt image": ({"IMAGE": "corrupt.jpg"}, "cannot read image"),
    "not a state dict": ({"--weights": "model.pt"}, "is not a state dict"),
    "other architecture": ({"--weights": "other.pt"}, "does not fit SqueezeNet"),
    "unknown class name": ({"--target": "tabbby"}, "Did you mean: tabby"),
    "class index out of range": ({"--target": "1000"}, "out of range"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_a_one_line_error(case, images, tmp_path, capsys):
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    torch.save(torchvision.models.get_model(MODEL, weights=None), tmp_path / "model.pt")  # a pickled model
    torch.save(torchvision.models.squeezenet1_0().state_dict(), tmp_path / "other.pt")
    overrides, message = BAD_INPUTS[case]
    options = {"--model": MODEL, "--method": "gradient", "--out": str(tmp_path / "out")}
    options.update({k: str(tmp_path / v) if k in ("IMAGE", "--weights") else v for k, v in overrides.items()})
    image = options.pop("IMAGE", str(images[0]))
    code, _, err = _run(["explain", image, *[item for pair in options.items() for item in pair]], capsys)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("relprop: error: "), err
    assert message in lines[0]
    assert not (tmp_path / "out").exists(), "nothing is written when the input is bad"


def test_unreadable_images_among_good_ones_are_reported_and_skipped(images, tmp_path, capsys):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image")
    missing = tmp_path / "missing.jpg"
    args = ["explain", str(images[0]), str(garbage), str(missing), str(images[2]), "--model", MODEL,
            "--method", "gradient", "--out", str(tmp_path / "out")]
    code, stdout, err = _run(args, capsys)
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("relprop: error: ")]
    assert len(errors) == 2 and str(garbage) in errors[0] and str(missing) in errors[1]
    assert _files(tmp_path / "out") == {"photo_gradient.png", "gray_gradient.png", "grid.png"}
    assert "2 unreadable image(s) skipped" in stdout


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
