"""Rules for the operations between convolutions: pooling, residual add, concatenation, BatchNorm, layout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import safe_divide

Fn = Callable[[Tensor], Tensor]


def adjoint(fn: Fn, at: Tensor, cotangent: Tensor) -> Tensor:
    """Vector-Jacobian product ``Jᵀ·cotangent`` of ``fn`` at the point ``at``: output-shaped -> ``at``-shaped."""
    with torch.enable_grad():
        point = at.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(point), point, cotangent)
    return grad


@dataclass(frozen=True)
class PoolWindows:
    """Windows of a 2-d max pooling (pairs: height, width); ``ceil_mode`` windows follow the output shape."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]


def maxpool_rule(pool: Fn, a: Tensor, relevance: Tensor, windows: Optional[PoolWindows] = None) -> Tensor:
    """All of a window's relevance goes to its maximum; overlapping windows accumulate.

    a: pooling input (N, C, H, W); relevance: its output's shape; returns a's shape.

    ``windows`` None (reference mode, the authors' code): the first arg-max in row-major order takes
    it all on ties (autograd's choice, through ``pool``).  With ``windows`` (default mode) a window's
    relevance is split evenly over its tied maxima.  Ties are common: an all-zero window after a ReLU
    is one, and AE gives relevance to such zero outputs; the first-index choice sends all of it to
    the top-left element, which makes the map of a mirrored image differ from the mirrored map.
    """
    if windows is None:
        return adjoint(pool, a, relevance)
    return _split_over_ties(a, relevance, windows)


def _split_over_ties(a: Tensor, relevance: Tensor, windows: PoolWindows) -> Tensor:
    """Each window's relevance shared evenly by the inputs equal to the window's maximum:
    (..., H, W) x (..., h, w) -> a's shape."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = windows.kernel_size, windows.stride, windows.padding, windows.dilation
    height, width = a.shape[-2:]
    out_h, out_w = relevance.shape[-2:]
    # ceil_mode windows may overhang the bottom / right padding; pad so that unfolding yields exactly them
    extra_h = max(0, (out_h - 1) * sh + dh * (kh - 1) + 1 - (height + 2 * ph))
    extra_w = max(0, (out_w - 1) * sw + dw * (kw - 1) + 1 - (width + 2 * pw))
    padded = F.pad(a.reshape(-1, 1, height, width), (pw, pw + extra_w, ph, ph + extra_h), value=float("-inf"))
    columns = F.unfold(padded, (kh, kw), (dh, dw), 0, (sh, sw))  # (N·C, kh·kw, h·w)
    ties = columns == columns.amax(dim=1, keepdim=True)
    shares = ties * (relevance.reshape(-1, 1, out_h * out_w) / ties.sum(dim=1, keepdim=True))
    back = F.fold(shares, padded.shape[-2:], (kh, kw), (dh, dw), 0, (sh, sw))
    return back[..., ph:ph + height, pw:pw + width].reshape(a.shape)


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
