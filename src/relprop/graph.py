"""Trace an unmodified model into an ordered list of operations.

The model is traced once with :mod:`torch.fx`; standard ``torch.nn`` layers stay leaves,
everything else (torchvision blocks, custom ``Conv2d`` subclasses with their own ``forward``)
is traced through.  Every resulting node is classified into one :class:`Op` whose ``kind``
tells the relevance walk which rule family applies.  Nothing in the model is changed.
"""

from __future__ import annotations

import difflib
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .errors import RelpropError

# Kinds of operation the relevance walk knows about.
CONV = "conv"
LINEAR = "linear"
BATCHNORM = "batchnorm"
POINTWISE = "pointwise"  # activations, dropout, identity: relevance passes unchanged
MAXPOOL = "maxpool"
AVGPOOL = "avgpool"  # any linear averaging pool (avg, adaptive avg)
LAYOUT = "layout"  # pad, flatten, view, reshape: relevance follows the adjoint
ADD = "add"
CAT = "cat"
INPUT = "input"
OUTPUT = "output"
CONSTANT = "constant"  # get_attr, size(), shape arithmetic: no relevance
UNKNOWN = "unknown"

_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.SiLU, nn.GELU,
    nn.Hardswish, nn.Mish, nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.Identity,
)
_POINTWISE_FUNCTIONS = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.selu,
    F.silu, F.gelu, F.hardswish, F.mish, F.dropout, F.dropout2d, torch.dropout,
}
_POINTWISE_METHODS = {"relu", "relu_", "contiguous", "clone"}
_MAXPOOL_FUNCTIONS = {F.max_pool2d, torch.max_pool2d}
_AVGPOOL_FUNCTIONS = {F.avg_pool2d, torch._C._nn.avg_pool2d, F.adaptive_avg_pool2d}
_LAYOUT_FUNCTIONS = {torch.flatten, torch.reshape, F.pad}
_LAYOUT_METHODS = {"view", "reshape", "flatten"}
_CONSTANT_METHODS = {"size", "dim"}
_CONV_FUNCTIONS = {F.conv2d, torch.conv2d}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_INPLACE_FUNCTION_TWINS = {operator.iadd: operator.add, F.relu_: F.relu, torch.relu_: torch.relu}


@dataclass
class Op:
    """One traced operation.

    ``inputs`` are the names of the ops whose tensor outputs feed this op (in argument order);
    relevance flows back to exactly these.  ``module`` is the leaf module for module calls.
    """

    name: str
    kind: str
    path: str
    type_name: str
    node: fx.Node
    inputs: tuple[str, ...]
    module: nn.Module | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


class ModelGraph:
    """A model traced into ops in topological order, with consumer lists and name lookup."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.fx_graph = _trace(model)
        self.ops: list[Op] = [_classify(node, model) for node in self.fx_graph.nodes]
        self.by_name: dict[str, Op] = {op.name: op for op in self.ops}
        self.index: dict[str, int] = {op.name: i for i, op in enumerate(self.ops)}
        self.consumers: dict[str, list[str]] = {op.name: [] for op in self.ops}
        for op in self.ops:
            for inp in dict.fromkeys(op.inputs):
                self.consumers[inp].append(op.name)
        inputs = [op for op in self.ops if op.kind == INPUT]
        if len(inputs) != 1:
            raise RelpropError(
                f"relprop explains models with exactly one tensor input; "
                f"{type(model).__name__}.forward takes {len(inputs)}."
            )
        self.input_name = inputs[0].name
        self.output_name = next(op.name for op in self.ops if op.kind == OUTPUT)
        self._called_modules = {str(op.node.target) for op in self.ops if op.node.op == "call_module"}
        # Position of the last op reading each op's output (its own position if nobody reads it).
        self.last_use: dict[str, int] = dict(self.index)
        for op in self.ops:
            for inp in op.node.all_input_nodes:
                self.last_use[inp.name] = max(self.last_use[inp.name], self.index[op.name])

    def refuse_bypassed_hooks(self) -> None:
        """Forward hooks on a module that is traced through (the model itself, torchvision blocks)
        would silently not run; refuse them.  Hooks on leaf layers run as usual."""
        for path, module in self.model.named_modules():
            if path not in self._called_modules and (module._forward_hooks or module._forward_pre_hooks):
                where = f"'{path}'" if path else "the model itself"
                raise RelpropError(
                    f"{where} ({type(module).__name__}) has forward hooks or pre-hooks; relprop traces "
                    "through this module and could not run them, so the explanation would not match the "
                    "model's output. Remove them (handle.remove()) or register them on leaf layers."
                )

    def ancestors(self, name: str) -> set[str]:
        """Names of all ops ``name`` depends on, itself included."""
        seen, stack = set(), [name]
        while stack:
            cur = stack.pop()
            if cur not in seen:
                seen.add(cur)
                stack.extend(_node_inputs(self.by_name[cur].node))
        return seen

    def descendants(self, name: str) -> set[str]:
        """Names of all ops that depend on ``name``, itself included."""
        seen, stack = set(), [name]
        while stack:
            cur = stack.pop()
            if cur not in seen:
                seen.add(cur)
                stack.extend(u.name for u in self.by_name[cur].node.users)
        return seen

    def module_paths(self) -> list[str]:
        """Every named module path of the model (for messages)."""
        return [name for name, _ in self.model.named_modules() if name]

    def resolve(self, layer: str) -> str:
        """Op name of the output of ``layer`` (a module path such as ``'layer4'`` or an op name).

        The output of a module is the last op traced inside it.  Raises ``ValueError`` listing
        close names when nothing matches.
        """
        if not isinstance(layer, str):
            raise TypeError(
                f"seed_layer must be a module path such as 'layer4' (a str); got {type(layer).__name__} {layer!r}."
            )
        if layer in self.by_name:
            return layer
        last = None
        for op in self.ops:
            stack = op.node.meta.get("nn_module_stack") or {}
            if any(path == layer for path, _ in stack.values()):
                last = op.name
        if last is None:
            choices = self.module_paths() + [op.name for op in self.ops]
            close = difflib.get_close_matches(layer, choices, n=5, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ValueError(
                f"seed_layer '{layer}' names no module or operation of "
                f"{type(self.model).__name__}.{hint}"
            )
        return last


    def display_name(self, name: str) -> str:
        """The shortest module path whose output is op ``name`` (``'layer4'`` rather than its last ReLU)."""
        stack = self.by_name[name].node.meta.get("nn_module_stack") or {}
        for path, _ in stack.values():
            if self.resolve(path) == name:
                return path
        return self.by_name[name].path


def _trace(model: nn.Module) -> fx.Graph:
    """Symbolically trace ``model`` in eval mode (restoring every module's flag afterwards)."""
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        return fx.Tracer().trace(model)
    except Exception as exc:  # tracing failures come in many exception types
        raise RelpropError(
            f"relprop could not trace {type(model).__name__} with torch.fx ({exc}). Models with "
            "data-dependent control flow in forward() are not supported."
        ) from exc
    finally:
        for module, flag in flags.items():
            module.training = flag


def _node_inputs(node: fx.Node) -> list[str]:
    return [n.name for n in node.all_input_nodes]


def _tensor_inputs(node: fx.Node) -> tuple[str, ...]:
    """Input nodes that carry activations, in argument order, repeats kept (``x + x`` lists ``x`` twice).

    Parameters fetched by ``get_attr`` are not activations and are left out.
    """
    found: list[str] = []

    def visit(n: fx.Node) -> fx.Node:
        if n.op != "get_attr":
            found.append(n.name)
        return n

    fx.node.map_arg((node.args, node.kwargs), visit)
    return tuple(found)


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    parent = list(stack.values())[-1][0] if stack else ""
    if node.op == "call_module":
        return str(node.target)
    return f"{parent}.{node.name}" if parent else node.name


def _classify(node: fx.Node, model: nn.Module) -> Op:
    """Map one fx node to an :class:`Op`."""
    path = _module_path(node)

    def make(kind: str, type_name: str, **kw: Any) -> Op:
        return Op(node.name, kind, path, type_name, node, _tensor_inputs(node), **kw)

    if node.op == "placeholder":
        return make(INPUT, "input")
    if node.op == "output":
        return make(OUTPUT, "output")
    if node.op == "get_attr":
        return make(CONSTANT, "parameter")
    if node.op == "call_module":
        module = model.get_submodule(str(node.target))
        type_name = type(module).__name__
        if isinstance(module, nn.Conv2d):
            return make(CONV, type_name, module=module, attrs=_conv_attrs_of_module(module))
        if isinstance(module, nn.Linear):
            return make(LINEAR, type_name, module=module)
        if isinstance(module, nn.BatchNorm2d):
            return make(BATCHNORM, type_name, module=module)
        if isinstance(module, _POINTWISE_MODULES):
            return make(POINTWISE, type_name, module=module)
        if isinstance(module, nn.MaxPool2d):
            return make(MAXPOOL, type_name, module=module)
        if isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            return make(AVGPOOL, type_name, module=module)
        if isinstance(module, (nn.ZeroPad2d, nn.Flatten)) or (
            isinstance(module, nn.ConstantPad2d) and module.value == 0
        ):
            return make(LAYOUT, type_name, module=module)
        return make(UNKNOWN, type_name, module=module)
    target = node.target
    if node.op == "call_method":
        if target in _POINTWISE_METHODS:
            return make(POINTWISE, f"Tensor.{target}")
        if target in _LAYOUT_METHODS:
            return make(LAYOUT, f"Tensor.{target}")
        if target in _CONSTANT_METHODS:
            return make(CONSTANT, f"Tensor.{target}")
        return make(UNKNOWN, f"Tensor.{target}")
    type_name = getattr(target, "__name__", str(target))
    if target in _CONV_FUNCTIONS:
        return make(CONV, "conv2d", attrs=_conv_attrs_of_call(node))
    if target in _POINTWISE_FUNCTIONS:
        return make(POINTWISE, type_name)
    if target in _MAXPOOL_FUNCTIONS:
        return make(MAXPOOL, type_name)
    if target in _AVGPOOL_FUNCTIONS:
        return make(AVGPOOL, type_name)
    if target is F.pad and _pad_value(node) != 0:
        return make(UNKNOWN, "pad(value != 0)")
    if target in _LAYOUT_FUNCTIONS:
        return make(LAYOUT, type_name)
    if target in _ADD_FUNCTIONS:
        n_tensors = len(_tensor_inputs(node))
        if "alpha" in node.kwargs or n_tensors == 0:
            return make(UNKNOWN if n_tensors else CONSTANT, type_name)
        return make(ADD if n_tensors == 2 else POINTWISE, type_name)
    if target is torch.cat:
        return make(CAT, "cat")
    if not _tensor_inputs(node):
        return make(CONSTANT, type_name)
    return make(UNKNOWN, type_name)


def _pad_value(node: fx.Node) -> float:
    if len(node.args) > 3:
        return node.args[3]
    return node.kwargs.get("value", 0) or 0


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def _conv_attrs_of_module(m: nn.Conv2d) -> dict[str, Any]:
    return {
        "weight": lambda: m.weight,
        "stride": _pair(m.stride),
        "padding": m.padding if isinstance(m.padding, str) else _pair(m.padding),
        "dilation": _pair(m.dilation),
        "groups": m.groups,
        "padding_mode": m.padding_mode,
    }


def _conv_attrs_of_call(node: fx.Node) -> dict[str, Any]:
    names = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
    defaults = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    bound = dict(defaults)
    bound.update(dict(zip(names, node.args)))
    bound.update(node.kwargs)
    weight = bound["weight"]
    return {
        "weight_node": weight.name if isinstance(weight, fx.Node) else None,
        "stride": _pair(bound["stride"]),
        "padding": bound["padding"] if isinstance(bound["padding"], str) else _pair(bound["padding"]),
        "dilation": _pair(bound["dilation"]),
        "groups": bound["groups"],
        "padding_mode": "zeros",
    }


def inplace_free_call(node: fx.Node) -> Callable[..., Any] | str:
    """The node's function or method with any in-place variant replaced by its pure twin."""
    if node.op == "call_method":
        name = str(node.target)
        return name[:-1] if name.endswith("_") and not name.endswith("__") else name
    return _INPLACE_FUNCTION_TWINS.get(node.target, node.target)  # type: ignore[arg-type]
