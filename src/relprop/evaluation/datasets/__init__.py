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

from pathlib import Path

from ...errors import RelpropError
from .coco import COCO_CATEGORY_IDS, COCO2014
from .common import DataError, EvaluationDataset, Sample, boxes_to_mask, open_image
from .imagenet import ImageNetVal, read_synsets
from .voc import VOC_CLASSES, VOC2007

__all__ = [
    "ALIASES", "COCO2014", "COCO_CATEGORY_IDS", "DATASETS", "DataError", "EvaluationDataset", "ImageNetVal", "Sample",
    "VOC2007", "VOC_CLASSES", "boxes_to_mask", "canonical_name", "class_count", "open_dataset", "open_image",
]


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
