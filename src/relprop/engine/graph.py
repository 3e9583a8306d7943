"""Trace an unmodified model into ordered, canonical operations.

The model is traced once with :mod:`torch.fx`; standard ``torch.nn`` layers stay leaves,
everything else (torchvision blocks, custom ``Conv2d`` subclasses with their own ``forward``)
is traced through.  Every node becomes one :class:`Op` whose ``kind`` selects a rule from a
method's rule table, and canonicalisation resolves onto each op what rules need (a convolution's
parameters and geometry, a BatchNorm it feeds, a concatenation's dimension, the ops between the
image and the first convolution).  Shape, size and dtype reads are *structural*: they carry no
relevance and never block.  This is the only module that reads torch.fx internals; nothing in
the model is changed.
"""

from __future__ import annotations

import difflib
import functools
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import RelpropError
from ..rules.conv_ops import ConvGeometry
from ..rules.structural import PoolWindows
from ..rules import lrp as lrp_rules

# Kinds of operation a rule table maps to rules.
CONV = "conv"
INPUT_CONV = "input conv"  # a convolution reading the image (through padding / activations only)
LINEAR = "linear"
BATCHNORM = "batchnorm"
POINTWISE = "pointwise"  # activations, dropout, identity: relevance passes unchanged
MAXPOOL = "maxpool"
AVGPOOL = "avgpool"  # any linear averaging pool (avg, adaptive avg)
LAYOUT = "layout"  # flatten, view, reshape: relevance follows the adjoint
PAD = "pad"  # zero padding: relevance follows the adjoint, the map stays (N, C, H, W)
ADD = "add"
CAT = "cat"
INPUT = "input"
OUTPUT = "output"
STRUCTURAL = "structural"  # parameters, shapes, sizes, shape arithmetic: no relevance
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
_LAYOUT_FUNCTIONS = {torch.flatten, torch.reshape}
_LAYOUT_METHODS = {"view", "reshape", "flatten"}
_STRUCTURAL_METHODS = {"size", "dim", "numel", "type_as", "element_size"}
_STRUCTURAL_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "is_cuda", "layout"}
_CONV_FUNCTIONS = {F.conv2d, torch.conv2d}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_INPLACE_FUNCTION_TWINS = {operator.iadd: operator.add, F.relu_: F.relu, torch.relu_: torch.relu}


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
    batchnorm: Optional[nn.BatchNorm2d] = None

    def parameters(self, fold_batchnorm: bool) -> tuple[Tensor, Optional[Tensor]]:
        """Kernel (O, C/g, kh, kw) and bias (O,) or None; with ``fold_batchnorm`` those of ``bn(conv(x))``."""
        weight, bias = self.weight(), self.bias()
        bn = self.batchnorm
        if not fold_batchnorm or bn is None or bn.running_var is None:
            return weight, bias
        return lrp_rules.fold_batchnorm(weight, bias, bn)


@dataclass
class Op:
    """One traced, canonical operation.

    ``inputs`` are the ops whose activations feed this op, in argument order (repeats kept):
    relevance flows back to exactly these.  ``reads`` are all ops it reads, structural ones
    included.  ``module`` is the leaf module of a module call.  Canonical attributes: ``conv``
    (convolutions), ``pool`` (max pooling windows), ``dim`` (concatenation), ``image_chain`` (for an
    input convolution: the ops between the image and it, in forward order), ``pads_before`` (for a
    convolution: the zero-padding ops feeding it directly, in forward order, and ``unpadded``, the op
    they pad), ``unsupported`` (why no
    rule can apply, e.g. a non-zero padding mode).
    """

    name: str
    kind: str
    path: str
    type_name: str
    inputs: tuple[str, ...]
    reads: tuple[str, ...]
    module: nn.Module | None = None
    conv: ConvSpec | None = None
    pool: PoolWindows | None = None
    dim: int = 0
    pads_before: tuple[str, ...] = ()
    unpadded: str = ""
    image_chain: tuple[str, ...] = ()
    unsupported: str = ""
    _node: fx.Node | None = field(default=None, repr=False)


class ModelGraph:
    """A model traced into canonical ops in topological order, with consumer lists and name lookup."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        fx_graph = _trace(model)
        self.ops: list[Op] = []
        structural: set[str] = set()
        for node in fx_graph.nodes:
            op = _classify(node, model, structural)
            if op.kind == STRUCTURAL:
                structural.add(op.name)
            self.ops.append(op)
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
        self._called_modules = {op.path for op in self.ops if op.module is not None}
        # Position of the last op reading each op's output (its own position if nobody reads it).
        self.last_use: dict[str, int] = dict(self.index)
        for op in self.ops:
            for inp in op.reads:
                self.last_use[inp] = max(self.last_use[inp], self.index[op.name])
        self._canonicalise()

    # ----------------------------------------------------------------- canonicalisation

    def _canonicalise(self) -> None:
        """Resolve BatchNorm readers of convolutions and mark the convolutions reading the image."""
        for op in self.ops:
            if op.conv is None:
                continue
            users = self.consumers[op.name]
            if len(users) == 1 and self.by_name[users[0]].kind == BATCHNORM:
                bn = self.by_name[users[0]].module
                op.conv = ConvSpec(op.conv.geometry, op.conv.weight, op.conv.bias, bn)  # type: ignore[arg-type]
            pads: list[str] = []
            current = self.by_name[op.inputs[0]]
            while current.kind == PAD:
                pads.insert(0, current.name)
                current = self.by_name[current.inputs[0]]
            op.pads_before, op.unpadded = tuple(pads), current.name if pads else ""
            chain: list[str] = []
            current = self.by_name[op.inputs[0]]
            while current.kind in (PAD, LAYOUT, POINTWISE) and current.inputs:
                chain.insert(0, current.name)
                current = self.by_name[current.inputs[0]]
            if current.kind == INPUT:
                op.kind = INPUT_CONV
                op.image_chain = tuple(chain)

    # ----------------------------------------------------------------- queries

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
        return self._closure(name, lambda op: op.reads)

    def descendants(self, name: str) -> set[str]:
        """Names of all ops that depend on ``name``, itself included."""
        return self._closure(name, lambda op: [u.name for u in op._node.users])  # type: ignore[union-attr]

    def _closure(self, name: str, step: Callable[[Op], Any]) -> set[str]:
        seen, stack = set(), [name]
        while stack:
            cur = stack.pop()
            if cur not in seen:
                seen.add(cur)
                stack.extend(step(self.by_name[cur]))
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
            if layer in _module_stack(op._node):  # type: ignore[arg-type]
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
        return self.producing_module(name) or self.by_name[name].path

    def producing_module(self, name: str) -> str | None:
        """The outermost module whose output is op ``name``, or None when it is a bare function call."""
        op = self.by_name[name]
        for path in _module_stack(op._node):  # type: ignore[arg-type]
            if path and self.resolve(path) == name:
                return path
        return op.path if op.module is not None else None

    # ----------------------------------------------------------------- execution

    def parameter(self, op: Op) -> Any:
        """The value a ``get_attr`` op fetches from the model (a parameter or buffer)."""
        return functools.reduce(getattr, str(op._node.target).split("."), self.model)  # type: ignore[union-attr]

    def output_value(self, env: dict[str, Any]) -> Any:
        """What the model returns, given the values of the ops it returns."""
        return fx.node.map_arg(self.by_name[self.output_name]._node.args[0], lambda n: env[n.name])  # type: ignore[union-attr]

    def execute(self, op: Op, env: dict[str, Any], *, inplace_ok: bool) -> Any:
        """Run ``op`` on the values in ``env``; in-place variants run out of place unless ``inplace_ok``."""
        node = op._node
        if node.op == "get_attr":  # type: ignore[union-attr]
            return self.parameter(op)
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: env[n.name])  # type: ignore[union-attr]
        return self._call(op, args, kwargs, inplace_ok=inplace_ok)

    def replayer(self, op: Op, env: dict[str, Any]) -> Callable[[Tensor], Tensor]:
        """``t -> op(t)`` with the op's first activation input replaced by ``t`` and every other argument
        fixed to its value in ``env``."""
        node = op._node
        data = op.inputs[0]
        hole = object()
        args, kwargs = fx.node.map_arg(  # type: ignore[union-attr]
            (node.args, node.kwargs), lambda n: hole if n.name == data else env[n.name]
        )

        def run(t: Tensor) -> Tensor:
            a = tuple(t if v is hole else v for v in args)
            kw = {k: t if v is hole else v for k, v in kwargs.items()}
            return self._call(op, a, kw, inplace_ok=False)

        return run

    def _call(self, op: Op, args: tuple, kwargs: dict, *, inplace_ok: bool) -> Any:
        node = op._node
        if op.module is not None:
            if getattr(op.module, "inplace", False) and not inplace_ok:
                args = (args[0].clone(),) + tuple(args[1:])
            return op.module(*args, **kwargs)
        if "inplace" in kwargs:
            kwargs = {**kwargs, "inplace": kwargs["inplace"] and inplace_ok}
        if node.op == "call_method":  # type: ignore[union-attr]
            name = str(node.target)  # type: ignore[union-attr]
            if name.endswith("_") and not name.endswith("__"):
                name = name[:-1]
            return getattr(args[0], name)(*args[1:], **kwargs)
        target = _INPLACE_FUNCTION_TWINS.get(node.target, node.target)  # type: ignore[union-attr]
        return target(*args, **kwargs)  # type: ignore[operator]


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


def _module_stack(node: fx.Node) -> list[str]:
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
    stack = _module_stack(node)
    if node.op == "call_module":
        return str(node.target)
    return stack[-1] if stack else node.name


def _enclosing_type(node: fx.Node) -> str:
    """Class name of the innermost module a function call was traced in ('' at the top level)."""
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    if not stack:
        return ""
    cls = stack[-1][1]
    return getattr(cls, "__name__", str(cls).rsplit(".", 1)[-1])


def _written_name(node: fx.Node) -> str:
    """The operation as the user wrote it: ``F.pad``, ``torch.cat``, ``Tensor.view``, ``operator.getitem``."""
    if node.op == "call_method":
        written = f"Tensor.{node.target}"
    else:
        target = node.target
        name = getattr(target, "__name__", str(target))
        module = getattr(target, "__module__", "") or ""
        prefix = next((p for m, p in _WRITTEN_PREFIXES if module.startswith(m)), "")
        written = prefix + name
    enclosing = _enclosing_type(node)
    return f"{written} (in {enclosing})" if enclosing else written


_WRITTEN_PREFIXES = (("torch.nn.functional", "F."), ("_operator", "operator."), ("operator", "operator."), ("torch", "torch."))


def _classify(node: fx.Node, model: nn.Module, structural: set[str]) -> Op:
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
        return _classify_module(module, make)
    if node.op == "call_method" and node.target in _STRUCTURAL_METHODS:
        return make(STRUCTURAL, _written_name(node))
    if node.target is getattr and len(node.args) > 1 and node.args[1] in _STRUCTURAL_ATTRIBUTES:
        return make(STRUCTURAL, f"Tensor.{node.args[1]}")
    if not inputs:  # computed from shapes, sizes or parameters only
        return make(STRUCTURAL, _written_name(node))
    written = _written_name(node)
    if node.op == "call_method":
        if node.target in _POINTWISE_METHODS:
            return make(POINTWISE, written)
        if node.target in _LAYOUT_METHODS:
            return make(LAYOUT, written)
        return make(UNKNOWN, written)
    target = node.target
    if target in _CONV_FUNCTIONS:
        return make(CONV, written, **_conv_of_call(node, model))
    if target in _POINTWISE_FUNCTIONS:
        return make(POINTWISE, written)
    if target in _MAXPOOL_FUNCTIONS:
        bound = dict(zip(["input", "kernel_size", "stride", "padding", "dilation"], node.args))
        bound.update(node.kwargs)
        pool = _pool_windows(bound["kernel_size"], bound.get("stride"), bound.get("padding", 0), bound.get("dilation", 1))
        return make(MAXPOOL, written, pool=pool)
    if target in _AVGPOOL_FUNCTIONS:
        return make(AVGPOOL, written)
    if target is F.pad:
        return make(PAD, written) if _pad_value(node) == 0 else make(UNKNOWN, f"{written} with value != 0")
    if target in _LAYOUT_FUNCTIONS:
        return make(LAYOUT, written)
    if target in _ADD_FUNCTIONS:
        if "alpha" in node.kwargs:
            return make(UNKNOWN, f"{written}(alpha=...)")
        return make(ADD if len(inputs) == 2 else POINTWISE, written)
    if target is torch.cat:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        return make(CAT, written, dim=dim)
    return make(UNKNOWN, written)


def _classify_module(module: nn.Module, make: Callable[..., Op]) -> Op:
    type_name = type(module).__name__
    if isinstance(module, nn.Conv2d):
        return make(CONV, type_name, module=module, **_conv_of_module(module))
    if isinstance(module, nn.Linear):
        return make(LINEAR, type_name, module=module)
    if isinstance(module, nn.BatchNorm2d):
        return make(BATCHNORM, type_name, module=module)
    if isinstance(module, _POINTWISE_MODULES):
        return make(POINTWISE, type_name, module=module)
    if isinstance(module, nn.MaxPool2d):
        pool = _pool_windows(module.kernel_size, module.stride, module.padding, module.dilation)
        return make(MAXPOOL, type_name, module=module, pool=pool)
    if isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return make(AVGPOOL, type_name, module=module)
    if isinstance(module, nn.ZeroPad2d) or (isinstance(module, nn.ConstantPad2d) and module.value == 0):
        return make(PAD, type_name, module=module)
    if isinstance(module, nn.Flatten):
        return make(LAYOUT, type_name, module=module)
    return make(UNKNOWN, type_name, module=module)


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


def _conv_of_call(node: fx.Node, model: nn.Module) -> dict[str, Any]:
    names = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
    bound: dict[str, Any] = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    bound.update(dict(zip(names, node.args)))
    bound.update(node.kwargs)

    def getter(value: Any) -> Callable[[], Any]:
        if isinstance(value, fx.Node):
            return lambda: functools.reduce(getattr, str(value.target).split("."), model)
        return lambda: value

    computed = [k for k in ("weight", "bias") if isinstance(bound[k], fx.Node) and bound[k].op != "get_attr"]
    if computed:
        return {"unsupported": f"F.conv2d whose {computed[0]} is computed in forward(); relprop needs it as a parameter."}
    return _conv_canonical(
        getter(bound["weight"]), getter(bound["bias"]), bound["stride"], bound["padding"], bound["dilation"],
        bound["groups"], "zeros", "F.conv2d",
    )
