"""mode="reference" reproduces the authors' released code (shared/data/reference, float64)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision

import relprop

TOLERANCE = 1e-7  # max|Δ| / max|ref|: an exact implementation reaches the float32 storage rounding of the references


def _cases(shared):
    return json.loads((shared / "reference" / "cases.json").read_text())["cases"]


@pytest.fixture(scope="module")
def models():
    built = {}

    def get(name: str) -> torch.nn.Module:
        if name not in built:
            torch.manual_seed(0)
            model = torchvision.models.vgg16() if name == "vgg16_seed0" else torchvision.models.resnet50()
            built[name] = model.eval().double()
        return built[name]

    return get


def _case_ids():
    from conftest import SHARED

    path = SHARED / "reference" / "cases.json"
    return [c["file"] for c in json.loads(path.read_text())["cases"]] if path.exists() else ["missing-shared-data"]


@pytest.mark.parametrize("case_file", _case_ids())
def test_reference_case_matches_authors_float64_run(case_file, shared_data, models):
    case = next(c for c in _cases(shared_data) if c["file"] == case_file)
    data = np.load(shared_data / "reference" / case_file)
    model = models(case["model"])
    if case["method"] == "RSP":
        method = relprop.RSP(model, mode="reference")
    else:
        method = relprop.AE(model, ratio=case["params"]["ratio"], mode="reference")
    x = torch.from_numpy(data["input"]).double()
    ours = method.attribute(x, target=int(data["target"])).sum(dim=1, keepdim=True).numpy()
    ref = data["output_f64run"].astype(np.float64)
    assert ours.shape == ref.shape
    error = np.abs(ours - ref).max() / np.abs(ref).max()
    assert error <= TOLERANCE, f"{case_file}: max|Δ|/max|ref| = {error:.3e}"

