"""Relative Sectional Propagation: the hidden-convolution rule (algorithms.md §4.1-4.2)."""

from __future__ import annotations

import torch
from torch import Tensor

from .common import positive_negative, safe_divide, sample_sum, shift
from .conv_ops import ConvGeometry


def rsp_conv(
    a: Tensor, relevance: Tensor, geometry: ConvGeometry, kernel_shape: tuple[int, ...],
    *, sectional: bool = True, structural_support: bool = True,
) -> Tensor:
    """RSP rule for a hidden convolution; the layer's own weights are not used.

    a: layer input (N, C, H, W); relevance: (N, O, h, w); returns (N, C, H, W).

    The positive part ``P`` and the negative part ``N`` of the relevance are each redistributed with
    a per-sample *virtual kernel* ``G± = wgrad(a⁺, R±)`` by the z-rule ``a⁺ ⊙ convᵀ(R± ⊘ conv(a⁺, G±), G±)``.
    With ``sectional`` the signed difference is doubled and ``Σ_s R`` subtracted evenly over the
    support (so ``Σ_s R_in = Σ_s R``); without it (the authors' 1×1 branch) the plain difference is
    returned.  The support is either structural (``a > 0`` and an output with ``R ≠ 0`` in the
    receptive field) or, as in the authors' code, the non-zero entries of the difference.
    """
    n = a.shape[0]
    x = a.clamp(min=0)
    pos, neg = positive_negative(relevance)
    x2 = x.repeat(2, 1, 1, 1)
    r2 = torch.cat((pos, neg))
    kernels = geometry.wgrad_per_sample(x2, r2, kernel_shape)
    shares = safe_divide(r2, geometry.conv_per_sample(x2, kernels))
    c2 = x2 * geometry.conv_t_per_sample(shares, kernels, x2.shape)
    c = c2[:n] - c2[n:]
    if not sectional:
        return c
    if structural_support:
        support = (a > 0) & geometry.reach(relevance != 0, a.shape, kernel_shape)
    else:
        support = c != 0
    return shift(2 * c, sample_sum(relevance), support)

