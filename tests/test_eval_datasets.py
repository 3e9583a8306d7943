"""Data set adapters against the annotation files, parsed independently here (torchvision, json, csv)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torchvision
from PIL import Image

import relprop
from relprop.evaluation.datasets import COCO_CATEGORY_IDS, VOC_CLASSES, DataError, open_dataset


def _flag_rows(path: Path) -> dict[str, list[int]]:
    with path.open() as f:
        return {row[0]: [int(v) for v in row[1:]] for row in csv.reader(f, delimiter="\t") if row}


@pytest.fixture(scope="module")
def voc_devkit(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VOCdevkit parent whose VOC2007 links to the shared subset (the layout torchvision expects)."""
    parent = tmp_path_factory.mktemp("devkit")
    (parent / "VOCdevkit").mkdir()
    (parent / "VOCdevkit" / "VOC2007").symlink_to((shared_data / "voc2007").resolve())
    return parent


@pytest.mark.parametrize("split, images", [("test", 39), ("trainval", 66)])
def test_voc_matches_torchvision_parse(shared_data: Path, voc_devkit: Path, split: str, images: int) -> None:
    reference = torchvision.datasets.VOCDetection(str(voc_devkit), year="2007", image_set=split)
    ours = open_dataset("voc2007", shared_data / "voc2007", split=split)
    assert len(ours) == len(reference) == images
    objects = difficult_objects = 0
    for i in range(len(ours)):
        annotation = reference[i][1]["annotation"]
        sample = ours[i]
        assert sample.image_id == Path(reference.images[i]).stem
        names = [o["name"] for o in annotation["object"]]
        objects += len(names)
        difficult_objects += sum(o["difficult"] == "1" for o in annotation["object"])
        assert sample.labels == tuple(sorted({VOC_CLASSES.index(n) for n in names}))
        for c in sample.labels:
            boxes = [o["bndbox"] for o in annotation["object"] if VOC_CLASSES.index(o["name"]) == c]
            expected = np.zeros(sample.regions[c].shape, dtype=bool)
            for b in boxes:
                expected[int(b["ymin"]) - 1 : int(b["ymax"]), int(b["xmin"]) - 1 : int(b["xmax"])] = True
            assert (sample.regions[c] == expected).all()
            all_difficult = all(o["difficult"] == "1" for o in annotation["object"] if o["name"] == VOC_CLASSES[c])
            assert (c in sample.all_difficult) == all_difficult
    if split == "test":
        assert (objects, difficult_objects) == (sum(1 for _ in _test_objects(shared_data)), 9)


def _test_objects(shared_data: Path):  # type: ignore[no-untyped-def]
    import xml.etree.ElementTree as ET

    ids = (shared_data / "voc2007" / "ImageSets" / "Main" / "test.txt").read_text().split()
    for image_id in ids:
        yield from ET.parse(shared_data / "voc2007" / "Annotations" / f"{image_id}.xml").getroot().iter("object")


def test_voc_difficult_flags_and_masks(shared_data: Path, voc_devkit: Path) -> None:
    root = shared_data / "voc2007"
    rows = _flag_rows(root / "pointing_game_ebp_voc07_difficult_subset.txt")
    ours = open_dataset("voc2007", voc_devkit)  # a VOCdevkit parent is accepted too
    assert ours.flags.source is not None and len(ours.flags.rows) == len(rows) == 39
    flagged_images = 0
    masks = 0
    for i in range(len(ours)):
        sample = ours[i]
        assert [int(v) for v in sample.flags] == rows[sample.image_id]
        flagged_images += any(rows[sample.image_id])
        mask_file = root / "SegmentationClass" / f"{sample.image_id}.png"
        assert (sample.segmentation is not None) == mask_file.is_file()
        if sample.segmentation is not None:
            masks += 1
            values = np.asarray(Image.open(mask_file))
            assert sorted(c + 1 for c in sample.segmentation) == sorted(v for v in np.unique(values) if 0 < v < 255)
            assert (sample.ignore == (values == 255)).all()
    assert flagged_images == 11 and masks == 32


def test_coco_matches_the_json(shared_data: Path) -> None:
    root = shared_data / "coco"
    data = json.loads((root / "annotations" / "instances_val2014_subset.json").read_text())
    rows = _flag_rows(root / "pointing_game_ebp_coco_difficult_subset.txt")
    ours = open_dataset("coco2014", root)
    assert len(ours) == len(data["images"]) == 99
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    assert sum(map(len, by_image.values())) == 861 and sum(a["iscrowd"] for a in data["annotations"]) == 8
    names = {c["id"]: c["name"] for c in data["categories"]}
    assert list(ours.class_names) == [names[i] for i in COCO_CATEGORY_IDS]
    files = {img["id"]: img["file_name"] for img in data["images"]}
    crowd_images = {a["image_id"] for a in data["annotations"] if a["iscrowd"]}
    for i, image_id in enumerate(sorted(files)):
        sample = ours[i]
        assert sample.image_id == Path(files[image_id]).stem
        expected = sorted({COCO_CATEGORY_IDS.index(a["category_id"]) for a in by_image.get(image_id, [])})
        assert list(sample.labels) == expected
        assert [int(v) for v in sample.flags] == rows[sample.image_id]
        if image_id in crowd_images:  # crowd regions are part of the class's region
            for ann in (a for a in by_image[image_id] if a["iscrowd"]):
                assert COCO_CATEGORY_IDS.index(ann["category_id"]) in sample.labels
        for label, region in sample.regions.items():
            assert region.shape == (sample.size[1], sample.size[0]) and region.any()


def test_imagenet_matches_the_csv_files(shared_data: Path) -> None:
    root = shared_data / "imagenet"
    with (root / "val_labels.csv").open() as f:
        labels = {row["image"]: int(row["label"]) for row in csv.DictReader(f)}
    with (root / "val_boxes.csv").open() as f:
        boxes: dict[str, list[tuple[float, ...]]] = {}
        for row in csv.DictReader(f):
            boxes.setdefault(row["image"], []).append(tuple(float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")))
    ours = open_dataset("imagenet", root)
    assert len(ours) == len(labels) == 500 and sum(map(len, boxes.values())) == 764
    assert ours.flags.source is None
    for i in range(0, len(ours), 25):
        sample = ours[i]
        name = sample.image_id + ".JPEG"
        assert sample.labels == (labels[name],)
        expected = np.zeros((sample.size[1], sample.size[0]), dtype=bool)
        for x0, y0, x1, y1 in boxes[name]:  # fractional inclusive pixel indices, rounded
            expected[round(y0) : round(y1) + 1, round(x0) : round(x1) + 1] = True
        assert (sample.regions[labels[name]] == expected).all()
        assert sample.difficult(labels[name]) is None


def _voc_copy(shared_data: Path, target: Path, ids: list[str]) -> Path:
    source = shared_data / "voc2007"
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (target / folder).mkdir(parents=True)
    for image_id in ids:
        shutil.copy(source / "JPEGImages" / f"{image_id}.jpg", target / "JPEGImages")
        shutil.copy(source / "Annotations" / f"{image_id}.xml", target / "Annotations")
    (target / "ImageSets" / "Main" / "test.txt").write_text("\n".join(ids) + "\n")
    return target


def test_unreadable_files_are_named(shared_data: Path, tmp_path: Path) -> None:
    root = _voc_copy(shared_data, tmp_path / "voc", ["000027", "000068"])
    jpeg = root / "JPEGImages" / "000027.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:500])
    (root / "Annotations" / "000068.xml").write_text("<annotation><size>")
    dataset = open_dataset("voc2007", root)
    assert dataset.flags.source is None  # the copy has no flag file
    with pytest.raises(DataError) as error:
        dataset[0]
    assert error.value.path == str(jpeg)
    with pytest.raises(DataError, match="000068.xml"):
        dataset[1]


def test_wrong_roots_get_clear_errors(shared_data: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no VOC2007 layout"):
        open_dataset("voc2007", tmp_path)
    with pytest.raises(DataError, match="not found"):
        open_dataset("imagenet", tmp_path / "missing")
    with pytest.raises(DataError, match="instances_val2014"):
        (tmp_path / "val2014").mkdir()
        open_dataset("coco2014", tmp_path)


def test_flag_files_are_not_shipped_with_the_package() -> None:
    package = Path(relprop.__file__).parent
    assert not [p for p in package.rglob("*") if "difficult" in p.name.lower()]


def test_imagenet_kaggle_layout(tmp_path: Path) -> None:
    (tmp_path / "val").mkdir()
    Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "val" / "ILSVRC2012_val_00000007.JPEG")
    (tmp_path / "LOC_synset_mapping.txt").write_text("n02000000 second class\nn01000000 first class, alias\n")
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\nILSVRC2012_val_00000007,n02000000 1 2 3 4 n02000000 10 20 12 29 \n"
    )
    dataset = open_dataset("imagenet", tmp_path)
    assert dataset.class_names == ("first class, alias", "second class")  # synsets sorted
    sample = dataset[0]
    assert sample.labels == (1,)
    expected = np.zeros((30, 40), dtype=bool)
    expected[2:5, 1:4] = True  # inclusive pixel indices
    expected[20:30, 10:13] = True
    assert (sample.regions[1] == expected).all()
