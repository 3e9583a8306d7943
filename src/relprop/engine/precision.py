"""The arithmetic relevance is computed in: the model's own dtype, with no silent TF32 in CUDA convolutions
and matrix products and no autocast."""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch

from ..model_state import caller_stacklevel

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


_AUTOCAST_DEVICES = ("cpu", "cuda")


def _autocast_enabled(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # torch < 2.4: no device argument
        return bool(torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled())


@contextlib.contextmanager
def without_autocast(method: str) -> Iterator[None]:
    """Run the body with ``torch.autocast`` off, warning when the caller had it on.

    The rules divide by sums and take differences that bfloat16 autocast moved by about 1 % of max|R|
    (RSP, a random ResNet-18); their accuracy is stated for the model's own dtype.
    """
    enabled = [device for device in _AUTOCAST_DEVICES if _autocast_enabled(device)]
    if not enabled:
        yield
        return
    warnings.warn(
        f"{method} runs in the model's dtype: torch.autocast is turned off inside attribute(), because "
        "the relevance rules lose most of their accuracy in 16-bit floats.",
        UserWarning, stacklevel=caller_stacklevel(),
    )
    with contextlib.ExitStack() as stack:
        for device in enabled:
            stack.enter_context(torch.autocast(device, enabled=False))
        yield


_SIXTEEN_BIT = (torch.float16, torch.bfloat16)


def warn_if_sixteen_bit(method: str, dtype: torch.dtype) -> None:
    """Warn that ``method``'s map in a 16-bit float ``dtype`` is far from the float32 one.

    The rules' sums and ratios keep 2–3 significant digits there: on the pretrained EfficientNet-Lite0
    (four ImageNet images) 16-bit RSP, AE, RAP and LRP-composite maps differed from float32 by 3·10⁻² to
    7·10⁻¹ of max|R|, and float16 RSP overflowed.
    """
    if dtype in _SIXTEEN_BIT:
        warnings.warn(
            f"{method} in {dtype}: relevance rules keep only 2-3 significant digits in 16-bit floats (maps "
            "off by 3e-2 to 7e-1 of max|R| against float32 on a pretrained EfficientNet-Lite0). For a "
            "faithful map explain a float32 copy: copy.deepcopy(model).float() with x.float().",
            UserWarning, stacklevel=caller_stacklevel(),
        )
