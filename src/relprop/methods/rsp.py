"""Relative Sectional Propagation (Nam, Choi & Lee, AAAI 2021)."""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from ..graph import Op
from ..rules.common import safe_divide
from ..rules.conv_ops import ConvGeometry
from ..rules.rsp import rsp_conv
from ..registry import register
from .propagation import Bounds, Mode, RelevancePropagation


@register("rsp")
class RSP(RelevancePropagation):
    """Relative Sectional Propagation: bi-polar relevance, target evidence (positive) against hostile
    evidence (negative).

    Seed: the channel contribution map ``A ⊙ mean_hw(∂y_t/∂A)`` at ``seed_layer``.  Every hidden
    convolution redistributes the positive and the negative part of the relevance with per-sample
    virtual kernels built from the relevance and the layer's input (its weights are not used),
    doubles the signed difference and re-centres it so that ``Σ R`` is conserved layer by layer.
    The convolution reading the image uses the z^B rule.

    ``mode="default"`` (the corrected method):
      * every normalisation is per sample (a batch gives each image the map it gets alone);
      * the seed is divided by ``max |S|`` per sample;
      * one rule for every kernel size (the authors skip doubling and re-centring for 1×1 kernels);
      * the re-centring support is structural (``a > 0`` with relevance in the receptive field), so
        the result does not jump with float rounding;
      * residual adds split by ``|a| / (|a| + |b|)``, concatenations by plain slicing, BatchNorm is
        the identity and is folded into the first convolution for z^B;
      * stride, padding, dilation and groups are honoured everywhere (depthwise convs work).

    ``mode="reference"`` reproduces the authors' released code applied to one image: seed divided by
    ``max S + 1e-9``, the 1×1 branch, the non-zero re-centring support, ``a⁺ + 1e-9`` residual split
    (the UCAG wiring for ResNet), zero-masked BatchNorm and concatenation, the authors' seed layers.

    Args:
        model: a CNN classifier returning (N, classes) logits; it is never modified.
        seed_layer: module path (e.g. ``"features.29"``, ``"layer4"``) whose output seeds the walk;
            default: the output of the last convolutional block, found automatically.
        mode: ``"default"`` or ``"reference"``.
        input_bounds: ``(low, high)`` for the z^B rule (floats, or per-channel tensors);
            default: each sample's minimum and maximum over all channels and pixels.
    """

    name = "RSP"

    def __init__(
        self, model: nn.Module, seed_layer: str | None = None, mode: Mode = "default", input_bounds: Bounds = None
    ) -> None:
        super().__init__(model, seed_layer=seed_layer, mode=mode, input_bounds=input_bounds)

    def _normalise_seed(self, seed: Tensor) -> Tensor:
        flat = seed.reshape(seed.shape[0], -1)
        if self.mode == "reference":
            return seed / (flat.max(dim=1).values.view(-1, 1, 1, 1) + 1e-9)
        return safe_divide(seed, flat.abs().max(dim=1).values.view(-1, 1, 1, 1))

    def _hidden_conv(self, a: Tensor, relevance: Tensor, weight: Tensor, geometry: ConvGeometry, op: Op) -> Tensor:
        reference = self.mode == "reference"
        return rsp_conv(
            a, relevance, geometry, tuple(weight.shape),
            sectional=not (reference and weight.shape[2] == 1),
            structural_support=not reference,
        )

    def _clamps_pool_input(self) -> bool:
        return False
