"""Relative Sectional Propagation: the hidden-convolution rule (docs/methods.md, "RSP: hidden convolutions")."""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch
from torch import Tensor

from .common import activity, in_chunks, power_of_two_scale, safe_divide, safe_divide_, sample_sum, shift_
from .conv_ops import ConvGeometry
from .fields import empty_field_shares


def rsp_conv(
    a: Tensor, relevance: Tensor, geometry: ConvGeometry, kernel_shape: tuple[int, ...],
    *, sectional: bool = True, structural_support: bool = True, empty_fields: bool = True,
    padding: Optional[Tensor] = None,
) -> Tensor:
    """RSP rule for a hidden convolution; the layer's own weights are not used.

    a: layer input (N, C, H, W); relevance: (N, O, h, w); returns (N, C, H, W).

    The positive part ``P`` and the negative part ``N`` of the relevance are each redistributed with
    a per-sample *virtual kernel* ``G± = wgrad(a⁺, R±)`` by the z-rule ``a⁺ ⊙ convᵀ(R± ⊘ conv(a⁺, G±), G±)``.
    With ``sectional`` the signed difference is doubled and ``Σ_s R`` subtracted evenly over the
    support (so ``Σ_s R_in = Σ_s R``); without it (the authors' 1×1 branch) the plain difference is
    returned.  The support is either structural (the :func:`~relprop.rules.common.activity` of ``a``,
    on inputs with an output with ``R ≠ 0`` in the receptive field) or, as in the authors' code, the
    non-zero entries of the difference.

    With ``empty_fields``, an output with ``R ≠ 0`` whose receptive field holds no positive input (a
    convolution reading a signed map, as in linear bottlenecks) has nothing to share its relevance by;
    it goes to its field in proportion to ``|a|`` instead (evenly over the field's non-padding inputs
    where ``a`` is 0 there), see :func:`~relprop.rules.fields.empty_field_shares`; ``padding``: None or bool (1, C, H, W), the
    entries of ``a`` that are explicit zero padding (a pad op before the convolution), which take no share.  Without it (the authors' code) that
    relevance is dropped, and the re-centring, which takes the full ``Σ_s R``, doubles the loss.

    The rule does not change when a sample's ``a`` is scaled and scales with its relevance, so where a
    largest magnitude lies outside 2^±16 (:data:`SAFE_SCALE`) both are first brought into [0.5, 1) by a
    power of two (exact in floating point: the result is bit-identical wherever nothing under- or
    overflows).  Without it, activations of 1e-15 (a
    random EfficientNet-B6 at 64 px) make ``conv(a⁺, G±) ~ a²·R`` subnormal and the quotient infinite.
    """
    a_scale, r_scale = power_of_two_scale(a), power_of_two_scale(relevance)
    scaled = not _in_safe_range(a_scale, r_scale)  # otherwise the same numbers either way: no copies
    if scaled:
        a, relevance = a * a_scale, relevance * r_scale
    x = a.clamp(min=0)
    both = _split_by_sign(relevance, geometry.groups)
    o, positions, d = relevance.shape[1], relevance[0, 0].numel(), kernel_shape[1] * kernel_shape[2] * kernel_shape[3]
    strategy = _strategy(a.device, geometry.groups, o, positions, d, geometry.is_pointwise(kernel_shape[2:]))
    if strategy == "virtual kernels":
        per_sample = 4 * o * (positions + d) + 2 * x[0].numel()
        contrast = partial(_contrast_by_virtual_kernels, geometry=geometry, kernel_shape=kernel_shape)
    else:
        fields = positions * positions if strategy == "gram" else o * d
        per_sample = 2 * fields + 2 * d * positions + 4 * o * positions + x[0].numel()
        contrast = partial(_contrast_unfolded, geometry=geometry, kernel_size=kernel_shape[2:], gram=strategy == "gram")
    c = in_chunks(contrast, (x, both), per_sample)
    if empty_fields:
        shares = empty_field_shares(a, x, relevance, geometry, kernel_shape, padding)
        if shares is not None:
            c.add_(shares)
    if not sectional:
        return c.div_(r_scale) if scaled else c
    if structural_support:
        reach = geometry.reach(relevance != 0, a.shape, kernel_shape)
        support = activity(a).mul_(reach)
        if empty_fields:  # a sample without an active input in reach is re-centred over the reach
            covered = sample_sum(support) > 0
            if not bool(covered.all()):  # rare: no pass over the map otherwise
                support = torch.where(covered, support, reach.to(support.dtype))
    else:
        support = c != 0
    result = shift_(c.mul_(2), sample_sum(relevance), support)
    return result.div_(r_scale) if scaled else result


SAFE_SCALE = 2.0**16
"""Maxima of ``a`` and ``R`` within a factor 2¹⁶ of 1 keep ``conv(a⁺, G±) ~ a²·R`` far from float32's
under- and overflow, so the rule runs on them unscaled."""


def _in_safe_range(*scales: Tensor) -> bool:
    return all(bool(((s >= 1 / SAFE_SCALE) & (s <= SAFE_SCALE)).all()) for s in scales)


def purge(relevance: Tensor) -> Tensor:
    """Keep, per sample and position, only the part of the relevance whose sign agrees with the channel sum
    ``s = Σ_c R`` there: ``1[s > 0]·P − 1[s ≤ 0]·N``.  (N, C, h, w) -> same."""
    s = relevance.sum(dim=1, keepdim=True)
    return torch.where(s > 0, relevance.clamp(min=0), relevance.clamp(max=0))


def _split_by_sign(relevance: Tensor, groups: int) -> Tensor:
    """``P`` and ``N`` side by side as 2·O channels, ordered (g, {P, N}, O/g) so that each of the
    layer's groups keeps its own channels: (N, O, h, w) -> (N, 2·O, h, w)."""
    n, o = relevance.shape[:2]
    grouped = relevance.reshape(n, groups, o // groups, *relevance.shape[2:])
    both = relevance.new_empty(n, groups, 2, o // groups, *relevance.shape[2:])
    positive = torch.clamp(grouped, min=0, out=both[:, :, 0])
    torch.sub(positive, grouped, out=both[:, :, 1])  # max(−R, 0), exactly
    return both.reshape(n, 2 * o, *relevance.shape[2:])


def _negate_negative_part(shares: Tensor, groups: int) -> Tensor:
    """Flip the sign of the ``N`` channels of a :func:`_split_by_sign` layout, in place: (N, 2·O, ...)."""
    n, o2 = shares.shape[:2]
    shares.view(n, groups, 2, o2 // (2 * groups), -1)[:, :, 1].neg_()
    return shares


def _strategy(device: torch.device, groups: int, o: int, positions: int, d: int, pointwise: bool) -> str:
    """How to compute ``C⁺ − C⁻`` for O output channels, L = ``positions`` and D = C·kh·kw inputs per
    receptive field; all three give the same numbers (benchmarks/rsp_strategies.py times them).

    * ``"gram"`` (ungrouped only) where it needs fewer multiply-adds (``2·L²·D + 4·O·L²``) than the
      virtual kernels (``6·O·L·D``): the deep layers, whose maps are small next to their channels.  On
      CUDA a kernel larger than 1×1 needs half the cost: the margin was measured on an H200 when
      cuDNN ran the per-sample convolutions in TF32; relprop now runs them in full float32 unless
      ``allow_tf32=True``, and the margin has not been re-measured since;
    * ``"unfolded"`` (ungrouped 1×1 kernels without padding, whose fields are a view of the input):
      the virtual kernels as batched matrix products;
    * ``"virtual kernels"``: per-sample (grouped) convolutions.
    """
    if groups == 1:
        gram_cost, kernel_cost = positions * positions * (2 * d + 4 * o), 6 * o * positions * d
        margin = 2 if device.type == "cuda" and not pointwise else 1
        if margin * gram_cost < kernel_cost:
            return "gram"
        if pointwise:
            return "unfolded"
    return "virtual kernels"


def _contrast_by_virtual_kernels(x: Tensor, both: Tensor, geometry: ConvGeometry, kernel_shape: tuple[int, ...]) -> Tensor:
    """``C⁺ − C⁻`` through per-sample convolutions with the kernels ``G± = wgrad(x, P/N)``.

    x: (N, C, H, W) non-negative; both: (N, 2·O, h, w) from :func:`_split_by_sign`, overwritten;
    returns x's shape.  One per-sample kernel of 2·O outputs serves both parts; the adjoint with the
    N shares negated yields the difference at once.
    """
    o2 = both.shape[1]
    kernels = geometry.wgrad_per_sample(x, both, (o2, *kernel_shape[1:]))
    shares = _negate_negative_part(safe_divide_(both, geometry.conv_per_sample(x, kernels)), geometry.groups)
    return geometry.conv_t_per_sample(shares, kernels, x.shape).mul_(x)


def _contrast_unfolded(x: Tensor, both: Tensor, geometry: ConvGeometry, kernel_size: tuple[int, ...], gram: bool) -> Tensor:
    """``C⁺ − C⁻`` with the receptive fields of x as columns ``X`` (D × L), ungrouped convolutions only.

    With the relevance as rows ``R`` (2·O × L) the virtual kernels are ``G = R·Xᵀ``, their outputs
    ``Z = G·X`` and the adjoint ``Gᵀ·S``.  With ``gram`` the same numbers come from the Gram matrix of the
    fields, ``Z = R·(XᵀX)`` and ``Gᵀ·S = X·(Rᵀ·S)``, without ever forming G: quadratic in L instead of
    linear in O·D.  x: (N, C, H, W) non-negative; both: (N, 2·O, h, w) from :func:`_split_by_sign`,
    overwritten; returns x's shape.
    """
    n, o2 = both.shape[:2]
    rows = both.reshape(n, o2, -1)
    columns = geometry.unfold(x, kernel_size)
    if gram:
        shares = _negate_negative_part(safe_divide(rows, rows @ (columns.transpose(1, 2) @ columns)), 1)  # rows used below
        back = columns @ (rows.transpose(1, 2) @ shares)
    else:
        kernels = rows @ columns.transpose(1, 2)
        shares = _negate_negative_part(safe_divide_(rows, kernels @ columns), 1)
        back = kernels.transpose(1, 2) @ shares
    return geometry.fold(back, x.shape, kernel_size).mul_(x)
