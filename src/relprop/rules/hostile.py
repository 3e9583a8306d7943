"""RSP's hostile-factor seed: the target's channel contribution map contrasted against competing classes
(docs/methods.md, "RSP: hostile seed and purging")."""

from __future__ import annotations

import torch
from torch import Tensor

from .common import by_max_abs, safe_divide, sample_sum


def hostile_seed(target: Tensor, competitors: Tensor, weights: Tensor) -> Tensor:
    """The hostile seed from channel contribution maps.

    target: (N, C, h, w) map of each sample's target class; competitors: (N, K, C, h, w) maps of K
    competing classes; weights: (N, K), 1 for a competing class and 0 for padding (samples may have
    fewer competitors).  Returns (N, C, h, w): the same spatial map in every channel, positive mass
    2/C per channel and negative mass 1/C per channel (0 where a part is empty).

    Each map is divided by its largest magnitude; ``D = M_target − mean of the competitors' M``
    (0 for a sample without competitors); ``D`` is rescaled to positive and negative mass 1, summed
    over channels, rescaled to positive mass 2 and negative mass 1, and spread evenly over channels.
    """
    n, k = competitors.shape[:2]
    normalised = by_max_abs(competitors.reshape(n * k, *competitors.shape[2:])).view_as(competitors)
    w = weights.to(target.dtype)
    mean = safe_divide((normalised * w.view(n, k, 1, 1, 1)).sum(dim=1), w.sum(dim=1).view(n, 1, 1, 1))
    contrast = by_max_abs(target) - mean
    # Σ_c of D's unit-mass parts, taken as the difference of the parts' two spatial distributions (each
    # normalised by the sum of its own channel sums, so that a single position gives exactly 1 − 1 = 0)
    spatial = _spatial_share(contrast.clamp(min=0)) - _spatial_share(torch.clamp(-contrast, min=0))
    seed = unit_parts(spatial, 2.0, 1.0)
    return (seed / target.shape[1]).expand_as(target).contiguous()


def unit_parts(t: Tensor, positive_mass: float, negative_mass: float) -> Tensor:
    """``positive_mass · t⁺ ⊘ Σ_s t⁺ − negative_mass · t⁻ ⊘ Σ_s t⁻`` per sample (an empty part stays 0):
    (N, ...) -> same."""
    positive = t.clamp(min=0)
    negative = torch.clamp(-t, min=0)
    return safe_divide(positive, sample_sum(positive)).mul_(positive_mass) - safe_divide(
        negative, sample_sum(negative)
    ).mul_(negative_mass)


def _spatial_share(part: Tensor) -> Tensor:
    """How a non-negative map's mass is spread over positions: (N, C, h, w) -> (N, 1, h, w), summing to 1
    (0 for an empty map)."""
    by_position = part.sum(dim=1, keepdim=True)
    return safe_divide(by_position, sample_sum(by_position))
