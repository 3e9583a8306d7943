"""Gradient baselines computed with Captum: gradient, gradient × input, Integrated Gradients,
SmoothGrad and Guided Backprop.

Each class wraps one Captum attribution behind relprop's contract (:class:`AutogradMethod`):
targets resolved per sample like RSP, the model explained in eval mode and restored afterwards,
the caller's input tensor never touched, gradients taken with respect to the input only (the
parameters' ``.grad`` stay as they were).
"""

from __future__ import annotations

import numbers
import warnings
from typing import Union

import torch
import torch.nn as nn
from torch import Tensor

from ..arguments import choice, flag, integer, number
from ..engine import POINTWISE, ModelGraph
from ..errors import InputError, RelpropError
from ..model_state import (
    check_logits, check_model_tensors, evaluation_mode, forward_defaults, refuse_torchscript, unwrap_model,
)
from ..registry import register
from ..targets import Target, channel_mismatch, check_input, resolve_targets

Baseline = Union[float, Tensor]

QUADRATURES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
"""The quadrature rules of Captum's integrated gradients (``method``)."""


class AutogradMethod:
    """Base class of the autograd baselines: ``Method(model).attribute(x, target=None)``.

    Subclasses implement ``_attribute(x, targets)`` on a private copy of ``x`` that requires grad,
    with ``targets`` a LongTensor (N,), and return a tensor of ``x``'s shape.  A ``DataParallel`` /
    ``DistributedDataParallel`` wrapper or a ``torch.compile``'d model is explained through the module it
    wraps; a model holding tensors made under ``torch.inference_mode()`` is refused at construction.
    """

    name = "autograd method"

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
        self.model = unwrap_model(model)
        forward_defaults(self.model)  # a forward() that needs more than x is refused here, not at the first call
        check_model_tensors(self.model)

    def attribute(self, x: Tensor, target: Target = None) -> Tensor:
        """Attribution of every input element for the target class.

        x: (N, C, H, W) floating-point batch on the model's device and dtype.
        target: None (top-1 class of each sample), an int, a sequence of N ints or a LongTensor (N,).
        Returns a tensor of x's shape, dtype and device; sample i does not depend on the other samples.
        """
        x = check_input(x)
        _check_compatible(self.model, x)
        with evaluation_mode(self.model):
            inputs = x.detach().clone().requires_grad_(True)
            with torch.no_grad():
                try:
                    logits = self.model(inputs)
                except RuntimeError:
                    _raise_if_channels_differ(self.model, x)
                    raise
            check_logits(self.model, logits, x.shape[0])
            targets = resolve_targets(target, logits)
            with torch.enable_grad():
                result = self._attribute(inputs, targets).detach().to(x.dtype)  # autocast may compute in another dtype
        if not torch.isfinite(result).all():
            raise RelpropError(
                f"{self.name} produced NaN or Inf on {type(self.model).__name__}; explain in float64 "
                "(model.double(), x.double())."
            )
        return result

    def _attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__})"


def _raise_if_channels_differ(model: nn.Module, x: Tensor) -> None:
    """After a failed forward pass: InputError if x's channels do not fit the model's first Conv2d."""
    first = next(((name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and x.shape[1] != first[1].in_channels:
        raise channel_mismatch(x, first[0], first[1].in_channels)


def _check_compatible(model: nn.Module, x: Tensor) -> None:
    param = next(model.parameters(), None)
    if param is not None and (param.dtype != x.dtype or param.device != x.device):
        raise InputError(
            f"x is {x.dtype} on {x.device} but the model's parameters are {param.dtype} on "
            f"{param.device}; call model.to(x.device, x.dtype) or convert x."
        )


@register("gradient")
class Gradient(AutogradMethod):
    """Saliency: the gradient ``∂y_t/∂x`` of the target logit, **signed** by default.

    Captum's ``Saliency`` takes the absolute value by default; relprop keeps the sign so that the
    map is comparable with the other signed methods. ``absolute=True`` gives ``|∂y_t/∂x|``
    (Simonyan et al. 2014 take the maximum of that over channels when displaying).
    """

    name = "Gradient"

    def __init__(self, model: nn.Module, absolute: bool = False) -> None:
        super().__init__(model)
        self.absolute = flag("absolute", absolute)

    def _attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        from captum.attr import Saliency

        return Saliency(self.model).attribute(x, target=targets, abs=self.absolute)


@register("gradient_x_input")
class GradientXInput(AutogradMethod):
    """Gradient × input: ``x ⊙ ∂y_t/∂x`` (Captum's ``InputXGradient``), signed."""

    name = "Gradient × input"

    def _attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        from captum.attr import InputXGradient

        return InputXGradient(self.model).attribute(x, target=targets)


@register("integrated_gradients")
class IntegratedGradients(AutogradMethod):
    """Integrated Gradients (Sundararajan et al. 2017) with Captum: ``(x − x̄) ⊙ ∫₀¹ ∂y_t/∂x(x̄ + α(x − x̄)) dα``.

    Args:
        model: the classifier; it is never modified.
        baseline: ``x̄``, a float (a constant image; the default 0 is the mean image for inputs
            normalised with the data set's mean) or a tensor broadcastable to ``x``.
        n_steps: number of points of the integral.
        method: Captum's quadrature rule, one of :data:`QUADRATURES`.
        steps_per_pass: interpolation points evaluated per sample in one forward/backward pass
            (memory grows with ``steps_per_pass × N``); None evaluates all ``n_steps`` at once.
            The maps do not depend on it beyond rounding (≤ 2e-7 of max|R| measured).  On a CPU
            small passes are faster: 1 took 0.45× the time of 8 for a batch of four 448×448 images
            on EfficientNet-Lite0 (2 cores); on a GPU larger passes use the device better.
    """

    name = "Integrated Gradients"

    def __init__(
        self,
        model: nn.Module,
        baseline: Baseline = 0.0,
        n_steps: int = 50,
        method: str = "gausslegendre",
        steps_per_pass: int | None = 8,
    ) -> None:
        super().__init__(model)
        if isinstance(baseline, bool) or not isinstance(baseline, (numbers.Real, Tensor)):
            raise TypeError(f"baseline must be a float or a tensor broadcastable to x; got {type(baseline).__name__}.")
        self.baseline = baseline
        self.n_steps = integer("n_steps", n_steps)
        self.method = choice("method", method, QUADRATURES)
        self.steps_per_pass = None if steps_per_pass is None else integer("steps_per_pass", steps_per_pass)

    def _attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        from captum.attr import IntegratedGradients as CaptumIntegratedGradients

        batch = None if self.steps_per_pass is None else self.steps_per_pass * x.shape[0]
        baseline = self.baseline
        if isinstance(baseline, Tensor):
            try:
                baseline = baseline.to(x).expand_as(x)
            except RuntimeError:
                raise InputError(
                    f"baseline of shape {tuple(baseline.shape)} does not broadcast to x's shape {tuple(x.shape)}; "
                    "pass a float, a (C, 1, 1) or (C, H, W) image, or one image per sample (N, C, H, W)."
                ) from None
        return CaptumIntegratedGradients(self.model).attribute(
            x, baselines=baseline, target=targets, n_steps=self.n_steps, method=self.method,
            internal_batch_size=batch,
        )


@register("smoothgrad")
class SmoothGrad(AutogradMethod):
    """SmoothGrad (Smilkov et al. 2017): the gradient (Captum's ``Saliency``) averaged over
    ``n_samples`` noisy copies ``x_i + ε``, ``ε ~ N(0, σ_i²)``, ``σ_i = noise_level × (max x_i − min x_i)``.

    The noise is drawn on the CPU from a generator seeded with ``seed``, in x's dtype, then moved
    to x's device: every sample gets the same noise sequence wherever it sits in a batch (sample i
    of a batch gets exactly the map it gets alone), repeated calls give the same map on any device,
    and the caller's random state is not touched. (Captum's ``NoiseTunnel`` draws from the global
    generator, for the whole batch at once and in the default dtype, which would break these
    guarantees, so only the averaging is written here.) The averaged gradients are signed unless
    ``absolute=True`` (then ``|∂y_t/∂x|`` is averaged). ``samples_per_pass`` noisy copies go
    through the model at once.
    """

    name = "SmoothGrad"

    def __init__(
        self,
        model: nn.Module,
        n_samples: int = 25,
        noise_level: float = 0.15,
        seed: int = 0,
        absolute: bool = False,
        samples_per_pass: int = 16,
    ) -> None:
        super().__init__(model)
        self.n_samples = integer("n_samples", n_samples)
        self.noise_level = number("noise_level", noise_level)
        self.seed = integer("seed", seed, low=0)
        self.absolute = flag("absolute", absolute)
        self.samples_per_pass = integer("samples_per_pass", samples_per_pass)

    def _attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        from captum.attr import Saliency

        saliency = Saliency(self.model)
        maps = []
        for sample, target in zip(x.detach().split(1), targets.tolist()):
            total = torch.zeros_like(sample)
            for noisy in (sample + self._noise(sample)).split(self.samples_per_pass):
                gradients = saliency.attribute(noisy.requires_grad_(True), target=target, abs=self.absolute)
                total += gradients.sum(dim=0, keepdim=True)
            maps.append(total / self.n_samples)
        return torch.cat(maps)

    def _noise(self, sample: Tensor) -> Tensor:
        """The noise (n_samples, C, H, W) added to one sample (1, C, H, W)."""
        generator = torch.Generator().manual_seed(self.seed)
        unit = torch.randn((self.n_samples, *sample.shape[1:]), generator=generator, dtype=sample.dtype)
        return unit.to(sample.device) * (self.noise_level * (sample.max() - sample.min()))


@register("guided_backprop")
class GuidedBackprop(AutogradMethod):
    """Guided Backprop (Springenberg et al. 2015) with Captum: the gradient with every ReLU's
    backward pass clamped to non-negative values.

    Captum overrides the backward pass of ``nn.ReLU`` modules only (through hooks it removes after
    each call, also on errors; in-place ReLUs are safe because it hooks a copy of their input).
    ReLU-type activations applied as functions (``torch.relu``, ``F.relu``) or other modules
    (``nn.ReLU6``) keep their plain gradient; a warning lists them when the model is traced.
    """

    name = "Guided Backprop"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        refuse_torchscript(self.model, self.name)  # hooks on its ReLUs would never run: the plain gradient
        unhooked = _unhooked_relus(self.model)
        if unhooked:
            listed = ", ".join(unhooked[:4]) + (f" and {len(unhooked) - 4} more" if len(unhooked) > 4 else "")
            warnings.warn(
                f"Guided Backprop overrides nn.ReLU modules only; the ReLU-type activations at {listed} "
                "keep their plain gradient.",
                UserWarning,
                stacklevel=2,
            )

    def _attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        from captum.attr import GuidedBackprop as CaptumGuidedBackprop

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU activations")
            return CaptumGuidedBackprop(self.model).attribute(x, target=targets)


def _unhooked_relus(model: nn.Module) -> list[str]:
    """Paths of ReLU-type activations that are not ``nn.ReLU`` modules ([] if the model cannot be traced)."""
    try:
        graph = ModelGraph(model)
    except RelpropError:
        return []
    return list(dict.fromkeys(
        op.path for op in graph.ops
        if op.kind == POINTWISE and "relu" in op.type_name.lower() and not isinstance(op.module, nn.ReLU)
    ))
