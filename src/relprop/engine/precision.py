"""Full float32 arithmetic on CUDA: no silent TF32 in convolutions and matrix products."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

_FULL = "ieee"


def _new_api() -> bool:
    """Whether this torch has the per-backend ``fp32_precision`` settings (torch ≥ 2.9)."""
    return hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision") and hasattr(
        torch.backends.cuda.matmul, "fp32_precision"
    )


@contextlib.contextmanager
def float32_precision(allow_tf32: bool) -> Iterator[None]:
    """Run the body with TF32 off for cuDNN convolutions and CUDA matrix products, unless ``allow_tf32``.

    cuDNN runs float32 convolutions in TF32 by default, which moves relevance maps by about 1 % of
    max|R| on Ampere and later GPUs.  The user's global settings are restored afterwards, also when
    the body raises.  On CPU the settings have no effect.
    """
    if allow_tf32:
        yield
        return
    if _new_api():
        conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
        saved = conv.fp32_precision, matmul.fp32_precision
        try:
            conv.fp32_precision, matmul.fp32_precision = _FULL, _FULL
            yield
        finally:
            conv.fp32_precision, matmul.fp32_precision = saved
        return
    saved_legacy = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved_legacy
