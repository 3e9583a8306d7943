"""``relprop explain``: explain image files with a named model and one or more methods."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..errors import RelpropError
from ..evaluation.methods import CENTER, MethodSpec
from ..evaluation.progress import ProgressBar
from ..model_state import check_model_output, check_model_tensors
from ..preprocess import load_image
from ..registry import list_methods
from ..targets import resolve_targets
from ..viz import prediction_title, save_grid, to_map
from ..zoo import has_random_weights, load_model
from .classifier import warn_random_weights
from .demo import imagenet_categories

GRID_ROWS = 8  # images per grid picture


def explain_images(
    images: list[Path],
    model_name: str,
    weights: str | None,
    methods: list[str],
    target: str,
    out: Path,
    save_npy: bool = False,
    force: bool = False,
    overlay: bool = False,
    num_classes: int | None = None,
    class_names: Path | None = None,
) -> tuple[list[Path], list[Path]]:
    """Write ``<image>_<method>.png`` (the image and its map, captioned with the prediction, with a
    colour bar; and the raw map as ``.npy`` with ``save_npy``) per image and method, and the grid(s)
    ``grid.png`` into ``out``; ``overlay`` draws the maps over the images. Returns the files written
    and the images that could not be read.

    ``num_classes`` builds the architecture with that many outputs (a fine-tuned classifier's weights);
    ``class_names`` is a text file with one class name per line, in output order. Without it a model
    with 1000 outputs has ImageNet's class names and any other model "class 0", "class 1", ...

    A folder among ``images`` stands for the image files directly in it (:func:`image_files`).
    Every argument is checked (methods, images, ``out``, target, model and weights) before anything
    is written. An image that is missing or cannot be decoded is reported by its path and skipped;
    the others are explained. When no image can be read, nothing is written.
    """
    specs = _method_specs(methods)  # unknown names and bad options fail before any work
    images = image_files(images)
    unreadable = _unreadable_images(images)
    if len(unreadable) == len(images):
        raise RelpropError(next(iter(unreadable.values())) if len(images) == 1 else
                           f"none of the {len(images)} images can be read ({next(iter(unreadable.values()))}).")
    _check_out(out, force)
    given_names = _read_class_names(class_names) if class_names is not None else None
    categories = _categories(given_names, num_classes or 1000)
    _target_index(target, categories)  # a wrong --target fails before the model is built
    model, preprocess = load_model(model_name, weights, num_classes)
    check_model_tensors(model)
    outputs = check_model_output(model, torch.zeros(1, 3, preprocess.size, preprocess.size))
    if given_names is not None and len(given_names) != outputs:
        raise RelpropError(
            f"--class-names {class_names} has {len(given_names)} names but the model has {outputs} outputs."
        )
    categories = _categories(given_names, outputs)
    wanted = _target_index(target, categories)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explainers = {spec: spec.build(model) for spec in specs}
    if has_random_weights(model_name, weights):
        warn_random_weights(model_name, where=None)
    _print_warnings(caught)
    for message in unreadable.values():
        print(f"relprop: error: {message}; skipped.", file=sys.stderr)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RelpropError(f"cannot create --out {out}: {_first_line(exc)}") from exc
    written: list[Path] = []
    failed = list(unreadable)
    rows: list[tuple[np.ndarray, str, dict[str, np.ndarray]]] = []  # (image as the model sees it, caption, maps)
    readable = [p for p in images if p not in unreadable]
    with ProgressBar(len(readable), "images", "explaining", enabled=len(readable) > 1) as progress:
        for path, stem in zip(readable, _unique_stems(readable)):
            try:
                image = load_image(path)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
                progress.write(f"relprop: error: cannot read image {path}: {_first_line(exc)}; skipped.")
                failed.append(path)
                progress.update(1)
                continue
            x = preprocess(image).unsqueeze(0)
            with torch.no_grad():
                probs = model(x).softmax(dim=1)
            t = int(resolve_targets(wanted, probs)[0])
            progress.write(f"{path.name}: class {t} ({categories[t]}), p = {probs[0, t].item():.1%}", sys.stdout)
            crop = np.asarray(preprocess.crop(image))
            top = int(probs[0].argmax())
            caption = f"{path.name}\n{prediction_title(categories[top], probs[0, top].item())}"
            if t != top:
                caption += "\n" + prediction_title(categories[t], probs[0, t].item(), "explained")
            maps = {}
            for spec, explainer in explainers.items():
                attribution = _attribute(explainer, x, t)
                title = _title(spec, explainer)
                maps[title] = to_map(attribution)
                name = f"{stem}_{_file_label(spec)}"
                written.append(save_grid([crop], {title: [maps[title]]}, out / f"{name}.png", [caption], overlay))
                if save_npy:
                    np.save(out / f"{name}.npy", attribution.numpy())
                    written.append(out / f"{name}.npy")
            rows.append((crop, caption, maps))
            progress.update(1)
    if not rows:  # every image failed to decode: as when none passes the header check, an error
        if created:
            out.rmdir()
        raise RelpropError(f"none of the {len(images)} image(s) could be read; nothing was written.")
    return written + _save_grids(rows, out, overlay), failed


def _attribute(explainer, x: torch.Tensor, target: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The (C, H, W) attribution of the single image ``x``, its warnings printed as one line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attribution = explainer.attribute(x, target=target)[0]
    _print_warnings(caught)
    return attribution


def _save_grids(rows: list[tuple[np.ndarray, str, dict[str, np.ndarray]]], out: Path, overlay: bool) -> list[Path]:
    """``grid.png`` (or ``grid-01.png``, ... for more than GRID_ROWS images): image, then one column per method."""
    pages = [rows[start : start + GRID_ROWS] for start in range(0, len(rows), GRID_ROWS)]
    written = []
    for number, page in enumerate(pages, start=1):
        name = "grid.png" if len(pages) == 1 else f"grid-{number:02d}.png"
        columns = {method: [maps[method] for _, _, maps in page] for method in page[0][2]}
        crops, captions = [crop for crop, _, _ in page], [caption for _, caption, _ in page]
        written.append(save_grid(crops, columns, out / name, captions, overlay))
    return written


def image_files(paths: list[Path]) -> list[Path]:
    """``paths`` with every folder replaced by the image files directly in it (by extension, in name
    order; hidden files left out).  A folder without images is an error naming the extensions looked for."""
    files: list[Path] = []
    extensions = {ext for ext, kind in Image.registered_extensions().items() if kind in Image.OPEN}  # readable
    for path in paths:
        if not path.is_dir():
            files.append(path)
            continue
        found = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith("."))
        if not found:
            common = ", ".join(e for e in (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".webp") if e in extensions)
            raise RelpropError(
                f"folder {path} holds no image files ({common}, ...); pass a folder of images or image files."
            )
        files.extend(found)
    return files


def _unreadable_images(images: list[Path]) -> dict[Path, str]:
    """Images that are missing or whose header cannot be read, with the reason (checked before any work)."""
    problems = {}
    for path in images:
        if not path.is_file():
            problems[path] = f"image not found: {path}"
            continue
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            problems[path] = f"cannot read image {path}: {_first_line(exc)}"
    return problems


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise RelpropError(f"--out {out} is a file; pass a folder.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise RelpropError(f"--out {out} is not empty; pass --force to write into it (files of the same name are replaced).")


def _read_class_names(path: Path) -> list[str]:
    """One class name per line (surrounding blank lines ignored)."""
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").strip().splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise RelpropError(f"cannot read --class-names {path}: {_first_line(exc)}") from exc
    if not names or not all(names):
        raise RelpropError(f"--class-names {path} must hold one non-empty class name per line.")
    return names


def _categories(given: list[str] | None, outputs: int) -> list[str]:
    """The class names of a model with ``outputs`` outputs: ``given``, ImageNet's, or "class k"."""
    if given is not None:
        return given
    return imagenet_categories() if outputs == 1000 else [f"class {k}" for k in range(outputs)]


def _target_index(target: str, categories: list[str]) -> int | None:
    """``auto`` -> None (top-1), an integer string -> that index, else a class name of ``categories``."""
    if target == "auto":
        return None
    if re.fullmatch(r"[+-]?\d+", target):
        if not 0 <= int(target) < len(categories):
            raise RelpropError(f"--target {target} is out of range: the model has {len(categories)} classes.")
        return int(target)
    by_name = {name.lower(): i for i, name in enumerate(categories)}
    if target.lower() in by_name:
        return by_name[target.lower()]
    close = difflib.get_close_matches(target.lower(), list(by_name), n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise RelpropError(f"--target '{target}' is not auto, a class index or a class name of the model.{hint}")


def _unique_stems(images: list[Path]) -> list[str]:
    """File-name-safe stems, made unique with -2, -3, ... (no path separators: nothing leaves --out)."""
    stems: list[str] = []
    for path in images:
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem).strip("_") or "image"
        stem, k = base, 1
        while stem in stems:
            k += 1
            stem = f"{base}-{k}"
        stems.append(stem)
    return stems


def _print_warnings(caught: list[warnings.WarningMessage]) -> None:
    for message in dict.fromkeys(str(w.message) for w in caught):
        tqdm.write(f"relprop: warning: {message}", file=sys.stderr)


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _method_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise RelpropError(f"--method needs at least one name; choose from: {', '.join(list_methods())}.")
    return names


def _method_specs(methods: list[str]) -> list[MethodSpec]:
    """Each method as a spec (``name`` or ``name:key=value:...``), repeats dropped; the center baseline is no
    explanation."""
    specs = []
    for text in methods:
        name = text.split(":")[0].strip().lower()
        if name not in list_methods():
            what = f"'{name}' is an evaluation baseline, not a method" if name == CENTER else f"unknown method '{name}'"
            raise RelpropError(f"{what}; choose one of: {', '.join(list_methods())}.")
        try:
            spec = MethodSpec.parse(text)
        except ValueError as exc:
            raise RelpropError(str(exc)) from exc
        if spec not in specs:
            specs.append(spec)
    return specs


def _title(spec: MethodSpec, explainer: object) -> str:
    """The method's display name, with the options given (``AE (ratio=1)``)."""
    options = ", ".join(f"{key}={value}" for key, value in spec.kwargs)
    name = getattr(explainer, "name", spec.name)
    return f"{name} ({options})" if options else name


def _file_label(spec: MethodSpec) -> str:
    """``ae``, ``ae_ratio=1``: the spec in file-name-safe characters."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", spec.label)


def run(args: argparse.Namespace) -> int:
    written, failed = explain_images(
        args.images, args.model, args.weights, _method_list(args.method), args.target, args.out,
        save_npy=args.save_npy, force=args.force, overlay=args.overlay, num_classes=args.num_classes,
        class_names=args.class_names,
    )
    skipped = f"; {len(failed)} unreadable image(s) skipped" if failed else ""
    print(f"wrote {len(written)} files to {args.out}{skipped}")
    return 1 if failed else 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="explain image files with a torchvision or timm model or efficientnet_lite0",
        description="Explain image files or folders of them (any size; RGB, grayscale or with alpha) with a "
        "classification model. "
        "Writes into --out one PNG per image and method (the image as the model sees it, captioned with the "
        "prediction, beside its map: red = evidence for the class, blue = against it, with a colour bar) and a "
        "grid of all of them; --save-npy adds the raw attributions. An image that cannot be read is reported and skipped "
        "(exit status 1); when none can be read, or on any other error, nothing is written (exit status 2).",
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                        help="image files, or folders: each stands for the image files directly in it, in name order")
    parser.add_argument("--model", required=True, help="a torchvision classification model name (e.g. resnet50), efficientnet_lite0 or timm:<name> (a timm model)")
    parser.add_argument(
        "--weights", metavar="PATH|DEFAULT",
        help="a state-dict file (loaded with weights_only=True) or DEFAULT for the pretrained weights "
        "(torchvision: downloaded); default: efficientnet_lite0's packaged weights, random weights otherwise",
    )
    parser.add_argument(
        "--method", default="rsp,ae,gradcam",
        help=f"comma-separated methods (default: rsp,ae,gradcam), each a name or name:option=value "
        f"(e.g. ae:ratio=1, rsp:purge=true), from: {', '.join(list_methods())}",
    )
    parser.add_argument(
        "--num-classes", type=int, metavar="N",
        help="build a torchvision or timm model with N outputs, for the weights of a fine-tuned classifier "
        "(default: the architecture's 1000 ImageNet outputs)",
    )
    parser.add_argument(
        "--class-names", type=Path, metavar="FILE",
        help="text file with one class name per line, in output order (default: ImageNet's names for 1000 "
        "outputs, 'class 0', 'class 1', ... otherwise)",
    )
    parser.add_argument(
        "--target", default="auto",
        help="auto (the top-1 class), a class index, or a class name (ImageNet's or from --class-names) "
        "(default: auto)",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (must be empty unless --force)")
    parser.add_argument("--save-npy", action="store_true", help="also write each raw (C, H, W) attribution as .npy")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out (same-named files are replaced)")
    parser.add_argument("--overlay", action="store_true", help="draw each map over a grayscale copy of its image")
    parser.set_defaults(run=run)
