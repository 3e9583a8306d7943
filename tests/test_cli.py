"""The ``relprop`` command line: ``explain`` on images of every mode, its errors, and ``demo``."""

from __future__ import annotations

import argparse
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


def _saved_model(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    """The test model (seed 0) and its state dict saved as tmp_path/weights.pt, for --weights."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(MODEL, weights=None).eval()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    return model, tmp_path / "weights.pt"


def _run(args: list[str], capsys) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_explain_jpeg_png_with_alpha_and_grayscale(images, tmp_path, capsys):
    model, weights = _saved_model(tmp_path)
    out = tmp_path / "out"
    inputs = _files(tmp_path / "in")
    code, stdout, err = _run(
        ["explain", *map(str, images), "--model", MODEL, "--weights", str(weights), "--method", "gradcam,gradient",
         "--target", "tabby", "--out", str(out), "--save-npy"], capsys,
    )
    assert code == 0 and "random weights" not in err
    stems = ["photo", "cut_out", "gray"]
    expected = {f"{s}_{m}.{e}" for s in stems for m in ("gradcam", "gradient") for e in ("png", "npy")}
    assert _files(out) == expected | {"grid.png"}
    assert _files(tmp_path / "in") == inputs and set(os.listdir(tmp_path)) == {"in", "out", "weights.pt"}
    assert f"wrote {len(expected) + 1} files" in stdout and stdout.count("class 281 (tabby)") == 3
    methods = {name: relprop.get_method(name)(model) for name in ("gradcam", "gradient")}
    for stem, image in zip(stems, images):
        with Image.open(out / f"{stem}_gradient.png") as picture:
            assert picture.width > 1.5 * picture.height  # the image, its map and a colour bar side by side
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
    code, _, err = _run(args + ["--force"], capsys)
    assert code == 0 and f"no --weights given; {MODEL} has random weights." in err
    assert _files(out) == {"mine.txt", "photo_gradient.png", "grid.png"}
    assert (out / "mine.txt").read_text() == "keep me"


def test_a_folder_stands_for_its_image_files_in_name_order_with_plain_progress_lines(images, tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes((folder / "gray.png").read_bytes())
    (folder / "sub").mkdir()  # not searched
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "sub" / "deeper.png")
    out = tmp_path / "out"
    code, stdout, err = _run(["explain", str(folder), "--model", MODEL, "--method", "gradient", "--out", str(out)], capsys)
    assert code == 0, err
    assert _files(out) == {"cut_out_gradient.png", "gray_gradient.png", "photo_gradient.png", "grid.png"}
    names = [line.split(":")[0] for line in stdout.splitlines() if ": class " in line]
    assert names == ["cut out.png", "gray.png", "photo.jpg"]
    assert "\r" not in err and "relprop: explaining: 3/3 images" in err  # stderr is not a terminal here


def test_explain_takes_method_options_as_evaluate_does(images, tmp_path, capsys):
    """ae:ratio=1 beside ae: two maps, two files, two grid columns; each map is the method's own."""
    model, weights = _saved_model(tmp_path)
    out = tmp_path / "out"
    code, _, err = _run(["explain", str(images[0]), "--model", MODEL, "--weights", str(weights), "--method",
                         "ae:ratio=1,ae,gradient:absolute=true", "--target", "7", "--out", str(out), "--save-npy"], capsys)
    assert code == 0, err
    stems = {"ae_ratio=1": {"ratio": 1}, "ae": {}, "gradient_absolute=True": {"absolute": True}}
    assert _files(out) == {f"photo_{s}.{e}" for s in stems for e in ("png", "npy")} | {"grid.png"}
    x = Preprocess()(load_image(images[0])).unsqueeze(0)
    for stem, options in stems.items():
        method = relprop.get_method(stem.split("_")[0])(model, **options)
        np.testing.assert_allclose(np.load(out / f"photo_{stem}.npy"), method.attribute(x, target=7)[0].numpy(),
                                   rtol=1e-5, atol=1e-7)


BAD_INPUTS = {
    # case: (option overrides, message); "IMAGE" replaces the image argument
    "unknown model": ({"--model": "resnet9000"}, "unknown model 'resnet9000'; choose one of: alexnet"),
    "unknown method": ({"--method": "rsp,magic"}, "unknown method 'magic'; choose one of: ae,"),
    "bad method option": ({"--method": "ae:ratio=x"}, "method 'ae:ratio=x': ratio must be a positive finite number"),
    "the evaluation baseline": ({"--method": "center"}, "'center' is an evaluation baseline, not a method; choose one of: ae,"),
    "missing image": ({"IMAGE": "nope.jpg"}, "image not found"),
    "folder without images": ({"IMAGE": "notes"}, "folder {tmp}/notes holds no image files (.jpg, .jpeg, .png"),
    "corrupt image": ({"IMAGE": "corrupt.jpg"}, "cannot read image"),
    "not a state dict": ({"--weights": "model.pt"}, "is not a state dict"),
    "other architecture": ({"--weights": "other.pt"}, "does not fit SqueezeNet"),
    "unknown class name": ({"--target": "tabbby"}, "Did you mean: tabby"),
    "class index out of range": ({"--target": "1000"}, "out of range"),
    "fine-tuned weights without --num-classes": ({"--weights": "ten.pt"}, "with 10 outputs? Build it with --num-classes 10"),
    "class names that do not match the outputs": (
        {"--weights": "ten.pt", "--num-classes": "10", "--class-names": "three.txt"},
        "three.txt has 3 names but the model has 10 outputs",
    ),
    "ImageNet name for a 10-class model": ({"--weights": "ten.pt", "--num-classes": "10", "--target": "tabby"},
                                           "not auto, a class index or a class name"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_a_one_line_error(case, images, tmp_path, capsys):
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    torch.save(torchvision.models.get_model(MODEL, weights=None), tmp_path / "model.pt")  # a pickled model
    torch.save(torchvision.models.squeezenet1_0().state_dict(), tmp_path / "other.pt")
    torch.save(torchvision.models.get_model(MODEL, weights=None, num_classes=10).state_dict(), tmp_path / "ten.pt")
    (tmp_path / "three.txt").write_text("cat\ndog\nbird\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("no images here")
    overrides, message = BAD_INPUTS[case]
    message = message.replace("{tmp}", str(tmp_path))
    options = {"--model": MODEL, "--method": "gradient", "--out": str(tmp_path / "out")}
    paths = ("IMAGE", "--weights", "--class-names")
    options.update({k: str(tmp_path / v) if k in paths else v for k, v in overrides.items()})
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


def _recording(monkeypatch, module, name: str) -> list[dict]:  # type: ignore[no-untyped-def]
    """Replace ``module.name`` (a viz save function) by a wrapper that records its arguments and calls it."""
    import inspect

    real, calls = getattr(module, name), []

    def record(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(inspect.signature(real).bind(*args, **kwargs).arguments)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, record)
    return calls


def test_explain_captions_each_image_with_its_prediction_and_overlays_on_request(images, tmp_path, monkeypatch,
                                                                                 capsys):
    """Issue 15 §3: "prediction: class (p = …)" above each photo (and the explained class when it is
    not the top-1), in the per-method PNGs and the grid; ``--overlay`` draws the maps over the photo."""
    import relprop.commands.explain as explain_command
    from relprop.commands.demo import imagenet_categories

    torch.manual_seed(0)
    model = torchvision.models.get_model(MODEL, weights=None).eval()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    calls = _recording(monkeypatch, explain_command, "save_grid")
    code, _, _ = _run(["explain", str(images[0]), "--model", MODEL, "--weights", str(tmp_path / "weights.pt"),
                       "--method", "gradient", "--target", "7", "--overlay", "--out", str(tmp_path / "out")], capsys)
    assert code == 0 and len(calls) == 2  # photo_gradient.png and grid.png
    with torch.no_grad():
        probs = model(Preprocess()(load_image(images[0])).unsqueeze(0)).softmax(dim=1)[0]
    top, names = int(probs.argmax()), imagenet_categories()
    assert top != 7, "pick another --target: the test needs one that is not the top-1"
    expected = ["photo.jpg", f"prediction: {names[top]} (p = {probs[top]:.1%})", f"explained: {names[7]} (p = {probs[7]:.1%})"]
    for call in calls:
        assert call["overlay_images"] is True
        assert [line.replace("\u00a0", " ") for line in call["row_titles"][0].splitlines()] == expected


def test_explain_a_fine_tuned_classifier_with_its_class_names(images, tmp_path, monkeypatch, capsys):
    """--num-classes builds the architecture for the weights of a 3-class classifier; --class-names names its
    outputs, in the console line, the captions and --target."""
    import relprop.commands.explain as explain_command

    torch.manual_seed(0)
    model = torchvision.models.get_model(MODEL, weights=None, num_classes=3).eval()
    torch.save(model.state_dict(), tmp_path / "three.pt")
    (tmp_path / "names.txt").write_text("cat\ndog\nbird\n\n")
    calls = _recording(monkeypatch, explain_command, "save_grid")
    code, stdout, _ = _run(["explain", str(images[0]), "--model", MODEL, "--weights", str(tmp_path / "three.pt"),
                            "--num-classes", "3", "--class-names", str(tmp_path / "names.txt"), "--target", "Dog",
                            "--method", "gradient", "--out", str(tmp_path / "out")], capsys)
    assert code == 0
    with torch.no_grad():
        probs = model(Preprocess()(load_image(images[0])).unsqueeze(0)).softmax(dim=1)[0]
    assert f"photo.jpg: class 1 (dog), p = {probs[1].item():.1%}" in stdout
    top = int(probs.argmax())
    caption = [line.replace("\u00a0", " ") for line in calls[0]["row_titles"][0].splitlines()]
    assert caption[1] == f"prediction: {['cat', 'dog', 'bird'][top]} (p = {probs[top]:.1%})"

    code, stdout, _ = _run(["explain", str(images[0]), "--model", MODEL, "--weights", str(tmp_path / "three.pt"),
                            "--num-classes", "3", "--method", "gradient", "--out", str(tmp_path / "out2")], capsys)
    assert code == 0 and f"photo.jpg: class {top} (class {top}), p = " in stdout


def test_demo_writes_its_grid(tmp_path, monkeypatch, capsys):
    import relprop.viz

    calls = _recording(monkeypatch, relprop.viz, "save_grid")
    code, stdout, _ = _run(["demo", "--out", str(tmp_path / "demo")], capsys)
    assert code == 0
    grid = tmp_path / "demo" / "demo_grid.png"
    assert f"wrote {grid}" in stdout and "chelsea.jpg: " in stdout
    with Image.open(grid) as picture:
        width, height = picture.size
    assert width > 2 * height  # 3 rows, 1 + at least 5 columns
    top1 = [line.split(": ", 1)[1].split(",")[0].rsplit(" ", 1) for line in stdout.splitlines() if ".jpg: " in line]
    captions = [title.replace("\u00a0", " ") for title in calls[0]["row_titles"]]
    assert captions == [f"prediction: {name} (p = {p})" for name, p in top1]


COMMANDS = ("demo", "explain", "bench", "evaluate", "sanity", "coverage")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_has_a_description_and_shows_the_defaults(command, capsys):
    """Issue 15: several --help texts lacked defaults; demo --help and bench --help had no description."""
    from relprop.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    paragraphs = text.split("\n\n")
    assert not paragraphs[1].startswith(("options:", "positional arguments:")), f"{command} has no description"
    sub = build_parser()._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    unset = (None, False, [], argparse.SUPPRESS)
    options = [a for a in sub._actions if a.option_strings and not any(a.default is u for u in unset)]
    assert options, "the command has options with defaults"
    for action in options:
        assert "default" in (action.help or "").lower(), f"{action.option_strings[0]} does not show its default"
    if command == "sanity":  # options that had no help at all, one of them with a default of 0
        assert "--granularity {block,layer} default: block" in " ".join(text.split())
        assert "--seed SEED default: 0" in " ".join(text.split())


def _sanity_args(tmp_path: Path, *extra: str) -> list[str]:
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(image)
    return ["sanity", "--model", "resnet18", "--weights", str(tmp_path / "resnet18.pth"), "--method", "gradient",
            "--images", str(image), "--size", "32", "--measures", "spearman", "--out", str(tmp_path / "out"), *extra]


def test_sanity_accepts_modes_both_and_shows_its_progress(tmp_path, capsys):
    """Issue 15: ``--modes both`` (as the help says) was rejected, and sanity printed nothing for minutes."""
    import json

    code, _, err = _run(_sanity_args(tmp_path, "--modes", "both"), capsys)
    assert code == 0, err
    curves = json.loads((tmp_path / "out" / "sanity_gradient.json").read_text())["curves"]
    assert list(curves) == ["cascading", "independent"]
    lines = err.strip().splitlines()
    steps = 2 * 11  # per mode: the trained model, then ResNet-18's 10 blocks
    assert [line for line in lines if ": step " in line] == lines[1:], err
    assert lines[1].startswith(f"relprop sanity: step 1/{steps}: cascading: maps of the trained model (")
    assert lines[2].startswith(f"relprop sanity: step 2/{steps}: cascading: maps after randomising down to fc (")
    assert lines[-1].startswith(f"relprop sanity: step {steps}/{steps}: independent: maps with only conv1 randomised (")
    assert all(line.endswith(" elapsed)") for line in lines)
    code, _, err = _run(_sanity_args(tmp_path, "--modes", "independent", "--no-progress"), capsys)
    assert code == 0 and err == ""


def test_sanity_rejects_an_unknown_mode_before_loading_anything(tmp_path, capsys):
    code, _, err = _run(["sanity", "--model", "resnet9000", "--method", "rsp", "--modes", "cascading,bogus",
                         "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "choose cascading, independent or both" in err and not (tmp_path / "out").exists()


def test_bench_shows_its_progress_on_stderr(tmp_path, capsys):
    """Issue 15: bench printed nothing on stderr while it ran; each step is now announced there."""
    args = ["bench", "--models", MODEL, "--batch-sizes", "1", "--methods", "forward,gradient", "--repeats", "1",
            "--no-memory", "--out", str(tmp_path / "bench")]
    code, stdout, err = _run(args, capsys)
    assert code == 0
    assert stdout.count(f"| {MODEL} | 1 |") == 2  # the table rows stay on stdout
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"relprop bench: building {MODEL} (")
    assert lines[1].startswith(f"relprop bench: step 1/2: {MODEL}, batch 1, gradient: 1 warm-up + 1 timed call(s) (")
    assert lines[2].startswith(f"relprop bench: step 2/2: {MODEL}, batch 1, forward: ")
    assert len(lines) == 3 and all(line.endswith(" elapsed)") for line in lines)
    code, _, err = _run(args + ["--no-progress"], capsys)
    assert code == 0 and err == ""
