"""One recording forward pass over a traced model.

The graph is executed op by op with the model's own modules, so the activations are the model's
own.  In-place operations never touch a tensor that is still needed: in-place functions run as
their pure twins, and an in-place module receives a copy unless its input is a fresh temporary
nobody reads again.  Only the activations the relevance walk asks for are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from ..errors import RelpropError
from ..model_state import check_logits
from .graph import ADD, AVGPOOL, BATCHNORM, CAT, CONV, INPUT, INPUT_CONV, LINEAR, MAXPOOL, OUTPUT, ModelGraph

# Ops whose output is a new tensor, safe to overwrite in place once nobody reads it.
_FRESH_KINDS = {CONV, INPUT_CONV, LINEAR, BATCHNORM, ADD, CAT, MAXPOOL, AVGPOOL}


@dataclass
class ForwardRecord:
    """What one forward pass leaves for the relevance walk."""

    values: dict[str, Tensor]
    shapes: dict[str, torch.Size]
    replays: dict[str, Callable[[Tensor], Tensor]]
    logits: Tensor
    seed: Tensor = field(repr=False)
    seed_channels_last: bool = False
    """Whether the seed op's output is laid out (N, H, W, C) (a channels-last map, as in ConvNeXt's blocks)."""


def record_forward(graph: ModelGraph, x: Tensor, seed: str, keep: set[str], replay: set[str]) -> ForwardRecord:
    """Run the model on ``x`` (N, C, H, W); keep the outputs of ``keep``.

    The seed op's output is made a leaf that requires grad, and everything downstream of it runs
    with autograd on, so that ``∂ logits / ∂ seed`` can be taken.  ``replay`` names ops for which a
    function ``t -> op(t)`` (other arguments fixed) is returned.
    """
    last_use = graph.last_use
    env: dict[str, Any] = {}
    shapes: dict[str, torch.Size] = {}
    replays: dict[str, Callable[[Tensor], Tensor]] = {}
    seed_value: Tensor | None = None
    logits: Any = None
    for i, op in enumerate(graph.ops):
        if op.kind == OUTPUT:
            logits = graph.output_value(env)
            break
        with torch.set_grad_enabled(seed_value is not None):
            if op.kind == INPUT:
                value = x
            else:
                if op.name in replay:
                    replays[op.name] = graph.replayer(op, env)
                fresh = not any(
                    last_use[r] > i or r in keep or r == seed or graph.by_name[r].kind not in _FRESH_KINDS
                    for r in op.reads
                )
                value = graph.execute(op, env, inplace_ok=fresh)
        if op.name == seed:
            value = value.detach().requires_grad_(True)
            seed_value = value
        env[op.name] = value
        if isinstance(value, Tensor):
            shapes[op.name] = value.shape
        for r in op.reads:
            if last_use[r] == i and r not in keep:
                env.pop(r, None)
    check_logits(graph.model, logits, x.shape[0])
    assert seed_value is not None
    values = {name: env[name] for name in keep if name in env}
    return ForwardRecord(values, shapes, replays, logits, seed_value, graph.by_name[seed].channels_last)


_TF32_EPS = 2.0 ** -10
"""Relative rounding of TF32, whose products keep 10 bits of mantissa."""


def check_against_model(model: torch.nn.Module, reference: Any, logits: Tensor, *, tf32: bool = False) -> None:
    """Raise RelpropError unless ``reference``, what ``model(x)`` returned, is the recorded ``logits``
    (N, classes) of the same x up to rounding (``tf32``: of TF32 arithmetic, which the two passes may
    round differently where cuDNN picks another kernel for a traced convolution's explicit padding).

    The graph relprop explains is the model as traced; Python that the trace does not record
    (an in-place write through an alias, ``g = h; g *= 2``, which changes ``h`` too) or randomness at
    inference makes it another function, whose maps would explain something the model does not compute.
    """
    if not isinstance(reference, Tensor) or reference.shape != logits.shape:
        return  # check_logits has named what the model returns
    scale = reference.abs().amax(dim=1)
    tolerance = max(1e-4, 100 * torch.finfo(logits.dtype).eps, 100 * _TF32_EPS if tf32 else 0.0)
    off = (logits - reference).abs().amax(dim=1)
    if bool((off > tolerance * scale + torch.finfo(logits.dtype).tiny).any()):
        worst = int((off / scale.clamp(min=torch.finfo(logits.dtype).tiny)).argmax())
        raise RelpropError(
            f"relprop's trace of {type(model).__name__} computes other logits than the model: sample {worst} is "
            f"off by {float(off[worst]):.3g} (its largest logit is {float(scale[worst]):.3g}). forward() does "
            "something the trace does not record, such as an in-place write through an alias (g = h; g *= 2 "
            "also changes h) or random numbers at inference. Write that step out of place (g = h * 2) in a "
            "subclass or a copy of the module, or use a method that does not trace the model ('gradient', "
            "'integrated_gradients', 'gradcam')."
        )
