"""Checking the input tensor and turning ``target`` into one class index per sample."""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor

from .errors import InputError

Target = Union[None, int, Sequence[int], Tensor]


def check_input(x: object) -> Tensor:
    """Validate ``x`` as a finite floating-point (N, C, H, W) batch with N ≥ 1."""
    if not isinstance(x, Tensor):
        raise InputError(f"x must be a torch.Tensor of shape (N, C, H, W); got {type(x).__name__}.")
    if x.dim() != 4:
        raise InputError(
            f"x must have 4 dimensions (N, C, H, W); got shape {tuple(x.shape)}. "
            "For a single image use x.unsqueeze(0)."
        )
    if x.shape[0] == 0:
        raise InputError("x is an empty batch (N = 0); pass at least one image.")
    if not x.is_floating_point():
        raise InputError(f"x must be a floating-point tensor; got dtype {x.dtype}. Use x.float().")
    if not torch.isfinite(x).all():
        raise InputError("x contains NaN or Inf values; attributions are only defined for finite inputs.")
    return x


def resolve_targets(target: Target, logits: Tensor) -> Tensor:
    """One class index per sample as a LongTensor (N,) on the logits' device.

    ``None`` picks each sample's top-1 class; an int applies to every sample; a sequence or a
    LongTensor gives one index per sample.
    """
    n, classes = logits.shape
    if target is None:
        return logits.argmax(dim=1)
    if isinstance(target, bool):
        raise InputError("target must be an int class index, a sequence of ints or a LongTensor; got a bool.")
    if isinstance(target, int):
        t = torch.full((n,), target, dtype=torch.long, device=logits.device)
    elif isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise InputError(f"target tensor must hold integer class indices; got dtype {target.dtype}.")
        if target.device != logits.device:
            raise InputError(
                f"target is on {target.device} but the input is on {logits.device}; "
                f"move it with target.to({str(logits.device)!r})."
            )
        t = target.reshape(-1).long() if target.dim() <= 1 else target
        if target.dim() == 0:
            t = t.expand(n)
        if t.dim() != 1 or t.shape[0] != n:
            raise InputError(f"target must have one entry per sample ({n}); got shape {tuple(target.shape)}.")
    else:
        try:
            if isinstance(target, (str, bytes)):
                raise TypeError(target)
            values = [_index(v) for v in target]  # type: ignore[union-attr]
        except TypeError as exc:
            raise InputError(
                f"target must be None, an int, a sequence of ints or a LongTensor; got {type(target).__name__}."
            ) from exc
        if len(values) != n:
            raise InputError(f"target has {len(values)} entries but the batch has {n} samples.")
        t = torch.tensor(values, dtype=torch.long, device=logits.device)
    bad = (t < 0) | (t >= classes)
    if bad.any():
        raise InputError(
            f"target {t[bad][0].item()} is out of range: the model has {classes} classes (0..{classes - 1})."
        )
    return t


def _index(v: object) -> int:
    """An integer class index from a Python or numpy integer (or 0-d integer tensor)."""
    if isinstance(v, bool) or not hasattr(v, "__index__"):
        raise TypeError(v)
    return int(v.__index__())  # type: ignore[attr-defined]
