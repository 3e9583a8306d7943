"""Exceptions raised by relprop."""

from __future__ import annotations


class RelpropError(Exception):
    """Base class of every error relprop raises on purpose."""


class UnsupportedLayerError(RelpropError, TypeError):
    """A module or operation on the explained path has no relevance rule.

    Raised when a method is constructed (before any computation), naming the module path
    and the type so that the user can see which layer to replace or exclude.
    """

    def __init__(self, path: str, kind: str, method: str, hint: str = "") -> None:
        self.path = path
        self.kind = kind
        message = f"{method} has no relevance rule for {kind} at '{path}'."
        if hint:
            message += " " + hint
        super().__init__(message)


class InputError(RelpropError, ValueError):
    """The input tensor or the target given to ``attribute`` is not usable."""


class ModelError(RelpropError, ValueError):
    """The model cannot be explained as it is (inference tensors, NaN weights, a non-tensor output)."""
