"""Run a method on a model without leaving any trace on it, and refuse models that cannot be explained."""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import warnings
from typing import Any, Iterator

import torch
import torch.nn as nn
from torch import Tensor

from .errors import ModelError, UnsupportedLayerError

_PACKAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "")  # with the trailing separator


@contextlib.contextmanager
def evaluation_mode(model: nn.Module, warn: bool = True) -> Iterator[None]:
    """Put every module in eval mode for the duration, then restore each module's own flag.

    A model with any module in training mode is explained in eval mode (BatchNorm running
    statistics, no dropout), with a warning (unless ``warn`` is False) naming the model or the
    training submodules; the flags are restored afterwards, also when an exception is raised.
    """
    flags = {m: m.training for m in model.modules()}
    training = [name for name, m in model.named_modules() if m.training and name]
    if warn and (model.training or training):
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
            stacklevel=caller_stacklevel(),
        )
    try:
        model.eval()
        yield
    finally:
        for module, flag in flags.items():
            module.training = flag


def caller_stacklevel() -> int:
    """``stacklevel`` that makes a warning point at the first frame outside relprop (the user's line)."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and (
        frame.f_code.co_filename.startswith(_PACKAGE) or frame.f_code.co_filename == contextlib.__file__
    ):
        frame, level = frame.f_back, level + 1
    return level


PARALLEL_WRAPPERS = (nn.DataParallel, nn.parallel.DistributedDataParallel)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module a wrapper runs: ``model.module`` of a ``DataParallel`` / ``DistributedDataParallel``
    wrapper, ``model._orig_mod`` of a ``torch.compile``'d model, nested wrappers included; any other
    model as it is.  relprop explains the wrapped module eagerly, on its own device, with the same
    parameters: layer paths are those of the wrapped module (``'layer4'``, not ``'module.layer4'``)."""
    while True:
        if isinstance(model, PARALLEL_WRAPPERS):
            model = model.module
        elif _is_compiled(model):
            model = model._orig_mod
        else:
            return model


def _is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` is the ``OptimizedModule`` that ``torch.compile`` returns (its module is loaded
    whenever such a model exists, so checking does not import the compiler)."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return eval_frame is not None and isinstance(model, eval_frame.OptimizedModule)


ATTENTION_OUT_OF_SCOPE = (
    "relprop's rules cover convolutional networks; models with attention (vision transformers such as ViT, DeiT, "
    "Swin, MaxViT, and attention blocks in convolutional networks) are out of scope."
)
TOKEN_MIXING = "it mixes the tokens of a sequence (MLP-Mixer, ResMLP, vision transformers)"
"""Why a Linear layer applied to a token sequence is refused (with :data:`ATTENTION_OUT_OF_SCOPE`)."""


def is_attention(module: nn.Module) -> bool:
    """``nn.MultiheadAttention``, or a module whose class name contains "Attention" (timm's ``Attention``,
    torchvision's ``ShiftedWindowAttention``, MaxViT's ``RelativePositionalMultiHeadAttention``, ...)."""
    return isinstance(module, nn.MultiheadAttention) or "Attention" in type(module).__name__


def refuse_attention(model: nn.Module, method: str) -> None:
    """Raise :class:`~relprop.errors.UnsupportedLayerError` naming the first attention module of ``model``
    (:func:`is_attention`), wherever it sits: relevance rules for convolutional networks explain neither
    attention nor what lies above it, and a seed below the attention (a ViT's patch embedding) would leave
    the whole transformer to the seed's gradient."""
    found = next(((path, m) for path, m in model.named_modules() if is_attention(m)), None)
    if found is not None:
        path, module = found
        raise UnsupportedLayerError(
            path or type(model).__name__, type(module).__name__, method,
            ATTENTION_OUT_OF_SCOPE,
        )


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def forward_defaults(model: nn.Module) -> dict[str, Any]:
    """``model.forward``'s parameters after the input, by name, at their default values: what
    ``model(x)`` passes them ({} when the signature cannot be read, as for TorchScript).  A second
    parameter without a default raises :class:`~relprop.errors.ModelError`: relprop calls ``model(x)``."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return {}
    required = [p.name for p in parameters if p.default is p.empty and
                (p.kind in _POSITIONAL or p.kind == inspect.Parameter.KEYWORD_ONLY)]
    if required:
        raise ModelError(
            f"relprop explains models called as model(x) with one tensor input; {type(model).__name__}.forward also "
            f"requires {', '.join(repr(name) for name in required)}. Wrap the model in a module whose forward(x) "
            "supplies them."
        )
    return {p.name: p.default for p in parameters if p.default is not p.empty}


def refuse_torchscript(model: nn.Module, method: str) -> None:
    """Raise :class:`~relprop.errors.ModelError` when ``model`` is or holds a TorchScript module
    (``torch.jit.script`` / ``torch.jit.trace``): its layers are compiled code, which relprop cannot
    trace and module hooks do not reach, so a method that works layer by layer would fail or, through
    hooks, silently explain only part of the model."""
    scripted = next((path for path, m in model.named_modules() if isinstance(m, torch.jit.ScriptModule)), None)
    if scripted is not None:
        name = getattr(model, "original_name", type(model).__name__)  # a scripted model's own class name
        where = f"'{scripted}' of {name} is" if scripted else f"{name} is"
        raise ModelError(
            f"{where} a TorchScript module (torch.jit.script / torch.jit.trace); {method} works on the layers "
            "of a Python nn.Module, which TorchScript compiles away. Pass the module before scripting, or build "
            "the architecture again and load the weights with model.load_state_dict(scripted.state_dict()). "
            "'gradient', 'gradient_x_input', 'integrated_gradients' and 'smoothgrad' explain TorchScript models "
            "as they are."
        )


def check_model_tensors(model: nn.Module) -> None:
    """Refuse a model that relprop cannot explain correctly, before any work is done.

    Raises :class:`~relprop.errors.ModelError` when a parameter or buffer is an inference tensor
    (the model was built or loaded under ``torch.inference_mode()``, so autograd cannot record
    through it), when a parameter holds NaN or ±inf, or when a floating-point buffer holds NaN
    (±inf is allowed there: masks use it).
    """
    named = [("parameter", n, t) for n, t in model.named_parameters()]
    named += [("buffer", n, t) for n, t in model.named_buffers()]
    attributes = [
        ("tensor attribute", f"{path}.{name}" if path else name, value)
        for path, module in model.named_modules() for name, value in vars(module).items() if isinstance(value, Tensor)
    ]
    inference = [f"{kind} '{name}'" for kind, name, t in named + attributes if t.is_inference()]
    if inference:
        raise ModelError(
            f"{_listing(inference)} of {type(model).__name__} were made under torch.inference_mode(), which "
            "autograd cannot record through. Build the model outside inference_mode and copy the weights in with "
            "model.load_state_dict(state_dict), or replace each such tensor by a clone made outside it "
            "(t.data = t.data.clone())."
        )
    damaged = [
        f"{kind} '{name}'"
        for kind, name, t in named
        if t.is_floating_point() and not bool((torch.isfinite(t) if kind == "parameter" else ~torch.isnan(t)).all())
    ]
    if damaged:
        raise ModelError(
            f"{_listing(damaged)} of {type(model).__name__} hold NaN or inf: the weights are damaged "
            "(a diverged training run or a corrupt file); every output and map would be NaN."
        )


def check_model_output(model: nn.Module, example: Tensor) -> int:
    """Number of classes K of ``model``, from one forward pass on ``example[:1]`` (no gradient).

    ``example``: (N, C, H, W) on the model's device. Raises :class:`~relprop.errors.ModelError` when
    the forward pass fails (an input too small for the architecture, say) or the output is not a (1, K)
    tensor of logits (e.g. a tuple or dict, as detection models and models with auxiliary heads
    return), before any relevance is computed.
    """
    with torch.no_grad(), evaluation_mode(model, warn=False):
        try:
            output = model(example[:1])
        except Exception as exc:  # a forward pass fails in many exception types (timm asserts on sizes)
            lines = str(exc).strip().splitlines()
            reason = f"{type(exc).__name__}: {lines[0]}" if lines else f"{type(exc).__name__} (no message)"
            raise ModelError(
                f"{type(model).__name__} fails on a {tuple(example.shape[1:])} input: {reason}"
            ) from exc
    check_logits(model, output, 1)
    return int(output.shape[1])


def check_logits(model: nn.Module, output: Any, batch: int) -> None:
    """Raise :class:`~relprop.errors.ModelError` unless ``output`` is a (batch, classes) tensor, describing
    what ``model`` returned (a tuple, a dict and its keys, a tensor of another shape) and how to explain it."""
    name = type(model).__name__
    if isinstance(output, Tensor):
        if output.dim() == 2 and output.shape[0] == batch:
            return
        raise ModelError(
            f"{name} returns a tensor of shape {tuple(output.shape)} for {batch} input(s); relprop explains "
            "classifiers whose output is the logits (N, classes)."
        )
    if isinstance(output, dict):
        kind, pick = f"dict (keys {', '.join(map(repr, output))})", f"model(x)[{next(iter(output), 'key')!r}]"
    elif isinstance(output, (tuple, list)):
        kind, pick = f"{type(output).__name__} of {len(output)}", "model(x)[0]"
    else:
        kind, pick = type(output).__name__, "the logits"
    kind = kind.replace("immutable_dict", "dict").replace("immutable_list", "list")  # as a traced graph returns them
    raise ModelError(
        f"{name} returns a {kind}, not a tensor of logits (N, classes). Explain a module that returns the "
        f"logits: a wrapper whose forward(x) returns {pick}."
    )


def _listing(items: list[str]) -> str:
    more = f" and {len(items) - 3} more" if len(items) > 3 else ""
    return ", ".join(items[:3]) + more
