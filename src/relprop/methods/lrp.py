"""Layer-wise relevance propagation (LRP) baselines on the relevance engine.

The walk starts at the logits with ``R₀ = onehot(target) · logit`` and goes through the Linear
layers, pooling, flattening and the convolution stack down to the input.  Linear layers and
convolutions use the rules of :mod:`relprop.rules.lrp`; everything else is the engine's:

* a BatchNorm that is the only reader of a convolution's output is folded into that convolution
  (canonisation: the rule sees the kernel and bias of ``bn(conv(x))``, and relevance passes the
  BatchNorm unchanged) — this is exact LRP on the folded network;
* a BatchNorm that cannot be folded (DenseNet's BatchNorm after a concatenation) passes relevance
  unchanged (identity): relevance is conserved through it and its shift absorbs nothing — unlike
  an ε rule on the affine map ``s·x + t``, which would give ``s·x / (s·x + t)`` of it to ``x``
  (the rest to ``t``) and grow without bound where ``s·x + t ≈ 0``;
* residual adds split relevance by magnitude, ``|a|`` against ``|b|``: shares in [0, 1], conserving, never
  exploding when ``a ≈ −b`` (the proportional ``a / (a + b)`` split of textbook LRP does);
* max pooling sends a window's relevance to its arg-max, average pooling shares it in proportion
  to ``a⁺``, activations and dropout pass it unchanged.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch.nn as nn
from torch import Tensor

from ..arguments import number
from ..engine import (
    CONV, INPUT_CONV, LINEAR, NORM, STANDARD_TABLE, Bounds, LogitSeed, Needs, Op, PassThrough, Rule, Step, ZBox,
)
from ..registry import register
from ..rules.lrp import (
    LayerRule, LinearMap, alpha_beta_rule, conv_map, dense_map, epsilon_rule, gamma_rule, layer_norm_rule,
    unbiased_relevance, unexplained_shares, zplus_rule,
)
from .propagation import PropagationMethod


def linear_parameters(op: Op, a: Tensor) -> tuple[Tensor, Optional[Tensor], LinearMap]:
    """Kernel, bias and linear map of a Linear layer or a convolution (seen with a BatchNorm that only
    reads it folded in), for the input ``a``."""
    if op.conv is not None:
        weight, bias = op.conv.parameters(fold_batchnorm=True)
        return weight, bias, conv_map(op.conv.geometry, a.shape)
    weight, bias = op.linear.parameters(fold_batchnorm=True)  # type: ignore[union-attr]
    return weight, bias, dense_map()


class LRPRule(Rule):
    """An LRP rule ``rule(a, relevance, weight, bias, layer)`` at a Linear layer or a convolution; the relevance
    of an output that nothing in the layer explains (no bias, no non-zero input in its receptive field) is
    shared evenly over that field (:func:`relprop.rules.lrp.unexplained_shares`)."""

    def __init__(self, rule: LayerRule) -> None:
        self.rule = rule

    def needs(self, op: Op) -> Needs:
        return Needs(op.inputs[:1], op.pads_before)

    def __call__(self, step: Step) -> Sequence[Tensor | None]:
        a = step.input()
        weight, bias, layer = linear_parameters(step.op, a)
        result = self.rule(a, step.relevance, weight, bias, layer)
        unbiased = unbiased_relevance(step.relevance, bias)
        if unbiased is None:
            return [result]
        geometry = step.op.conv.geometry if step.op.conv is not None else None
        unexplained = unexplained_shares(a, unbiased, weight, geometry, step.explicit_padding())
        return [result if unexplained is None else result + unexplained]


class LayerNormRule(Rule):
    """:func:`relprop.rules.lrp.layer_norm_rule` at a LayerNorm over feature vectors (a classifier head's
    ``Linear → activation → LayerNorm → Linear``); a LayerNorm over the channels of a map (channels-last, or
    timm's ``LayerNorm2d``) and the other normalisations pass relevance unchanged (docs/methods.md, "Other layer types")."""

    def needs(self, op: Op) -> Needs:
        return Needs(op.inputs[:1] if _takes_layer_norm_rule(op) else ())

    def __call__(self, step: Step) -> Sequence[Tensor | None]:
        spec = step.op.layer_norm
        if spec is None or not _takes_layer_norm_rule(step.op):
            return _PASS_THROUGH(step)
        return [layer_norm_rule(step.input(), step.relevance, spec.weight(), spec.bias(), spec.eps, len(spec.shape))]


_PASS_THROUGH = PassThrough()


def _takes_layer_norm_rule(op: Op) -> bool:
    """A LayerNorm whose input is not a channels-last map (in a classifier head: a feature vector (N, features))."""
    return op.layer_norm is not None and not op.channels_last


OVERFLOW = "Explain in float64 (model.double(), x.double())."


class LRP(PropagationMethod):
    """Layer-wise relevance propagation with one rule per layer type (a composite).

    Seed: ``R₀ = onehot(target) · logit`` at the logits.  Every rule is a function
    ``rule(a, relevance, weight, bias, layer)`` of :mod:`relprop.rules.lrp` with its hyper-parameters
    bound, e.g. "ε + γ + z^B"::

        from functools import partial
        from relprop.rules.lrp import epsilon_rule, gamma_rule
        LRP(model, partial(epsilon_rule, epsilon=0.25), partial(gamma_rule, gamma=0.25, epsilon=1e-6))

    Args:
        model: a CNN classifier returning (N, classes) logits; it is never modified.
        linear_rule: rule of the ``nn.Linear`` layers.
        conv_rule: rule of the convolutions that do not read the image.
        input_rule: rule of the convolution that reads the image; ``None``: the z^B rule with
            ``input_bounds``.
        input_bounds: ``(low, high)`` for z^B (floats or per-channel tensors); default: each
            sample's minimum and maximum over all channels and pixels.
        allow_tf32: let CUDA run convolutions and matrix products in TF32 (default False).
    """

    name = "LRP"

    def __init__(
        self,
        model: nn.Module,
        linear_rule: LayerRule,
        conv_rule: LayerRule,
        input_rule: Optional[LayerRule] = None,
        input_bounds: Bounds = None,
        allow_tf32: bool = False,
    ) -> None:
        self.linear_rule, self.conv_rule, self.input_rule = linear_rule, conv_rule, input_rule
        table = STANDARD_TABLE.override({
            LINEAR: LRPRule(linear_rule),
            CONV: LRPRule(conv_rule),
            INPUT_CONV: ZBox(input_bounds) if input_rule is None else LRPRule(input_rule),
            NORM: LayerNormRule(),
        })
        super().__init__(model, LogitSeed(times_logit=True), table, failure_hint=OVERFLOW, allow_tf32=allow_tf32)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__})"


@register("lrp_epsilon")
class LRPEpsilon(LRP):
    """LRP-ε at every layer, the image layer included (Bach et al. 2015).

    ``R_i = Σ_j a_i w_ij R_j / (z_j + ε·sign(z_j))`` with ``z_j`` the layer's output (bias included);
    a larger ``ε`` absorbs more of the weak, contradictory contributions.  On a network without
    biases, ``Σ R_input`` equals the target logit up to the leak through ``ε``.

    Args:
        model: a CNN classifier returning (N, classes) logits; it is never modified.
        epsilon: the stabiliser ``ε >= 0`` (default ``1e-6``; Captum's default is ``1e-9``).
    """

    name = "LRP-ε"

    def __init__(self, model: nn.Module, epsilon: float = 1e-6, allow_tf32: bool = False) -> None:
        self.epsilon = number("epsilon", epsilon)
        rule = functools.partial(epsilon_rule, epsilon=self.epsilon)
        super().__init__(model, rule, rule, rule, allow_tf32=allow_tf32)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__}, epsilon={self.epsilon})"


@register("lrp_zplus")
class LRPZPlus(LRP):
    """LRP-z⁺ at every layer (deep Taylor decomposition, Montavon et al. 2017).

    Each output's relevance is shared by the positive contributions ``(a_i w_ij)⁺``; biases are
    ignored, so ``Σ R`` is conserved at every layer (at outputs with a positive contribution).
    Signed inputs (the image, a linear bottleneck) count ``a⁺w⁺ + a⁻w⁻`` as positive.
    """

    name = "LRP-z+"

    def __init__(self, model: nn.Module, allow_tf32: bool = False) -> None:
        super().__init__(model, zplus_rule, zplus_rule, zplus_rule, allow_tf32=allow_tf32)


class LRPAlphaBeta(LRP):
    """LRP-αβ at every layer (Bach et al. 2015).

    ``R_i = Σ_j (α (a_i w_ij)⁺ / z⁺_j − β (a_i w_ij)⁻ / z⁻_j) R_j``, the bias's positive (negative)
    part joining ``z⁺`` (``z⁻``).  ``Σ R`` is conserved for ``α − β = 1`` where both signs occur.

    Args:
        model: a CNN classifier returning (N, classes) logits; it is never modified.
        alpha, beta: weights of the positive and negative shares (``>= 0``).
    """

    name = "LRP-αβ"

    def __init__(self, model: nn.Module, alpha: float = 1.0, beta: float = 0.0, allow_tf32: bool = False) -> None:
        self.alpha, self.beta = number("alpha", alpha), number("beta", beta)
        rule = functools.partial(alpha_beta_rule, alpha=self.alpha, beta=self.beta)
        super().__init__(model, rule, rule, rule, allow_tf32=allow_tf32)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__}, alpha={self.alpha}, beta={self.beta})"


@register("lrp_alpha1beta0")
class LRPAlpha1Beta0(LRPAlphaBeta):
    """LRP-α1β0: only positive contributions (with the positive part of the bias) share relevance."""

    def __init__(self, model: nn.Module, allow_tf32: bool = False) -> None:
        super().__init__(model, alpha=1.0, beta=0.0, allow_tf32=allow_tf32)


@register("lrp_alpha2beta1")
class LRPAlpha2Beta1(LRPAlphaBeta):
    """LRP-α2β1: twice the positive shares minus the negative shares."""

    def __init__(self, model: nn.Module, allow_tf32: bool = False) -> None:
        super().__init__(model, alpha=2.0, beta=1.0, allow_tf32=allow_tf32)


@register("lrp_gamma")
class LRPGamma(LRP):
    """LRP-γ at every layer (Montavon et al. 2019): positive contributions amplified by ``1 + γ``.

    ``z_ij = a_i w_ij + γ (a_i w_ij)⁺``, bias ``b + γ b⁺``, denominators stabilised by ``ε``;
    ``γ = 0`` is LRP-ε, ``γ → ∞`` tends to LRP-z⁺ (with biases).

    Args:
        model: a CNN classifier returning (N, classes) logits; it is never modified.
        gamma: ``γ >= 0`` (default 0.25); epsilon: the stabiliser (default ``1e-6``).
    """

    name = "LRP-γ"

    def __init__(self, model: nn.Module, gamma: float = 0.25, epsilon: float = 1e-6, allow_tf32: bool = False) -> None:
        self.gamma, self.epsilon = number("gamma", gamma), number("epsilon", epsilon)
        rule = functools.partial(gamma_rule, gamma=self.gamma, epsilon=self.epsilon)
        super().__init__(model, rule, rule, rule, allow_tf32=allow_tf32)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__}, gamma={self.gamma}, epsilon={self.epsilon})"


@register("lrp_composite")
class LRPComposite(LRP):
    """The composite "ε + z⁺ + z^B": LRP-ε for Linear layers, LRP-z⁺ for hidden convolutions, z^B
    at the convolution that reads the image.

    Its z⁺ shares the relevance of a negative output (a convolution with no ReLU after it, as in
    MobileNet/EfficientNet bottlenecks) by that output's negative contributions, so no relevance is
    dropped there; where a ReLU follows every convolution (VGG, DenseNet) it is the textbook z⁺
    (``lrp_zplus`` keeps the plain rule everywhere).

    Args:
        model: a CNN classifier returning (N, classes) logits; it is never modified.
        epsilon: the stabiliser of the Linear layers (default ``1e-6``).
        input_bounds: ``(low, high)`` for z^B (floats or per-channel tensors of the normalised
            image's range); default: each sample's minimum and maximum.
    """

    name = "LRP-ε+z⁺+zB"

    def __init__(
        self, model: nn.Module, epsilon: float = 1e-6, input_bounds: Bounds = None, allow_tf32: bool = False
    ) -> None:
        self.epsilon = number("epsilon", epsilon)
        super().__init__(
            model,
            functools.partial(epsilon_rule, epsilon=self.epsilon),
            functools.partial(zplus_rule, own_sign=True),
            None,
            input_bounds,
            allow_tf32,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__}, epsilon={self.epsilon})"
