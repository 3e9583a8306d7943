"""Gradient baselines: closed forms, Captum's own output, and the public contract on ResNet-18."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torchvision
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from captum.attr import InputXGradient, IntegratedGradients, Saliency

import relprop
from relprop.methods.gradient import GradientXInput, GuidedBackprop, SmoothGrad
from model_state import assert_unchanged, snapshot


class TinyNet(nn.Module):
    """conv - ReLU(in place) - conv - ReLU - global average - linear, float64."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 5, 3, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


@pytest.fixture
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet().double().eval()


@pytest.fixture
def x64() -> torch.Tensor:
    return torch.randn(3, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _autograd_input_gradient(model: nn.Module, x: torch.Tensor, targets: list[int]) -> torch.Tensor:
    xi = x.clone().requires_grad_(True)
    y = model(xi)
    (g,) = torch.autograd.grad(y[torch.arange(len(targets)), targets].sum(), xi)
    return g


def test_gradient_equals_autograd(tiny, x64):
    targets = [0, 3, 1]
    expected = _autograd_input_gradient(tiny, x64, targets)
    got = relprop.get_method("gradient")(tiny).attribute(x64, target=targets)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert (got < 0).any(), "the gradient is signed"
    absolute = relprop.get_method("gradient")(tiny, absolute=True).attribute(x64, target=targets)
    torch.testing.assert_close(absolute, expected.abs(), rtol=0, atol=1e-12)


def test_gradient_x_input_closed_form(tiny, x64):
    targets = [2, 2, 0]
    expected = x64 * _autograd_input_gradient(tiny, x64, targets)
    torch.testing.assert_close(GradientXInput(tiny).attribute(x64, target=targets), expected, rtol=0, atol=1e-12)


def test_integrated_gradients_completeness(tiny, x64):
    """Σ IG = y_t(x) − y_t(baseline) up to the quadrature error at the ReLU kinks (Sundararajan et al.)."""
    ig = relprop.get_method("integrated_gradients")(tiny, baseline=0.5, n_steps=200)
    targets = torch.tensor([1, 0, 3])
    attribution = ig.attribute(x64, target=targets)
    rows = torch.arange(3)
    gap = tiny(x64)[rows, targets] - tiny(torch.full_like(x64, 0.5))[rows, targets]
    torch.testing.assert_close(attribution.sum(dim=(1, 2, 3)), gap.detach(), rtol=1e-2, atol=1e-6)


def test_guided_backprop_closed_form():
    """x -> h = W1 x -> ReLU(in place) -> y = W2 r: guided gradient = W1ᵀ ReLU(W2[t] ⊙ 1[h > 0])."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 3)).double().eval()
    x = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    w1, w2 = net[1].weight.detach(), net[3].weight.detach()
    h = x.flatten(1) @ w1.T + net[1].bias.detach()
    targets = [2, 0]
    expected = torch.stack([
        w1.T @ torch.relu(w2[t] * (h[i] > 0)) for i, t in enumerate(targets)
    ]).view_as(x)
    got = GuidedBackprop(net).attribute(x, target=targets)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    plain = _autograd_input_gradient(net, x, targets)
    assert not torch.allclose(got, plain), "the ReLU backward pass must be clamped"


def test_guided_backprop_warns_about_functional_relu():
    class FunctionalRelu(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))

    with pytest.warns(UserWarning, match="relu"):
        GuidedBackprop(FunctionalRelu())


# ----------------------------------------------------------------------- Captum's own output

CAPTUM_CASES = {
    "gradient": ({}, lambda m, x, t: Saliency(m).attribute(x, target=t, abs=False)),
    "gradient_x_input": ({}, lambda m, x, t: InputXGradient(m).attribute(x, target=t)),
    "integrated_gradients": (
        {"n_steps": 12, "steps_per_pass": 4, "baseline": 0.0},
        lambda m, x, t: IntegratedGradients(m).attribute(
            x, baselines=0.0, target=t, n_steps=12, method="gausslegendre", internal_batch_size=4 * len(x)
        ),
    ),
    "guided_backprop": ({}, lambda m, x, t: CaptumGuidedBackprop(m).attribute(x, target=t)),
}


@pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU")  # Captum's own, from the direct call
@pytest.mark.parametrize("name", sorted(CAPTUM_CASES))
def test_equals_captum(name, tiny, x64):
    kwargs, captum_call = CAPTUM_CASES[name]
    targets = torch.tensor([3, 0, 2])
    got = relprop.get_method(name)(tiny, **kwargs).attribute(x64, target=targets)
    expected = captum_call(tiny, x64.clone().requires_grad_(True), targets)
    assert got.shape == x64.shape and got.dtype == x64.dtype
    torch.testing.assert_close(got, expected.detach(), rtol=0, atol=1e-12)


def test_smoothgrad_equals_the_average_gradient_over_its_documented_noise(tiny, x64):
    """mean_k ∂y_t/∂x at x_i + σ_i·ε_k, σ_i = noise_level·(max x_i − min x_i), ε = randn from a CPU
    generator seeded with ``seed``, the same for every sample; 5 samples in passes of 2."""
    targets = [2, 0, 1]
    expected = []
    for i, t in enumerate(targets):
        eps = torch.randn((5, 3, 6, 6), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        noisy = x64[i] + 0.2 * (x64[i].max() - x64[i].min()) * eps
        expected.append(_autograd_input_gradient(tiny, noisy, [t] * 5).mean(dim=0, keepdim=True))
    method = SmoothGrad(tiny, n_samples=5, noise_level=0.2, seed=7, samples_per_pass=2)
    state = torch.get_rng_state()
    got = method.attribute(x64, target=targets)
    assert torch.equal(torch.get_rng_state(), state), "the caller's random state is untouched"
    torch.testing.assert_close(got, torch.cat(expected), rtol=0, atol=1e-12)
    absolute = SmoothGrad(tiny, n_samples=5, noise_level=0.2, seed=7, absolute=True).attribute(x64[:1], target=2)
    eps = torch.randn((5, 3, 6, 6), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    noisy = x64[0] + 0.2 * (x64[0].max() - x64[0].min()) * eps
    torch.testing.assert_close(absolute, _autograd_input_gradient(tiny, noisy, [2] * 5).abs().mean(0, keepdim=True),
                               rtol=0, atol=1e-12)
    assert not torch.equal(SmoothGrad(tiny, n_samples=5, noise_level=0.2, seed=8).attribute(x64, target=targets), got)


# ----------------------------------------------------------------------- contract on ResNet-18

FAST = {
    "gradient": {},
    "gradient_x_input": {},
    "integrated_gradients": {"n_steps": 6},
    "smoothgrad": {"n_samples": 3},
    "guided_backprop": {},
}


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics and biases
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.bias.uniform_(-0.1, 0.1)
    return model


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("name", sorted(FAST))
def test_batch_invariance_and_targets(name, resnet, images):
    method = relprop.get_method(name)(resnet, **FAST[name])
    targets = [4, 7]
    batch = method.attribute(images, target=targets)
    assert batch.shape == images.shape and torch.isfinite(batch).all()
    for i, t in enumerate(targets):
        alone = method.attribute(images[i : i + 1], target=torch.tensor([t]))
        assert ((batch[i : i + 1] - alone).abs().max() / batch.abs().max()).item() <= 1e-5
    top = resnet(images).argmax(dim=1)
    torch.testing.assert_close(method.attribute(images), method.attribute(images, target=top), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(FAST))
def test_model_and_input_unchanged(name, resnet, images):
    model = copy.deepcopy(resnet).train()
    model.layer1.requires_grad_(False)
    before = snapshot(model)
    x = images.clone()
    with pytest.warns(UserWarning, match="training mode"):
        relprop.get_method(name)(model, **FAST[name]).attribute(x, target=[0, 1])
    assert_unchanged(before, model)
    assert all(p.grad is None for p in model.parameters()), "parameter gradients were accumulated"
    assert torch.equal(x, images) and not x.requires_grad


class FailsOnSecondCall(nn.Module):
    """Identity that raises from its second forward call on (after the target-resolving pass)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("boom")
        return x


@pytest.mark.parametrize("name", sorted(FAST))
def test_model_unchanged_when_the_forward_pass_fails(name):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), FailsOnSecondCall(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 3),
    ).train()
    before = snapshot(model)
    with pytest.warns(UserWarning, match="training mode"), pytest.raises(RuntimeError, match="boom"):
        relprop.get_method(name)(model, **FAST[name]).attribute(torch.randn(2, 3, 8, 8))
    assert_unchanged(before, model)


def test_in_place_relus_do_not_change_guided_backprop(resnet, images):
    out_of_place = copy.deepcopy(resnet)
    for module in out_of_place.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    assert resnet.relu.inplace
    torch.testing.assert_close(
        GuidedBackprop(resnet).attribute(images, target=2), GuidedBackprop(out_of_place).attribute(images, target=2),
        rtol=0, atol=1e-7,
    )


def test_clear_errors(tiny, x64):
    with pytest.raises(relprop.InputError, match="float32"):
        relprop.get_method("gradient")(tiny).attribute(x64.float())
    with pytest.raises(relprop.InputError, match="out of range"):
        relprop.get_method("gradient")(tiny).attribute(x64, target=4)
    with pytest.raises(relprop.InputError, match="x has 2 channels but the model's first convolution"):
        relprop.get_method("integrated_gradients")(tiny).attribute(x64[:, :2])
    with pytest.raises(TypeError, match="nn.Module"):
        relprop.get_method("smoothgrad")(lambda x: x)
