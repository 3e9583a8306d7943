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
import inspect
import linecache
import operator
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.meta_tracer import MetaProxy, MetaTracer

from ..errors import RelpropError
from ..rules.conv_ops import ConvGeometry
from ..rules.structural import PoolWindows
from ..rules import lrp as lrp_rules

# Kinds of operation a rule table maps to rules.
CONV = "conv"
INPUT_CONV = "input conv"  # a convolution reading the image (through padding / activations only)
LINEAR = "linear"
BATCHNORM = "batchnorm"  # BatchNorm2d and F.batch_norm
NORM = "norm"  # LayerNorm, GroupNorm (channels-first or channels-last): a fixed per-sample affine map
POINTWISE = "pointwise"  # activations, dropout, identity, scaling by a constant: relevance passes unchanged
GATE = "gate"  # x * g: a signal times a gate (sigmoid-type); relevance goes to the signal only
MAXPOOL = "maxpool"
AVGPOOL = "avgpool"  # any linear averaging pool (avg, adaptive avg)
LAYOUT = "layout"  # flatten, view, reshape, permute, slicing: relevance follows the adjoint
SPLIT = "split"  # chunk / split into a tuple: its items are sliced views (LAYOUT ops reading the input)
PAD = "pad"  # zero padding: relevance follows the adjoint, the map stays (N, C, H, W)
ADD = "add"
CAT = "cat"
INPUT = "input"
OUTPUT = "output"
STRUCTURAL = "structural"  # parameters, shapes, sizes, shape arithmetic: no relevance
UNKNOWN = "unknown"

_GATE_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Tanh)
_GATE_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.hardsigmoid, torch.tanh, F.tanh}
_GATE_METHODS = {"sigmoid", "sigmoid_", "tanh", "tanh_"}
_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish,
    nn.Softplus, nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.Identity, *_GATE_MODULES,
)
_POINTWISE_FUNCTIONS = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.silu, F.gelu,
    F.hardswish, F.mish, F.softplus, F.hardtanh, torch.clamp, F.dropout, F.dropout2d, torch.dropout,
    *_GATE_FUNCTIONS,
}
_POINTWISE_METHODS = {"relu", "relu_", "contiguous", "clone", "clamp", "clamp_", "clamp_min", "clamp_min_", *_GATE_METHODS}
_SCALE_FUNCTIONS = {operator.mul, operator.imul, torch.mul, operator.truediv, operator.itruediv, torch.div, operator.sub, torch.sub}
_SCALE_METHODS = {"mul", "mul_", "div", "div_"}
_MAXPOOL_FUNCTIONS = {F.max_pool2d, torch.max_pool2d}
_GLOBAL_MAX_FUNCTIONS = {F.adaptive_max_pool2d, torch.amax}
_AVGPOOL_FUNCTIONS = {F.avg_pool2d, torch._C._nn.avg_pool2d, F.adaptive_avg_pool2d, torch.mean}
_AVGPOOL_METHODS = {"mean"}
_NORM_FUNCTIONS = {F.layer_norm, F.group_norm}
_LINEAR_FUNCTIONS = {F.linear}
_LAYOUT_FUNCTIONS = {torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.unsqueeze, torch.squeeze, operator.getitem}
_LAYOUT_METHODS = {"view", "reshape", "flatten", "permute", "transpose", "unsqueeze", "squeeze", "expand", "expand_as"}
_SPLIT_FUNCTIONS = {torch.chunk, torch.split, torch.tensor_split}
_SPLIT_METHODS = {"chunk", "split", "tensor_split"}
_CHANNELS_LAST = (0, 2, 3, 1)
# Functions of other libraries, by (module, name): torchvision's stochastic depth (identity in eval mode) and
# timm's dynamic "same" padding (traced as one call, see _trace).
_THIRD_PARTY_POINTWISE = {("torchvision.ops.stochastic_depth", "stochastic_depth")}
_THIRD_PARTY_PAD = {("timm.layers.padding", "pad_same")}
_STRUCTURAL_METHODS = {"size", "dim", "numel", "type_as", "element_size"}
_STRUCTURAL_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "is_cuda", "layout"}
_CONV_FUNCTIONS = {F.conv2d, torch.conv2d}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_INPLACE_FUNCTION_TWINS = {operator.iadd: operator.add, F.relu_: F.relu, torch.relu_: torch.relu}


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
class LinearSpec:
    """Parameter getters of a dense layer (``nn.Linear`` or ``F.linear``): weight (out, in), bias (out,) or None."""

    weight: Callable[[], Tensor]
    bias: Callable[[], Optional[Tensor]]


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
    batchnorm: Optional[Any] = None  # an nn.BatchNorm2d or a BatchNormSpec

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
    relevance flows back to these, except to the ``gate`` input of a multiplicative gate.  ``reads``
    are all ops it reads, structural ones included.  ``module`` is the leaf module of a module call.
    Canonical attributes: ``conv`` (convolutions), ``linear`` (dense layers), ``norm`` (an
    ``F.batch_norm`` call), ``pool`` (max pooling windows), ``dim`` (concatenation), ``gate`` (the
    index in ``inputs`` of a gate's multiplier), ``channels_last`` (the output is laid out (N, H, W, C);
    on a convolution: a Linear over the channels of such a map, which rules see as a 1×1 convolution
    on (N, C, H, W)), ``via`` (an item of a chunk / split: the op that splits ``inputs[0]``),
    ``image_chain`` (for an input convolution: the ops between the image and it, in forward order),
    ``pads_before`` (for a convolution: the zero-padding ops feeding it directly, in forward order,
    and ``unpadded``, the op they pad), ``unsupported`` (why no rule can apply, e.g. a non-zero
    padding mode).
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
    pool: PoolWindows | None = None
    dim: int = 0
    gate: int = -1
    channels_last: bool = False
    via: str = ""
    pads_before: tuple[str, ...] = ()
    unpadded: str = ""
    image_chain: tuple["Op", ...] = ()
    unsupported: str = ""
    _node: fx.Node | None = field(default=None, repr=False)

    @property
    def relevance_inputs(self) -> tuple[str, ...]:
        """The inputs relevance flows back to (all but a gate's multiplier)."""
        return tuple(name for i, name in enumerate(self.inputs) if i != self.gate)


class ModelGraph:
    """A model traced into canonical ops in topological order, with consumer lists and name lookup.

    ``example``: None (one graph for every input), or the ``(shape, dtype, device)`` of the inputs the
    graph is for: tracing then knows every tensor's shape, so ``forward()`` may branch on shapes (as
    timm's VGG head does), and the graph holds for inputs of exactly that shape only.
    """

    def __init__(self, model: nn.Module, example: Optional[Example] = None) -> None:
        self.model = model
        fx_graph = _trace(model, example)
        self.ops: list[Op] = []
        structural: set[str] = set()
        for node in fx_graph.nodes:
            op = _classify(node, model, structural)
            if op.kind == STRUCTURAL:
                structural.add(op.name)
            self.ops.append(op)
        self.by_name: dict[str, Op] = {op.name: op for op in self.ops}
        self._resolve_split_items()
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

    def _resolve_split_items(self) -> None:
        """An item ``pieces[i]`` of ``pieces = x.chunk(...)`` becomes a slicing op of ``x`` (relevance goes
        straight to ``x``); it also reads what the split reads, so those values live until it runs."""
        for op in self.ops:
            source = self.by_name[op.inputs[0]] if op.inputs else None
            if source is not None and source.kind == SPLIT and op._node.target is operator.getitem:  # type: ignore[union-attr]
                op.kind, op.via = LAYOUT, source.name
                op.inputs = source.inputs[:1]
                op.reads = tuple(dict.fromkeys(op.reads + source.reads))

    def _canonicalise(self) -> None:
        """Resolve layouts, Linear layers over channels, BatchNorm readers of convolutions and the
        convolutions reading the image."""
        for op in self.ops:
            self._resolve_layout(op)
        for op in self.ops:
            if op.conv is None:
                continue
            users = self.consumers[op.name]
            if len(users) == 1 and self.by_name[users[0]].kind == BATCHNORM:
                reader = self.by_name[users[0]]
                bn = reader.module if reader.module is not None else reader.norm
                op.conv = ConvSpec(op.conv.geometry, op.conv.weight, op.conv.bias, bn)
            pads: list[str] = []
            current = self.by_name[op.inputs[0]]
            while current.kind == PAD:
                pads.insert(0, current.name)
                current = self.by_name[current.inputs[0]]
            op.pads_before, op.unpadded = tuple(pads), current.name if pads else ""
            chain = self._image_chain(op)
            if chain is not None:
                op.kind = INPUT_CONV
                op.image_chain = chain

    def _resolve_layout(self, op: Op) -> None:
        """Whether ``op``'s output is channels-last (a ``permute(0, 2, 3, 1)`` and what follows it up to the
        ``permute(0, 3, 1, 2)`` back); a Linear over the channels of such a map becomes a 1×1 convolution."""
        if op.kind == LAYOUT and op._node.target in ("permute", torch.permute):  # type: ignore[union-attr]
            op.channels_last = _permutation(op._node) == _CHANNELS_LAST  # type: ignore[arg-type]
            return
        if op.kind not in (POINTWISE, NORM, GATE, ADD, LINEAR) or not op.inputs:
            return
        op.channels_last = self.by_name[op.relevance_inputs[0]].channels_last
        if op.kind == LINEAR and op.channels_last and op.linear is not None:
            linear = op.linear
            geometry = ConvGeometry((1, 1), (0, 0), (1, 1), 1)
            op.kind = CONV
            op.conv = ConvSpec(geometry, lambda: linear.weight()[:, :, None, None], linear.bias)

    def _image_chain(self, op: Op) -> tuple[Op, ...] | None:
        """The ops between the image and convolution ``op`` in forward order, if they are only padding,
        layout, pointwise ops and concatenations (e.g. the per-channel affine map of ``transform_input``);
        None if anything else lies between."""
        chain: dict[str, Op] = {}
        stack, reaches_image = [op.inputs[0]], False
        while stack:
            current = self.by_name[stack.pop()]
            if current.kind == INPUT:
                reaches_image = True
            elif current.name not in chain:
                if current.kind not in (PAD, LAYOUT, POINTWISE, CAT) or not current.inputs:
                    return None
                chain[current.name] = current
                stack.extend(current.inputs)
        if not reaches_image:
            return None
        return tuple(sorted(chain.values(), key=lambda o: self.index[o.name]))

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

    def relevance_ancestors(self, name: str) -> set[str]:
        """Names of the ops relevance can flow back to from ``name`` (not into gate multipliers), itself included."""
        return self._closure(name, lambda op: op.relevance_inputs)

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

    def replayer(self, op: Op, env: dict[str, Any]) -> Callable[..., Tensor]:
        """``(t₀, t₁, …) -> op(t₀, t₁, …)``: the op with its first distinct activation inputs replaced by
        the ``t``s (``t -> op(t)`` with one) and every other argument fixed to its value in ``env``."""
        if op.via:  # an item of a split: split the new input the same way, take the same item
            split, index = self.replayer(self.by_name[op.via], env), op._node.args[1]  # type: ignore[union-attr]
            return lambda t: split(t)[index]
        node = op._node
        names = list(dict.fromkeys(op.inputs))
        slots = {name: _Slot(name, env[name] if i else None) for i, name in enumerate(names)}
        args, kwargs = fx.node.map_arg(  # type: ignore[union-attr]
            (node.args, node.kwargs), lambda n: slots.get(n.name) or env[n.name]
        )

        def run(*ts: Tensor) -> Tensor:
            given = dict(zip(names, ts))

            def fill(v: Any) -> Any:
                return given.get(v.name, v.value) if isinstance(v, _Slot) else v

            a, kw = fx.node.map_aggregate((args, kwargs), fill)
            return self._call(op, tuple(a), dict(kw), inplace_ok=False)

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


@dataclass(frozen=True)
class _Slot:
    """An activation argument of a replayed op: replaced by a new tensor, or else its recorded ``value``."""

    name: str
    value: Any


def _third_party(names: set[tuple[str, str]]) -> list[Callable[..., Any]]:
    """The functions named ``(module, name)`` of libraries the model has already imported."""
    found = []
    for module_name, name in names:
        module = sys.modules.get(module_name)
        if module is not None and callable(getattr(module, name, None)):
            found.append(getattr(module, name))
    return found


def _target_key(target: Any) -> tuple[str, str]:
    return getattr(target, "__module__", "") or "", getattr(target, "__name__", "")


Example = tuple[torch.Size, torch.dtype, torch.device]
"""The shape, dtype and device of the inputs a shape-specialised graph is traced for."""


def probe_example(model: nn.Module) -> Example | None:
    """A 224×224 input for the model's first convolution, in the dtype and on the device of its
    parameters (None without a convolution): what a model that branches on its input's shape is
    checked with before it sees an input."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        return None
    weight = conv.weight
    return torch.Size((1, weight.shape[1] * conv.groups, 224, 224)), weight.dtype, weight.device


class BranchesOnInput(RelpropError):
    """``forward()`` branches on its input (its shape or its values), so no single graph serves every input."""


class BranchesOnValues(RelpropError):
    """``forward()`` branches on tensor values, so not even a graph per input shape can be traced."""


def _trace(model: nn.Module, example: Optional[Example] = None) -> fx.Graph:
    """Symbolically trace ``model`` in eval mode (restoring every module's flag afterwards), for every
    input or, with ``example``, for inputs of that shape (see :class:`ModelGraph`).

    timm's dynamic "same" padding (which reads the input size) is traced as one call.  Without an
    example, a branch on the input raises :class:`BranchesOnInput`.
    """
    flags = {m: m.training for m in model.modules()}
    autowrap = tuple(_third_party(_THIRD_PARTY_PAD))
    try:
        model.eval()
        if example is None:
            return fx.Tracer(autowrap_functions=autowrap).trace(model)
        return _trace_with_shapes(model, example, autowrap)
    except Exception as exc:  # tracing failures come in many exception types
        site = _trace_failure_site(model, exc)
        branches = isinstance(exc, fx.proxy.TraceError) and "control flow" in str(exc)
        if branches and example is None:
            raise BranchesOnInput(
                f"relprop could not trace {type(model).__name__} with torch.fx{site}: {exc}. forward() branches "
                "on its input, so relprop traces it once per input shape."
            ) from exc
        shapes = f" with the shapes of a {tuple(example[0])} input" if example is not None else ""
        raise (BranchesOnValues if branches else RelpropError)(
            f"relprop could not trace {type(model).__name__} with torch.fx{shapes}{site}: {exc}. "
            "relprop explains a model through one graph per input shape, so forward() must not branch on "
            "tensor values; rewrite that branch (in a subclass or a copy of the module), or use "
            "'gradient' or 'integrated_gradients', which do not trace the model."
        ) from exc
    finally:
        for module, flag in flags.items():
            module.training = flag


class _ShapedProxy(MetaProxy):
    """A traced value that knows its example's shape (a fake tensor): ``size(d)`` and ``shape`` are numbers."""

    def size(self, dim: Optional[int] = None) -> Any:  # MetaProxy returns the whole size for dim=0
        meta = self._tensor_meta if hasattr(self, "_tensor_meta") else None
        if meta is not None:
            return meta.size() if dim is None else meta.size(dim)
        return self.tracer.create_proxy("call_method", "size", (self,) if dim is None else (self, dim), {})


class _ShapeTracer(MetaTracer):
    """torch.fx tracing in which every value carries its shape, computed on fake tensors (no memory,
    no arithmetic) from the example input and the model's real parameters."""

    allow_insert_stateless_mods = False  # never add modules to the user's model

    def __init__(self, fake_mode: FakeTensorMode, autowrap: tuple[Callable[..., Any], ...]) -> None:
        super().__init__(autowrap_functions=autowrap)
        self.fake_mode = fake_mode

    def create_proxy(self, *args: Any, **kwargs: Any) -> Any:
        with self.fake_mode:
            return super().create_proxy(*args, **kwargs)

    def proxy(self, node: fx.Node) -> _ShapedProxy:
        return _ShapedProxy(node, self)


def _trace_with_shapes(model: nn.Module, example: Example, autowrap: tuple[Callable[..., Any], ...]) -> fx.Graph:
    shape, dtype, device = example
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    with fake_mode:
        fake = torch.empty(shape, dtype=dtype, device=device)
    name = next(iter(inspect.signature(model.forward).parameters))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a value whose shape could not be computed: fail here, naming it
        return _ShapeTracer(fake_mode, autowrap).trace(model, meta_args={name: fake})


def _trace_failure_site(model: nn.Module, exc: BaseException) -> str:
    """`` in module 'path' (Type) at `source` (file:line)``: the innermost module of ``model`` whose
    forward was running when tracing failed, and the line it failed on; ``""`` if none is found."""
    paths = {id(module): path for path, module in model.named_modules()}
    site = ""
    for frame, line in traceback.walk_tb(exc.__traceback__):
        owner = frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in paths:
            file = frame.f_code.co_filename
            source = linecache.getline(file, line).strip()
            site = f" in module '{paths[id(owner)] or '(the model)'}' ({type(owner).__name__}) at `{source}` ({file}:{line})"
    return site


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
    target = node.target
    if target in _SCALE_FUNCTIONS or (node.op == "call_method" and target in _SCALE_METHODS):
        return _classify_product(node, model, inputs, written, make)
    if node.op == "call_method":
        for kind, methods in _METHOD_KINDS:
            if target in methods:
                return make(kind, written)
        return make(UNKNOWN, written)
    if target in _CONV_FUNCTIONS:
        return make(CONV, written, **_conv_of_call(node, model))
    if target in _LINEAR_FUNCTIONS:
        return _linear_of_call(node, model, written, make)
    if target is F.batch_norm:
        return _batchnorm_of_call(node, model, written, make)
    if target is F.interpolate:
        return _classify_resize(str(_argument(node, 3, "mode", "nearest")), written, make)
    key = _target_key(target)
    if target in _POINTWISE_FUNCTIONS or key in _THIRD_PARTY_POINTWISE:
        return make(POINTWISE, written)
    if key in _THIRD_PARTY_PAD:
        return make(PAD, written) if not _argument(node, 4, "value", 0) else make(UNKNOWN, f"{written} with value != 0")
    for kind, functions in _FUNCTION_KINDS:
        if target in functions:
            return make(kind, written)
    if target in _MAXPOOL_FUNCTIONS:
        bound = dict(zip(["input", "kernel_size", "stride", "padding", "dilation"], node.args))
        bound.update(node.kwargs)
        pool = _pool_windows(bound["kernel_size"], bound.get("stride"), bound.get("padding", 0), bound.get("dilation", 1))
        return make(MAXPOOL, written, pool=pool)
    if target is F.pad:
        return make(PAD, written) if _pad_value(node) == 0 else make(UNKNOWN, f"{written} with value != 0")
    if target in _ADD_FUNCTIONS:
        if "alpha" in node.kwargs:
            return make(UNKNOWN, f"{written}(alpha=...)")
        return make(ADD if len(inputs) == 2 else POINTWISE, written)
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


def _classify_product(node: fx.Node, model: nn.Module, inputs: tuple[str, ...], written: str, make: Callable[..., Op]) -> Op:
    """``x * c``, ``x / c``, ``x - c`` with a constant or parameter ``c``: pointwise (relevance passes);
    ``x * g`` with two activations: a gate, ``g`` being the operand computed by a sigmoid-type function
    (through views and expands), e.g. squeeze-and-excitation, ECA, SiLU written as ``x * sigmoid(x)``."""
    target = node.target
    is_product = target in (operator.mul, operator.imul, torch.mul, "mul", "mul_")
    data_first = isinstance(node.args[0], fx.Node) and node.args[0].name == inputs[0]
    if len(inputs) == 1 and (is_product or data_first):
        return make(POINTWISE, written)
    if len(inputs) == 2 and is_product and inputs[0] != inputs[1]:
        gates = [i for i, arg in enumerate(node.args[:2]) if isinstance(arg, fx.Node) and _is_gate_output(arg, model)]
        if len(gates) == 1:
            return make(GATE, written, gate=gates[0])
        return make(UNKNOWN, written, unsupported=(
            f"{written} multiplies two feature maps, "
            + ("both" if gates else "neither") + " computed by a sigmoid-type gate (Sigmoid, Hardsigmoid, Tanh); "
            "relprop explains products of a signal and one such gate."
        ))
    return make(UNKNOWN, written)


def _is_gate_output(node: fx.Node, model: nn.Module) -> bool:
    """Whether ``node`` is a sigmoid-type activation, possibly followed by views / expands / reshapes."""
    while True:
        if node.op == "call_module":
            return isinstance(model.get_submodule(str(node.target)), _GATE_MODULES)
        if node.target in _GATE_FUNCTIONS or node.target in _GATE_METHODS:
            return True
        if node.target not in _LAYOUT_METHODS and node.target not in _LAYOUT_FUNCTIONS:
            return False
        if not node.args or not isinstance(node.args[0], fx.Node):
            return False
        node = node.args[0]


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


def _permutation(node: fx.Node) -> tuple[int, ...] | None:
    """The dimension order of a 4-d ``permute`` (``x.permute(0, 2, 3, 1)`` or ``torch.permute(x, [0, 2, 3, 1])``);
    None if unknown."""
    dims = node.args[1:] if node.op == "call_method" else node.args[1:2]
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = tuple(dims[0])
    if not all(isinstance(d, int) for d in dims):
        return None
    return tuple(d % 4 for d in dims) if len(dims) == 4 else None


def _parameter_getter(node: Any, model: nn.Module) -> Callable[[], Any]:
    if isinstance(node, fx.Node):
        return lambda: functools.reduce(getattr, str(node.target).split("."), model)
    return lambda: node


def _linear_of_call(node: fx.Node, model: nn.Module, written: str, make: Callable[..., Op]) -> Op:
    weight, bias = _argument(node, 1, "weight", None), _argument(node, 2, "bias", None)
    computed = [n for n in (weight, bias) if isinstance(n, fx.Node) and n.op != "get_attr"]
    if computed or not isinstance(weight, fx.Node):
        return make(UNKNOWN, written, unsupported=f"{written} whose weight is computed in forward(); relprop needs it as a parameter.")
    return make(LINEAR, written, linear=LinearSpec(_parameter_getter(weight, model), _parameter_getter(bias, model)))


def _batchnorm_of_call(node: fx.Node, model: nn.Module, written: str, make: Callable[..., Op]) -> Op:
    """``F.batch_norm`` (timm's ``BatchNormAct2d`` calls it) in eval mode: a BatchNorm like ``nn.BatchNorm2d``."""
    names = ("running_mean", "running_var", "weight", "bias")
    values = [_argument(node, i + 1, name, None) for i, name in enumerate(names)]
    training, eps = _argument(node, 5, "training", False), _argument(node, 7, "eps", 1e-5)
    if training or any(isinstance(v, fx.Node) and v.op != "get_attr" for v in values) or values[1] is None:
        return make(UNKNOWN, written, unsupported=(
            f"{written} in training mode or without running statistics; relprop explains eval-mode BatchNorm."
        ))
    getters = {name: _parameter_getter(v, model) for name, v in zip(names, values)}
    getters["eps"] = lambda: eps
    return make(BATCHNORM, written, norm=BatchNormSpec(getters))


def _classify_module(module: nn.Module, make: Callable[..., Op]) -> Op:
    type_name = type(module).__name__
    if isinstance(module, nn.Conv2d):
        return make(CONV, type_name, module=module, **_conv_of_module(module))
    if isinstance(module, nn.Linear):
        return make(LINEAR, type_name, module=module, linear=LinearSpec(lambda: module.weight, lambda: module.bias))
    if isinstance(module, nn.BatchNorm2d):
        return make(BATCHNORM, type_name, module=module)
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        return make(NORM, type_name, module=module)
    if isinstance(module, nn.Upsample):
        return _classify_resize(module.mode, type_name, make, module)
    if isinstance(module, (nn.AdaptiveMaxPool2d,)):
        return make(MAXPOOL, type_name, module=module)
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

    getter = functools.partial(_parameter_getter, model=model)
    computed = [k for k in ("weight", "bias") if isinstance(bound[k], fx.Node) and bound[k].op != "get_attr"]
    if computed:
        return {"unsupported": f"F.conv2d whose {computed[0]} is computed in forward(); relprop needs it as a parameter."}
    return _conv_canonical(
        getter(bound["weight"]), getter(bound["bias"]), bound["stride"], bound["padding"], bound["dilation"],
        bound["groups"], "zeros", "F.conv2d",
    )
