"""One recording forward pass over a traced model.

The graph is executed op by op with the model's own modules, so the activations are the model's
own (quirk Q32).  In-place operations never touch a tensor that is still needed: in-place
functions run as their pure twins, and an in-place module receives a copy unless its input is a
fresh temporary nobody reads again.  Only the activations the relevance walk asks for are kept.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx
from torch import Tensor

from .errors import RelpropError
from .graph import ADD, AVGPOOL, BATCHNORM, CAT, CONV, INPUT, LINEAR, MAXPOOL, OUTPUT, ModelGraph, inplace_free_call

# Ops whose output is a new tensor, safe to overwrite in place once nobody reads it.
_FRESH_KINDS = {CONV, LINEAR, BATCHNORM, ADD, CAT, MAXPOOL, AVGPOOL}


class _Hole:
    """Marks where the data input goes when an op is replayed on another tensor."""


HOLE = _Hole()


@dataclass
class ForwardRecord:
    """What one forward pass leaves for the relevance walk."""

    values: dict[str, Tensor]
    shapes: dict[str, torch.Size]
    replays: dict[str, Callable[[Tensor], Tensor]]
    logits: Tensor
    seed: Tensor = field(repr=False)


def record_forward(
    graph: ModelGraph, x: Tensor, seed: str, keep: set[str], replay: set[str]
) -> ForwardRecord:
    """Run the model on ``x`` (N, C, H, W); keep the outputs of ``keep``.

    The seed op's output is made a leaf that requires grad, and everything downstream of it runs
    with autograd on, so that ``∂ logits / ∂ seed`` can be taken.  ``replay`` names ops for which a
    function ``t -> op(t)`` (other arguments fixed) is returned.
    """
    ops = graph.ops
    last_use = graph.last_use
    env: dict[str, Any] = {}
    shapes: dict[str, torch.Size] = {}
    replays: dict[str, Callable[[Tensor], Tensor]] = {}
    seed_value: Tensor | None = None
    logits: Any = None
    for i, op in enumerate(ops):
        node = op.node
        if op.kind == OUTPUT:
            logits = fx.node.map_arg(node.args[0], lambda n: env[n.name])
            break
        with torch.set_grad_enabled(seed_value is not None):
            if op.kind == INPUT:
                value = x
            elif node.op == "get_attr":
                value = functools.reduce(getattr, str(node.target).split("."), graph.model)
            else:
                args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: env[n.name])
                if op.name in replay:
                    replays[op.name] = _replayer(graph, node, args, kwargs)
                fresh = not any(
                    last_use[n.name] > i or n.name in keep or n.name == seed or graph.by_name[n.name].kind not in _FRESH_KINDS
                    for n in node.all_input_nodes
                )
                value = _call(graph, node, args, kwargs, inplace_ok=fresh)
        if op.name == seed:
            value = value.detach().requires_grad_(True)
            seed_value = value
        env[op.name] = value
        if isinstance(value, Tensor):
            shapes[op.name] = value.shape
        for inp in node.all_input_nodes:
            if last_use[inp.name] == i and inp.name not in keep:
                env.pop(inp.name, None)
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise RelpropError(
            f"{type(graph.model).__name__} must return a (N, classes) tensor of logits; it returned "
            f"{type(logits).__name__}{tuple(logits.shape) if isinstance(logits, Tensor) else ''}."
        )
    assert seed_value is not None
    values = {name: env[name] for name in keep if name in env}
    return ForwardRecord(values, shapes, replays, logits, seed_value)


def _call(graph: ModelGraph, node: fx.Node, args: tuple, kwargs: dict, *, inplace_ok: bool) -> Any:
    if node.op == "call_module":
        module = graph.model.get_submodule(str(node.target))
        if getattr(module, "inplace", False) and not inplace_ok:
            args = (args[0].clone(),) + tuple(args[1:])
        return module(*args, **kwargs)
    target = inplace_free_call(node)
    if "inplace" in kwargs:
        kwargs = {**kwargs, "inplace": kwargs["inplace"] and inplace_ok}
    if node.op == "call_method":
        return getattr(args[0], target)(*args[1:], **kwargs)
    return target(*args, **kwargs)


def _replayer(graph: ModelGraph, node: fx.Node, args: tuple, kwargs: dict) -> Callable[[Tensor], Tensor]:
    """``t -> op(t)`` with the op's first tensor argument replaced by ``t`` and the rest fixed."""
    data = node.all_input_nodes[0].name
    template_args, template_kwargs = fx.node.map_arg(
        (node.args, node.kwargs), lambda n: HOLE if n.name == data else None
    )
    fixed_args = tuple(HOLE if t is HOLE else a for a, t in zip(args, template_args))
    fixed_kwargs = {k: HOLE if template_kwargs[k] is HOLE else v for k, v in kwargs.items()}

    def run(t: Tensor) -> Tensor:
        a = tuple(t if v is HOLE else v for v in fixed_args)
        kw = {k: t if v is HOLE else v for k, v in fixed_kwargs.items()}
        if "inplace" in kw:
            kw["inplace"] = False
        return _call(graph, node, a, kw, inplace_ok=False)

    return run
