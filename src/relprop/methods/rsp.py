"""Relative Sectional Propagation (Nam, Choi & Lee, AAAI 2021)."""

from __future__ import annotations

from typing import Sequence

import torch.nn as nn
from torch import Tensor

from ..arguments import flag
from ..competitors import Hostile
from ..engine import (
    ADD, AVGPOOL, BATCHNORM, CAT, CONV, INPUT_CONV, LINEAR, MAXPOOL, STANDARD_TABLE, Bounds, ChannelContributionSeed,
    HostileSeed, Needs, Op, Rule, Seed, Step, ZBox,
)
from ..engine.standard import AddSplit, CatSlice, MaskZeros, MaxPoolRoute, ProportionalPool
from ..registry import register
from ..rules.common import by_max_abs
from ..rules.rsp import purge, rsp_conv
from .propagation import Mode, PropagationMethod, Variant, select_mode

NO_LINEAR_RULE = (
    "RSP and AE start at a convolutional seed layer and have no rule for a Linear layer between the seed "
    "and the input; choose a seed_layer below it."
)
OVERFLOW = "Its magnitude grows with depth: explain in float64 (model.double(), x.double()) or pick a later seed_layer."
REFERENCE_FAILURE = (
    "Reference mode divides by zero where the authors' code does (an empty positive or negative part, or a "
    "seed summing to 0); use mode='default'."
)


class RSPConv(Rule):
    """The RSP rule of a hidden convolution (:func:`relprop.rules.rsp.rsp_conv`).

    ``authors_1x1``: kernels of height 1 skip the doubling and re-centring, as the released code does;
    ``structural_support``: re-centre over ``a > 0`` with relevance in the receptive field (else over
    the non-zero entries, as the released code does); ``empty_fields``: share the relevance of outputs
    without a positive input in their receptive field by ``|a|`` (else it is dropped, as the released
    code does); ``purge``: first keep, per sample and position, only the part of the relevance that
    agrees in sign with its channel sum (:func:`relprop.rules.rsp.purge`).
    """

    def __init__(
        self, authors_1x1: bool = False, structural_support: bool = True, empty_fields: bool = True, purge: bool = False
    ) -> None:
        self.authors_1x1, self.structural_support = authors_1x1, structural_support
        self.empty_fields, self.purge = empty_fields, purge

    def needs(self, op: Op) -> Needs:
        return Needs(op.inputs[:1], op.pads_before if self.empty_fields else ())

    def __call__(self, step: Step) -> Sequence[Tensor | None]:
        conv = step.op.conv
        shape = tuple(conv.weight().shape)  # type: ignore[union-attr]
        sectional = not (self.authors_1x1 and shape[2] == 1)
        relevance = purge(step.relevance) if self.purge else step.relevance
        return [rsp_conv(step.input(), relevance, conv.geometry, shape, sectional=sectional,  # type: ignore[union-attr]
                         structural_support=self.structural_support, empty_fields=self.empty_fields,
                         padding=step.explicit_padding() if self.empty_fields else None)]


def _by_max_plus_tiny(seed: Tensor) -> Tensor:
    return seed / (seed.reshape(seed.shape[0], -1).max(dim=1).values.view(-1, 1, 1, 1) + 1e-9)


def _default(seed_layer: str | None, bounds: Bounds, hostile: Hostile = None, purge: bool = False) -> Variant:
    table = STANDARD_TABLE.override({CONV: RSPConv(purge=purge), INPUT_CONV: ZBox(bounds)}, hints={LINEAR: NO_LINEAR_RULE})
    seed: Seed = ChannelContributionSeed(by_max_abs, seed_layer) if hostile is None else HostileSeed(hostile, seed_layer)
    return seed, table, OVERFLOW


def _reference(seed_layer: str | None, bounds: Bounds, hostile: Hostile = None, purge: bool = False) -> Variant:
    if hostile is not None or purge:
        raise ValueError(
            "hostile and purge are not part of the authors' released code, which mode='reference' reproduces; "
            "use them with mode='default'."
        )
    _, table, _ = _default(seed_layer, bounds)
    table = table.override({
        CONV: RSPConv(authors_1x1=True, structural_support=False, empty_fields=False),
        INPUT_CONV: ZBox(bounds, fold_batchnorm=False),
        BATCHNORM: MaskZeros(),
        CAT: CatSlice(mask_zeros=True),
        AVGPOOL: ProportionalPool(epsilon=1e-9, clamp=False),
        ADD: AddSplit("positive"),
        MAXPOOL: MaxPoolRoute(split_ties=False),
    })
    return ChannelContributionSeed(_by_max_plus_tiny, seed_layer, authors_layers=True), table, REFERENCE_FAILURE



@register("rsp")
class RSP(PropagationMethod):
    """Relative Sectional Propagation: bi-polar relevance, target evidence (positive) against hostile
    evidence (negative).  The rules are described in docs/methods.md ("RSP: hidden convolutions").

    Seed: the channel contribution map ``A ⊙ mean_hw(∂y_t/∂A)`` at ``seed_layer``.  Every hidden
    convolution redistributes the positive and the negative part of the relevance with per-sample
    virtual kernels built from the relevance and the layer's input (its weights are not used),
    doubles the signed difference and re-centres it so that ``Σ R`` is conserved layer by layer
    (exactly in real arithmetic; the doubled masses grow with depth, so on very deep networks such as
    ResNet-152 the total is only as exact as the dtype resolves them).  The convolution reading the
    image uses the z^B rule.

    ``mode="default"`` (the corrected method): every normalisation per sample, the seed divided by
    ``max |S|``, one rule for every kernel size, a structural re-centring support, residual adds split
    by magnitude, ``|a|`` against ``|b|``, plain slicing at concatenations, BatchNorm as identity (folded into the
    first convolution for z^B), stride / padding / dilation / groups honoured everywhere.
    ``mode="reference"`` reproduces the authors' released code applied to one image (docs/methods.md,
    "Default mode and reference mode"): it is the default rule table with those entries overridden.

    Args:
        model: a CNN classifier returning (N, classes) logits; it is never modified.
        seed_layer: module path (e.g. ``"features.29"``, ``"layer4"``) whose output seeds the walk;
            default: the output of the last convolutional block, found automatically.
        mode: ``"default"`` or ``"reference"``.
        input_bounds: ``(low, high)`` for the z^B rule (floats, or per-channel tensors);
            default: each sample's minimum and maximum over all channels and pixels.
        allow_tf32: let CUDA run convolutions and matrix products in TF32 (faster, about 1 % of max|R|
            off); default False: full float32, whatever the global torch settings.
        hostile: the paper's hostile-factor seed (docs/methods.md, "RSP: hostile seed and purging"):
            the target's channel contribution map contrasted against competing classes, then made
            spatial with positive to negative mass 2 : 1.  ``None`` (default): the plain seed; an int
            k ≥ 0: the k classes with the highest logits, the target excluded; or one list of class
            indices per sample (the target must not be in it).  Default mode only.
        purge: at every hidden convolution, keep per sample and position only the part of the
            relevance whose sign agrees with its sum over channels (removes mass: ``Σ R`` is no
            longer conserved).  Default False.  Default mode only.
    """

    name = "RSP"

    def __init__(
        self, model: nn.Module, seed_layer: str | None = None, mode: Mode = "default", input_bounds: Bounds = None,
        allow_tf32: bool = False, hostile: Hostile = None, purge: bool = False,
    ) -> None:
        purge = flag("purge", purge)
        self.mode, self.hostile, self.purge = mode, hostile, purge
        variant = select_mode({"default": _default, "reference": _reference}, mode)
        seed, table, hint = variant(seed_layer, input_bounds, hostile, purge)
        super().__init__(model, seed, table, failure_hint=hint, allow_tf32=allow_tf32)

    def __repr__(self) -> str:
        options = (f", hostile={self.hostile!r}" if self.hostile is not None else "") + (", purge=True" if self.purge else "")
        return f"{type(self).__name__}({type(self.model).__name__}, seed_layer={self.seed_layer!r}, mode={self.mode!r}{options})"
