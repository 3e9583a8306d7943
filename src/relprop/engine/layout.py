"""The two layouts of a feature map: rules see (N, C, H, W); a channels-last op's tensors are (N, H, W, C)."""

from __future__ import annotations

from torch import Tensor


def channels_first(t: Tensor, channels_last: bool) -> Tensor:
    """``t`` as (N, C, H, W) (contiguous): permuted from (N, H, W, C) when ``channels_last``, else unchanged."""
    return t.permute(0, 3, 1, 2).contiguous() if channels_last else t


def in_layout(t: Tensor, channels_last: bool) -> Tensor:
    """A (N, C, H, W) tensor laid out as (N, H, W, C) (contiguous) when ``channels_last``, else unchanged."""
    return t.permute(0, 2, 3, 1).contiguous() if channels_last else t
