"""RSP at convolutions reading a signed map: an output whose receptive field holds no positive input.

The z-rule on ``a⁺`` has nothing to share such an output's relevance by.  Default mode gives it to the
field in proportion to ``|a|`` (evenly where ``a`` is 0 on the whole field), so ``Σ R`` is conserved;
reference mode drops it as the released code does.  Expected values are computed by hand in the
docstrings; all tensors are float64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

import relprop
from relprop.rules.conv_ops import ConvGeometry
from relprop.rules.rsp import rsp_conv

D = torch.float64
POINTWISE = ConvGeometry((1, 1), (0, 0), (1, 1), 1)


def _two_positions(second: list[float]) -> torch.Tensor:
    """a (1, 2, 1, 2): channel values [2, ·] and [1, ·] with ``second`` at the second position."""
    return torch.tensor([[[[2.0, second[0]]], [[1.0, second[1]]]]], dtype=D)


R = torch.tensor([[[[1.0, 0.5]]]], dtype=D)  # one output channel, two positions, 1×1 kernel


def test_empty_field_is_shared_by_magnitude():
    """x = a⁺ = [[2, 0], [1, 0]]; G⁺ = Σ_p R·x = [2, 1]; position 1: z = 2·2 + 1·1 = 5, shares 0.8, 0.2.
    Position 2 has no positive input: its 0.5 goes by |a| = [1, 3]: 0.125, 0.375.
    2·C = [[1.6, 0.25], [0.4, 0.75]]; Σ R = 1.5 comes off the two active units (0.75 each):
    [[0.85, 0.25], [−0.35, 0.75]], which sums to 1.5.  Dropping position 2 (reference) would give 0.5."""
    a = _two_positions([-1.0, -3.0])
    result = rsp_conv(a, R, POINTWISE, (1, 2, 1, 1))
    expected = torch.tensor([[[[0.85, 0.25]], [[-0.35, 0.75]]]], dtype=D)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-12)
    dropped = rsp_conv(a, R, POINTWISE, (1, 2, 1, 1), empty_fields=False)
    torch.testing.assert_close(dropped.sum(), torch.tensor(0.5, dtype=D), rtol=0, atol=1e-12)


def test_all_zero_field_is_shared_evenly():
    """As above with a = 0 at position 2 (a ReLU output): its 0.5 is split evenly, 0.25 per channel:
    2·C = [[1.6, 0.5], [0.4, 0.5]] − 0.75 on the active units = [[0.85, 0.5], [−0.35, 0.5]]."""
    result = rsp_conv(_two_positions([0.0, 0.0]), R, POINTWISE, (1, 2, 1, 1))
    expected = torch.tensor([[[[0.85, 0.5]], [[-0.35, 0.5]]]], dtype=D)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("groups", [1, 2])
def test_padded_grouped_conv_with_empty_fields_conserves(groups):
    """A 3×3 padded convolution on a mostly negative input (many fields without a positive input)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(2, 4, 7, 7, generator=gen, dtype=D) - 1.5
    relevance = torch.randn(2, 6, 7, 7, generator=gen, dtype=D)
    geometry = ConvGeometry((1, 1), (1, 1), (1, 1), groups)
    kernel_shape = (6, 4 // groups, 3, 3)
    fields = torch.nn.functional.conv2d(a.clamp(min=0).sum(1, keepdim=True), torch.ones(1, 1, 3, 3, dtype=D), padding=1)
    assert (fields == 0).sum() > 10  # the case under test occurs
    result = rsp_conv(a, relevance, geometry, kernel_shape)
    torch.testing.assert_close(result.sum(dim=(1, 2, 3)), relevance.sum(dim=(1, 2, 3)), rtol=1e-10, atol=1e-10)
    dropped = rsp_conv(a, relevance, geometry, kernel_shape, empty_fields=False)
    assert (dropped.sum(dim=(1, 2, 3)) - relevance.sum(dim=(1, 2, 3))).abs().max() > 1e-3


class SignedToy(nn.Module):
    """conv → conv (no activation in between: the second convolution reads a signed map) → ReLU →
    global average → Linear.  The negative bias of the first convolution makes some positions negative
    in both of its channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 2, 3, padding=1)
        self.conv2 = nn.Conv2d(2, 4, 1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.conv1.bias.fill_(-0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv2(self.conv1(x))).mean(dim=(2, 3)))


def _seed_sum(model: nn.Module, layer: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Σ of RSP's seed ``S / max|S|``, ``S = A ⊙ mean_hw(∂y_t/∂A)`` at ``layer``'s output, per sample."""
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        logits = model(x)
        (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), captured[-1])
    finally:
        handle.remove()
    seed = captured[-1].detach() * grad.mean(dim=(2, 3), keepdim=True)
    return (seed / seed.flatten(1).abs().amax(dim=1).view(-1, 1, 1, 1)).sum(dim=(1, 2, 3))


def test_rsp_conserves_on_the_signed_toy_net():
    torch.manual_seed(0)
    model = SignedToy().to(D).eval()
    x = torch.randn(2, 3, 8, 8, dtype=D, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1])
    with torch.no_grad():
        assert ((model.conv1(x) > 0).sum(dim=1) == 0).sum(dim=(1, 2)).min() > 0  # positions without a positive channel
    method = relprop.RSP(model)
    assert method.seed_layer == "relu"
    sums = method.attribute(x, target=targets).sum(dim=(1, 2, 3))
    torch.testing.assert_close(sums, _seed_sum(model, model.relu, x, targets), rtol=1e-10, atol=0)


def test_rsp_conserves_on_mnasnet():
    """MNASNet's linear bottlenecks feed signed maps to 1×1 convolutions; the sample below has output
    units without a positive input (it lost most of its Σ R before)."""
    torch.manual_seed(0)
    model = torchvision.models.mnasnet0_5().to(D).eval()
    x = torch.randn(2, 3, 128, 128, dtype=D)[:1]
    target = model(x).argmax(dim=1)
    method = relprop.RSP(model)
    sums = method.attribute(x, target=target).sum(dim=(1, 2, 3))
    expected = _seed_sum(model, model.get_submodule(method.seed_layer), x, target)
    assert ((sums - expected).abs() / expected.abs()).max() <= 1e-6
