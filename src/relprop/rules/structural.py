"""Rules for the operations between convolutions: pooling, residual add, concatenation, BatchNorm, layout."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from .common import safe_divide

Fn = Callable[[Tensor], Tensor]


def adjoint(fn: Fn, at: Tensor, cotangent: Tensor) -> Tensor:
    """Vector-Jacobian product ``Jᵀ·cotangent`` of ``fn`` at the point ``at``: output-shaped -> ``at``-shaped."""
    with torch.enable_grad():
        point = at.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(point), point, cotangent)
    return grad


def maxpool_rule(pool: Fn, a: Tensor, relevance: Tensor) -> Tensor:
    """All of a window's relevance goes to its arg-max (first index on ties); overlaps accumulate."""
    return adjoint(pool, a, relevance)


def proportional_pool_rule(pool: Fn, a: Tensor, relevance: Tensor, *, epsilon: float = 0.0, clamp: bool = True) -> Tensor:
    """Average-type pooling: a window's relevance shared in proportion to ``ã = a⁺ + ε`` (``a + ε`` if not ``clamp``).

    With ``epsilon = 0`` a window whose ``ã`` sums to 0 is split evenly over its (non-padding) inputs.
    """
    x = (a.clamp(min=0) if clamp else a) + epsilon
    z = pool(x)
    result = x * adjoint(pool, x, safe_divide(relevance, z))
    if epsilon == 0:
        dead = relevance * (z == 0)
        if dead.any():
            result = result + adjoint(pool, x, safe_divide(dead, pool(torch.ones_like(x))))
    return result


def add_rule(a: Tensor, b: Tensor, relevance: Tensor, split: str) -> tuple[Tensor, Tensor]:
    """Split the relevance of ``a + b`` over its two inputs.

    ``split='magnitude'``: shares ``|a| / (|a| + |b|)``, half each where both are 0 (stable, never
    explodes when ``a ≈ −b``).  ``split='positive'``: the authors' ``ã = a⁺ + 1e-9`` shares.
    """
    if split == "positive":
        pa, pb = a.clamp(min=0) + 1e-9, b.clamp(min=0) + 1e-9
        share = safe_divide(relevance, pa + pb)
        return pa * share, pb * share
    ma, mb = a.abs(), b.abs()
    total = ma + mb
    share_a = torch.where(total == 0, torch.full_like(total, 0.5), safe_divide(ma, total))
    ra = relevance * share_a
    return ra, relevance - ra


def cat_rule(inputs: Sequence[Tensor], relevance: Tensor, dim: int, *, mask_zeros: bool = False) -> list[Tensor]:
    """Slice the relevance of a concatenation back to its inputs (optionally zeroed where an input is 0)."""
    sizes = [t.shape[dim] for t in inputs]
    parts = list(torch.split(relevance, sizes, dim=dim))
    if mask_zeros:
        parts = [p * (t != 0) for p, t in zip(parts, inputs)]
    return parts


def nonzero_mask_rule(a: Tensor, relevance: Tensor) -> Tensor:
    """The authors' BatchNorm rule: identity, zeroed where the layer input is exactly 0."""
    return relevance * (a != 0)
