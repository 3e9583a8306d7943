"""Mirror equivariance of every method (issue 15).

A network is exactly mirror-equivariant when every kernel is mirror-symmetric (``W = W.flip(-1)``),
every padding is symmetric and every strided window grid is symmetric: the windows along a width
``n`` with kernel ``k``, stride ``s`` and padding ``p`` start at ``−p, s − p, …`` and the last one
must end at ``n − 1 + p``, i.e. ``s`` divides ``n + 2p − k`` (stride 1 always; 2×2 pooling on even
widths; a 3×3 stride-2 convolution with padding 1 on odd widths).  Every activation of ``flip(x)``
is then the mirror image of the activation of ``x``, the logits are equal, and every method's map
of ``flip(x)`` must be the mirrored map of ``x``.

A network with asymmetric padding (TensorFlow "SAME": more padding right than left) is not
mirror-equivariant, but its mirror image is known exactly: swap every left/right padding and flip
every kernel.  The mirror model computes on ``flip(x)`` the mirror image of what the model computes
on ``x``, so its map of ``flip(x)`` must be the mirrored map of ``x``.

And explicit zero padding (``nn.ZeroPad2d`` / ``F.pad`` before a convolution without padding) is
the same layer as the convolution's own padding, so it must give the same map.

All in float64; maps must agree to 1e-10 of their largest magnitude.  SmoothGrad is left out: its
noise is drawn without regard to the image, so it is mirror-equivariant only in expectation.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import relprop
from conftest import efficientnet_lite0
from relprop.methods.propagation import PropagationMethod
from reliability import Block, build, single_thread  # noqa: F401

D = torch.float64
TOLERANCE = 1e-10


def _methods() -> dict[str, object]:
    """Every registered method but SmoothGrad by name, AE with ratio 1 and 2, Integrated Gradients with
    8 steps (any number of steps mirrors)."""
    made: dict[str, object] = {name: relprop.get_method(name) for name in relprop.list_methods() if name != "smoothgrad"}
    del made["ae"]
    made["integrated_gradients"] = lambda model: relprop.get_method("integrated_gradients")(model, n_steps=8)
    made["ae(ratio=1)"] = lambda model: relprop.AE(model, ratio=1.0)
    made["ae(ratio=2)"] = lambda model: relprop.AE(model, ratio=2.0)
    return made


METHODS = _methods()
PROPAGATION = [  # the methods of the relevance walk
    name for name in METHODS if name.startswith("ae(") or issubclass(relprop.get_method(name), PropagationMethod)
]


def _explain(name: str, model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """Method ``name``'s map of ``x`` for class ``target`` (Guided Backprop's functional-ReLU warning silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        method = METHODS[name](model)  # type: ignore[operator]
    return method.attribute(x, target)


def _top_class(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x).argmax())


def _assert_same_map(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert expected.abs().max() > 0, "the expected map is all zero"
    error = ((got - expected).abs().max() / expected.abs().max()).item()
    assert error <= TOLERANCE, f"maps differ by {error:.3g} of max|R|"


def _symmetric_kernels(model: nn.Module) -> nn.Module:
    """``model`` (built by the test) with every convolution kernel replaced by ``(W + W.flip(-1)) / 2``."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.copy_((module.weight + module.weight.flip(-1)) / 2)
    return model.to(D).eval()


def _classifier(features: nn.Module, channels: int) -> nn.Module:
    """features, global average pooling, a Linear layer with 10 outputs (seeded)."""
    torch.manual_seed(1)
    return nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))


def _vgg(name: str) -> nn.Module:
    torch.manual_seed(0)
    return _classifier(getattr(torchvision.models, name)().features, 512)


def _resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10)


# Equivariant networks and the input size that keeps every window grid symmetric.
EQUIVARIANT = {
    # conv-BN-ReLU (in place), residual block with in-place add, concatenation, 2×2 max pool, conv
    "small": (lambda: build([Block("conv", width=8, batchnorm=True, inplace=True), Block("residual", batchnorm=True),
                             Block("concat", width=4), Block("pool"), Block("conv", width=6)], seed=0), 16),
    # stride 2 on odd widths: 17 -> 9 -> 5, then a 1×1 stride-2 conv 5 -> 3 (windows at 0, 2, 4)
    "stride 2": (lambda: build([Block("conv", width=6, stride=2), Block("residual", batchnorm=True),
                                Block("conv", width=8, stride=2), Block("concat", width=4),
                                Block("conv", width=6, kernel=1, stride=2, padding=0)], seed=0, size=17), 17),
    # 7×7/2 conv, 3×3/2 max pool, stride-2 stages with 1×1/2 downsampling: 33 -> 17 -> 9 -> 5 -> 3 -> 2
    "resnet18": (_resnet18, 33),
    "vgg11": (lambda: _vgg("vgg11"), 64),
    "vgg16": (lambda: _vgg("vgg16"), 32),
}


@pytest.fixture(scope="module", params=list(EQUIVARIANT))
def equivariant(request):  # type: ignore[no-untyped-def]
    """(name, mirror-equivariant model, input (1, 3, n, n)) for each network of :data:`EQUIVARIANT`."""
    make, size = EQUIVARIANT[request.param]
    model = _symmetric_kernels(make())
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2), dtype=D)
    return request.param, model, x


def test_the_equivariant_networks_are_equivariant(equivariant):
    _, model, x = equivariant
    with torch.no_grad():
        torch.testing.assert_close(model(x.flip(-1)), model(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", list(METHODS))
def test_map_of_the_mirrored_image_is_the_mirrored_map(method, equivariant):
    _, model, x = equivariant
    maps = _explain(method, model, torch.cat([x, x.flip(-1)]), _top_class(model, x))
    _assert_same_map(maps[1], maps[0].flip(-1))


# ---------------------------------------------------------------- asymmetric ("SAME") padding


class SamePadded(nn.Module):
    """TF "SAME"-style network on 16×16 inputs: every convolution reads an explicitly zero-padded input,
    more padding right / bottom for the strided ones, and a functional max pool.

    ``mirrored=True`` builds the mirror image: left and right padding swapped, kernels flipped.
    """

    PADS = ((0, 1, 0, 1), (1, 1, 1, 1), (1, 2, 1, 2))  # (left, right, top, bottom) per convolution

    def __init__(self, mirrored: bool = False) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.convs = nn.ModuleList([nn.Conv2d(3, 6, 3, stride=2), nn.Conv2d(6, 6, 3), nn.Conv2d(6, 8, 5, stride=2)])
        self.pads = nn.ModuleList([nn.ZeroPad2d(pad) for pad in self.PADS])
        self.fc = nn.Linear(8, 5)
        if mirrored:
            with torch.no_grad():
                for pad, conv in zip(self.pads, self.convs):
                    left, right, top, bottom = pad.padding
                    pad.padding = (right, left, top, bottom)
                    conv.weight.copy_(conv.weight.flip(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for pad, conv in zip(self.pads, self.convs):  # 16 -> 8 -> 8 -> 4
            x = torch.relu(conv(pad(x)))
        x = F.max_pool2d(x, 2)  # 4 -> 2
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _mirror_image(model: nn.Module) -> nn.Module:
    """Copy of a network of ``nn.ZeroPad2d`` + ``nn.Conv2d`` layers with left/right padding swapped and kernels flipped."""
    mirror = copy.deepcopy(model)
    with torch.no_grad():
        for module in mirror.modules():
            if isinstance(module, nn.ZeroPad2d):
                left, right, top, bottom = module.padding
                module.padding = (right, left, top, bottom)
            elif isinstance(module, nn.Conv2d):
                module.weight.copy_(module.weight.flip(-1))
    return mirror


@pytest.fixture(scope="module")
def same_padded():  # type: ignore[no-untyped-def]
    model, mirror = SamePadded().to(D).eval(), SamePadded(mirrored=True).to(D).eval()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(4), dtype=D)
    return model, mirror, x


def test_the_mirror_model_computes_the_mirror_image(same_padded):
    model, mirror, x = same_padded
    with torch.no_grad():
        torch.testing.assert_close(mirror(x.flip(-1)), model(x), rtol=0, atol=1e-12)
        assert (model(x.flip(-1)) - model(x)).abs().max() > 1e-3  # the model itself is not equivariant


@pytest.mark.parametrize("method", list(METHODS))
def test_mirror_model_explains_the_mirrored_image_with_the_mirrored_map(method, same_padded):
    model, mirror, x = same_padded
    target = _top_class(model, x)
    _assert_same_map(_explain(method, mirror, x.flip(-1), target), _explain(method, model, x, target).flip(-1))


@pytest.fixture(scope="module")
def efficientnet(shared_data):  # type: ignore[no-untyped-def]
    """The pretrained EfficientNet-Lite0 (``Conv2dStaticSamePadding``: ``nn.ZeroPad2d`` with more padding
    right / bottom at its stride-2 convolutions, depthwise convolutions, ReLU6, residual adds) and its
    mirror image, float64, with one 64×64 input."""
    model = efficientnet_lite0(shared_data).to(D)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5), dtype=D)
    return model, _mirror_image(model), x


@pytest.mark.parametrize("method", PROPAGATION)
def test_mirrored_efficientnet_explains_the_mirrored_image_with_the_mirrored_map(method, efficientnet):
    model, mirror, x = efficientnet
    target = _top_class(model, x)
    _assert_same_map(_explain(method, mirror, x.flip(-1), target), _explain(method, model, x, target).flip(-1))


def _same_padding_for(model: nn.Module, size: int) -> nn.Module:
    """``model`` with each ``nn.ZeroPad2d`` ahead of a convolution (``Conv2dStaticSamePadding``, fixed for
    224 px) set to TensorFlow's "SAME" padding for ``size`` × ``size`` inputs: a total of
    ``(⌈n/s⌉ − 1)·s + k − n`` per side pair, the odd one extra on the right.  Where every strided layer
    receives an odd width (33 -> 17 -> 9 -> 5 -> 3 on EfficientNet-Lite0), every total is even and
    the padding symmetric."""
    handles = []
    for conv in model.modules():
        pad = getattr(conv, "static_padding", None)
        if isinstance(conv, nn.Conv2d) and isinstance(pad, nn.ZeroPad2d):
            def set_padding(module: nn.ZeroPad2d, inputs: tuple[torch.Tensor], conv: nn.Conv2d = conv) -> None:
                n, k, s = inputs[0].shape[-1], conv.kernel_size[0], conv.stride[0]
                total = max((-(-n // s) - 1) * s + k - n, 0)
                module.padding = (total // 2, total - total // 2, total // 2, total - total // 2)

            handles.append(pad.register_forward_pre_hook(set_padding))
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size, dtype=D))
    for handle in handles:
        handle.remove()
    return model


@pytest.fixture(scope="module")
def efficientnet_symmetrised(shared_data):  # type: ignore[no-untyped-def]
    """The pretrained EfficientNet-Lite0 with mirror-symmetric kernels and its padding made even for a
    33×33 input, so exactly mirror-equivariant: its depthwise convolutions, ReLU6, residual adds and
    explicit padding layers on a symmetric grid."""
    model = _same_padding_for(_symmetric_kernels(efficientnet_lite0(shared_data)), 33)
    paddings = {m.padding for m in model.modules() if isinstance(m, nn.ZeroPad2d)}
    assert all(left == right for left, right, _, _ in paddings), paddings
    x = torch.randn(1, 3, 33, 33, generator=torch.Generator().manual_seed(6), dtype=D)
    with torch.no_grad():
        torch.testing.assert_close(model(x.flip(-1)), model(x), rtol=0, atol=1e-12)
    return model, x


@pytest.mark.parametrize("method", list(METHODS))
def test_symmetrised_efficientnet_explains_the_mirrored_image_with_the_mirrored_map(method, efficientnet_symmetrised):
    model, x = efficientnet_symmetrised
    target = _top_class(model, x)
    _assert_same_map(_explain(method, model, x.flip(-1), target), _explain(method, model, x, target).flip(-1))


# ---------------------------------------------------------------- explicit padding = the convolution's own


class PadThenConv(nn.Module):
    """``conv`` (a copy, without padding) applied to its input zero-padded by ``nn.ZeroPad2d`` or ``F.pad``."""

    def __init__(self, conv: nn.Conv2d, functional: bool) -> None:
        super().__init__()
        ph, pw = conv.padding  # type: ignore[misc]
        self.padding = (pw, pw, ph, ph)
        self.pad = None if functional else nn.ZeroPad2d(self.padding)
        self.conv = copy.deepcopy(conv)
        self.conv.padding = (0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.padding) if self.pad is None else self.pad(x))


def _explicitly_padded(model: nn.Module, functional: bool) -> nn.Module:
    """Copy of ``model`` with every padded convolution replaced by :class:`PadThenConv`."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.padding != (0, 0):
                setattr(parent, name, PadThenConv(child, functional))
    return model.eval()


@pytest.fixture(scope="module")
def padded_small():  # type: ignore[no-untyped-def]
    model = build([Block("conv", width=8, batchnorm=True), Block("residual"), Block("pool"),
                   Block("conv", width=6, stride=2), Block("conv", width=6, kernel=5, padding=2)], seed=6).to(D)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(7), dtype=D)
    return model, x


@pytest.mark.parametrize("functional", [False, True], ids=["ZeroPad2d", "F.pad"])
@pytest.mark.parametrize("method", list(METHODS))
def test_explicit_zero_padding_explains_like_the_convolutions_own(method, functional, padded_small):
    model, x = padded_small
    explicit = _explicitly_padded(model, functional)
    with torch.no_grad():
        torch.testing.assert_close(explicit(x), model(x), rtol=0, atol=1e-12)
    target = _top_class(model, x)
    _assert_same_map(_explain(method, explicit, x, target), _explain(method, model, x, target))
