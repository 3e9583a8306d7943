"""Attribution Equilibrium (Nam, Choi & Lee, TPAMI 2024)."""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from ..graph import Op
from ..rules.ae import ae_conv
from ..rules.common import safe_divide, sample_sum
from ..rules.conv_ops import ConvGeometry
from ..registry import register
from .propagation import Bounds, Mode, RelevancePropagation


@register("ae")
class AttributionEquilibrium(RelevancePropagation):
    """Attribution Equilibrium: evidence as the gap between positive and negative influence.

    Seed: the channel contribution map ``A ⊙ mean_hw(∂y_t/∂A)`` at ``seed_layer``.  Every hidden
    convolution shares the unit-mass positive part (times ``ratio``) and the unit-mass negative
    part through the same ``|w|·a⁺`` proportions, re-centres, and adds the positive mass spread
    over active inputs and the negative mass spread over inactive inputs — so every layer's
    unit-mass relevance sums to ``ratio − 2``.  The image layer uses z^B.

    ``ratio`` (the user-defined criterion for the degree of positive attribution, 1 ≤ r ≤ 2 in the
    paper) weighs positive against negative evidence.

    ``mode="default"`` (the corrected method):
      * per-sample normalisation (batch-invariant), no NaN when a layer sees no negative (or no
        positive) relevance;
      * one rule for every kernel size (the authors drop ``ratio`` and the re-centring for 1×1
        kernels), structural re-centring support;
      * each convolution's output is rescaled to its incoming mass ``(ΣP + ΣN)/2`` (quirk Q28,
        mass-preserving so the scale does not grow with depth), so the shares given to the
        branches of a residual add or a concatenation survive the per-layer renormalisation;
      * residual adds split by ``|a| / (|a| + |b|)`` (the authors drop the skip path), concatenations by
        slicing, BatchNorm is the identity and folded into the first convolution for z^B;
      * stride, padding, dilation and groups honoured everywhere.

    ``mode="reference"`` reproduces the authors' released code applied to one image (including their
    ResNet blocks that drop the skip path and double the residual branch).

    Args:
        model: a CNN classifier returning (N, classes) logits; it is never modified.
        ratio: weight of the positive evidence, a float (the paper uses 1 ≤ r ≤ 2; default 2).
        seed_layer: module path whose output seeds the walk; default: found automatically.
        mode: ``"default"`` or ``"reference"``.
        input_bounds: ``(low, high)`` for the z^B rule; default: each sample's min and max.
    """

    name = "AE"

    def __init__(
        self,
        model: nn.Module,
        ratio: float = 2.0,
        seed_layer: str | None = None,
        mode: Mode = "default",
        input_bounds: Bounds = None,
    ) -> None:
        ratio = float(ratio)
        if not ratio > 0 or ratio != ratio or ratio == float("inf"):
            raise ValueError(f"ratio must be a positive finite number (the paper uses 1 <= r <= 2); got {ratio}.")
        self.ratio = ratio
        super().__init__(model, seed_layer=seed_layer, mode=mode, input_bounds=input_bounds)

    def _normalise_seed(self, seed: Tensor) -> Tensor:
        if self.mode == "reference":
            return seed / sample_sum(seed).abs()
        return safe_divide(seed, sample_sum(seed.abs()))

    def _hidden_conv(self, a: Tensor, relevance: Tensor, weight: Tensor, geometry: ConvGeometry, op: Op) -> Tensor:
        reference = self.mode == "reference"
        return ae_conv(
            a, relevance, weight, geometry, self.ratio,
            sectional=not (reference and weight.shape[2] == 1),
            structural_support=not reference,
            keep_mass=not reference,
        )

    def _drops_skip_paths(self) -> bool:
        return self.mode == "reference"

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", ratio={self.ratio})"


AE = AttributionEquilibrium
