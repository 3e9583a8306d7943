"""Numerics contract of every relevance method: float32 agrees with float64, and a sample's map does not
depend on the rest of its batch (both to ≤ 1e-4 of max|R| in float32).

This is the guard for every speed-up: a faster rule that loses float32 digits fails here.  Random-init
stock models on small inputs (plus 224×224 cases on VGG-16) and the pretrained EfficientNet-Lite0.
LRP-ε is ill-conditioned by nature (it divides by pre-activations, which may be near 0 whatever ε is
chosen); it is measured next to Captum's LRP in ``benchmarks/numerics.py`` instead.

RAP fails the bound on the random-init VGG-16 and Inception-v3, and is marked so (strict xfail: the mark
fails as soon as it passes): its hidden rule sends positive relevance through the activating *and*
(a share of it) the inhibiting weights, so the positive and negative mass grow at every layer while
their difference, the relevance, does not; rounding is amplified about 3× per convolution on
Inception-v3.  The same happens with the rules computed in float64 on float32 activations, so it is the
rule's conditioning on these untrained networks, not the arithmetic (the pretrained EfficientNet-Lite0
passes).
"""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision

import relprop
from conftest import SHARED, efficientnet_lite0

BOUND = 1e-4
METHODS = {
    "rsp": ("rsp", {}), "ae_r1": ("ae", {"ratio": 1.0}), "ae_r2": ("ae", {"ratio": 2.0}), "rap": ("rap", {}),
    "lrp_zplus": ("lrp_zplus", {}),
    "lrp_alpha1beta0": ("lrp_alpha1beta0", {}), "lrp_alpha2beta1": ("lrp_alpha2beta1", {}),
    "lrp_gamma": ("lrp_gamma", {}), "lrp_composite": ("lrp_composite", {}),
}
MODELS = {"vgg16": 64, "resnet50": 64, "densenet121": 64, "inception_v3": 96, "mobilenet_v2": 64, "efficientnet_lite0": 64}
TARGETS = [1, 7, 42]


@functools.lru_cache(maxsize=1)
def stock_model(name: str) -> torch.nn.Module:
    """Random-init torchvision model (seed 0), or the pretrained EfficientNet-Lite0; eval mode, float32."""
    if name == "efficientnet_lite0":
        return efficientnet_lite0(SHARED)
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if name == "inception_v3" else {}
    return getattr(torchvision.models, name)(**kwargs).eval()


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """Worst sample's max|Δ| / max|reference|, in float64."""
    delta = (value.double() - reference.double()).abs().amax(dim=(1, 2, 3))
    return (delta / reference.double().abs().amax(dim=(1, 2, 3))).max().item()


def measure(model_name: str, method_key: str, size: int) -> tuple[float, float]:
    """(float32 vs float64, sample 1 alone vs in a batch of 3), both relative to max|R|."""
    name, kwargs = METHODS[method_key]
    model = stock_model(model_name)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    method = relprop.get_method(name)
    batch32 = method(model, **kwargs).attribute(x, target=TARGETS)
    alone32 = method(model, **kwargs).attribute(x[1:2], target=TARGETS[1:2])
    try:
        batch64 = method(model.double(), **kwargs).attribute(x.double(), target=TARGETS)
    finally:
        model.float()
    assert torch.isfinite(batch32).all() and batch32.abs().amax() > 0
    return relative_error(batch32, batch64), relative_error(alone32, batch32[1:2])


ILL_CONDITIONED = {("vgg16", "rap"), ("inception_v3", "rap")}


def cases() -> list:
    marks = pytest.mark.xfail(strict=True, reason="RAP amplifies rounding on this untrained network (module docstring)")
    return [pytest.param(model, method, marks=[marks] if (model, method) in ILL_CONDITIONED else [])
            for model in MODELS for method in METHODS]


@pytest.mark.parametrize("model_name, method_key", cases())
def test_float32_matches_float64_and_is_batch_invariant(model_name, method_key):
    precision, batch = measure(model_name, method_key, MODELS[model_name])
    assert precision <= BOUND, f"float32 vs float64: {precision:.2e} of max|R|"
    assert batch <= BOUND, f"alone vs in a batch of 3: {batch:.2e} of max|R|"


@pytest.mark.parametrize("method_key", ["rsp", "ae_r1", "ae_r2"])
def test_full_size_vgg16(method_key):
    precision, batch = measure("vgg16", method_key, 224)
    assert precision <= BOUND, f"float32 vs float64: {precision:.2e} of max|R|"
    assert batch <= BOUND, f"alone vs in a batch of 3: {batch:.2e} of max|R|"
