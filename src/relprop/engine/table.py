"""Rules as data: what a rule declares, what it sees, and the table that maps op kinds to rules.

A method is a seed plus a :class:`RuleTable`.  The table maps an op kind (``CONV``, ``MAXPOOL``, …,
see :mod:`relprop.engine.graph`) or a module type to a :class:`Rule`; module types are looked up
first, along the module's class hierarchy.  Supporting a new layer type is one rule and one entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, Union

import torch
from torch import Tensor

from ..errors import UnsupportedLayerError
from .forward import ForwardRecord
from .graph import (
    ADD, AVGPOOL, BATCHNORM, CAT, CONV, GATE, INPUT_CONV, LAYOUT, LINEAR, MAXPOOL, NORM, PAD, POINTWISE, STRUCTURAL,
    ModelGraph, Op,
)

Key = Union[str, type]

_DESCRIPTIONS = {
    CONV: "Conv2d (any stride, padding, dilation, groups; also a Linear over the channels of a channels-last map)",
    INPUT_CONV: "", LINEAR: "Linear (also F.linear, x @ W with W from parameters)",
    BATCHNORM: "BatchNorm1d / BatchNorm2d / SyncBatchNorm / F.batch_norm",
    NORM: "LayerNorm / GroupNorm / InstanceNorm2d / LocalResponseNorm / F.normalize",
    POINTWISE: "elementwise activations (ReLU family, SiLU, GELU, Hardswish, Mish, Sigmoid, Tanh, ...), Dropout, "
               "Identity, stochastic depth, scaling by a constant or parameter (also addcmul), torchvision's Normalize",
    GATE: "multiplicative gates x * sigmoid(...) (squeeze-and-excitation, ECA, upsampled gates) and x times channel "
          "statistics (the softmax over branches of SKNet and ResNeSt, ConvNeXt-V2's global response normalisation)",
    MAXPOOL: "max pooling (also adaptive / global max, amax, the values of max(dim))",
    AVGPOOL: "average / adaptive-average pooling, mean, sum, bilinear upsampling",
    PAD: "zero, reflection, replication and circular padding (-inf padding before max pooling)",
    LAYOUT: "flatten / view / reshape / permute / transpose / slicing / chunk / flip / roll / repeat / pixel and "
            "channel shuffle / nearest upsampling",
    ADD: "residual addition, the difference of two maps", CAT: "torch.cat", STRUCTURAL: "",
}
"""How messages name the op kinds; empty: not worth listing (covered by another entry, or no relevance)."""


@dataclass(frozen=True)
class Step:
    """What a rule sees when the walk reaches its op: the op, the relevance of its output and the forward
    pass's record (activations the rule asked for, shapes, replays), the model input ``x``, and the
    relevance's per-sample ``total``.

    ``total`` (N,) float64 is ``Σ relevance`` as it would be in exact arithmetic: the walk carries it from
    the seed through every rule that :attr:`Rule.conserves`, so a rule that re-centres its result to a
    given total can use it instead of summing ``relevance``, whose rounding would otherwise build up
    layer by layer.  None unless a rule of the method :attr:`Rule.reads_total`.

    For a channels-last op (a Linear over the channels of an (N, H, W, C) map) the relevance and
    :meth:`input` are given as (N, C, H, W), and the rule's results are taken in that layout."""

    op: Op
    relevance: Tensor
    record: ForwardRecord
    x: Tensor
    total: Tensor | None = None

    def input(self, i: int = 0) -> Tensor:
        """The recorded activation of the op's ``i``-th input (the rule must keep it, see :attr:`Rule.keeps`)."""
        value = self.record.values[self.op.inputs[i]]
        return value.permute(0, 3, 1, 2) if self.op.channels_last else value

    def contribution(self, i: int) -> Tensor:
        """What the op's ``i``-th input adds to its output: :meth:`input`, negated for the subtrahend of ``a - b``."""
        return -self.input(i) if i == self.op.negated else self.input(i)

    def input_shape(self, i: int = 0) -> tuple[int, ...]:
        """Shape of the op's ``i``-th input (as :meth:`input` gives it)."""
        n, *rest = self.record.shapes[self.op.inputs[i]]
        return (n, rest[-1], *rest[:-1]) if self.op.channels_last else (n, *rest)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of the output of op ``name`` in the forward pass."""
        return tuple(self.record.shapes[name])

    def replay(self, name: str | None = None) -> Callable[[Tensor], Tensor]:
        """``t -> op(t)`` for this op (or the op ``name``), other arguments as in the forward pass."""
        return self.record.replays[name or self.op.name]

    def explicit_padding(self) -> Tensor | None:
        """Where the op's input is explicit zero padding (``nn.ZeroPad2d``, ``F.pad``: its pad ops replayed on
        ones): bool (1, C, H, W), or None without pad ops.  A rule that reads it must ask for
        ``op.pads_before`` in its :class:`Needs` replays."""
        if not self.op.pads_before:
            return None
        r = self.relevance
        units = torch.ones((1, *self.shape(self.op.unpadded)[1:]), dtype=r.dtype, device=r.device)
        for name in self.op.pads_before:
            units = self.replay(name)(units)
        return units == 0


@dataclass(frozen=True)
class Needs:
    """What the forward pass must leave for a rule: activations to keep and ops to replay."""

    values: tuple[str, ...] = ()
    replays: tuple[str, ...] = ()


class Rule:
    """Maps the relevance of an op's output to the relevance of its inputs.

    Subclasses set :attr:`keeps` / :attr:`replays` (or override :meth:`needs`) and implement
    :meth:`__call__`, returning one tensor (or None: nothing) per entry of ``op.inputs``.
    """

    keeps: str = "none"
    """Input activations the rule reads: ``"none"``, ``"first"`` or ``"all"``."""
    replays: bool = False
    """Whether the rule calls :meth:`Step.replay` for its own op."""
    conserves: bool = False
    """Whether, in exact arithmetic, the input relevances sum to :attr:`Step.total` (per sample); the walk
    then carries that total to them rather than summing the rounded results."""
    reads_total: bool = False
    """Whether the rule uses :attr:`Step.total` (the walk tracks totals only for methods with such a rule)."""

    def needs(self, op: Op) -> Needs:
        values = {"none": (), "first": op.inputs[:1], "all": op.inputs}[self.keeps]
        return Needs(tuple(values), (op.name,) if self.replays else ())

    def prepare(self, op: Op, graph: ModelGraph) -> dict[str, float]:
        """Called once when a method is built; returns gains ``{op name: factor}`` applied to the relevance
        arriving at other ops (none by default)."""
        return {}

    def __call__(self, step: Step) -> Sequence[Tensor | None]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return type(self).__name__


class RuleTable:
    """An immutable mapping from op kind or module type to :class:`Rule`.

    ``hints`` adds advice to the error raised for an op kind that has no rule (e.g. why a method has no
    rule for Linear layers).
    """

    def __init__(self, entries: Mapping[Key, Rule], hints: Mapping[str, str] | None = None) -> None:
        self._entries = dict(entries)
        self._hints = dict(hints or {})

    def override(self, entries: Mapping[Key, Rule], hints: Mapping[str, str] | None = None) -> "RuleTable":
        """A copy with ``entries`` replacing or adding rules (how reference mode and new layer types are made)."""
        return RuleTable({**self._entries, **entries}, {**self._hints, **(hints or {})})

    def rule_for(self, op: Op, method: str) -> Rule:
        """The rule for ``op``; :class:`UnsupportedLayerError` naming the op's module path and type if none."""
        if op.unsupported:
            raise UnsupportedLayerError(op.path, op.type_name, method, op.unsupported)
        if op.module is not None:
            for cls in type(op.module).__mro__:
                if cls in self._entries:
                    return self._entries[cls]
        if op.kind in self._entries:
            return self._entries[op.kind]
        hint = self._hints.get(op.kind, f"Supported on the explained path: {self.supported()}.")
        raise UnsupportedLayerError(op.path, op.type_name, method, hint)

    def supported(self) -> str:
        """The op kinds and module types that have a rule, for messages."""
        names = [k.__name__ if isinstance(k, type) else _DESCRIPTIONS.get(k, k) for k in self._entries]
        return ", ".join(name for name in names if name)

    def __getitem__(self, key: Key) -> Rule:
        return self._entries[key]

