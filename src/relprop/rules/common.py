"""Elementary operations shared by the rules."""

from __future__ import annotations

from torch import Tensor


def safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den != 0``, else 0 (broadcasting like ``num / den``)."""
    return (num / den).masked_fill_(den == 0, 0)


def sample_sum(t: Tensor) -> Tensor:
    """Sum over every dimension but the first, kept for broadcasting: (N, ...) -> (N, 1, ..., 1)."""
    return t.sum(dim=tuple(range(1, t.dim())), keepdim=True)


def positive_negative(r: Tensor) -> tuple[Tensor, Tensor]:
    """``(max(r, 0), max(-r, 0))``: both non-negative, ``r = P - N``."""
    return r.clamp(min=0), (-r).clamp(min=0)


def unit_mass(t: Tensor) -> Tensor:
    """``t / Σ_s t`` per sample; a sample whose sum is 0 stays 0 (never NaN)."""
    return safe_divide(t, sample_sum(t))


def shift(c: Tensor, total: Tensor, support: Tensor) -> Tensor:
    """Subtract ``total`` (N, 1, 1, 1) spread evenly over the ``support`` (bool, like ``c``) of each sample.

    ``Σ_s shift(c) = Σ_s c − total`` whenever the support is not empty; zeros off the support stay zero.
    """
    count = sample_sum(support.to(c.dtype))
    return c - support.to(c.dtype) * safe_divide(total, count)
