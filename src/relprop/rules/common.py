"""Elementary operations shared by the rules."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

CHUNK_ELEMENTS = 1 << 23
"""Budget, in tensor elements, for the temporaries of one chunk of a batch (32 MB in float32)."""


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
    """Subtract ``total`` (N, 1, 1, 1) spread evenly over the ``support`` (bool, shaped like ``c``) of each sample.

    ``Σ_s shift(c) = Σ_s c − total`` whenever the support is not empty; zeros off the support stay zero.
    """
    weight = support.to(c.dtype)
    return torch.addcmul(c, weight, safe_divide(total, sample_sum(weight)), value=-1)


def in_chunks(fn: Callable[..., Tensor], batch: tuple[Tensor, ...], per_sample: int) -> Tensor:
    """``fn(*batch)``, computed on consecutive slices of the batch whose temporaries
    (``per_sample`` elements per sample) fit :data:`CHUNK_ELEMENTS`, and concatenated.

    Bounds the peak memory of the large per-layer temporaries; it is also faster on CPU, where
    big layers run out of cache.  Every tensor in ``batch`` has the samples in dimension 0.
    """
    n = batch[0].shape[0]
    size = max(1, CHUNK_ELEMENTS // max(per_sample, 1))
    if size >= n:
        return fn(*batch)
    return torch.cat([fn(*(t[start:start + size] for t in batch)) for start in range(0, n, size)])
