"""Elementary operations shared by the rules."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

CHUNK_ELEMENTS = {"cpu": 1 << 24, "cuda": 1 << 28}
"""Budget, in tensor elements, for the temporaries of one chunk of a batch, by device type
(CPU: 64 MB in float32, small enough to stay in cache-friendly sizes; CUDA: 1 GB)."""


def safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den != 0``, else 0 (broadcasting like ``num / den``)."""
    return (num / den).masked_fill_(den == 0, 0)


def safe_divide_(num: Tensor, den: Tensor) -> Tensor:
    """:func:`safe_divide` written into ``num``, a temporary the caller gives up (``den`` broadcasts to it)."""
    return num.div_(den).masked_fill_(den == 0, 0)


def sample_max(t: Tensor) -> Tensor:
    """Largest element of each sample, kept for broadcasting: (N, ...) -> (N, 1, ..., 1)."""
    return t.amax(dim=tuple(range(1, t.dim())), keepdim=True)


def by_max_abs(t: Tensor) -> Tensor:
    """Each sample divided by its largest magnitude ``max_s |t|`` (an all-zero sample stays 0): (N, ...) -> same."""
    return safe_divide(t, sample_max(t.abs()))


def sample_sum(t: Tensor) -> Tensor:
    """Sum over every dimension but the first, kept for broadcasting: (N, ...) -> (N, 1, ..., 1)."""
    return t.sum(dim=tuple(range(1, t.dim())), keepdim=True)


def sample_total(t: Tensor) -> Tensor:
    """Sum over every dimension but the first, returned in float64: (N, ...) -> (N, 1, ..., 1) float64.

    Each (sample, channel) plane of a map (N, C, ...) is summed in t's dtype (a pairwise sum: fast, and
    off by about 1e-10 of its mass in float32) and the planes' sums are added in float64.
    """
    planes = t.sum(dim=tuple(range(2, t.dim()))) if t.dim() > 2 else t
    return planes.sum(dim=1, dtype=torch.float64).view(-1, *[1] * (t.dim() - 1))


def power_of_two_scale(t: Tensor) -> Tensor:
    """Per sample, the power of two ``2⁻ᵉ`` that brings ``max_s |t| = m·2ᵉ`` (m in [0.5, 1)) into
    [0.5, 1) (for a subnormal maximum, the dtype's largest power of two); 1 for an all-zero sample.
    Multiplying by it is exact in floating point, so a rule that is invariant to (or linear in) a
    per-sample scale can work in a safe range and give bit-identical results.
    (N, ...) -> (N, 1, ..., 1), t's dtype.
    """
    flat = t.reshape(t.shape[0], -1)
    # max |t| as max(max t, −min t): two plain reductions, several times faster on CPU than an inf-norm
    # or aminmax, and exact like them
    top = torch.maximum(flat.amax(dim=1), flat.amin(dim=1).neg_()).view(-1, *[1] * (t.dim() - 1))
    largest = math.frexp(torch.finfo(t.dtype).max)[1] - 1  # 2^largest is the dtype's largest power of two
    exponent = (-torch.frexp(top).exponent).clamp(max=largest)  # a subnormal top: as far as representable
    return torch.ldexp(torch.ones_like(top), exponent)


ACTIVITY_RAMP = 1e-2
"""Below this fraction of a sample's largest activation a unit counts as partly active (see :func:`activity`)."""


def activity(a: Tensor, ramp: float = ACTIVITY_RAMP) -> Tensor:
    """How active each unit is, as a continuous weight in [0, 1]: ``clamp(a / (ramp · max_s a), 0, 1)``.

    1 for every unit above ``ramp`` of its sample's largest activation, 0 for ``a ≤ 0``, linear in
    between.  Rules use it instead of the indicator ``1[a > 0]`` for their supports and masks: a unit
    whose activation is within rounding of 0 would otherwise flip between active and inactive with the
    float precision or the batch (a jump of a whole share of relevance), while a weight that is
    continuous in ``a`` moves only by the rounding.  (N, ...) -> same shape and dtype.
    """
    top = sample_max(a).clamp(min=0)
    return (a * safe_divide(torch.ones_like(top), top * ramp)).clamp_(0, 1)  # one scale per sample: 2 passes


def shift_(c: Tensor, total: Tensor, support: Tensor) -> Tensor:
    """Subtract ``total`` (N, 1, 1, 1) from each sample of ``c``, spread over its ``support`` in proportion
    to the support's weights (bool or in [0, 1], broadcastable to ``c``), in place; returns ``c``.

    ``Σ_s shift_(c) = Σ_s c − total`` whenever the support is not empty; zeros off the support stay zero.
    """
    weight = support.to(c.dtype).expand_as(c)
    return c.addcmul_(weight, safe_divide(total, sample_sum(weight)), value=-1)


def in_chunks(fn: Callable[..., Tensor], batch: tuple[Tensor, ...], per_sample: int) -> Tensor:
    """``fn(*batch)``, computed on consecutive slices of the batch whose temporaries
    (``per_sample`` elements per sample) fit the device's :data:`CHUNK_ELEMENTS`, and concatenated.

    ``fn`` must treat samples independently.  Chunking bounds the peak memory of a layer's large
    temporaries, and on CPU it is also faster (per-sample work on large maps stays in cache).
    Every tensor in ``batch`` has the samples in dimension 0.
    """
    n = batch[0].shape[0]
    budget = CHUNK_ELEMENTS.get(batch[0].device.type, CHUNK_ELEMENTS["cpu"])
    size = max(1, budget // max(per_sample, 1))
    if size >= n:
        return fn(*batch)
    return torch.cat([fn(*(t[start:start + size] for t in batch)) for start in range(0, n, size)])
