"""RAP: its two rules and a two-layer net against hand-computed values, conservation, batch
invariance, stock models, unsupported heads.

Expected values are written literally and derived by hand in the comments (notation of
relprop.rules.rap: W⁺ activating weights, W⁻ inhibiting weight magnitudes, q = Z₂ / (Z₁ + Z₂)).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import torchvision

import relprop
from relprop.engine import LogitSplitSeed, ModelGraph
from relprop.engine.forward import record_forward
from relprop.rules.conv_ops import ConvGeometry
from relprop.rules.lrp import conv_map, dense_map
from relprop.rules.rap import rap_balance, rap_hidden
from test_lrp import D, _rel, check_stock_model, small_cnn

W1 = [[1.0, -1.0], [2.0, 1.0]]


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_hidden_rule_by_hand(kind):
    """a = (1, 2), W = [[1, -1], [2, 1]], R = (3, -1).

    Z₁ = (1, 4), Z₂ = (2, 0), q = (2/3, 0).  Activators: output 0 gives its R⁺ = 3 to input 0 (the only
    activator) -> (3, 0).  Inhibitors get q·R⁺ + (1 + q)·R⁻ = (2, -1): output 0 -> input 1 gets 2;
    output 1 has no inhibitor (its -1 is dropped).  C = (3, 2), Σ C − Σ R = 5 − 2 = 3, both inputs are
    active and connected: R_in = (3, 2) − 1.5 = (1.5, 0.5).
    """
    a = torch.tensor([[1.0, 2.0]], dtype=D)
    r = torch.tensor([[3.0, -1.0]], dtype=D)
    w = torch.tensor(W1, dtype=D)
    if kind == "dense":
        out = rap_hidden(a, r, w, dense_map())
    else:
        geometry = ConvGeometry((1, 1), (0, 0), (1, 1), 1)
        out = rap_hidden(a.view(1, 2, 1, 1), r.view(1, 2, 1, 1), w.view(2, 2, 1, 1), conv_map(geometry, (1, 2, 1, 1)))
    torch.testing.assert_close(out.reshape(1, 2), torch.tensor([[1.5, 0.5]], dtype=D), rtol=0, atol=1e-12)


def test_hidden_rule_support_excludes_inactive_inputs():
    """a = (1, 0, 2): the inactive input 1 gets nothing, also from the re-centring.

    W = [[1, 1, -1]], R = (2,): Z₁ = 1, Z₂ = 2, q = 2/3; activators: input 0 gets 2; inhibitors get
    (2/3)·2 = 4/3 -> input 2.  C = (2, 0, 4/3), excess 4/3 over inputs 0 and 2: (4/3, 0, 2/3).
    """
    out = rap_hidden(
        torch.tensor([[1.0, 0.0, 2.0]], dtype=D), torch.tensor([[2.0]], dtype=D),
        torch.tensor([[1.0, 1.0, -1.0]], dtype=D), dense_map(),
    )
    torch.testing.assert_close(out, torch.tensor([[4 / 3, 0.0, 2 / 3]], dtype=D), rtol=0, atol=1e-12)


def test_logit_split_by_hand():
    """W = [[5, 5, 5], [2, 1, -1]], a = (1, -2, 3) for both samples.

    Sample 0, target 1: c = (2, -2, -3) -> positive part to unit mass (1, 0, 0), negative
    (0, -2, -3)/5: (1, -0.4, -0.6).  Sample 1, target 0: c = (5, -10, 15) -> (5, 0, 15)/20 − (0, 1, 0)
    = (0.25, -1, 0.75).
    """
    a = torch.tensor([[1.0, -2.0, 3.0], [1.0, -2.0, 3.0]], dtype=D)
    r = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=D)
    w = torch.tensor([[5.0, 5.0, 5.0], [2.0, 1.0, -1.0]], dtype=D)
    expected = torch.tensor([[1.0, -0.4, -0.6], [0.25, -1.0, 0.75]], dtype=D)
    torch.testing.assert_close(rap_balance(a * (r @ w)), expected, rtol=0, atol=1e-12)


def test_seed_total_is_exact_and_the_float32_seed_sums_to_it():
    """The balanced seed's total is 0 where both signs occur, +1 / −1 where one does, 0 for no
    contribution; in float32 the rounded seed sums to it within the rounding of its entries
    (~eps·‖R‖₂ ≈ 1e-10 here), not within the rounding of a float32 sum of the masses (1e-7 before)."""
    total = LogitSplitSeed().total(torch.tensor([[1.0, -2.0], [3.0, 0.0], [0.0, -1.0], [0.0, 0.0]]))
    assert total.dtype == torch.float64 and total.tolist() == [0.0, 1.0, -1.0, 0.0]
    g = torch.Generator().manual_seed(0)
    c = torch.randn(4, 25088, generator=g) * torch.rand(4, 25088, generator=g).pow(4) * 10
    seed = rap_balance(c)
    assert seed.dtype == torch.float32
    assert seed.sum(dim=1, dtype=torch.float64).abs().max() < 2e-9


def test_two_layer_net_by_hand():
    """x = (1, 2) -> Linear W1 = [[1, -1], [2, 1]], b1 = (2, 0) -> ReLU: h = (1, 4) -> Linear
    W2 = [[1, -1], [2, 1]], b2 = (0, 1).

    Target 0: c = (1, -4) -> R_h = (1, -1).  Hidden rule: Z₁ = (1, 4), Z₂ = (2, 0), q = (2/3, 0);
    activators (1, 0); inhibitors get (2/3, -1) -> input 1 gets (2/3)/2·2 = 2/3; C = (1, 2/3),
    excess 5/3 over 2 inputs: (1/6, -1/6).
    Target 1: c = (2, 4) (the bias is left out) -> R_h = (1/3, 2/3).  Activators: s = (1/3, 1/6)
    -> (2/3, 1/3); inhibitors q·R⁺ = (2/9, 0) -> input 1 gets 2/9; C = (2/3, 5/9), excess 2/9:
    (5/9, 4/9).
    """
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)).to(D)
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(W1)), model[1].bias.copy_(torch.tensor([2.0, 0.0]))
        model[3].weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 1.0]])), model[3].bias.copy_(torch.tensor([0.0, 1.0]))
    x = torch.tensor([1.0, 2.0], dtype=D).view(1, 1, 1, 2).repeat(2, 1, 1, 1)
    attr = relprop.RAP(model.eval()).attribute(x, target=[0, 1])
    expected = torch.tensor([[1 / 6, -1 / 6], [5 / 9, 4 / 9]], dtype=D).view(2, 1, 1, 2)
    torch.testing.assert_close(attr, expected, rtol=0, atol=1e-12)


def test_balanced_total_is_conserved_to_the_input():
    """The logit split gives Σ R = 0 (both signs occur here); every later rule (re-centring, pooling,
    residual split, z^B) keeps it."""
    model = small_cnn()
    x = torch.randn(4, 3, 12, 12, dtype=D, generator=torch.Generator().manual_seed(6))
    attr = relprop.RAP(model).attribute(x, target=[0, 1, 2, 3])
    mass = attr.abs().sum(dim=(1, 2, 3))
    assert (mass > 0).all()
    assert (attr.sum(dim=(1, 2, 3)).abs() <= 1e-9 * mass).all()


def test_batch_per_sample_targets_and_invariance():
    """Sample i of a batch gets its map alone (float64, see test_lrp)."""
    model = small_cnn()
    method = relprop.get_method("rap")(model)
    x = torch.randn(4, 3, 12, 12, dtype=D, generator=torch.Generator().manual_seed(3))
    targets = [4, 0, 2, 2]
    batch = method.attribute(x, target=targets)
    for i, t in enumerate(targets):
        assert _rel(batch[i : i + 1], method.attribute(x[i : i + 1], target=t)) <= 1e-5
    assert _rel(batch[2], method.attribute(x[2:3], target=1)[0]) > 1e-3


@pytest.mark.parametrize("arch", ["vgg11", "resnet18", "densenet121", "mobilenet_v2"])
def test_stock_models(arch):
    check_stock_model(arch, ["rap"])


def test_logits_from_a_relu_pooled_convolution_by_hand():
    """SqueezeNet's head, 1×1 conv -> ReLU -> global average pool -> flatten: the seed splits the logit
    into c_ip = a_ip w_ti 1[z_tp > 0] / hw and balances it.

    An identity 1×1 image conv and a ReLU give a = x: channel 0 = (1, 2), channel 1 = (0.5, 4) on a 1×2
    map.  Head w = (1, -1), b = 1: z = (1 − 0.5 + 1, 2 − 4 + 1) = (1.5, −1), only position 0 is on;
    logit = 1.5 / 2 = 0.75.  ∂y/∂a = (0.5, −0.5) at position 0, 0 at position 1, so
    c = channel 0 (0.5, 0), channel 1 (−0.25, 0) (Σ c = 0.25 = the logit without the bias's 0.5)
    -> balanced: channel 0 (1, 0), channel 1 (−1, 0).
    """
    model = nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), nn.ReLU(), nn.Conv2d(2, 1, 1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten()).to(D).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        model[2].weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1)), model[2].bias.fill_(1.0)
    x = torch.tensor([[1.0, 2.0], [0.5, 4.0]], dtype=D).view(1, 2, 1, 2)
    graph = ModelGraph(model)
    seed = LogitSplitSeed()
    layer = seed.layer(graph)
    assert graph.by_name[layer].path == "1"  # the ReLU feeding the head conv: the walk starts below the head
    record = record_forward(graph, x, layer, set(), set())
    expected = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=D).view(1, 2, 1, 2)
    torch.testing.assert_close(seed.relevance(record, torch.tensor([0]), graph, "1"), expected, rtol=0, atol=1e-12)


def test_squeezenet_is_explained_and_balanced():
    """The stock SqueezeNet (logits from conv -> ReLU -> pool): finite, Σ R = 0, batch invariant."""
    torch.manual_seed(0)
    model = torchvision.models.squeezenet1_1().to(D).eval()
    x = torch.randn(3, 3, 64, 64, dtype=D, generator=torch.Generator().manual_seed(2))
    method = relprop.RAP(model)
    attr = method.attribute(x, target=[1, 7, 42])
    mass = attr.abs().sum(dim=(1, 2, 3))
    assert torch.isfinite(attr).all() and (mass > 0).all()
    assert (attr.sum(dim=(1, 2, 3)).abs() <= 1e-9 * mass).all()
    assert _rel(attr[1:2], method.attribute(x[1:2], target=7)) <= 1e-10


@pytest.mark.parametrize("head, culprit", [
    (nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()), "reads the image"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5), nn.Sigmoid()), "Sigmoid"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 1), nn.AdaptiveMaxPool2d(1), nn.Flatten()),
     "AdaptiveMaxPool2d"),
])
def test_logits_not_from_a_linear_layer_or_convolution_are_rejected(head, culprit):
    with pytest.raises(relprop.UnsupportedLayerError, match=culprit):
        relprop.RAP(head)


class AveragedHeads(nn.Module):
    """conv -> ReLU -> global mean -> two heads ``BatchNorm1d -> Linear`` on the same features, averaged
    (timm's RepViT classifier with its distillation head); ``shared=False``: the second head reads the
    features before the ReLU instead (they differ where the conv map is negative)."""

    def __init__(self, shared: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.shared = nn.Conv2d(3, 6, 3, padding=1), shared
        self.bn1, self.bn2 = nn.BatchNorm1d(6), nn.BatchNorm1d(6)
        self.head1, self.head2 = nn.Linear(6, 4), nn.Linear(6, 4)
        for bn in (self.bn1, self.bn2):
            bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2.0), bn.weight.data.normal_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(x)
        a = torch.relu(z).mean(dim=(2, 3))
        b = a if self.shared else z.mean(dim=(2, 3))
        return (self.head1(self.bn1(a)) + self.head2(self.bn2(b))) / 2


def _one_head(model: AveragedHeads) -> nn.Module:
    """The same network with one Linear head: W = (W₁ diag(s₁) + W₂ diag(s₂)) / 2, with BatchNorm scale s and
    shift t, and bias (W₁ t₁ + b₁ + W₂ t₂ + b₂) / 2 — the averaged heads written out."""
    def folded(bn: nn.BatchNorm1d, head: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        t = bn.bias - s * bn.running_mean
        return head.weight * s, head.weight @ t + head.bias

    (w1, b1), (w2, b2) = folded(model.bn1, model.head1), folded(model.bn2, model.head2)
    head = nn.Linear(6, 4).to(D)
    with torch.no_grad():
        head.weight.copy_((w1 + w2) / 2), head.bias.copy_((b1 + b2) / 2)
    conv = nn.Conv2d(3, 6, 3, padding=1).to(D)
    conv.load_state_dict(model.conv.state_dict())
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()


def test_the_logit_split_of_averaged_heads_by_hand():
    """Heads W₁ = (3, −1, 2) and W₂ = (1, −3, 0) for the target, averaged, on features a = (1, 2, 3): the
    logit's contributions are c = a ⊙ (W₁ + W₂) / 2 = (2, −4, 3) -> balanced (2, 0, 3) / 5 − (0, 4, 0) / 4 =
    (0.4, −1, 0.6).  Before, RAP refused the division by 2 as the op producing the logits."""

    class Heads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Conv2d(3, 3, 1, bias=False)
            self.head1, self.head2 = nn.Linear(3, 1), nn.Linear(3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = torch.relu(self.features(x)).flatten(1)
            return (self.head1(a) + self.head2(a)) / 2

    model = Heads().to(D).eval()
    with torch.no_grad():
        model.features.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        model.head1.weight.copy_(torch.tensor([[3.0, -1.0, 2.0]])), model.head2.weight.copy_(torch.tensor([[1.0, -3.0, 0.0]]))
    x = torch.tensor([1.0, 2.0, 3.0], dtype=D).view(1, 3, 1, 1)
    graph = ModelGraph(model)
    seed = LogitSplitSeed()
    layer = seed.layer(graph)
    record = record_forward(graph, x, layer, set(), set())
    expected = torch.tensor([0.4, -1.0, 0.6], dtype=D).view(1, 3)
    torch.testing.assert_close(seed.relevance(record, torch.tensor([0]), graph, layer), expected, rtol=0, atol=1e-12)


def test_averaged_heads_give_the_map_of_the_one_head_they_add_up_to():
    """RepViT's head, ``(head₁(bn₁(a)) + head₂(bn₂(a))) / 2``, is one Linear layer of ``a``: RAP's map equals
    the map of the network with that layer (float64), for every target, in a batch."""
    model = AveragedHeads().to(D).eval()
    x = torch.randn(3, 3, 8, 8, dtype=D, generator=torch.Generator().manual_seed(1))
    targets = [0, 2, 3]
    torch.testing.assert_close(relprop.RAP(model).attribute(x, target=targets),
                               relprop.RAP(_one_head(model)).attribute(x, target=targets), rtol=0, atol=1e-12)


def test_heads_on_different_features_are_refused():
    with pytest.raises(relprop.UnsupportedLayerError, match=r"'head1', 'head2'|'head2', 'head1'") as info:
        relprop.RAP(AveragedHeads(shared=False).to(D).eval())
    assert "read different features" in str(info.value) and "\n" not in str(info.value)
