"""The exact alternatives inside the conv rules give the same numbers as their direct statement.

RSP's ``C⁺ − C⁻`` can be computed through per-sample virtual kernels, through batched matrix
products of the unfolded receptive fields, or through their Gram matrix; AE's inactive-input
denominator through a direct convolution or as ``conv(1, K) − conv(m, K)``; both rules may run on
chunks of the batch.  The references here are written out in the test from algorithms.md §4.1 and
§5.1 with plain convolutions and ``torch.nn.grad``; float64 throughout.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input, conv2d_weight

import relprop.rules.common as common
from relprop.rules.ae import ae_conv
from relprop.rules.conv_ops import ConvGeometry
from relprop.rules.rsp import (
    _contrast_by_virtual_kernels, _contrast_unfolded, _split_by_sign, _strategy, rsp_conv,
)

D = torch.float64

# (input C, H, W), (O, kh, kw), stride, padding, dilation: odd sizes that strides do not divide,
# non-square kernels, dilation, 1×1 with and without stride.
GEOMETRIES = [
    ((5, 9, 8), (4, 3, 3), 1, 1, 1),
    ((5, 9, 8), (6, 3, 3), 2, 1, 1),
    ((3, 10, 11), (4, 3, 2), 2, 0, 1),
    ((4, 9, 9), (3, 3, 3), 1, 2, 2),
    ((6, 7, 9), (8, 1, 1), 1, 0, 1),
    ((6, 7, 9), (5, 1, 1), 2, 0, 1),
    ((6, 8, 8), (5, 1, 1), 3, 0, 1),
]


def _case(spec, seed: int = 0):
    (c, h, w), (o, kh, kw), stride, padding, dilation = spec
    torch.manual_seed(seed)
    geometry = ConvGeometry((stride, stride), (padding, padding), (dilation, dilation), 1)
    a = torch.randn(3, c, h, w, dtype=D)
    a[:, :, :2] = a[:, :, :2].abs() + 0.1  # a band of all-active windows
    oh = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    ow = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    relevance = torch.randn(3, o, oh, ow, dtype=D)
    relevance[:, :, 0] = 0  # outputs without relevance
    return a, relevance, geometry, (o, c, kh, kw)


def _rsp_contrast_by_definition(a, relevance, geometry, kernel_shape):
    """algorithms.md §4.1 sample by sample: G± = wgrad(a⁺, R±); C± = a⁺ ⊙ convᵀ(R± ⊘ conv(a⁺, G±), G±)."""
    args = (geometry.stride, geometry.padding, geometry.dilation)
    out = []
    for x, r in zip(a.clamp(min=0).split(1), relevance.split(1)):
        c = torch.zeros_like(x)
        for part, sign in ((r.clamp(min=0), 1.0), ((-r).clamp(min=0), -1.0)):
            g = conv2d_weight(x, kernel_shape, part, *args)
            z = F.conv2d(x, g, None, *args)
            s = torch.where(z == 0, torch.zeros_like(z), part / torch.where(z == 0, torch.ones_like(z), z))
            c += sign * x * conv2d_input(x.shape, g, s, *args)
        out.append(c)
    return torch.cat(out)


@pytest.mark.parametrize("spec", GEOMETRIES)
def test_rsp_contrast_strategies_equal_the_definition(spec):
    a, relevance, geometry, kernel_shape = _case(spec)
    expected = _rsp_contrast_by_definition(a, relevance, geometry, kernel_shape)
    x, both = a.clamp(min=0), _split_by_sign(relevance, 1)
    computed = {  # each strategy overwrites its copy of ``both``
        "virtual kernels": _contrast_by_virtual_kernels(x, both.clone(), geometry, kernel_shape),
        "unfolded": _contrast_unfolded(x, both.clone(), geometry, kernel_shape[2:], gram=False),
        "gram": _contrast_unfolded(x, both.clone(), geometry, kernel_shape[2:], gram=True),
    }
    for name, value in computed.items():
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-12, msg=name)


def test_strategy_choice_follows_the_cost_model():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    # VGG-16 conv5 (14×14 map, 512 channels): 2·L²·D + 4·O·L² ≈ 0.43 G < 6·O·L·D ≈ 2.8 G.
    assert _strategy(cpu, 1, 512, 196, 4608, False) == "gram"
    assert _strategy(cuda, 1, 512, 196, 4608, False) == "gram"
    # VGG-16 conv4 (28×28, 512): the Gram form is 1.6× cheaper, not the 2× CUDA asks of a 3×3 kernel.
    assert _strategy(cpu, 1, 512, 784, 4608, False) == "gram"
    assert _strategy(cuda, 1, 512, 784, 4608, False) == "virtual kernels"
    # VGG-16 conv1_2 (224×224, 64 channels): the Gram form would be ~400× dearer.
    assert _strategy(cpu, 1, 64, 224 * 224, 576, False) == "virtual kernels"
    assert _strategy(cuda, 1, 64, 224 * 224, 576, False) == "virtual kernels"
    assert _strategy(cpu, 1, 256, 3136, 64, True) == "unfolded"  # a 1×1 conv at 56×56
    assert _strategy(cpu, 32, 64, 3136, 18, False) == "virtual kernels"  # grouped: never unfolded


def _ae_by_definition(a, relevance, weight, geometry, ratio):
    """The AE rule written out with direct convolutions, per-sample unit masses and the structural support
    (activity weights ``clamp(a / (0.01 · max a), 0, 1)`` per sample instead of ``1[a > 0]``)."""
    k = weight.abs()
    args = (geometry.stride, geometry.padding, geometry.dilation)

    def z(inputs, s):
        den = F.conv2d(inputs, k, None, *args)
        share = torch.where(den == 0, torch.zeros_like(den), s / torch.where(den == 0, torch.ones_like(den), den))
        return inputs * conv2d_input(inputs.shape, k, share, *args)

    out = []
    for a1, r1 in zip(a.split(1), relevance.split(1)):
        p, n = r1.clamp(min=0), (-r1).clamp(min=0)
        p, n = p / p.sum(), n / n.sum()
        x, m = a1.clamp(min=0), (a1 / (0.01 * a1.max())).clamp(0, 1)
        c = z(x, ratio * p - n)
        reach = conv2d_input(x.shape, torch.ones_like(k), (r1 != 0).to(D), *args) > 0.5
        support = m * reach
        c = c - support * p.sum() / support.sum()
        result = c + z(m, p) - z(1 - m, n)
        mass = r1.abs().sum() / 2
        out.append(result * mass / (result.abs().sum() / 2))
    return torch.cat(out)


@pytest.mark.parametrize("spec", GEOMETRIES)
@pytest.mark.parametrize("zero_weights", [False, True])
def test_ae_conv_equals_the_definition(spec, zero_weights):
    a, relevance, geometry, kernel_shape = _case(spec, seed=1)
    weight = torch.randn(kernel_shape, dtype=D)
    if zero_weights:  # zeros where some windows' only inactive inputs sit: the Q23 drop must match
        weight[:, : kernel_shape[1] // 2] = 0
    expected = _ae_by_definition(a, relevance, weight, geometry, 2.0)
    torch.testing.assert_close(ae_conv(a, relevance, weight, geometry, 2.0), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("spec", GEOMETRIES[:2] + GEOMETRIES[5:6])
def test_chunked_rules_equal_whole_batch(spec, monkeypatch):
    a, relevance, geometry, kernel_shape = _case(spec, seed=2)
    weight = torch.randn(kernel_shape, dtype=D)
    whole = (rsp_conv(a, relevance, geometry, kernel_shape), ae_conv(a, relevance, weight, geometry, 1.5))
    monkeypatch.setitem(common.CHUNK_ELEMENTS, "cpu", 1)  # one sample per chunk
    chunked = (rsp_conv(a, relevance, geometry, kernel_shape), ae_conv(a, relevance, weight, geometry, 1.5))
    for w, c in zip(whole, chunked):
        torch.testing.assert_close(c, w, rtol=0, atol=1e-12)


def test_in_chunks_splits_by_budget_and_keeps_order(monkeypatch):
    monkeypatch.setitem(common.CHUNK_ELEMENTS, "cpu", 10)
    seen = []

    def record(t):
        seen.append(t.shape[0])
        return t * 2

    batch = torch.arange(7, dtype=D).reshape(7, 1)
    out = common.in_chunks(record, (batch,), per_sample=4)  # 10 // 4 = 2 samples per chunk
    assert seen == [2, 2, 2, 1]
    torch.testing.assert_close(out, batch * 2)


@pytest.mark.parametrize("scale", [1e-30, 1e-37])
def test_ae_conv_tiny_weights_give_the_same_shares_in_float32(scale):
    """AE shares in proportion to |w|, so a global weight scale cancels.  At 1e-37 the difference
    conv(1, K) − conv(m, K) of an all-active window leaves a denormal residue; the window count must
    zero it, or the division overflows and the masked product turns into NaN."""
    torch.manual_seed(0)
    geometry = ConvGeometry((1, 1), (1, 1), (1, 1), 1)
    a = torch.randn(2, 16, 12, 12)
    a[:, :, :4] = a[:, :, :4].abs() + 0.1
    weight, relevance = torch.randn(8, 16, 3, 3), torch.randn(2, 8, 12, 12)
    expected = ae_conv(a, relevance, weight, geometry, 2.0)
    torch.testing.assert_close(ae_conv(a, relevance, weight * scale, geometry, 2.0), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("groups", [2, 4])
def test_grouped_rsp_contrast_is_the_definition_per_group(groups):
    """A grouped convolution is one ungrouped convolution per group: the P/N channel layout of
    ``_split_by_sign`` must keep every group's relevance with its own input channels."""
    torch.manual_seed(3)
    c, o = 8, 12
    geometry = ConvGeometry((1, 1), (1, 1), (1, 1), groups)
    a, relevance = torch.randn(2, c, 7, 6, dtype=D), torch.randn(2, o, 7, 6, dtype=D)
    computed = _contrast_by_virtual_kernels(a.clamp(min=0), _split_by_sign(relevance, groups), geometry, (o, c // groups, 3, 3))
    ungrouped = ConvGeometry((1, 1), (1, 1), (1, 1), 1)
    expected = torch.cat(
        [
            _rsp_contrast_by_definition(a_g, r_g, ungrouped, (o // groups, c // groups, 3, 3))
            for a_g, r_g in zip(a.chunk(groups, dim=1), relevance.chunk(groups, dim=1))
        ],
        dim=1,
    )
    torch.testing.assert_close(computed, expected, rtol=0, atol=1e-12)
