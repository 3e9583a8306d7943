"""Where relevance starts: the seed layer and the channel contribution map (algorithms.md §3)."""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from .graph import ADD, BATCHNORM, CAT, CONV, POINTWISE, ModelGraph

# The authors' seed layers where they differ from the automatic choice (quirk Q27).
_AUTHORS_SEED_LAYERS = {"DenseNet": "features", "AlexNet": "features"}


def default_seed_layer(graph: ModelGraph) -> str:
    """Output of the last convolutional block: the last conv, followed forward through BatchNorm,
    activations, residual adds and concatenations, stopping before pooling or flattening.

    VGG-16 gives ``features.29`` (before the last max-pool), ResNet the output of ``layer4``,
    DenseNet the ReLU after ``features.norm5``, Inception-v3 ``Mixed_7c``.
    """
    feeds_output = graph.ancestors(graph.output_name)
    convs = [op for op in graph.ops if op.kind == CONV and op.name in feeds_output]
    if not convs:
        raise ValueError(f"{type(graph.model).__name__} has no Conv2d layer: no seed layer can be chosen.")
    current = convs[-1].name
    while True:
        users = [u for u in graph.consumers[current] if u in feeds_output]
        if len(users) != 1 or graph.by_name[users[0]].kind not in (BATCHNORM, POINTWISE, ADD, CAT):
            return current
        current = users[0]


def authors_seed_layer(model: nn.Module, graph: ModelGraph) -> str:
    """The seed layer the authors' scripts use for this architecture (reference mode)."""
    layer = _AUTHORS_SEED_LAYERS.get(type(model).__name__)
    return graph.resolve(layer) if layer else default_seed_layer(graph)


def channel_contribution(activation: Tensor, grad: Tensor) -> Tensor:
    """``S = A ⊙ mean_{h,w}(∂y_t/∂A)``: no ReLU, no channel sum. (N, C, h, w) -> (N, C, h, w)."""
    return activation * grad.mean(dim=(2, 3), keepdim=True)
