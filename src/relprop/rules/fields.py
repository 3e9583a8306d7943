"""Receptive-field fallbacks: where a convolution's output carries relevance that its inputs cannot share by the
rule's own weights, because its receptive field holds no input of the kind the rule shares by."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .common import safe_divide
from .conv_ops import ConvGeometry


def empty_field_shares(
    a: Tensor, x: Tensor, relevance: Tensor, geometry: ConvGeometry, kernel_shape: tuple[int, ...],
    padding: Optional[Tensor] = None,
) -> Tensor | None:
    """The relevance of the outputs whose receptive field holds no positive entry of ``x`` (``a⁺`` for RSP, ``|a|``
    for LRP), shared over that field in proportion to ``|a|``, or evenly over its non-padding inputs where ``a`` is
    0 on the whole field.

    a: layer input (N, C, H, W); x: ``a⁺`` or ``|a|``; relevance: (N, O, h, w); padding: None or bool (1, C, H, W),
    explicit zero padding in ``a`` (no input unit); returns a's shape, or None when every
    output with relevance has a positive input.  The shares do not depend on the output channel, so the
    relevance is summed per group and position and spread with all-ones kernels, one channel per group.
    Where ``a`` has no negative entry (a convolution after a ReLU) an empty field is all zeros, so only
    the even shares occur and the ``|a|`` shares, all exactly 0, are not computed.
    """
    n, c = a.shape[:2]
    o, g = relevance.shape[1], geometry.groups
    ones = torch.ones(g, 1, *kernel_shape[2:], dtype=a.dtype, device=a.device)

    def field_sums(t: Tensor) -> Tensor:
        """Σ of t over each output's receptive field, per group: (M, C, H, W) -> (M, g, h, w)."""
        per_group = t if c == g else t.reshape(t.shape[0], g, c // g, *t.shape[2:]).sum(dim=2)
        return geometry.conv(per_group, ones)

    def spread(per_field: Tensor) -> Tensor:
        """Each field's value added to every input of the field: (N, g, h, w) -> (N, C, H, W)."""
        back = geometry.conv_t(per_field, ones, torch.Size((n, g, *a.shape[2:])))
        return back if c == g else back.repeat_interleave(c // g, dim=1)

    empty = ~geometry.fields_with_positive(x, kernel_shape[2:])  # (N, g, h, w)
    if not empty.any():  # the common case: no need to look at the relevance
        return None
    grouped = relevance.reshape(n, g, o // g, *relevance.shape[2:])
    orphaned = grouped.sum(dim=2).mul_(empty)  # (N, g, h, w)
    if not orphaned.any():
        return None
    shares, flat = None, orphaned  # without a negative entry in a, every empty field is all zeros: flat
    if bool(a.amin() < 0):
        weight = a.abs()
        total = field_sums(weight)
        shares = weight.mul_(spread(safe_divide(orphaned, total)))
        flat = orphaned.mul_(total == 0)
        if not flat.any():
            return shares
    units = None if padding is None else (~padding).to(a.dtype)  # (1, C, H, W)
    counts = field_sums(torch.ones_like(a[:1]) if units is None else units)  # (1, g, h, w): one map serves every sample
    even = spread(safe_divide(flat, counts))
    if units is not None:
        even.mul_(units)
    return even if shares is None else shares.add_(even)
