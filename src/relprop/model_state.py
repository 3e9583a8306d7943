"""Run a method on a model without leaving any trace on it."""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch.nn as nn


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode for the duration, then restore each module's own flag.

    A model in training mode is explained in eval mode (BatchNorm running statistics, no dropout),
    with a warning; its flags are restored afterwards, also when an exception is raised.
    """
    flags = {m: m.training for m in model.modules()}
    if model.training:
        warnings.warn(
            f"{type(model).__name__} is in training mode; relprop explains it in eval mode "
            "(running BatchNorm statistics, no dropout) and restores the training flag afterwards. "
            "Call model.eval() to silence this warning.",
            UserWarning,
            stacklevel=3,
        )
    try:
        model.eval()
        yield
    finally:
        for module, flag in flags.items():
            module.training = flag
