"""The competing classes of RSP's hostile seed: checking ``hostile`` and resolving it per sample."""

from __future__ import annotations

import operator
from typing import Sequence, Union

import torch
from torch import Tensor

from .errors import InputError

Hostile = Union[None, int, Sequence[Sequence[int]]]
Checked = Union[None, int, tuple[tuple[int, ...], ...]]

_FORMS = (
    "None, an int k ≥ 0 (the k classes the model ranks highest, the target excluded) or one list of class "
    "indices per sample"
)


def check_hostile(hostile: Hostile) -> Checked:
    """``hostile`` in a checked form: None, an int ≥ 0, or a tuple of per-sample tuples of distinct indices ≥ 0.

    ValueError for anything else (a bool, a negative int, a string, a list that is not a list of lists).
    """
    if hostile is None:
        return None
    if isinstance(hostile, bool):
        raise ValueError(f"hostile must be {_FORMS}; got a bool.")
    if hasattr(hostile, "__index__") and getattr(hostile, "shape", ()) == ():
        k = operator.index(hostile)  # type: ignore[arg-type]
        if k < 0:
            raise ValueError(f"hostile={k}: the number of competing classes must be ≥ 0.")
        return k
    if isinstance(hostile, (str, bytes)) or not _iterable(hostile):
        raise ValueError(f"hostile must be {_FORMS}; got {type(hostile).__name__}.")
    lists = tuple(_classes(row, i) for i, row in enumerate(hostile))  # type: ignore[union-attr]
    if not lists:
        raise ValueError("hostile is an empty list; give one list of competing classes per sample.")
    return lists


def resolve_competitors(
    hostile: int | tuple[tuple[int, ...], ...], logits: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor]:
    """The competing classes of every sample, padded: ``(classes, weights)``, both (N, K) on the logits' device.

    ``classes``: LongTensor of class indices (padding: the sample's target); ``weights``: 1 for a
    competing class, 0 for padding.  An int k picks the k highest logits other than the target's.
    InputError if the lists do not fit the batch (one per sample, indices in range, target excluded).
    """
    n, count = logits.shape
    if isinstance(hostile, int):
        if hostile > count - 1:
            raise InputError(
                f"hostile={hostile} asks for {hostile} competing classes but the model has {count} classes "
                f"({count - 1} besides the target)."
            )
        others = logits.detach().scatter(1, targets[:, None], float("-inf"))
        classes = others.topk(hostile, dim=1).indices
        return classes, torch.ones(classes.shape, dtype=logits.dtype, device=logits.device)
    if len(hostile) != n:
        raise InputError(f"hostile has {len(hostile)} lists of competing classes but the batch has {n} samples.")
    width = max(len(row) for row in hostile)
    padded, present = [], []
    for i, (row, target) in enumerate(zip(hostile, targets.tolist())):
        for c in row:
            if c >= count:
                raise InputError(
                    f"hostile[{i}] holds class {c}, out of range: the model has {count} classes (0..{count - 1})."
                )
            if c == target:
                raise InputError(
                    f"hostile[{i}] holds class {c}, the sample's target; the competing classes must exclude the target."
                )
        padded.append([*row, *[target] * (width - len(row))])
        present.append([1.0] * len(row) + [0.0] * (width - len(row)))
    classes = torch.tensor(padded, dtype=torch.long, device=logits.device).view(n, width)
    weights = torch.tensor(present, dtype=logits.dtype, device=logits.device).view(n, width)
    return classes, weights


def _iterable(value: object) -> bool:
    try:
        iter(value)  # type: ignore[call-overload]
    except TypeError:
        return False
    return True


def _classes(row: object, i: int) -> tuple[int, ...]:
    """One sample's competing classes: distinct integer indices ≥ 0."""
    if isinstance(row, (str, bytes)) or not _iterable(row) or getattr(row, "shape", None) == ():
        raise ValueError(f"hostile[{i}] must be a list of class indices; got {type(row).__name__}.")
    values = []
    for v in row:  # type: ignore[union-attr]
        if isinstance(v, bool) or isinstance(v, Tensor) and (v.is_floating_point() or v.dtype == torch.bool):
            raise ValueError(f"hostile[{i}] must hold integer class indices; got {v!r}.")
        try:
            c = operator.index(v)
        except TypeError:
            raise ValueError(f"hostile[{i}] must hold integer class indices; got {type(v).__name__}.") from None
        if c < 0:
            raise ValueError(f"hostile[{i}] holds {c}; class indices are ≥ 0.")
        values.append(c)
    if len(set(values)) != len(values):
        raise ValueError(f"hostile[{i}] lists a class twice: {values}.")
    return tuple(values)
