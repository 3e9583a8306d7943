"""The z^B rule for the convolution that reads the image (docs/methods.md, "z^B: the convolution reading the image")."""

from __future__ import annotations

from torch import Tensor

from .common import safe_divide
from .conv_ops import ConvGeometry


def zbox_conv(
    x: Tensor, relevance: Tensor, weight: Tensor, geometry: ConvGeometry, low: Tensor, high: Tensor
) -> Tensor:
    """z^B rule: relevance shared by the contributions ``(x − l)·w⁺ + (x − h)·w⁻``, all of them ≥ 0.

    x: conv input (N, C, H, W); relevance: (N, O, h, w); weight: (O, C/g, kh, kw);
    low / high: bound images broadcastable to ``x`` (zero where ``x`` is padding), ``l ≤ x ≤ h``.
    Returns (N, C, H, W), signed; conserves ``Σ R`` wherever the denominator is non-zero.

    The denominator ``conv(x − l, W⁺) + conv(x − h, W⁻)`` is a sum of non-negative terms, computed as
    such (two convolutions): the textbook form ``conv(x, W) − conv(l, W⁺) − conv(h, W⁻)`` is the same
    number as a difference of large terms, which loses float32 digits.
    """
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    above_low, below_high = x - low, x - high
    z = geometry.conv(above_low, w_pos) + geometry.conv(below_high, w_neg)
    s = safe_divide(relevance, z)
    return above_low * geometry.conv_t(s, w_pos, x.shape) + below_high * geometry.conv_t(s, w_neg, x.shape)
