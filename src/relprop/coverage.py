"""Does a method explain a model?  The checks behind ``relprop coverage`` and docs/coverage.md.

A method passes on a model when its float32 map of a batch

* has the input's shape and is finite,
* is not constant in any sample,
* is batch invariant: the last sample explained alone differs from it in the batch by at most
  :data:`INVARIANCE_TOLERANCE` of its max|R| (where the plain gradient varies more, the model's own
  float32 forward pass routes differently in the two calls, and the method is checked again in float64),
* conserves where the method claims to (:func:`claim_for`), checked in float64 on a copy of the model.

The model is never changed: the float64 and bias-free models are copies.
"""

from __future__ import annotations

import copy
import inspect
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Protocol, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from .model_state import ATTENTION_OUT_OF_SCOPE, TOKEN_MIXING, evaluation_mode

INVARIANCE_TOLERANCE = 1e-4
"""Largest batch variance of a float32 map (sample alone vs in the batch), relative to its max|R|."""
RESOLUTION = 1e-13
"""Where float64 cannot resolve a claimed total (the map's mass Σ|R| many orders above |Σ R|), a
conservation error within ``RESOLUTION · Σ|R|`` (about 1,000 rounding units of the mass) is all the
check can confirm: such a check passes, marked ``resolution_limited``."""
DEFAULT_METHODS = ("rsp", "ae", "rap", "lrp_composite", "gradcam")


class Explainer(Protocol):
    def attribute(self, x: Tensor, target: Any = None) -> Tensor: ...


Factory = Callable[[nn.Module, bool], Explainer]
"""``(model, for_conservation) -> explainer``; ``for_conservation`` asks for the method's exact variant
(LRP with ε = 0)."""


@dataclass(frozen=True)
class Claim:
    """What a method's Σ R equals per sample: the seed's sum, zero, or the target logit (on a copy of the
    model with every bias and BatchNorm running mean zeroed when ``bias_free``), to ``tolerance`` relative."""

    total: Literal["seed", "zero", "logit"]
    tolerance: float = 1e-6
    bias_free: bool = False


def claim_for(name: str, options: Mapping[str, Any] | None = None) -> Claim | None:
    """relprop's conservation claim for method ``name`` with constructor ``options`` (docs/methods.md):
    RSP keeps the seed's sum (not with ``purge``), RAP's total is 0, LRP-ε and the LRP composite sum to
    the target logit on a bias-free network (checked with ε = 0).  None: no claim."""
    options = options or {}
    if name == "rsp" and not options.get("purge"):
        return Claim("seed")
    if name == "rap":
        return Claim("zero")
    if name in ("lrp_epsilon", "lrp_composite"):
        return Claim("logit", bias_free=True)
    return None


def relprop_factory(name: str, options: Mapping[str, Any] | None = None) -> Factory:
    """A :data:`Factory` for relprop's method ``name`` (a ``relprop.list_methods()`` name) with ``options``."""
    from .registry import get_method

    cls, options = get_method(name), dict(options or {})

    def make(model: nn.Module, for_conservation: bool) -> Explainer:
        exact = {"epsilon": 0.0} if for_conservation and "epsilon" in inspect.signature(cls).parameters else {}
        return cls(model, **{**options, **exact})

    return make


@dataclass
class MethodCheck:
    """The outcome for one method on one model.

    ok: every check passed; note: the first that failed, or the error, in one line.
    invariance: float32 batch variance (of max|R|); conservation: relative error of Σ R in float64 and
    conditioning: the map's mass over the claimed total (max over samples; None where the total is 0).
    resolution_limited: conservation confirmed only to float64's resolution of the mass; routing_limited:
    the float32 batch variance was the model's own forward routing (the float64 check passed), explained.
    """

    method: str
    ok: bool = False
    note: str = ""
    invariance: float | None = None
    conservation: float | None = None
    conditioning: float | None = None
    resolution_limited: bool = False
    routing_limited: str = ""
    gradient_invariance: float | None = None
    invariance64: float | None = None
    seconds: float = 0.0

    @property
    def mark(self) -> str:
        """``✔``, ``✔¹`` (resolution-limited), ``✔²`` (routing-limited) or ``✘ <note>``."""
        if not self.ok:
            return "✘ " + self.note
        return "✔" + ("¹" if self.resolution_limited else "") + ("²" if self.routing_limited else "")


def check_model(
    model: nn.Module,
    methods: Sequence[str] = DEFAULT_METHODS,
    *,
    size: int = 224,
    batch: int = 2,
    seed: int = 1,
    channels: int | None = None,
) -> list[MethodCheck]:
    """Check relprop's ``methods`` (names from ``relprop.list_methods()``) on ``model`` with a random
    normal batch (batch, channels, size, size) drawn with ``seed`` on the model's device, explained for each
    sample's top-1 class.  ``channels`` defaults to the input channels of the model's first ``Conv2d``
    (1 for a grayscale model).  The model is not changed (one in training mode is checked in eval mode).

    >>> [c.mark for c in relprop.coverage.check_model(torchvision.models.resnet18(), ["rsp", "gradcam"], size=64)]
    ['✔', '✔']
    """
    factories = {name: relprop_factory(name) for name in methods}
    claims = {name: claim_for(name) for name in methods}
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if channels is None:
        first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        channels = 3 if first_conv is None else first_conv.in_channels
    x = torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed)).to(device)
    return list(check_methods(model, factories, claims, x).values())


def check_methods(
    model: nn.Module, factories: Mapping[str, Factory], claims: Mapping[str, Claim | None], x: Tensor,
) -> dict[str, MethodCheck]:
    """Every method of ``factories`` on ``model`` and the float32 batch ``x`` (N ≥ 2, on the model's device),
    explained for the top-1 classes; ``claims`` gives each method's conservation claim (or None)."""
    if x.shape[0] < 2:
        raise ValueError(f"batch invariance needs a batch of at least 2 samples; got {x.shape[0]}.")
    with evaluation_mode(model):  # a model in training mode is checked as it is explained: in eval mode
        with torch.no_grad():
            targets = model(x).argmax(dim=1)
        copies = _Copies(model)
        checks = {name: _check_float32(name, make, model, copies, x, targets) for name, make in factories.items()}
        for bias_free in (False, True):  # on the float64 copy first, then on the same copy with its biases zeroed
            for name, check in checks.items():
                claim = claims.get(name)
                if check.ok and claim is not None and claim.bias_free == bias_free:
                    start = time.perf_counter()
                    _judge_conservation(check, factories[name], claim, copies.float64(bias_free), x.double(), targets)
                    check.seconds += time.perf_counter() - start
    return checks


def _check_float32(name: str, make: Factory, model: nn.Module, copies: _Copies, x: Tensor,
                   targets: Tensor) -> MethodCheck:
    start = time.perf_counter()
    check = MethodCheck(name)
    try:
        check.note, check.invariance = check_map(make(model, False), x, targets)
        check.ok = not check.note
        if check.note.startswith("batch variance"):
            _judge_routing(check, make, model, copies, x, targets)
    except Exception as error:  # noqa: BLE001 - every failure is a result
        check.note = short_error(error)
    check.seconds = time.perf_counter() - start
    return check


class _Copies:
    """One float64 copy of the model, made on first use; asked for bias-free, its biases are zeroed in place
    (so every bias-free request must come after the others)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.copy, self.bias_free = model, None, False

    def float64(self, bias_free: bool = False) -> nn.Module:
        if self.copy is None:
            self.copy = copy.deepcopy(self.model).double()
        if bias_free and not self.bias_free:
            zero_biases(self.copy)
            self.bias_free = True
        elif self.bias_free and not bias_free:
            raise RuntimeError("the float64 copy's biases are already zeroed")
        return self.copy


def zero_biases(model: nn.Module) -> nn.Module:
    """In place: every ``bias`` parameter 0 and every BatchNorm running mean 0 (BatchNorm becomes a scale)."""
    with torch.no_grad():
        for m in model.modules():
            bias = getattr(m, "bias", None)
            if isinstance(bias, Tensor):
                bias.zero_()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.zero_()
    return model


def check_map(explainer: Explainer, x: Tensor, targets: Tensor) -> tuple[str, float | None]:
    """('' when the map of ``x`` passes, else what failed; its batch variance): shape, finiteness,
    not constant, the last sample alone vs in the batch within :data:`INVARIANCE_TOLERANCE`."""
    relevance = explainer.attribute(x, target=targets)
    if not isinstance(relevance, Tensor) or relevance.shape != x.shape:
        return f"shape {tuple(getattr(relevance, 'shape', ()))} != {tuple(x.shape)}", None
    if not torch.isfinite(relevance).all():
        return "not finite", None
    flat = relevance.flatten(1)
    if ((flat.amax(dim=1) - flat.amin(dim=1)) <= 0).any():
        return "constant map", None
    alone = explainer.attribute(x[-1:], target=targets[-1:])
    invariance = ((alone[0] - relevance[-1]).abs().max() / relevance[-1].abs().max()).item()
    if not invariance <= INVARIANCE_TOLERANCE:
        return f"batch variance {invariance:.1e}", invariance
    return "", invariance


def gradient_batch_variance(model: nn.Module, x: Tensor, targets: Tensor) -> float:
    """Batch variance of the plain gradient d logit / d x (last sample alone vs in the batch, of its max):
    how far the model's own forward pass moves between the two calls, with no relprop rule involved."""

    def gradient(inputs: Tensor, t: Tensor) -> Tensor:
        inputs = inputs.clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(model(inputs).gather(1, t[:, None]).sum(), inputs)
        return grad

    batch, alone = gradient(x, targets), gradient(x[-1:], targets[-1:])
    return ((alone[0] - batch[-1]).abs().max() / batch[-1].abs().max()).item()


def _judge_routing(check: MethodCheck, make: Factory, model: nn.Module, copies: _Copies, x: Tensor,
                   targets: Tensor) -> None:
    """A float32 batch variance beyond the tolerance is the model's when the plain gradient varies beyond it
    too (a max-pool winner decided by float32 rounding): then the method is judged in float64, where batched
    and single convolutions agree and the routing is the same."""
    check.gradient_invariance = gradient_batch_variance(model, x, targets)
    if not check.gradient_invariance > INVARIANCE_TOLERANCE:
        return
    problem, check.invariance64 = check_map(make(copies.float64(), False), x.double(), targets)
    if not problem:
        check.ok, check.note = True, ""
        check.routing_limited = (
            f"float32 batch variance {check.invariance:.1e}, where the plain gradient's is "
            f"{check.gradient_invariance:.1e} (the forward pass's own routing); float64 {check.invariance64:.1e}"
        )


def _judge_conservation(check: MethodCheck, make: Factory, claim: Claim, model64: nn.Module, x64: Tensor,
                        targets: Tensor) -> None:
    """Measure the method's conservation in float64 and fail the check where it misses its claim."""
    try:
        explainer = make(model64, True)
        relevance = explainer.attribute(x64, target=targets)
        sums, masses = relevance.sum(dim=(1, 2, 3)), relevance.abs().sum(dim=(1, 2, 3))
        if claim.total == "zero":
            check.conservation = (sums.abs() / masses).max().item()
        else:
            if claim.total == "seed":
                expected = explainer.seed_relevance(x64, target=targets).sum(dim=(1, 2, 3))  # type: ignore[attr-defined]
            else:
                with torch.no_grad():
                    expected = model64(x64).gather(1, targets[:, None]).squeeze(1)
            check.conservation = ((sums - expected).abs() / expected.abs()).max().item()
            check.conditioning = (masses / expected.abs()).max().item()
    except Exception as error:  # noqa: BLE001
        check.ok, check.note = False, f"float64: {short_error(error)}"
        return
    if check.conservation <= claim.tolerance:
        return
    mass = "" if check.conditioning is None else f"; the map's mass is {check.conditioning:.0e}× its sum"
    if check.conditioning is not None and check.conservation <= RESOLUTION * check.conditioning:
        check.resolution_limited = True
        check.note = (f"Σ R conserved to {check.conservation / check.conditioning:.0e} of the mass, "
                      f"the resolution of float64{mass}")
    else:
        check.ok, check.note = False, f"Σ R off by {check.conservation:.1e} (rel.){mass}"


def short_error(error: BaseException) -> str:
    """One short line: ``refused: attention (CrossCovarianceAttn at 'stages.1.blocks.1.xca')`` for a model with
    attention and ``refused: token mixing (Linear at 'blocks.0.mlp_tokens.fc1')`` for a token model, both out of
    scope; ``no rule: Sigmoid at 'blocks.0.0.se.gate'`` for a missing rule; else the exception type and the start
    of its first line."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    rule = re.search(r"has no relevance rule for (.+?) at '([^']*)'", text)
    if rule and ATTENTION_OUT_OF_SCOPE in text:
        scope = "token mixing" if TOKEN_MIXING in text else "attention"
        return f"refused: {scope} ({rule.group(1)} at '{rule.group(2)}')"
    if rule:
        return f"no rule: {rule.group(1)} at '{rule.group(2)}'"
    text = text if len(text) <= 90 else text[:87] + "..."
    return f"{type(error).__name__}: {text}"
