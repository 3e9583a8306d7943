"""Relative Attributing Propagation (Nam, Gur, Choi, Wolf & Lee, AAAI 2020)."""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from ..errors import UnsupportedLayerError
from ..forward import ForwardRecord
from ..graph import LINEAR, Op
from ..registry import register
from ..rules.conv_ops import ConvGeometry
from ..rules.lrp import conv_map, dense_map
from ..rules.rap import rap_hidden, rap_logit_split
from .lrp import LogitPropagation
from .propagation import Bounds


@register("rap")
class RAP(LogitPropagation):
    """Relative Attributing Propagation: positive and negative attributions separated by the real
    weights' signs, re-centred at every layer (algorithms.md §6).

    Seed: the one-hot of the target at the logits.  The Linear layer producing the logits splits
    the target logit into its input contributions and balances them: positive and negative parts
    get unit mass each (the bias is left out, see :func:`relprop.rules.rap.rap_logit_split`).
    Every hidden Linear layer and convolution sends positive relevance through the activating
    weights (and a share through the inhibiting ones), negative relevance through the inhibiting
    weights, then re-centres so that ``Σ R`` is conserved (:func:`relprop.rules.rap.rap_hidden`).
    The image layer uses z^B.

    Differences from the authors' released code as algorithms.md §6 describes it: every
    sum and normalisation is per sample (batch-invariant); one rule for convolutions and hidden
    Linear layers (their Linear version sends the first negative term through the activators);
    the re-centring support is structural (inputs with ``a > 0`` connected to an output with
    relevance), not ``C ≠ 0``; a BatchNorm that only reads a convolution is folded into its
    kernel (the sign split sees the weights of ``bn(conv(x))``); residual adds split by
    ``|a| / (|a| + |b|)``.

    Args:
        model: a CNN classifier whose logits come from an ``nn.Linear`` layer; never modified.
        input_bounds: ``(low, high)`` for z^B (floats or per-channel tensors); default: each
            sample's minimum and maximum over all channels and pixels.
    """

    name = "RAP"

    def __init__(self, model: nn.Module, input_bounds: Bounds = None) -> None:
        super().__init__(model, input_bounds=input_bounds)
        logits = self.graph.by_name[self.seed_op]
        if logits.kind != LINEAR:
            raise UnsupportedLayerError(
                logits.path, logits.type_name, self.name,
                "RAP splits the target logit at the Linear layer that produces the logits; this model's "
                "logits come from another operation.",
            )

    def _initial_relevance(self, record: ForwardRecord, targets: Tensor) -> Tensor:
        return self._one_hot(record, targets)

    def _linear(self, a: Tensor, relevance: Tensor, op: Op) -> Tensor:
        module = op.module
        if op.name == self.seed_op:
            return rap_logit_split(a, relevance, module.weight)  # type: ignore[union-attr]
        return rap_hidden(a, relevance, module.weight, dense_map())  # type: ignore[union-attr]

    def _hidden_conv(self, a: Tensor, relevance: Tensor, weight: Tensor, geometry: ConvGeometry, op: Op) -> Tensor:
        weight, _ = self._conv_parameters(op, weight)
        return rap_hidden(a, relevance, weight, conv_map(geometry, a.shape))

    def __repr__(self) -> str:
        return f"RAP({type(self.model).__name__})"
