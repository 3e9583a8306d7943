"""The layer types of modern CNNs (EfficientNet, MobileNet-v3, RegNet-Y, ShuffleNet-v2, ConvNeXt, timm):
elementwise activations, multiplicative gates, normalisations, channels-last Linear layers, layout ops,
mean / amax pooling and the per-channel affine map of ``transform_input``.

Expected values are derived by hand in the comments, or come from an equivalent model written with the
layer types relprop already supported (a channel permutation folded into the weights, a 1×1 Conv2d for a
channels-last Linear, ``nn.BatchNorm2d`` for ``F.batch_norm``).
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import relprop
from relprop.engine import GATE, NORM, ModelGraph

D = torch.float64
METHODS = {
    "rsp": relprop.RSP,
    "ae": relprop.AE,
    "rap": relprop.RAP,
    "lrp_composite": relprop.get_method("lrp_composite"),
}


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


# ------------------------------------------------------------------ pass-through ops, by hand with LRP-ε


class Func(nn.Module):
    def __init__(self, fn) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.fn = fn

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fn(h)


class ChannelsLast(nn.Module):
    """``permute(0, 2, 3, 1)`` → ``inner`` → ``permute(0, 3, 1, 2)``, as in ConvNeXt blocks."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.inner(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Squeeze(nn.Module):
    """``h · sigmoid(mean_hw h)``: squeeze-and-excitation without the bottleneck."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * torch.sigmoid(h.mean((2, 3), keepdim=True))


class Eca(nn.Module):
    """timm's ECA: ``h · sigmoid(conv1d over channels of mean_hw h)`` (kernel 1, weight 0.5), expanded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 1, bias=False)
        nn.init.constant_(self.conv.weight, 0.5)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        y = self.conv(h.mean((2, 3)).view(h.shape[0], 1, -1))
        return h * torch.sigmoid(y).view(h.shape[0], -1, 1, 1).expand_as(h)


class LayerScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.tensor([0.5, 3.0]).view(2, 1, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.gamma * h


def _layer_norm(h: tuple[float, float]) -> tuple[float, float]:
    mean = sum(h) / 2
    std = math.sqrt(sum((v - mean) ** 2 for v in h) / 2 + 1e-5)
    return tuple((v - mean) / std for v in h)  # type: ignore[return-value]


H = (3.0, -3.0)  # the pre-activations of the tiny net below
PASS_THROUGH = {
    # name: (op between conv and fc, its output a = f(H) by hand)
    "SiLU": (nn.SiLU(), tuple(v * sigmoid(v) for v in H)),
    "F.silu": (Func(F.silu), tuple(v * sigmoid(v) for v in H)),
    "x * sigmoid(x)": (Func(lambda h: h * torch.sigmoid(h)), tuple(v * sigmoid(v) for v in H)),
    "Tensor.sigmoid gate": (Func(lambda h: h.mul(h.sigmoid())), tuple(v * sigmoid(v) for v in H)),
    "GELU": (nn.GELU(), tuple(v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in H)),
    "Hardswish": (nn.Hardswish(), tuple(v * min(max(v + 3, 0), 6) / 6 for v in H)),
    "Mish": (nn.Mish(), tuple(v * math.tanh(math.log1p(math.exp(v))) for v in H)),
    "ELU": (nn.ELU(), tuple(v if v > 0 else math.exp(v) - 1 for v in H)),
    "LeakyReLU": (nn.LeakyReLU(0.1), tuple(v if v > 0 else 0.1 * v for v in H)),
    "Sigmoid": (nn.Sigmoid(), tuple(sigmoid(v) for v in H)),
    "torch.tanh": (Func(torch.tanh), tuple(math.tanh(v) for v in H)),
    "Hardsigmoid": (nn.Hardsigmoid(), tuple(min(max(v / 6 + 0.5, 0), 1) for v in H)),
    "Softplus": (nn.Softplus(), tuple(math.log1p(math.exp(v)) for v in H)),
    "RReLU (eval: the mean slope)": (nn.RReLU(0.1, 0.3), tuple(v if v > 0 else 0.2 * v for v in H)),
    "F.rrelu": (Func(F.rrelu), tuple(v if v > 0 else (1 / 8 + 1 / 3) / 2 * v for v in H)),
    "LogSigmoid": (nn.LogSigmoid(), tuple(math.log(sigmoid(v)) for v in H)),
    "Softsign": (nn.Softsign(), tuple(v / (1 + abs(v)) for v in H)),
    "Tanhshrink": (nn.Tanhshrink(), tuple(v - math.tanh(v) for v in H)),
    "-x": (Func(lambda h: -h), tuple(-v for v in H)),
    "torch.neg": (Func(torch.neg), tuple(-v for v in H)),
    "x / 6 + 1": (Func(lambda h: h / 6 + 1), tuple(v / 6 + 1 for v in H)),
    "StarReLU s * relu(x) ** 2 + b": (Func(lambda h: 0.8 * torch.relu(h) ** 2 - 0.5), tuple(0.8 * max(v, 0) ** 2 - 0.5 for v in H)),
    "Tensor.pow": (Func(lambda h: h.pow(3)), tuple(v ** 3 for v in H)),
    "torch.square": (Func(torch.square), tuple(v * v for v in H)),
    "layer scale": (LayerScale(), (0.5 * H[0], 3.0 * H[1])),
    "stochastic depth (eval)": (torchvision.ops.StochasticDepth(0.5, "row"), H),
    "squeeze-excite gate": (Squeeze(), tuple(v * sigmoid(v) for v in H)),
    "ECA gate (Conv1d on the gate)": (Eca(), tuple(v * sigmoid(0.5 * v) for v in H)),
    "LayerNorm channels-last": (ChannelsLast(nn.LayerNorm(2)), _layer_norm(H)),
    "F.layer_norm channels-last": (ChannelsLast(Func(lambda h: F.layer_norm(h, (2,)))), _layer_norm(H)),
    "GroupNorm": (nn.GroupNorm(1, 2), _layer_norm(H)),
}


class TinyNet(nn.Module):
    """x (N, 2, 1, 1) → 1×1 conv A → op → flatten → fc v, no biases."""

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1, bias=False)
        self.op = op
        self.fc = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -2.0]]).view(2, 2, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, 2.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.op(self.conv(x)), 1))


@pytest.mark.parametrize("name", sorted(PASS_THROUGH))
def test_lrp_epsilon_passes_relevance_through_the_op_unchanged(name):
    """x = (1, 2): h = A·x = (3, −3), a = op(h), logit = a₁ + 2a₂.  LRP-ε (ε = 0): the fc gives
    R_a = (a₁, 2a₂); the op passes it to h unchanged (a gate's multiplier gets nothing); the conv gives
    R_x1 = x₁(A₁₁ R_h1/h₁ + A₂₁ R_h2/h₂) = (a₁ − 2a₂)/3 and R_x2 = x₂(A₁₂ R_h1/h₁ + A₂₂ R_h2/h₂) = 2(a₁ + 4a₂)/3."""
    op, (a1, a2) = PASS_THROUGH[name]
    model = TinyNet(op).double().eval()
    x = torch.tensor([1.0, 2.0], dtype=D).view(1, 2, 1, 1)
    out = relprop.LRPEpsilon(model, epsilon=0.0).attribute(x, target=0)
    expected = torch.tensor([(a1 - 2 * a2) / 3, 2 * (a1 + 4 * a2) / 3], dtype=D).view(1, 2, 1, 1)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-12)


def test_gate_branch_needs_no_rules_and_its_multiplier_is_recognised():
    """The ops computing an ECA gate (mean, view, Conv1d, sigmoid, expand) are off the relevance path."""
    graph = ModelGraph(TinyNet(Eca()).eval())
    gate = next(op for op in graph.ops if op.kind == GATE)
    assert graph.by_name[gate.inputs[gate.gate]].type_name.startswith("Tensor.expand_as")
    relprop.RSP(TinyNet(Eca()).eval(), seed_layer="conv")  # the Conv1d has no rule, and blocks nothing
    off_path = {op.name for op in graph.ops if op.type_name == "Conv1d"}
    assert off_path and not off_path & graph.relevance_ancestors(graph.output_name)


class CoarseGate(nn.Module):
    """GhostNet-v2's attention: a sigmoid gate computed at half resolution, upsampled (nearest) to the signal's
    size, ``upsample(sigmoid(s))``; or, the same function, ``sigmoid(upsample(s))``."""

    def __init__(self, upsample, sigmoid_first: bool) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        torch.manual_seed(8)
        self.squeeze, self.upsample, self.sigmoid_first = nn.Conv2d(4, 4, 1), upsample, sigmoid_first

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(F.avg_pool2d(h, 2))
        gate = self.upsample(torch.sigmoid(s)) if self.sigmoid_first else torch.sigmoid(self.upsample(s))
        return h * gate


@pytest.mark.parametrize("upsample", [
    nn.Upsample(scale_factor=2), lambda s: F.interpolate(s, size=(8, 8), mode="nearest"),
], ids=["nn.Upsample", "F.interpolate"])
def test_a_gate_upsampled_to_the_signal_is_a_gate(upsample):
    _assert_same_maps(Head(CoarseGate(upsample, sigmoid_first=True)), Head(CoarseGate(upsample, sigmoid_first=False)))


def test_product_of_two_signals_is_refused_with_a_clear_message():
    class Product(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1)
            self.fc = nn.Linear(2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.a(x) * torch.relu(self.b(x)), 1))

    with pytest.raises(relprop.UnsupportedLayerError, match="multiplies two feature maps, neither"):
        relprop.LRPEpsilon(Product().eval())


def test_normalisations_are_classified_as_norm():
    kinds = {op.type_name: op.kind for op in ModelGraph(TinyNet(ChannelsLast(nn.LayerNorm(2))).eval()).ops}
    assert kinds["LayerNorm"] == NORM
    assert {op.kind for op in ModelGraph(TinyNet(nn.GroupNorm(1, 2)).eval()).ops} >= {NORM}
    assert {op.kind for op in ModelGraph(TinyNet(nn.InstanceNorm2d(2)).eval()).ops} >= {NORM}
    assert {op.kind for op in ModelGraph(TinyNet(Func(F.instance_norm)).eval()).ops} >= {NORM}


@pytest.mark.parametrize("norm", [nn.InstanceNorm2d(2), Func(F.instance_norm)], ids=["InstanceNorm2d", "F.instance_norm"])
def test_instance_norm_passes_relevance_unchanged_by_hand(norm):
    """IBN-Net's InstanceNorm2d (per-sample, per-channel statistics): x (1, 2, 1, 2) → identity 1×1 conv →
    InstanceNorm → flatten → fc v = (1, 2, 3, 4), no biases.  Channel 0 holds (1, 3): mean 2, variance 1;
    channel 1 holds (2, −2): mean 0, variance 4; a = ((−1, 1)/√(1 + ε), (2, −2)/√(4 + ε)), ε = 1e-5.
    LRP-ε (ε = 0): R_a = a ⊙ v, passed unchanged to h = x, and the identity conv keeps it: R_x = a ⊙ v."""
    model = nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), norm, nn.Flatten(), nn.Linear(4, 1, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        model[3].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    x = torch.tensor([[1.0, 3.0], [2.0, -2.0]], dtype=D).view(1, 2, 1, 2)
    out = relprop.LRPEpsilon(model.eval(), epsilon=0.0).attribute(x, target=0)
    s0, s1 = math.sqrt(1 + 1e-5), math.sqrt(4 + 1e-5)
    expected = torch.tensor([[-1 * 1 / s0, 1 * 2 / s0], [2 * 3 / s1, -2 * 4 / s1]], dtype=D).view(1, 2, 1, 2)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("norm", [nn.LocalResponseNorm(2, alpha=1.0, beta=0.5, k=1.0),
                                  Func(lambda h: F.local_response_norm(h, 2, alpha=1.0, beta=0.5, k=1.0))],
                         ids=["LocalResponseNorm", "F.local_response_norm"])
def test_local_response_norm_passes_relevance_unchanged_by_hand(norm):
    """The original AlexNet's and GoogLeNet's LRN, b_c = a_c / (k + α/n Σ_{c' = c−1..c} a_c'²)^β (size n = 2):
    x (1, 2, 1, 1) = (1, 2) → identity 1×1 conv → LRN → flatten → fc v = (1, 2), no biases.
    b = (1/√(1 + 1/2), 2/√(1 + 5/2)); LRP-ε (ε = 0): R_b = b ⊙ v, passed unchanged (the scale held fixed)."""
    model = nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), norm, nn.Flatten(), nn.Linear(2, 1, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2).view(2, 2, 1, 1)), model[3].weight.copy_(torch.tensor([[1.0, 2.0]]))
    x = torch.tensor([1.0, 2.0], dtype=D).view(1, 2, 1, 1)
    out = relprop.LRPEpsilon(model.eval(), epsilon=0.0).attribute(x, target=0)
    expected = torch.tensor([1 / math.sqrt(1.5), 2 * 2 / math.sqrt(3.5)], dtype=D).view(1, 2, 1, 1)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ z^B through transform_input


class TransformInput(nn.Module):
    """Inception's ``transform_input`` in miniature: t = cat(2·x₂ + 1, −x₁) → 1×1 conv w = (1, 1) → fc 1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 1, bias=False)
        self.fc = nn.Linear(1, 1, bias=False)
        nn.init.ones_(self.conv.weight), nn.init.ones_(self.fc.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.cat((torch.unsqueeze(x[:, 1], 1) * 2.0 + 1.0, x[:, 0:1] * -1.0), 1)
        return self.fc(torch.flatten(self.conv(t), 1))


def test_zbox_bounds_follow_the_affine_map_of_transform_input():
    """x = (1, 3): bounds l = 1, h = 3 (the sample's min / max).  t₁ = 2x₂ + 1 = 7 with bounds (3, 7);
    t₂ = −x₁ = −1 with bounds −1·(1, 3) = (−1, −3), reordered to (−3, −1).  W⁺ = (1, 1), W⁻ = 0:
    z = (7 − 3) + (−1 − (−3)) = 6, the logit is t₁ + t₂ = 6 = R.  R_t = (4, 2)·R/z = (4, 2); the slicing
    sends R_t₁ to x₂ and R_t₂ to x₁: R_x = (2, 4)."""
    model = TransformInput().double().eval()
    x = torch.tensor([1.0, 3.0], dtype=D).view(1, 2, 1, 1)
    out = relprop.get_method("lrp_composite")(model, epsilon=0.0).attribute(x, target=0)
    torch.testing.assert_close(out, torch.tensor([2.0, 4.0], dtype=D).view(1, 2, 1, 1), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ equivalent models


def _features(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())


class Head(nn.Module):
    """``body`` then a 3×3 conv, ReLU, global average pooling and a Linear classifier."""

    def __init__(self, body: nn.Module, pool=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        torch.manual_seed(7)
        self.features, self.body = _features(1), body
        self.last = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        self.pool = pool or (lambda h: F.adaptive_avg_pool2d(h, 1).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.last(self.body(self.features(x))))))


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, dtype=D, generator=torch.Generator().manual_seed(5))


def _assert_same_maps(model_a: nn.Module, model_b: nn.Module, methods=METHODS) -> None:  # type: ignore[no-untyped-def]
    model_a, model_b = model_a.double().eval(), model_b.double().eval()
    x = _x()
    torch.testing.assert_close(model_a(x), model_b(x), rtol=1e-12, atol=1e-12)
    for name, method in methods.items():
        a, b = method(model_a).attribute(x, target=[0, 2]), method(model_b).attribute(x, target=[0, 2])
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12 * float(b.abs().max()), msg=name)


def _assert_same_maps_as_frozen(model: nn.Module, holder: str, value, methods=METHODS) -> None:  # type: ignore[no-untyped-def]
    """The maps of ``model`` (float64) equal those of its copy whose submodule ``holder`` has its buffer ``frozen``
    set to ``value(model, x)``, for :func:`_assert_same_maps`'s x: what the model computes from x, held constant."""
    model = model.double().eval()
    frozen = copy.deepcopy(model)
    with torch.no_grad():
        frozen.get_submodule(holder).frozen = value(model, _x())
    _assert_same_maps(model, frozen, methods)


class ChannelsLastMLP(nn.Module):
    """ConvNeXt's pointwise MLP: permute → Linear → GELU → Linear → permute back."""

    def __init__(self, fc1: nn.Linear, fc2: nn.Linear) -> None:
        super().__init__()
        self.fc1, self.fc2 = fc1, fc2

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(h.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)


def test_linear_over_channels_last_is_the_1x1_convolution():
    torch.manual_seed(3)
    fc1, fc2 = nn.Linear(4, 6), nn.Linear(6, 4)
    conv1, conv2 = nn.Conv2d(4, 6, 1), nn.Conv2d(6, 4, 1)
    with torch.no_grad():
        for conv, fc in ((conv1, fc1), (conv2, fc2)):
            conv.weight.copy_(fc.weight[:, :, None, None]), conv.bias.copy_(fc.bias)
    _assert_same_maps(Head(ChannelsLastMLP(fc1, fc2)), Head(nn.Sequential(conv1, nn.GELU(), conv2)))


def test_seed_of_a_channels_last_block_is_its_channels_first_output():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), ChannelsLastMLP(nn.Linear(4, 4), nn.Linear(4, 4)),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    assert relprop.RSP(model.eval()).seed_layer == "1"  # after the permute back, not the Linear's output


class PooledChannelsLast(nn.Module):
    """Features, then a channels-last stage that is pooled as it is, never permuted back (as Sequencer and
    MambaOut pool an (N, H, W, C) map): permute → h + Linear(ReLU(h)) → mean over H, W → fc; with
    ``channels_first`` the same network on (N, C, H, W), its Linear the 1×1 convolution it is."""

    def __init__(self, channels_first: bool = False) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.features, self.fc, self.channels_first = _features(1), nn.Linear(4, 3), channels_first
        self.mlp = nn.Linear(4, 4)
        self.conv = nn.Conv2d(4, 4, 1)
        with torch.no_grad():
            self.conv.weight.copy_(self.mlp.weight[:, :, None, None]), self.conv.bias.copy_(self.mlp.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        if self.channels_first:
            return self.fc((h + self.conv(torch.relu(h))).mean(dim=(2, 3)))
        h = h.permute(0, 2, 3, 1)
        return self.fc((h + self.mlp(torch.relu(h))).mean(dim=(1, 2)))


def test_a_pooled_channels_last_map_seeds_as_its_channels_first_twin():
    """Before, the automatic seed layer walked on through the pooling of a channels-last map, to a (N, C) vector
    that RSP and AE refused ("a (N, C, h, w) feature map is needed"); it now stops at the map, whose seed is
    computed channels-first: every map equals the channels-first network's, the hostile seed's too."""
    methods = {**METHODS, "rsp hostile": functools.partial(relprop.RSP, hostile=1)}
    _assert_same_maps(PooledChannelsLast(), PooledChannelsLast(channels_first=True), methods)
    assert relprop.RSP(PooledChannelsLast().eval()).seed_layer == "add"


class NormedChannelsLast(PooledChannelsLast):
    """:class:`PooledChannelsLast` with a LayerNorm over the channels before the pooling (Sequencer's last norm)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).permute(0, 2, 3, 1)
        return self.fc(self.norm(h + self.mlp(torch.relu(h))).mean(dim=(1, 2)))


@pytest.mark.parametrize("name", ["gradcam", "gradcampp"])
def test_cam_refuses_a_channels_last_default_layer(name):
    """A CAM weighs the channels of (N, C, h, w); on timm's Sequencer the default layer's (N, h, w, C) output gave
    Grad-CAM a constant map.  Now it is refused, naming the layer; a channels-first layer named by the user works."""
    with pytest.raises(ValueError, match=r"layer 'norm' of NormedChannelsLast outputs a channels-last \(N, h, w, C\) map"):
        relprop.get_method(name)(NormedChannelsLast().eval())
    assert torch.isfinite(relprop.get_method(name)(NormedChannelsLast().eval(), layer="features").attribute(
        _x().float(), target=[0, 2])).all()


@pytest.mark.filterwarnings("ignore:RSP starts at:UserWarning", "ignore:AE starts at:UserWarning")
@pytest.mark.parametrize("name", ["rsp", "ae"])
def test_a_seed_layer_the_user_puts_in_a_channels_last_stage_is_seeded_channels_first(name):
    """Before, a seed_layer named inside a channels-last stage (the Linear of ConvNeXt's MLP) took the mean of
    the gradient over the wrong dimensions (W and C, not H and W): the map differed from the channels-first
    twin's by 1.3 × its maximum (RSP), without a word."""
    a, b = PooledChannelsLast().double().eval(), PooledChannelsLast(channels_first=True).double().eval()
    x = _x()
    got = relprop.get_method(name)(a, seed_layer="mlp").attribute(x, target=[0, 2])
    expected = relprop.get_method(name)(b, seed_layer="conv").attribute(x, target=[0, 2])
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12 * float(expected.abs().max()))


class SelectBranches(nn.Module):
    """SKNet's / ResNeSt's selection among branches, on (N, 4, H, W): two branches (N, 2, 4, H, W), stacked
    from two 3×3 convolutions (dilation 1 and 2; timm's ``SelectiveKernel``) or cut from one grouped
    convolution (``SplitAttn``); branch weights: a softmax over the branches of channel statistics (the
    branches' sum pooled over H, W, then 1×1 conv, ReLU, 1×1 conv); out: the weighted sum of the branches.
    With ``frozen`` (N, 2, 4, 1, 1) set, the weights are that constant."""

    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.how = how
        self.register_buffer("frozen", None)
        self.paths = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=d, dilation=d) for d in (1, 2))
        self.grouped = nn.Conv2d(4, 8, 3, padding=1, groups=2)
        self.fc1, self.fc2 = nn.Conv2d(4, 3, 1), nn.Conv2d(3, 8, 1)

    def branches(self, h: torch.Tensor) -> torch.Tensor:
        if self.how == "stack":
            return torch.stack([torch.relu(path(h)) for path in self.paths], dim=1)
        n, _, height, width = h.shape
        return torch.relu(self.grouped(h)).reshape(n, 2, 4, height, width)

    def weights(self, b: torch.Tensor) -> torch.Tensor:
        n = b.shape[0]
        a = self.fc2(torch.relu(self.fc1(b.sum(dim=1).mean((2, 3), keepdim=True))))  # (N, 8, 1, 1)
        if self.how == "stack":
            return torch.softmax(a.view(n, 2, 4, 1, 1), dim=1)
        return F.softmax(a.view(n, 1, 2, -1).transpose(1, 2), dim=1).reshape(n, -1).view(n, -1, 1, 1).reshape(n, 2, 4, 1, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b = self.branches(h)
        return (b * (self.weights(b) if self.frozen is None else self.frozen)).sum(dim=1)


@pytest.mark.parametrize("how", ["stack", "split"])
def test_a_softmax_of_channel_statistics_is_a_gate_that_selects_among_branches(how):
    """The branch weights are a fixed per-sample multiplier (relevance goes to the branches; the sum over
    them is shared like average pooling), so every method gives the maps of the same model with the weights
    it computes for x stored as a constant (float64; before: "no rule: torch.softmax" / "torch.stack")."""
    _assert_same_maps_as_frozen(
        Head(SelectBranches(how)), "body", lambda m, x: m.body.weights(m.body.branches(m.features(x))),
    )


class ResponseNorm(nn.Module):
    """ConvNeXt-V2's MLP with global response normalisation, written as its paper does, on (N, 4, H, W):
    Linear → GELU → GRN → Linear over the channels of a channels-last map (``layout="last"``), or 1×1 conv →
    GELU → GRN → 1×1 conv (``"first"``); ``GRN(h) = h + addcmul(β, γ, h · n)``, ``n = ‖h‖ / (mean_c ‖h‖ + ε)``
    with the norm over the spatial dimensions.  With ``frozen`` set, ``n`` is that constant."""

    def __init__(self, layout: str) -> None:
        super().__init__()
        torch.manual_seed(12)
        self.layout = layout
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 4)
        self.gamma, self.beta = nn.Parameter(torch.randn(6)), nn.Parameter(torch.randn(6))
        self.register_buffer("frozen", None)

    def statistic(self, h: torch.Tensor) -> torch.Tensor:
        spatial, channel = ((1, 2), -1) if self.layout == "last" else ((2, 3), 1)
        g = h.norm(p=2, dim=spatial, keepdim=True)
        return g / (g.mean(dim=channel, keepdim=True) + 1e-6)

    def hidden(self, h: torch.Tensor) -> torch.Tensor:
        if self.layout == "last":
            return F.gelu(self.fc1(h.permute(0, 2, 3, 1)))
        return F.gelu(F.conv2d(h, self.fc1.weight[:, :, None, None], self.fc1.bias))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = self.hidden(h)
        shape = (1, 1, 1, -1) if self.layout == "last" else (1, -1, 1, 1)
        n = self.statistic(a) if self.frozen is None else self.frozen
        a = a + torch.addcmul(self.beta.view(shape), self.gamma.view(shape), a * n)
        if self.layout == "last":
            return self.fc2(a).permute(0, 3, 1, 2)
        return F.conv2d(a, self.fc2.weight[:, :, None, None], self.fc2.bias)


@pytest.mark.parametrize("layout", ["last", "first"], ids=["channels-last", "channels-first"])
def test_global_response_normalisation_holds_its_statistics_fixed(layout):
    """A multiplier computed from channel statistics (a norm over the spatial dimensions, divided by its mean
    over the channels) is a fixed per-sample multiplier like a gate, and ``addcmul(β, γ, t)`` a per-element
    affine map: every method gives the maps of the same model with ``n`` stored as a constant (float64;
    before: "no rule: Tensor.norm")."""
    _assert_same_maps_as_frozen(
        Head(ResponseNorm(layout)), "body", lambda m, x: m.body.statistic(m.body.hidden(m.features(x))),
    )


class TimesStatistic(nn.Module):
    """``h · s(h)`` with a statistic ``s`` that varies over positions: the mean over the channels, or (on a
    channels-first map) over channels and rows."""

    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * h.mean(dim=self.dims, keepdim=True)


@pytest.mark.parametrize("dims", [(1,), (1, 2)], ids=["channels", "channels and rows"])
def test_a_multiplier_that_varies_over_positions_is_no_gate(dims):
    with pytest.raises(relprop.UnsupportedLayerError, match="multiplies two feature maps, neither"):
        relprop.LRPEpsilon(Head(TimesStatistic(dims)).eval())


class AddcmulOfMaps(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(h, h, torch.relu(h))


def test_addcmul_of_two_maps_is_refused():
    with pytest.raises(relprop.UnsupportedLayerError, match="reads 3 feature maps; relprop explains addcmul"):
        relprop.LRPEpsilon(Head(AddcmulOfMaps()).eval())


class CosineHead(nn.Module):
    """A cosine classifier: 16 · normalize(features) @ normalize(W)ᵀ, on globally pooled features; with ``frozen``
    set, the features' norms are that constant (N, 1) and the class weights a Linear layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.features, self.weight = _features(1), nn.Parameter(torch.randn(3, 4))
        self.register_buffer("frozen", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        if self.frozen is None:
            return 16 * (F.normalize(h, dim=1) @ F.normalize(self.weight, dim=1).t())
        return 16 * F.linear(h / self.frozen, F.normalize(self.weight, dim=1))


def test_a_cosine_classifier_is_a_scale_then_the_dense_layer_of_its_normalised_weights():
    """F.normalize of the features is a per-sample scale (held fixed, identity for relevance) and ``@`` with
    weights normalised from parameters is a dense layer: the methods that start from the logits give the maps
    of the same model with the norms it computes for x stored as a constant (float64; before: "no rule:
    F.normalize").  RSP's and AE's seeds are gradients, which see the norm's dependence on the features; RAP
    splits the logit at the layer producing it, and refuses the scale 16 after it."""
    cosine = CosineHead().double().eval()
    methods = {"lrp_composite": METHODS["lrp_composite"], "lrp_epsilon": relprop.LRPEpsilon}
    _assert_same_maps_as_frozen(
        cosine, "", lambda m, x: F.adaptive_avg_pool2d(m.features(x), 1).flatten(1).norm(dim=1, keepdim=True), methods,
    )
    for name in ("rsp", "ae"):
        assert torch.isfinite(METHODS[name](cosine).attribute(_x(), target=[0, 2])).all()


def test_lrp_epsilon_splits_a_difference_of_two_maps_like_a_sum_by_hand():
    """x = (1, 2), h = A·x = (3, −3), logit = h₁ − h₂ = 6: the contributions h₁ = 3 and −h₂ = 3 share R = 6
    evenly (magnitude split), R_h = (3, 3); the conv's z-rule gives R_x1 = x₁(A₁₁ R_h1/h₁ + A₂₁ R_h2/h₂) = 0
    and R_x2 = x₂(A₁₂ R_h1/h₁ + A₂₂ R_h2/h₂) = 2(1 + 2) = 6, which sum to the logit."""
    model = nn.Sequential(TinyNet(nn.Identity()).conv, Func(lambda h: h[:, :1] - h[:, 1:]), nn.Flatten()).double()
    x = torch.tensor([1.0, 2.0], dtype=D).view(1, 2, 1, 1)
    out = relprop.LRPEpsilon(model.eval(), epsilon=0.0).attribute(x, target=0)
    torch.testing.assert_close(out, torch.tensor([0.0, 6.0], dtype=D).view(1, 2, 1, 1), rtol=1e-9, atol=1e-12)


class PoolMinusInput(nn.Module):
    """PoolFormer's token mixer in a residual block: ``h + γ · (pool(h) − h)``, the difference written ``how``."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.pool, self.how = nn.AvgPool2d(3, 1, 1, count_include_pad=False), how
        self.gamma = nn.Parameter(torch.tensor([0.5, -1.0, 2.0, 0.25]).view(1, 4, 1, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mixed = self.pool(h) - h if self.how == "difference" else self.pool(h) + torch.neg(h)
        return h + self.gamma * mixed


def test_a_difference_of_two_maps_explains_as_the_sum_with_the_negated_map():
    """``a − b`` is the sum of the contributions ``a`` and ``−b``: every method gives the maps of
    ``a + neg(b)`` (float64; reference-mode RSP, whose split by positive contributions tells ``−b`` from
    ``b``, included)."""
    methods = {**METHODS, "rsp reference": lambda m: relprop.RSP(m, mode="reference")}
    _assert_same_maps(Head(PoolMinusInput("difference")), Head(PoolMinusInput("sum")), methods)


class FunctionalBatchNorm(nn.BatchNorm2d):
    """timm's ``BatchNormAct2d`` in miniature: a BatchNorm2d subclass calling ``F.batch_norm``, then ReLU."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(F.batch_norm(h, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps))


@pytest.mark.parametrize("name", sorted(METHODS) + ["lrp_epsilon"])
def test_f_batch_norm_is_explained_like_batchnorm2d_including_folding(name):
    torch.manual_seed(4)
    functional, module = FunctionalBatchNorm(4), nn.BatchNorm2d(4)
    with torch.no_grad():
        functional.weight.copy_(torch.tensor([1.5, -0.5, 2.0, 0.7]))  # γ < 0: folding swaps W⁺ and W⁻
        functional.bias.uniform_(-1, 1), functional.running_mean.uniform_(-1, 1), functional.running_var.uniform_(0.5, 2)
    module.load_state_dict(functional.state_dict())
    a = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), functional)
    b = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), module, nn.ReLU())
    b[0].load_state_dict(a[0].state_dict())
    graph = ModelGraph(Head(a).eval())
    assert any(op.conv is not None and op.conv.batchnorm is not None for op in graph.ops), "not folded"
    _assert_same_maps(Head(a), Head(b), {name: relprop.get_method(name)})


def _shuffle(h: torch.Tensor) -> torch.Tensor:
    """ShuffleNet-v2's channel shuffle with 2 groups: (N, 4, H, W), channels 0 1 2 3 → 0 2 1 3."""
    n, c, height, width = h.size()
    h = h.view(n, 2, c // 2, height, width)
    return torch.transpose(h, 1, 2).contiguous().view(n, -1, height, width)


def _swap_halves(h: torch.Tensor) -> torch.Tensor:
    first, second = h.chunk(2, dim=1)
    return torch.cat((second, first), dim=1)


@pytest.mark.parametrize("layout, order", [(_shuffle, [0, 2, 1, 3]), (_swap_halves, [2, 3, 0, 1])])
def test_channel_shuffle_and_chunk_route_relevance_like_permuted_weights(layout, order):
    """A layout op permuting channels explains like the model whose last conv's inputs are permuted instead."""
    plain = Head(nn.Identity())
    shuffled = Head(Func(layout))
    with torch.no_grad():
        inverse = torch.argsort(torch.tensor(order))
        shuffled.last.weight.copy_(plain.last.weight[:, inverse])
    # seed below the layout op for RSP / AE: both models seed at features
    methods = {n: (lambda m, f=f: f(m, seed_layer="features")) for n, f in METHODS.items() if n in ("rsp", "ae")}
    methods.update({n: f for n, f in METHODS.items() if n not in methods})
    _assert_same_maps(shuffled, plain, methods)


@pytest.mark.parametrize("pooled, reference", [
    (lambda h: h.mean((2, 3)), lambda h: F.adaptive_avg_pool2d(h, 1).flatten(1)),
    (lambda h: torch.mean(h, dim=(-2, -1)), lambda h: F.adaptive_avg_pool2d(h, 1).flatten(1)),
    (lambda h: h.amax((2, 3)), lambda h: F.max_pool2d(h, 8).flatten(1)),
    (lambda h: F.adaptive_max_pool2d(h, 1).flatten(1), lambda h: F.max_pool2d(h, 8).flatten(1)),
    (lambda h: h.sum((2, 3)), lambda h: F.adaptive_avg_pool2d(h, 1).flatten(1) * 64),
    (lambda h: torch.sum(h, dim=[-1, -2]), lambda h: F.adaptive_avg_pool2d(h, 1).flatten(1) * 64),
    (lambda h: h.max(-1)[0].max(-1)[0], lambda h: F.max_pool2d(h, 8).flatten(1)),
    (lambda h: torch.max(h.flatten(2), dim=2).values, lambda h: F.max_pool2d(h, 8).flatten(1)),
    (lambda h: torch.max(h, 3, keepdim=True)[0].amax(2).flatten(1), lambda h: F.max_pool2d(h, 8).flatten(1)),
    (lambda h: F.max_pool2d(h, kernel_size=h.size()[2:]).flatten(1), lambda h: F.max_pool2d(h, 8).flatten(1)),
])
def test_mean_sum_and_max_over_dims_pool_like_average_and_max_pooling(pooled, reference):
    _assert_same_maps(Head(nn.Identity(), pool=pooled), Head(nn.Identity(), pool=reference))


def test_a_max_pool_window_read_from_the_input_shape_follows_each_input_size():
    """``F.max_pool2d(h, h.size()[2:])`` is a global max pool at every input size, as the model computes it."""
    dynamic = Head(nn.Identity(), pool=lambda h: F.max_pool2d(h, h.size()[2:]).flatten(1)).double().eval()
    fixed = Head(nn.Identity(), pool=lambda h: F.adaptive_max_pool2d(h, 1).flatten(1)).double().eval()
    for name, method in METHODS.items():
        explain_dynamic, explain_fixed = method(dynamic), method(fixed)
        for size in (8, 11, 6):
            x = torch.randn(2, 3, size, size, dtype=D, generator=torch.Generator().manual_seed(size))
            a, b = explain_dynamic.attribute(x, target=[0, 2]), explain_fixed.attribute(x, target=[0, 2])
            assert b.abs().max() > 0, name
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12 * float(b.abs().max()), msg=f"{name} at {size} px")


class MaxWithIndices(nn.Module):
    """The values of ``max(dim)`` pooled, and its indices read as well (an arg-max, not a pooling)."""

    def __init__(self, read_indices: bool) -> None:
        super().__init__()
        self.read_indices = read_indices
        self.fc = nn.Linear(4, 3)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        values, indices = h.flatten(2).max(2)
        logits = self.fc(values)
        return logits + indices[:, :1] if self.read_indices else logits


def test_max_over_a_dim_is_a_max_pool_only_when_its_indices_are_not_read():
    pooled = [op.type_name for op in ModelGraph(MaxWithIndices(False)).ops if op.kind == "maxpool"]
    assert pooled == ["torch.amax"]
    assert [op for op in ModelGraph(MaxWithIndices(True)).ops if op.kind == "maxpool"] == []
    with pytest.raises(relprop.UnsupportedLayerError, match="Tensor.max"):
        relprop.get_method("lrp_epsilon")(MaxWithIndices(True))


MOVES = {
    # name: (op on (1, 4, 2, 2), the number of entries of its output)
    "torch.flip": (lambda h: torch.flip(h, dims=[3]), 16),
    "Tensor.flip": (lambda h: h.flip(2, 3), 16),
    "torch.roll": (lambda h: torch.roll(h, shifts=1, dims=3), 16),
    "Tensor.roll over two dims": (lambda h: h.roll((1, 1), (1, 2)), 16),
    "torch.rot90": (lambda h: torch.rot90(h, 1, (2, 3)), 16),
    "Tensor.repeat": (lambda h: h.repeat(1, 2, 1, 1), 32),
    "torch.tile": (lambda h: torch.tile(h, (1, 1, 2)), 32),
    "F.pixel_unshuffle": (lambda h: F.pixel_unshuffle(h, 2), 16),
    "nn.PixelUnshuffle": (nn.PixelUnshuffle(2), 16),
    "nn.PixelShuffle": (nn.PixelShuffle(2), 16),
    "nn.ChannelShuffle": (nn.ChannelShuffle(2), 16),
    "torch.channel_shuffle": (lambda h: torch.channel_shuffle(h, 2), 16),
    "nn.Unflatten after flatten": (nn.Sequential(nn.Flatten(), nn.Unflatten(1, (4, 2, 2))), 16),
}


@pytest.mark.parametrize("name", sorted(MOVES))
def test_layout_ops_hand_each_entry_its_moved_copies_relevance(name):
    """x (1, 4, 2, 2) → 1×1 conv (identity kernel) → op → flatten → fc w (no biases): logit = Σ_k w_k y_k with
    y_k = x[s(k)], s the op's source of output entry k (found by passing entry indices through the op).
    LRP-ε (ε = 0) gives y_k the relevance w_k y_k and the adjoint hands it back: R_x[i] = Σ_{k: s(k) = i} w_k x[i]."""
    op, entries = MOVES[name]
    module = op if isinstance(op, nn.Module) else Func(op)
    x = torch.arange(1.0, 17.0, dtype=D).view(1, 4, 2, 2)
    sources = module(torch.arange(16, dtype=D).view(1, 4, 2, 2)).flatten().long()
    w = torch.linspace(-1.0, 2.0, len(sources), dtype=D)
    model = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), module, nn.Flatten(), nn.Linear(len(sources), 1, bias=False))
    model = model.double().eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(4).view(4, 4, 1, 1)), model[3].weight.copy_(w.view(1, -1))
    assert len(sources) == entries and len(set(sources.tolist())) == 16  # every entry of x reaches the logit
    out = relprop.LRPEpsilon(model, epsilon=0.0).attribute(x, target=0)
    expected = torch.zeros(16, dtype=D).index_add_(0, sources, w * x.flatten()[sources]).view_as(x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


class SpaceToDepthStem(nn.Module):
    """TResNet's stem: ``pixel_unshuffle(x, 2)`` (3 → 12 channels) read by a 1×1 convolution, then ReLU,
    global average pooling and a Linear classifier."""

    def __init__(self, conv: nn.Conv2d, fc: nn.Linear, unshuffle: bool) -> None:
        super().__init__()
        self.conv, self.fc, self.unshuffle = conv, fc, unshuffle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(F.pixel_unshuffle(x, 2) if self.unshuffle else x)
        return self.fc(F.adaptive_avg_pool2d(torch.relu(h), 1).flatten(1))


def test_a_space_to_depth_stem_explains_like_the_strided_convolution_it_equals():
    """A 2×2 stride-2 convolution W (O, 3, 2, 2) equals pixel_unshuffle followed by the 1×1 convolution whose
    input channel 4c + 2i + j carries W[:, c, i, j]. The first convolution then reads 12 channels of a
    3-channel image; the maps must be those of the strided convolution."""
    torch.manual_seed(11)
    strided, fc = nn.Conv2d(3, 5, 2, stride=2), nn.Linear(5, 3)
    pointwise = nn.Conv2d(12, 5, 1)
    with torch.no_grad():
        pointwise.weight.copy_(strided.weight.reshape(5, 12, 1, 1)), pointwise.bias.copy_(strided.bias)
    _assert_same_maps(SpaceToDepthStem(pointwise, fc, unshuffle=True), SpaceToDepthStem(strided, fc, unshuffle=False))


@pytest.mark.parametrize("name", ["rsp", "ae", "rap", "lrp_composite"])
def test_a_horizontal_flip_inside_the_model_explains_like_the_flipped_kernel(name):
    """flip(W) before the last 3×3 conv (symmetric padding, stride 1) computes what the plain model with that
    conv's kernel mirrored computes, flipped; global pooling removes the flip. Every method must give both
    models the same maps (its rules are mirror-equivariant there, and the flip's adjoint undoes it)."""
    plain = Head(nn.Identity())
    flipped = Head(Func(lambda h: h.flip(3)))
    with torch.no_grad():
        flipped.last.weight.copy_(plain.last.weight.flip(3))
    _assert_same_maps(flipped, plain, {name: METHODS[name]})


def test_nearest_upsampling_sums_relevance_over_the_copies():
    """x (1, 1, 1, 1) = 2 → 1×1 conv (weight 1) → upsample ×2 (nearest) → flatten → fc (1, 2, 3, 4):
    logit = 2·(1 + 2 + 3 + 4) = 20; LRP-ε gives the copies R = 2·(1, 2, 3, 4), summed back: 20 at x."""
    model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.Upsample(scale_factor=2), nn.Flatten(), nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(1.0), model[3].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    out = relprop.LRPEpsilon(model.double().eval(), epsilon=0.0).attribute(torch.full((1, 1, 1, 1), 2.0, dtype=D), target=0)
    torch.testing.assert_close(out, torch.full((1, 1, 1, 1), 20.0, dtype=D))


def test_timm_padding_same_convolution_is_the_padded_convolution():
    timm = pytest.importorskip("timm")
    from timm.layers import Conv2dSame

    torch.manual_seed(2)
    same = Conv2dSame(4, 4, 3, stride=2)
    padded = nn.Conv2d(4, 4, 3, stride=2)
    padded.load_state_dict(same.state_dict())
    # 8×8 input, kernel 3, stride 2: "same" pads 0 before and 1 after in both dimensions
    _assert_same_maps(Head(same), Head(nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), padded)))
    assert timm is not None


# ------------------------------------------------------------------------------- copying padding modes


@pytest.mark.parametrize("explicit, implicit", [
    (lambda h: F.max_pool2d(F.pad(h, (1, 1, 1, 1), value=float("-inf")), 3, 2), lambda h: F.max_pool2d(h, 3, 2, 1)),
    (lambda h: F.avg_pool2d(F.pad(torch.relu(h - 0.3), (1, 1, 1, 1)), 3, 1),
     lambda h: F.avg_pool2d(torch.relu(h - 0.3), 3, 1, 1)),
], ids=["-inf padding, max pool", "zero padding, average pool"])
def test_padding_written_before_a_pooling_explains_like_the_poolings_own(explicit, implicit):
    """timm's MaxPool2dSame / AvgPool2dSame pad (with -inf / zeros) and then pool: the function of the pooling
    with its own padding, whose padded entries hold no relevance; the maps must be the same. (``relu(h - 0.3)``
    leaves windows that are all zero, whose relevance is split evenly over the window's real entries.)"""
    _assert_same_maps(Head(Func(explicit)), Head(Func(implicit)))


def test_minus_infinity_padding_read_by_anything_but_max_pooling_is_refused():
    model = Head(Func(lambda h: F.avg_pool2d(F.pad(h, (1, 1, 1, 1), value=float("-inf")), 3, 1)))
    with pytest.raises(relprop.UnsupportedLayerError, match=r"F\.pad .*with value -inf"):
        relprop.get_method("lrp_composite")(model)


class FunctionalReflect(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (1, 1, 1, 1), mode="reflect")


@pytest.mark.parametrize("pad", [nn.ReflectionPad2d(1), nn.ReplicationPad2d(1), nn.CircularPad2d(1), FunctionalReflect()],
                         ids=["reflect", "replicate", "circular", "F.pad reflect"])
def test_copying_padding_hands_the_copies_relevance_back(pad):
    """pad → one full-size conv: LRP-ε gives each padded entry p_j w_j R/z and each input entry the sum over
    its copies, i.e. the adjoint of the padding (torch's own backward of the pad) applied to those shares."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 1, 5, bias=False).double()
    model = nn.Sequential(pad, conv, nn.Flatten()).eval()
    x = torch.rand(1, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    padded = pad(x)
    shares = padded * conv.weight
    z = shares.sum()
    x_leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(pad(x_leaf), x_leaf, shares * z / (z + 1e-6 * z.sign()))
    got = relprop.LRPEpsilon(model, epsilon=1e-6).attribute(x, target=0)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", ["rsp", "lrp_epsilon"])
def test_copying_padding_conserves(name):
    """A bias-free net with reflection padding in front of every conv: Σ R at the input is the seed's sum."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.ReflectionPad2d(1), nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(),
        nn.ReplicationPad2d((1, 2, 0, 1)), nn.Conv2d(4, 5, 3, bias=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3, bias=False),
    ).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    method = relprop.get_method(name)(model) if name == "rsp" else relprop.LRPEpsilon(model, epsilon=0.0)
    r = method.attribute(x, target=[0, 2])
    if name == "rsp":
        expected = method.seed_relevance(x, target=[0, 2]).flatten(1).sum(1)
    else:
        expected = model(x)[[0, 1], [0, 2]]
    torch.testing.assert_close(r.flatten(1).sum(1), expected, rtol=1e-10, atol=0)


CONV_PADDINGS = {
    # name: (Conv2d arguments, the padding module it equals followed by the unpadded convolution)
    "reflect": ({"kernel_size": 3, "padding": 1, "padding_mode": "reflect"}, nn.ReflectionPad2d(1)),
    "replicate": ({"kernel_size": 5, "padding": (2, 1), "padding_mode": "replicate"}, nn.ReplicationPad2d((1, 1, 2, 2))),
    "circular, stride 2": ({"kernel_size": 3, "padding": 1, "padding_mode": "circular", "stride": 2}, nn.CircularPad2d(1)),
    "same, even kernel": ({"kernel_size": 4, "padding": "same"}, nn.ZeroPad2d((1, 2, 1, 2))),
    "same, even kernel, dilated": ({"kernel_size": (2, 3), "padding": "same", "dilation": 3}, nn.ZeroPad2d((3, 3, 1, 2))),
    "same, even kernel, reflect": ({"kernel_size": 4, "padding": "same", "padding_mode": "reflect"}, nn.ReflectionPad2d((1, 2, 1, 2))),
}


def _padded_conv_pair(kwargs: dict, pad: nn.Module, first: bool) -> tuple[nn.Module, nn.Module]:
    """The same network twice: with a Conv2d padding as ``kwargs`` say, and with ``pad`` + an unpadded Conv2d
    (the convolution reading the image if ``first``, else the second one)."""
    torch.manual_seed(1)  # every map of both samples is non-zero (Grad-CAM's ReLU zeroes some at other seeds)
    padded = nn.Conv2d(3 if first else 4, 5, **kwargs)
    unpadded = nn.Conv2d(padded.in_channels, 5, padded.kernel_size, stride=padded.stride, dilation=padded.dilation)
    unpadded.load_state_dict(padded.state_dict())
    stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    tail = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))
    a = nn.Sequential(*([] if first else [stem]), padded, tail)
    b = nn.Sequential(*([] if first else [stem]), nn.Sequential(pad, unpadded), tail)
    return a.double().eval(), b.double().eval()


@pytest.mark.parametrize("first", [False, True], ids=["hidden conv", "conv reading the image"])
@pytest.mark.parametrize("padding", sorted(CONV_PADDINGS))
def test_conv_padding_other_than_even_zeros_is_explained_as_the_padding_then_the_conv(padding, first):
    """Before: refused (padding_mode) or refused (asymmetric 'same'). Now the maps equal those of the model
    with the padding written out as a module, for every relevance method and Grad-CAM."""
    a, b = _padded_conv_pair(*CONV_PADDINGS[padding], first)
    x = torch.randn(2, 3, 12, 12, dtype=D, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a(x), b(x), rtol=1e-12, atol=1e-12)
    for name in ["rsp", "ae", "rap", "lrp_composite", "lrp_epsilon", "gradcam"]:
        method = relprop.get_method(name)(a)
        expected = relprop.get_method(name)(b).attribute(x, target=[1, 2])
        assert (expected.flatten(1).abs().amax(1) > 0).all(), name
        torch.testing.assert_close(method.attribute(x, target=[1, 2]), expected, rtol=1e-10, atol=1e-13, msg=name)
    seed = relprop.RSP(a, seed_layer="0" if first else "1")  # the convolution keeps its module path
    assert seed.seed_layer == ("0" if first else "1")


# ------------------------------------------------------------------------- kernels computed from parameters


class StandardisedConv(nn.Conv2d):
    """Weight standardisation as in BiT's StdConv2d: each output channel's kernel brought to mean 0, variance 1
    in forward()."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = self.weight.reshape(1, self.out_channels, -1)
        weight = F.batch_norm(flat, None, None, training=True, momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _standardised(weight: torch.Tensor) -> torch.Tensor:
    flat = weight.flatten(1)
    mean, var = flat.mean(dim=1, keepdim=True), flat.var(dim=1, unbiased=False, keepdim=True)
    return ((flat - mean) / torch.sqrt(var + 1e-6)).reshape_as(weight)


def test_a_kernel_computed_from_parameters_is_the_kernel_the_rules_see():
    """x → standardised full-size conv: LRP-ε gives R = x ⊙ Ŵ · z/(z + ε sign z) with Ŵ standardised by hand;
    and after an edit of the weight the new kernel is used (the kernel is computed at each call)."""
    torch.manual_seed(0)
    conv = StandardisedConv(2, 1, 3, bias=False).double()
    model = nn.Sequential(conv, nn.Flatten()).eval()
    x = torch.rand(1, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    method = relprop.LRPEpsilon(model, epsilon=1e-6)
    for _ in range(2):
        contributions = x * _standardised(conv.weight.detach())
        z = contributions.sum()
        expected = contributions * z / (z + 1e-6 * z.sign())
        torch.testing.assert_close(method.attribute(x, target=0), expected, rtol=0, atol=1e-12)
        with torch.no_grad():
            conv.weight.mul_(torch.linspace(0.5, 2.0, conv.weight.numel(), dtype=torch.float64).view_as(conv.weight))


@pytest.mark.parametrize("name", ["rsp", "ae", "lrp_epsilon"])
def test_a_network_of_standardised_convolutions_runs_and_conserves(name):
    """Stem and hidden layers with standardised kernels: every method builds; RSP and LRP-ε (ε = 0) conserve on
    the bias-free net."""
    torch.manual_seed(0)
    model = nn.Sequential(
        StandardisedConv(3, 4, 3, padding=1, bias=False), nn.ReLU(), StandardisedConv(4, 5, 3, bias=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3, bias=False),
    ).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    method = relprop.LRPEpsilon(model, epsilon=0.0) if name == "lrp_epsilon" else relprop.get_method(name)(model)
    r = method.attribute(x, target=[0, 2])
    assert torch.isfinite(r).all() and r.abs().max() > 0
    if name == "rsp":
        torch.testing.assert_close(r.flatten(1).sum(1), method.seed_relevance(x, target=[0, 2]).flatten(1).sum(1), rtol=1e-10, atol=0)
    if name == "lrp_epsilon":
        torch.testing.assert_close(r.flatten(1).sum(1), model(x)[[0, 1], [0, 2]], rtol=1e-10, atol=0)


class InputScaledKernel(nn.Conv2d):
    """A kernel that depends on the input (a dynamic convolution): no fixed kernel for the rules."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * x.mean(), self.bias)


def test_a_kernel_computed_from_activations_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(), InputScaledKernel(3, 2, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 6, 6))
    with pytest.raises(relprop.UnsupportedLayerError, match="F.conv2d whose weight is computed in forward"):
        relprop.LRPEpsilon(model.eval())


class ShapeScaledKernel(nn.Conv2d):
    """A kernel scaled by the input's width: computed without activations, but from the input's shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * (x.shape[-1] / 6), self.bias)


def test_a_kernel_computed_from_the_input_shape_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(), ShapeScaledKernel(3, 2, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 6, 6))
    with pytest.raises(relprop.UnsupportedLayerError, match="F.conv2d whose weight is computed in forward"):
        relprop.LRPEpsilon(model.eval())


# ------------------------------------------------------------------ in-place writes


class InPlaceScaled(nn.Module):
    """``body`` → ``out`` → ``write(out)`` (in place, its result unused, as timm's NFNet skip-init gain
    ``out.mul_(gain)``) → ``out * 0.5`` + ``body`` → ReLU → pool → Linear; ``write=None``: the same model
    written out of place (``out = out * gain`` etc.)."""

    def __init__(self, write, pure) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        torch.manual_seed(4)
        self.features, self.conv, self.fc = _features(2), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(4, 3)
        self.gain = nn.Parameter(torch.tensor([0.5, -2.0, 1.5, 3.0]).view(1, 4, 1, 1))
        self.act = nn.ReLU(inplace=True)
        self.write, self.pure = write, pure

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        out = self.conv(h)
        if self.write is not None:
            self.write(self, out)
        else:
            out = self.pure(self, out)
        return self.fc(F.adaptive_avg_pool2d(torch.relu(out * 0.5 + h), 1).flatten(1))


def _inplace_mul(m, t): t.mul_(m.gain)  # noqa: E704
def _inplace_div(m, t): t.div_(4.0)  # noqa: E704
def _inplace_add(m, t): t.add_(0.25)  # noqa: E704
def _inplace_relu_function(m, t): F.relu(t, inplace=True)  # noqa: E704
def _inplace_relu_(m, t): torch.relu_(t)  # noqa: E704
def _inplace_relu_module(m, t): m.act(t)  # noqa: E704


WRITES = {
    "Tensor.mul_": (_inplace_mul, lambda m, t: t * m.gain),
    "Tensor.div_": (_inplace_div, lambda m, t: t / 4.0),
    "Tensor.add_": (_inplace_add, lambda m, t: t + 0.25),
    "F.relu(inplace=True)": (_inplace_relu_function, lambda m, t: F.relu(t)),
    "torch.relu_": (_inplace_relu_, lambda m, t: torch.relu(t)),
    "nn.ReLU(inplace=True)": (_inplace_relu_module, lambda m, t: torch.relu(t)),
}


@pytest.mark.parametrize("name", sorted(WRITES))
def test_what_reads_a_tensor_after_an_in_place_write_sees_the_written_values(name):
    """relprop runs in-place ops out of place; the readers of the overwritten tensor must read the op's result,
    or the traced forward computes another function than the model (NFNet: logits 0.04 off of 0.09)."""
    write, pure = WRITES[name]
    _assert_same_maps(InPlaceScaled(write, None), InPlaceScaled(None, pure))


class ShiftsItsInput(nn.Module):
    """``x.sub_(0.5)`` (or ``x = x - 0.5``) before the layers: eager PyTorch changes the caller's tensor."""

    def __init__(self, in_place: bool) -> None:
        super().__init__()
        self.head, self.in_place = Head(nn.Identity()), in_place

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_place:
            x.sub_(0.5)
        else:
            x = x - 0.5
        return self.head(x)


def test_a_model_that_writes_into_its_input_is_explained_and_the_callers_input_kept():
    writes, pure = ShiftsItsInput(True).double().eval(), ShiftsItsInput(False).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=D, generator=torch.Generator().manual_seed(9))
    kept = x.clone()
    for name, method in METHODS.items():
        a, b = method(writes).attribute(x, target=[0, 2]), method(pure).attribute(x, target=[0, 2])
        assert torch.equal(x, kept), name
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12 * float(b.abs().max()), msg=name)


class AliasWrittenInPlace(nn.Module):
    """``g = h; g *= 0.25; g -= 0.05`` (augmented assignments), then ``h`` read: in PyTorch ``g`` is ``h``, so
    ``h`` holds the written values."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.features, self.fc = _features(3), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features[0](x)
        g = h
        g *= 0.25
        g -= 0.05
        h = self.features[3](self.features[2](self.features[1](h)))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def test_an_augmented_assignment_to_an_alias_which_the_trace_misses_is_refused():
    """torch.fx records ``g *= 0.25`` as ``g = g * 0.25``: the trace's ``h`` keeps the old values, and its logits
    differ from the model's. The first attribute() compares them and refuses, naming the cause."""
    model = AliasWrittenInPlace().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=D)
    for name, method in METHODS.items():
        with pytest.raises(relprop.RelpropError, match="computes other logits than the model"):
            method(model).attribute(x)


def test_the_logits_check_allows_rounding_only_of_the_arithmetic_in_use():
    """float32 logits off by 1e-3 of the largest: beyond float32 rounding (tolerance 1e-4), within TF32's
    (100 · 2^-10 ≈ 0.1); off by 0.5: refused either way."""
    from relprop.engine.forward import check_against_model

    reference = torch.tensor([[2.0, -1.0, 0.5], [0.2, 0.1, -0.4]])
    model = nn.Identity()
    check_against_model(model, reference, reference + 1e-6)
    slightly = reference + torch.tensor([[2e-3, 0.0, 0.0], [0.0, 0.0, 0.0]])
    with pytest.raises(relprop.RelpropError, match="sample 0 is off by 0.002"):
        check_against_model(model, reference, slightly)
    check_against_model(model, reference, slightly, tf32=True)
    for tf32 in (False, True):
        with pytest.raises(relprop.RelpropError, match="sample 1 is off by 0.2"):
            check_against_model(model, reference, reference + torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.0, 0.0]]),
                                tf32=tf32)


class WritesIntoAView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features, self.fc = _features(6), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        h[:, :2].mul_(2.0)
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def test_an_in_place_write_into_a_view_read_through_its_base_is_refused():
    with pytest.raises(relprop.RelpropError, match="writes in place into a view"):
        relprop.RSP(WritesIntoAView())
