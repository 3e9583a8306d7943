"""Layer-wise relevance propagation rules (Bach et al. 2015; Montavon et al. 2019) for linear layers.

Every rule is an instance of one generic rule.  A layer computes ``z_j = Σ_i a_i w_ij + b_j``; a
rule replaces it by a sum of *terms* ``(x, K)`` — a modified input and a modified kernel — plus a
modified bias, and redistributes each output's relevance in proportion to the terms::

    z̃ = Σ_terms lin(x, K) + b̃            R_in = Σ_terms x ⊙ linᵀ(R ⊘ stab(z̃, ε), K)

``lin`` is the layer without bias (a convolution or a dense map, see :class:`LinearMap`), ``linᵀ``
its adjoint and ``stab(z, ε) = z + ε·sign(z)`` with ``sign(0) = 1``; an output whose stabilised
denominator is exactly 0 passes nothing.  Signed inputs are handled by splitting contributions by
their sign: ``(a w)⁺ = a⁺w⁺ + a⁻w⁻`` and ``(a w)⁻ = a⁺w⁻ + a⁻w⁺`` (``a⁻ = min(a, 0)``), which for
``a ≥ 0`` (after a ReLU) is the textbook ``a w⁺`` / ``a w⁻``.

All tensors are batched (dimension 0 is the sample); nothing is shared across the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .common import safe_divide
from .conv_ops import ConvGeometry
from .fields import empty_field_shares

Terms = Sequence[tuple[Tensor, Tensor]]
LayerRule = Callable[[Tensor, Tensor, Tensor, Optional[Tensor], "LinearMap"], Tensor]
"""``rule(a, relevance, weight, bias, layer) -> R_in``: a rule with its hyper-parameters bound."""


@dataclass(frozen=True)
class LinearMap:
    """A bias-free linear layer seen by the rules.

    ``apply(x, K)``: input-shaped x kernel -> output-shaped; ``adjoint(y, K)``: output-shaped ->
    input-shaped (the transpose of ``apply`` w.r.t. its input).
    """

    apply: Callable[[Tensor, Tensor], Tensor]
    adjoint: Callable[[Tensor, Tensor], Tensor]


def conv_map(geometry: ConvGeometry, input_shape: torch.Size) -> LinearMap:
    """A convolution (N, C, H, W) -> (N, O, h, w) with kernels (O, C/g, kh, kw)."""
    return LinearMap(geometry.conv, lambda y, kernel: geometry.conv_t(y, kernel, input_shape))


def dense_map() -> LinearMap:
    """A dense layer (N, in) -> (N, out) with kernels (out, in), as ``nn.Linear``."""
    return LinearMap(lambda x, kernel: F.linear(x, kernel), lambda y, kernel: y @ kernel)


def stabilise(z: Tensor, epsilon: float) -> Tensor:
    """``z + ε·sign(z)`` with ``sign(0) = +1``: moves every denominator away from 0 by ``ε``."""
    if epsilon == 0:
        return z
    return z + epsilon * ((z >= 0).to(z.dtype) * 2 - 1)


def _with_bias(z: Tensor, bias: Optional[Tensor]) -> Tensor:
    if bias is None:
        return z
    return z + bias.view(1, -1, *([1] * (z.dim() - 2)))


def generic_rule(
    terms: Terms, bias: Optional[Tensor], relevance: Tensor, layer: LinearMap, epsilon: float
) -> Tensor:
    """``Σ_terms x ⊙ linᵀ(R ⊘ stab(Σ_terms lin(x, K) + b̃, ε), K)`` (see the module docstring).

    terms: pairs (input-shaped x, kernel K); bias: (O,) or None; relevance: output-shaped.
    Conserves ``Σ R`` up to the bias's share and the stabiliser's leak.
    """
    z = _with_bias(sum(layer.apply(x, k) for x, k in terms), bias)  # type: ignore[arg-type]
    s = safe_divide(relevance, stabilise(z, epsilon))
    return sum(x * layer.adjoint(s, k) for x, k in terms)  # type: ignore[return-value]


def sign_terms(a: Tensor, weight: Tensor) -> tuple[list[tuple[Tensor, Tensor]], list[tuple[Tensor, Tensor]]]:
    """Terms of the positive contributions ``(a w)⁺ = a⁺w⁺ + a⁻w⁻`` and of the negative ones ``a⁺w⁻ + a⁻w⁺``.

    The ``a⁻`` terms are left out when ``a ≥ 0`` everywhere (they are zero).
    """
    a_pos, w_pos, w_neg = a.clamp(min=0), weight.clamp(min=0), weight.clamp(max=0)
    if not (a < 0).any():
        return [(a_pos, w_pos)], [(a_pos, w_neg)]
    a_neg = a.clamp(max=0)
    return [(a_pos, w_pos), (a_neg, w_neg)], [(a_pos, w_neg), (a_neg, w_pos)]


def epsilon_rule(
    a: Tensor, relevance: Tensor, weight: Tensor, bias: Optional[Tensor], layer: LinearMap, *, epsilon: float
) -> Tensor:
    """LRP-ε: ``R_i = Σ_j a_i w_ij R_j / stab(z_j, ε)``, ``z_j = Σ_i a_i w_ij + b_j``."""
    return generic_rule([(a, weight)], bias, relevance, layer, epsilon)


def zplus_rule(
    a: Tensor,
    relevance: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    layer: LinearMap,
    *,
    own_sign: bool = False,
) -> Tensor:
    """LRP-z⁺ (deep Taylor): relevance shared by the positive contributions ``(a_i w_ij)⁺``; the bias is ignored.

    Conserves ``Σ R`` at every output with a positive contribution.  With ``own_sign``, an output
    that is negative (``z_j = Σ_i a_i w_ij + b_j < 0``, possible where no ReLU follows) shares its
    relevance by its negative contributions ``(a_i w_ij)⁻`` instead: each output by the
    contributions that made its sign, so on a network without biases ``Σ R`` is conserved at
    every output with ``z_j ≠ 0``.
    """
    positive, negative = sign_terms(a, weight)
    if not own_sign:
        return generic_rule(positive, None, relevance, layer, 0.0)

    def own_sign_rule(rising: bool, r: Tensor) -> Tensor:
        return generic_rule(positive if rising else negative, None, r, layer, 0.0)

    return _by_output_sign(a, relevance, weight, bias, layer, own_sign_rule)


def alpha_beta_rule(
    a: Tensor,
    relevance: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    layer: LinearMap,
    *,
    alpha: float,
    beta: float,
) -> Tensor:
    """LRP-αβ: ``α`` times the share of positive contributions minus ``β`` times the share of negative ones.

    ``R_i = Σ_j (α (a_i w_ij)⁺ / z⁺_j − β (a_i w_ij)⁻ / z⁻_j) R_j`` with ``z^±_j = Σ_i (a_i w_ij)^± + b^±_j``
    (the bias's positive / negative part joins the matching denominator).  An output with no
    contribution of one sign passes nothing through that side.
    """
    positive, negative = sign_terms(a, weight)
    bias_pos = None if bias is None else bias.clamp(min=0)
    pos = generic_rule(positive, bias_pos, relevance, layer, 0.0)
    if beta == 0:
        return alpha * pos
    bias_neg = None if bias is None else bias.clamp(max=0)
    return alpha * pos - beta * generic_rule(negative, bias_neg, relevance, layer, 0.0)


def gamma_rule(
    a: Tensor,
    relevance: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    layer: LinearMap,
    *,
    gamma: float,
    epsilon: float,
) -> Tensor:
    """LRP-γ: the contributions of the output's own sign amplified by ``1 + γ``.

    At an output with ``z_j ≥ 0``: ``z_ij = a_i w_ij + γ (a_i w_ij)⁺`` and bias ``b + γ b⁺`` (for
    ``a ≥ 0``: ``a_i (w_ij + γ w_ij⁺)``, the rule of Montavon et al. 2019); at an output with
    ``z_j < 0`` (no ReLU after it, e.g. a linear bottleneck) the negative contributions are
    amplified instead, so ``|z̃_j| ≥ |z_j|`` always (amplifying the positive ones there would push
    the denominator towards 0).  Denominators are stabilised by ``ε``.
    """
    positive, negative = sign_terms(a, weight)
    bias_pos = bias_neg = None
    if bias is not None:
        bias_pos, bias_neg = bias + gamma * bias.clamp(min=0), bias + gamma * bias.clamp(max=0)

    def amplified_rule(rising: bool, r: Tensor) -> Tensor:
        terms, amplified_bias = (positive, bias_pos) if rising else (negative, bias_neg)
        return generic_rule([(a, weight), *[(x * gamma, k) for x, k in terms]], amplified_bias, r, layer, epsilon)

    return _by_output_sign(a, relevance, weight, bias, layer, amplified_rule)


def layer_norm_rule(
    h: Tensor, relevance: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, dims: int,
) -> Tensor:
    """The LayerNorm rule of Ali et al. (2022): the standard deviation held fixed, ``y = γ ⊙ (h − μ(h)) / σ + β``
    is affine in ``h`` (the centring is linear), and the relevance follows its contributions:

        u = γ / σ ⊙ R ⊘ y,    R_h = h ⊙ (u − mean(u))        (means over the ``dims`` trailing dimensions)

    so ``R_h`` is proportional to ``h`` and ``Σ R_h = Σ R ⊙ (y − β) ⊘ y`` (β keeps its share, as a bias does).
    Where an ε rule above made ``R`` proportional to ``y`` (a classifier's Linear layer), ``R ⊘ y`` is bounded,
    so is ``R_h``, and a layer below dividing by its pre-activations sees no relevance at outputs the
    activation between them switched off.  An entry with ``y = 0`` exactly adds nothing to ``u``.
    h: the LayerNorm's input; relevance: its output's; weight, bias: γ and β of the trailing shape, or None.
    """
    reduced = tuple(range(-dims, 0))
    centred = h - h.mean(dim=reduced, keepdim=True)
    scale = torch.rsqrt(centred.pow(2).mean(dim=reduced, keepdim=True) + eps)
    if weight is not None:
        scale = scale * weight
    y = centred * scale if bias is None else torch.addcmul(bias, centred, scale)
    u = scale * safe_divide(relevance, y)
    return h * (u - u.mean(dim=reduced, keepdim=True))


def unbiased_relevance(relevance: Tensor, bias: Optional[Tensor]) -> Optional[Tensor]:
    """The relevance of the outputs without a bias (``b_j = 0``), zero elsewhere; None when every output has one.
    relevance: (N, O, ...) or (N, O); bias: (O,) or None."""
    if bias is None:
        return relevance
    unbiased = bias == 0
    if not bool(unbiased.any()):
        return None
    return relevance * unbiased.view(1, -1, *([1] * (relevance.dim() - 2)))


def unexplained_shares(
    a: Tensor, relevance: Tensor, weight: Tensor, geometry: Optional[ConvGeometry], padding: Optional[Tensor] = None,
) -> Optional[Tensor]:
    """The relevance of the outputs that no input explains — no non-zero input in the receptive field — shared
    evenly over each one's field (its non-padding inputs), as the flat rule does; None when there is none.

    Such an output has nothing to share by in any rule above, yet it can carry relevance where the op above
    it does not pass relevance in proportion to its value (a LayerNorm passes relevance to an output of
    exactly 0, whose normalised value is not 0).  Give it the :func:`unbiased_relevance`: where the output
    has a bias, the bias explains it and keeps that relevance, as in every LRP rule.

    a: (N, C, H, W) with ``geometry`` (a convolution, kernels ``weight`` (O, C/g, kh, kw)), or (N, in) for a
    dense layer (``geometry`` None); relevance: the output's shape; padding: None or bool (1, C, H, W),
    explicit zero padding in ``a``.  Returns a's shape.
    """
    if geometry is not None:
        return empty_field_shares(a, a.abs(), relevance, geometry, tuple(weight.shape), padding)
    orphaned = relevance.mul((a == 0).all(dim=1, keepdim=True)).sum(dim=1, keepdim=True)  # (N, 1)
    if not orphaned.any():
        return None
    return (orphaned / a.shape[1]).expand_as(a).contiguous()


def _by_output_sign(
    a: Tensor,
    relevance: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    layer: LinearMap,
    rule: Callable[[bool, Tensor], Tensor],
) -> Tensor:
    """``rule(True, R at outputs with z ≥ 0) + rule(False, R at outputs with z < 0)``, ``z = lin(a, W) + b``;
    a sign whose outputs carry no relevance is skipped.  Returns input-shaped relevance."""
    rising = _with_bias(layer.apply(a, weight), bias) >= 0
    result = torch.zeros_like(a)
    for sign, outputs in ((True, rising), (False, ~rising)):
        r = relevance * outputs
        if r.any():
            result = result + rule(sign, r)
    return result


def batchnorm_affine(bn: nn.modules.batchnorm._BatchNorm, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Scale and shift (C,) of an eval-mode BatchNorm as the map ``x ↦ s·x + t``:
    ``s = γ / √(σ² + eps)``, ``t = β − μ·s``."""
    scale = torch.rsqrt(bn.running_var + bn.eps)  # type: ignore[operator]
    shift = -bn.running_mean * scale  # type: ignore[operator]
    if bn.weight is not None:
        scale = scale * bn.weight
        shift = shift * bn.weight
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale.to(dtype), shift.to(dtype)


def fold_batchnorm_before(
    weight: Tensor, bias: Optional[Tensor], bn: nn.modules.batchnorm._BatchNorm
) -> tuple[Tensor, Tensor]:
    """Weight and bias of ``linear(bn(x))`` as one Linear layer (eval-mode statistics).

    weight: (out, in); bias: (out,) or None; ``bn`` normalises the ``in`` features.  Returns
    ``(W·diag(s), b + W·t)`` with ``s``, ``t`` from :func:`batchnorm_affine`: the BatchNorm's shift joins
    the layer's bias.
    """
    scale, shift = batchnorm_affine(bn, weight.dtype)
    folded_bias = weight @ shift
    return weight * scale, folded_bias if bias is None else folded_bias + bias


def fold_batchnorm(weight: Tensor, bias: Optional[Tensor], bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """Kernel and bias of ``bn(layer(x))`` as one layer (eval-mode statistics), for a convolution or a Linear.

    weight: (O, C/g, kh, kw) or (O, in); bias: (O,) or None.  Returns ``(w·s, (b − μ)·s + β)`` with
    ``s = γ / √(σ² + eps)``.
    """
    scale, shift = batchnorm_affine(bn, weight.dtype)
    if bias is not None:
        shift = shift + bias * scale
    return weight * scale.view(-1, *([1] * (weight.dim() - 1))), shift
