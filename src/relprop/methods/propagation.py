"""The backward relevance walk shared by RSP and Attribution Equilibrium.

A method is a seed (where relevance starts, how it is normalised) plus a rule for hidden
convolutions; everything else — tracing, the recording forward pass, the input layer's z^B rule,
pooling, residual adds, concatenations — lives here and is the same for both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import InputError, RelpropError, UnsupportedLayerError
from ..forward import ForwardRecord, record_forward
from ..graph import (
    ADD, AVGPOOL, BATCHNORM, CAT, CONSTANT, CONV, INPUT, LAYOUT, LINEAR, MAXPOOL, POINTWISE, ModelGraph, Op,
)
from ..model_state import evaluation_mode
from ..rules.conv_ops import ConvGeometry
from ..rules.structural import (
    add_rule, adjoint, cat_rule, maxpool_rule, nonzero_mask_rule, proportional_pool_rule,
)
from ..rules.zbox import zbox_conv
from ..seeds import authors_seed_layer, channel_contribution, default_seed_layer
from ..targets import Target, check_input, resolve_targets

Mode = Literal["default", "reference"]
Bounds = Union[None, tuple[Union[float, Tensor], Union[float, Tensor]]]

_SUPPORTED = (
    "Supported on the explained path: Conv2d (any stride, padding, dilation, groups), BatchNorm2d, "
    "ReLU-family activations, Dropout, max / average / adaptive-average pooling, zero padding, "
    "flatten / view / reshape, residual addition and torch.cat."
)


@dataclass
class _ConvPlan:
    geometry: ConvGeometry
    weight_op: str | None  # get_attr op holding the kernel (functional conv2d) or None (module conv)
    input_chain: list[Op] | None = None  # ops from the image to this conv, if it reads the image
    folded_bn: nn.BatchNorm2d | None = None


@dataclass
class _Plan:
    order: list[Op]
    convs: dict[str, _ConvPlan]
    keep: set[str]
    replay: set[str]
    gains: dict[str, float] = field(default_factory=dict)
    dropped_input: dict[str, int] = field(default_factory=dict)  # add op -> index of the input it drops


class RelevancePropagation:
    """Base class: trace once, then explain batches with one forward pass and one backward walk.

    Subclasses define ``_normalise_seed`` and ``_hidden_conv``.
    """

    name = "relevance propagation"

    def __init__(
        self,
        model: nn.Module,
        seed_layer: str | None = None,
        mode: Mode = "default",
        input_bounds: Bounds = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
        if mode not in ("default", "reference"):
            raise ValueError(f"mode must be 'default' or 'reference'; got {mode!r}.")
        self.model = model
        self.mode = mode
        self.input_bounds = input_bounds
        self.graph = ModelGraph(model)
        if seed_layer is not None:
            self.seed_op = self.graph.resolve(seed_layer)
        elif self.seeds_at_logits:
            self.seed_op = self.graph.by_name[self.graph.output_name].inputs[0]
        elif mode == "reference":
            self.seed_op = authors_seed_layer(model, self.graph)
        else:
            self.seed_op = default_seed_layer(self.graph)
        self.seed_layer = self.graph.display_name(self.seed_op)
        self._plan = self._make_plan()

    # ----------------------------------------------------------------- method-specific parts

    seeds_at_logits = False
    """Whether the walk starts at the logits (LRP family) rather than at a convolutional seed layer."""

    def _initial_relevance(self, record: ForwardRecord, targets: Tensor) -> Tensor:
        """Relevance at the seed op: the channel contribution map ``A ⊙ mean_hw(∂y_t/∂A)``, normalised."""
        with torch.enable_grad():
            picked = record.logits.gather(1, targets[:, None]).sum()
            (grad,) = torch.autograd.grad(picked, record.seed, allow_unused=True)
        if grad is None:
            raise ValueError(f"seed layer '{self.seed_layer}' does not feed the model's logits.")
        if record.seed.dim() != 4:
            raise ValueError(
                f"seed layer '{self.seed_layer}' outputs shape {tuple(record.seed.shape)}; "
                "a (N, C, h, w) feature map is needed."
            )
        return self._normalise_seed(channel_contribution(record.seed.detach(), grad))

    def _normalise_seed(self, seed: Tensor) -> Tensor:
        """Scale the channel contribution map (N, C, h, w) per sample."""
        raise NotImplementedError

    def _linear(self, a: Tensor, relevance: Tensor, op: Op) -> Tensor:
        """Relevance rule of a Linear layer (N, in) <- (N, out); methods without one reject Linear layers."""
        raise NotImplementedError

    def _hidden_conv(
        self, a: Tensor, relevance: Tensor, weight: Tensor, geometry: ConvGeometry, op: Op
    ) -> Tensor:
        """Relevance rule of a convolution that does not read the image."""
        raise NotImplementedError

    def _add_split(self) -> str:
        """How a residual add splits relevance: 'magnitude' or 'positive'."""
        return "magnitude" if self.mode == "default" else "positive"

    def _drops_skip_paths(self) -> bool:
        """Whether residual adds send everything to the longer branch (the authors' AE ResNet)."""
        return False

    # ----------------------------------------------------------------- public API

    def attribute(self, x: Tensor, target: Target = None) -> Tensor:
        """Relevance of every input element for the target class.

        x: (N, C, H, W) floating-point batch on the model's device and dtype.
        target: None (top-1 class of each sample), an int, a sequence of N ints or a LongTensor (N,).
        Returns a signed tensor of x's shape, dtype and device; sample i does not depend on the
        other samples of the batch.
        """
        x = check_input(x)
        self._check_compatible(x)
        self.graph.refuse_bypassed_hooks()
        with evaluation_mode(self.model), torch.no_grad():
            record = record_forward(self.graph, x, self.seed_op, self._plan.keep, self._plan.replay)
            targets = resolve_targets(target, record.logits.detach())
            seed = self._initial_relevance(record, targets)
            record.logits = record.logits.detach()
            result = self._walk(seed, record, x)
        if not torch.isfinite(result).all():
            if self.mode == "reference":
                raise RelpropError(
                    f"{self.name} in reference mode divided by zero on this input, as the authors' code does "
                    "(algorithms.md Q4/Q26: an empty positive or negative part, or a seed summing to 0); "
                    "use mode='default'."
                )
            raise RelpropError(
                f"{self.name} relevance overflowed {x.dtype} on {type(self.model).__name__} (its magnitude "
                "grows with depth); explain in float64 (model.double(), x.double()) or pick a later seed_layer."
            )
        return result

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__}, seed_layer={self.seed_layer!r}, mode={self.mode!r})"

    # ----------------------------------------------------------------- planning

    def _make_plan(self) -> _Plan:
        g = self.graph
        if self.seed_op == g.input_name:
            raise ValueError("seed_layer must be a layer after the input.")
        path = g.ancestors(self.seed_op) & g.descendants(g.input_name)
        order = [op for op in g.ops if op.name in path]
        keep: set[str] = set()
        replay: set[str] = set()
        convs: dict[str, _ConvPlan] = {}
        for op in order:
            self._check_rule(op)
            if op.kind == CONV:
                convs[op.name] = self._plan_conv(op)
                keep.add(op.inputs[0])
                chain = convs[op.name].input_chain
                if chain is not None:
                    keep.add(g.input_name)
                    replay.update(c.name for c in chain)
            elif op.kind in (MAXPOOL, AVGPOOL):
                keep.add(op.inputs[0])
                replay.add(op.name)
            elif op.kind == LINEAR:
                keep.add(op.inputs[0])
            elif op.kind == LAYOUT:
                replay.add(op.name)
            elif op.kind == ADD:
                keep.update(op.inputs)
            elif op.kind in (CAT, BATCHNORM) and self.mode == "reference":
                keep.update(op.inputs)
        if not self.seeds_at_logits:
            flattening = [op for op in order if op.kind == LAYOUT and not _is_pad(op)]
            if flattening:
                raise ValueError(
                    f"seed_layer '{self.seed_layer}' comes after '{flattening[0].path}' ({flattening[0].type_name}), "
                    "so its output is no (N, C, h, w) feature map; choose a convolutional block."
                )
        plan = _Plan(order, convs, keep, replay)
        if self._drops_skip_paths():
            for op in order:
                if op.kind == ADD:
                    self._plan_dropped_skip(op, plan)
        return plan

    def _check_rule(self, op: Op) -> None:
        if op.kind in (INPUT, CONV, BATCHNORM, POINTWISE, MAXPOOL, AVGPOOL, LAYOUT, ADD, CAT, CONSTANT):
            if op.kind == CONV and op.attrs["padding_mode"] != "zeros":
                raise UnsupportedLayerError(
                    op.path, f"{op.type_name}(padding_mode={op.attrs['padding_mode']!r})", self.name,
                    "Only zero padding is supported.",
                )
            return
        if op.kind == LINEAR and type(self)._linear is not RelevancePropagation._linear:
            return
        hint = _SUPPORTED
        if op.kind == LINEAR:
            hint = (
                f"{self.name} starts at a convolutional seed layer and has no rule for a Linear layer "
                f"between the seed ('{self.seed_layer}') and the input; choose a seed_layer below it."
            )
        raise UnsupportedLayerError(op.path, op.type_name, self.name, hint)

    def _plan_conv(self, op: Op) -> _ConvPlan:
        g = self.graph
        attrs = op.attrs
        geometry = ConvGeometry(attrs["stride"], self._padding(op), attrs["dilation"], attrs["groups"])
        plan = _ConvPlan(geometry, attrs.get("weight_node"))
        chain: list[Op] = []
        current = g.by_name[op.inputs[0]]
        while current.kind in (LAYOUT, POINTWISE) and len(current.inputs) >= 1:
            chain.insert(0, current)
            current = g.by_name[current.inputs[0]]
        if current.kind == INPUT:
            plan.input_chain = chain
            users = g.consumers[op.name]
            if self.mode == "default" and len(users) == 1 and g.by_name[users[0]].kind == BATCHNORM:
                plan.folded_bn = g.by_name[users[0]].module  # type: ignore[assignment]
        return plan

    def _padding(self, op: Op) -> tuple[int, int]:
        padding = op.attrs["padding"]
        if padding == "valid":
            return (0, 0)
        if padding == "same":
            weight = self._weight(op)
            totals = [d * (k - 1) for d, k in zip(op.attrs["dilation"], weight.shape[2:])]
            if any(t % 2 for t in totals):
                raise UnsupportedLayerError(
                    op.path, f"{op.type_name}(padding='same', asymmetric)", self.name,
                    "Use an explicit symmetric padding.",
                )
            return (totals[0] // 2, totals[1] // 2)
        return padding

    def _plan_dropped_skip(self, op: Op, plan: _Plan) -> None:
        """Authors' AE ResNet (Q13): the shorter branch of an add gets nothing, the fork point ×2."""
        g = self.graph
        a, b = op.inputs
        anc_a, anc_b = g.ancestors(a), g.ancestors(b)
        fork = max(anc_a & anc_b, key=g.index.__getitem__)
        anc_fork = g.ancestors(fork)
        skip = 0 if len(anc_a - anc_fork) < len(anc_b - anc_fork) else 1
        plan.dropped_input[op.name] = skip
        plan.gains[fork] = plan.gains.get(fork, 1.0) * 2.0

    # ----------------------------------------------------------------- the walk

    def _check_compatible(self, x: Tensor) -> None:
        params = [p for p in self.model.parameters()]
        if params and (params[0].dtype != x.dtype or params[0].device != x.device):
            raise InputError(
                f"x is {x.dtype} on {x.device} but the model's parameters are {params[0].dtype} on "
                f"{params[0].device}; call model.to(x.device, x.dtype) or convert x."
            )
        for name, conv in self._plan.convs.items():
            if conv.input_chain is not None:
                weight = self._weight(self.graph.by_name[name])
                expected = weight.shape[1] * conv.geometry.groups
                if x.shape[1] != expected:
                    raise InputError(
                        f"x has {x.shape[1]} channels but the model's first convolution "
                        f"('{self.graph.by_name[name].path}') expects {expected}."
                    )

    def _weight(self, op: Op) -> Tensor:
        if "weight" in op.attrs:
            return op.attrs["weight"]()
        node = self.graph.by_name[op.attrs["weight_node"]].node
        value: object = self.model
        for part in str(node.target).split("."):
            value = getattr(value, part)
        return value  # type: ignore[return-value]

    def _walk(self, seed: Tensor, record: ForwardRecord, x: Tensor) -> Tensor:
        plan = self._plan
        relevance: dict[str, Tensor] = {self.seed_op: seed}
        values = record.values
        pending = _backward_uses(plan)
        result: Tensor | None = None
        for op in reversed(plan.order):
            r = relevance.pop(op.name, None)
            if r is None:
                continue
            if op.name in plan.gains:
                r = r * plan.gains[op.name]
            if op.kind == INPUT:
                result = r
                continue
            for inp, contribution in zip(op.inputs, self._propagate(op, r, record, x)):
                if contribution is not None:
                    relevance[inp] = relevance[inp] + contribution if inp in relevance else contribution
            for inp in _needed_inputs(op, plan):
                pending[inp] -= 1
                if pending[inp] == 0 and inp != self.graph.input_name:
                    values.pop(inp, None)
        if result is None:
            return torch.zeros_like(x)
        return result

    def _propagate(self, op: Op, r: Tensor, record: ForwardRecord, x: Tensor) -> Sequence[Tensor | None]:
        values = record.values
        rest: list[None] = [None] * (len(op.inputs) - 1)
        kind = op.kind
        if kind in (POINTWISE, CONSTANT):
            return [r, *rest]
        if kind == LAYOUT:
            point = torch.zeros(record.shapes[op.inputs[0]], dtype=r.dtype, device=r.device)
            return [adjoint(record.replays[op.name], point, r), *rest]
        a = values.get(op.inputs[0])
        if kind == MAXPOOL:
            return [maxpool_rule(record.replays[op.name], a, r), *rest]
        if kind == AVGPOOL:
            return [self._avgpool(record.replays[op.name], a, r), *rest]
        if kind == LINEAR:
            return [self._linear(a, r, op), *rest]
        if kind == BATCHNORM:
            return [nonzero_mask_rule(a, r) if self.mode == "reference" else r, *rest]
        if kind == ADD:
            dropped = self._plan.dropped_input.get(op.name)
            if dropped is not None:
                return [None, r] if dropped == 0 else [r, None]
            return list(add_rule(values[op.inputs[0]], values[op.inputs[1]], r, self._add_split()))
        if kind == CAT:
            dim = op.node.args[1] if len(op.node.args) > 1 else op.node.kwargs.get("dim", 0)
            if self.mode == "reference":
                parts = [values[i] for i in op.inputs]
            else:
                parts = [torch.empty(record.shapes[i], device="meta") for i in op.inputs]
            return cat_rule(parts, r, dim, mask_zeros=self.mode == "reference")
        if kind == CONV:
            conv = self._plan.convs[op.name]
            weight = self._weight(op)
            if conv.input_chain is not None:
                return [self._input_conv(conv, a, r, weight, record, x)]
            return [self._hidden_conv(a, r, weight, conv.geometry, op)]
        raise AssertionError(f"no rule for {op.kind}")  # _check_rule rejects these at construction

    def _avgpool(self, pool, a: Tensor, r: Tensor) -> Tensor:  # type: ignore[no-untyped-def]
        if self.mode == "reference":
            return proportional_pool_rule(pool, a, r, epsilon=1e-9, clamp=self._clamps_pool_input())
        return proportional_pool_rule(pool, a, r)

    def _clamps_pool_input(self) -> bool:
        """Whether the authors' pooling rule uses ``a⁺`` (AE) rather than ``a`` (RSP)."""
        return True

    def _input_conv(
        self, conv: _ConvPlan, a: Tensor, r: Tensor, weight: Tensor, record: ForwardRecord, x: Tensor
    ) -> Tensor:
        """z^B at the convolution that reads the image; bounds follow the ops in between (padding)."""
        low, high = self._bounds(x)
        for op in conv.input_chain or []:
            replay = record.replays[op.name]
            low, high = replay(low), replay(high)
        if conv.folded_bn is not None:
            bn = conv.folded_bn
            scale = torch.rsqrt(bn.running_var + bn.eps)  # type: ignore[operator]
            if bn.weight is not None:
                scale = scale * bn.weight
            weight = weight * scale.to(weight.dtype).view(-1, 1, 1, 1)
        return zbox_conv(a, r, weight, conv.geometry, low, high)

    def _bounds(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Bound images (N, C, H, W): the given ``input_bounds`` or each sample's min / max (Q20)."""
        if self.input_bounds is None:
            flat = x.reshape(x.shape[0], -1)
            low = flat.min(dim=1).values.view(-1, 1, 1, 1)
            high = flat.max(dim=1).values.view(-1, 1, 1, 1)
        else:
            low, high = (torch.as_tensor(b, dtype=x.dtype, device=x.device) for b in self.input_bounds)
            if low.dim() == 1:
                low, high = low.view(1, -1, 1, 1), high.view(1, -1, 1, 1)
        return low.expand_as(x).contiguous(), high.expand_as(x).contiguous()


def _needed_inputs(op: Op, plan: _Plan) -> list[str]:
    if op.kind in (CONV, MAXPOOL, AVGPOOL, LINEAR):
        return [op.inputs[0]]
    if op.kind in (ADD, CAT, BATCHNORM):
        return [i for i in op.inputs if i in plan.keep]
    return []


def _backward_uses(plan: _Plan) -> dict[str, int]:
    uses: dict[str, int] = {}
    for op in plan.order:
        for inp in _needed_inputs(op, plan):
            uses[inp] = uses.get(inp, 0) + 1
    return uses


def _is_pad(op: Op) -> bool:
    """Zero padding keeps the (N, C, H, W) layout; flatten / view / reshape do not."""
    if op.module is not None:
        return not isinstance(op.module, nn.Flatten)
    return op.node.target is torch.nn.functional.pad
