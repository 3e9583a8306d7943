"""Where relevance starts: the seed layer and the initial relevance (docs/methods.md, section "Seeds")."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from ..competitors import Hostile, check_hostile, resolve_competitors
from ..errors import InputError, UnsupportedLayerError
from ..rules.hostile import hostile_seed
from ..rules.common import sample_total
from ..rules.rap import rap_balance
from .forward import ForwardRecord
from .graph import (
    ADD, AVGPOOL, BATCHNORM, CAT, CONV, GATE, INPUT_CONV, LAYOUT, LINEAR, MAXPOOL, NORM, POINTWISE, ModelGraph, Op,
)
from .layout import channels_first, in_layout

# The authors' seed layers where they differ from the automatic choice.
_AUTHORS_SEED_LAYERS = {"DenseNet": "features", "AlexNet": "features"}


def default_seed_layer(graph: ModelGraph) -> str:
    """Output of the last convolutional block: the last conv, followed forward through BatchNorm,
    normalisations, activations, gates, residual adds and concatenations (and out of a channels-last
    layout), stopping before pooling or flattening (also of a channels-last map, as Sequencer pools one).

    VGG-16 gives ``features.29`` (before the last max-pool), ResNet the output of ``layer4``,
    DenseNet the ReLU after ``features.norm5``, Inception-v3 ``Mixed_7c``.
    """
    feeds_output = graph.relevance_ancestors(graph.output_name)  # not the ops computing a gate
    convs = [op for op in graph.ops if op.kind in (CONV, INPUT_CONV) and op.name in feeds_output]
    if not convs:
        raise ValueError(f"{type(graph.model).__name__} has no Conv2d layer: no seed layer can be chosen.")
    current = convs[-1].name
    while True:
        users = [u for u in graph.consumers[current] if u in feeds_output]
        if len(users) != 1:
            return current
        kind = graph.by_name[users[0]].kind
        leaves_channels_last = graph.by_name[current].channels_last and kind not in (AVGPOOL, MAXPOOL, LINEAR)
        if not (leaves_channels_last or kind in (BATCHNORM, NORM, POINTWISE, GATE, ADD, CAT)):
            return current
        current = users[0]


def channel_contribution(activation: Tensor, grad: Tensor) -> Tensor:
    """``S = A ⊙ mean_{h,w}(∂y_t/∂A)``: no ReLU, no channel sum. (N, C, h, w) -> (N, C, h, w)."""
    return activation * grad.mean(dim=(2, 3), keepdim=True)


def one_hot(logits: Tensor, targets: Tensor) -> Tensor:
    """(N, classes): 1 at each sample's target class, 0 elsewhere."""
    return torch.zeros_like(logits).scatter_(1, targets[:, None], 1.0)


class Seed:
    """Chooses the op where the walk starts and computes the relevance of its output."""

    def layer(self, graph: ModelGraph) -> str:
        raise NotImplementedError

    def check_path(self, graph: ModelGraph, path: Sequence[Op], display: str) -> None:
        """Refuse a seed whose walk cannot work (nothing to refuse by default)."""

    def relevance(self, record: ForwardRecord, targets: Tensor, graph: ModelGraph, display: str) -> Tensor:
        raise NotImplementedError

    def total(self, relevance: Tensor) -> Tensor:
        """The seed's per-sample total in exact arithmetic (:attr:`relprop.engine.Step.total`): (N, ...) ->
        (N,) float64; by default its sum, accumulated in float64."""
        return sample_total(relevance).view(-1)


class FeatureMapSeed(Seed):
    """A seed at a convolutional layer's (N, C, h, w) output, computed from channel contribution maps (of a
    channels-last output (N, h, w, C) too: computed channels-first, returned in the output's layout).

    ``layer_name``: a module path or None (automatic: :func:`default_seed_layer`, or with
    ``authors_layers`` the layer the authors' scripts use for the architecture).
    """

    def __init__(self, layer_name: str | None = None, authors_layers: bool = False) -> None:
        self.layer_name, self.authors_layers = layer_name, authors_layers

    def layer(self, graph: ModelGraph) -> str:
        if self.layer_name is not None:
            return graph.resolve(self.layer_name)
        authors = _AUTHORS_SEED_LAYERS.get(type(graph.model).__name__) if self.authors_layers else None
        return graph.resolve(authors) if authors else default_seed_layer(graph)

    def check_path(self, graph: ModelGraph, path: Sequence[Op], display: str) -> None:
        flattening = [op for op in path if op.kind == LAYOUT and "flatten" in op.type_name.lower()]
        if flattening:
            raise ValueError(
                f"seed_layer '{display}' comes after '{flattening[0].path}' ({flattening[0].type_name}), "
                "so its output is no (N, C, h, w) feature map; choose a convolutional block."
            )

    def contributions(self, record: ForwardRecord, classes: Tensor, display: str) -> Tensor:
        """The channel contribution maps of K classes per sample: classes (N, K) -> (N, K, C, h, w).

        One gradient per column: samples are independent, so the gradient of a column's summed logits
        gives every sample's map at once.
        """
        grads = []
        with torch.enable_grad():
            for j in range(classes.shape[1]):
                picked = record.logits.gather(1, classes[:, j:j + 1]).sum()
                last = j == classes.shape[1] - 1
                (grad,) = torch.autograd.grad(picked, record.seed, allow_unused=True, retain_graph=not last)
                if grad is None:
                    raise ValueError(f"seed layer '{display}' does not feed the model's logits.")
                grads.append(grad)
        if record.seed.dim() != 4:
            raise ValueError(
                f"seed layer '{display}' outputs shape {tuple(record.seed.shape)}; a (N, C, h, w) feature map is needed."
            )
        layout = record.seed_channels_last
        activation = channels_first(record.seed.detach(), layout)
        return torch.stack([channel_contribution(activation, channels_first(g, layout)) for g in grads], dim=1)


class ChannelContributionSeed(FeatureMapSeed):
    """The channel contribution map ``A ⊙ mean_hw(∂y_t/∂A)`` of the target at a convolutional layer,
    normalised per sample by ``normalise`` (layer choice: :class:`FeatureMapSeed`)."""

    def __init__(
        self, normalise: Callable[[Tensor], Tensor], layer_name: str | None = None, authors_layers: bool = False
    ) -> None:
        super().__init__(layer_name, authors_layers)
        self.normalise = normalise

    def relevance(self, record: ForwardRecord, targets: Tensor, graph: ModelGraph, display: str) -> Tensor:
        seed = self.normalise(self.contributions(record, targets[:, None], display)[:, 0])
        return in_layout(seed, record.seed_channels_last)  # the walk keeps each op's layout


class HostileSeed(FeatureMapSeed):
    """RSP's hostile-factor seed (:func:`relprop.rules.hostile.hostile_seed`): the target's channel
    contribution map contrasted against those of competing classes (layer choice: :class:`FeatureMapSeed`).

    ``hostile``: an int k (the k classes with the highest logits, the target excluded) or one list of
    competing class indices per sample (:func:`relprop.competitors.check_hostile`).
    """

    def __init__(self, hostile: Hostile, layer_name: str | None = None) -> None:
        checked = check_hostile(hostile)
        if checked is None:
            raise ValueError("HostileSeed needs competing classes: an int k or one list of classes per sample.")
        super().__init__(layer_name)
        self.hostile = checked

    def relevance(self, record: ForwardRecord, targets: Tensor, graph: ModelGraph, display: str) -> Tensor:
        spatial = record.seed.shape[1:3] if record.seed_channels_last else record.seed.shape[2:]
        if record.seed.dim() == 4 and spatial.numel() == 1:
            raise InputError(
                f"the hostile seed contrasts the positions of the seed layer's map, and '{display}' gives a 1×1 map "
                "for this input, where the contrast is 0 by construction; use a larger input or an earlier seed_layer."
            )
        competitors, weights = resolve_competitors(self.hostile, record.logits.detach(), targets)
        maps = self.contributions(record, torch.cat([targets[:, None], competitors], dim=1), display)
        return in_layout(hostile_seed(maps[:, 0], maps[:, 1:], weights), record.seed_channels_last)


class LogitSeed(Seed):
    """At the logits: the one-hot of the target, times the target logit when ``times_logit`` (LRP)."""

    def __init__(self, times_logit: bool = True) -> None:
        self.times_logit = times_logit

    def layer(self, graph: ModelGraph) -> str:
        return graph.by_name[graph.output_name].inputs[0]

    def relevance(self, record: ForwardRecord, targets: Tensor, graph: ModelGraph, display: str) -> Tensor:
        logits = record.logits.detach()
        hot = one_hot(logits, targets)
        return hot * logits if self.times_logit else hot


class LogitSplitSeed(Seed):
    """RAP: the walk starts below the layer producing the logits, with the target logit split into its
    input contributions ``c = a ⊙ ∂y_t/∂a`` and balanced (:func:`relprop.rules.rap.rap_balance`).

    The logit layer is a Linear layer or a hidden convolution, found from the output back through a
    *head* of ops that are piecewise linear in ``a``: flattens and other layout ops, identities, dropouts,
    ReLUs, average pooling, scalings and shifts by constants, and sums of such branches.  Through such a
    head the logit is linear in ``a`` at this input, so ``Σ c`` is the target logit without its bias terms:
    for a Linear layer ``c_i = a_i w_ti``; for SqueezeNet's 1×1 convolution → ReLU → global average pool,
    ``c_ip = a_ip w_ti 1[z_tp > 0] / hw``; for RepViT's mean of two heads ``(W₁ a + W₂ a) / 2`` reading the
    same features, ``c_i = a_i (w₁_ti + w₂_ti) / 2``.  Several logit layers must all read the same ``a``.
    """

    def _logit_layers(self, graph: ModelGraph) -> list[Op]:
        """The layers producing the logits (behind the head ops of the class docstring)."""
        layers: dict[str, Op] = {}
        pending = [graph.by_name[graph.output_name].inputs[0]]
        while pending:
            op = graph.by_name[pending.pop()]
            if op.inputs and (_is_head_op(op) or op.affine):
                pending.append(op.inputs[0])
            elif op.kind == ADD:
                pending.extend(op.inputs)
            else:
                layers[op.name] = _checked_logit_layer(op)
        reads = {op.inputs[0] for op in layers.values()}
        if len(reads) > 1:
            names = ", ".join(f"'{op.path}'" for op in layers.values())
            raise UnsupportedLayerError(
                next(iter(layers.values())).path, "sum of logit layers", "RAP",
                f"The logits add the outputs of {names}, which read different features; RAP splits the target "
                "logit over the input of one logit layer, or of several that read the same features.",
            )
        return list(layers.values())

    def layer(self, graph: ModelGraph) -> str:
        return self._logit_layers(graph)[0].inputs[0]

    def relevance(self, record: ForwardRecord, targets: Tensor, graph: ModelGraph, display: str) -> Tensor:
        with torch.enable_grad():
            picked = record.logits.gather(1, targets[:, None]).sum()
            (grad,) = torch.autograd.grad(picked, record.seed)
        return rap_balance(record.seed.detach() * grad)

    def total(self, relevance: Tensor) -> Tensor:
        """Exactly 0 where the logit has contributions of both signs (masses 1 and −1), else ±1: the
        rounded seed's own sum is off by its rounding, and RAP's maps depend strongly on the total."""
        flat = relevance.reshape(relevance.shape[0], -1)
        return (flat > 0).any(dim=1).double() - (flat < 0).any(dim=1).double()


def _checked_logit_layer(op: Op) -> Op:
    """``op``, which a logit of RAP comes from, if it is a Linear layer or a hidden convolution."""
    if op.kind == INPUT_CONV:
        raise UnsupportedLayerError(
            op.path, op.type_name, "RAP",
            "The convolution producing the logits reads the image, so RAP has no layers to propagate through.",
        )
    if op.kind not in (LINEAR, CONV):
        raise UnsupportedLayerError(
            op.path, op.type_name, "RAP", op.unsupported or
            "RAP splits the target logit at the Linear layer or convolution that produces the logits, "
            "reached from the output through flattens, identities, dropouts, ReLUs, average pooling, scalings "
            "by constants and sums only; this model's logits come from another operation.",
        )
    return op


def _is_head_op(op: Op) -> bool:
    """A parameter-free, piecewise-linear op between the logit layer and the output."""
    if op.kind in (LAYOUT, AVGPOOL):
        return True
    relu = isinstance(op.module, nn.ReLU) or op.module is None and op.type_name in ("F.relu", "torch.relu", "Tensor.relu")
    return op.kind == POINTWISE and (relu or isinstance(op.module, (nn.Identity, nn.Dropout)))
