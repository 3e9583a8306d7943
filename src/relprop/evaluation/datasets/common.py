"""What every data set adapter shares: the :class:`Sample` it yields, the :class:`EvaluationDataset` base,
image opening, box checks and the EBP difficult flags."""


from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ...errors import RelpropError
from ...preprocess import load_image

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
