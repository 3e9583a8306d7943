"""The canonical operations a traced model consists of: their kinds (the keys of a rule table) and what
rules need of them (:class:`ConvSpec`, :class:`LinearSpec`, :class:`BatchNormSpec`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from ...rules.conv_ops import ConvGeometry
from ...rules.structural import PoolWindows
from ...rules import lrp as lrp_rules

# Kinds of operation a rule table maps to rules.
CONV = "conv"
INPUT_CONV = "input conv"  # a convolution reading the image (through padding / activations only)
LINEAR = "linear"
BATCHNORM = "batchnorm"  # BatchNorm1d / 2d, SyncBatchNorm and F.batch_norm in eval mode
NORM = "norm"  # LayerNorm, GroupNorm, InstanceNorm2d (channels-first or channels-last): a fixed per-sample affine map
POINTWISE = "pointwise"  # activations, dropout, identity, scaling by a constant: relevance passes unchanged
GATE = "gate"  # x * g: a signal times a gate (sigmoid-type); relevance goes to the signal only
MAXPOOL = "maxpool"
AVGPOOL = "avgpool"  # any linear averaging pool (avg, adaptive avg)
LAYOUT = "layout"  # flatten, view, reshape, permute, slicing: relevance follows the adjoint
SPLIT = "split"  # chunk / split into a tuple: its items are sliced views (LAYOUT ops reading the input)
PAD = "pad"  # zero / reflection / replication padding: relevance follows the adjoint, the map stays (N, C, H, W)
ADD = "add"  # a + b, or a - b (``negated``): the sum of two contributions
CAT = "cat"
INPUT = "input"
OUTPUT = "output"
STRUCTURAL = "structural"  # parameters, shapes, sizes, shape arithmetic: no relevance
UNKNOWN = "unknown"
CHANNELS_LAST = (0, 2, 3, 1)  # a permute to (N, H, W, C)


@dataclass(frozen=True)
class BatchNormSpec:
    """Eval-mode BatchNorm parameters of an ``F.batch_norm`` call, read at call time; it has the attributes
    of an ``nn.BatchNorm2d`` that folding reads (``running_mean``, ``running_var``, ``weight``, ``bias``, ``eps``)."""

    getters: dict[str, Callable[[], Any]]

    def __getattr__(self, name: str) -> Any:
        getters = object.__getattribute__(self, "getters")
        if name in getters:
            return getters[name]()
        raise AttributeError(name)


@dataclass(frozen=True)
class LayerNormSpec:
    """A LayerNorm (``nn.LayerNorm`` or an ``F.layer_norm`` call): it normalises the trailing dimensions
    ``shape``; ``weight`` and ``bias`` return γ and β (or None), read at call time."""

    shape: tuple[int, ...]
    weight: Callable[[], Optional[Tensor]]
    bias: Callable[[], Optional[Tensor]]
    eps: float


def _folded(
    weight: Tensor, bias: Optional[Tensor], batchnorm: Optional[Any], fold_batchnorm: bool
) -> tuple[Tensor, Optional[Tensor]]:
    """``(weight, bias)``, or with ``fold_batchnorm`` those of ``batchnorm(layer(x))`` where there is one
    (a BatchNorm without running statistics is refused when classified, so every one here has them)."""
    if not fold_batchnorm or batchnorm is None:
        return weight, bias
    return lrp_rules.fold_batchnorm(weight, bias, batchnorm)


@dataclass(frozen=True)
class LinearSpec:
    """Parameter getters of a dense layer (``nn.Linear`` or ``F.linear``): weight (out, in), bias (out,) or None.

    ``batchnorm`` is the BatchNorm (``nn.BatchNorm1d``) that is the layer's only reader, if any: rules that
    fold it see the parameters of ``bn(linear(x))``.  ``batchnorm_before`` is a BatchNorm whose output only
    this layer reads (through dropout): the op then reads the BatchNorm's input, and its parameters are
    always those of ``linear(bn(x))``.
    """

    weight: Callable[[], Tensor]
    bias: Callable[[], Optional[Tensor]]
    batchnorm: Optional[Any] = None  # a BatchNorm module or a BatchNormSpec
    batchnorm_before: Optional[Any] = None  # the same kinds

    def parameters(self, fold_batchnorm: bool) -> tuple[Tensor, Optional[Tensor]]:
        """Weight (out, in) and bias (out,) or None; with ``fold_batchnorm`` those of ``bn(linear(x))``."""
        weight, bias = self.weight(), self.bias()
        if self.batchnorm_before is not None:
            weight, bias = lrp_rules.fold_batchnorm_before(weight, bias, self.batchnorm_before)
        return _folded(weight, bias, self.batchnorm, fold_batchnorm)


@dataclass(frozen=True)
class ConvSpec:
    """What the rules need of a 2-d convolution: its geometry and parameter getters (read at call time,
    so a user who edits the weights after construction is explained with the new ones).

    ``batchnorm`` is the BatchNorm that is the convolution's only reader, if any: rules that fold it
    see the parameters of ``bn(conv(x))``.
    """

    geometry: ConvGeometry
    weight: Callable[[], Tensor]
    bias: Callable[[], Optional[Tensor]]
    batchnorm: Optional[Any] = None  # a BatchNorm module or a BatchNormSpec

    def parameters(self, fold_batchnorm: bool) -> tuple[Tensor, Optional[Tensor]]:
        """Kernel (O, C/g, kh, kw) and bias (O,) or None; with ``fold_batchnorm`` those of ``bn(conv(x))``."""
        return _folded(self.weight(), self.bias(), self.batchnorm, fold_batchnorm)


@dataclass
class Op:
    """One traced, canonical operation.

    ``inputs`` are the ops whose activations feed this op, in argument order (repeats kept):
    relevance flows back to these, except to the ``gate`` input of a multiplicative gate (a Linear layer
    with a BatchNorm folded in front, ``linear.batchnorm_before``, lists the BatchNorm's input).  ``reads``
    are all ops it reads, structural ones included.  ``module`` is the leaf module of a module call.
    Canonical attributes: ``conv`` (convolutions), ``linear`` (dense layers), ``norm`` (an
    ``F.batch_norm`` call), ``pool`` (max pooling windows), ``dim`` (concatenation), ``gate`` (the
    index in ``inputs`` of a gate's multiplier), ``channels_last`` (the output is laid out (N, H, W, C);
    on a convolution: a Linear over the channels of such a map, which rules see as a 1×1 convolution
    on (N, C, H, W)), ``via`` (an item of a chunk / split: the op that splits ``inputs[0]``),
    ``negated`` (the index in ``inputs`` of a difference's subtrahend: 1 for ``a - b``),
    ``image_chain`` (for an input convolution: the ops between the image and it, in forward order),
    ``pads_before`` (for a convolution or an average pooling: the zero-padding ops feeding it directly, in
    forward order,
    and ``unpadded``, the op they pad), ``unsupported`` (why no rule can apply, e.g. a non-zero
    padding mode), ``attends`` (a product of two feature maps contracted over a dimension, as attention's
    ``q @ k.transpose(-2, -1)``: the model is out of scope wherever it sits), ``layer_norm`` (a LayerNorm's
    parameters), ``affine`` (the output is an
    affine function of the one feature map read, with constants or parameters: ``x * c``, ``x / c``, ``x ± c``).
    """

    name: str
    kind: str
    path: str
    type_name: str
    inputs: tuple[str, ...]
    reads: tuple[str, ...]
    module: nn.Module | None = None
    conv: ConvSpec | None = None
    linear: LinearSpec | None = None
    norm: BatchNormSpec | None = None
    layer_norm: LayerNormSpec | None = None
    pool: PoolWindows | None = None
    dim: int = 0
    gate: int = -1
    negated: int = -1
    channels_last: bool = False
    via: str = ""
    pads_before: tuple[str, ...] = ()
    unpadded: str = ""
    image_chain: tuple["Op", ...] = ()
    unsupported: str = ""
    attends: bool = False
    affine: bool = False
    _node: fx.Node | None = field(default=None, repr=False)

    @property
    def relevance_inputs(self) -> tuple[str, ...]:
        """The inputs relevance flows back to (all but a gate's multiplier)."""
        return tuple(name for i, name in enumerate(self.inputs) if i != self.gate)

