"""Map each torch.fx node to a canonical :class:`Op`: which kind of operation it is (the catalogue of
modules, functions and methods relprop knows) and its parameters and geometry."""

from __future__ import annotations

import functools
import operator
import sys
from typing import Any, Callable, Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ...errors import RelpropError
from ...rules.conv_ops import ConvGeometry
from ...rules.structural import PoolWindows
from .ops import (
    ADD, AVGPOOL, BATCHNORM, CAT, CHANNELS_LAST, CONV, GATE, INPUT, LAYOUT, LINEAR, MAXPOOL, NORM, OUTPUT, PAD,
    POINTWISE, SPLIT, STRUCTURAL, UNKNOWN, BatchNormSpec, ConvSpec, LayerNormSpec, LinearSpec, Op,
)

_GATE_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Tanh)
_GATE_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.hardsigmoid, torch.tanh, F.tanh}
_GATE_METHODS = {"sigmoid", "sigmoid_", "tanh", "tanh_"}
_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish,
    nn.Softplus, nn.LogSigmoid, nn.Softsign, nn.Tanhshrink, nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.Identity,
    *_GATE_MODULES,
)
_POINTWISE_FUNCTIONS = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.silu, F.gelu,
    F.hardswish, F.mish, F.softplus, F.hardtanh, F.rrelu, F.logsigmoid, F.softsign, F.tanhshrink, torch.clamp,
    F.dropout, F.dropout2d, torch.dropout, operator.neg, torch.neg, torch.square, *_GATE_FUNCTIONS,
}
_POINTWISE_METHODS = {
    "relu", "relu_", "contiguous", "clone", "clamp", "clamp_", "clamp_min", "clamp_min_", "neg", "neg_", "square",
    *_GATE_METHODS,
}
# x * c, x / c, x - c, x ** c (with c a constant or parameter: elementwise maps) and their forms with two activations
_SCALE_FUNCTIONS = {
    operator.mul, operator.imul, torch.mul, operator.truediv, operator.itruediv, torch.div, operator.sub, torch.sub,
    operator.pow, torch.pow,
}
_SCALE_METHODS = {"mul", "mul_", "div", "div_", "sub", "sub_", "pow"}
MAXPOOL_FUNCTIONS = {F.max_pool2d, torch.max_pool2d}
_GLOBAL_MAX_FUNCTIONS = {F.adaptive_max_pool2d, torch.amax}
_AVGPOOL_FUNCTIONS = {F.avg_pool2d, torch._C._nn.avg_pool2d, F.adaptive_avg_pool2d, torch.mean, torch.sum}
_AVGPOOL_METHODS = {"mean", "sum"}
# Normalisations with per-sample statistics (or fixed ones): a per-sample affine map once they are held fixed
# (local response normalisation: a per-element scale).
_NORM_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d, nn.LocalResponseNorm)
# (F.normalize: division by the p-norm along a dimension, a per-sample scale once the norm is held fixed.)
_NORM_FUNCTIONS = {F.layer_norm, F.group_norm, F.instance_norm, F.local_response_norm, F.normalize}
# BatchNorm in eval mode with running statistics is a fixed per-channel affine map (on (N, C) or (N, C, H, W)).
_BATCHNORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)
_BATCH_STATISTICS = (
    "{written} in training mode or without running statistics (track_running_stats=False) normalises with the "
    "statistics of the batch, so a sample's output depends on the others; relprop explains BatchNorm with "
    "running statistics, in eval mode."
)
# Ops that return their input unchanged in eval mode (a BatchNorm before them can be folded into a Linear layer).
_IDENTITY_IN_EVAL_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity)
# In-place functions and the out-of-place twins relprop runs instead (a tensor a rule needs must not change).
INPLACE_FUNCTION_TWINS = {
    operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
    operator.itruediv: operator.truediv, F.relu_: F.relu, torch.relu_: torch.relu, torch.sigmoid_: torch.sigmoid,
    torch.tanh_: torch.tanh,
}
_IDENTITY_IN_EVAL_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout, torch.dropout}
_LINEAR_FUNCTIONS = {F.linear}
# Ops that move, select or copy entries (relevance follows the adjoint: a copy's relevance returns to its source).
_LAYOUT_FUNCTIONS = {
    torch.flatten, torch.unflatten, torch.reshape, torch.permute, torch.transpose, torch.unsqueeze, torch.squeeze,
    operator.getitem, torch.flip, torch.fliplr, torch.flipud, torch.rot90, torch.roll, torch.tile,
    torch.pixel_shuffle, torch.pixel_unshuffle, torch.channel_shuffle,
}
_LAYOUT_METHODS = {
    "view", "reshape", "flatten", "unflatten", "permute", "transpose", "unsqueeze", "squeeze", "expand", "expand_as",
    "flip", "fliplr", "flipud", "rot90", "roll", "repeat", "tile",
}
_LAYOUT_MODULES = (nn.Flatten, nn.Unflatten, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle)
_SPLIT_FUNCTIONS = {torch.chunk, torch.split, torch.tensor_split}
_SPLIT_METHODS = {"chunk", "split", "tensor_split"}
# Functions of other libraries, by (module, name): torchvision's stochastic depth (identity in eval mode) and
# timm's dynamic "same" padding (traced as one call, see trace.trace_model).
_THIRD_PARTY_POINTWISE = {("torchvision.ops.stochastic_depth", "stochastic_depth")}
_THIRD_PARTY_PAD = {("timm.layers.padding", "pad_same")}
# Modules of other libraries that tracing keeps as one call (leaves), by (module, class name): torchvision's
# Normalize transform put in front of a model, whose F.normalize refuses a traced value; it is a fixed
# per-channel affine map, so relevance passes it unchanged.
_THIRD_PARTY_POINTWISE_MODULES = {
    ("torchvision.transforms.transforms", "Normalize"), ("torchvision.transforms.v2._misc", "Normalize"),
}
_STRUCTURAL_METHODS = {"size", "dim", "numel", "type_as", "element_size"}
_STRUCTURAL_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "is_cuda", "layout"}
_SOFTMAX_MODULES = (nn.Softmax, nn.LogSoftmax)
_SOFTMAX_FUNCTIONS = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax}
_SOFTMAX_METHODS = {"softmax", "log_softmax"}
# Products contracted over a dimension.  Of two feature maps: attention's scores q·kᵀ and their weighting of the
# values.  Of a feature map and a matrix computed from parameters only (x @ W): a dense layer.
_CONTRACTION_FUNCTIONS = {
    operator.matmul, torch.matmul, torch.mm, torch.bmm, torch.baddbmm, torch.einsum, F.scaled_dot_product_attention,
}
_CONTRACTION_METHODS = {"matmul", "mm", "bmm", "baddbmm", "__matmul__"}
_DENSE_CONTRACTIONS = {operator.matmul, torch.matmul, torch.mm, "matmul", "mm", "__matmul__"}

# Padding that adds zeros or copies of input entries (reflection, replication, circular): the adjoint of its
# replay hands the copies' relevance back to the entries copied.
_COPYING_PADS = (nn.ZeroPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.CircularPad2d)
_CONV_FUNCTIONS = {F.conv2d, torch.conv2d}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_"}


def _target_key(target: Any) -> tuple[str, str]:
    return getattr(target, "__module__", "") or "", getattr(target, "__name__", "")


def _loaded(names: set[tuple[str, str]]) -> list[Any]:
    """The objects named (module, name) of the libraries already imported (relprop imports none of them)."""
    found = []
    for module_name, name in sorted(names):
        module = sys.modules.get(module_name)
        if module is not None and getattr(module, name, None) is not None:
            found.append(getattr(module, name))
    return found


def traced_as_one_call() -> tuple[Callable[..., Any], ...]:
    """Third-party functions that tracing keeps as one call, of the libraries the model has already imported
    (timm's dynamic "same" padding, which reads the input size)."""
    return tuple(f for f in _loaded(_THIRD_PARTY_PAD) if callable(f))


def leaf_module_types() -> tuple[type, ...]:
    """Third-party module types that tracing keeps as one call (torchvision's ``Normalize`` transform)."""
    return tuple(t for t in _loaded(_THIRD_PARTY_POINTWISE_MODULES) if isinstance(t, type))


def is_identity_in_eval(op: Op) -> bool:
    """Whether ``op`` returns its input unchanged in eval mode (dropout, ``nn.Identity``)."""
    if op.module is not None:
        return isinstance(op.module, _IDENTITY_IN_EVAL_MODULES)
    return op._node is not None and op._node.op == "call_function" and op._node.target in _IDENTITY_IN_EVAL_FUNCTIONS


def module_stack(node: fx.Node) -> list[str]:
    """Paths of the modules a traced node lies in, outermost first."""
    return [path for path, _ in (node.meta.get("nn_module_stack") or {}).values()]


def _activation_inputs(node: fx.Node, structural: set[str]) -> tuple[str, ...]:
    """Input nodes that carry activations, in argument order, repeats kept (``x + x`` lists ``x`` twice).

    Parameters fetched by ``get_attr`` and structural values (shapes, sizes) are left out.
    """
    found: list[str] = []

    def visit(n: fx.Node) -> fx.Node:
        if n.op != "get_attr" and n.name not in structural:
            found.append(n.name)
        return n

    fx.node.map_arg((node.args, node.kwargs), visit)
    return tuple(found)


def _module_path(node: fx.Node) -> str:
    stack = module_stack(node)
    if node.op == "call_module":
        return str(node.target)
    return stack[-1] if stack else node.name


def enclosing_type(node: fx.Node) -> str:
    """Class name of the innermost module a function call was traced in ('' at the top level)."""
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    if not stack:
        return ""
    cls = stack[-1][1]
    return getattr(cls, "__name__", str(cls).rsplit(".", 1)[-1])


def written_call(node: fx.Node) -> str:
    """The function or method called as the user wrote it: ``F.pad``, ``torch.cat``, ``Tensor.view``, ``operator.getitem``."""
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    target = node.target
    name = getattr(target, "__name__", str(target))
    module = getattr(target, "__module__", "") or ""
    return next((p for m, p in _WRITTEN_PREFIXES if module.startswith(m)), "") + name


def _written_name(node: fx.Node) -> str:
    """:func:`written_call` and the class of the module it was traced in: ``F.pad (in Conv2dSame)``."""
    written, enclosing = written_call(node), enclosing_type(node)
    return f"{written} (in {enclosing})" if enclosing else written


# torch._C._nn holds the functions torch.nn.functional exports as they are (F.gelu, F.linear, F.avg_pool2d, ...)
_WRITTEN_PREFIXES = (("torch.nn.functional", "F."), ("torch._C._nn", "F."), ("_operator", "operator."), ("operator", "operator."), ("torch", "torch."))


def classify_node(node: fx.Node, model: nn.Module, structural: set[str]) -> Op:
    """Map one fx node to a canonical :class:`Op`; ``structural`` names the structural ops before it."""
    path = _module_path(node)
    inputs = _activation_inputs(node, structural)
    reads = tuple(n.name for n in node.all_input_nodes)

    def make(kind: str, type_name: str, **kw: Any) -> Op:
        return Op(node.name, kind, path, type_name, inputs, reads, _node=node, **kw)

    if node.op == "placeholder":
        return make(INPUT, "input")
    if node.op == "output":
        return make(OUTPUT, "output")
    if node.op == "get_attr":
        return make(STRUCTURAL, "parameter")
    if node.op == "call_module":
        module = model.get_submodule(str(node.target))
        if not inputs:  # reads no activation (a positional encoding's projection): a constant of the graph
            return make(STRUCTURAL, type(module).__name__, module=module)
        return _classify_module(module, make, feeds_output=_feeds_output(node))
    if node.op == "call_method" and node.target in _STRUCTURAL_METHODS:
        return make(STRUCTURAL, _written_name(node))
    if node.target is getattr and len(node.args) > 1 and node.args[1] in _STRUCTURAL_ATTRIBUTES:
        return make(STRUCTURAL, f"Tensor.{node.args[1]}")
    if not inputs:  # computed from shapes, sizes or parameters only
        return make(STRUCTURAL, _written_name(node))
    written = _written_name(node)
    target = node.target
    if target in _SOFTMAX_FUNCTIONS or (node.op == "call_method" and target in _SOFTMAX_METHODS):
        return make(UNKNOWN, written, unsupported=_softmax_reason(_feeds_output(node)))
    if target in _CONTRACTION_FUNCTIONS or (node.op == "call_method" and target in _CONTRACTION_METHODS):
        if len(inputs) > 1:
            return make(UNKNOWN, written, attends=True)
        if target in _DENSE_CONTRACTIONS:
            return _matrix_product_as_linear(node, model, inputs, written, make, structural)
        return make(UNKNOWN, written)
    if target in _SCALE_FUNCTIONS or (node.op == "call_method" and target in _SCALE_METHODS):
        return _classify_product(node, model, inputs, written, make, structural)
    if target is torch.addcmul or (node.op == "call_method" and target == "addcmul"):
        return _classify_addcmul(inputs, written, make)
    if target in _ADD_FUNCTIONS or node.op == "call_method" and target in _ADD_METHODS:
        if "alpha" in node.kwargs:
            return make(UNKNOWN, f"{written}(alpha=...)")
        return make(ADD, written) if len(inputs) == 2 else make(POINTWISE, written, affine=True)
    if node.op == "call_method":
        for kind, methods in _METHOD_KINDS:
            if target in methods:
                return make(kind, written)
        return make(UNKNOWN, written)
    if target in _CONV_FUNCTIONS:
        return make(CONV, written, **_conv_of_call(node, model, structural))
    if target in _LINEAR_FUNCTIONS:
        return _linear_of_call(node, model, written, make, structural)
    if target is F.batch_norm:
        return _batchnorm_of_call(node, model, written, make)
    if target is F.interpolate:
        return _classify_resize(str(_argument(node, 3, "mode", "nearest")), written, make)
    key = _target_key(target)
    if target in _POINTWISE_FUNCTIONS or key in _THIRD_PARTY_POINTWISE:
        return make(POINTWISE, written)
    if key in _THIRD_PARTY_PAD:
        return _classify_constant_pad(node, _argument(node, 4, "value", 0), written, make)
    if target is F.layer_norm:
        return _layer_norm_of_call(node, model, written, make)
    for kind, functions in _FUNCTION_KINDS:
        if target in functions:
            return make(kind, written)
    if target in MAXPOOL_FUNCTIONS:
        bound = dict(zip(["input", "kernel_size", "stride", "padding", "dilation"], node.args))
        bound.update(node.kwargs)
        pool = _pool_windows(bound["kernel_size"], bound.get("stride"), bound.get("padding", 0), bound.get("dilation", 1))
        return make(MAXPOOL, written, pool=pool)
    if target is F.pad:
        return _classify_constant_pad(node, _pad_value(node), written, make)
    if target is torch.cat:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        return make(CAT, written, dim=dim)
    return make(UNKNOWN, written)


_METHOD_KINDS = (
    (POINTWISE, _POINTWISE_METHODS), (LAYOUT, _LAYOUT_METHODS), (AVGPOOL, _AVGPOOL_METHODS),
    (MAXPOOL, {"amax"}), (SPLIT, _SPLIT_METHODS),
)
_FUNCTION_KINDS = (
    (AVGPOOL, _AVGPOOL_FUNCTIONS), (MAXPOOL, _GLOBAL_MAX_FUNCTIONS), (NORM, _NORM_FUNCTIONS),
    (LAYOUT, _LAYOUT_FUNCTIONS), (SPLIT, _SPLIT_FUNCTIONS),
)


def _classify_product(
    node: fx.Node, model: nn.Module, inputs: tuple[str, ...], written: str, make: Callable[..., Op], structural: set[str],
) -> Op:
    """``x * c``, ``x / c``, ``x - c``, ``x ** c`` with a constant or parameter ``c``: pointwise (relevance passes;
    MetaFormer's StarReLU is ``s * relu(x) ** 2 + b``), affine but for ``x ** c``;
    ``x * g`` with two activations: a gate, ``g`` being the operand computed by a sigmoid-type function
    (through views and expands), e.g. squeeze-and-excitation, ECA, SiLU written as ``x * sigmoid(x)``;
    ``a - b`` with two activations (PoolFormer's ``pool(x) - x``): the sum of ``a`` and ``-b``."""
    target = node.target
    is_product = target in (operator.mul, operator.imul, torch.mul, "mul", "mul_")
    data_first = isinstance(node.args[0], fx.Node) and node.args[0].name == inputs[0]
    if len(inputs) == 1 and (is_product or data_first):
        return make(POINTWISE, written, affine=target not in (operator.pow, torch.pow, "pow"))
    is_difference = target in (operator.sub, operator.isub, torch.sub, "sub", "sub_")
    if len(inputs) == 2 and is_difference and inputs[0] != inputs[1] and "alpha" not in node.kwargs:
        return make(ADD, written, negated=1)
    if len(inputs) == 2 and is_product and inputs[0] != inputs[1]:
        gate = _gate_operand(node, model, structural)
        if gate is not None:
            return make(GATE, written, gate=gate)
        return make(UNKNOWN, written, unsupported=(
            f"{written} multiplies two feature maps, neither (or both) of them a gate: computed by a sigmoid-type "
            "function (Sigmoid, Hardsigmoid, Tanh) or from channel statistics (a global pooling and what follows "
            "it); relprop explains products of a signal and one gate."
        ))
    return make(UNKNOWN, written)


def _classify_addcmul(inputs: tuple[str, ...], written: str, make: Callable[..., Op]) -> Op:
    """``torch.addcmul(b, w, t)`` = ``b + w · t`` reading one activation, the other operands being constants or
    parameters (ConvNeXt-V2's response normalisation ``β + γ · t``): a per-element affine map, pointwise like
    ``x * c + b``.  Reading two or three activations it is refused."""
    if len(inputs) == 1:
        return make(POINTWISE, written)
    return make(UNKNOWN, written, unsupported=(
        f"{written} reads {len(inputs)} feature maps; relprop explains addcmul(b, w, t) with one feature map "
        "among b, w, t and constants or parameters otherwise."
    ))


def _gate_operand(node: fx.Node, model: nn.Module, structural: set[str]) -> int | None:
    """Which operand of the product ``node`` (two activations) is a gate: the one computed by a sigmoid-type function
    (possibly through views / expands / reshapes and resizing: GhostNet-v2 upsamples its gate to the signal's
    size), else the one holding channel statistics (see :func:`_is_channel_statistic`: the softmax over branches
    of timm's ``SelectiveKernel`` and ResNeSt's ``SplitAttn``, ConvNeXt-V2's response normalisation
    ``‖x‖ / mean ‖x‖``); None if neither or both.  ``structural``: the ops computed from shapes and parameters."""
    operands = [arg for arg in node.args[:2] if isinstance(arg, fx.Node)]
    for is_gate in (_is_sigmoid_output, functools.partial(_is_channel_statistic, structural=structural)):
        gates = [i for i, arg in enumerate(operands) if is_gate(arg, model)]
        if gates:
            return gates[0] if len(gates) == 1 else None
    return None


def _is_sigmoid_output(node: fx.Node, model: nn.Module) -> bool:
    """Whether ``node`` is a sigmoid-type activation, possibly followed by views, expands, reshapes and resizing."""
    while True:
        if node.op == "call_module":
            module = model.get_submodule(str(node.target))
            if isinstance(module, _GATE_MODULES):
                return True
            if not isinstance(module, nn.Upsample):
                return False
        elif node.target in _GATE_FUNCTIONS or node.target in _GATE_METHODS:
            return True
        elif not (node.target is F.interpolate or node.target in _LAYOUT_METHODS or node.target in _LAYOUT_FUNCTIONS):
            return False
        if not node.args or not isinstance(node.args[0], fx.Node):
            return False
        node = node.args[0]


# What may lie between a global pooling and what reads it as one value per channel (a gate, a softmax over channels
# or branches): layers applied to the pooled vector (1×1 convolutions, Linear, BatchNorm, activations, softmax),
# views, arithmetic among such values and constants (ConvNeXt-V2's ‖x‖ / (mean ‖x‖ + ε)) and reductions of them.
_GLOBAL_POOLING_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.norm, torch.linalg.vector_norm}
_GLOBAL_POOLING_METHODS = {"mean", "sum", "amax", "norm"}
_NORM_REDUCTIONS = {torch.norm, torch.linalg.vector_norm, "norm"}  # dim is their third argument
_STATISTIC_MODULES = (
    nn.Conv2d, nn.Linear, *_BATCHNORM_MODULES, *_POINTWISE_MODULES, *_SOFTMAX_MODULES, nn.Flatten, nn.Unflatten,
)
_STATISTIC_FUNCTIONS = (
    _LAYOUT_FUNCTIONS | _POINTWISE_FUNCTIONS | _CONV_FUNCTIONS | _LINEAR_FUNCTIONS | _SCALE_FUNCTIONS | _ADD_FUNCTIONS
    | _SOFTMAX_FUNCTIONS | _GLOBAL_POOLING_FUNCTIONS | {F.batch_norm}
)
_STATISTIC_METHODS = (
    _LAYOUT_METHODS | _POINTWISE_METHODS | _SCALE_METHODS | _ADD_METHODS | _SOFTMAX_METHODS | _GLOBAL_POOLING_METHODS
)
_FROM_INPUTS = object()  # a statistic if what it reads is


def _is_channel_statistic(node: fx.Node, model: nn.Module, structural: set[str]) -> bool:
    """Whether ``node`` is computed from global spatial poolings (``x.mean((2, 3))``, ``adaptive_avg_pool2d(x, 1)``,
    ``x.norm(dim=(2, 3))``; the spatial dimensions of a channels-last map) through ops on the pooled values and
    constants only: one value per channel (or per branch) of each sample, which says how much of a channel
    passes, not where the evidence is.  A softmax of it weighs channels or branches, not positions (unlike
    attention pooling).  Shapes and parameters (``structural``) are constants."""
    verdicts: dict[fx.Node, Any] = {}  # True: a statistic; None: a constant; False: neither
    stack = [node]
    while stack:
        current = stack[-1]
        if current in verdicts:
            stack.pop()
            continue
        own = None if current.name in structural else _statistic_verdict(current, model)
        if own is not _FROM_INPUTS:
            verdicts[current] = own
            stack.pop()
            continue
        read = current.all_input_nodes
        pending = next((n for n in read if n not in verdicts), None)
        if any(verdicts.get(n) is False for n in read):
            verdicts[current] = False
        elif pending is not None:
            stack.append(pending)
            continue
        else:
            verdicts[current] = True if any(verdicts[n] for n in read) else None
        stack.pop()
    return verdicts[node] is True


def _statistic_verdict(node: fx.Node, model: nn.Module) -> Any:
    """True for a global spatial pooling, None for a parameter, False for what cannot lie on the way from a
    pooling to a channel statistic (the input, a pooling with a window, ...), else :data:`_FROM_INPUTS`."""
    if node.op == "get_attr":
        return None
    if node.op == "placeholder":
        return False
    if _is_global_pooling(node, model):
        return True
    if node.op == "call_module":
        return _FROM_INPUTS if isinstance(model.get_submodule(str(node.target)), _STATISTIC_MODULES) else False
    return _FROM_INPUTS if node.target in (_STATISTIC_METHODS if node.op == "call_method" else _STATISTIC_FUNCTIONS) else False


def _is_global_pooling(node: fx.Node, model: nn.Module) -> bool:
    """A mean, sum, maximum or norm over the two spatial dimensions (of a channels-first map, or of a channels-last
    one), or an adaptive pooling to 1×1."""
    if node.op == "call_module":
        module = model.get_submodule(str(node.target))
        return isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and _pair(module.output_size) == (1, 1)
    if node.target in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
        return _pair(_argument(node, 1, "output_size", None)) == (1, 1)
    if node.target in (_GLOBAL_POOLING_METHODS if node.op == "call_method" else _GLOBAL_POOLING_FUNCTIONS):
        dims = _argument(node, 2 if node.target in _NORM_REDUCTIONS else 1, "dim", None)
        dims = set(dims) if isinstance(dims, (list, tuple)) else {dims}
        if {2, 3} <= dims or {-2, -1} <= dims:
            return True
        return ({1, 2} == dims or {-3, -2} == dims) and _is_channels_last(node.args[0], model)
    return False


# Ops whose output has the layout of their (first) input.
_LAYOUT_KEEPING_MODULES = (*_POINTWISE_MODULES, *_NORM_MODULES, nn.Linear)
_LAYOUT_KEEPING_FUNCTIONS = _POINTWISE_FUNCTIONS | _SCALE_FUNCTIONS | _ADD_FUNCTIONS | _LINEAR_FUNCTIONS | {F.layer_norm}
_LAYOUT_KEEPING_METHODS = _POINTWISE_METHODS | _SCALE_METHODS | _ADD_METHODS


def _is_channels_last(node: Any, model: nn.Module) -> bool:
    """Whether ``node`` is a 4-d map laid out (N, H, W, C): a ``permute(0, 2, 3, 1)`` followed by ops that keep the
    layout (activations, LayerNorm, a Linear over the channels, arithmetic), as in ConvNeXt's MLP."""
    while isinstance(node, fx.Node):
        if node.op == "call_method" and node.target == "permute" or node.target is torch.permute:
            return permutation(node) == CHANNELS_LAST
        if node.op == "call_module":
            keeps = isinstance(model.get_submodule(str(node.target)), _LAYOUT_KEEPING_MODULES)
        else:
            keeps = node.target in (_LAYOUT_KEEPING_METHODS if node.op == "call_method" else _LAYOUT_KEEPING_FUNCTIONS)
        if not keeps or not node.args:
            return False
        node = node.args[0]
    return False


def _classify_resize(mode: str, type_name: str, make: Callable[..., Op], module: nn.Module | None = None) -> Op:
    """Nearest upsampling copies inputs (relevance follows the adjoint); bilinear averages them with
    non-negative weights (relevance shared like average pooling)."""
    if mode == "nearest":
        return make(LAYOUT, type_name, module=module)
    if mode == "bilinear":
        return make(AVGPOOL, type_name, module=module)
    return make(UNKNOWN, f"{type_name}(mode={mode!r})", module=module)


def _argument(node: fx.Node, position: int, name: str, default: Any) -> Any:
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(name, default)


def permutation(node: fx.Node) -> tuple[int, ...] | None:
    """The dimension order of a 4-d ``permute`` (``x.permute(0, 2, 3, 1)`` or ``torch.permute(x, [0, 2, 3, 1])``);
    None if unknown."""
    dims = node.args[1:] if node.op == "call_method" else node.args[1:2]
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = tuple(dims[0])
    if not all(isinstance(d, int) for d in dims):
        return None
    return tuple(d % 4 for d in dims) if len(dims) == 4 else None


def _parameter_getter(node: Any, model: nn.Module) -> Callable[[], Any]:
    """A getter of a parameter, of a value computed from parameters only (a standardised kernel), or of a
    constant argument; evaluated at each call, so edits to the weights after tracing are seen."""
    if isinstance(node, fx.Node):
        return lambda: _parameter_value(node, model)
    return lambda: node


def _parameter_value(node: fx.Node, model: nn.Module) -> Any:
    """The value of a node computed from parameters and constants only (no activation reaches it)."""
    if node.op == "get_attr":
        return functools.reduce(getattr, str(node.target).split("."), model)
    args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: _parameter_value(n, model))
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    if node.op == "call_module":
        return model.get_submodule(str(node.target))(*args, **kwargs)
    return node.target(*args, **kwargs)  # type: ignore[operator]


def _from_activations(values: Any, structural: set[str]) -> bool:
    """Whether a node among ``values`` is computed from the input (its activations, or its shape): not a
    parameter or a value computed from parameters only."""
    return any(isinstance(v, fx.Node) and (v.name not in structural or _reads_input(v)) for v in values)


def _reads_input(node: fx.Node) -> bool:
    if node.op == "placeholder":
        return True
    return any(_reads_input(n) for n in node.all_input_nodes)


def _linear_of_call(node: fx.Node, model: nn.Module, written: str, make: Callable[..., Op], structural: set[str]) -> Op:
    weight, bias = _argument(node, 1, "weight", None), _argument(node, 2, "bias", None)
    if _from_activations((weight, bias), structural) or not isinstance(weight, fx.Node):
        return make(UNKNOWN, written, unsupported=f"{written} whose weight is computed in forward(); relprop needs it as a parameter.")
    return make(LINEAR, written, linear=LinearSpec(_parameter_getter(weight, model), _parameter_getter(bias, model)))


def _matrix_product_as_linear(
    node: fx.Node, model: nn.Module, inputs: tuple[str, ...], written: str, make: Callable[..., Op], structural: set[str],
) -> Op:
    """``x @ M`` with ``M`` (in, out) a parameter or computed from parameters only (a cosine classifier's
    normalised class weights): the dense layer ``F.linear(x, M.T)``."""
    data, matrix = node.args[0], node.args[1] if len(node.args) > 1 else None
    if not isinstance(data, fx.Node) or data.name != inputs[0] or not isinstance(matrix, fx.Node) \
            or _from_activations((matrix,), structural):
        return make(UNKNOWN, written)
    value = _parameter_getter(matrix, model)

    def weight() -> Tensor:
        m = value()
        if m.dim() != 2:
            raise RelpropError(f"{written} multiplies by a {m.dim()}-d tensor; relprop explains x @ M with a matrix M.")
        return m.t()

    return make(LINEAR, written, linear=LinearSpec(weight, lambda: None))


def _batchnorm_of_call(node: fx.Node, model: nn.Module, written: str, make: Callable[..., Op]) -> Op:
    """``F.batch_norm`` (timm's ``BatchNormAct2d`` calls it) in eval mode: a BatchNorm like ``nn.BatchNorm2d``."""
    names = ("running_mean", "running_var", "weight", "bias")
    values = [_argument(node, i + 1, name, None) for i, name in enumerate(names)]
    training, eps = _argument(node, 5, "training", False), _argument(node, 7, "eps", 1e-5)
    if training or any(isinstance(v, fx.Node) and v.op != "get_attr" for v in values) or values[1] is None:
        return make(UNKNOWN, written, unsupported=_BATCH_STATISTICS.format(written=written))
    getters = {name: _parameter_getter(v, model) for name, v in zip(names, values)}
    getters["eps"] = lambda: eps
    return make(BATCHNORM, written, norm=BatchNormSpec(getters))


def _layer_norm_of_call(node: fx.Node, model: nn.Module, written: str, make: Callable[..., Op]) -> Op:
    """``F.layer_norm(x, normalized_shape, weight, bias, eps)`` (timm's LayerNorm classes call it): a normalisation
    whose parameters the LRP rule of LayerNorm reads.  A shape, weight or bias that is not a constant or a parameter
    attribute leaves it without them (its relevance then passes unchanged, as through other normalisations)."""
    shape = _argument(node, 1, "normalized_shape", None)
    weight, bias = _argument(node, 2, "weight", None), _argument(node, 3, "bias", None)
    if not isinstance(shape, (int, list, tuple)) or any(
        isinstance(v, fx.Node) and v.op != "get_attr" for v in (weight, bias)
    ):
        return make(NORM, written)
    spec = LayerNormSpec(
        (shape,) if isinstance(shape, int) else tuple(shape), _parameter_getter(weight, model),
        _parameter_getter(bias, model), _argument(node, 4, "eps", 1e-5),
    )
    return make(NORM, written, layer_norm=spec)


def _softmax_reason(at_output: bool) -> str:
    """Why a softmax has no rule: after the logits (with the fix), or weighting inside the network."""
    if at_output:
        return (
            "LRP and RAP start from the logits, and a softmax (logits to probabilities) has no relevance rule. "
            "Explain the model without its final softmax (for an nn.Sequential: model[:-1]); the top-1 class "
            "is the same."
        )
    return (
        "A softmax inside the network weighs features by each other (attention, attention pooling); relprop's "
        "rules cover convolutional networks without such weighting. A softmax of channel statistics (computed "
        "from a global pooling, as SKNet and ResNeSt select among branches) is explained as a gate."
    )


def _feeds_output(node: fx.Node) -> bool:
    """Whether ``node``'s value is the model's output."""
    return any(user.op == "output" for user in node.users)


def _classify_module(module: nn.Module, make: Callable[..., Op], feeds_output: bool = False) -> Op:
    type_name = type(module).__name__
    if isinstance(module, nn.Conv2d):
        return make(CONV, type_name, module=module, **_conv_of_module(module))
    if isinstance(module, nn.Linear):
        return make(LINEAR, type_name, module=module, linear=LinearSpec(lambda: module.weight, lambda: module.bias))
    if isinstance(module, _BATCHNORM_MODULES):
        if module.running_var is None:
            return make(UNKNOWN, type_name, module=module, unsupported=_BATCH_STATISTICS.format(written=type_name))
        return make(BATCHNORM, type_name, module=module)
    if isinstance(module, _SOFTMAX_MODULES):
        return make(UNKNOWN, type_name, module=module, unsupported=_softmax_reason(feeds_output))
    if isinstance(module, nn.LayerNorm):
        spec = LayerNormSpec(tuple(module.normalized_shape), lambda: module.weight, lambda: module.bias, module.eps)
        return make(NORM, type_name, module=module, layer_norm=spec)
    if isinstance(module, _NORM_MODULES):
        return make(NORM, type_name, module=module)
    if isinstance(module, nn.Upsample):
        return _classify_resize(module.mode, type_name, make, module)
    if isinstance(module, (nn.AdaptiveMaxPool2d,)):
        return make(MAXPOOL, type_name, module=module)
    if isinstance(module, _POINTWISE_MODULES + leaf_module_types()):
        return make(POINTWISE, type_name, module=module)
    if isinstance(module, nn.MaxPool2d):
        pool = _pool_windows(module.kernel_size, module.stride, module.padding, module.dilation)
        return make(MAXPOOL, type_name, module=module, pool=pool)
    if isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return make(AVGPOOL, type_name, module=module)
    if isinstance(module, _COPYING_PADS) or (isinstance(module, nn.ConstantPad2d) and module.value == 0):
        return make(PAD, type_name, module=module)
    if isinstance(module, _LAYOUT_MODULES):
        return make(LAYOUT, type_name, module=module)
    return make(UNKNOWN, type_name, module=module)


def _classify_constant_pad(node: fx.Node, value: Any, written: str, make: Callable[..., Op]) -> Op:
    """Padding with zeros; or with -inf read only by max pooling (timm's ``MaxPool2dSame``), whose windows
    never pick a padded entry: both pass the relevance of the entries they copy back to them."""
    if not value:
        return make(PAD, written)
    if value == float("-inf") and node.users and all(user.target in MAXPOOL_FUNCTIONS for user in node.users):
        return make(PAD, written)
    return make(UNKNOWN, f"{written} with value {value}")


def _pad_value(node: fx.Node) -> float:
    if len(node.args) > 3:
        return node.args[3]  # type: ignore[return-value]
    return node.kwargs.get("value", 0) or 0  # type: ignore[return-value]


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def _pool_windows(kernel_size: Any, stride: Any, padding: Any, dilation: Any) -> PoolWindows:
    """Windows of a 2-d max pooling as pairs (a missing or empty stride means the kernel size)."""
    stride = stride if stride not in (None, [], ()) else kernel_size
    return PoolWindows(_pair(kernel_size), _pair(stride), _pair(padding), _pair(dilation))


def _conv_canonical(
    weight: Callable[[], Tensor], bias: Callable[[], Optional[Tensor]], stride: Any, padding: Any, dilation: Any,
    groups: int, padding_mode: str, type_name: str,
) -> dict[str, Any]:
    """``conv`` (a :class:`ConvSpec`) and, where no rule can apply, ``unsupported`` for an :class:`Op`."""
    dilation = _pair(dilation)
    unsupported = ""
    if padding_mode != "zeros":
        unsupported = f"{type_name}(padding_mode={padding_mode!r}): only zero padding is supported."
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":
        totals = [d * (k - 1) for d, k in zip(dilation, weight().shape[2:])]
        if any(t % 2 for t in totals):
            unsupported = f"{type_name}(padding='same') with an even kernel pads asymmetrically; use explicit padding."
        padding = (totals[0] // 2, totals[1] // 2)
    geometry = ConvGeometry(_pair(stride), _pair(padding), dilation, groups)
    return {"conv": ConvSpec(geometry, weight, bias), "unsupported": unsupported}


def _conv_of_module(m: nn.Conv2d) -> dict[str, Any]:
    return _conv_canonical(
        lambda: m.weight, lambda: m.bias, m.stride, m.padding, m.dilation, m.groups, m.padding_mode, type(m).__name__
    )


def _conv_of_call(node: fx.Node, model: nn.Module, structural: set[str]) -> dict[str, Any]:
    names = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
    bound: dict[str, Any] = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    bound.update(dict(zip(names, node.args)))
    bound.update(node.kwargs)

    getter = functools.partial(_parameter_getter, model=model)
    computed = [k for k in ("weight", "bias") if _from_activations((bound[k],), structural)]
    if computed:
        return {"unsupported": f"F.conv2d whose {computed[0]} is computed in forward(); relprop needs it as a parameter."}
    return _conv_canonical(
        getter(bound["weight"]), getter(bound["bias"]), bound["stride"], bound["padding"], bound["dilation"],
        bound["groups"], "zeros", "F.conv2d",
    )
