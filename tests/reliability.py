"""Helpers of the reliability tests (issue 7): small CNNs built from block specs (a fixed one for
contract tests, random ones drawn by tests/test_properties.py), every method by name, and a
single-thread fixture."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import pytest
import torch
import torch.nn as nn

import relprop


@dataclass(frozen=True)
class Block:
    """One block of a :class:`BlockCNN`.

    kind: ``"conv"`` (conv [+BN] + ReLU), ``"pool"`` (2×2 max or average pooling),
    ``"residual"`` (``relu(x + conv(relu(conv(x))))``, shape-preserving) or ``"concat"``
    (``cat([x, relu(conv1x1(x))])``).
    """

    kind: str
    width: int = 4
    kernel: int = 3
    stride: int = 1
    padding: int = 1
    batchnorm: bool = False
    inplace: bool = False
    pool: str = "max"


def _conv(cin: int, cout: int, block: Block, bias: bool, **geometry: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, bias=bias, **geometry)]
    if block.batchnorm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=block.inplace))
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """``relu(x + body(x))``; the add is in place (like torchvision's ``out += identity``) when ``inplace``."""

    def __init__(self, channels: int, block: Block, bias: bool) -> None:
        super().__init__()
        pad = block.kernel // 2
        self.body = nn.Sequential(
            _conv(channels, channels, block, bias, kernel_size=block.kernel, padding=pad),
            nn.Conv2d(channels, channels, block.kernel, padding=pad, bias=bias),
        )
        self.inplace = block.inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.inplace:
            out += x
            return torch.relu_(out)
        return torch.relu(out + x)


class Concat(nn.Module):
    """``cat([x, relu(conv1x1(x))], dim=1)``."""

    def __init__(self, channels: int, block: Block, bias: bool) -> None:
        super().__init__()
        self.branch = _conv(channels, block.width, block, bias, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.branch(x)], dim=1)


class BlockCNN(nn.Module):
    """Blocks, then global average pooling and a Linear classifier.

    ``bias=False`` gives a positively homogeneous network (no conv/Linear bias, BatchNorm shifts
    set to zero by :func:`randomise_batchnorm`): ``f(c·x) = c·f(x)`` for ``c > 0``.
    Blocks that would shrink the feature map below 1×1 are left out (``self.specs`` lists the kept ones).
    """

    def __init__(self, blocks: list[Block], in_channels: int = 3, size: int = 16, classes: int = 5, bias: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        kept: list[Block] = []
        channels = in_channels
        for block in blocks:
            if block.kind == "conv":
                out = (size + 2 * block.padding - block.kernel) // block.stride + 1
                if out < 1:
                    continue
                layers.append(_conv(channels, block.width, block, bias, kernel_size=block.kernel,
                                    stride=block.stride, padding=block.padding))
                channels, size = block.width, out
            elif block.kind == "pool":
                if size < 2:
                    continue
                layers.append(nn.MaxPool2d(2) if block.pool == "max" else nn.AvgPool2d(2))
                size //= 2
            elif block.kind == "residual":
                layers.append(Residual(channels, block, bias))
            elif block.kind == "concat":
                layers.append(Concat(channels, block, bias))
                channels += block.width
            else:
                raise ValueError(block.kind)
            kept.append(block)
        self.specs = kept
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


def randomise_batchnorm(model: nn.Module, generator: torch.Generator, shift: bool = True) -> None:
    """Random running statistics and affine parameters for every BatchNorm (zero shift if not ``shift``)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_var.copy_(torch.rand(c, generator=generator) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                if shift:
                    m.running_mean.copy_(torch.rand(c, generator=generator) - 0.5)
                    m.bias.copy_((torch.rand(c, generator=generator) - 0.5) * 0.2)
                else:
                    m.running_mean.zero_()
                    m.bias.zero_()


def build(blocks: list[Block], seed: int, in_channels: int = 3, size: int = 16, bias: bool = True) -> BlockCNN:
    """A :class:`BlockCNN` in eval mode with weights drawn from ``seed`` (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BlockCNN(blocks, in_channels, size, bias=bias)
    randomise_batchnorm(model, torch.Generator().manual_seed(seed + 1), shift=bias)
    return model.eval()


SMALL_BLOCKS = [
    Block("conv", width=8, batchnorm=True, inplace=True),
    Block("residual", batchnorm=True, inplace=True),
    Block("concat", width=4),
    Block("pool", pool="max"),
    Block("conv", width=6, kernel=3, padding=1),
]


def small_cnn(seed: int = 0) -> BlockCNN:
    """conv-BN-ReLU(in place), residual block with in-place add, concat, max-pool, conv, classifier (5 classes)."""
    return build(SMALL_BLOCKS, seed)


def small_input(n: int = 3, seed: int = 1, size: int = 16) -> torch.Tensor:
    """A (n, 3, size, size) standard-normal batch."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Tiny models run faster on one thread (no OpenMP start-up / spinning on a shared CPU).

    Import it into a test module to make it apply there; the caller's setting is restored.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _method_factories() -> dict[str, Callable[[nn.Module], object]]:
    """Every registered method with its default arguments, plus RSP and AE in reference mode."""
    made: dict[str, Callable[[nn.Module], object]] = {
        name: relprop.get_method(name) for name in relprop.list_methods()
    }
    made["rsp-reference"] = lambda m: relprop.RSP(m, mode="reference")
    made["ae-reference"] = lambda m: relprop.AE(m, mode="reference")
    return made


METHOD_FACTORIES = _method_factories()
METHOD_NAMES = sorted(METHOD_FACTORIES)


def construct(name: str, model: nn.Module):  # type: ignore[no-untyped-def]
    """Method ``name`` of :data:`METHOD_FACTORIES` on ``model`` (construction warnings silenced:
    Guided Backprop warns about functional ReLUs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return METHOD_FACTORIES[name](model)
