"""LRP baselines: rules and two-layer nets against hand-computed values, conservation, ResNet-50
stability, BatchNorm canonisation, batch invariance, stock models, Captum and Zennit.

Every expected value is written literally (derived by hand in the comments), computed by an
independent model written in the test (BatchNorm folded by hand) or produced by Captum or Zennit.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import relprop
from model_state import assert_unchanged, snapshot
from relprop.rules.conv_ops import ConvGeometry
from relprop.rules.lrp import (
    alpha_beta_rule, conv_map, dense_map, epsilon_rule, fold_batchnorm, fold_batchnorm_before, gamma_rule,
    layer_norm_rule, unbiased_relevance, unexplained_shares, zplus_rule,
)

D = torch.float64
LRP_NAMES = ["lrp_epsilon", "lrp_zplus", "lrp_alpha1beta0", "lrp_alpha2beta1", "lrp_gamma", "lrp_composite"]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# --------------------------------------------------------------------------------------------- rules


def _one_layer(kind: str):
    """One layer (2 inputs -> 2 outputs), W = [[-2, 1], [1, 1]], as a dense map or a 1×1 conv on 1×1 maps."""
    w = torch.tensor([[-2.0, 1.0], [1.0, 1.0]], dtype=D)
    a = torch.tensor([[-1.0, 2.0]], dtype=D)
    r = torch.tensor([[1.0, 2.0]], dtype=D)
    if kind == "dense":
        return a, r, w, dense_map(), lambda t: t.reshape(1, 2)
    geometry = ConvGeometry((1, 1), (0, 0), (1, 1), 1)
    return a.view(1, 2, 1, 1), r.view(1, 2, 1, 1), w.view(2, 2, 1, 1), conv_map(geometry, torch.Size((1, 2, 1, 1))), (
        lambda t: t.reshape(1, 2)
    )


# a = (-1, 2); contributions a_i w_ji: output 0: (2, 2), output 1: (-1, 2); R = (1, 2).
# z+:     out 0 shares 1 by (2, 2)/4 -> (0.5, 0.5); out 1 shares 2 by (0, 2)/2 -> (0, 2)      = (0.5, 2.5)
#         (input 0 gets relevance through a⁻w⁻ > 0: signed inputs count a⁻w⁻ as positive)
# α2β1:   out 0 has no negative contribution: 2·(0.5, 0.5) = (1, 1); out 1: 2·(0, 2) − (2, 0) = (−2, 4) = (−1, 5)
# γ = 1:  out 0: (2+2, 2+2)/8 -> (0.5, 0.5); out 1: (−1, 2+2)/3 · 2 = (−2/3, 8/3)          = (−1/6, 19/6)
RULE_CASES = {
    "zplus": (lambda a, r, w, m: zplus_rule(a, r, w, None, m), [0.5, 2.5]),
    "alpha2beta1": (lambda a, r, w, m: alpha_beta_rule(a, r, w, None, m, alpha=2.0, beta=1.0), [-1.0, 5.0]),
    "gamma": (lambda a, r, w, m: gamma_rule(a, r, w, None, m, gamma=1.0, epsilon=0.0), [-1 / 6, 19 / 6]),
}


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("case", list(RULE_CASES))
def test_rule_with_signed_input(kind, case):
    a, r, w, layer, flat = _one_layer(kind)
    rule, expected = RULE_CASES[case]
    torch.testing.assert_close(flat(rule(a, r, w, layer)), torch.tensor([expected], dtype=D), rtol=0, atol=1e-12)


@pytest.mark.parametrize("bn_type, weight_shape", [(nn.BatchNorm2d, (1, 1, 1, 1)), (nn.BatchNorm1d, (1, 1))])
def test_fold_batchnorm_by_hand(bn_type, weight_shape):
    # w = 2, b = 1; BN: mean 3, var 3, eps 1 (σ = 2), γ = 4, β = 5: scale 4/2 = 2, w' = 4, b' = (1 − 3)·2 + 5 = 1
    bn = bn_type(1, eps=1.0).to(D)
    with torch.no_grad():
        bn.running_mean.fill_(3.0), bn.running_var.fill_(3.0), bn.weight.fill_(4.0), bn.bias.fill_(5.0)
    weight, bias = fold_batchnorm(torch.full(weight_shape, 2.0, dtype=D), torch.ones(1, dtype=D), bn)
    assert weight.shape == weight_shape and weight.item() == 4.0 and bias.item() == 1.0


# --------------------------------------------------------------------------------------------- two-layer nets


def two_layer_net(kind: str) -> tuple[nn.Module, torch.Tensor]:
    """x = (1, 2) -> W1 = [[1, 1], [3, -1]], b1 = (1, 0) -> ReLU -> W2 = [[1, 2], [-1, 1]], b2 = (2, 0).

    Hidden: z1 = (4, 1), h = (4, 1); logits (8, -3).  ``kind='conv'`` makes the first layer a 1×1
    convolution on a (1, 2, 1, 1) image (it then reads the image).
    """
    w1, b1 = torch.tensor([[1.0, 1.0], [3.0, -1.0]]), torch.tensor([1.0, 0.0])
    w2, b2 = torch.tensor([[1.0, 2.0], [-1.0, 1.0]]), torch.tensor([2.0, 0.0])
    if kind == "dense":
        model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
        first, x = model[1], torch.tensor([1.0, 2.0]).view(1, 1, 1, 2)
    else:
        model = nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(2, 2))
        first, x = model[0], torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    with torch.no_grad():
        first.weight.copy_(w1.view_as(first.weight)), first.bias.copy_(b1)
        model[3].weight.copy_(w2), model[3].bias.copy_(b2)
    return model.to(D).eval(), x.to(D)


# (method, target, expected relevance of x = (1, 2)), derived by hand:
# ε = 0, t = 0: R = 8 = 4·1 + 1·2 + 2 -> h gets (4, 2) (the bias keeps 2); unit 0: z = 4, contributions (1, 2)
#   -> (1, 2); unit 1: z = 1, contributions (3, -2), R = 2 -> (6, -4).                         x: (7, -2)
# ε = 0, t = 1: R = -3, contributions (-4, 1) -> h: (-4, 1); unit 0: (1, 2)·(-4)/4 = (-1, -2);
#   unit 1: (3, -2)·1/1.                                                                        x: (2, -4)
# ε = 1, t = 0: h: (4, 2)·8/9; unit 0: (1, 2)·(32/9)/5; unit 1: (3, -2)·(16/9)/2.      x: (152/45, -16/45)
# z+, t = 0: h: (4, 2)·8/6; unit 0: (1, 2)·(16/3)/3; unit 1: (3, 0)·(8/3)/3.              x: (40/9, 32/9)
# α1β0, t = 0 (b⁺ joins z⁺): h: (4, 2)·8/8; unit 0: z⁺ = 3 + 1: (1, 2)·4/4; unit 1: (3, 0)·2/3.   x: (3, 2)
# α2β1, t = 0: h: 2·(4, 2) (no negative contribution); unit 0: 2·(1, 2)·8/4 = (4, 8);
#   unit 1: 2·(3, 0)·4/3 − (0, -2)·4/(-2) = (8, -4).                                          x: (12, 4)
# α2β1, t = 1: R = -3; h: 2·(0, 1)·(-3)/1 − (-4, 0)·(-3)/(-4) = (3, -6); unit 0: 2·(1, 2)·3/4 = (1.5, 3);
#   unit 1: 2·(3, 0)·(-6)/3 − (0, -2)·(-6)/(-2) = (-12, 6).                                  x: (-10.5, 9)
# γ = 0.5, ε = 0, t = 0: h: z = (4+2) + (2+1) + (2+1) = 12 -> (6, 3)·8/12 = (4, 2);
#   unit 0: (1.5, 3), bias 1.5, z = 6 -> (1, 2); unit 1: (4.5, -2), z = 2.5 -> (3.6, -1.6).   x: (4.6, 0.4)
# γ = 0.5, ε = 0, t = 1: z = -3 < 0, so the negative contributions are amplified: (-4, 1) + 0.5·(-4, 0),
#   z̃ = -5 -> h: (-6, 1)·(-3)/(-5) = (-3.6, 0.6); unit 0: (1.5, 3)·(-3.6)/6 = (-0.9, -1.8);
#   unit 1: (4.5, -2)·0.6/2.5 = (1.08, -0.48).                                             x: (0.18, -2.28)
HAND_CASES = [
    (lambda m: relprop.LRPEpsilon(m, epsilon=0.0), 0, [7.0, -2.0]),
    (lambda m: relprop.LRPEpsilon(m, epsilon=0.0), 1, [2.0, -4.0]),
    (lambda m: relprop.LRPEpsilon(m, epsilon=1.0), 0, [152 / 45, -16 / 45]),
    (lambda m: relprop.LRPZPlus(m), 0, [40 / 9, 32 / 9]),
    (lambda m: relprop.LRPAlpha1Beta0(m), 0, [3.0, 2.0]),
    (lambda m: relprop.LRPAlpha2Beta1(m), 0, [12.0, 4.0]),
    (lambda m: relprop.LRPAlpha2Beta1(m), 1, [-10.5, 9.0]),
    (lambda m: relprop.LRPGamma(m, gamma=0.5, epsilon=0.0), 0, [4.6, 0.4]),
    (lambda m: relprop.LRPGamma(m, gamma=0.5, epsilon=0.0), 1, [0.18, -2.28]),
]


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("make, target, expected", HAND_CASES)
def test_two_layer_net_by_hand(kind, make, target, expected):
    model, x = two_layer_net(kind)
    attr = make(model).attribute(x, target=target)
    assert attr.shape == x.shape
    torch.testing.assert_close(attr.reshape(-1), torch.tensor(expected, dtype=D), rtol=0, atol=1e-12)


def test_composite_by_hand():
    """x = (1, 2) as a 1×2 image; conv (1×2 kernels (1, 1), (3, -1), bias (1, 0)) -> ReLU -> 1×1 conv
    ((1, 2), (-1, 1)) -> ReLU -> Linear ((1, -1), (0.5, 1)), bias (1, 0).

    Activations (4, 1) -> (6, 0) -> logit 7.  Linear, ε = 1: (6, 0)·7/8 = (5.25, 0).  Hidden conv z+:
    (4, 2)·5.25/6 = (3.5, 1.75).  Input z^B with bounds [-1, 3]: unit 0 terms x w − l w⁺ − h w⁻ =
    (2, 3) -> (1.4, 2.1); unit 1 terms (3 + 3, -2 + 3) = (6, 1) -> (1.5, 0.25).  x: (2.9, 2.35).
    """
    model = nn.Sequential(
        nn.Conv2d(1, 2, (1, 2)), nn.ReLU(), nn.Conv2d(2, 2, 1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(2, 2)
    ).to(D)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0], [3.0, -1.0]]).view(2, 1, 1, 2))
        model[0].bias.copy_(torch.tensor([1.0, 0.0]))
        model[2].weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 1.0]]).view(2, 2, 1, 1))
        model[5].weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 1.0]]))
        model[5].bias.copy_(torch.tensor([1.0, 0.0]))
    x = torch.tensor([1.0, 2.0], dtype=D).view(1, 1, 1, 2)
    attr = relprop.LRPComposite(model.eval(), epsilon=1.0, input_bounds=(-1.0, 3.0)).attribute(x, target=0)
    torch.testing.assert_close(attr.reshape(-1), torch.tensor([2.9, 2.35], dtype=D), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------- BatchNorm


@pytest.mark.parametrize("make", [lambda m: relprop.LRPEpsilon(m, 0.01), relprop.LRPAlpha2Beta1, relprop.LRPGamma])
def test_batchnorm_is_folded_into_its_convolution(make):
    """conv -> BN -> ReLU equals, for LRP, the single convolution with BN folded in by hand."""
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.uniform_(-1.5, 1.5), bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    tail = [nn.ReLU(), nn.Conv2d(4, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 3)]
    model = nn.Sequential(conv, bn, *tail).to(D).eval()
    folded_conv = nn.Conv2d(3, 4, 3).to(D)
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        folded_conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        folded_conv.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
    folded = nn.Sequential(folded_conv, *tail).to(D).eval()
    x = torch.randn(2, 3, 8, 8, dtype=D)
    torch.testing.assert_close(model(x), folded(x))
    expected = make(folded).attribute(x, target=[0, 2])
    torch.testing.assert_close(make(model).attribute(x, target=[0, 2]), expected, rtol=1e-9, atol=1e-12)


def test_fold_batchnorm_before_a_linear_by_hand():
    # W = (1, 2), b = 1; BN over the 2 inputs: μ = (1, 0), σ² = (3, 0), eps 1 (σ = (2, 1)), γ = (4, −1), β = (5, 2):
    # s = (2, −1), t = β − μ·s = (3, 2); W' = (1·2, 2·(−1)) = (2, −2), b' = 1 + 1·3 + 2·2 = 8
    bn = nn.BatchNorm1d(2, eps=1.0).to(D)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, 0.0])), bn.running_var.copy_(torch.tensor([3.0, 0.0]))
        bn.weight.copy_(torch.tensor([4.0, -1.0])), bn.bias.copy_(torch.tensor([5.0, 2.0]))
    weight, bias = fold_batchnorm_before(torch.tensor([[1.0, 2.0]], dtype=D), torch.ones(1, dtype=D), bn)
    assert weight.tolist() == [[2.0, -2.0]] and bias.tolist() == [8.0]


@pytest.mark.parametrize(
    "make", [lambda m: relprop.LRPEpsilon(m, 0.01), relprop.LRPAlpha2Beta1, relprop.LRPGamma, relprop.RAP]
)
def test_batchnorm1d_read_only_by_a_linear_is_folded_into_it(make):
    """A fastai-style head ``ReLU → BatchNorm1d → Dropout → Linear`` equals, for LRP, ``ReLU → Linear`` with the
    BatchNorm folded in by hand: its shift joins the bias, and a unit the ReLU switched off gets no relevance
    (passed unchanged, the BatchNorm would give it relevance for the shift, divided at the layer below by a
    pre-activation near 0: float32 maps 6e-5 to 8e-4 of max|R| off float64 on a ResNet-50 with such a head)."""
    torch.manual_seed(0)
    bn, linear = nn.BatchNorm1d(6), nn.Linear(6, 3)
    with torch.no_grad():
        bn.weight.uniform_(-1.5, 1.5), bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    body = [nn.Conv2d(3, 3, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 6), nn.ReLU()]
    model = nn.Sequential(*body, bn, nn.Dropout(0.5), linear).to(D).eval()
    folded_linear = nn.Linear(6, 3).to(D)
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        folded_linear.weight.copy_(linear.weight * scale)
        folded_linear.bias.copy_(linear.bias + linear.weight @ (bn.bias - bn.running_mean * scale))
    folded = nn.Sequential(*body, folded_linear).to(D).eval()
    x = torch.randn(2, 3, 8, 8, dtype=D)
    torch.testing.assert_close(model(x), folded(x))
    expected = make(folded).attribute(x, target=[0, 2])
    torch.testing.assert_close(make(model).attribute(x, target=[0, 2]), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("make", [lambda m: relprop.LRPEpsilon(m, 0.01), relprop.LRPAlpha2Beta1, relprop.LRPGamma])
def test_batchnorm1d_is_folded_into_its_linear(make):
    """Linear -> BatchNorm1d -> ReLU (an MLP head) equals, for LRP, the single Linear with BN folded in by hand."""
    torch.manual_seed(0)
    linear, bn = nn.Linear(12, 6), nn.BatchNorm1d(6)
    with torch.no_grad():
        bn.weight.uniform_(-1.5, 1.5), bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    body = [nn.Conv2d(3, 3, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()]
    tail = [nn.ReLU(), nn.Linear(6, 3)]
    model = nn.Sequential(*body, linear, bn, *tail).to(D).eval()
    folded_linear = nn.Linear(12, 6).to(D)
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        folded_linear.weight.copy_(linear.weight * scale.view(-1, 1))
        folded_linear.bias.copy_((linear.bias - bn.running_mean) * scale + bn.bias)
    folded = nn.Sequential(*body, folded_linear, *tail).to(D).eval()
    x = torch.randn(2, 3, 8, 8, dtype=D)
    torch.testing.assert_close(model(x), folded(x))
    expected = make(folded).attribute(x, target=[0, 2])
    torch.testing.assert_close(make(model).attribute(x, target=[0, 2]), expected, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------------------------- conservation


class SmallCNN(nn.Module):
    """conv-BN-ReLU stem, residual block, concatenation, BN after the concatenation, max and average
    pooling, grouped conv, two Linear layers.  Input (N, 3, 12, 12), 5 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.side = nn.Conv2d(8, 4, 1)
        self.norm = nn.BatchNorm2d(12)
        self.head = nn.Conv2d(12, 6, 3, padding=1, groups=2)
        self.fc1 = nn.Linear(24, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.branch(x))
        x = F.relu(self.norm(torch.cat([x, F.relu(self.side(x))], dim=1)))
        x = F.relu(self.head(F.max_pool2d(x, 2)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 2), 1)
        return self.fc2(F.relu(self.fc1(x)))


def randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (scales of both signs)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.uniform_(-1.5, 1.5), m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    return model


def zero_biases(model: nn.Module) -> nn.Module:
    """Make the network bias-free: conv and Linear biases 0; BatchNorm shift β = 0 and running mean 0,
    so that BN is the pure per-channel scaling x·γ/√(σ² + eps)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.zero_()
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.bias.zero_()
                m.running_mean.zero_()
    return model


def small_cnn(biases: bool = True) -> nn.Module:
    torch.manual_seed(0)
    model = randomise_batchnorm(SmallCNN()).to(D).eval()
    return model if biases else zero_biases(model)


# z+ with own_sign (the composite's z+): a negative output shares by its negative contributions.
# Same layer, bias b = (0, -3): z = (4, 1 - 3 = -2); out 0 is positive -> (0.5, 0.5) as above; out 1 is
# negative, its negative contributions are (-1, 0) -> all of R = 2 to input 0: (2, 0).  Total (2.5, 0.5);
# the bias still gets no share (plain z+ on the same layer: (0.5, 2.5)).
# Inputs a = (1, -2), no bias: contributions out 0: (-2, -2), z = -4; out 1: (1, -2), z = -1.  own_sign:
# out 0 shares 1 by (-2, -2) -> (0.5, 0.5); out 1 shares 2 by (0, -2) -> (0, 2): (0.5, 2.5), Σ = 3 = Σ R.
# Plain z+: out 0 has no positive contribution and passes nothing; out 1 shares 2 by (1, 0): (2, 0), Σ = 2.
@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize(
    "a, bias, own_sign, expected",
    [
        ([-1.0, 2.0], [0.0, -3.0], True, [2.5, 0.5]),
        ([-1.0, 2.0], [0.0, -3.0], False, [0.5, 2.5]),
        ([1.0, -2.0], None, True, [0.5, 2.5]),
        ([1.0, -2.0], None, False, [2.0, 0.0]),
    ],
)
def test_zplus_own_sign_by_hand(kind, a, bias, own_sign, expected):
    _, r, w, layer, flat = _one_layer(kind)
    a_t = torch.tensor(a, dtype=D).view(r.shape)
    b_t = None if bias is None else torch.tensor(bias, dtype=D)
    out = zplus_rule(a_t, r, w, b_t, layer, own_sign=own_sign)
    torch.testing.assert_close(flat(out), torch.tensor([expected], dtype=D), rtol=0, atol=1e-12)


def test_zplus_overlapping_windows_by_hand():
    # A 2×2 kernel over a 3×3 input (stride 1, no padding), two output channels, non-negative x and K, so z+
    # is the plain z rule: each output shares its relevance in proportion to x_q·K_q over its window.
    x = torch.tensor([[1, 0, 2], [3, 1, 0], [0, 2, 1]], dtype=D).view(1, 1, 3, 3)
    k = torch.tensor([[[[1, 0], [0, 2]]], [[[0, 1], [1, 0]]]], dtype=D)  # (2, 1, 2, 2)
    # channel 0: Z[p] = x[p] + 2·x[p+(1,1)] = [[3, 0], [7, 3]]; R/Z = [[1, drop], [1, 2]] (Z = 0 passes nothing)
    # channel 1: Z[p] = x[p+(0,1)] + x[p+(1,0)] = [[3, 3], [1, 2]]; R/Z = [[1, 2], [1, 2]]
    r = torch.tensor([[[[3, 5], [7, 6]], [[3, 6], [1, 4]]]], dtype=D)
    # channel 0 shares x_q·K·S: (0,0)←1·1·1, (1,1)←1·2·1 + 1·1·2, (1,0)←3·1, (2,1)←2·2·1, (2,2)←1·2·2
    ch0 = [[1, 0, 0], [3, 4, 0], [0, 4, 4]]
    # channel 1: (1,0)←3·1, (0,2)←2·1·2, (1,1)←1·1·2 + 1·1·1, (2,1)←2·1·2
    ch1 = [[0, 0, 4], [3, 3, 0], [0, 4, 0]]
    out = zplus_rule(x, r, k, None, conv_map(ConvGeometry((1, 1), (0, 0), (1, 1), 1), x.shape))
    expected = torch.tensor(ch0, dtype=D) + torch.tensor(ch1, dtype=D)
    torch.testing.assert_close(out, expected.view(1, 1, 3, 3), rtol=0, atol=1e-12)
    assert out.sum().item() == pytest.approx(35.0 - 5.0)  # Σ R minus the dropped output (Z = 0)


@pytest.mark.parametrize("name, conserves", [("lrp_composite", True), ("lrp_zplus", False)])
def test_composite_conserves_on_linear_bottlenecks(name, conserves):
    """MNASNet's projection convolutions have no ReLU after them, so their outputs are signed: the
    composite's z+ passes a negative output's relevance on (Σ R = logit on a bias-free copy, float64:
    3e-16 relative); plain z+ drops it, so the same check fails for ``lrp_zplus`` (1e-2)."""
    torch.manual_seed(0)
    model = zero_biases(randomise_batchnorm(torchvision.models.mnasnet0_5())).eval().to(D)
    x = torch.randn(2, 3, 64, 64, dtype=D, generator=torch.Generator().manual_seed(4))
    logits = model(x).detach()
    targets = logits.argmax(dim=1)
    method = relprop.LRPComposite(model, epsilon=0.0) if name == "lrp_composite" else relprop.LRPZPlus(model)
    sums = method.attribute(x, target=targets).sum(dim=(1, 2, 3))
    expected = logits.gather(1, targets[:, None]).squeeze(1)
    error = ((sums - expected).abs() / expected.abs()).max().item()
    assert (error <= 1e-6) == conserves, error


class _BranchSum(nn.Module):
    """A MobileOne-style block, bias-free: ``relu(h + w ⊙ h + dw3x3(h))`` with ``h = relu(conv(x))``.  Where
    ``h`` is 0 the 1×1 depthwise branch ``w ⊙ h`` is exactly 0 too while the 3×3 branch is not."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.scale = nn.Conv2d(4, 4, 1, groups=4, bias=False)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
        self.head = nn.Linear(4, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(x))
        y = F.relu(h + self.scale(h) + self.dw(h))
        return self.head(y.mean(dim=(2, 3)))


def test_composite_conserves_where_a_residual_branch_is_exactly_zero():
    """An add input that is exactly 0 where the other is not gets no share of the add's relevance: the
    z⁺ rule of a convolution whose output is 0 has no contribution to pass a share on by, so the
    share was lost (before: 2.4e-5 of the logit here, 1.8e-3 on timm's MobileOne-S0)."""
    torch.manual_seed(0)
    model = _BranchSum().to(D).eval()
    x = torch.randn(2, 3, 8, 8, dtype=D, generator=torch.Generator().manual_seed(1))
    logits = model(x).detach()
    targets = logits.argmax(dim=1)
    h = F.relu(model.conv(x))
    assert ((h == 0) & (model.dw(h) != 0)).any()  # the case under test occurs
    sums = relprop.LRPComposite(model, epsilon=0.0).attribute(x, target=targets).sum(dim=(1, 2, 3))
    expected = logits.gather(1, targets[:, None]).squeeze(1)
    torch.testing.assert_close(sums, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda m: relprop.LRPEpsilon(m, epsilon=1e-12),
        relprop.LRPZPlus,
        relprop.LRPAlpha1Beta0,  # equals z+ without biases
        lambda m: relprop.LRPGamma(m, gamma=0.25, epsilon=1e-12),
        lambda m: relprop.LRPComposite(m, epsilon=1e-12),
    ],
)
def test_sum_equals_logit_without_biases(make):
    model = small_cnn(biases=False)
    x = torch.randn(4, 3, 12, 12, dtype=D, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 3, 4])
    logits = model(x).gather(1, targets[:, None]).squeeze(1).detach()
    attr = make(model).attribute(x, target=targets)
    torch.testing.assert_close(attr.sum(dim=(1, 2, 3)), logits, rtol=1e-8, atol=0)


class ConcatPoolHead(nn.Module):
    """A conv body under a fastai-style head: max and average pooling concatenated, then BatchNorm1d ->
    Dropout -> Linear -> ReLU -> BatchNorm1d -> Linear (each BatchNorm1d read only by a Linear, which folds it)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.head = nn.Sequential(
            nn.Flatten(), nn.BatchNorm1d(12), nn.Dropout(0.25), nn.Linear(12, 8), nn.ReLU(), nn.BatchNorm1d(8),
            nn.Linear(8, 4),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        return self.head(torch.cat([F.adaptive_max_pool2d(x, 1), F.adaptive_avg_pool2d(x, 1)], dim=1))


@pytest.mark.parametrize("make", [lambda m: relprop.LRPEpsilon(m, epsilon=0.0), lambda m: relprop.LRPComposite(m, epsilon=0.0)])
def test_sum_equals_logit_through_a_batchnorm1d_head_without_biases(make):
    torch.manual_seed(0)
    model = zero_biases(randomise_batchnorm(ConcatPoolHead())).to(D).eval()
    x = torch.randn(3, 3, 8, 8, dtype=D, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 2, 3])
    logits = model(x).gather(1, targets[:, None]).squeeze(1).detach()
    attr = make(model).attribute(x, target=targets)
    torch.testing.assert_close(attr.sum(dim=(1, 2, 3)), logits, rtol=1e-10, atol=0)
    alone = make(model).attribute(x[1:2], target=targets[1:2])
    torch.testing.assert_close(attr[1:2], alone, rtol=0, atol=1e-12 * attr.abs().max().item())


def test_biases_absorb_relevance():
    """With biases the ε sum is not the logit (the check above can fail)."""
    model = small_cnn(biases=True)
    x = torch.randn(4, 3, 12, 12, dtype=D, generator=torch.Generator().manual_seed(1))
    logits = model(x)[:, 0].detach()
    sums = relprop.LRPEpsilon(model, epsilon=1e-12).attribute(x, target=0).sum(dim=(1, 2, 3))
    assert (sums - logits).abs().max() > 1e-3


def _resnet50_bias_free() -> nn.Module:
    torch.manual_seed(0)
    return zero_biases(randomise_batchnorm(torchvision.models.resnet50())).eval()


def test_lrp_epsilon_on_resnet50_is_finite_and_conserves():
    """Captum's LRP explodes on stock ResNet-50; ours stays finite and, without biases, sums to the logit."""
    model = _resnet50_bias_free()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    logits = model(x).detach()
    target = int(logits.argmax())
    attr = relprop.LRPEpsilon(model).attribute(x, target=target)
    assert torch.isfinite(attr).all()
    assert abs(attr.sum().item() - logits[0, target].item()) <= 0.1 * abs(logits[0, target].item())
    with torch.no_grad():  # with biases (BN shifts, fc bias) the map must still be finite
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.uniform_(-0.5, 0.5), m.running_mean.uniform_(-0.5, 0.5)
        model.fc.bias.uniform_(-1, 1)
    assert torch.isfinite(relprop.LRPEpsilon(model).attribute(x, target=target)).all()


# --------------------------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", LRP_NAMES)
def test_batch_per_sample_targets_and_invariance(name):
    """Sample i of a batch gets its map alone (float64: the float32 forward of a batch and of a single
    image differ by rounding, which the ε-type divisions can amplify above 1e-5)."""
    model = small_cnn()
    method = relprop.get_method(name)(model)
    x = torch.randn(4, 3, 12, 12, dtype=D, generator=torch.Generator().manual_seed(3))
    targets = [4, 0, 2, 2]
    batch = method.attribute(x, target=targets)
    for i, t in enumerate(targets):
        assert _rel(batch[i : i + 1], method.attribute(x[i : i + 1], target=t)) <= 1e-5
    assert _rel(batch[2], method.attribute(x[2:3], target=1)[0]) > 1e-3  # the target matters


STOCK = {
    "vgg11": (torchvision.models.vgg11, 32),
    "resnet18": (torchvision.models.resnet18, 32),
    "densenet121": (torchvision.models.densenet121, 32),
    "mobilenet_v2": (torchvision.models.mobilenet_v2, 32),
}


def check_stock_model(arch: str, names: list[str]) -> None:
    """Every method runs on a random-init stock model: finite, non-constant maps; model untouched."""
    build, size = STOCK[arch]
    torch.manual_seed(0)
    model = build().eval()
    before = snapshot(model)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(4))
    for name in names:
        attr = relprop.get_method(name)(model).attribute(x, target=999)
        assert attr.shape == x.shape and torch.isfinite(attr).all(), name
        assert attr.std() > 0, name
    assert_unchanged(before, model)


@pytest.mark.parametrize("arch", list(STOCK))
def test_stock_models(arch):
    check_stock_model(arch, LRP_NAMES)


def test_invalid_hyper_parameters():
    model = small_cnn()
    for make in [
        lambda: relprop.LRPEpsilon(model, epsilon=-1.0),
        lambda: relprop.LRPGamma(model, gamma=float("nan")),
        lambda: relprop.LRPAlphaBeta(model, alpha=2.0, beta=-1.0),
    ]:
        with pytest.raises(ValueError, match="must be a finite number >= 0"):
            make()


# --------------------------------------------------------------------------------------------- Captum


class CaptumNet(nn.Module):
    """A plain conv net of layers Captum's LRP has default rules for (flattening done in forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def test_lrp_epsilon_equals_captum():
    """Captum's LRP defaults to its ε rule (ε = 1e-9, bias in the denominator) on Conv2d, Linear and the
    pooling layers and passes relevance through ReLU: with the same ε every rule coincides with ours
    (its max pool gives the winner ``x·R/(x + ε)`` instead of ``R``: a relative difference of order ε/x)."""
    from captum.attr import LRP as CaptumLRP

    torch.manual_seed(0)
    model = CaptumNet().to(D).eval()
    x = torch.randn(3, 3, 12, 12, dtype=D, generator=torch.Generator().manual_seed(5))
    targets = [0, 3, 4]
    expected = CaptumLRP(copy.deepcopy(model)).attribute(x.clone(), target=targets)
    ours = relprop.LRPEpsilon(model, epsilon=1e-9).attribute(x, target=targets)
    assert expected.abs().max() > 0
    assert _rel(ours, expected.detach()) <= 1e-6


# --------------------------------------------------------------------------------------------- Zennit


class ZennitNet(nn.Module):
    """A VGG-like net with BatchNorm and non-zero biases everywhere (a bias changes the sign-split rules)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32, 16), nn.ReLU(), nn.Dropout(), nn.Linear(16, 5))
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.uniform_(module.bias, -0.3, 0.3)
            if isinstance(module, nn.BatchNorm2d):
                # eps 0: Zennit's canonizer leaves the merged BatchNorm dividing by sqrt(1 + eps), not the identity
                module.eps = 0.0
                nn.init.uniform_(module.weight, -1.0, 2.0), nn.init.uniform_(module.bias, -0.5, 0.5)
                nn.init.uniform_(module.running_mean, -0.5, 0.5), nn.init.uniform_(module.running_var, 0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _zennit_rules():  # type: ignore[no-untyped-def]
    """Zennit's composite for each relprop LRP method: the same rule per layer type, with Zennit's stabiliser
    made negligible (1e-30) where relprop's sign-split rules use none (their denominators are sums of one sign)."""
    from zennit.composites import LayerMapComposite, SpecialFirstLayerMapComposite
    from zennit.rules import AlphaBeta, Epsilon, Gamma, ZBox, ZPlus

    tiny = 1e-30
    layers = (nn.Conv2d, nn.Linear)

    def everywhere(rule):  # type: ignore[no-untyped-def]
        return lambda canonizers: LayerMapComposite([(kind, rule) for kind in layers], canonizers=canonizers)

    return {
        "lrp_epsilon": everywhere(Epsilon(1e-6)),
        "lrp_zplus": everywhere(ZPlus(stabilizer=tiny, zero_params=["bias"])),  # z⁺ ignores the bias
        "lrp_alpha1beta0": everywhere(AlphaBeta(1.0, 0.0, stabilizer=tiny)),
        "lrp_alpha2beta1": everywhere(AlphaBeta(2.0, 1.0, stabilizer=tiny)),
        "lrp_gamma": everywhere(Gamma(0.25, stabilizer=1e-6)),
        "lrp_composite": lambda canonizers: SpecialFirstLayerMapComposite(
            layer_map=[(nn.Linear, Epsilon(1e-6)), (nn.Conv2d, ZPlus(stabilizer=tiny, zero_params=["bias"]))],
            first_map=[(nn.Conv2d, ZBox(-3.0, 3.0, stabilizer=tiny))], canonizers=canonizers,
        ),
    }


@pytest.mark.parametrize("name", LRP_NAMES)
def test_lrp_rules_equal_zennit(name):
    """Zennit (an independent implementation) with the matching rule per layer type and its BatchNorm
    canonizer gives the same maps to float64 rounding, on a net with biases, a folded BatchNorm whose
    scale is negative in some channels, max pooling, dropout and a Linear head."""
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm

    torch.manual_seed(0)
    model = ZennitNet().to(D).eval()
    x = torch.randn(3, 3, 8, 8, dtype=D, generator=torch.Generator().manual_seed(5)).clamp(-3.0, 3.0)  # in z^B's box
    targets = torch.tensor([0, 3, 4])
    options = {"input_bounds": (-3.0, 3.0)} if name == "lrp_composite" else {}
    ours = relprop.get_method(name)(model, **options).attribute(x, target=targets)
    composite = _zennit_rules()[name]([SequentialMergeBatchNorm()])
    with Gradient(model=copy.deepcopy(model), composite=composite) as attributor:
        _, expected = attributor(x, lambda out: torch.zeros_like(out).scatter_(1, targets[:, None], 1.0) * out)
    assert expected.abs().max() > 0
    assert _rel(ours, expected) <= 1e-12, _rel(ours, expected)


def test_relevance_at_an_output_no_input_explains_is_shared_evenly_over_its_field():
    """A bias-free depthwise 3×3 convolution, padding 1, on a 2×2 map whose channel 1 is 0 everywhere: every
    output of channel 1 carries relevance (R = 1, 2, 3, 4) but no input contributes to it, so each output's
    relevance goes evenly to its field, the 4 inputs of the map (the padding takes none): 10 / 4 = 2.5 each.
    Channel 0, whose inputs are non-zero, gets nothing from this fallback.  With the first column explicit
    padding (a pad op before the convolution), every output's field holds the 2 inputs of column 1: 10 / 2 = 5
    each, none to the padding."""
    a = torch.zeros(1, 2, 2, 2, dtype=D)
    a[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    relevance = torch.zeros(1, 2, 2, 2, dtype=D)
    relevance[0, 1] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    relevance[0, 0] = 5.0  # explained by channel 0's inputs: not the fallback's
    geometry = ConvGeometry((1, 1), (1, 1), (1, 1), 2)
    weight = torch.ones(2, 1, 3, 3, dtype=D)
    expected = torch.zeros_like(a)
    expected[0, 1] = 2.5
    torch.testing.assert_close(unexplained_shares(a, relevance, weight, geometry), expected, rtol=0, atol=1e-12)
    padding = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    padding[..., 0] = True
    expected[0, 1] = torch.tensor([[0.0, 5.0], [0.0, 5.0]])
    torch.testing.assert_close(unexplained_shares(a, relevance, weight, geometry, padding), expected, rtol=0, atol=1e-12)
    assert unexplained_shares(a, relevance * torch.tensor([1.0, 0.0], dtype=D).view(1, 2, 1, 1), weight, geometry) is None


def test_relevance_at_a_dense_output_with_a_zero_input_is_shared_evenly_and_a_bias_keeps_its_own():
    """A dense layer whose input is 0 (sample 1): outputs with relevance 1 and 3 pass (1 + 3) / 2 = 2 to each of its
    2 inputs; sample 0's non-zero input gets nothing from the fallback.  With a bias on output 1 only, that
    output's relevance (3) stays the bias's, as in every LRP rule: (1 + 0) / 2 = 0.5 each."""
    a = torch.tensor([[1.0, -2.0], [0.0, 0.0]], dtype=D)
    relevance = torch.tensor([[4.0, 4.0], [1.0, 3.0]], dtype=D)
    weight = torch.ones(2, 2, dtype=D)
    expected = torch.tensor([[0.0, 0.0], [2.0, 2.0]], dtype=D)
    torch.testing.assert_close(unexplained_shares(a, relevance, weight, None), expected, rtol=0, atol=1e-12)
    unbiased = unbiased_relevance(relevance, torch.tensor([0.0, 0.5], dtype=D))
    torch.testing.assert_close(unexplained_shares(a, unbiased, weight, None), expected / 4, rtol=0, atol=1e-12)
    assert unbiased_relevance(relevance, torch.tensor([0.1, 0.5], dtype=D)) is None


class GatedDepthwiseNorm(nn.Module):
    """RDNet's block in small: a 3×3 conv, a hard-sigmoid channel gate that shuts channel 0 (its input saturates
    at −10), a depthwise 3×3 conv, a LayerNorm over the channels (channels-last), a 1×1 conv, a mean and a
    Linear head; all bias-free, so every LRP rule there claims Σ R = the target logit.  The LayerNorm maps the
    depthwise conv's zero channel to a non-zero value, so the 1×1 conv gives it relevance."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
        self.norm = nn.LayerNorm(4, bias=False)
        self.pointwise = nn.Conv2d(4, 6, 1, bias=False)
        self.fc = nn.Linear(6, 3, bias=False)
        self.shut = torch.tensor([-10.0, 3.0, 3.0, 3.0]).view(1, 4, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        h = h * F.hardsigmoid(self.shut.to(h.dtype) + 0 * h.mean(dim=(2, 3), keepdim=True))
        h = self.norm(self.depthwise(h).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.fc(self.pointwise(h).mean(dim=(2, 3)))


@pytest.mark.parametrize("name", ["lrp_composite", "lrp_epsilon", "lrp_gamma"])
def test_lrp_conserves_through_a_layernorm_above_a_zero_channel(name):
    """Before: the depthwise conv dropped the relevance the LayerNorm gave its zero channel (Σ R fell short of
    the logit; timm's RDNet-tiny, bias-free: 6.7e-6 of it); now it is shared over the channel's fields.  With
    ε = 0, so that no stabiliser absorbs any relevance either."""
    model = GatedDepthwiseNorm().to(D).eval()
    x = torch.randn(2, 3, 6, 6, dtype=D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
    targets = torch.tensor([0, 2])
    attr = relprop.get_method(name)(model, epsilon=0.0).attribute(x, target=targets)
    expected = logits.gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(attr.sum(dim=(1, 2, 3)), expected, rtol=1e-10, atol=0)


def test_layer_norm_rule_by_hand():
    """h = (0, 0, 2, 2): μ = 1, centred (−1, −1, 1, 1), σ = 1 (ε = 0); γ = (2, 1, 1, 0.5), β = (0, 1, 0, 0) give
    y = (−2, 0, 1, 0.5).  R = (4, 3, 2, 1): u = γ / σ ⊙ R ⊘ y = (−4, 0, 2, 1) (y = 0 adds nothing), mean −0.25,
    R_h = h ⊙ (u + 0.25) = (0, 0, 4.5, 2.5); Σ = 7 = Σ R (y − β) / y over y ≠ 0 = 4 + 2 + 1."""
    h = torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=D)
    gamma, beta = torch.tensor([2.0, 1.0, 1.0, 0.5], dtype=D), torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=D)
    relevance = torch.tensor([[4.0, 3.0, 2.0, 1.0]], dtype=D)
    expected = torch.tensor([[0.0, 0.0, 4.5, 2.5]], dtype=D)
    torch.testing.assert_close(layer_norm_rule(h, relevance, gamma, beta, 0.0, 1), expected, rtol=0, atol=1e-12)


def test_layer_norm_rule_after_an_epsilon_rule_is_lrp_on_the_folded_layer():
    """With σ held fixed, ``fc(LayerNorm(h))`` is the linear layer ``W' = W diag(γ / σ) (I − 11ᵀ / n)`` of h (plus
    the bias W β + b): the ε rule at fc (ε = 0) then the LayerNorm rule give what the ε rule gives on W' directly,
    per sample, with that bias."""
    g = torch.Generator().manual_seed(0)
    n, features, outputs = 3, 6, 4
    h = torch.randn(n, features, dtype=D, generator=g)
    gamma, beta = torch.randn(features, dtype=D, generator=g), torch.randn(features, dtype=D, generator=g)
    weight, bias = torch.randn(outputs, features, dtype=D, generator=g), torch.randn(outputs, dtype=D, generator=g)
    relevance = torch.randn(n, outputs, dtype=D, generator=g)
    eps = 1e-5
    y = F.layer_norm(h, (features,), gamma, beta, eps)
    r_y = epsilon_rule(y, relevance, weight, bias, dense_map(), epsilon=0.0)
    got = layer_norm_rule(h, r_y, gamma, beta, eps, 1)
    centring = torch.eye(features, dtype=D) - 1.0 / features
    for i in range(n):
        inv_sigma = torch.rsqrt(h[i].var(unbiased=False) + eps)
        folded = weight @ torch.diag(gamma * inv_sigma) @ centring
        expected = epsilon_rule(h[i:i + 1], relevance[i:i + 1], folded, weight @ beta + bias, dense_map(), epsilon=0.0)
        torch.testing.assert_close(got[i:i + 1], expected, rtol=1e-10, atol=1e-12)


class LayerNormHead(nn.Module):
    """conv → ReLU → mean → fc1 → ReLU → LayerNorm → fc2, bias-free but for fc1 (as ConvFormer's and InceptionNeXt's
    MLP heads): fc1's bias puts unit 0 of sample 0 a hair below 0 (−1e-5), so the ReLU switches it off while the
    LayerNorm's output at it is far from 0."""

    def __init__(self, x: torch.Tensor) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc1, self.fc2 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Linear(8, 6), nn.Linear(6, 3, bias=False)
        self.norm = nn.LayerNorm(6, bias=False)
        self.to(x.dtype)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 2.0)
            features = torch.relu(self.conv(x)).mean(dim=(2, 3))
            self.fc1.bias.zero_()
            self.fc1.bias[0] = -1e-5 - (features[0] @ self.fc1.weight[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(torch.relu(self.conv(x)).mean(dim=(2, 3))))
        return self.fc2(self.norm(h))


class FunctionalLayerNormHead(LayerNormHead):
    """:class:`LayerNormHead` with its LayerNorm written ``F.layer_norm`` (as timm's LayerNorm classes call it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(torch.relu(self.conv(x)).mean(dim=(2, 3))))
        return self.fc2(F.layer_norm(h, self.norm.normalized_shape, self.norm.weight, None, self.norm.eps))


@pytest.mark.parametrize("head", ["module", "F.layer_norm"])
@pytest.mark.parametrize("name", ["lrp_composite", "lrp_epsilon"])
def test_a_layer_norm_head_keeps_lrp_precise_in_float32(name, head):
    """Before, relevance passed the LayerNorm unchanged to the switched-off unit 0, and fc1's ε rule divided it by
    the unit's pre-activation, −1e-5 (− ε = 1e-6): float32, which resolves that pre-activation to about 1 %, moved
    the map by 1.5e-3 of its maximum.  The LayerNorm rule gives unit 0 relevance in proportion to its ReLU
    output, 0."""
    x = torch.randn(2, 3, 8, 8, dtype=D, generator=torch.Generator().manual_seed(1))
    model64 = (LayerNormHead if head == "module" else FunctionalLayerNormHead)(x).eval()
    model32 = copy.deepcopy(model64).float()
    ref = relprop.get_method(name)(model64).attribute(x, target=[1, 2])
    got = relprop.get_method(name)(model32).attribute(x.float(), target=[1, 2]).double()
    assert _rel(got, ref) <= 1e-4


def test_the_layer_norm_rule_reads_f_layer_norm_like_the_module():
    x = torch.randn(2, 3, 8, 8, dtype=D, generator=torch.Generator().manual_seed(1))
    module, functional = LayerNormHead(x).eval(), FunctionalLayerNormHead(x).eval()
    torch.testing.assert_close(relprop.LRPComposite(functional).attribute(x, target=[1, 2]),
                               relprop.LRPComposite(module).attribute(x, target=[1, 2]), rtol=0, atol=1e-13)
