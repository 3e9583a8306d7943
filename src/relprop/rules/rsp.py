"""Relative Sectional Propagation: the hidden-convolution rule (algorithms.md §4.1-4.2)."""

from __future__ import annotations

import torch
from torch import Tensor

from .common import safe_divide, sample_sum, shift
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
    x = a.clamp(min=0)
    # P and N side by side as 2·O output channels, grouped so that each of the layer's groups
    # keeps its own channels: (N, g, {P, N}, O/g, h, w).  One per-sample kernel of 2·O outputs
    # then serves both parts, and the adjoint with the N shares negated yields C⁺ − C⁻ at once.
    n, o = relevance.shape[:2]
    g = geometry.groups
    grouped = relevance.reshape(n, g, 1, o // g, *relevance.shape[2:])
    both = torch.cat((grouped.clamp(min=0), (-grouped).clamp(min=0)), dim=2).reshape(n, 2 * o, *relevance.shape[2:])
    kernels = geometry.wgrad_per_sample(x, both, (2 * o, *kernel_shape[1:]))
    shares = safe_divide(both, geometry.conv_per_sample(x, kernels)).reshape(grouped.shape[:2] + (2,) + grouped.shape[3:])
    shares[:, :, 1].neg_()
    c = x * geometry.conv_t_per_sample(shares.reshape(both.shape), kernels, x.shape)
    if not sectional:
        return c
    if structural_support:
        support = (a > 0) & geometry.reach(relevance != 0, a.shape, kernel_shape)
    else:
        support = c != 0
    return shift(2 * c, sample_sum(relevance), support)

