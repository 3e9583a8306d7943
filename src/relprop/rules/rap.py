"""Relative Attributing Propagation rules (Nam et al., AAAI 2020; docs/methods.md, "RAP").

Notation: ``a⁺ = max(a, 0)``, ``W⁺ = max(W, 0)`` (activating weights), ``W⁻ = max(−W, 0)``
(inhibiting weights, as magnitudes), ``Z(x, K, S) = x ⊙ linᵀ(S ⊘ lin(x, K), K)`` the z-rule.
All tensors are batched (dimension 0 is the sample) and every sum is per sample.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from .common import activity, safe_divide, sample_total, shift_
from .lrp import LinearMap, generic_rule


def rap_balance(c: Tensor) -> Tensor:
    """RAP's seed: the target logit's input contributions balanced, positive and negative mass 1 each.

    c: (N, ...) contributions ``c = a ⊙ ∂y_t/∂a`` at the input of the layer producing the logits (for
    a Linear layer ``c_i = a_i w_ti``; each belongs to one of the sign classes ``a⁺w⁺, a⁺w⁻, a⁻w⁺,
    a⁻w⁻``).  Returns ``c⁺/Σc⁺ − c⁻/Σc⁻`` per sample (Σ = 0, or ±1 if one sign is absent).

    The bias is left out.  Shared over the contributions in proportion to them (signed or by
    magnitude), it scales all positive and all negative contributions by one factor each — which the
    balancing undoes — unless it outweighs them (``|b| > Σ|c|``), where it would flip a whole sign
    class and erase the positive / negative distinction RAP is about.

    The masses and quotients are computed in float64 and only the result is rounded to ``c``'s dtype,
    so that the seed's total stays 0 to within the rounding of its entries: RAP's maps depend strongly
    on that total (on untrained networks a float32 total off by 1e-7 of the mass moved the map of VGG-16
    by 1e-3 of its maximum).
    """
    pos, neg = c.clamp(min=0).double(), (-c).clamp(min=0).double()
    return (safe_divide(pos, sample_total(pos)) - safe_divide(neg, sample_total(neg))).to(c.dtype)


def rap_hidden(a: Tensor, relevance: Tensor, weight: Tensor, layer: LinearMap, total: Optional[Tensor] = None) -> Tensor:
    """RAP at a hidden convolution or dense layer: sign-aware shares with the real weights, re-centred.

    With ``Z₁ = lin(a⁺, W⁺)``, ``Z₂ = lin(a⁺, W⁻)`` and the inhibition share ``q = Z₂ ⊘ (Z₁ + Z₂)``::

        C    = Z(a⁺, W⁺, R⁺) + Z(a⁺, W⁻, q·R⁺ + (1 + q)·R⁻)          R⁺ = max(R, 0), R⁻ = min(R, 0)
        R_in = C − (Σ C − Σ R) spread evenly over the support

    i.e. positive relevance goes fully through the activators and a ``q`` share of it also through
    the inhibitors; negative relevance goes through the inhibitors, plus its ``q`` share.  The
    support is structural: inputs connected by a non-zero weight to an output with
    ``R ≠ 0``, weighted by their :func:`~relprop.rules.common.activity` (it does not move with float
    rounding), so ``Σ R_in = Σ R`` whenever it is not empty.

    a: layer input; relevance: output-shaped; weight: the layer's kernel; layer: the linear map;
    total: (N,) float64, the ``Σ R`` to re-centre to (default: ``relevance``'s sum, in float64).  The
    walk passes the total it carries from the seed (:attr:`relprop.engine.Step.total`), which is exact
    where a sum of the rounded ``relevance`` is not.
    """
    a_pos = a.clamp(min=0)
    w_act, w_inh = weight.clamp(min=0), (-weight).clamp(min=0)
    z_act, z_inh = layer.apply(a_pos, w_act), layer.apply(a_pos, w_inh)
    q = safe_divide(z_inh, z_act + z_inh)
    r_pos, r_neg = relevance.clamp(min=0), relevance.clamp(max=0)
    c = generic_rule([(a_pos, w_act)], None, r_pos, layer, 0.0) + generic_rule(
        [(a_pos, w_inh)], None, q * r_pos + (1 + q) * r_neg, layer, 0.0
    )
    connected = layer.adjoint((relevance != 0).to(a.dtype), (weight != 0).to(a.dtype)) > 0
    target = sample_total(relevance) if total is None else total.view(-1, *[1] * (c.dim() - 1))
    return shift_(c, (sample_total(c) - target).to(c.dtype), activity(a) * connected)

