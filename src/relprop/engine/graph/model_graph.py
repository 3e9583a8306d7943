"""The traced model as canonical ops in topological order: consumer lists, name lookup, canonicalisation
(layouts, BatchNorm readers, padding and the image chain of convolutions) and replaying single ops."""

from __future__ import annotations

import difflib
import functools
import operator
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from ...errors import RelpropError, UnsupportedLayerError
from ...model_state import ATTENTION_OUT_OF_SCOPE, TOKEN_MIXING
from ...rules.conv_ops import ConvGeometry
from .classify import (
    INPLACE_FUNCTION_TWINS, classify_node, enclosing_type, is_identity_in_eval, module_stack, permutation, written_call,
)
from .ops import (
    ADD, AVGPOOL, BATCHNORM, CAT, CHANNELS_LAST, CONV, GATE, INPUT, INPUT_CONV, LAYOUT, LINEAR, NORM, OUTPUT, PAD,
    POINTWISE, SPLIT, STRUCTURAL, ConvSpec, LinearSpec, Op,
)
from .trace import Example, trace_model


def _batchnorm_of(op: Op) -> Any:
    """What folding reads of BatchNorm op ``op``: its module, or the :class:`BatchNormSpec` of an ``F.batch_norm`` call."""
    return op.module if op.module is not None else op.norm


class ModelGraph:
    """A model traced into canonical ops in topological order, with consumer lists and name lookup.

    ``example``: None (one graph for every input), or the ``(shape, dtype, device)`` of the inputs the
    graph is for: tracing then knows every tensor's shape, so ``forward()`` may branch on shapes (as
    timm's VGG head does), and the graph holds for inputs of exactly that shape only.
    """

    def __init__(self, model: nn.Module, example: Optional[Example] = None) -> None:
        self.model = model
        self.example = example
        fx_graph = trace_model(model, example)
        self.ops: list[Op] = []
        structural: set[str] = set()
        for node in fx_graph.nodes:
            op = classify_node(node, model, structural)
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
        """Resolve layouts, Linear layers over channels, BatchNorm readers of convolutions and Linear layers,
        BatchNorms that only a Linear layer reads, and the convolutions reading the image."""
        for op in self.ops:
            self._resolve_layout(op)
        folded_back: set[str] = set()  # BatchNorms folded into the layer they read
        for op in self.ops:
            # a BatchNorm after a channels-last layer would normalise another dimension than its outputs
            reader = None if op.channels_last else self._only_batchnorm_reader(op)
            if reader is not None and op.kind == LINEAR and op.linear is not None:
                op.linear = LinearSpec(op.linear.weight, op.linear.bias, _batchnorm_of(reader))
                folded_back.add(reader.name)
            if op.kind == AVGPOOL:
                self._resolve_pads_before(op)
            if op.conv is None:
                continue
            if reader is not None:
                op.conv = ConvSpec(op.conv.geometry, op.conv.weight, op.conv.bias, _batchnorm_of(reader))
                folded_back.add(reader.name)
            self._resolve_pads_before(op)
            chain = self._image_chain(op)
            if chain is not None:
                op.kind = INPUT_CONV
                op.image_chain = chain
        for op in self.ops:
            if op.kind == LINEAR and op.linear is not None and not op.channels_last:
                self._fold_batchnorm_before(op, folded_back)

    def _resolve_pads_before(self, op: Op) -> None:
        """``op.pads_before``: the zero-padding ops feeding ``op`` directly (forward order);
        ``op.unpadded``: what they pad."""
        pads: list[str] = []
        current = self.by_name[op.inputs[0]]
        while current.kind == PAD:
            pads.insert(0, current.name)
            current = self.by_name[current.inputs[0]]
        op.pads_before, op.unpadded = tuple(pads), current.name if pads else ""

    def _fold_batchnorm_before(self, op: Op, folded_back: set[str]) -> None:
        """Linear ``op`` reading a BatchNorm through dropout only, where nothing else reads them (a head's
        ``BatchNorm1d → Dropout → Linear``): ``op`` becomes ``linear(bn(x))`` reading ``x``, so its rule sees
        the BatchNorm's shift as bias (unless the BatchNorm is folded into the layer before it)."""
        current = self.by_name[op.inputs[0]]
        while is_identity_in_eval(current) and len(self.consumers[current.name]) == 1 and current.inputs:
            current = self.by_name[current.inputs[0]]
        if current.kind != BATCHNORM or len(self.consumers[current.name]) != 1 or current.name in folded_back:
            return
        linear = op.linear
        op.linear = LinearSpec(linear.weight, linear.bias, linear.batchnorm, _batchnorm_of(current))  # type: ignore[union-attr]
        op.inputs = current.inputs[:1]

    def _only_batchnorm_reader(self, op: Op) -> Op | None:
        """The BatchNorm op that is the only reader of ``op``'s output, or None."""
        users = self.consumers[op.name]
        if len(users) != 1 or self.by_name[users[0]].kind != BATCHNORM:
            return None
        return self.by_name[users[0]]

    def _resolve_layout(self, op: Op) -> None:
        """Whether ``op``'s output is channels-last (a ``permute(0, 2, 3, 1)`` and what follows it up to the
        ``permute(0, 3, 1, 2)`` back); a Linear over the channels of such a map becomes a 1×1 convolution."""
        if op.kind == LAYOUT and op._node.target in ("permute", torch.permute):  # type: ignore[union-attr]
            op.channels_last = permutation(op._node) == CHANNELS_LAST  # type: ignore[arg-type]
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

    def refuse_attention(self, method: str, above: str | None = None) -> None:
        """Raise :class:`~relprop.UnsupportedLayerError` naming the module of the first product of two feature
        maps (attention's ``q @ k.transpose(-2, -1)``, ``F.scaled_dot_product_attention``): the attention
        modules whose class name does not say so (timm's ``CrossCovarianceAttn``, ``LiteMLA``).  Wherever it
        sits, or with ``above`` (an op name) only where it depends on that op (a CAM layer below attention)."""
        after = self.descendants(above) if above is not None else None
        op = next((op for op in self.ops if op.attends and (after is None or op.name in after)), None)
        if op is None:
            return
        node = op._node
        stack = module_stack(node)  # type: ignore[arg-type]
        raise UnsupportedLayerError(
            stack[-1] if stack else type(self.model).__name__,
            enclosing_type(node) or type(self.model).__name__,  # type: ignore[arg-type]
            method,
            f"It multiplies two feature maps ({written_call(node)}), as attention does. "  # type: ignore[arg-type]
            + ATTENTION_OUT_OF_SCOPE,
        )

    def refuse_linear_over_tokens(self, shapes: Mapping[str, torch.Size], method: str, above: str | None = None) -> None:
        """Raise :class:`~relprop.UnsupportedLayerError` naming the first Linear layer (or ``x @ W``) whose input,
        of the recorded ``shapes``, has more than two dimensions and is not a channels-last map: a sequence of
        tokens (N, L, C) or (N, C, L), as MLP-Mixer, ResMLP and vision transformers mix them after a patch
        embedding, which would otherwise be the only convolution and the seed of RSP and AE.  Wherever it sits,
        or with ``above`` (an op name) only where it depends on that op (a CAM layer below token mixing)."""
        after = self.descendants(above) if above is not None else None
        op = next((op for op in self.ops if op.kind == LINEAR and len(shapes.get(op.inputs[0], ())) > 2
                   and (after is None or op.name in after)), None)
        if op is None:
            return
        shape = "(N, " + ", ".join(str(d) for d in shapes[op.inputs[0]][1:]) + ")"
        raise UnsupportedLayerError(
            op.path, op.type_name, method,
            f"It is applied to a {shape} tensor, not to (N, features) or over the channels of a channels-last "
            f"map: {TOKEN_MIXING}. " + ATTENTION_OUT_OF_SCOPE,
        )

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

    def bypass(self, name: str) -> Op | None:
        """The first op (in forward order) through which relevance can flow from the output to the input
        without passing op ``name``, or None when op ``name`` lies on every such path.  A model that averages
        two calls of one network (test-time augmentation) has such a path around a seed in either call; so
        has a head that also reads an early feature map."""

        def avoiding(start: str, step: Callable[[Op], Any]) -> set[str]:
            return self._closure(start, lambda op: [] if op.name == name else step(op))

        forward = avoiding(self.input_name, lambda op: [u for u in self.consumers[op.name]
                                                         if op.name in self.by_name[u].relevance_inputs])
        if self.output_name not in forward:
            return None
        around = forward & avoiding(self.output_name, lambda op: op.relevance_inputs)
        around -= self.ancestors(name) | {self.input_name, self.output_name}
        return next((op for op in self.ops if op.name in around), None)

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

    def resolve(self, layer: str, argument: str = "seed_layer") -> str:
        """Op name of the output of ``layer`` (a module path such as ``'layer4'`` or an op name), given
        as the method's ``argument`` (named in the errors).

        The output of a module is the last op traced inside it.  Raises ``ValueError`` listing
        close names when nothing matches.
        """
        if not isinstance(layer, str):
            raise TypeError(
                f"{argument} must be a module path such as 'layer4' (a str); got {type(layer).__name__} {layer!r}."
            )
        if layer in self.by_name:
            return layer
        last = None
        for op in self.ops:
            if layer in module_stack(op._node):  # type: ignore[arg-type]
                last = op.name
        if last is None:
            choices = self.module_paths() + [op.name for op in self.ops]
            close = difflib.get_close_matches(layer, choices, n=5, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ValueError(
                f"{argument} '{layer}' names no module or operation of "
                f"{type(self.model).__name__}.{hint}"
            )
        return last

    def display_name(self, name: str) -> str:
        """The shortest module path whose output is op ``name`` (``'layer4'`` rather than its last ReLU)."""
        return self.producing_module(name) or self.by_name[name].path

    def producing_module(self, name: str) -> str | None:
        """The outermost module whose output is op ``name``, or None when it is a bare function call."""
        op = self.by_name[name]
        for path in module_stack(op._node):  # type: ignore[arg-type]
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
        target = INPLACE_FUNCTION_TWINS.get(node.target, node.target)  # type: ignore[union-attr]
        return target(*args, **kwargs)  # type: ignore[operator]


@dataclass(frozen=True)
class _Slot:
    """An activation argument of a replayed op: replaced by a new tensor, or else its recorded ``value``."""

    name: str
    value: Any
