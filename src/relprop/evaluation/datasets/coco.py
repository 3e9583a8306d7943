"""MS COCO 2014 val in its official layout (``val2014/``, ``annotations/instances_val2014.json``)."""


from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np

from ...errors import RelpropError
from .common import DataError, EvaluationDataset, Sample, find_difficult_flags, open_image

COCO_CATEGORY_IDS = tuple(
    i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
)  # the 80 ids in TorchRay's class order (evaluation.md §1.1)


def coco_annotation_file(root: Path) -> Path:
    """``root/annotations/instances_val2014.json`` (or a single ``instances_val2014*.json`` there)."""
    folder = root / "annotations"
    exact = folder / "instances_val2014.json"
    if exact.is_file():
        return exact
    matches = sorted(folder.glob("instances_val2014*.json"))
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise DataError(folder, "several instances_val2014*.json files; pass the one to use with --annotations")
    raise DataError(folder, "instances_val2014.json not found (pass the COCO root holding val2014/ and annotations/)")


COCO_REQUIRED_KEYS = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("id", "image_id", "category_id", "segmentation"),
    "categories": ("id", "name"),
}
"""The lists of a COCO instances file and the keys relprop reads from each of their entries."""


def read_coco_instances(path: Path) -> dict:
    """The parsed COCO instances file, its schema checked: :class:`DataError` naming the first missing key."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise DataError(path, "COCO instances file not found") from exc
    except (OSError, ValueError) as exc:
        raise DataError(path, f"not a COCO instances file ({exc})") from exc
    if not isinstance(data, dict):
        raise DataError(path, f"not a COCO instances file (a JSON {type(data).__name__}, not an object)")
    for key, fields in COCO_REQUIRED_KEYS.items():
        entries = data.get(key)
        if not isinstance(entries, list):
            problem = "has no" if key not in data else "has a non-list"
            expected = ", ".join(COCO_REQUIRED_KEYS)
            raise DataError(path, f'{problem} "{key}" list (a COCO instances file has the lists {expected})')
        for position, entry in enumerate(entries):
            missing = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if missing:
                raise DataError(path, f'{key}[{position}] has no "{missing[0]}"')
    for key in ("images", "annotations"):
        if not data[key]:
            raise DataError(path, f'the "{key}" list is empty: nothing to evaluate')
    categories = {c["id"] for c in data["categories"]}
    for position, ann in enumerate(data["annotations"]):
        if ann["category_id"] not in categories:
            raise DataError(path, f'annotations[{position}] has category_id {ann["category_id"]}, not in "categories"')
    return data


class COCO2014(EvaluationDataset):
    """MS COCO 2014 val through pycocotools; regions are instance masks (polygons or RLE, crowds included)."""

    name = "coco2014"
    multilabel = True

    def __init__(
        self, root: str | Path, annotations: str | Path | None = None, difficult_flags: str | Path | None = None
    ) -> None:
        try:
            from pycocotools.coco import COCO
        except ImportError as exc:
            raise RelpropError("COCO needs pycocotools: pip install 'relprop[eval]'.") from exc
        self.root = Path(root)
        self.images_dir = self.root / "val2014"
        if not self.images_dir.is_dir():
            raise DataError(self.root, "no val2014/ folder here (pass the COCO root holding val2014/ and annotations/)")
        self.annotation_file = Path(annotations) if annotations else coco_annotation_file(self.root)
        self.coco = COCO()
        self.coco.dataset = read_coco_instances(self.annotation_file)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()
        unknown = set(self.coco.getCatIds()) - set(COCO_CATEGORY_IDS)
        if unknown:
            raise DataError(self.annotation_file, f"category ids {sorted(unknown)} are not among the 80 COCO classes")
        names = {c["id"]: c["name"] for c in self.coco.loadCats(self.coco.getCatIds())}
        self.class_names = tuple(names.get(i, f"category_{i}") for i in COCO_CATEGORY_IDS)
        self.image_ids = sorted(self.coco.getImgIds())
        self.ids = [Path(self.coco.imgs[i]["file_name"]).stem for i in self.image_ids]
        self.flags = find_difficult_flags(
            Path(difficult_flags) if difficult_flags else None,
            self.root,
            "pointing_game_ebp_coco_difficult*.txt",
            "pointing_game_ebp_coco_difficult.txt",
            len(COCO_CATEGORY_IDS),
        )

    def __getitem__(self, index: int) -> Sample:
        info = self.coco.imgs[self.image_ids[index]]
        path = self.images_dir / info["file_name"]
        image = open_image(path)
        width, height = info["width"], info["height"]
        if image.size != (width, height):
            raise DataError(path, f"image is {image.size[0]}x{image.size[1]} but the annotations say {width}x{height}")
        regions: dict[int, np.ndarray] = {}
        try:
            for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=info["id"], iscrowd=None)):
                label = COCO_CATEGORY_IDS.index(ann["category_id"])
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)  # pycocotools' numpy-2 copy warning
                    mask = self.coco.annToMask(ann).astype(bool)
                regions[label] = regions[label] | mask if label in regions else mask
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise DataError(self.annotation_file, f"bad annotation of image {info['id']} ({exc})") from exc
        labels = tuple(sorted(regions))
        return Sample(
            index,
            self.ids[index],
            path,
            image,
            labels,
            regions,
            frozenset(),
            dict(regions),
            None,
            self.flags.lookup(self.ids[index]),
        )

    def _annotation_files(self) -> dict[str, list[Path]]:
        return {"instances": [self.annotation_file]}

    def describe(self) -> dict:
        return {**super().describe(), "root": str(self.root), "annotations": str(self.annotation_file)}
