"""What every engine-backed method shares: it holds an :class:`~relprop.engine.Engine` built from its
seed and rule table, and delegates ``attribute`` to it."""

from __future__ import annotations

from typing import Literal, Mapping, TypeVar

import torch.nn as nn
from torch import Tensor

from ..arguments import choice
from ..engine import Engine, RuleTable, Seed
from ..targets import Target

Mode = Literal["default", "reference"]
Variant = tuple[Seed, RuleTable, str]
"""A method's seed, rule table and the hint for non-finite results, for one mode."""
V = TypeVar("V")


def select_mode(variants: Mapping[str, V], mode: str) -> V:
    """The variant (default or reference) of a method for ``mode``; ValueError for anything else."""
    return variants[choice("mode", mode, list(variants))]


class PropagationMethod:
    """A relevance method: a seed plus a rule table, run by the engine (docs/methods.md, "The pipeline")."""

    name = "relevance propagation"

    def __init__(
        self, model: nn.Module, seed: Seed, table: RuleTable, *, failure_hint: str = "", allow_tf32: bool = False
    ) -> None:
        self._engine = Engine(model, seed, table, self.name, failure_hint=failure_hint, allow_tf32=allow_tf32)

    @property
    def model(self) -> nn.Module:
        return self._engine.model

    @property
    def seed_layer(self) -> str:
        """Module path (or op name) where the walk starts."""
        return self._engine.seed_layer

    def attribute(self, x: Tensor, target: Target = None) -> Tensor:
        """Relevance of every input element for the target class.

        x: (N, C, H, W) floating-point batch on the model's device and dtype.
        target: None (top-1 class of each sample), an int, a sequence of N ints or a LongTensor (N,).
        Returns a signed tensor of x's shape, dtype and device; sample i does not depend on the
        other samples of the batch (up to float rounding: ≤ 1e-4 of max|R| in float32).
        """
        return self._engine.attribute(x, target)

    def seed_relevance(self, x: Tensor, target: Target = None) -> Tensor:
        """The relevance at :attr:`seed_layer` that :meth:`attribute` propagates down to the input.

        x, target: as for :meth:`attribute`.  Returns a tensor of the seed layer's output shape, e.g.
        (N, 2048, 7, 7) at ResNet-50's ``layer4``; for RSP, ``attribute(x).sum((1, 2, 3))`` equals its sum.
        """
        return self._engine.seed_relevance(x, target)

