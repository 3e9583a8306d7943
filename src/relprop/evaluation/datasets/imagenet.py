"""ImageNet val with its localisation boxes and class index."""


from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path


from .common import (
    Box, DataError, DifficultFlags, EvaluationDataset, Sample, boxes_to_mask, invalid_classes, open_image,
)

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
