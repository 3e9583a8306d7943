"""Checks of the methods' constructor arguments: a value of the wrong type or out of range is refused when
the method is made, with the argument's name, what it must be and what was given (a string such as
``"1e-3"`` is not silently converted; ``allow_tf32="no"`` does not silently mean True)."""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import torch


def number(name: str, value: Any, *, positive: bool = False, hint: str = "") -> float:
    """``value`` as a float: a real number (not a bool), finite, ``> 0`` with ``positive`` else ``>= 0``.
    ``hint`` follows the requirement in the message (e.g. ``" (the paper uses 1 <= r <= 2)"``)."""
    requirement = "a positive finite number" if positive else "a finite number >= 0"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {requirement}{hint}; got {type(value).__name__} {value!r}.")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {requirement}{hint}; got {value}.")
    return value


def integer(name: str, value: Any, *, low: int = 1) -> int:
    """``value`` as an int (not a bool, not a float) of at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {low}; got {type(value).__name__} {value!r}.")
    if value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value}.")
    return int(value)


def flag(name: str, value: Any) -> bool:
    """``value`` when it is True or False (a NumPy bool included)."""
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise ValueError(f"{name} must be True or False; got {value!r}.")
    return bool(value)


def choice(name: str, value: Any, options: Sequence[str]) -> str:
    """``value`` when it is one of ``options``."""
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}.")
    return value


def input_bounds(bounds: Any) -> Any:
    """z^B's ``bounds`` if they are None or ``(low, high)``, each a number or a 1-d sequence / tensor of
    per-channel values, finite, with ``low <= high``; otherwise a ValueError (TypeError for other types)."""
    if bounds is None:
        return None
    form = "input_bounds must be None or (low, high), each a float or one value per channel"
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise TypeError(f"{form}; got {type(bounds).__name__} {bounds!r}.")
    try:
        low, high = (torch.as_tensor(b, dtype=torch.float64, device="cpu") if not isinstance(b, bool) else None
                     for b in bounds)
    except (TypeError, ValueError, RuntimeError):
        low = high = None
    if low is None or high is None or low.dim() > 1 or high.dim() > 1:
        raise TypeError(f"{form}; got {bounds!r}.")
    if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise ValueError(f"input_bounds must be finite; got {bounds!r}.")
    if low.dim() == high.dim() == 1 and low.numel() != high.numel():
        raise ValueError(f"input_bounds: low has {low.numel()} channel values but high has {high.numel()}.")
    if (low > high).any():
        raise ValueError(f"input_bounds must be (low, high) with low <= high; got {bounds!r}.")
    return bounds
