"""The engine: plan once per model, then explain batches with one forward pass and one backward walk."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from ..arguments import flag
from ..errors import InputError, RelpropError, UnsupportedLayerError
from ..model_state import (
    caller_stacklevel, check_model_tensors, evaluation_mode, refuse_attention, refuse_torchscript, unwrap_model,
)
from ..rules.common import sample_total
from ..targets import Target, channel_mismatch, check_input, resolve_targets
from .forward import ForwardRecord, check_against_model, record_forward
from .graph import (
    INPUT, INPUT_CONV, PAD, POINTWISE, BranchesOnInput, BranchesOnValues, Example, ModelGraph, Op, probe_example,
)
from .layout import channels_first, in_layout
from .precision import float32_precision, warn_if_sixteen_bit, without_autocast
from .seeds import Seed
from .table import Needs, Rule, RuleTable, Step


@dataclass
class _Plan:
    order: list[Op]  # the ops between the image and the seed, in forward order
    rules: dict[str, Rule]
    needs: dict[str, Needs]
    replay: set[str]
    uses: dict[str, int]  # how many rules read each activation the forward pass must keep
    gains: dict[str, float]
    tracks_totals: bool  # whether a rule reads Step.total


@dataclass
class Traced:
    """A traced model ready to explain: its graph, the seed's op and display name, and the walk's plan."""

    graph: ModelGraph
    seed_op: str
    seed_layer: str
    plan: _Plan
    matches_model: bool = False  # whether a forward pass of the graph has been checked against the model's


_SHAPES_KEPT = 8
"""How many input shapes a model whose forward branches on shapes keeps a traced graph for."""


class Engine:
    """Explains a model with one method: a :class:`Seed` plus a :class:`RuleTable`.

    Construction traces the model and checks that every op between the image and the seed layer has
    a rule (raising :class:`~relprop.UnsupportedLayerError` before any computation); a model with
    attention or a TorchScript module is refused before tracing.  A ``DataParallel`` /
    ``DistributedDataParallel`` wrapper or a ``torch.compile``'d model is explained through the module it wraps.
    ``failure_hint`` completes the error raised when relevance stops being finite.

    A model whose ``forward()`` branches on its input's shape (timm's VGG head pools inputs smaller
    than 7×7) is traced once per input shape, at the first ``attribute`` with that shape (the last
    few are kept); construction checks it on a 224×224 example where the model accepts one.
    """

    def __init__(
        self, model: nn.Module, seed: Seed, table: RuleTable, method: str, *,
        failure_hint: str = "", allow_tf32: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
        model = unwrap_model(model)
        refuse_torchscript(model, method)
        refuse_attention(model, method)
        check_model_tensors(model)
        self.model, self.seed, self.table, self.method = model, seed, table, method
        self.failure_hint, self.allow_tf32 = failure_hint, flag("allow_tf32", allow_tf32)
        self._by_shape: OrderedDict[Example, Traced] | None = None
        try:
            self._latest: Traced | None = self._prepare(ModelGraph(model))
        except BranchesOnInput as branching:
            self._by_shape, self._latest, self._branching = OrderedDict(), None, branching
            example = probe_example(model)
            try:
                if example is not None:
                    self.trace_for(example)
            except (UnsupportedLayerError, BranchesOnValues):
                raise
            except RelpropError:  # the probe's shape does not suit the model: the first attribute() checks
                pass

    @property
    def seed_layer(self) -> str:
        """Module path (or op name) where the walk starts (for a model traced per input shape: the last traced)."""
        if self._latest is None:
            raise RelpropError(f"{self._branching} The seed layer is known after the first attribute().")
        return self._latest.seed_layer

    def trace_for(self, example: Example) -> Traced:
        """The graph and plan that explain inputs of ``example``'s shape, dtype and device."""
        if self._by_shape is None:
            return self._latest  # type: ignore[return-value]  # one graph for every input
        if example not in self._by_shape:
            self._by_shape[example] = self._prepare(ModelGraph(self.model, example))
            if len(self._by_shape) > _SHAPES_KEPT:
                self._by_shape.popitem(last=False)
        self._by_shape.move_to_end(example)
        self._latest = self._by_shape[example]
        return self._latest

    def _prepare(self, graph: ModelGraph) -> Traced:
        graph.refuse_attention(self.method)
        seed_op = self.seed.layer(graph)
        if seed_op == graph.input_name:
            raise ValueError("seed_layer must be a layer after the input.")
        seed_layer = graph.display_name(seed_op)
        plan = self._make_plan(graph, seed_op, seed_layer)
        bypass = graph.bypass(seed_op)
        if bypass is not None:
            warnings.warn(
                f"{self.method} starts at '{seed_layer}', but the logits also depend on the input through ops that "
                f"do not pass through it (from '{bypass.path}', {bypass.type_name}); their evidence is not in the "
                "map. Choose a seed_layer that every path from the input to the logits passes through, or a method "
                "that starts at the logits (LRP, the gradient family).",
                UserWarning, stacklevel=caller_stacklevel(),
            )
        return Traced(graph, seed_op, seed_layer, plan)

    def _make_plan(self, g: ModelGraph, seed_op: str, seed_layer: str) -> _Plan:
        # ops that only compute a gate's multiplier get no relevance: they are off the path and need no rule
        path = g.relevance_ancestors(seed_op) & g.descendants(g.input_name)
        order = [op for op in g.ops if op.name in path]
        rules = self._rules_for([op for op in order if op.kind != INPUT])
        self.seed.check_path(g, order, seed_layer)
        replay: set[str] = set()
        uses: dict[str, int] = {}
        gains: dict[str, float] = {}
        needs_of = {name: rule.needs(g.by_name[name]) for name, rule in rules.items()}
        for name, rule in rules.items():
            needs = needs_of[name]
            replay.update(needs.replays)
            for value in needs.values:
                uses[value] = uses.get(value, 0) + 1
            for target, gain in rule.prepare(g.by_name[name], g).items():
                gains[target] = gains.get(target, 1.0) * gain
        return _Plan(order, rules, needs_of, replay, uses, gains, any(rule.reads_total for rule in rules.values()))

    def _rules_for(self, ops: list[Op]) -> dict[str, Rule]:
        """The rule of every op; if some have none, the error names the first unsupported *module* (what
        the user wrote, e.g. a GRU) rather than the tensor ops around it."""
        rules: dict[str, Rule] = {}
        refused: list[tuple[Op, UnsupportedLayerError]] = []
        for op in ops:
            try:
                rules[op.name] = self.table.rule_for(op, self.method)
            except UnsupportedLayerError as error:
                refused.append((op, error))
        if refused:
            raise next((e for op, e in refused if op.module is not None), refused[0][1])
        return rules

    def attribute(self, x: Tensor, target: Target = None) -> Tensor:
        """Relevance of every input element for the target class: (N, C, H, W) -> x's shape, dtype, device."""
        x, traced = self._checked(x)
        with evaluation_mode(self.model), torch.no_grad(), float32_precision(self.allow_tf32), \
                without_autocast(self.method):
            record, seed = self._seed(traced, x, target)
            result = self._walk(traced, seed, record, x)
        if not torch.isfinite(result).all():
            raise RelpropError(f"{self.method} relevance is not finite on this input. {self.failure_hint}".strip())
        return result

    def seed_relevance(self, x: Tensor, target: Target = None) -> Tensor:
        """The relevance the walk starts from, at the seed layer: (N, C, H, W) -> the seed layer's output
        shape (e.g. (N, 2048, 7, 7) at ResNet-50's ``layer4``)."""
        x, traced = self._checked(x)
        with evaluation_mode(self.model), torch.no_grad(), float32_precision(self.allow_tf32), \
                without_autocast(self.method):
            return self._seed(traced, x, target)[1]

    def _checked(self, x: Tensor) -> tuple[Tensor, Traced]:
        """``x`` checked against the model (dtype, device, channels) and the graph that explains its shape."""
        x = check_input(x)
        self._check_dtype_and_device(x)
        warn_if_sixteen_bit(self.method, x.dtype)
        known = self._latest
        if known is not None:  # before tracing for a new shape, which a wrong channel count would fail
            self._check_channels(x, known.plan)
        traced = self.trace_for((x.shape, x.dtype, x.device))
        if known is None:
            self._check_channels(x, traced.plan)
        traced.graph.refuse_bypassed_hooks()
        return x, traced

    def _seed(self, traced: Traced, x: Tensor, target: Target) -> tuple[ForwardRecord, Tensor]:
        """The recording forward pass and the seed relevance for the targets."""
        plan = traced.plan
        # once per graph, on the first batch it explains; before the record, which holds the activations.
        # A copy of x: a forward that writes into its input must not change the caller's x
        reference = None if traced.matches_model else self.model(x.clone())
        record = record_forward(traced.graph, x, traced.seed_op, set(plan.uses), plan.replay)
        if reference is not None:
            check_against_model(self.model, reference, record.logits.detach(), tf32=self.allow_tf32)
            traced.graph.refuse_linear_over_tokens(record.shapes, self.method)
            traced.matches_model = True
        targets = resolve_targets(target, record.logits.detach())
        seed = self.seed.relevance(record, targets, traced.graph, traced.seed_layer)
        record.logits = record.logits.detach()
        return record, seed

    def _check_dtype_and_device(self, x: Tensor) -> None:
        params = list(self.model.parameters())
        if params and (params[0].dtype != x.dtype or params[0].device != x.device):
            raise InputError(
                f"x is {x.dtype} on {x.device} but the model's parameters are {params[0].dtype} on "
                f"{params[0].device}; call model.to(x.device, x.dtype) or convert x."
            )

    @staticmethod
    def _check_channels(x: Tensor, plan: _Plan) -> None:
        """InputError if x's channels differ from those of a convolution that reads the image through
        channel-preserving ops only (not, e.g., TResNet's space-to-depth, which makes 48 of 3)."""
        for op in plan.order:
            preserved = op.kind == INPUT_CONV and all(link.kind in (PAD, POINTWISE) for link in op.image_chain)
            if preserved and op.conv is not None:
                weight = op.conv.weight()
                expected = weight.shape[1] * op.conv.geometry.groups
                if x.shape[1] != expected:
                    raise channel_mismatch(x, op.path, expected)

    def _walk(self, traced: Traced, seed: Tensor, record: ForwardRecord, x: Tensor) -> Tensor:
        plan = traced.plan
        relevance: dict[str, Tensor] = {traced.seed_op: seed}
        totals: dict[str, Tensor] = {traced.seed_op: self.seed.total(seed)} if plan.tracks_totals else {}
        pending = dict(plan.uses)
        result: Tensor | None = None
        for op in reversed(plan.order):
            r = relevance.pop(op.name, None)
            if r is None:
                continue
            total = totals.pop(op.name, None)
            if op.name in plan.gains:
                r = r * plan.gains[op.name]
                total = None if total is None else total * plan.gains[op.name]
            if op.kind == INPUT:
                result = r
                continue
            rule = plan.rules[op.name]
            contributions = _in_op_layout(op, rule(Step(op, channels_first(r, op.channels_last), record, x, total)))
            parts = _carried_totals(contributions, total, rule.conserves) if total is not None else [None] * len(contributions)
            for inp, contribution, part in zip(op.inputs, contributions, parts):
                if contribution is None:
                    continue
                relevance[inp] = relevance[inp] + contribution if inp in relevance else contribution
                if part is not None:
                    totals[inp] = totals[inp] + part if inp in totals else part
            for value in plan.needs[op.name].values:
                pending[value] -= 1
                if pending[value] == 0 and value != traced.graph.input_name:
                    record.values.pop(value, None)
        return torch.zeros_like(x) if result is None else result


def _total(t: Tensor) -> Tensor:
    """:func:`~relprop.rules.common.sample_total` as (N,)."""
    return sample_total(t).view(-1)


def _carried_totals(contributions: Sequence[Tensor | None], total: Tensor, conserves: bool) -> list[Tensor | None]:
    """The exact totals (N,) of a rule's input relevances.  A conserving rule's inputs share ``total``:
    a single input gets it; several get their own sums, and the rounding by which those miss ``total``
    is spread over them in proportion to their masses ``Σ|R|``.  Otherwise each input's total is its sum."""
    present = [c for c in contributions if c is not None]
    if conserves and len(present) == 1:
        return [None if c is None else total for c in contributions]
    sums = [None if c is None else _total(c) for c in contributions]
    if not conserves or not present:
        return sums
    masses = [None if c is None else _total(c.abs()) for c in contributions]
    mass = sum(m for m in masses if m is not None)
    missing = (total - sum(s for s in sums if s is not None)) / torch.where(mass > 0, mass, 1)
    return [None if s is None else s + missing * m for s, m in zip(sums, masses)]


def _in_op_layout(op: Op, relevances: Sequence[Tensor | None]) -> list[Tensor | None]:
    """A rule's (N, C, H, W) input relevances back in the op's own layout (N, H, W, C) if it is channels-last."""
    if not op.channels_last:
        return list(relevances)
    return [None if r is None else in_layout(r, True) for r in relevances]
