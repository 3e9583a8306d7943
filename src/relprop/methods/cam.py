"""Class activation maps: Grad-CAM (with Captum) and Grad-CAM++.

A CAM method weighs the channels of one convolutional layer's output ``A`` (N, K, h, w) by
gradients of the target logit, giving a coarse (N, 1, h, w) map.  To honour relprop's contract
(an attribution of ``x``'s shape) the map is upsampled to the input's height and width with
bilinear interpolation (``F.interpolate(..., mode="bilinear", align_corners=False)``, what Captum's
``LayerAttribution.interpolate`` does with ``"bilinear"``) and the same map is repeated in every
input channel: each channel equals the upsampled CAM, so summing over C gives C × CAM.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import RelpropError
from ..engine import ModelGraph, default_seed_layer, record_forward
from ..engine.graph import BranchesOnInput, probe_example
from ..model_state import refuse_attention, refuse_torchscript
from ..registry import register
from .gradient import AutogradMethod


class ClassActivationMap(AutogradMethod):
    """Base of the CAM methods: picks the layer, upsamples and broadcasts the (N, 1, h, w) map.

    Args:
        model: the classifier; it is never modified (forward hooks live for one call only).
        layer: module path of the layer whose output is ``A`` (e.g. ``"layer4"``, ``"features.29"``).
            Default: the output of the last convolutional block, the layer RSP seeds from. That
            layer is sometimes a function call rather than a module (DenseNet's final ``F.relu``);
            CAM needs a module, so the module producing the call's input is taken instead, walking
            back through single-input operations (DenseNet: ``"features"``, the activations
            before that ReLU). The chosen path is stored in ``self.layer``. A module called several
            times in one forward pass (EfficientNet's shared ``_swish``) contributes its last call,
            as in Captum.  A model with attention (a vision transformer) is refused when ``layer`` is
            not given: its only convolutional layer is the patch embedding, below the whole transformer;
            so is a network whose default layer lies below attention that its class name does not
            announce (timm's EdgeNeXt: a product of two feature maps above the last convolution), and,
            on the first batch (shapes are known only then), a network whose Linear layers above that layer
            mix a sequence of tokens (MLP-Mixer, ResMLP: the default layer would be the patch embedding).
            A layer with a channels-last (N, h, w, C) output is refused: a CAM weighs the channels of an
            (N, C, h, w) map.  A TorchScript model is refused: forward hooks do not reach its compiled layers.
    """

    def __init__(self, model: nn.Module, layer: str | None = None) -> None:
        super().__init__(model)
        refuse_torchscript(self.model, self.name)
        if layer is None:
            refuse_attention(self.model, self.name)
        if layer is not None and not isinstance(layer, str):
            raise TypeError(f"layer must be a module path (a str such as 'layer4'); got {type(layer).__name__}.")
        self._unchecked_graph: ModelGraph | None = None  # of the default layer, until checked for token mixing
        if layer is not None and _is_module_path(self.model, layer):
            self.layer = layer
        else:
            self.layer, graph = _module_layer(self.model, layer, self.name)
            self._unchecked_graph = graph if layer is None else None
        self.layer_module = self.model.get_submodule(self.layer)

    def _attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        if self._unchecked_graph is not None:
            _refuse_token_mixing(self._unchecked_graph, x, self.name)
            self._unchecked_graph = None
        cam = self._layer_map(x, targets)
        upsampled = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)
        return upsampled.expand_as(x).contiguous()

    def _layer_map(self, x: Tensor, targets: Tensor) -> Tensor:
        """The coarse map (N, 1, h, w) at ``self.layer``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__}, layer={self.layer!r})"


def _is_module_path(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return path != ""


def _refuse_token_mixing(graph: ModelGraph, x: Tensor, method: str) -> None:
    """Raise :class:`~relprop.UnsupportedLayerError` if a Linear layer above the default CAM layer of ``graph``'s
    model is applied to a token sequence, by the shapes of one forward pass on ``x`` (N, C, H, W) (through a
    graph traced for ``x``'s shape when ``graph`` was traced for another)."""
    if graph.example is not None and graph.example != (x.shape, x.dtype, x.device):
        graph = ModelGraph(graph.model, (x.shape, x.dtype, x.device))
    layer = default_seed_layer(graph)
    with torch.no_grad():
        shapes = record_forward(graph, x.detach(), layer, keep=set(), replay=set()).shapes
    graph.refuse_linear_over_tokens(shapes, method, above=layer)


def _module_layer(model: nn.Module, layer: str | None, method: str) -> tuple[str, ModelGraph]:
    """Module path whose output is op ``layer`` (default: the automatic seed layer, refused below
    attention), or of the module producing its input when the op is a function call; with the graph."""
    try:
        graph = ModelGraph(model)
    except BranchesOnInput:  # forward() branches on the input's shape: module paths do not depend on it
        graph = ModelGraph(model, probe_example(model))
    if layer is not None:
        name = graph.resolve(layer, "layer")
    else:
        name = default_seed_layer(graph)
        graph.refuse_attention(method, above=name)
    current = name
    while (path := graph.producing_module(current)) is None:
        inputs = graph.by_name[current].inputs
        if len(inputs) != 1 or inputs[0] == graph.input_name:
            if layer is None:  # the last convolution sits inside attention (CoaT's positional encoding): say so
                graph.refuse_attention(method)
            raise ValueError(
                f"layer '{graph.display_name(name)}' of {type(model).__name__} is not produced by a module; "
                "pass layer='module.path' naming a module."
            )
        current = inputs[0]
    if graph.by_name[current].channels_last:
        raise ValueError(
            f"layer '{path}' of {type(model).__name__} outputs a channels-last (N, h, w, C) map; a CAM weighs the "
            "channels of an (N, C, h, w) map: pass layer='module.path' naming a layer with such an output."
        )
    return path, graph


@register("gradcam")
class GradCAM(ClassActivationMap):
    """Grad-CAM (Selvaraju et al. 2017) with Captum's ``LayerGradCam``:
    ``ReLU(Σ_k mean_hw(∂y_t/∂A_k) · A_k)``, upsampled and broadcast as described in :mod:`relprop.methods.cam`.
    Non-negative."""

    name = "Grad-CAM"

    def _layer_map(self, x: Tensor, targets: Tensor) -> Tensor:
        from captum.attr import LayerGradCam

        return LayerGradCam(self.model, self.layer_module).attribute(x, target=targets, relu_attributions=True)


@register("gradcampp")
class GradCAMPlusPlus(ClassActivationMap):
    """Grad-CAM++ (Chattopadhay et al. 2018), with the paper's closed form for an exponential
    output ``S = exp(y_t)``: with ``g = ∂y_t/∂A``,

        α_k(i, j) = g_k(i, j)² / (2 g_k(i, j)² + Σ_ab A_k(a, b) · g_k(i, j)³)   (0 where the denominator is 0)
        w_k = Σ_ij α_k(i, j) · ReLU(g_k(i, j)),   map = ReLU(Σ_k w_k A_k).

    The common factor ``exp(y_t)`` of ``∂S/∂A`` is dropped (it only scales the map and overflows
    for large logits). Non-negative; upsampled and broadcast as described in :mod:`relprop.methods.cam`.
    """

    name = "Grad-CAM++"

    def _layer_map(self, x: Tensor, targets: Tensor) -> Tensor:
        a, g = self._activation_and_gradient(x, targets)
        g2 = g * g
        denominator = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g2 * g
        nonzero = denominator != 0
        alpha = torch.where(nonzero, g2 / torch.where(nonzero, denominator, torch.ones_like(denominator)), 0.0)
        weights = (alpha * g.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
        return (weights * a).sum(dim=1, keepdim=True).clamp(min=0)

    def _activation_and_gradient(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Output ``A`` (N, K, h, w) of the layer's last call and ``∂y_t/∂A`` (one forward hook, removed at once)."""
        outputs: list[Tensor] = []
        handle = self.layer_module.register_forward_hook(lambda module, inputs, output: outputs.append(output))
        try:
            logits = self.model(x)
        finally:
            handle.remove()
        if not outputs or not isinstance(outputs[-1], Tensor) or outputs[-1].dim() != 4:
            raise RelpropError(f"layer '{self.layer}' must return an (N, K, h, w) tensor; pass another layer=.")
        picked = logits.gather(1, targets[:, None]).sum()
        (grad,) = torch.autograd.grad(picked, outputs[-1], allow_unused=True)
        if grad is None:
            raise RelpropError(f"layer '{self.layer}' does not feed the model's logits; pass another layer=.")
        return outputs[-1].detach(), grad
