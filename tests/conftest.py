"""Shared fixtures: the shared data folder and small random-init models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED = Path(os.environ.get("RELPROP_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared data not found at {SHARED}; set RELPROP_SHARED to the folder holding data/")
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
