"""Grad-CAM and Grad-CAM++: hand-written formulas, Captum's output, layer choice, the public contract."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from captum.attr import LayerAttribution, LayerGradCam

import relprop
from relprop.methods.cam import GradCAM, GradCAMPlusPlus
from model_state import assert_unchanged, snapshot


class Split(nn.Module):
    """``features`` (conv + ReLU) -> flatten -> linear, so ``A`` and the head can be used separately."""

    def __init__(self, stride: int, side: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, stride=stride, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * side * side, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _net(stride: int, side: int) -> nn.Module:
    torch.manual_seed(0)
    return Split(stride, side).double().eval()


def test_gradcam_equals_hand_written():
    """ReLU(Σ_c mean_hw(∂y_t/∂A_c) · A_c) at 4×4, bilinearly upsampled to 8×8, in each of the 3 channels."""
    net = _net(stride=2, side=4)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    targets = [2, 0]
    a = net.features(x).detach().requires_grad_(True)
    y = net.head(a)
    (g,) = torch.autograd.grad(y[[0, 1], targets].sum(), a)
    cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True)).detach()
    expected = F.interpolate(cam, size=(8, 8), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    got = GradCAM(net, layer="features").attribute(x, target=targets)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert (cam == 0).any() and (cam > 0).any(), "the test case must exercise the ReLU"


def test_gradcampp_equals_the_papers_derivative_formula():
    """Chattopadhay et al. (2018), eq. 19 with S = exp(y_t), derivatives of S taken by autograd:
    α = ∂²S/∂A² / (2 ∂²S/∂A² + Σ_ab A_ab ∂³S/∂A³), w_k = Σ_ij α ReLU(∂S/∂A), map = ReLU(Σ_k w_k A_k),
    divided by exp(y_t), the common factor relprop drops. A is 3×3 on a 3×3 input: no upsampling."""
    net = _net(stride=1, side=3)
    x = torch.randn(2, 3, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    targets = [1, 2]
    expected = []
    for i, t in enumerate(targets):
        a = net.features(x[i : i + 1]).detach()

        def score(act: torch.Tensor, t: int = t) -> torch.Tensor:
            return torch.exp(net.head(act)[0, t])

        def second(act: torch.Tensor) -> torch.Tensor:
            return torch.autograd.functional.hessian(score, act, create_graph=True).reshape(a.numel(), a.numel()).diagonal()

        d1 = torch.autograd.functional.jacobian(score, a).reshape(-1)
        d2 = second(a)
        d3 = torch.autograd.functional.jacobian(second, a).reshape(a.numel(), a.numel()).diagonal()
        d1, d2, d3 = (d.view(a.shape[1], -1) for d in (d1, d2, d3))
        acts = a.view(a.shape[1], -1)
        alpha = d2 / (2 * d2 + acts.sum(dim=1, keepdim=True) * d3)
        weights = (alpha * torch.relu(d1)).sum(dim=1)
        cam = torch.relu((weights[:, None] * acts).sum(dim=0)) / score(a)
        expected.append(cam.view(1, 1, 3, 3).expand(1, 3, 3, 3))
    got = GradCAMPlusPlus(net, layer="features").attribute(x, target=targets)
    torch.testing.assert_close(got, torch.cat(expected).detach(), rtol=1e-9, atol=1e-12)
    assert got.abs().max() > 0


def test_gradcampp_is_finite_for_dead_layers():
    net = _net(stride=1, side=3)
    x = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        net.features[0].weight.zero_()
        net.features[0].bias.zero_()
    assert torch.equal(GradCAMPlusPlus(net, layer="features").attribute(x), torch.zeros_like(x))
    with torch.no_grad():
        net.head[1].weight.zero_()  # zero gradient: every denominator is 0
    assert torch.equal(GradCAMPlusPlus(net, layer="features").attribute(x), torch.zeros_like(x))


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))


def test_gradcam_equals_captum(resnet, images):
    targets = torch.tensor([1, 5, 9])
    got = GradCAM(resnet).attribute(images, target=targets)
    coarse = LayerGradCam(resnet, resnet.layer4).attribute(images, target=targets, relu_attributions=True)
    expected = LayerAttribution.interpolate(coarse, (64, 64), "bilinear").expand(-1, 3, -1, -1)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


class FunctionalTail(nn.Module):
    """Like DenseNet: the last convolutional block ends in a function call (F.relu), not a module."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.classifier = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(F.relu(self.features(x)), 1).flatten(1))


def test_layer_choice(resnet):
    assert GradCAM(resnet).layer == "layer4"
    assert GradCAMPlusPlus(resnet, layer="layer3.1").layer == "layer3.1"
    assert GradCAM(FunctionalTail()).layer == "features"
    assert GradCAM(FunctionalTail(), layer="relu").layer == "features"
    assert GradCAM(torchvision.models.densenet121()).layer == "features"
    with pytest.raises(ValueError, match="layer4"):
        GradCAM(resnet, layer="layer5")
    with pytest.raises(TypeError, match="str"):
        GradCAMPlusPlus(resnet, layer=4)


class SharedRelu(nn.Module):
    """One ReLU module applied twice (like EfficientNet's ``_swish``), or two separate ones."""

    def __init__(self, shared: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 5, 3)
        self.relu = nn.ReLU()
        self.relu2 = self.relu if shared else nn.ReLU()
        self.fc = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu2(self.conv2(self.relu(self.conv1(x)))).flatten(1))


@pytest.mark.parametrize("cls", [GradCAM, GradCAMPlusPlus])
def test_a_shared_module_contributes_its_last_call(cls):
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    shared = cls(SharedRelu(shared=True).eval(), layer="relu").attribute(x, target=[0, 2])
    separate = cls(SharedRelu(shared=False).eval(), layer="relu2").attribute(x, target=[0, 2])
    torch.testing.assert_close(shared, separate, rtol=0, atol=0)
    assert shared.abs().max() > 0


@pytest.mark.parametrize("cls", [GradCAM, GradCAMPlusPlus])
def test_contract(cls, resnet, images):
    method = cls(resnet)
    targets = [3, 0, 8]
    batch = method.attribute(images, target=targets)
    assert batch.shape == images.shape and torch.isfinite(batch).all() and (batch >= 0).all()
    assert torch.equal(batch[:, 0], batch[:, 2]), "the map is repeated in every channel"
    for i, t in enumerate(targets):
        alone = method.attribute(images[i : i + 1], target=t)
        assert ((batch[i : i + 1] - alone).abs().max() / batch.abs().max()).item() <= 1e-5
    top = resnet(images).argmax(dim=1)
    assert torch.equal(method.attribute(images), method.attribute(images, target=top))


@pytest.mark.parametrize("cls", [GradCAM, GradCAMPlusPlus])
def test_model_and_input_unchanged(cls, resnet, images):
    model = copy.deepcopy(resnet).train()
    model.fc.requires_grad_(False)
    before = snapshot(model)
    x = images.clone()
    with pytest.warns(UserWarning, match="training mode"):
        cls(model).attribute(x, target=[0, 1, 2])
    assert_unchanged(before, model)
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(x, images)
    with pytest.warns(UserWarning, match="training mode"), pytest.raises(relprop.InputError):
        cls(model).attribute(x, target=10)
    assert_unchanged(before, model)


@pytest.mark.parametrize("cls", [GradCAM, GradCAMPlusPlus])
def test_model_unchanged_when_the_forward_pass_fails(cls):
    class FailsOnSecondCall(nn.Module):
        calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("boom")
            return x

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), FailsOnSecondCall(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        cls(model, layer="1").attribute(torch.randn(2, 3, 8, 8))
    assert_unchanged(before, model)
