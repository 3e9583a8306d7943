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

from ..errors import RelpropError
from ..registry import get_method, list_methods

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
) -> list[Path]:
    """Write ``<image>_<method>.png`` (and ``.npy`` with ``save_npy``) per image and method, and the
    grid(s) ``grid.png`` into ``out``; returns the files written."""
    from tqdm import tqdm

    from ..preprocess import load_image
    from ..targets import resolve_targets
    from ..viz import save_grid, save_heatmap, to_map
    from ..zoo import EFFICIENTNET_LITE0, load_model
    from .demo import imagenet_categories

    for name in methods:
        get_method(name)  # unknown names fail before any work, listing the valid ones
    for path in images:
        _check_image(path)
    _check_out(out, force)
    model, preprocess = load_model(model_name, weights)
    if weights is None and model_name != EFFICIENTNET_LITE0:
        print(f"relprop: warning: no --weights given; {model_name} has random weights.", file=sys.stderr)
    categories = imagenet_categories()
    wanted = _target_index(target, categories)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explainers = {name: get_method(name)(model) for name in methods}
    _print_warnings(caught)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RelpropError(f"cannot create --out {out}: {_first_line(exc)}") from exc
    written: list[Path] = []
    crops: list[np.ndarray] = []
    titles: list[str] = []
    maps: dict[str, list[np.ndarray]] = {name: [] for name in methods}
    stems = _unique_stems(images)
    for path, stem in tqdm(list(zip(images, stems)), desc="explaining", unit="image", disable=len(images) < 2):
        image = _load(path, load_image)
        x = preprocess(image).unsqueeze(0)
        with torch.no_grad():
            probs = model(x).softmax(dim=1)
        t = int(resolve_targets(wanted, probs)[0])
        label = categories[t] if probs.shape[1] == len(categories) else str(t)
        tqdm.write(f"{path.name}: class {t} ({label}), p = {probs[0, t].item():.1%}")
        for name, explainer in explainers.items():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                attribution = explainer.attribute(x, target=t)[0]
            _print_warnings(caught)
            relevance = to_map(attribution)
            maps[name].append(relevance)
            written.append(save_heatmap(relevance, out / f"{stem}_{name}.png"))
            if save_npy:
                np.save(out / f"{stem}_{name}.npy", attribution.numpy())
                written.append(out / f"{stem}_{name}.npy")
        crops.append(np.asarray(preprocess.crop(image)))
        titles.append(f"{stem}: {label}")
    pages = range(0, len(images), GRID_ROWS)
    for page, start in enumerate(pages, start=1):
        name = "grid.png" if len(pages) == 1 else f"grid-{page:02d}.png"
        rows = slice(start, start + GRID_ROWS)
        written.append(save_grid(crops[rows], {k: v[rows] for k, v in maps.items()}, out / name, titles[rows]))
    return written


def _check_image(path: Path) -> None:
    """Fail early, with the file's name, on a missing or unreadable image."""
    if not path.is_file():
        raise RelpropError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise RelpropError(f"cannot read image {path}: {_first_line(exc)}") from exc


def _load(path: Path, load_image) -> Image.Image:  # type: ignore[no-untyped-def]
    try:
        return load_image(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise RelpropError(f"cannot read image {path}: {_first_line(exc)}") from exc


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise RelpropError(f"--out {out} is a file; pass a folder.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise RelpropError(f"--out {out} is not empty; pass --force to write into it (files of the same name are replaced).")


def _target_index(target: str, categories: list[str]) -> int | None:
    """``auto`` -> None (top-1), an integer string -> that index, else an ImageNet class name."""
    if target == "auto":
        return None
    if re.fullmatch(r"[+-]?\d+", target):
        return int(target)
    by_name = {name.lower(): i for i, name in enumerate(categories)}
    if target.lower() in by_name:
        return by_name[target.lower()]
    close = difflib.get_close_matches(target.lower(), list(by_name), n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise RelpropError(f"--target '{target}' is not auto, a class index or an ImageNet class name.{hint}")


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
    from tqdm import tqdm

    for message in dict.fromkeys(str(w.message) for w in caught):
        tqdm.write(f"relprop: warning: {message}", file=sys.stderr)


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _method_list(text: str) -> list[str]:
    names = list(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    if not names:
        raise RelpropError(f"--method needs at least one name; choose from: {', '.join(list_methods())}.")
    return names


def run(args: argparse.Namespace) -> int:
    written = explain_images(
        args.images, args.model, args.weights, _method_list(args.method), args.target, args.out,
        save_npy=args.save_npy, force=args.force,
    )
    print(f"wrote {len(written)} files to {args.out}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="explain image files with a torchvision model or efficientnet_lite0",
        description="Explain image files (any size; RGB, grayscale or with alpha) with a classification model. "
        "Writes one heatmap PNG per image and method (red positive, blue negative, one pixel per model input "
        "pixel) and a grid of all of them into --out.",
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    parser.add_argument("--model", required=True, help="a torchvision classification model name (e.g. resnet50) or efficientnet_lite0")
    parser.add_argument(
        "--weights", metavar="PATH|DEFAULT",
        help="a state-dict file (loaded with weights_only=True) or DEFAULT for the pretrained weights "
        "(torchvision: downloaded); default: efficientnet_lite0's packaged weights, random weights otherwise",
    )
    parser.add_argument(
        "--method", default="rsp,ae,gradcam",
        help=f"comma-separated methods (default: rsp,ae,gradcam) from: {', '.join(list_methods())}",
    )
    parser.add_argument("--target", default="auto", help="auto (the top-1 class), a class index, or an ImageNet class name")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (must be empty unless --force)")
    parser.add_argument("--save-npy", action="store_true", help="also write each raw (C, H, W) attribution as .npy")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out (same-named files are replaced)")
    parser.set_defaults(run=run)
