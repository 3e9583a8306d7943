"""PASCAL VOC 2007 in its official layout (``VOCdevkit/VOC2007``): boxes, difficult flags, segmentation masks."""


from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .common import (
    Box, DataError, EvaluationDataset, Sample, boxes_to_mask, find_difficult_flags, invalid_classes, open_image,
)

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
VOC_VOID = 255


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
