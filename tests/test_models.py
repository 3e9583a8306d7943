"""RSP and AE on every supported stock architecture: batch of 4, 4 targets, model untouched."""

from __future__ import annotations

import pytest
import torch
import torchvision

import relprop
from conftest import efficientnet_lite0
from model_state import assert_unchanged, snapshot

# (constructor, input size, automatically found seed layer)
MODELS = {
    "alexnet": (lambda: torchvision.models.alexnet(), 128, "features.11"),
    "vgg16": (lambda: torchvision.models.vgg16(), 96, "features.29"),
    "vgg16_bn": (lambda: torchvision.models.vgg16_bn(), 96, "features.42"),
    "resnet18": (lambda: torchvision.models.resnet18(), 128, "layer4"),
    "resnet50": (lambda: torchvision.models.resnet50(), 128, "layer4"),
    "densenet121": (lambda: torchvision.models.densenet121(), 128, "relu"),
    "inception_v3": (lambda: torchvision.models.inception_v3(aux_logits=False, init_weights=True), 160, "Mixed_7c"),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(), 128, "features"),
}
METHODS = {
    "rsp": lambda m: relprop.RSP(m),
    "ae_r1": lambda m: relprop.AE(m, ratio=1.0),
    "ae_r2": lambda m: relprop.AE(m, ratio=2.0),
}
TARGETS = [1, 7, 42, 999]


def _check_map(attr: torch.Tensor, x: torch.Tensor) -> None:
    assert attr.shape == x.shape and attr.dtype == x.dtype
    assert torch.isfinite(attr).all()
    for sample in attr:
        assert sample.std() > 0, "constant map"


@pytest.mark.parametrize("name", list(MODELS))
def test_stock_torchvision_model(name):
    build, size, seed_layer = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    before = snapshot(model)
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    for method_name, make in METHODS.items():
        method = make(model)
        assert method.seed_layer == seed_layer
        attr = method.attribute(x, target=TARGETS)
        _check_map(attr, x)
        # different targets give different maps
        assert not torch.allclose(attr[0], method.attribute(x[:1], target=[TARGETS[1]])[0])
    assert_unchanged(before, model)


def test_pretrained_efficientnet_lite0(shared_data):
    model = efficientnet_lite0(shared_data)
    before = snapshot(model)
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    for make in METHODS.values():
        method = make(model)
        assert method.seed_layer == "_swish"
        _check_map(method.attribute(x, target=TARGETS), x)
    assert_unchanged(before, model)
