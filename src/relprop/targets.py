"""Checking the input tensor and turning ``target`` into one class index per sample."""

from __future__ import annotations

import operator
from collections.abc import Mapping, Set
from typing import Sequence, Union

import torch
from torch import Tensor

from .errors import InputError

Target = Union[None, int, Sequence[int], Tensor]

_TARGET_FORMS = "None, an int, a sequence of ints (one per sample, in batch order) or a LongTensor (N,)"


def check_input(x: object) -> Tensor:
    """Validate ``x`` as a finite floating-point dense (N, C, H, W) batch with N ≥ 1, holding data."""
    if torch.is_inference_mode_enabled():
        raise InputError(
            "relprop needs autograd, which torch.inference_mode() disables; call attribute() outside "
            "inference_mode (inside torch.no_grad() is fine)."
        )
    if not isinstance(x, Tensor):
        raise InputError(f"x must be a torch.Tensor of shape (N, C, H, W); got {type(x).__name__}.")
    if x.layout != torch.strided:
        raise InputError(f"x must be a dense tensor; got layout {x.layout} (a sparse tensor?). Use x.to_dense().")
    if x.dim() != 4:
        raise InputError(
            f"x must have 4 dimensions (N, C, H, W); got shape {tuple(x.shape)}. "
            "For a single image use x.unsqueeze(0)."
        )
    if x.shape[0] == 0:
        raise InputError("x is an empty batch (N = 0); pass at least one image.")
    if not x.is_floating_point():
        raise InputError(f"x must be a floating-point tensor; got dtype {x.dtype}. Use x.float().")
    if x.device.type == "meta":
        raise InputError("x is on the meta device, which holds shapes but no values; pass a tensor with data.")
    if not torch.isfinite(x).all():
        raise InputError("x contains NaN or Inf values; attributions are only defined for finite inputs.")
    return x


def resolve_targets(target: Target, logits: Tensor) -> Tensor:
    """One class index per sample as a LongTensor (N,) on the logits' device.

    ``None`` picks each sample's top-1 class; an int (Python or numpy) applies to every sample; a
    sequence, a 1-d integer array or a LongTensor gives one index per sample, in batch order.
    """
    n, classes = logits.shape
    if target is None:
        return logits.argmax(dim=1)
    if isinstance(target, bool):
        raise InputError(f"target must be {_TARGET_FORMS}; got a bool.")
    if isinstance(target, Tensor):
        t = _tensor_targets(target, n, logits.device)
        bad = (t < 0) | (t >= classes)
        if bad.any():
            raise _out_of_range(int(t[bad][0]), classes)
        return t
    if hasattr(target, "__index__") and getattr(target, "shape", ()) == ():
        values = [_index(target, "target")] * n
    else:
        values = _sequence_targets(target, n)
    for value in values:
        if not 0 <= value < classes:
            raise _out_of_range(value, classes)
    return torch.tensor(values, dtype=torch.long, device=logits.device)


def _tensor_targets(target: Tensor, n: int, device: torch.device) -> Tensor:
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise InputError(f"target tensor must hold integer class indices; got dtype {target.dtype}.")
    if target.device != device:
        raise InputError(
            f"target is on {target.device} but the input is on {device}; move it with target.to({str(device)!r})."
        )
    t = target.reshape(-1).long() if target.dim() <= 1 else target
    if target.dim() == 0:
        t = t.expand(n)
    if t.dim() != 1 or t.shape[0] != n:
        raise InputError(f"target must have one entry per sample ({n}); got shape {tuple(target.shape)}.")
    return t


def _sequence_targets(target: object, n: int) -> list[int]:
    if isinstance(target, (Set, Mapping)):
        why = "has no order" if isinstance(target, Set) else "is ambiguous (keys or values?)"
        raise InputError(
            f"target is a {type(target).__name__}, which {why}; pass a list or a LongTensor with one class per "
            "sample, in batch order."
        )
    shape = getattr(target, "shape", None)
    if shape is not None and len(shape) != 1:
        raise InputError(f"target must have one entry per sample ({n}); got shape {tuple(shape)}.")
    if isinstance(target, (str, bytes)):
        raise InputError(f"target must be {_TARGET_FORMS}; got {type(target).__name__}.")
    try:
        items = list(target)  # type: ignore[call-overload]
    except TypeError:
        raise InputError(f"target must be {_TARGET_FORMS}; got {type(target).__name__}.") from None
    values = [_index(v, f"target[{i}]") for i, v in enumerate(items)]
    if len(values) != n:
        raise InputError(f"target has {len(values)} entries but the batch has {n} samples.")
    return values


def _index(v: object, what: str) -> int:
    """An integer class index from a Python or numpy integer (or 0-d integer tensor)."""
    if isinstance(v, bool) or isinstance(v, Tensor) and (v.is_floating_point() or v.dtype == torch.bool):
        raise InputError(f"{what} must be an integer class index; got {v!r}.")
    try:
        return operator.index(v)  # type: ignore[arg-type]
    except TypeError:
        raise InputError(f"{what} must be an integer class index; got {type(v).__name__}.") from None


def channel_mismatch(x: Tensor, layer: str, expected: int) -> InputError:
    """The error for an ``x`` (N, C, H, W) whose C does not fit the first convolution ``layer``."""
    hint = " Is x channels-last (N, H, W, C)? Use x.permute(0, 3, 1, 2)." if x.shape[-1] == expected else ""
    return InputError(f"x has {x.shape[1]} channels but the model's first convolution ('{layer}') expects {expected}.{hint}")


def _out_of_range(value: int, classes: int) -> InputError:
    return InputError(f"target {value} is out of range: the model has {classes} classes (0..{classes - 1}).")
