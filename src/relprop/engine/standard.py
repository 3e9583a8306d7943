"""Rules for the operations every relevance method treats alike, and the table that holds them.

Each rule object adapts one pure function of :mod:`relprop.rules` to the walk (docs/methods.md,
section "Structural rules"); methods extend :data:`STANDARD_TABLE` with their convolution rules.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor

from ..arguments import input_bounds
from ..errors import InputError
from ..rules.structural import (
    add_rule, adjoint, cat_rule, maxpool_rule, nonzero_mask_rule, proportional_pool_rule,
)
from ..rules.zbox import zbox_conv
from .graph import (
    ADD, AVGPOOL, BATCHNORM, CAT, GATE, LAYOUT, MAXPOOL, NORM, PAD, POINTWISE, STRUCTURAL, ModelGraph, Op,
)
from .table import Needs, Rule, RuleTable, Step

Bounds = Union[None, tuple[Union[float, Tensor], Union[float, Tensor]]]


def _first(op: Op, relevance: Tensor | None) -> list[Tensor | None]:
    """``relevance`` for the op's first input, nothing for the others."""
    return [relevance, *[None] * (len(op.inputs) - 1)]


class PassThrough(Rule):
    """Relevance passes unchanged to the first input (activations, dropout, identity, BatchNorm)."""

    conserves = True

    def __call__(self, step: Step) -> Sequence[Tensor | None]:
        return _first(step.op, step.relevance)


class GatedSignal(Rule):
    """``x · g`` with a gate ``g`` (squeeze-and-excitation, ECA, ``x · sigmoid(x)``): the gate is a fixed
    per-sample multiplier, all relevance goes to the signal ``x`` and none to the gate."""

    conserves = True

    def __call__(self, step: Step) -> Sequence[Tensor | None]:
        return [None if i == step.op.gate else step.relevance for i in range(2)]


class NoRelevance(Rule):
    """Structural ops (shapes, sizes, parameters) carry no relevance."""

    def __call__(self, step: Step) -> Sequence[Tensor | None]:
        return [None] * len(step.op.inputs)


class LayoutAdjoint(Rule):
    """Padding, flattening, views: relevance follows the op's adjoint (a permutation / selection).

    Conserving: the adjoint of padding drops the padded entries' relevance, which no rule of a method
    that re-centres gives them (they are inputs without activation).
    """

    replays, conserves = True, True

    def __call__(self, step: Step) -> Sequence[Tensor | None]:
        r = step.relevance
        point = torch.zeros(step.input_shape(), dtype=r.dtype, device=r.device)
        return _first(step.op, adjoint(step.replay(), point, r))


class MaxPoolRoute(Rule):
    """Max pooling: a window's relevance goes to its maximum, split evenly over tied maxima
    (``split_ties=False``: all of it to the first, as the released code does)."""

    keeps, replays, conserves = "first", True, True

    def __init__(self, split_ties: bool = True) -> None:
        self.split_ties = split_ties

    def __call__(self, step: Step) -> Sequence[Tensor | None]:
        windows = step.op.pool if self.split_ties else None
        return _first(step.op, maxpool_rule(step.replay(), step.input(), step.relevance, windows))


class ProportionalPool(Rule):
    """Average pooling: a window's relevance shared in proportion to ``a⁺ + ε`` (``a + ε`` without ``clamp``)."""

    keeps, replays = "first", True

    def __init__(self, epsilon: float = 0.0, clamp: bool = True) -> None:
        self.epsilon, self.clamp = epsilon, clamp
        self.conserves = clamp  # without it a window's a + ε may sum to 0, and its relevance is dropped

    def needs(self, op: Op) -> Needs:
        return Needs(op.inputs[:1], (op.name, *op.pads_before))

    def __call__(self, step: Step) -> Sequence[Tensor | None]:
        result = proportional_pool_rule(step.replay(), step.input(), step.relevance, epsilon=self.epsilon,
                                        clamp=self.clamp, padding=step.explicit_padding())
        return _first(step.op, result)


class MaskZeros(Rule):
    """The released code's BatchNorm rule: identity, zeroed where the input is exactly 0."""

    keeps = "first"

    def __call__(self, step: Step) -> Sequence[Tensor | None]:
        return _first(step.op, nonzero_mask_rule(step.input(), step.relevance))


class AddSplit(Rule):
    """Residual addition ``a + b`` (and ``a - b``, the sum of ``a`` and ``-b``): ``split="magnitude"`` by ``|a|`` and
    ``|b|`` with a small floor, ``"positive"`` by the released code's ``a⁺ + 1e-9`` shares of the contributions."""

    keeps, conserves = "all", True

    def __init__(self, split: str = "magnitude") -> None:
        self.split = split

    def __call__(self, step: Step) -> Sequence[Tensor | None]:
        return list(add_rule(step.contribution(0), step.contribution(1), step.relevance, self.split))


class DropSkipAdd(Rule):
    """The released AE ResNet blocks: the shorter branch of an add gets nothing and the fork point, where
    both branches start, gets twice its relevance."""

    def __init__(self) -> None:
        self._dropped: dict[str, int] = {}

    def prepare(self, op: Op, graph: ModelGraph) -> dict[str, float]:
        a, b = op.inputs
        anc_a, anc_b = graph.ancestors(a), graph.ancestors(b)
        fork = max(anc_a & anc_b, key=graph.index.__getitem__)
        anc_fork = graph.ancestors(fork)
        self._dropped[op.name] = 0 if len(anc_a - anc_fork) < len(anc_b - anc_fork) else 1
        return {fork: 2.0}

    def __call__(self, step: Step) -> Sequence[Tensor | None]:
        return [None, step.relevance] if self._dropped[step.op.name] == 0 else [step.relevance, None]


class CatSlice(Rule):
    """Concatenation: relevance sliced back to the inputs (``mask_zeros``: zeroed where an input is 0)."""

    def __init__(self, mask_zeros: bool = False) -> None:
        self.mask_zeros = mask_zeros
        self.keeps = "all" if mask_zeros else "none"
        self.conserves = not mask_zeros

    def __call__(self, step: Step) -> Sequence[Tensor | None]:
        op = step.op
        if self.mask_zeros:
            parts = [step.input(i) for i in range(len(op.inputs))]
        else:
            parts = [torch.empty(step.input_shape(i), device="meta") for i in range(len(op.inputs))]
        return cat_rule(parts, step.relevance, op.dim, mask_zeros=self.mask_zeros)


class ZBox(Rule):
    """z^B at a convolution reading the image; the bounds follow the ops in between (padding, slicing, the
    per-channel affine map of ``transform_input``, concatenation), taken elementwise as (min, max) after them.

    ``bounds``: ``(low, high)`` floats or per-channel tensors; default each sample's minimum and maximum
    over all channels and pixels.  ``fold_batchnorm``: see the kernel of ``bn(conv(x))`` when a
    BatchNorm is the convolution's only reader (it matters where ``γ < 0`` swaps ``W⁺`` and ``W⁻``).
    """

    def __init__(self, bounds: Bounds = None, fold_batchnorm: bool = True) -> None:
        self.bounds, self.fold_batchnorm = input_bounds(bounds), fold_batchnorm

    def needs(self, op: Op) -> Needs:
        return Needs(op.inputs[:1], tuple(o.name for o in op.image_chain))

    def __call__(self, step: Step) -> Sequence[Tensor | None]:
        op = step.op
        low, high = (self.through_chain(step, bound) for bound in self.bound_images(step.x))
        low, high = torch.minimum(low, high), torch.maximum(low, high)
        weight, _ = op.conv.parameters(self.fold_batchnorm)  # type: ignore[union-attr]
        return [zbox_conv(step.input(), step.relevance, weight, op.conv.geometry, low, high)]  # type: ignore[union-attr]

    @staticmethod
    def through_chain(step: Step, image: Tensor) -> Tensor:
        """``image`` (shaped like x) passed through the ops between the image and the convolution."""
        values: dict[str, Tensor] = {}
        for chain_op in step.op.image_chain:
            values[chain_op.name] = step.replay(chain_op.name)(*(values.get(n, image) for n in dict.fromkeys(chain_op.inputs)))
        return values.get(step.op.inputs[0], image)

    def bound_images(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Bound images shaped like ``x`` (N, C, H, W)."""
        if self.bounds is None:
            flat = x.reshape(x.shape[0], -1)
            low = flat.min(dim=1).values.view(-1, 1, 1, 1)
            high = flat.max(dim=1).values.view(-1, 1, 1, 1)
        else:
            low, high = (torch.as_tensor(b, dtype=x.dtype, device=x.device) for b in self.bounds)
            channels = {t.numel() for t in (low, high) if t.dim() == 1}
            if channels - {1, x.shape[1]}:
                raise InputError(
                    f"input_bounds has {max(channels)} values per bound but x has {x.shape[1]} channels; "
                    "give one float per bound or one value per channel."
                )
            low, high = low.view(1, -1, 1, 1), high.view(1, -1, 1, 1)
        return low.expand_as(x).contiguous(), high.expand_as(x).contiguous()


STANDARD_TABLE = RuleTable({
    nn.PReLU: PassThrough(),
    nn.Hardtanh: PassThrough(),
    POINTWISE: PassThrough(),
    BATCHNORM: PassThrough(),
    NORM: PassThrough(),
    GATE: GatedSignal(),
    STRUCTURAL: NoRelevance(),
    LAYOUT: LayoutAdjoint(),
    PAD: LayoutAdjoint(),
    MAXPOOL: MaxPoolRoute(),
    AVGPOOL: ProportionalPool(),
    ADD: AddSplit("magnitude"),
    CAT: CatSlice(),
})
"""Rules shared by every relevance method in default mode; methods add their convolution (and Linear) rules."""
