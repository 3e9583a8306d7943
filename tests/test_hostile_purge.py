"""RSP's opt-in hostile-factor seed and purging: closed forms on tiny tensors and a 2-class toy model,
degenerate cases, bad input, and the numerics contract on stock models (docs/methods.md, "RSP: hostile
seed and purging")."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn
import torchvision

import relprop
from conftest import SHARED, efficientnet_lite0
from model_state import assert_unchanged, snapshot
from relprop.engine import CONV, INPUT_CONV, STANDARD_TABLE, Engine, HostileSeed
from relprop.engine.standard import PassThrough
from relprop.rules.hostile import hostile_seed
from relprop.rules.rsp import purge

BOUND = 1e-4


def test_purge_keeps_the_part_agreeing_with_the_channel_sum() -> None:
    # positions (columns): channel sums 1.5 (> 0), -1 (< 0), 0 (keeps the negative part); sample 2 = -sample 1
    r = torch.tensor([[2.0, 1.0, 1.0], [-1.0, -3.0, -1.0], [0.5, 1.0, 0.0]]).view(1, 3, 1, 3)
    expected = torch.tensor([[2.0, 0.0, 0.0], [0.0, -3.0, -1.0], [0.5, 0.0, 0.0]]).view(1, 3, 1, 3)
    flipped = torch.tensor([[-2.0, 0.0, -1.0], [0.0, 3.0, 0.0], [-0.5, 0.0, 0.0]]).view(1, 3, 1, 3)
    out = purge(torch.cat([r, -r]))
    assert torch.equal(out[:1], expected)
    assert torch.equal(out[1:], flipped)


def test_purge_leaves_sign_consistent_relevance_and_zeros_alone() -> None:
    r = torch.tensor([[1.0, -2.0], [3.0, -0.5]]).view(1, 2, 1, 2)  # each position has one sign over channels
    assert torch.equal(purge(r), r)
    assert torch.equal(purge(torch.zeros(2, 3, 2, 2)), torch.zeros(2, 3, 2, 2))


def test_hostile_seed_closed_form_one_competitor() -> None:
    # the 2-class toy model below, target 1 against class 0 (maps before normalisation)
    target = torch.tensor([[-2.0, -1.0], [1.0, 3.0]]).view(1, 2, 1, 2)  # max |.| = 3
    competitor = torch.tensor([[2.0, 1.0], [-0.5, -1.5]]).view(1, 1, 2, 1, 2)  # max |.| = 2
    # D = M_t - M_c = [[-5/3, -5/6], [7/12, 7/4]]; D' = [[-2/3, -1/3], [1/4, 3/4]]; channel sum [-5/12, 5/12]
    # -> spatial [-1, 2] (positive mass 2, negative mass 1), spread over 2 channels
    expected = torch.tensor([[-0.5, 1.0], [-0.5, 1.0]]).view(1, 2, 1, 2)
    out = hostile_seed(target.double(), competitor.double(), torch.ones(1, 1, dtype=torch.float64))
    torch.testing.assert_close(out, expected.double(), rtol=0, atol=1e-15)


def test_hostile_seed_contrasts_against_the_mean_of_the_competitors() -> None:
    target = torch.tensor([4.0, 1.0, -2.0]).view(1, 1, 1, 3)  # M = [1, 1/4, -1/2]
    competitors = torch.tensor([[0.0, 2.0, 0.0], [-3.0, 0.0, 3.0]]).view(1, 2, 1, 1, 3)  # M: [0, 1, 0], [-1, 0, 1]
    # D = M - mean = [3/2, -1/4, -1]; D' = [1, -1/5, -4/5]; one channel: seed = [2, -1/5, -4/5]
    out = hostile_seed(target.double(), competitors.double(), torch.ones(1, 2, dtype=torch.float64))
    expected = torch.tensor([2.0, -0.2, -0.8], dtype=torch.float64).view(1, 1, 1, 3)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-15)


def test_hostile_seed_padding_and_no_competitors() -> None:
    target = torch.tensor([4.0, 1.0, -2.0]).view(1, 1, 1, 3)
    # no competitors: D = M_t = [1, 1/4, -1/2] -> D' = [4/5, 1/5, -1] -> seed [8/5, 2/5, -1]
    alone = torch.tensor([1.6, 0.4, -1.0], dtype=torch.float64).view(1, 1, 1, 3)
    f64 = torch.float64
    empty = hostile_seed(target.double(), torch.zeros(1, 0, 1, 1, 3, dtype=f64), torch.zeros(1, 0, dtype=f64))
    torch.testing.assert_close(empty, alone, rtol=0, atol=1e-15)
    padded = hostile_seed(target.double(), torch.full((1, 2, 1, 1, 3), 7.0, dtype=f64), torch.zeros(1, 2, dtype=f64))
    torch.testing.assert_close(padded, alone, rtol=0, atol=1e-15)


def test_hostile_seed_degenerate_maps_give_no_nan() -> None:
    zeros = torch.zeros(2, 3, 2, 2)
    assert torch.equal(hostile_seed(zeros, zeros[:, None], torch.ones(2, 1)), zeros)
    # a target map with no positive part and a zero competitor: only negative mass 1
    negative = torch.tensor([-1.0, -3.0]).view(1, 1, 1, 2)
    out = hostile_seed(negative, torch.zeros(1, 1, 1, 1, 2), torch.ones(1, 1))
    torch.testing.assert_close(out, torch.tensor([-0.25, -0.75]).view(1, 1, 1, 2), rtol=0, atol=1e-7)
    # target equal to its competitor: no contrast at all
    same = torch.tensor([2.0, -1.0]).view(1, 1, 1, 2)
    assert torch.equal(hostile_seed(same, same[:, None], torch.ones(1, 1)), torch.zeros(1, 1, 1, 2))


class Toy(nn.Sequential):
    """Identity 1×1 convolutions on 2 channels, global average pooling and logits ``W · mean(A)``:
    the seed layer (the last ReLU) holds the positive input itself, and ``S_k = A ⊙ W_k / 2`` on 1×2 maps."""

    def __init__(self) -> None:
        super().__init__(nn.Conv2d(2, 2, 1, bias=False), nn.ReLU(), nn.Conv2d(2, 2, 1, bias=False), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2, bias=False))
        self.eval()
        with torch.no_grad():
            self[0].weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            self[2].weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            self[6].weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 2.0]]))


TOY_X = torch.tensor([[4.0, 2.0], [1.0, 3.0]], dtype=torch.float64).view(1, 2, 1, 2)
"""Channel means 3 and 2; S_0 = A ⊙ (1, -1) / 2 = [[2, 1], [-1/2, -3/2]], S_1 = A ⊙ (-1, 2) / 2 = [[-2, -1], [1, 3]]."""


@pytest.mark.parametrize("hostile", [1, [[0]]])
def test_hostile_seed_on_the_toy_model(hostile) -> None:
    """Through the engine with identity rules, the map is the seed: the hand-computed one above."""
    table = STANDARD_TABLE.override({CONV: PassThrough(), INPUT_CONV: PassThrough()})
    engine = Engine(Toy().double(), HostileSeed(hostile), table, "hostile seed")
    expected = torch.tensor([[-0.5, 1.0], [-0.5, 1.0]], dtype=torch.float64).view(1, 2, 1, 2)
    torch.testing.assert_close(engine.attribute(TOY_X, target=1), expected, rtol=0, atol=1e-15)


def test_rsp_hostile_and_purge_conservation_on_the_toy_model() -> None:
    """The RSP walk conserves the sum of what reaches it: 1 for the hostile seed; with purging, the sum of
    the purged seed.  Plain seed, target 0: S_0 / 2 = [[1, 1/2], [-1/4, -3/4]] (sum 1/2); purged
    [[1, 0], [0, -3/4]] (sum 1/4)."""
    model = Toy().double()
    bounds = (0.0, 10.0)  # z^B through the identity input convolution returns its relevance unchanged
    plain = relprop.RSP(model, input_bounds=bounds).attribute(TOY_X, target=0)
    purged = relprop.RSP(model, input_bounds=bounds, purge=True).attribute(TOY_X, target=0)
    hostile = relprop.RSP(model, input_bounds=bounds, hostile=1).attribute(TOY_X, target=1)
    assert plain.sum().item() == pytest.approx(0.5, abs=1e-12)
    assert purged.sum().item() == pytest.approx(0.25, abs=1e-12)
    assert hostile.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_hostile_zero_and_explicit_empty_lists_are_finite() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))  # 2×2 seed maps
    none = relprop.RSP(model, hostile=0).attribute(x, target=[1, 2])
    empty = relprop.RSP(model, hostile=[[], []]).attribute(x, target=[1, 2])
    ragged = relprop.RSP(model, hostile=[[], [0, 4]], purge=True).attribute(x, target=[1, 2])
    assert torch.isfinite(none).all() and torch.isfinite(ragged).all()
    torch.testing.assert_close(empty, none, rtol=0, atol=0)
    torch.testing.assert_close(none.sum(dim=(1, 2, 3)), torch.ones(2), rtol=0, atol=1e-4)  # Σ R₀ = 2 - 1


def test_hostile_seed_refuses_a_single_position_map() -> None:
    """On a 1×1 map the positive and negative parts of the contrast both put all their mass on the one
    position, so the spatial contrast is 0 by construction (its float value would be rounding noise)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    with pytest.raises(relprop.InputError, match="1×1 map"):
        relprop.RSP(model, hostile=1).attribute(torch.randn(1, 3, 32, 32), target=0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"hostile": True}, "got a bool"),
    ({"hostile": -1}, "must be ≥ 0"),
    ({"hostile": "top"}, "got str"),
    ({"hostile": [1, 2]}, r"hostile\[0\] must be a list"),
    ({"hostile": [[1.5]]}, r"hostile\[0\] must hold integer"),
    ({"hostile": [[1, 1]]}, "lists a class twice"),
    ({"hostile": [[-2]]}, "class indices are ≥ 0"),
    ({"hostile": []}, "empty list"),
    ({"purge": "yes"}, "purge must be True or False"),
    ({"hostile": 1, "mode": "reference"}, "mode='default'"),
    ({"purge": True, "mode": "reference"}, "mode='default'"),
])
def test_bad_options_are_refused_at_construction(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        relprop.RSP(Toy(), **kwargs)


@pytest.mark.parametrize(("hostile", "target", "message"), [
    (2, 0, "the model has 2 classes"),
    ([[1], [1]], 0, "2 lists of competing classes but the batch has 1"),
    ([[5]], 0, "out of range"),
    ([[0]], 0, "the sample's target"),
])
def test_bad_competitors_are_refused_by_attribute(hostile, target, message) -> None:
    with pytest.raises(relprop.InputError, match=message):
        relprop.RSP(Toy(), hostile=hostile).attribute(TOY_X.float(), target=target)


@functools.lru_cache(maxsize=1)
def stock_model(name: str) -> nn.Module:
    if name == "efficientnet_lite0":
        return efficientnet_lite0(SHARED)
    torch.manual_seed(0)
    return getattr(torchvision.models, name)().eval()


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """Worst sample's max|Δ| / max|reference|."""
    delta = (value.double() - reference.double()).abs().amax(dim=(1, 2, 3))
    return (delta / reference.double().abs().amax(dim=(1, 2, 3))).max().item()


CASES = [("vgg11", 64, {"hostile": 3}), ("resnet18", 64, {"hostile": 3, "purge": True}),
         ("densenet121", 64, {"hostile": 1}), ("mobilenet_v2", 64, {"hostile": 1, "purge": True}),
         ("efficientnet_lite0", 96, {"hostile": 3}), ("efficientnet_lite0", 64, {"purge": True})]
"""EfficientNet-Lite0 with the hostile seed at 96×96 (3×3 seed maps): at 64×64 its 2×2 maps make the
spatial contrast ~1 % of its parts, and sample-alone vs batch reaches 1.7e-4 of max|R| with hostile=3
(docs/methods.md, "RSP: hostile seed and purging")."""


@pytest.mark.parametrize(("name", "size", "kwargs"), CASES, ids=[f"{n}-{s}-{'-'.join(k)}" for n, s, k in CASES])
def test_stock_models_finite_batch_invariant_and_float32_close(name, size, kwargs) -> None:
    model = stock_model(name)
    before = snapshot(model)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    targets = [1, 7, 42]
    batch32 = relprop.RSP(model, **kwargs).attribute(x, target=targets)
    alone32 = relprop.RSP(model, **kwargs).attribute(x[1:2], target=targets[1:2])
    try:
        batch64 = relprop.RSP(model.double(), **kwargs).attribute(x.double(), target=targets)
    finally:
        model.float()
    assert_unchanged(before, model)
    assert torch.isfinite(batch32).all() and (batch32.abs().amax(dim=(1, 2, 3)) > 0).all()
    assert relative_error(batch32, batch64) <= BOUND
    assert relative_error(alone32, batch32[1:2]) <= BOUND
