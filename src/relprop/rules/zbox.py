"""The z^B rule for the convolution that reads the image (algorithms.md §4.3, Q20, Q21)."""

from __future__ import annotations

from torch import Tensor

from .common import safe_divide
from .conv_ops import ConvGeometry


def zbox_conv(
    x: Tensor, relevance: Tensor, weight: Tensor, geometry: ConvGeometry, low: Tensor, high: Tensor
) -> Tensor:
    """z^B rule: relevance shared by ``x·w − l·w⁺ − h·w⁻`` contributions.

    x: conv input (N, C, H, W); relevance: (N, O, h, w); weight: (O, C/g, kh, kw);
    low / high: bound images broadcastable to ``x`` (zero where ``x`` is padding).
    Returns (N, C, H, W), signed; conserves ``Σ R`` wherever the denominator is non-zero.
    """
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    low, high = low.expand_as(x), high.expand_as(x)
    z = geometry.conv(x, weight) - geometry.conv(low, w_pos) - geometry.conv(high, w_neg)
    s = safe_divide(relevance, z)
    return (
        x * geometry.conv_t(s, weight, x.shape)
        - low * geometry.conv_t(s, w_pos, x.shape)
        - high * geometry.conv_t(s, w_neg, x.shape)
    )
