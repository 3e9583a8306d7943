"""Adapters for the official on-disk layouts of PASCAL VOC 2007, MS COCO 2014 val and ImageNet val.

Every adapter yields :class:`Sample` objects in a fixed order (sorted image ids) with ground
truth at the **original** image resolution:

* ``labels``: the classes present in the image (the pointing-game units, evaluation.md §1.1);
* ``regions[c]``: (H, W) bool — where class ``c`` is (VOC: union of all its boxes; COCO: union of
  its instance masks; ImageNet: union of the boxes);
* ``all_difficult``: VOC classes whose every box is PASCAL-``difficult`` (skip rule 1, §1.1);
* ``segmentation[c]`` / ``ignore``: the mIoU ground truth (VOC ``SegmentationClass`` masks with
  255 = void, COCO instance masks, ImageNet boxes), §3.4;
* ``flags``: the EBP "difficult" flags of the image (§1.2), None when the flag file does not list it;
* ``invalid``: classes whose boxes cannot be scored (inverted, outside the image, NaN), with the
  file and row; their box-based scores are skipped and counted, never scored as misses.

The EBP flag files are CC BY-NC (TorchRay) and are never shipped with relprop: they are read from
the data set root, from a path the user gives, or from a user-installed ``torchray`` package.
A file that cannot be read raises :class:`DataError` naming it. ``annotation_files()`` lists the
files a run's results depend on (besides the images), for the resume check.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import math
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import RelpropError
from ..preprocess import load_image

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
COCO_CATEGORY_IDS = tuple(
    i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
)  # the 80 ids in TorchRay's class order (evaluation.md §1.1)
VOC_VOID = 255


class DataError(RelpropError):
    """A data set file is missing or unreadable; ``path`` names it."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        super().__init__(f"{path}: {reason}")


@dataclass
class Sample:
    """One image with its ground truth, all at the original resolution (H, W)."""

    index: int
    image_id: str
    path: Path
    image: Image.Image
    labels: tuple[int, ...]
    regions: dict[int, np.ndarray]
    all_difficult: frozenset[int] = frozenset()
    segmentation: dict[int, np.ndarray] | None = None
    ignore: np.ndarray | None = None
    flags: np.ndarray | None = None
    invalid: dict[int, str] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the original image."""
        return self.image.size

    def difficult(self, label: int) -> bool | None:
        """Whether the pair (image, label) belongs to the EBP difficult subset (§1.1 rule 2).

        True when the flag file sets the class's flag or does not list the image; False when it
        lists the image with flag 0; None when the run has no flag file.
        """
        if self.flags is None:
            return None
        return bool(self.flags[label])


@dataclass
class DifficultFlags:
    """EBP difficult flags (evaluation.md §1.2): image stem -> (classes,) uint8; ``source`` = the file read."""

    source: Path | None
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    width: int = 0

    def lookup(self, stem: str) -> np.ndarray | None:
        """The image's flags; all ones when a file is loaded but does not list it (§1.1); None without a file."""
        if self.source is None:
            return None
        row = self.rows.get(stem)
        if row is None:
            return np.ones(self.width, dtype=np.uint8)
        return row


def read_difficult_flags(path: Path, classes: int) -> DifficultFlags:
    """Parse a tab-separated flag file: an image stem, then ``classes`` integers 0/1 per row."""
    rows: dict[str, np.ndarray] = {}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read the difficult-flag file ({exc})") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != classes + 1 or any(p not in ("0", "1") for p in parts[1:]):
            raise DataError(path, f"line {number} is not an image stem followed by {classes} flags 0/1")
        rows[parts[0]] = np.array([int(p) for p in parts[1:]], dtype=np.uint8)
    return DifficultFlags(path, rows, classes)


def find_difficult_flags(
    explicit: Path | None, root: Path, pattern: str, torchray_file: str, classes: int
) -> DifficultFlags:
    """The flag file: ``explicit``, else ``root/<pattern>``, else the user's ``torchray`` install, else none."""
    if explicit is not None:
        if not explicit.is_file():
            raise DataError(explicit, "difficult-flag file not found")
        return read_difficult_flags(explicit, classes)
    candidates = sorted(root.glob(pattern))
    if len(candidates) > 1:
        raise DataError(root, f"several difficult-flag files match {pattern}; choose one with --difficult-flags")
    if candidates:
        return read_difficult_flags(candidates[0], classes)
    spec = importlib.util.find_spec("torchray")
    if spec is not None and spec.submodule_search_locations:
        installed = Path(next(iter(spec.submodule_search_locations))) / "benchmark" / torchray_file
        if installed.is_file():
            return read_difficult_flags(installed, classes)
    return DifficultFlags(None, {}, classes)


def open_image(path: Path) -> Image.Image:
    """The image as RGB; :class:`DataError` naming the file when it is missing, corrupt, too large or
    of a range :func:`~relprop.preprocess.load_image` refuses."""
    try:
        return load_image(path)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(path, f"unreadable image ({exc})") from exc


Box = tuple[float, float, float, float]


def box_problem(box: Box, width: int, height: int, one_based: bool) -> str | None:
    """Why ``box`` (xmin, ymin, xmax, ymax), inclusive pixel indices, cannot be scored in a width×height
    image (non-finite, inverted, or not overlapping the image), or None; a box partly outside is clipped."""
    xmin, ymin, xmax, ymax = box
    if not all(math.isfinite(v) for v in box):
        return "has a non-finite coordinate"
    if xmax < xmin or ymax < ymin:
        return "is inverted (xmax < xmin or ymax < ymin)"
    first = 1 if one_based else 0
    if xmax < first or ymax < first or xmin > width - 1 + first or ymin > height - 1 + first:
        return f"lies outside the {width}x{height} image"
    return None


def invalid_classes(boxes: Sequence[tuple[int, Box, str]], width: int, height: int, one_based: bool) -> dict[int, str]:
    """label -> why its boxes cannot be scored, for (label, box, where) triples; ``where`` names the file and row."""
    invalid: dict[int, str] = {}
    for label, box, where in boxes:
        problem = box_problem(box, width, height, one_based)
        if problem and label not in invalid:
            invalid[label] = f"{where}: box ({', '.join(f'{v:g}' for v in box)}) {problem}"
    return invalid


def boxes_to_mask(boxes: Sequence[Box], height: int, width: int, one_based: bool) -> np.ndarray:
    """(H, W) bool union of boxes given as inclusive pixel indices (xmin, ymin, xmax, ymax).

    ``one_based`` (VOC): box (1, 1, 2, 3) covers rows 0-2 and columns 0-1. Fractional coordinates
    (rescaled ImageNet boxes) are rounded to the nearest pixel index. Boxes are clipped to the image;
    :func:`box_problem` tells which boxes cannot be used at all.
    """
    mask = np.zeros((height, width), dtype=bool)
    shift = 1 if one_based else 0
    for xmin, ymin, xmax, ymax in boxes:
        x0, y0 = max(0, int(round(xmin)) - shift), max(0, int(round(ymin)) - shift)
        x1, y1 = min(width - 1, int(round(xmax)) - shift), min(height - 1, int(round(ymax)) - shift)
        if x1 >= x0 and y1 >= y0:
            mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


class EvaluationDataset:
    """Common interface: ``len(ds)``, ``ds.image_id(i)``, ``ds[i] -> Sample`` (may raise DataError)."""

    name: str
    class_names: tuple[str, ...]
    multilabel: bool
    flags: DifficultFlags
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def image_id(self, index: int) -> str:
        return self.ids[index]

    def __getitem__(self, index: int) -> Sample:
        raise NotImplementedError

    def annotation_files(self) -> dict[str, list[Path]]:
        """The files besides the images that the results depend on, by group (e.g. "Annotations")."""
        flags = {"difficult flags": [self.flags.source]} if self.flags.source else {}
        return {**self._annotation_files(), **flags}

    def _annotation_files(self) -> dict[str, list[Path]]:
        raise NotImplementedError

    def describe(self) -> dict:
        """What was read, for ``results.json``'s config."""
        return {
            "name": self.name,
            "images": len(self),
            "classes": len(self.class_names),
            "difficult_flags": str(self.flags.source) if self.flags.source else None,
        }


# ---------------------------------------------------------------------------------------- VOC 2007


def voc_root(root: Path) -> Path:
    """The folder holding ``JPEGImages/``, ``Annotations/``, ``ImageSets/``; a VOCdevkit parent is accepted."""
    for candidate in (root, root / "VOC2007", root / "VOCdevkit" / "VOC2007"):
        if (candidate / "Annotations").is_dir() and (candidate / "JPEGImages").is_dir():
            return candidate
    raise DataError(
        root,
        "no VOC2007 layout here: pass the folder holding JPEGImages/, Annotations/ and ImageSets/ "
        "(or its VOCdevkit parent)",
    )


@dataclass(frozen=True)
class VOCObject:
    label: int
    box: Box  # 1-based inclusive (xmin, ymin, xmax, ymax), as written in the XML
    difficult: bool


def parse_voc_xml(path: Path) -> tuple[tuple[int, int], list[VOCObject]]:
    """((width, height), objects) of a VOC annotation file."""
    try:
        root = ET.parse(path).getroot()
        size = root.find("size")
        width, height = int(size.findtext("width")), int(size.findtext("height"))  # type: ignore[union-attr,arg-type]
        objects = []
        for obj in root.iter("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in VOC_CLASSES:
                raise ValueError(f"unknown class name {name!r}")
            box = obj.find("bndbox")
            coords = tuple(float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore[union-attr]
            objects.append(
                VOCObject(VOC_CLASSES.index(name), coords, (obj.findtext("difficult") or "0").strip() == "1")
            )  # type: ignore[arg-type]
    except FileNotFoundError as exc:
        raise DataError(path, "annotation file not found") from exc
    except (ET.ParseError, AttributeError, TypeError, ValueError) as exc:
        raise DataError(path, f"not a valid VOC annotation ({exc})") from exc
    return (width, height), objects


class VOC2007(EvaluationDataset):
    """PASCAL VOC 2007 (``split`` of ``ImageSets/Main``), boxes + difficult flags + SegmentationClass masks."""

    name = "voc2007"
    class_names = VOC_CLASSES
    multilabel = True

    def __init__(self, root: str | Path, split: str = "test", difficult_flags: str | Path | None = None) -> None:
        self.root = voc_root(Path(root))
        listing = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not listing.is_file():
            raise DataError(listing, f"split list not found (is '{split}' a VOC split?)")
        self.ids = sorted({line.split()[0] for line in listing.read_text().splitlines() if line.strip()})
        self.split = split
        self.flags = find_difficult_flags(
            Path(difficult_flags) if difficult_flags else None,
            self.root,
            "pointing_game_ebp_voc07_difficult*.txt",
            "pointing_game_ebp_voc07_difficult.txt",
            len(VOC_CLASSES),
        )

    def __getitem__(self, index: int) -> Sample:
        image_id = self.ids[index]
        (width, height), objects = parse_voc_xml(self.root / "Annotations" / f"{image_id}.xml")
        path = self.root / "JPEGImages" / f"{image_id}.jpg"
        image = open_image(path)
        if image.size != (width, height):
            raise DataError(path, f"image is {image.size[0]}x{image.size[1]} but its annotation says {width}x{height}")
        labels = tuple(sorted({o.label for o in objects}))
        xml = self.root / "Annotations" / f"{image_id}.xml"
        where = [(o.label, o.box, f"{xml} object {k}") for k, o in enumerate(objects, start=1)]
        invalid = invalid_classes(where, width, height, one_based=True)
        regions = {
            c: boxes_to_mask([o.box for o in objects if o.label == c], height, width, one_based=True)
            for c in labels
            if c not in invalid
        }
        all_difficult = frozenset(c for c in labels if all(o.difficult for o in objects if o.label == c))
        segmentation, ignore = self._segmentation(image_id, (width, height))
        return Sample(
            index,
            image_id,
            path,
            image,
            labels,
            regions,
            all_difficult,
            segmentation,
            ignore,
            self.flags.lookup(image_id),
            invalid,
        )

    def _annotation_files(self) -> dict[str, list[Path]]:
        masks = [self.root / "SegmentationClass" / f"{i}.png" for i in self.ids]
        return {
            "split list": [self.root / "ImageSets" / "Main" / f"{self.split}.txt"],
            "Annotations": [self.root / "Annotations" / f"{i}.xml" for i in self.ids],
            "SegmentationClass": [m for m in masks if m.is_file()],
        }

    def _segmentation(
        self, image_id: str, size: tuple[int, int]
    ) -> tuple[dict[int, np.ndarray] | None, np.ndarray | None]:
        path = self.root / "SegmentationClass" / f"{image_id}.png"
        if not path.is_file():
            return None, None
        try:
            with Image.open(path) as png:
                if png.size != size:
                    raise DataError(path, f"mask is {png.size[0]}x{png.size[1]} but the image is {size[0]}x{size[1]}")
                values = np.asarray(png if png.mode in ("P", "L") else png.convert("L"))
        except (OSError, SyntaxError) as exc:
            raise DataError(path, f"unreadable mask ({exc})") from exc
        present = [int(v) for v in np.unique(values) if 1 <= v <= len(VOC_CLASSES)]
        return {v - 1: values == v for v in present}, values == VOC_VOID

    def describe(self) -> dict:
        return {**super().describe(), "root": str(self.root), "split": self.split}


# ---------------------------------------------------------------------------------------- COCO 2014


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


# ---------------------------------------------------------------------------------------- ImageNet


@dataclass(frozen=True)
class _ImageNetEntry:
    file: str
    label: int
    boxes: tuple[Box, ...]
    size: tuple[int, int] | None  # (width, height) the boxes refer to, when the CSV says
    rows: tuple[str, ...]  # where each box comes from ("val_boxes.csv row 17")


IMAGENET_SYNSET_FILES = ("imagenet_class_index.csv", "imagenet_class_index.json", "LOC_synset_mapping.txt")
IMAGENET_BOX_FILES = ("val_boxes.csv", "LOC_val_solution.csv")


def read_synsets(root: Path) -> tuple[list[str], tuple[str, ...]]:
    """(wnids, class names) in class-index order from the first of IMAGENET_SYNSET_FILES under ``root``."""
    csv_path, json_path, mapping_path = (root / name for name in IMAGENET_SYNSET_FILES)
    try:
        if csv_path.is_file():
            with csv_path.open(newline="") as f:
                rows = sorted(csv.DictReader(f), key=lambda r: int(r["index"]))
            return [r["wnid"] for r in rows], tuple(r["name"] for r in rows)
        if json_path.is_file():
            table = json.loads(json_path.read_text())
            rows = [table[str(i)] for i in range(len(table))]
            return [r[0] for r in rows], tuple(r[1] for r in rows)
        if mapping_path.is_file():
            pairs = sorted(line.split(" ", 1) for line in mapping_path.read_text().splitlines() if line.strip())
            return [p[0] for p in pairs], tuple(p[1] if len(p) > 1 else p[0] for p in pairs)
    except (OSError, KeyError, ValueError, IndexError) as exc:
        raise DataError(root, f"unreadable synset mapping ({exc})") from exc
    raise DataError(root, "no synset mapping (imagenet_class_index.csv/.json or LOC_synset_mapping.txt)")


class ImageNetVal(EvaluationDataset):
    """ILSVRC2012 val: JPEGs, LOC boxes (``val_boxes.csv`` or Kaggle's ``LOC_val_solution.csv``) and the
    synset -> index mapping (``imagenet_class_index.csv``/``.json`` or ``LOC_synset_mapping.txt``).

    One unit per image (its ground-truth class); the region is the union of its boxes. No difficult subset.
    """

    name = "imagenet"
    multilabel = False

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.images_dir = next(
            (
                d
                for d in (self.root / "val", self.root / "ILSVRC" / "Data" / "CLS-LOC" / "val", self.root)
                if d.is_dir() and any(d.glob("*.JPEG"))
            ),
            None,
        )
        if self.images_dir is None:
            raise DataError(self.root, "no ImageNet val JPEGs here (expected val/*.JPEG)")
        self.wnids, self.class_names = read_synsets(self.root)
        entries = self._entries()
        self.entries = [entries[k] for k in sorted(entries)]
        self.ids = [Path(e.file).stem for e in self.entries]
        self.flags = DifficultFlags(None, {}, len(self.wnids))

    def _entries(self) -> dict[str, _ImageNetEntry]:
        boxes_csv, kaggle_csv = (self.root / name for name in IMAGENET_BOX_FILES)
        if boxes_csv.is_file():
            return self._read_boxes_csv(boxes_csv)
        if kaggle_csv.is_file():
            return self._read_kaggle_csv(kaggle_csv)
        raise DataError(self.root, "no box file (val_boxes.csv or LOC_val_solution.csv)")

    def _index(self, wnid: str, path: Path) -> int:
        try:
            return self.wnids.index(wnid)
        except ValueError:
            raise DataError(path, f"synset {wnid} is not in the class mapping") from None

    def _read_boxes_csv(self, path: Path) -> dict[str, _ImageNetEntry]:
        """Rows ``image,label,wnid,width,height,xmin,ymin,xmax,ymax,...``: boxes in the shipped image."""
        grouped: dict[str, list[tuple[int, dict[str, str]]]] = {}
        try:
            with path.open(newline="") as f:
                for number, row in enumerate(csv.DictReader(f), start=2):  # line 1 is the header
                    grouped.setdefault(row["image"], []).append((number, row))
            entries = {}
            for file, rows in grouped.items():
                label = self._index(rows[0][1]["wnid"], path)
                boxes = tuple(tuple(float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax")) for _, r in rows)
                size = (int(rows[0][1]["width"]), int(rows[0][1]["height"]))
                where = tuple(f"{path} line {n}" for n, _ in rows)
                entries[file] = _ImageNetEntry(file, label, boxes, size, where)  # type: ignore[arg-type]
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(path, f"not a valid box file ({exc})") from exc
        return entries

    def _read_kaggle_csv(self, path: Path) -> dict[str, _ImageNetEntry]:
        """Kaggle ``ImageId,PredictionString`` with repeated ``synset xmin ymin xmax ymax`` (original pixels)."""
        entries = {}
        try:
            with path.open(newline="") as f:
                for number, row in enumerate(csv.DictReader(f), start=2):
                    tokens = row["PredictionString"].split()
                    groups = [tokens[i : i + 5] for i in range(0, len(tokens), 5)]
                    label = self._index(groups[0][0], path)
                    boxes = tuple(tuple(float(v) for v in g[1:5]) for g in groups)
                    where = tuple(f"{path} line {number} box {k}" for k in range(1, len(groups) + 1))
                    file = row["ImageId"] + ".JPEG"
                    entries[file] = _ImageNetEntry(file, label, boxes, None, where)  # type: ignore[arg-type]
        except (OSError, KeyError, ValueError, IndexError) as exc:
            raise DataError(path, f"not a valid LOC_val_solution file ({exc})") from exc
        return entries

    def __getitem__(self, index: int) -> Sample:
        entry = self.entries[index]
        path = self.images_dir / entry.file
        image = open_image(path)
        width, height = image.size
        if entry.size is not None and entry.size != (width, height):
            raise DataError(path, f"image is {width}x{height} but the box file says {entry.size[0]}x{entry.size[1]}")
        where = [(entry.label, box, row) for box, row in zip(entry.boxes, entry.rows)]
        invalid = invalid_classes(where, width, height, one_based=False)
        regions = {} if invalid else {entry.label: boxes_to_mask(entry.boxes, height, width, one_based=False)}
        return Sample(
            index,
            self.ids[index],
            path,
            image,
            (entry.label,),
            regions,
            segmentation=dict(regions),
            invalid=invalid,
        )

    def _annotation_files(self) -> dict[str, list[Path]]:
        boxes = next(p for p in (self.root / name for name in IMAGENET_BOX_FILES) if p.is_file())
        synsets = next(p for p in (self.root / name for name in IMAGENET_SYNSET_FILES) if p.is_file())
        return {"boxes": [boxes], "synset mapping": [synsets]}

    def describe(self) -> dict:
        return {**super().describe(), "root": str(self.root)}


DATASETS = ("voc2007", "coco2014", "imagenet")
ALIASES = {"coco": "coco2014"}
"""Other names accepted for a data set (results and resume use the canonical name)."""


def canonical_name(name: str) -> str:
    """The data set's name in :data:`DATASETS` for ``name`` or one of its :data:`ALIASES`."""
    name = ALIASES.get(name, name)
    if name not in DATASETS:
        raise RelpropError(f"unknown data set '{name}'; choose one of: {', '.join(DATASETS)}.")
    return name


def class_count(name: str, root: str | Path) -> int:
    """How many classes data set ``name`` under ``root`` has, without reading its images or annotations
    (ImageNet: from its synset mapping), so that a model of the wrong kind is refused before loading data."""
    name = canonical_name(name)
    if name == "voc2007":
        return len(VOC_CLASSES)
    if name == "coco2014":
        return len(COCO_CATEGORY_IDS)
    if not Path(root).is_dir():
        raise DataError(root, "data set root not found")
    return len(read_synsets(Path(root))[0])


def open_dataset(
    name: str,
    root: str | Path,
    *,
    split: str = "test",
    difficult_flags: str | Path | None = None,
    annotations: str | Path | None = None,
) -> EvaluationDataset:
    """The adapter for ``name`` (one of :data:`DATASETS` or :data:`ALIASES`) reading the layout under ``root``."""
    name = canonical_name(name)
    if not Path(root).is_dir():
        raise DataError(root, "data set root not found")
    if name == "voc2007":
        return VOC2007(root, split=split, difficult_flags=difficult_flags)
    if name == "coco2014":
        return COCO2014(root, annotations=annotations, difficult_flags=difficult_flags)
    if difficult_flags is not None:
        raise RelpropError("ImageNet has no difficult subset; drop --difficult-flags.")
    return ImageNetVal(root)
