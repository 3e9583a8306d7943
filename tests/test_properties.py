"""Property tests with hypothesis over random small CNNs and random inputs.

Networks (tests/reliability.py ``BlockCNN``): 1–5 blocks drawn from conv (width, kernel 1/2/3/5,
stride, padding, BatchNorm with random running statistics, ReLU in place or not), 2×2 max / average
pooling, residual blocks (in-place or out-of-place add) and concatenations, then global average
pooling and a Linear classifier; 1 or 3 input channels, 5–14 pixels, batches of 2–4.

Reproducible in CI: every test is derandomised (a fixed seed per test), the example database is
off, and each example's weights and input come from a drawn integer seed.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import relprop
from reliability import Block, build, construct, single_thread  # noqa: F401

_CI = settings(
    derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def ci(examples: int) -> settings:
    """Derandomised settings with ``examples`` examples per test (sized for < 60 s in all)."""
    return settings(_CI, max_examples=examples)

_relu = {"batchnorm": st.booleans(), "inplace": st.booleans()}


@st.composite
def conv_blocks(draw: st.DrawFn) -> Block:
    kernel = draw(st.sampled_from([1, 2, 3, 5]))
    return Block(
        "conv", width=draw(st.integers(1, 6)), kernel=kernel, stride=draw(st.sampled_from([1, 2])),
        padding=draw(st.integers(0, kernel // 2)), **{k: draw(v) for k, v in _relu.items()},
    )


residual_blocks = st.builds(Block, st.just("residual"), kernel=st.sampled_from([1, 3]), **_relu)
concat_blocks = st.builds(Block, st.just("concat"), width=st.integers(1, 4), **_relu)
pool_blocks = st.builds(Block, st.just("pool"), pool=st.sampled_from(["max", "avg"]))
learned_blocks = st.one_of(conv_blocks(), residual_blocks, concat_blocks)


@st.composite
def cases(draw: st.DrawFn, bias: bool = True) -> tuple[torch.nn.Module, torch.Tensor]:
    """(random CNN in eval mode, random input batch (N, C, H, W) with 2 ≤ N ≤ 4)."""
    blocks = [draw(learned_blocks)] + draw(st.lists(st.one_of(learned_blocks, pool_blocks), max_size=4))
    channels = draw(st.sampled_from([1, 3]))
    size = draw(st.integers(5, 14))
    seed = draw(st.integers(0, 2**16))
    model = build(blocks, seed, in_channels=channels, size=size, bias=bias)
    x = torch.randn(draw(st.integers(2, 4)), channels, size, size, generator=torch.Generator().manual_seed(seed + 2))
    return model, x


CORE = {
    "rsp": lambda m: relprop.RSP(m),
    "ae": lambda m: relprop.AE(m),
}


def close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> bool:
    """``max|actual − expected| ≤ rel · max|expected|`` (exact equality when ``expected`` is all zero)."""
    return bool((actual - expected).abs().max() <= rel * expected.abs().max())


def top1(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def check_contract(method, model: torch.nn.Module, x: torch.Tensor, rel: float = 1e-5) -> None:  # type: ignore[no-untyped-def]
    """Finite, x's shape and dtype; batch- and permutation-invariant (≤ ``rel`` of max|·|); deterministic."""
    targets = top1(model, x)
    out = method.attribute(x, target=targets)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()
    for i in range(len(x)):
        alone = method.attribute(x[i : i + 1], target=targets[i : i + 1])
        assert close(out[i : i + 1], alone, rel), f"sample {i} depends on the rest of the batch"
    perm = torch.arange(len(x) - 1, -1, -1)
    assert close(method.attribute(x[perm], target=targets[perm]), out[perm], rel), "permuting the batch"
    assert torch.equal(method.attribute(x, target=targets), out), "two calls differ"


@pytest.mark.parametrize("name", sorted(CORE))
@ci(150)
@given(case=cases())
def test_rsp_and_ae_contract_on_random_cnns(name, case):
    model, x = case
    check_contract(CORE[name](model), model, x)


# float32 batch-invariance tolerance for methods whose rule divides by an ε-stabilised sum
FLOAT32_ILL_CONDITIONED = {"lrp_epsilon": 1e-3}


@pytest.mark.parametrize("name", relprop.list_methods())
@ci(10)
@given(case=cases())
def test_every_method_contract_on_random_cnns(name, case):
    """Every registered method with its default arguments (the guarantees of design.md §1)."""
    model, x = case
    if name in FLOAT32_ILL_CONDITIONED:
        # In float32, batched and single-image convolutions round differently and a tiny ε
        # divides those differences by near-zero denominators; in float64 no sample may see
        # another at all.
        check_contract(construct(name, model), model, x, rel=FLOAT32_ILL_CONDITIONED[name])
        model64 = copy.deepcopy(model).double()
        check_contract(construct(name, model64), model64, x.double(), rel=1e-12)
    else:
        check_contract(construct(name, model), model, x)


@pytest.mark.parametrize("name", sorted(CORE))
@ci(100)
@given(case=cases(bias=False), scale=st.floats(1 / 16, 16))
def test_positive_input_scaling_leaves_rsp_and_ae_unchanged(name, case, scale):
    """Derived from algorithms.md §3–5 for a positively homogeneous network (no conv / Linear
    biases, BatchNorm with zero running mean and zero shift; ReLU, max / average pooling, residual
    adds and concatenations are all degree-1 homogeneous):

    * every activation scales with c: ``A(c·x) = c·A(x)``; the logits too, so the top-1 class and
      the ReLU / max-pool patterns do not change;
    * ``∂y_t/∂A`` is degree 0 (the derivative of a degree-1 function), so the unnormalised seed
      ``S = A ⊙ mean_hw(∂y_t/∂A)`` scales with c (not c²);
    * the default seeds divide by ``max|S|`` (RSP) or ``Σ|S|`` (AE) per sample: degree 0;
    * every hidden rule is degree 1 in the relevance and degree 0 in the activations (RSP: the
      virtual kernel ``wgrad(a⁺, R±)`` scales with c, ``conv(a⁺, G)`` with c², the share ``a⁺·convᵀ(R/conv(a⁺,G), G)``
      with c⁰; AE: the shares ``a⁺·|w| / conv(a⁺, |w|)`` are degree 0, ``P̂``, ``N̂`` unit mass);
      supports (``a > 0``), pooling shares, the ``|a|/(|a|+|b|)`` add split are degree 0;
    * z^B at the image: the bounds are each sample's min / max, so ``x``, ``l``, ``h`` and ``Z``
      scale with c and ``x ⊙ convᵀ(R/Z, W)`` does not.

    Hence ``attribute(c·x) = attribute(x)`` for RSP and AE (default modes) — exactly in real
    arithmetic; up to float rounding here. With biases or BatchNorm shifts the network is not
    homogeneous and no such property holds.
    """
    model, x = case
    method = CORE[name](model)
    targets = top1(model, x)
    expected = method.attribute(x, target=targets)
    assert close(method.attribute(scale * x, target=targets), expected)


@pytest.mark.parametrize("name", sorted(CORE))
def test_scaling_changes_the_map_of_a_network_with_biases(name):
    """The invariance above is a property of homogeneous networks, not of maps that ignore the
    input: with biases and BatchNorm shifts, scaling the input by 4 changes the map."""
    blocks = [Block("conv", width=6, batchnorm=True), Block("residual", batchnorm=True), Block("pool"),
              Block("conv", width=5, stride=2, batchnorm=True)]
    model = build(blocks, seed=0, bias=True)
    x = torch.randn(2, 3, 14, 14, generator=torch.Generator().manual_seed(0))
    method = CORE[name](model)
    targets = top1(model, x)
    assert not close(method.attribute(4 * x, target=targets), method.attribute(x, target=targets), rel=1e-2)


@pytest.mark.parametrize("name", sorted(CORE))
@ci(50)
@given(case=cases(bias=False), power=st.integers(-6, 6))
def test_power_of_two_input_scaling_is_exact(name, case, power):
    """Scaling by ``2^k`` commutes with float rounding, so on a homogeneous network (see above) the
    attribution of ``2^k·x`` is bit-identical to that of ``x``."""
    model, x = case
    method = CORE[name](model)
    targets = top1(model, x)
    assert torch.equal(method.attribute(2.0**power * x, target=targets), method.attribute(x, target=targets))
