"""Trace a model with torch.fx: once for every input, or for inputs of one shape when ``forward()`` branches
on the shape; tracing failures become errors that name the module and source line."""

from __future__ import annotations

import inspect
import linecache
import operator
import traceback
import warnings
from typing import Any, Callable, Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.meta_tracer import MetaProxy, MetaTracer

from ...errors import RelpropError
from ...model_state import forward_defaults
from .classify import INPLACE_FUNCTION_TWINS, MAXPOOL_FUNCTIONS, leaf_module_types, traced_as_one_call

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


def trace_model(model: nn.Module, example: Optional[Example] = None) -> fx.Graph:
    """Symbolically trace ``model`` in eval mode (restoring every module's flag afterwards), for every
    input or, with ``example``, for inputs of that shape (see :class:`ModelGraph`).

    timm's dynamic "same" padding (which reads the input size) and torchvision's ``Normalize`` transform
    are traced as one call.  Without an example, a branch on the input raises :class:`BranchesOnInput`.
    ``forward()``'s parameters after the input take their defaults, as in ``model(x)``
    (``forward(self, x, return_features=False)`` is traced with ``return_features=False``).  A Conv2d that
    pads otherwise than with zeros evenly is traced as its padding followed by an unpadded convolution,
    the values of a maximum along dimensions (``x.max(dim)[0]``, ``torch.max(x, dim).values``) as ``torch.amax``
    and ``torch.stack`` as the concatenation of its inputs with the new dimension (see :func:`_with_stack_as_cat`).
    What reads a tensor after an in-place op changed it reads that op's result (see :func:`_with_writes_followed`).
    """
    flags = {m: m.training for m in model.modules()}
    autowrap = traced_as_one_call()
    defaults = forward_defaults(model)
    try:
        model.eval()
        if example is None:
            graph = _Tracer(autowrap_functions=autowrap).trace(model, concrete_args=defaults or None)
            _refuse_shape_dependent_windows(graph)
        else:
            graph = _trace_with_shapes(model, example, autowrap, defaults)
        graph = _with_writes_followed(_without_placeholders_for(graph, defaults), model)
        return _with_stack_as_cat(_with_max_values_as_amax(_with_explicit_conv_padding(graph, model)))
    except BranchesOnInput:
        raise
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


def _refuse_shape_dependent_windows(graph: fx.Graph) -> None:
    """Raise :class:`BranchesOnInput` if a max pooling's window is computed from a shape
    (``F.max_pool2d(x, x.size()[2:])``): its rule needs the windows, which are then known per input shape."""
    for node in graph.nodes:
        if node.op == "call_function" and node.target in MAXPOOL_FUNCTIONS:
            window: list[fx.Node] = []
            fx.node.map_arg((node.args[1:], {k: v for k, v in node.kwargs.items() if k != "input"}), window.append)
            if window:
                raise BranchesOnInput(
                    f"the window of {node.name} is computed from its input's shape, so relprop traces the model "
                    "once per input shape."
                )


class _InferenceProxy(fx.Proxy):
    """A traced value as at inference, under ``torch.no_grad()``: ``requires_grad`` is False, so a forward
    that branches on it (DenseNet's ``memory_efficient`` checkpointing) traces its plain branch, which
    computes the same function."""

    @property
    def requires_grad(self) -> bool:
        return False


class _Tracer(fx.Tracer):
    """torch.fx's tracer that keeps the third-party modules of :func:`leaf_module_types` as one call
    (besides torch.nn's layers) and traces :class:`_InferenceProxy` values."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, leaf_module_types()) or super().is_leaf_module(m, module_qualified_name)

    def proxy(self, node: fx.Node) -> _InferenceProxy:
        return _InferenceProxy(node, self)


class _ShapedProxy(MetaProxy, _InferenceProxy):
    """A traced value that knows its example's shape, dtype and device (a fake tensor): ``size(d)`` and
    ``shape`` are numbers, ``device`` is a ``torch.device`` (a graph is traced for one device), so a forward
    that checks ``x.device.type`` traces."""

    @property
    def device(self) -> Any:
        meta = self._tensor_meta if hasattr(self, "_tensor_meta") else None
        return meta.device if meta is not None else super().device

    def size(self, dim: Optional[int] = None) -> Any:  # MetaProxy returns the whole size for dim=0
        meta = self._tensor_meta if hasattr(self, "_tensor_meta") else None
        if meta is not None:
            return meta.size() if dim is None else meta.size(dim)
        return self.tracer.create_proxy("call_method", "size", (self,) if dim is None else (self, dim), {})


class _ShapeTracer(_Tracer, MetaTracer):
    """torch.fx tracing in which every value carries its shape, computed on fake tensors (no memory,
    no arithmetic) from the example input and the model's real parameters."""

    allow_insert_stateless_mods = False  # never add modules to the user's model

    def __init__(self, fake_mode: FakeTensorMode, autowrap: tuple[Callable[..., Any], ...]) -> None:
        super().__init__(autowrap_functions=autowrap)
        self.fake_mode = fake_mode
        self._of_defaults: set[fx.Node] = set()  # the placeholders of concrete_args and the checks reading them

    def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, *rest: Any, **options: Any) -> Any:
        with self.fake_mode:
            if (kind == "placeholder" and target not in self.meta_args) or self._reads_defaults((args, kwargs)):
                # a default-valued parameter (not a tensor) and torch.fx's check of its value: no shape to compute
                proxy = fx.Tracer.create_proxy(self, kind, target, args, kwargs, *rest, **options)
                self._of_defaults.add(proxy.node)
                return proxy
            if kind == "call_module" and self._is_kept_leaf(target):
                # an elementwise map whose own forward checks values (Normalize's std == 0): same shape out
                proxy = fx.Tracer.create_proxy(self, kind, target, args, kwargs, *rest, **options)
                proxy.install_tensor_meta(torch.empty_like(args[0]._tensor_meta))
                return proxy
            return super().create_proxy(kind, target, args, kwargs, *rest, **options)

    def _reads_defaults(self, arguments: Any) -> bool:
        read: list[fx.Node] = []
        fx.node.map_aggregate(arguments, lambda a: read.append(a.node) if isinstance(a, fx.Proxy) else None)
        return any(node in self._of_defaults for node in read)

    def _is_kept_leaf(self, target: str) -> bool:
        self._disable_module_getattr = True
        try:
            return isinstance(self.root.get_submodule(target), leaf_module_types())
        finally:
            self._disable_module_getattr = False

    def proxy(self, node: fx.Node) -> _ShapedProxy:
        return _ShapedProxy(node, self)


def _trace_with_shapes(
    model: nn.Module, example: Example, autowrap: tuple[Callable[..., Any], ...], defaults: dict[str, Any],
) -> fx.Graph:
    shape, dtype, device = example
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    with fake_mode:
        fake = torch.empty(shape, dtype=dtype, device=device)
    name = next(iter(inspect.signature(model.forward).parameters))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a value whose shape could not be computed: fail here, naming it
        return _ShapeTracer(fake_mode, autowrap).trace(model, meta_args={name: fake}, concrete_args=defaults or None)


_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def _with_explicit_conv_padding(graph: fx.Graph, model: nn.Module) -> fx.Graph:
    """``graph`` with every call of an ``nn.Conv2d`` that pads with copies of its input (``padding_mode``
    'reflect', 'replicate', 'circular') or unevenly (``padding='same'`` with an even kernel) replaced by
    ``F.pad`` followed by ``F.conv2d`` without padding, as the module computes it: the padding becomes an
    op with its own rule (copies hand their relevance back to what they copy; zeros get none)."""
    for node in list(graph.nodes):
        module = model.get_submodule(str(node.target)) if node.op == "call_module" else None
        if not isinstance(module, nn.Conv2d) or type(module).forward is not nn.Conv2d.forward:
            continue
        pads = _conv_pads(module)
        if module.padding_mode == "zeros" and pads[0::2] == pads[1::2]:
            continue  # even zero padding: the convolution's own
        with graph.inserting_before(node):
            padded = graph.call_function(F.pad, (node.args[0], pads), {"mode": _PAD_MODES[module.padding_mode]})
            weight = graph.get_attr(f"{node.target}.weight")
            bias = graph.get_attr(f"{node.target}.bias") if module.bias is not None else None
            conv = graph.call_function(
                F.conv2d, (padded, weight, bias, module.stride, 0, module.dilation, module.groups)
            )
        for new in (padded, weight, bias, conv):
            if new is not None:
                new.meta = dict(node.meta)  # traced inside the module: its path and module stack
        node.replace_all_uses_with(conv)
        graph.erase_node(node)
    return graph


# ops whose result may share memory with their input: an in-place write to the result changes the input too
_VIEW_METHODS = {
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose", "t", "squeeze",
    "unsqueeze", "expand", "expand_as", "narrow", "select", "split", "chunk", "unbind", "diagonal", "movedim",
    "contiguous", "unfold", "as_strided", "detach",
}
_VIEW_FUNCTIONS = {
    operator.getitem, torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze,
    torch.narrow, torch.select, torch.split, torch.chunk, torch.unbind, torch.movedim, torch.diagonal, torch.t,
}


def _writes_in_place(node: fx.Node, model: nn.Module) -> bool:
    """Whether ``node`` overwrites its first argument (``x.mul_(g)``, ``F.relu(x, inplace=True)``, a module
    built with ``inplace=True``, ``operator.iadd``)."""
    if not node.args or not isinstance(node.args[0], fx.Node):
        return False
    if node.kwargs.get("inplace") is True:
        return True
    if node.op == "call_method":
        name = str(node.target)
        return name.endswith("_") and not name.endswith("__")
    if node.op == "call_module":
        return getattr(model.get_submodule(str(node.target)), "inplace", False) is True
    return node.op == "call_function" and node.target in INPLACE_FUNCTION_TWINS


def _is_view(node: fx.Node) -> bool:
    return (node.op == "call_method" and node.target in _VIEW_METHODS
            or node.op == "call_function" and node.target in _VIEW_FUNCTIONS)


def _with_writes_followed(graph: fx.Graph, model: nn.Module) -> fx.Graph:
    """``graph`` in which every op that reads a tensor after an in-place op overwrote it reads that op's
    result instead: relprop runs in-place ops out of place (a tensor a rule needs must not change), so
    ``out.mul_(gain); return out * alpha`` must read ``mul_``'s result, as the model's ``out`` holds it.

    Raises RelpropError for an in-place write into a view whose base (or another view of it) is read
    afterwards (``x[:, :8].mul_(2); return x``): which entries of the base change is not followed."""
    order = {node: i for i, node in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        if node.op == "output" or not _writes_in_place(node, model):
            continue
        written = node.args[0]
        for user in list(written.users):
            if order[user] > order[node]:
                user.replace_input_with(written, node)
        if _is_view(written):
            base = written.args[0] if written.args and isinstance(written.args[0], fx.Node) else None
            later = [u for u in (base.users if base is not None else ()) if u is not written and order[u] > order[node]]
            if later:
                raise RelpropError(
                    f"forward() writes in place into a view of a tensor ({node.name} into {written.name}, a view of "
                    f"{base.name}) and reads that tensor afterwards ({later[0].name}); relprop runs in-place ops "
                    "out of place and cannot follow such a write. Compute the changed part out of place (e.g. "
                    "torch.cat of the parts) in a subclass or a copy of the module."
                )
    return graph


_MAX_CALLS = (("call_method", "max"), ("call_function", torch.max))


def _with_max_values_as_amax(graph: fx.Graph) -> fx.Graph:
    """``graph`` with every maximum along dimensions whose indices are not read (``x.max(dim)[0]``,
    ``torch.max(x, dim=1).values``) replaced by ``torch.amax(x, dim, keepdim)``, which computes the same
    values and is a (global) max pooling; ``max`` of a whole tensor or of two tensors stays as it is."""
    for node in list(graph.nodes):
        if (node.op, node.target) not in _MAX_CALLS:
            continue
        arguments = dict(zip(("input", "dim", "keepdim"), node.args)) | dict(node.kwargs)
        if set(arguments) - {"input", "dim", "keepdim"} or not isinstance(arguments.get("dim"), int):
            continue
        values = [user for user in node.users if _reads_values(user, node)]
        unread = [  # the indices of `values, _ = x.max(1)`
            user for user in node.users if user.target is operator.getitem and user.args == (node, 1) and not user.users
        ]
        if len(values) + len(unread) != len(node.users):
            continue  # the indices are read (an arg-max): not a pooling
        with graph.inserting_before(node):
            amax = graph.call_function(
                torch.amax, (arguments["input"], arguments["dim"], arguments.get("keepdim", False))
            )
        amax.meta = dict(node.meta)
        for user in values:
            user.replace_all_uses_with(amax)
        for user in values + unread:
            graph.erase_node(user)
        graph.erase_node(node)
    return graph


def _with_stack_as_cat(graph: fx.Graph) -> fx.Graph:
    """``graph`` with every ``torch.stack(tensors, dim)`` replaced by ``torch.cat([t.unsqueeze(dim) ...], dim)``,
    which computes the same tensor with ops that have rules (timm's ``SelectiveKernel`` stacks its paths)."""
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not torch.stack:
            continue
        arguments = dict(zip(("tensors", "dim"), node.args)) | dict(node.kwargs)
        tensors, dim = arguments.get("tensors"), arguments.get("dim", 0)
        if set(arguments) - {"tensors", "dim"} or not isinstance(tensors, (list, tuple)) or not isinstance(dim, int):
            continue
        with graph.inserting_before(node):
            pieces = [graph.call_method("unsqueeze", (t, dim)) for t in tensors]
            cat = graph.call_function(torch.cat, (pieces, dim))
        for new in pieces + [cat]:
            new.meta = dict(node.meta)
        node.replace_all_uses_with(cat)
        graph.erase_node(node)
    return graph


def _reads_values(user: fx.Node, result: fx.Node) -> bool:
    """Whether ``user`` takes the values of the ``(values, indices)`` pair ``result``."""
    return user.op == "call_function" and (
        user.target is operator.getitem and user.args == (result, 0)
        or user.target is getattr and user.args == (result, "values")
    )


def _conv_pads(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """The (left, right, top, bottom) padding of ``conv``'s input (``padding='same'``: as torch pads it)."""
    if conv.padding == "valid":
        return (0, 0, 0, 0)
    if conv.padding == "same":
        high, wide = (d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size))
        return (wide // 2, wide - wide // 2, high // 2, high - high // 2)
    high, wide = conv.padding  # type: ignore[misc]
    return (wide, wide, high, high)


def _without_placeholders_for(graph: fx.Graph, defaults: dict[str, Any]) -> fx.Graph:
    """``graph`` without the placeholders that torch.fx adds for ``concrete_args`` and the checks that
    read them (the values are constants of the graph): the input is its only placeholder again."""
    if not defaults:
        return graph
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    fixed = {node for node in placeholders[1:] if not str(node.target).startswith("*")}  # not *args, **kwargs
    for node in graph.nodes:  # in topological order: the checks that read a placeholder, and what reads those
        if any(arg in fixed for arg in node.all_input_nodes):
            fixed.add(node)
    if any(node.op == "output" for node in fixed):
        raise RelpropError("the model's output depends on a parameter of forward() other than its input.")
    for node in reversed(list(graph.nodes)):
        if node in fixed:
            graph.erase_node(node)
    return graph


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
