"""Shared fixtures: the shared data folder and small random-init models."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

def shared_data_folder(setting: str | None) -> Path:
    """The evaluation data folder (voc2007/, coco/, imagenet/, weights/, reference/): ``RELPROP_SHARED``
    names it or the folder holding it as data/; unset, the checkout's sibling shared/data."""
    if setting is None:
        return Path(__file__).resolve().parents[2] / "shared" / "data"
    folder = Path(setting)
    return folder / "data" if (folder / "data").is_dir() else folder


SHARED = shared_data_folder(os.environ.get("RELPROP_SHARED"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED / "voc2007").is_dir():
        pytest.fail(
            f"evaluation data not found at {SHARED}; set RELPROP_SHARED to the data folder (holding voc2007/, "
            "coco/, imagenet/, weights/, reference/) or to the folder holding it as data/"
        )
    return SHARED


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def efficientnet_lite0(shared: Path) -> torch.nn.Module:
    """The real pretrained EfficientNet-Lite0 from the shared weights, in eval mode."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(shared / "weights" / "efficientnet-lite0-57934424.pth", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


VOC_IDS = ["000027", "000068", "000175", "000243"]  # the first VOC07 test images of the shared subset


def voc_subset(shared: Path, root: Path, ids: list[str] = VOC_IDS) -> Path:
    """A VOC2007 layout at ``root`` holding the shared images ``ids`` (JPEG, XML, ImageSets/Main/test.txt)."""
    source = shared / "voc2007"
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    for image_id in ids:
        shutil.copy(source / "JPEGImages" / f"{image_id}.jpg", root / "JPEGImages")
        shutil.copy(source / "Annotations" / f"{image_id}.xml", root / "Annotations")
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(ids) + "\n")
    return root
