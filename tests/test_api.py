"""Public contract: targets, batch invariance, seed layers, errors, model hygiene."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torchvision

import relprop
from model_state import assert_unchanged, snapshot


class SmallNet(nn.Module):
    """conv-bn-relu, residual block, concat, max-pool, classifier."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.branch_a = nn.Conv2d(8, 8, 3, padding=1)
        self.branch_b = nn.Conv2d(8, 4, 1)
        self.pool = nn.MaxPool2d(2)
        self.head_conv = nn.Conv2d(12, 6, 3, padding=1, groups=2)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.branch_a(x))
        x = torch.cat([x, self.branch_b(x)], dim=1)
        x = self.relu(self.head_conv(self.pool(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture
def net() -> nn.Module:
    torch.manual_seed(0)
    model = SmallNet().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.stem[1].running_mean.uniform_(-0.5, 0.5)
        model.stem[1].running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(3))


METHODS = [
    lambda m, **kw: relprop.RSP(m, **kw),
    lambda m, **kw: relprop.AE(m, ratio=1.0, **kw),
    lambda m, **kw: relprop.AttributionEquilibrium(m, ratio=2.0, **kw),
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("dtype, bound", [(torch.float64, 1e-12), (torch.float32, 1e-4)])
@pytest.mark.parametrize("make", METHODS)
def test_batch_invariance_and_permutation(make, net, x, dtype, bound):
    """A sample's map does not depend on its batch: exactly up to rounding in float64 (any coupling of the
    samples, such as a batch-wide maximum, shows far above 1e-12), and to the documented 1e-4 of max|R| in
    float32, where the forward pass itself rounds differently for other batch sizes (on an AVX-512 CPU
    AE moves by 1.3e-6 here: docs/methods.md, "Numerical guarantees")."""
    method = make(net.to(dtype))
    x = x.to(dtype)
    targets = [0, 1, 2, 3, 4]
    batch = method.attribute(x, target=targets)
    for i in range(len(x)):
        alone = method.attribute(x[i : i + 1], target=targets[i])
        assert _rel(batch[i : i + 1], alone) <= bound
    perm = torch.tensor([3, 0, 4, 1, 2])
    permuted = method.attribute(x[perm], target=torch.tensor(targets)[perm])
    assert _rel(permuted, batch[perm]) <= bound


@pytest.mark.parametrize("make", METHODS)
def test_target_forms_agree(make, net, x):
    method = make(net)
    top = net(x).argmax(dim=1)
    by_none = method.attribute(x)
    assert torch.equal(by_none, method.attribute(x, target=top))
    assert torch.equal(by_none, method.attribute(x, target=top.tolist()))
    assert torch.equal(by_none, method.attribute(x, target=tuple(top.tolist())))
    single = method.attribute(x, target=2)
    assert torch.equal(single, method.attribute(x, target=[2] * len(x)))
    assert not torch.equal(single, method.attribute(x, target=3))


@pytest.mark.parametrize(
    "target, message",
    [(5, "out of range"), (-1, "out of range"), ([0, 1], "2 entries"), (torch.zeros(5), "integer"),
     ("cat", "int"), (True, "bool")],
)
def test_bad_targets(net, x, target, message):
    with pytest.raises(relprop.InputError, match=message):
        relprop.RSP(net).attribute(x, target=target)


@pytest.mark.parametrize(
    "bad, message",
    [(lambda x: x.numpy(), "torch.Tensor"), (lambda x: x[0], "4 dimensions"), (lambda x: x[:0], "empty"),
     (lambda x: x.long(), "floating-point"), (lambda x: x.index_fill(0, torch.tensor([1]), float("nan")), "NaN"),
     (lambda x: x[:, :2], "channels"), (lambda x: x.double(), "float64")],
)
def test_bad_inputs(net, x, bad, message):
    with pytest.raises(relprop.InputError, match=message):
        relprop.AE(net).attribute(bad(x))


def test_input_is_not_modified(net, x):
    copy = x.clone()
    relprop.RSP(net).attribute(x)
    relprop.AE(net).attribute(x)
    assert torch.equal(x, copy)


def test_float64_output_dtype(net, x):
    attr = relprop.RSP(net.double()).attribute(x.double(), target=1)
    assert attr.dtype == torch.float64 and attr.shape == x.shape


def test_default_seed_layer_and_override(net, x):
    assert relprop.RSP(net).seed_layer == "relu"  # last block output, before global pooling
    early = relprop.RSP(net, seed_layer="stem")
    assert early.seed_layer == "stem"
    assert not torch.allclose(early.attribute(x, 1), relprop.RSP(net).attribute(x, 1))
    vgg = torchvision.models.vgg11()
    assert relprop.RSP(vgg).seed_layer == "features.19"
    assert relprop.RSP(vgg, seed_layer="features.17").seed_layer == "features.17"


def test_unknown_seed_layer_lists_close_names(net):
    with pytest.raises(ValueError, match="Did you mean: .*branch_a"):
        relprop.RSP(net, seed_layer="branch_aa")


def test_unsupported_layer_is_named_before_any_work():
    class Wave(nn.Module):  # an elementwise op no rule covers
        def forward(self, x):
            return torch.sin(x)

    model = nn.Sequential(nn.Conv2d(3, 4, 3), Wave(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(relprop.UnsupportedLayerError, match=r"torch\.sin \(in Wave\) at '1'"):
        relprop.AE(model)


def test_linear_between_seed_and_input_is_unsupported():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(relprop.UnsupportedLayerError, match="Linear at '2'"):
        relprop.RSP(model, seed_layer="3")


def test_bad_mode_and_ratio(net):
    with pytest.raises(ValueError, match="mode"):
        relprop.RSP(net, mode="fast")
    with pytest.raises(ValueError, match="ratio"):
        relprop.AE(net, ratio=-1)


def test_training_model_explained_in_eval_mode_and_restored(net, x):
    expected = relprop.RSP(net).attribute(x)
    net.train()
    before = snapshot(net)
    with pytest.warns(UserWarning, match="training mode"):
        attr = relprop.RSP(net).attribute(x)
    assert torch.equal(attr, expected)
    assert_unchanged(before, net)


@pytest.mark.parametrize("make", METHODS)
def test_model_untouched_after_exception_mid_call(make, net, x, monkeypatch):
    net.train()
    net.stem[0].register_forward_hook(lambda *args: None)
    before = snapshot(net)
    method = make(net)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("relprop.engine.standard.zbox_conv", broken)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="boom"):
            method.attribute(x)
    assert_unchanged(before, net)
    assert torch.is_grad_enabled()


def test_grad_mode_and_default_dtype_unchanged(net, x):
    with torch.no_grad():
        relprop.AE(net).attribute(x)
        assert not torch.is_grad_enabled()
    relprop.AE(net).attribute(x)
    assert torch.is_grad_enabled() and torch.get_default_dtype() == torch.float32


def test_deterministic(net, x):
    method = relprop.RSP(net)
    assert torch.equal(method.attribute(x), method.attribute(x))


def test_rsp_conserves_seed_sum_in_float64(net, x):
    """RSP conserves Σ R from the seed to the input (algorithms.md §4.1)."""
    net = net.double()
    x = x.double()
    method = relprop.RSP(net, seed_layer="stem")
    # seed = A ⊙ mean_hw(∂y/∂A) / max|·|, computed here independently of relprop
    with torch.enable_grad():
        a = net.stem(x).detach().requires_grad_(True)
        h = torch.relu(a + net.branch_a(a))
        h = torch.cat([h, net.branch_b(h)], 1)
        h = net.relu(net.head_conv(net.pool(h)))
        logits = net.fc(torch.flatten(h.mean(dim=(2, 3), keepdim=True), 1))
        (g,) = torch.autograd.grad(logits[:, 1].sum(), a)
    seed = a.detach() * g.mean(dim=(2, 3), keepdim=True)
    seed = seed / seed.flatten(1).abs().max(dim=1).values.view(-1, 1, 1, 1)
    attr = method.attribute(x, target=1)
    torch.testing.assert_close(attr.sum(dim=(1, 2, 3)), seed.sum(dim=(1, 2, 3)), rtol=1e-8, atol=1e-8)
