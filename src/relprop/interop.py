"""Interoperability: any registered relprop method as Quantus's ``explain_func``."""

from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from .registry import get_method

ArrayLike = Union[np.ndarray, torch.Tensor]


def explain(
    model: nn.Module,
    inputs: ArrayLike,
    targets: Union[None, int, Sequence[int], ArrayLike],
    method: str = "rsp",
    device: Union[str, torch.device, None] = None,
    reduce_axes: Sequence[int] = (1,),
    keepdims: bool = True,
    **kwargs: Any,
) -> np.ndarray:
    """Explain ``inputs`` with ``relprop.get_method(method)(model, **kwargs)``; numpy out.

    Usable as Quantus's ``explain_func`` (``metric(model=..., x_batch=..., y_batch=...,
    explain_func=relprop.explain, explain_func_kwargs={"method": "rsp"})``): Quantus calls it with
    ``model``, ``inputs`` and ``targets`` as keywords and adds ``device`` when the metric has one.

    Args:
        model: the classifier; it is not moved or changed.
        inputs: (N, C, H, W) numpy array or tensor; converted to the model's parameter dtype and
            to ``device`` (default: the device of the model's parameters).
        targets: one class index per sample (numpy array, tensor or list of N ints), an int, or
            None for each sample's top-1 class.
        method: a name from ``relprop.list_methods()``.
        reduce_axes: axes summed in the result; the default ``(1,)`` sums the channels, like
            Quantus's own Captum explanations; ``()`` keeps the input's shape.
        keepdims: keep the summed axes with size 1 (default: the result is (N, 1, H, W)).
        **kwargs: arguments of the method's constructor (e.g. ``ratio=2.0`` for AE).

    Returns:
        numpy array in the model's floating-point dtype, (N, 1, H, W) by default.
    """
    if 0 in tuple(reduce_axes):
        raise ValueError("reduce_axes must not contain the batch axis 0.")
    explainer = get_method(method)(model, **kwargs)
    param = next(model.parameters(), None)
    if device is None:
        device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.as_tensor(inputs).to(device=device, dtype=dtype)
    if targets is not None and not isinstance(targets, int):
        targets = torch.as_tensor(np.asarray(targets)).reshape(-1).long().to(device)
    attribution = explainer.attribute(x, target=targets).detach().cpu().numpy()
    if len(reduce_axes) == 0:
        return attribution
    return attribution.sum(axis=tuple(reduce_axes), keepdims=keepdims)
