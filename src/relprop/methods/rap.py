"""Relative Attributing Propagation (Nam, Gur, Choi, Wolf & Lee, AAAI 2020)."""

from __future__ import annotations

from typing import Sequence

import torch.nn as nn
from torch import Tensor

from ..engine import CONV, INPUT_CONV, LINEAR, STANDARD_TABLE, Bounds, LogitSplitSeed, Rule, Step, ZBox
from ..registry import register
from ..rules.rap import rap_hidden
from .lrp import OVERFLOW, linear_parameters
from .propagation import PropagationMethod


class RAPHidden(Rule):
    """RAP at a hidden Linear layer or convolution (:func:`relprop.rules.rap.rap_hidden`), a convolution seen
    with a BatchNorm that only reads it folded in."""

    keeps, conserves, reads_total = "first", True, True

    def __call__(self, step: Step) -> Sequence[Tensor | None]:
        a = step.input()
        weight, _, layer = linear_parameters(step.op, a)
        return [rap_hidden(a, step.relevance, weight, layer, step.total)]


@register("rap")
class RAP(PropagationMethod):
    """Relative Attributing Propagation: positive and negative attributions separated by the real
    weights' signs, re-centred at every layer (docs/methods.md, "RAP").

    Seed: the Linear layer (or hidden convolution under a ReLU / average-pool head, as SqueezeNet's)
    producing the logits splits the target logit into its input contributions and balances them:
    positive and negative parts get unit mass each (the bias is left out, see
    :class:`relprop.engine.LogitSplitSeed`, :func:`relprop.rules.rap.rap_balance`); the walk starts at
    that layer's input.  Every hidden
    Linear layer and convolution sends positive relevance through the activating weights (and a share
    through the inhibiting ones), negative relevance through the inhibiting weights, then re-centres so
    that ``Σ R`` is conserved (:func:`relprop.rules.rap.rap_hidden`).  The image layer uses z^B.

    Differences from the authors' released code: every sum and normalisation is per sample
    (batch-invariant); one rule for convolutions and hidden Linear layers; the re-centring support is
    structural (inputs with ``a > 0`` connected to an output with relevance); a BatchNorm that only
    reads a convolution is folded into its kernel; residual adds split by magnitude, ``|a|`` against ``|b|``.

    Args:
        model: a CNN classifier whose logits come from an ``nn.Linear`` layer or a hidden convolution
            (through flattens, ReLUs, average pooling, constant scalings and sums of layers reading the same
            features only); never modified.
        input_bounds: ``(low, high)`` for z^B (floats or per-channel tensors); default: each
            sample's minimum and maximum over all channels and pixels.
        allow_tf32: let CUDA run convolutions and matrix products in TF32 (default False).
    """

    name = "RAP"

    def __init__(self, model: nn.Module, input_bounds: Bounds = None, allow_tf32: bool = False) -> None:
        hidden = RAPHidden()
        table = STANDARD_TABLE.override({LINEAR: hidden, CONV: hidden, INPUT_CONV: ZBox(input_bounds)})
        super().__init__(model, LogitSplitSeed(), table, failure_hint=OVERFLOW, allow_tf32=allow_tf32)

    def __repr__(self) -> str:
        return f"RAP({type(self.model).__name__})"
