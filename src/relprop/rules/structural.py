"""Rules for the operations between convolutions: pooling, residual add, concatenation, BatchNorm, layout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import safe_divide, sample_max

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


def proportional_pool_rule(
    pool: Fn, a: Tensor, relevance: Tensor, *, epsilon: float = 0.0, clamp: bool = True,
    padding: Optional[Tensor] = None,
) -> Tensor:
    """Average-type pooling: a window's relevance shared in proportion to ``ã = a⁺ + ε`` (``a + ε`` if not ``clamp``).

    ``padding`` (bool, broadcasting to ``a``): entries of ``a`` that are explicit zero padding (timm's
    ``AvgPool2dSame`` pads before pooling); they get no share.  With ``epsilon = 0`` a window whose ``ã`` sums
    to 0 is split evenly over its (non-padding) inputs.
    """
    x = (a.clamp(min=0) if clamp else a) + epsilon
    real = None if padding is None else (~padding).to(a.dtype).expand_as(a)
    if real is not None:
        x = x * real
    z = pool(x)
    result = x * adjoint(pool, x, safe_divide(relevance, z))
    if epsilon == 0:
        dead = relevance * (z == 0)
        if dead.any():
            entries = torch.ones_like(x) if real is None else real
            result = result + entries * adjoint(pool, x, safe_divide(dead, pool(entries)))
    return result


ADD_FLOOR = 1e-4
"""Fraction of each input's per-sample max magnitude added to it in a residual add's split."""


def add_rule(a: Tensor, b: Tensor, relevance: Tensor, split: str, floor: float = ADD_FLOOR) -> tuple[Tensor, Tensor]:
    """Split the relevance of ``a + b`` over its two inputs.

    ``split='magnitude'``: shares ``(|a| + ε_a) / (|a| + ε_a + |b| + ε_b)`` with ``ε_a = floor · max_s |a|``
    (likewise ``ε_b``) per sample: stable (never explodes when ``a ≈ −b``), and continuous where both
    inputs vanish, which then share in proportion to their scales.  Without the ε the share of an element
    where both inputs are near 0 is the ratio of two values that a float32 forward pass determines only
    to a few digits (a residual-stream element of 1e-5 rounded by ±1e-6 after many additions of O(1)
    terms).  An input that is exactly 0 where the other is not (a ReLU's zero, a branch whose input is 0
    there) contributes nothing and gets no ε: the rules below it could not pass a share on, so it would
    be lost.  ``split='positive'``: the authors' ``ã = a⁺ + 1e-9`` shares.  Both shares are computed
    directly: ``R − R_a`` would keep few digits of the smaller input's share.
    (N, ...) x (N, ...) x (N, ...) -> two tensors of relevance's shape.
    """
    if split == "positive":
        pa, pb = a.clamp(min=0) + 1e-9, b.clamp(min=0) + 1e-9
    else:
        pa, pb = a.abs(), b.abs()
        a_floored, b_floored = (pa != 0) | (pb == 0), (pb != 0) | (pa == 0)
        pa, pb = pa + floor * sample_max(pa) * a_floored, pb + floor * sample_max(pb) * b_floored
        both_zero = (pa + pb) == 0
        pa, pb = pa.masked_fill(both_zero, 1.0), pb.masked_fill(both_zero, 1.0)
    share = relevance / (pa + pb)
    return pa * share, pb * share


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
