"""Attribution Equilibrium (Nam, Choi & Lee, TPAMI 2024)."""

from __future__ import annotations

from typing import Sequence

import torch.nn as nn
from torch import Tensor

from ..arguments import number
from ..engine import (
    ADD, AVGPOOL, BATCHNORM, CAT, CONV, INPUT_CONV, LINEAR, MAXPOOL, STANDARD_TABLE, Bounds, ChannelContributionSeed,
    Needs, Op, Rule, Step, ZBox,
)
from ..engine.standard import CatSlice, DropSkipAdd, MaskZeros, MaxPoolRoute, ProportionalPool
from ..registry import register
from ..rules.ae import ae_conv
from ..rules.common import safe_divide, sample_sum
from .propagation import Mode, PropagationMethod, Variant, select_mode
from .rsp import NO_LINEAR_RULE, OVERFLOW, REFERENCE_FAILURE


class AEConv(Rule):
    """The AE rule of a hidden convolution (:func:`relprop.rules.ae.ae_conv`) with ratio ``r``.

    ``authors_1x1``: kernels of height 1 drop the ratio and the re-centring, as the released code does;
    ``structural_support``: re-centre over ``a > 0`` with relevance in the receptive field;
    ``keep_mass``: rescale the output to the incoming mass.
    """

    def __init__(self, ratio: float, authors_1x1: bool = False, structural_support: bool = True, keep_mass: bool = True) -> None:
        self.ratio, self.authors_1x1 = ratio, authors_1x1
        self.structural_support, self.keep_mass = structural_support, keep_mass

    def needs(self, op: Op) -> Needs:
        return Needs(op.inputs[:1], op.pads_before)

    def __call__(self, step: Step) -> Sequence[Tensor | None]:
        op = step.op
        conv = op.conv
        weight = conv.weight()  # type: ignore[union-attr]
        sectional = not (self.authors_1x1 and weight.shape[2] == 1)
        return [ae_conv(step.input(), step.relevance, weight, conv.geometry, self.ratio, sectional=sectional,  # type: ignore[union-attr]
                        structural_support=self.structural_support, keep_mass=self.keep_mass,
                        padding=step.explicit_padding())]


def _by_abs_sum(seed: Tensor) -> Tensor:
    return safe_divide(seed, sample_sum(seed.abs()))


def _by_abs_of_sum(seed: Tensor) -> Tensor:
    return seed / sample_sum(seed).abs()


def _default(ratio: float, seed_layer: str | None, bounds: Bounds) -> Variant:
    table = STANDARD_TABLE.override({CONV: AEConv(ratio), INPUT_CONV: ZBox(bounds)}, hints={LINEAR: NO_LINEAR_RULE})
    return ChannelContributionSeed(_by_abs_sum, seed_layer), table, OVERFLOW


def _reference(ratio: float, seed_layer: str | None, bounds: Bounds) -> Variant:
    _, table, _ = _default(ratio, seed_layer, bounds)
    table = table.override({
        CONV: AEConv(ratio, authors_1x1=True, structural_support=False, keep_mass=False),
        INPUT_CONV: ZBox(bounds, fold_batchnorm=False),
        BATCHNORM: MaskZeros(),
        CAT: CatSlice(mask_zeros=True),
        AVGPOOL: ProportionalPool(epsilon=1e-9, clamp=True),
        ADD: DropSkipAdd(),
        MAXPOOL: MaxPoolRoute(split_ties=False),
    })
    return ChannelContributionSeed(_by_abs_of_sum, seed_layer, authors_layers=True), table, REFERENCE_FAILURE


@register("ae")
class AttributionEquilibrium(PropagationMethod):
    """Attribution Equilibrium: evidence as the gap between positive and negative influence
    (docs/methods.md, "AE: hidden convolutions").

    Seed: the channel contribution map ``A ⊙ mean_hw(∂y_t/∂A)`` at ``seed_layer``.  Every hidden
    convolution shares the unit-mass positive part (times ``ratio``) and the unit-mass negative
    part through the same ``|w|·a⁺`` proportions, re-centres, and adds the positive mass spread
    over active inputs and the negative mass spread over inactive inputs — so every layer's
    unit-mass relevance sums to ``ratio − 2``.  The image layer uses z^B.

    ``ratio`` (the user-defined criterion for the degree of positive attribution, 1 ≤ r ≤ 2 in the
    paper) weighs positive against negative evidence.

    ``mode="default"`` (the corrected method): per-sample normalisation, no NaN when a layer sees no
    negative (or no positive) relevance, one rule for every kernel size, structural re-centring support,
    each convolution's output rescaled to its incoming mass ``(ΣP + ΣN)/2`` so that the shares given to
    the branches of a residual add or a concatenation survive the per-layer renormalisation, residual
    adds split by magnitude, ``|a|`` against ``|b|``, stride / padding / dilation / groups honoured everywhere.
    Max pooling splits a window's relevance evenly over tied maxima (all-zero windows are ties, and the
    inactive-input term gives their outputs relevance); explicit zero padding before a convolution
    (``nn.ZeroPad2d``, ``F.pad``) is no input unit, like the convolution's own padding, in both modes.
    ``mode="reference"`` reproduces the authors' released code applied to one image, including their
    ResNet blocks that drop the skip path and double the residual branch, and first-index max-pool ties.

    Args:
        model: a CNN classifier returning (N, classes) logits; it is never modified.
        ratio: weight of the positive evidence, a float (the paper uses 1 ≤ r ≤ 2; default 2).
        seed_layer: module path whose output seeds the walk; default: found automatically.
        mode: ``"default"`` or ``"reference"``.
        input_bounds: ``(low, high)`` for the z^B rule; default: each sample's min and max.
        allow_tf32: let CUDA run convolutions and matrix products in TF32 (default False).
    """

    name = "AE"

    def __init__(
        self,
        model: nn.Module,
        ratio: float = 2.0,
        seed_layer: str | None = None,
        mode: Mode = "default",
        input_bounds: Bounds = None,
        allow_tf32: bool = False,
    ) -> None:
        ratio = number("ratio", ratio, positive=True, hint=" (the paper uses 1 <= r <= 2)")
        self.ratio, self.mode = ratio, mode
        variant = select_mode({"default": _default, "reference": _reference}, mode)
        seed, table, hint = variant(ratio, seed_layer, input_bounds)
        super().__init__(model, seed, table, failure_hint=hint, allow_tf32=allow_tf32)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({type(self.model).__name__}, seed_layer={self.seed_layer!r}, "
                f"mode={self.mode!r}, ratio={self.ratio})")


AE = AttributionEquilibrium
