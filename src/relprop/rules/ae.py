"""Attribution Equilibrium: the hidden-convolution rule (docs/methods.md, "AE: hidden convolutions")."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .common import activity, in_chunks, safe_divide, safe_divide_, sample_sum, shift_
from .conv_ops import ConvGeometry


def ae_conv(
    a: Tensor, relevance: Tensor, weight: Tensor, geometry: ConvGeometry, ratio: float,
    *, sectional: bool = True, structural_support: bool = True, keep_mass: bool = True,
    padding: Optional[Tensor] = None,
) -> Tensor:
    """AE rule for a hidden convolution with kernel ``K = |W|``.

    a: layer input (N, C, H, W); relevance: (N, O, h, w); weight: (O, C/g, kh, kw); returns (N, C, H, W);
    padding: None or bool (1, C, H, W): entries of ``a`` that are zero padding added by a pad op before
    the convolution (e.g. TF "SAME" padding), treated like the convolution's own padding: no input
    unit, neither active nor inactive (counted as inactive they would absorb a share of ``B`` that the
    crop of the pad then drops, more of it on the side with more padding).

    ``P̂``, ``N̂`` are the positive and negative parts of the relevance, each scaled to unit mass per
    sample.  ``C = Z(a⁺, K, r·P̂) − Z(a⁺, K, N̂)`` shares both through the same ``|w|·a⁺``
    proportions; with ``sectional`` it is re-centred by ``Σ_s P̂`` (the authors' 1×1 branch uses
    ``r = 1`` and no shift).  ``A`` spreads ``P̂`` over the active inputs (weights ``m``, the activity of ``a``) and
    ``B`` spreads ``−N̂`` over the inactive ones (weights ``1 − m``), both in proportion to ``|w|``.  The result sums to ``r − 2``
    (sectional) or 0 per sample before ``keep_mass``.  With ``keep_mass`` it is
    rescaled so that its mass ``(Σ_s R⁺ + Σ_s R⁻) / 2`` equals the incoming mass: shares split
    upstream (residual adds, concatenations) survive the renormalisation, and the scale neither
    grows nor shrinks with depth.
    """
    kernel = weight.abs()
    r = ratio if sectional else 1.0
    per_sample = 4 * (a[0].numel() + relevance[0].numel())
    return in_chunks(
        lambda a, relevance: _ae_conv(a, relevance, kernel, geometry, r, sectional, structural_support, keep_mass, padding),
        (a, relevance), per_sample,
    )


def _ae_conv(
    a: Tensor, relevance: Tensor, kernel: Tensor, geometry: ConvGeometry, r: float,
    sectional: bool, structural_support: bool, keep_mass: bool, padding: Optional[Tensor],
) -> Tensor:
    """:func:`ae_conv` on one chunk of the batch, with ``K = |W|`` and the effective ratio ``r``.

    ``m`` is the activity of the inputs: :func:`~relprop.rules.common.activity` with the structural
    support, the indicator ``1[a > 0]`` otherwise (the authors' code).
    """
    pos = relevance.clamp(min=0)
    neg = pos - relevance  # max(−R, 0), exactly
    pos_sum, neg_sum = sample_sum(pos), sample_sum(neg)
    pos_hat, neg_hat = pos.mul_(_reciprocal(pos_sum)), neg.mul_(_reciprocal(neg_sum))
    m = activity(a) if structural_support else (a > 0).to(a.dtype)

    def adjoint(numerator: Tensor, denominator: Tensor) -> Tensor:
        """``convᵀ(numerator ⊘ denominator, K)``, overwriting ``numerator``: (N, O, h, w) -> a's shape."""
        return geometry.conv_t(safe_divide_(numerator, denominator), kernel, a.shape)

    x = a.clamp(min=0)
    result = x.mul_(adjoint((pos_hat * r).sub_(neg_hat), geometry.conv(x, kernel)))  # C = x ⊙ convᵀ(...)
    if sectional:
        if structural_support:
            support = m * geometry.reach(relevance != 0, a.shape, kernel.shape)
        else:
            support = result != 0
        shift_(result, pos_sum * _reciprocal(pos_sum), support)
    inactive = 1 - m if padding is None else (1 - m).masked_fill_(padding, 0)
    # conv(1 − m, K) directly, not conv(1, K) − conv(m, K): where few inputs of a window are inactive that
    # difference keeps few correct float32 digits, and B divides by it exactly there.
    on_active, on_inactive = geometry.conv(m, kernel), geometry.conv(inactive, kernel)
    result.addcmul_(m, adjoint(pos_hat, on_active))
    result.addcmul_(inactive, adjoint(neg_hat, on_inactive), value=-1)
    if keep_mass:
        mass_in = (pos_sum + neg_sum) / 2
        mass_out = sample_sum(result.abs()) / 2  # a pairwise sum: linalg.vector_norm loses float32 digits
        result.mul_(safe_divide(mass_in, mass_out))
    return result


def _reciprocal(t: Tensor) -> Tensor:
    """``1 / t`` where ``t ≠ 0``, else 0."""
    return safe_divide(torch.ones((), dtype=t.dtype, device=t.device), t)
