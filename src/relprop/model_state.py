"""Run a method on a model without leaving any trace on it."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Iterator

import torch.nn as nn

_PACKAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "")  # with the trailing separator


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode for the duration, then restore each module's own flag.

    A model with any module in training mode is explained in eval mode (BatchNorm running
    statistics, no dropout), with a warning naming the model or the training submodules; the flags
    are restored afterwards, also when an exception is raised.
    """
    flags = {m: m.training for m in model.modules()}
    training = [name for name, m in model.named_modules() if m.training and name]
    if model.training or training:
        if model.training:
            subject = f"{type(model).__name__} is"
        else:
            more = f" and {len(training) - 3} more" if len(training) > 3 else ""
            subject = f"module(s) {', '.join(repr(t) for t in training[:3])}{more} of {type(model).__name__} are"
        warnings.warn(
            f"{subject} in training mode; relprop explains the model in eval mode (running BatchNorm "
            "statistics, no dropout) and restores every module's training flag afterwards. "
            "Call model.eval() to silence this warning.",
            UserWarning,
            stacklevel=_caller_stacklevel(),
        )
    try:
        model.eval()
        yield
    finally:
        for module, flag in flags.items():
            module.training = flag


def _caller_stacklevel() -> int:
    """``stacklevel`` that makes a warning point at the first frame outside relprop (the user's line)."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and (
        frame.f_code.co_filename.startswith(_PACKAGE) or frame.f_code.co_filename == contextlib.__file__
    ):
        frame, level = frame.f_back, level + 1
    return level
