"""Methods by name for the evaluation: any registered relprop method plus the model-free ``center``.

A method spec is ``name`` or ``name:key=value:key=value`` (e.g. ``ae:ratio=1``, ``rsp:purge=true``);
the keys are passed to the method's constructor. The spec text is the method's name in the results.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..registry import get_method, list_methods
from .maps import Reduce, center_map, reduce_channels

CENTER = "center"
LAYER_RESOLUTION_METHODS = frozenset(
    {
        "gradcam",
        "grad_cam",
        "gradcam++",
        "gradcampp",
        "gradcam_pp",
        "gradcamplusplus",
        "layercam",
        "scorecam",
        "excitation_backprop",
        "contrastive_excitation_backprop",
    }
)
"""Maps computed at a feature-map resolution (no pointing-game smoothing, evaluation.md §1.3 step 3)."""
MAX_ABS_METHODS = frozenset({"gradient", "saliency", "guided_backprop", "deconvnet"})
"""TorchRay reduces these over channels by max |·| (§1.3 step 1); every other method by the signed sum."""
POINTING_SMOOTHING = 0.02


def _value(text: str) -> Any:
    """A Python literal (``1``, ``1.5``, ``True``, ``[3, 5]``; also ``true`` / ``false``), else the text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


@dataclass(frozen=True)
class MethodSpec:
    """A method name with constructor keyword arguments; ``label`` is the text it was parsed from."""

    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    label: str = ""

    @classmethod
    def parse(cls, text: str) -> "MethodSpec":
        name, *pairs = [part.strip() for part in text.strip().split(":")]
        name = name.lower()
        if name != CENTER and name not in list_methods():
            raise ValueError(f"unknown method '{name}'; choose one of: {', '.join([CENTER, *list_methods()])}.")
        kwargs = []
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise ValueError(f"method option '{pair}' in '{text}' must look like key=value (e.g. ae:ratio=1).")
            kwargs.append((key.strip(), _value(value.strip())))
        if name == CENTER and kwargs:
            raise ValueError("the center baseline takes no options.")
        label = name + "".join(f":{k}={v}" for k, v in kwargs)
        return cls(name, tuple(kwargs), label)

    @property
    def model_free(self) -> bool:
        return self.name == CENTER

    @property
    def default_reduce(self) -> Reduce:
        return "max_abs" if self.name in MAX_ABS_METHODS else "sum"

    @property
    def default_smoothing(self) -> float:
        if self.model_free or self.name in LAYER_RESOLUTION_METHODS:
            return 0.0
        return POINTING_SMOOTHING

    def build(self, model: nn.Module) -> Any:
        """The method object for ``model`` (None for the center baseline)."""
        if self.model_free:
            return None
        try:
            return get_method(self.name)(model, **dict(self.kwargs))
        except (TypeError, ValueError) as exc:  # an unknown or bad option, a layer without a rule
            raise ValueError(f"method '{self.label}': {exc}") from exc


def parse_methods(text: str) -> list[MethodSpec]:
    """Comma-separated method specs, e.g. ``"rsp,ae:ratio=1,center"``; duplicates are an error."""
    specs = [MethodSpec.parse(part) for part in text.split(",") if part.strip()]
    if not specs:
        raise ValueError("no method given; e.g. --methods rsp,ae,center.")
    labels = [s.label for s in specs]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"method given twice: {', '.join(duplicates)}.")
    return specs


def explain(spec: MethodSpec, method: Any, x: Tensor, targets: Tensor, reduce: Reduce) -> Tensor:
    """Maps (N, h, w) on the input grid of ``x`` (N, C, h, w) for one target per sample."""
    if spec.model_free:
        return center_map(x.shape[2], x.shape[3]).to(x.device).expand(x.shape[0], -1, -1)
    attribution = method.attribute(x, target=targets)
    if attribution.shape[-2:] != x.shape[-2:]:
        raise ValueError(
            f"method '{spec.label}' returned maps of size {tuple(attribution.shape[-2:])} for inputs of size "
            f"{tuple(x.shape[-2:])}; the evaluation needs maps on the input grid."
        )
    return reduce_channels(attribution.detach(), reduce).to(torch.float64)
