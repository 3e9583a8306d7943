"""Unit tests of the relevance rules against values computed by hand (algorithms.md §1, §4, §5, §8, Q28).

Every expected value below is written literally or by a short explicit formula in the test; no
expected value is produced by relprop code.  All tensors are float64, dim 0 is the sample.
Notation as in algorithms.md: ``a⁺ = max(a, 0)``, ``P = max(R, 0)``, ``N = max(−R, 0)``, windows
of a 2×2 kernel (stride 1, no padding) on a 3×3 image are named by their top-left output position.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input, conv2d_weight

from relprop.rules.ae import ae_conv
from relprop.rules.common import safe_divide, shift_
from relprop.rules.conv_ops import ConvGeometry
from relprop.rules.rsp import rsp_conv
from relprop.rules.structural import (
    PoolWindows,
    add_rule,
    cat_rule,
    maxpool_rule,
    nonzero_mask_rule,
    proportional_pool_rule,
)
from relprop.rules.zbox import zbox_conv

D = torch.float64


# --------------------------------------------------------------------------------------------- helpers


def geom(stride: int = 1, padding: int = 0, dilation: int = 1, groups: int = 1) -> ConvGeometry:
    return ConvGeometry((stride, stride), (padding, padding), (dilation, dilation), groups)


def img(*rows) -> torch.Tensor:
    """One sample, one channel: rows of numbers -> (1, 1, H, W)."""
    return torch.tensor(rows, dtype=D).reshape(1, 1, len(rows), len(rows[0]))


def chans(*values) -> torch.Tensor:
    """One sample, len(values) channels at a 1×1 spatial size -> (1, C, 1, 1)."""
    return torch.tensor(values, dtype=D).reshape(1, len(values), 1, 1)


def kernel(*channels) -> torch.Tensor:
    """Conv weight (O, 1, kh, kw) from O nested row lists."""
    return torch.tensor(channels, dtype=D).unsqueeze(1)


def close(actual: torch.Tensor, expected, atol: float = 1e-12) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype).expand_as(actual)
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


def sums(t: torch.Tensor) -> list[float]:
    """Per-sample sums."""
    return t.flatten(1).sum(1).tolist()


def finite(t: torch.Tensor) -> None:
    assert torch.isfinite(t).all(), t


G1 = geom()  # stride 1, no padding, no dilation, 1 group


# ------------------------------------------------------------------------------ common.py primitives


def test_safe_divide_zero_denominator_gives_zero_and_broadcasts():
    num = torch.tensor([[1.0, 2.0, 0.0], [3.0, -6.0, 9.0]], dtype=D)
    den = torch.tensor([[2.0], [0.0]], dtype=D)  # row 1: 0 denominator (including 0/0 would be NaN)
    close(safe_divide(num, den), [[0.5, 1.0, 0.0], [0.0, 0.0, 0.0]])
    close(safe_divide(torch.tensor([3.0, 0.0], dtype=D), torch.tensor([-4.0, 0.0], dtype=D)), [-0.75, 0.0])


def test_shift_spreads_total_over_support_only():
    c = torch.tensor([[1.0, 0.0, 3.0, -2.0], [1.0, 0.0, 3.0, -2.0], [0.0, 0.0, 0.0, 0.0]], dtype=D)
    total = torch.tensor([[3.0], [3.0], [5.0]], dtype=D)
    support = torch.tensor([[1, 0, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    out = shift_(c.clone(), total, support)
    # sample 0: 3 supported units, −1 each; sample 1: 2 units, −1.5 each (the 0 at index 1 too);
    # sample 2: empty support -> unchanged (and no NaN from 5/0)
    close(out, [[0.0, 0.0, 2.0, -3.0], [-0.5, -1.5, 3.0, -2.0], [0.0, 0.0, 0.0, 0.0]])
    assert sums(out)[:2] == pytest.approx([2.0 - 3.0, 2.0 - 3.0])  # Σ shift(C, t) = Σ C − t


# -------------------------------------------------------------------------------------------- RSP
# For one output unit p with P > 0 (and no other positive output) the virtual kernel is
# G⁺ = P·(a⁺ window at p), so Z(a⁺, G⁺, P) gives input q the share P·a_q² / Σ_window a².

RSP_A = img([1, 1, -5],
            [1, 1, 1],
            [3, 0, 0])
RSP_R = img([4, 0],
            [0, -2])
# C⁺ (window (0,0), Σa² = 4): 4·1/4 = 1 at (0,0), (0,1), (1,0), (1,1)
# C⁻ (window (1,1), Σa² = 1+1+0+0 = 2): 2·1/2 = 1 at (1,1), (1,2)
# C = C⁺ − C⁻ (exactly 0 at (1,1)), Σ C = 2 = Σ R
RSP_C = [[1, 1, 0],
         [1, 0, -1],
         [0, 0, 0]]


def test_rsp_conv_non_sectional_is_plain_difference():
    out = rsp_conv(RSP_A, RSP_R, G1, (1, 1, 2, 2), sectional=False)
    close(out, RSP_C)
    assert sums(out) == pytest.approx(sums(RSP_R))


def test_rsp_conv_sectional_nonzero_support():
    # 2C = [2, 2, 2, −2] on the non-zero units (0,0), (0,1), (1,0), (1,2); minus Σ R / 4 = 0.5 each
    out = rsp_conv(RSP_A, RSP_R, G1, (1, 1, 2, 2), sectional=True, structural_support=False)
    close(out, [[1.5, 1.5, 0], [1.5, 0, -2.5], [0, 0, 0]])
    assert sums(out) == pytest.approx([2.0])


def test_rsp_conv_sectional_structural_support():
    # support = a > 0 inside the windows of R ≠ 0 = (0,0),(0,1),(1,0),(1,1),(1,2)  [(2,1),(2,2) have a = 0;
    # (2,0) is outside every window, (0,2) is negative]; the cancelled unit (1,1) is included: −2/5 each
    out = rsp_conv(RSP_A, RSP_R, G1, (1, 1, 2, 2), sectional=True, structural_support=True)
    close(out, [[1.6, 1.6, 0], [1.6, -0.4, -2.4], [0, 0, 0]])
    assert sums(out) == pytest.approx([2.0])


# Two positive outputs: the virtual kernel sums over both positions (no negative relevance at all).
RSP_A2 = img([1, 2, 3],
             [-1, 0, 0],
             [0, 0, 0])
RSP_R2 = img([1, 2],
             [0, 0])
# G[u,v] = 1·a⁺[(0,0)+(u,v)] + 2·a⁺[(0,1)+(u,v)] = [[1+4, 2+6], [0, 0]] = [[5, 8], [0, 0]]
# Z(0,0) = 1·5 + 2·8 = 21, Z(0,1) = 2·5 + 3·8 = 34  ->  S = [1/21, 2/34 = 1/17]
# C(0,0) = 1·5/21,  C(0,1) = 2·(8/21 + 5/17),  C(0,2) = 3·8/17;   Σ C = 21/21 + 34/17 = 3 = Σ R
RSP_C2 = torch.zeros(1, 1, 3, 3, dtype=D)
RSP_C2[0, 0, 0] = torch.tensor([5 / 21, 2 * (8 / 21 + 5 / 17), 24 / 17], dtype=D)


def test_rsp_conv_virtual_kernel_sums_positions_non_sectional():
    out = rsp_conv(RSP_A2, RSP_R2, G1, (1, 1, 2, 2), sectional=False)
    close(out, RSP_C2)
    assert sums(out) == pytest.approx([3.0])


@pytest.mark.parametrize("structural", [True, False])
def test_rsp_conv_sectional_relevance_without_negative_part(structural):
    # both supports = the three top-row units; 2C − Σ R / 3 = 2C − 1 there
    out = rsp_conv(RSP_A2, RSP_R2, G1, (1, 1, 2, 2), sectional=True, structural_support=structural)
    expected = 2 * RSP_C2 - torch.tensor([[1.0, 1, 1], [0, 0, 0], [0, 0, 0]], dtype=D)
    close(out, expected)
    finite(out)
    assert sums(out) == pytest.approx([3.0])


@pytest.mark.parametrize("sectional", [True, False])
def test_rsp_conv_three_unit_linear(sectional):
    # 1×1 conv, 3 inputs, 2 outputs: G±[o, i] = R±[o]·a⁺[i], so C = Σ R · a⁺² / Σ a⁺²
    a = chans(1, 2, -1)          # a⁺ = [1, 2, 0], Σ a⁺² = 5
    r = chans(3, -1)             # Σ R = 2
    c = [2 * 1 / 5, 2 * 4 / 5, 0]  # = [0.4, 1.6, 0]
    out = rsp_conv(a, r, G1, (2, 3, 1, 1), sectional=sectional)
    # sectional: 2C − Σ R / 2 on the two units with a > 0 -> [0.8 − 1, 3.2 − 1, 0]
    expected = [-0.2, 2.2, 0.0] if sectional else c
    close(out, torch.tensor(expected, dtype=D).reshape(1, 3, 1, 1))
    assert sums(out) == pytest.approx([2.0])


@pytest.mark.parametrize("sectional", [True, False])
def test_rsp_conv_batch_does_not_mix_samples(sectional):
    a = torch.cat((RSP_A, RSP_A2))
    r = torch.cat((RSP_R, RSP_R2))
    both = rsp_conv(a, r, G1, (1, 1, 2, 2), sectional=sectional)
    for n in range(2):
        alone = rsp_conv(a[n : n + 1], r[n : n + 1], G1, (1, 1, 2, 2), sectional=sectional)
        close(both[n : n + 1], alone)
    # and against the hand values (a shared, batch-summed virtual kernel would change both samples)
    if sectional:
        close(both[:1], [[1.6, 1.6, 0], [1.6, -0.4, -2.4], [0, 0, 0]])
    else:
        close(both[:1], RSP_C)
        close(both[1:], RSP_C2)
    assert sums(both) == pytest.approx([2.0, 3.0])


@pytest.mark.parametrize("sectional", [True, False])
def test_rsp_conv_degenerate_inputs_give_zeros(sectional):
    # all-zero relevance
    out = rsp_conv(RSP_A, torch.zeros_like(RSP_R), G1, (1, 1, 2, 2), sectional=sectional)
    close(out, 0.0)
    # all-zero input activation: no virtual kernel, every field empty -> each output's R split evenly over
    # its 4 inputs: F = [[1, 1, 0], [1, 1 − 0.5, −0.5], [0, −0.5, −0.5]]; sectional: 2F − Σ R = 2 taken evenly
    # from the 7 inputs in reach (all but (0, 2) and (2, 0)), since no input is active; no NaN
    out = rsp_conv(torch.zeros_like(RSP_A), RSP_R, G1, (1, 1, 2, 2), sectional=sectional)
    spread = img([1, 1, 0], [1, 0.5, -0.5], [0, -0.5, -0.5])
    reach = img([1, 1, 0], [1, 1, 1], [0, 1, 1])
    close(out, 2 * spread - 2 / 7 * reach if sectional else spread)
    # reference behaviour (empty_fields=False): nothing to share by, empty support -> zeros
    close(rsp_conv(torch.zeros_like(RSP_A), RSP_R, G1, (1, 1, 2, 2), sectional=sectional, empty_fields=False), 0.0)


@pytest.mark.parametrize("sectional", [True, False])
def test_rsp_conv_in_float32_at_tiny_scales_is_the_scaled_result(sectional):
    """The rule is invariant to the activations' scale and linear in the relevance.  At a 2⁻⁷⁰ scale
    of ``a`` the virtual kernels' outputs ``~ a²·R`` underflow float32 (they were infinite quotients
    before); by powers of two the result is exactly the unscaled one (hand values in the test above)."""
    a, r = RSP_A.float(), RSP_R.float()
    plain = rsp_conv(a, r, G1, (1, 1, 2, 2), sectional=sectional)
    assert torch.equal(rsp_conv(a * 2.0**-70, r, G1, (1, 1, 2, 2), sectional=sectional), plain)
    assert torch.equal(rsp_conv(a * 2.0**-70, r * 2.0**-60, G1, (1, 1, 2, 2), sectional=sectional), plain * 2.0**-60)


# --------------------------------------------------------------------------------------------- AE
# 2×2 conv, W = [[1, −2], [−1, 1]]  ->  K = |W| = [[1, 2], [1, 1]].
AE_A = img([2, 1, 0],
           [1, -1, 3],
           [0, 2, 1])
AE_W = kernel([[1, -2], [-1, 1]])
AE_R = img([2, 0],
           [0, -1])  # P̂ = 1 at (0,0), N̂ = 1 at (1,1)
# a⁺·K in window (0,0): (0,0) 2·1, (0,1) 1·2, (1,0) 1·1, (1,1) 0·1 -> Σ 5
AE_ZP = torch.tensor([[2 / 5, 2 / 5, 0], [1 / 5, 0, 0], [0, 0, 0]], dtype=D)
# a⁺·K in window (1,1): (1,1) 0, (1,2) 3·2, (2,1) 2·1, (2,2) 1·1 -> Σ 9
AE_ZN = torch.tensor([[0, 0, 0], [0, 0, 6 / 9], [0, 2 / 9, 1 / 9]], dtype=D)
# A: active mask m = a > 0; conv(m, K) at (0,0) = 1·1 + 1·2 + 1·1 + 0·1 = 4 -> m_q·K/4
AE_PLUS = torch.tensor([[1 / 4, 2 / 4, 0], [1 / 4, 0, 0], [0, 0, 0]], dtype=D)
# B: inactive m̄ = {(0,2), (1,1), (2,0)}; conv(m̄, K) at (1,1) = 1 (only (1,1)) -> −1 at (1,1)
AE_MINUS = torch.tensor([[0, 0, 0], [0, -1, 0], [0, 0, 0]], dtype=D)
# the six units where C ≠ 0 (for r = 1 and 2); also = a > 0 inside the two windows
AE_SUPPORT = torch.tensor([[1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=D)


def ae_hand(r: float, sectional: bool) -> torch.Tensor:
    if not sectional:  # §5.2: no ratio, no shift
        return AE_ZP - AE_ZN + AE_PLUS + AE_MINUS
    # §5.1: C = r·Z(P̂) − Z(N̂), shifted by Σ P̂ = 1 over 6 units, + A + B
    return r * AE_ZP - AE_ZN - AE_SUPPORT / 6 + AE_PLUS + AE_MINUS


@pytest.mark.parametrize("structural", [True, False])
@pytest.mark.parametrize("ratio", [1.0, 2.0])
def test_ae_conv_sectional_sums_to_ratio_minus_two(ratio, structural):
    out = ae_conv(AE_A, AE_R, AE_W, G1, ratio, sectional=True, structural_support=structural, keep_mass=False)
    close(out, ae_hand(ratio, True))
    assert sums(out) == pytest.approx([ratio - 2])


@pytest.mark.parametrize("ratio", [1.0, 2.0])
def test_ae_conv_non_sectional_sums_to_zero_and_ignores_ratio(ratio):
    out = ae_conv(AE_A, AE_R, AE_W, G1, ratio, sectional=False, keep_mass=False)
    close(out, ae_hand(1.0, False))
    assert sums(out) == pytest.approx([0.0], abs=1e-12)


def test_ae_conv_is_scale_invariant_in_relevance():
    # only the sign pattern / relative magnitudes within each sign matter (P̂, N̂ renormalised)
    out = ae_conv(AE_A, 123.0 * AE_R, AE_W, G1, 2.0, sectional=True, keep_mass=False)
    close(out, ae_hand(2.0, True))


@pytest.mark.parametrize("sectional", [True, False])
@pytest.mark.parametrize("ratio", [1.0, 2.0])
def test_ae_conv_keep_mass_preserves_incoming_mass(ratio, sectional):
    # relprop's default variant of Q28: the unit-mass result is rescaled so that its mass
    # (Σ|R_in|)/2 equals the incoming mass (Σ_s P + Σ_s N)/2 = (2 + 1)/2 = 1.5 (the literal Q28
    # "multiply by the incoming mass" grows the scale geometrically with depth: ~2.5× per layer).
    raw = ae_hand(ratio, sectional)
    out = ae_conv(AE_A, AE_R, AE_W, G1, ratio, sectional=sectional, keep_mass=True)
    close(out, raw * 1.5 / (raw.abs().sum() / 2))
    assert out.abs().sum().item() / 2 == pytest.approx(1.5, abs=1e-12)
    raw_total = (ratio - 2) if sectional else 0.0
    assert sums(out) == pytest.approx([raw_total * 1.5 / (raw.abs().sum().item() / 2)], abs=1e-12)


@pytest.mark.parametrize("sectional", [True, False])
def test_ae_conv_three_unit_linear(sectional):
    # 1×1 conv, 3 inputs, 2 outputs.  a⁺ = [2, 1, 0], active = [1, 1, 0], inactive = [0, 0, 1]
    a = chans(2, 1, -1)
    w = torch.tensor([[1, -2, 3], [-1, 1, 2]], dtype=D).reshape(2, 3, 1, 1)  # K0 = [1,2,3], K1 = [1,1,2]
    r = chans(3, -1)  # P̂ = [1, 0], N̂ = [0, 1]
    zp = torch.tensor([2 / 4, 2 / 4, 0], dtype=D)      # a⁺·K0 = [2, 2, 0] / 4
    zn = torch.tensor([2 / 3, 1 / 3, 0], dtype=D)      # a⁺·K1 = [2, 1, 0] / 3
    plus = torch.tensor([1 / 3, 2 / 3, 0], dtype=D)    # m·K0 = [1, 2, 0] / 3
    minus = torch.tensor([0, 0, -1.0], dtype=D)        # m̄·K1 = [0, 0, 2] / 2
    for ratio in (1.0, 2.0):
        out = ae_conv(a, r, w, G1, ratio, sectional=sectional, keep_mass=False)
        if sectional:  # C ≠ 0 on units 0, 1 (both active): shift by 1/2 each
            expected = ratio * zp - zn - torch.tensor([0.5, 0.5, 0], dtype=D) + plus + minus
        else:
            expected = zp - zn + plus + minus  # = [1/6, 5/6, −1]
        close(out, expected.reshape(1, 3, 1, 1))
        assert sums(out) == pytest.approx([ratio - 2 if sectional else 0.0], abs=1e-12)


def test_ae_conv_structural_support_includes_active_unit_with_zero_weight():
    # unit 2 is active but all its weights are 0: C = 0 there.  The authors' support (C ≠ 0)
    # skips it, the structural one (a > 0, reached by an output with R ≠ 0) includes it.
    a = chans(2, 1, 1, -1)  # a⁺ = [2, 1, 1, 0]
    w = torch.tensor([[1, -2, 0, 3], [-1, 1, 0, 2]], dtype=D).reshape(2, 4, 1, 1)
    r = chans(3, -1)
    # C = 2·[2, 2, 0, 0]/4 − [2, 1, 0, 0]/3 = [1/3, 2/3, 0, 0];  A = [1, 2, 0, 0]/3;  B = [0, 0, 0, −1]
    c = torch.tensor([1 / 3, 2 / 3, 0, 0], dtype=D)
    ab = torch.tensor([1 / 3, 2 / 3, 0, -1], dtype=D)
    nonzero = ae_conv(a, r, w, G1, 2.0, structural_support=False, keep_mass=False)
    structural = ae_conv(a, r, w, G1, 2.0, structural_support=True, keep_mass=False)
    close(nonzero, (c - torch.tensor([1 / 2, 1 / 2, 0, 0], dtype=D) + ab).reshape(1, 4, 1, 1))
    close(structural, (c - torch.tensor([1 / 3, 1 / 3, 1 / 3, 0], dtype=D) + ab).reshape(1, 4, 1, 1))
    assert sums(nonzero) == pytest.approx([0.0], abs=1e-12)
    assert sums(structural) == pytest.approx([0.0], abs=1e-12)


@pytest.mark.parametrize("ratio", [1.0, 2.0])
def test_ae_conv_relevance_without_negative_part(ratio):
    # Q4: the empty N̂ counts as 0 (the authors' code gives NaN here).  C = r·Z(P̂) on the three
    # active units of window (0,0), shifted by 1/3 each, + A; no B.
    r = img([2, 0], [0, 0])
    out = ae_conv(AE_A, r, AE_W, G1, ratio, sectional=True, keep_mass=False)
    support = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=D)
    close(out, ratio * AE_ZP - support / 3 + AE_PLUS)
    assert sums(out) == pytest.approx([ratio])  # (r − 1) + 1: no negative mass to remove


@pytest.mark.parametrize("keep_mass", [True, False])
@pytest.mark.parametrize("sectional", [True, False])
def test_ae_conv_zero_relevance_gives_zeros(sectional, keep_mass):
    out = ae_conv(AE_A, torch.zeros_like(AE_R), AE_W, G1, 2.0, sectional=sectional, keep_mass=keep_mass)
    close(out, 0.0)


@pytest.mark.parametrize("structural", [True, False])
@pytest.mark.parametrize("sectional", [True, False])
def test_ae_conv_zero_activation_is_finite(sectional, structural):
    # a = 0: no active unit (C = 0, A dropped), every unit inactive: conv(m̄, K) = ΣK = 5 at (1,1),
    # so B = −K/5 on window (1,1); the support is empty, nothing is shifted.
    a = torch.zeros_like(AE_A)
    out = ae_conv(a, AE_R, AE_W, G1, 2.0, sectional=sectional, structural_support=structural, keep_mass=False)
    close(out, [[0, 0, 0], [0, -1 / 5, -2 / 5], [0, -1 / 5, -1 / 5]])
    finite(ae_conv(a, AE_R, AE_W, G1, 2.0, sectional=sectional, structural_support=structural, keep_mass=True))


@pytest.mark.parametrize("keep_mass", [True, False])
def test_ae_conv_batch_is_per_sample(keep_mass):
    # sample 1: the same layer with a different relevance sign pattern and scale (Q1: per-sample P̂, N̂)
    a = torch.cat((AE_A, AE_A))
    r = torch.cat((AE_R, 7.0 * img([0, -1], [3, 0])))
    both = ae_conv(a, r, AE_W, G1, 2.0, keep_mass=keep_mass)
    for n in range(2):
        close(both[n : n + 1], ae_conv(a[n : n + 1], r[n : n + 1], AE_W, G1, 2.0, keep_mass=keep_mass))
    if not keep_mass:
        close(both[:1], ae_hand(2.0, True))
        assert sums(both) == pytest.approx([0.0, 0.0], abs=1e-12)


# -------------------------------------------------------------------------------------------- z^B


def test_zbox_conv_hand_values_and_conservation():
    x = img([0, 1, 2],
            [-1, 0, 1],
            [2, -1, 0])
    w = kernel([[1, -1], [2, 0]])  # W⁺ = [[1, 0], [2, 0]], W⁻ = [[0, −1], [0, 0]]
    low, high = torch.full((1, 1, 1, 1), -1.0, dtype=D), torch.full((1, 1, 1, 1), 2.0, dtype=D)
    # contribution of input q to output p at kernel offset k = q − p: x·W_k − l·W⁺_k − h·W⁻_k
    #   k=(0,0): x + 1    k=(0,1): 2 − x    k=(1,0): 2(x + 1)    k=(1,1): 0
    # Z(0,0) = 1 + 1 + 0 = 2;  Z(0,1) = 2 + 0 + 2 = 4;  Z(1,0) = 0 + 2 + 6 = 8;  Z(1,1) = 1 + 1 + 0 = 2
    r = img([2, 4], [8, -2])  # S = R / Z = [[1, 1], [1, −1]]
    # (0,0) ← 1·1;  (0,1) ← 1·1 + 2·1;  (1,1) ← 2·1 + 2·1 + 1·(−1);  (1,2) ← 1·(−1);  (2,0) ← 6·1
    expected = [[1, 3, 0],
                [0, 3, -1],
                [6, 0, 0]]
    out = zbox_conv(x, r, w, G1, low, high)
    close(out, expected)
    assert sums(out) == pytest.approx(sums(r))


def test_zbox_conv_batch_with_zero_image_and_zero_relevance():
    x = torch.cat((img([0, 1, 2], [-1, 0, 1], [2, -1, 0]), torch.zeros(1, 1, 3, 3, dtype=D)))
    w = kernel([[1, -1], [2, 0]])
    low = torch.tensor([-1.0, 0.0], dtype=D).reshape(2, 1, 1, 1)   # per-sample bounds
    high = torch.tensor([2.0, 0.0], dtype=D).reshape(2, 1, 1, 1)
    r = torch.cat((img([2, 4], [8, -2]), img([1, 1], [1, 1])))
    out = zbox_conv(x, r, w, G1, low, high)
    close(out[:1], [[1, 3, 0], [0, 3, -1], [6, 0, 0]])  # sample 0 unaffected by sample 1
    close(out[1:], 0.0)  # all-zero image, l = h = 0: every Z = 0 -> all dropped, no NaN
    out = zbox_conv(x, torch.zeros_like(r), w, G1, low, high)
    close(out, 0.0)


# -------------------------------------------------------------------------------- add / cat / masks


def test_add_rule_magnitude_split():
    a = torch.tensor([[1.0, -3.0, 0.0, 2.0]], dtype=D)
    b = torch.tensor([[3.0, 1.0, 0.0, -2.0]], dtype=D)  # last entry: a = −b (raw a/(a+b) would explode)
    r = torch.tensor([[4.0, 8.0, 6.0, -1.0]], dtype=D)
    ra, rb = add_rule(a, b, r, "magnitude", floor=0.0)
    # shares |a|/(|a|+|b|) = [1/4, 3/4, 1/2 (both 0), 1/2]
    close(ra, [[1.0, 6.0, 3.0, -0.5]])
    close(rb, [[3.0, 2.0, 3.0, -0.5]])
    close(ra + rb, r)
    # the default floor: ε_a = 1e-4 · max|a| = 3e-4, ε_b = 1e-4 · max|b| = 3e-4 added to the magnitudes
    e = 3e-4
    ra, rb = add_rule(a, b, r, "magnitude")
    close(ra, [[(1 + e) * 4 / (4 + 2 * e), (3 + e) * 8 / (4 + 2 * e), 3.0, -(2 + e) / (4 + 2 * e)]])
    close(rb, [[(3 + e) * 4 / (4 + 2 * e), (1 + e) * 8 / (4 + 2 * e), 3.0, -(2 + e) / (4 + 2 * e)]])
    close(ra + rb, r)


def test_add_rule_floor_is_per_input_and_sample_and_makes_the_split_continuous():
    # sample 1 is sample 0 scaled by 10⁻⁶: the same shares; b is 10⁻⁶ of a in scale (a ConvNeXt branch)
    a = torch.tensor([[1e-9, 2.0, 0.0], [1e-15, 2e-6, 0.0]], dtype=D)
    b = torch.tensor([[0.0, 2e-6, 0.0], [0.0, 2e-12, 0.0]], dtype=D)
    r = torch.ones(2, 3, dtype=D)
    ra, rb = add_rule(a, b, r, "magnitude")
    ea, eb = 2e-4, 2e-10  # 1e-4 · max|a|, 1e-4 · max|b| of sample 0
    # entry 0: b is exactly 0 where a is not, so it gets no floor and no share; entry 2: both are 0
    expected = [1.0, (2 + ea) / (2 + ea + 2e-6 + eb), ea / (ea + eb)]
    close(ra[0], expected)
    close(ra[1], expected)
    close(ra + rb, r)
    # the small input keeps its small share where both are large: 2e-6 / 2, up to the floors
    assert abs(rb[0, 1].item() - 1e-6) < 1e-9


def test_add_rule_gives_an_exactly_zero_input_no_share():
    # a is exactly 0 in entries 0 and 2; b is not there.  ε_a = 1e-4 · 2, ε_b = 1e-4 · 4 where they apply
    a = torch.tensor([[0.0, 2.0, 0.0, 0.0]], dtype=D)
    b = torch.tensor([[4.0, -1.0, 1e-9, 0.0]], dtype=D)
    r = torch.tensor([[3.0, 5.0, 7.0, 2.0]], dtype=D)
    ra, rb = add_rule(a, b, r, "magnitude")
    ea, eb = 2e-4, 4e-4
    close(ra, [[0.0, 5 * (2 + ea) / (3 + ea + eb), 0.0, 2 * ea / (ea + eb)]])
    close(rb, [[3.0, 5 * (1 + eb) / (3 + ea + eb), 7.0, 2 * eb / (ea + eb)]])


def test_add_rule_keeps_the_smaller_share_precise_in_float32():
    # a dominates b by 10⁶: R_b = R·|b|/(|a|+|b|) = 1e-6/(1 + 1e-6); as R − R_a it kept only ~6 % of it
    a = torch.tensor([[1.0, -1.0]])
    b = torch.tensor([[1e-6, 3e-6]])
    r = torch.tensor([[1.0, -2.0]])
    for split, (pa, pb) in {"magnitude": (a.abs(), b.abs()), "positive": (a.clamp(min=0) + 1e-9, b + 1e-9)}.items():
        ra, rb = add_rule(a, b, r, split, floor=0.0)
        expected = r.double() * pb.double() / (pa.double() + pb.double())
        assert ((rb.double() - expected).abs() / expected.abs()).max() < 1e-6, split


def test_add_rule_positive_split():
    e = 1e-9
    a = torch.tensor([[1.0, -3.0, 0.0, 2.0]], dtype=D)  # a⁺ = [1, 0, 0, 2]
    b = torch.tensor([[3.0, 1.0, 0.0, -2.0]], dtype=D)  # b⁺ = [3, 1, 0, 0]
    r = torch.tensor([[4.0, 8.0, 6.0, -1.0]], dtype=D)
    ra, rb = add_rule(a, b, r, "positive")
    # R_a = (a⁺+e)·R/(a⁺+b⁺+2e), R_b likewise
    close(ra, [[(1 + e) * 4 / (4 + 2 * e), e * 8 / (1 + 2 * e), 3.0, (2 + e) * -1 / (2 + 2 * e)]])
    close(rb, [[(3 + e) * 4 / (4 + 2 * e), (1 + e) * 8 / (1 + 2 * e), 3.0, e * -1 / (2 + 2 * e)]])
    close(ra + rb, r)


def test_cat_rule_slices_and_conserves():
    x1 = torch.tensor([[[[1.0, 0.0]]]], dtype=D)                   # (1, 1, 1, 2)
    x2 = torch.tensor([[[[0.0, 2.0]], [[3.0, 0.0]]]], dtype=D)     # (1, 2, 1, 2)
    r = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]], [[5.0, 6.0]]]], dtype=D)
    p1, p2 = cat_rule([x1, x2], r, dim=1)
    close(p1, [[[[1.0, 2.0]]]])
    close(p2, [[[[3.0, 4.0]], [[5.0, 6.0]]]])
    assert p1.sum() + p2.sum() == pytest.approx(r.sum())


def test_cat_rule_mask_zeros():
    x1 = torch.tensor([[[[1.0, 0.0]]]], dtype=D)
    x2 = torch.tensor([[[[0.0, 2.0]], [[3.0, 0.0]]]], dtype=D)
    r = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]], [[5.0, 6.0]]]], dtype=D)
    p1, p2 = cat_rule([x1, x2], r, dim=1, mask_zeros=True)
    close(p1, [[[[1.0, 0.0]]]])
    close(p2, [[[[0.0, 4.0]], [[5.0, 0.0]]]])


def test_cat_rule_along_width():
    x1, x2 = torch.ones(1, 1, 1, 1, dtype=D), torch.ones(1, 1, 1, 2, dtype=D)
    r = torch.tensor([[[[7.0, 8.0, 9.0]]]], dtype=D)
    p1, p2 = cat_rule([x1, x2], r, dim=3)
    close(p1, [[[[7.0]]]])
    close(p2, [[[[8.0, 9.0]]]])


def test_nonzero_mask_rule():
    a = img([0, 1], [-2, 0])
    r = img([5, 6], [7, 8])
    close(nonzero_mask_rule(a, r), [[0, 6], [7, 0]])


# ------------------------------------------------------------------------------------------ pooling


def test_maxpool_rule_argmax_first_tie_and_overlaps():
    a = img([1, 5, 2],
            [3, 5, 0],
            [4, 4, 1])
    # 2×2 windows, stride 1 (overlapping): max 5 everywhere.
    #   (0,0): tie (0,1)/(1,1) -> (0,1);  (0,1): tie (0,1)/(1,1) -> (0,1);  (1,0), (1,1): (1,1)
    r = img([1, 2], [4, 8])
    out = maxpool_rule(lambda t: F.max_pool2d(t, 2, stride=1), a, r)
    close(out, [[0, 1 + 2, 0], [0, 4 + 8, 0], [0, 0, 0]])
    assert sums(out) == pytest.approx([15.0])


def test_maxpool_rule_zero_window_goes_to_first_element():
    a = img([0, 0, -1, 2],
            [0, 0, 2, 0])
    r = img([3, 5])
    out = maxpool_rule(lambda t: F.max_pool2d(t, 2), a, r)
    # window 0 is all zero -> its first element; window 1: tie of the two 2s -> the first in row-major order
    close(out, [[3, 0, 0, 5], [0, 0, 0, 0]])


def windows(kernel: int, stride: int, padding: int = 0, dilation: int = 1) -> PoolWindows:
    return PoolWindows((kernel, kernel), (stride, stride), (padding, padding), (dilation, dilation))


def test_maxpool_rule_with_windows_splits_ties_evenly():
    a = img([0, 0, -1, 2],
            [0, 0, 2, 0])
    r = img([3, 5])
    out = maxpool_rule(lambda t: F.max_pool2d(t, 2), a, r, windows(2, 2))
    # window 0 is all zero: four tied maxima, 3/4 each; window 1: two tied 2s, 5/2 each
    close(out, [[0.75, 0.75, 0, 2.5], [0.75, 0.75, 2.5, 0]])


def test_maxpool_rule_with_windows_splits_overlapping_ties():
    a = img([1, 5, 2],
            [3, 5, 0],
            [4, 4, 1])
    # 2×2 windows, stride 1, max 5 everywhere: (0,0) and (0,1) tie (0,1)/(1,1) -> half each;
    # (1,0) and (1,1) hold only the 5 at (1,1)
    r = img([1, 2], [4, 8])
    out = maxpool_rule(lambda t: F.max_pool2d(t, 2, stride=1), a, r, windows(2, 1))
    close(out, [[0, 0.5 + 1, 0], [0, 0.5 + 1 + 4 + 8, 0], [0, 0, 0]])


@pytest.mark.parametrize(
    "kernel_size, stride, padding, dilation, ceil_mode",
    [(2, 2, 0, 1, False), (3, 2, 1, 1, False), (3, 2, 1, 1, True), (2, 3, 1, 1, True), (2, 1, 0, 2, False)],
)
def test_maxpool_rule_with_windows_equals_a_loop_over_the_windows(kernel_size, stride, padding, dilation, ceil_mode):
    # integer-valued inputs with many ties (zeros, repeated values); relevance signed
    a = torch.randint(-1, 3, (2, 3, 7, 8), generator=torch.Generator().manual_seed(0)).to(D).clamp(min=0)
    pool = lambda t: F.max_pool2d(t, kernel_size, stride, padding, dilation, ceil_mode)  # noqa: E731
    r = torch.randn(pool(a).shape, generator=torch.Generator().manual_seed(1), dtype=D)
    expected = torch.zeros_like(a)
    for i, j in itertools.product(range(r.shape[2]), range(r.shape[3])):
        rows = [i * stride - padding + dilation * u for u in range(kernel_size)]
        cols = [j * stride - padding + dilation * v for v in range(kernel_size)]
        inside = [(y, x) for y in rows for x in cols if 0 <= y < a.shape[2] and 0 <= x < a.shape[3]]
        values = torch.stack([a[:, :, y, x] for y, x in inside])  # (window, N, C)
        tied = values == values.max(dim=0).values
        for (y, x), t in zip(inside, tied):
            expected[:, :, y, x] += t * r[:, :, i, j] / tied.sum(dim=0)
    out = maxpool_rule(pool, a, r, windows(kernel_size, stride, padding, dilation))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(sums(out), sums(r), rtol=0, atol=1e-12)


def test_proportional_pool_rule_avg_with_zero_window():
    a = img([1, 3, 0, 0],
            [-2, 4, 0, -1])
    r = img([8, 4])
    out = proportional_pool_rule(lambda t: F.avg_pool2d(t, 2), a, r)
    # window 0: a⁺ = [1, 3, 0, 4], Σ 8 -> 8·a⁺/8;  window 1: a⁺ all 0 -> 4 split evenly (1 each)
    close(out, [[1, 3, 1, 1], [0, 4, 1, 1]])
    assert sums(out) == pytest.approx([12.0])


def test_proportional_pool_rule_zero_window_skips_padding():
    a = torch.zeros(1, 1, 1, 3, dtype=D)
    r = img([2, 6])

    def pool(t):  # width windows [pad, a0] and [a1, a2]
        return F.avg_pool2d(t, (1, 2), stride=(1, 2), padding=(0, 1))

    close(proportional_pool_rule(pool, a, r), [[2, 3, 3]])


def test_proportional_pool_rule_epsilon():
    a = img([1, 3, 0, 0],
            [-2, 4, 0, -1])
    r = img([8, 4])
    out = proportional_pool_rule(lambda t: F.avg_pool2d(t, 2), a, r, epsilon=0.5)
    # window 0: a⁺ + 0.5 = [1.5, 3.5, 0.5, 4.5], Σ 10;  window 1: 0.5 each, Σ 2
    close(out, [[8 * 0.15, 8 * 0.35, 1, 1], [8 * 0.05, 8 * 0.45, 1, 1]])


def test_proportional_pool_rule_unclamped():
    a = img([1, 3], [-2, 4])
    out = proportional_pool_rule(lambda t: F.avg_pool2d(t, 2), a, img([6]), clamp=False)
    close(out, [[1, 3], [-2, 4]])  # 6·a/Σa with Σa = 6


def test_proportional_pool_rule_adaptive_global():
    a = torch.tensor([[[[1.0, 0.0], [3.0, -1.0]]], [[[0.0, 0.0], [0.0, 0.0]]]], dtype=D)
    r = torch.tensor([8.0, 2.0], dtype=D).reshape(2, 1, 1, 1)
    out = proportional_pool_rule(lambda t: F.adaptive_avg_pool2d(t, 1), a, r)
    # sample 0: a⁺ = [1, 0, 3, 0], Σ 4 -> 2·a⁺;  sample 1: all zero -> 2 split evenly
    close(out, torch.tensor([[[[2.0, 0.0], [6.0, 0.0]]], [[[0.5, 0.5], [0.5, 0.5]]]], dtype=D))


# ---------------------------------------------------------------------------------- ConvGeometry

GEOMETRIES = {
    "plain": dict(stride=1, padding=0, dilation=1, groups=1),
    "groups2": dict(stride=1, padding=1, dilation=1, groups=2),
    "stride2": dict(stride=2, padding=1, dilation=1, groups=1),
    "dilation2": dict(stride=1, padding=2, dilation=2, groups=1),
    "all": dict(stride=2, padding=1, dilation=2, groups=2),
}


def _random_case(spec, seed):
    g = torch.Generator().manual_seed(seed)
    n, c, o, h, w, kh, kw = 3, 4, 6, 9, 8, 3, 2
    x = torch.randn(n, c, h, w, dtype=D, generator=g)
    kernels = torch.randn(n, o, c // spec["groups"], kh, kw, dtype=D, generator=g)
    args = (spec["stride"], spec["padding"], spec["dilation"], spec["groups"])
    y_shape = F.conv2d(x[:1], kernels[0], None, *args).shape[1:]
    y = torch.randn(n, *y_shape, dtype=D, generator=g)
    return x, kernels, y, args


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_conv_per_sample_matches_loop(name):
    x, kernels, _, args = _random_case(GEOMETRIES[name], 1)
    got = geom(**GEOMETRIES[name]).conv_per_sample(x, kernels)
    want = torch.cat([F.conv2d(x[i : i + 1], kernels[i], None, *args) for i in range(len(x))])
    close(got, want)


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_conv_t_per_sample_matches_loop(name):
    x, kernels, y, args = _random_case(GEOMETRIES[name], 2)
    got = geom(**GEOMETRIES[name]).conv_t_per_sample(y, kernels, x.shape)
    want = torch.cat([conv2d_input((1, *x.shape[1:]), kernels[i], y[i : i + 1], *args) for i in range(len(x))])
    assert got.shape == x.shape
    close(got, want)


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_wgrad_per_sample_matches_loop(name):
    x, kernels, y, args = _random_case(GEOMETRIES[name], 3)
    kshape = kernels.shape[1:]
    got = geom(**GEOMETRIES[name]).wgrad_per_sample(x, y, kshape)
    want = torch.stack([conv2d_weight(x[i : i + 1], kshape, y[i : i + 1], *args) for i in range(len(x))])
    close(got, want)


EXTRA_FIELDS = {"wide_padding": dict(stride=1, padding=2, dilation=1, groups=2),
                "depthwise": dict(stride=2, padding=1, dilation=1, groups=4)}


@pytest.mark.parametrize("name", [*GEOMETRIES, *EXTRA_FIELDS])
def test_fields_with_positive_matches_the_receptive_fields(name):
    # x >= 0 with many zeros; "wide_padding": padding 2 on a 3x2 kernel; "depthwise": one channel per group
    spec = GEOMETRIES.get(name) or EXTRA_FIELDS[name]
    x = torch.randn(3, 4, 9, 8, dtype=D, generator=torch.Generator().manual_seed(4)).clamp(min=1.5)
    x = x - 1.5
    g = spec["groups"]
    got = geom(**spec).fields_with_positive(x, (3, 2))
    # each group's channels, unfolded into receptive fields: any entry > 0 in the field
    fields = [
        F.unfold(part, (3, 2), dilation=spec["dilation"], padding=spec["padding"], stride=spec["stride"]) > 0
        for part in x.chunk(g, dim=1)
    ]
    want = torch.stack([f.any(dim=1) for f in fields], dim=1).reshape(got.shape)
    assert got.dtype == torch.bool and torch.equal(got, want)
    assert 0 < int(want.sum()) < want.numel()  # both kinds of fields occur


def test_reach_is_receptive_field_per_group():
    # depthwise (groups = 2): output channel 0 active at (0,0) only, channel 1 inactive everywhere
    active = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    active[0, 0, 0, 0] = True
    got = geom(groups=2).reach(active, torch.Size((1, 2, 3, 3)), torch.Size((2, 1, 2, 2)))
    want = torch.zeros(1, 2, 3, 3, dtype=torch.bool)
    want[0, 0, :2, :2] = True
    assert torch.equal(got, want)
    # stride 2 on a 3-wide input: output (0,1) reads input columns 2 and 3 of a (3, 4) image
    active = torch.zeros(1, 1, 1, 2, dtype=torch.bool)
    active[0, 0, 0, 1] = True
    got = geom(stride=2).reach(active, torch.Size((1, 1, 3, 4)), torch.Size((1, 1, 2, 2)))
    want = torch.zeros(1, 1, 3, 4, dtype=torch.bool)
    want[0, 0, :2, 2:] = True
    assert torch.equal(got, want)


def test_degenerate_outputs_never_nan():
    # every conv rule on relevance with no negative part, no positive part, all zeros, and on a = 0
    rels = [img([2, 0], [0, 1]), img([-2, 0], [0, -1]), torch.zeros(1, 1, 2, 2, dtype=D)]
    acts = [AE_A, torch.zeros_like(AE_A)]
    for r, a, sectional in itertools.product(rels, acts, (True, False)):
        finite(rsp_conv(a, r, G1, (1, 1, 2, 2), sectional=sectional))
        for ratio, keep in itertools.product((1.0, 2.0), (True, False)):
            finite(ae_conv(a, r, AE_W, G1, ratio, sectional=sectional, keep_mass=keep))
        finite(zbox_conv(a, r, AE_W, G1, a.amin().reshape(1, 1, 1, 1), a.amax().reshape(1, 1, 1, 1)))


def test_activity_is_a_per_sample_ramp_up_to_one_percent_of_the_maximum():
    from relprop.rules.common import activity

    a = torch.tensor([[-1.0, 0.0, 0.05, 0.1, 5.0, 10.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=D).view(2, 1, 2, 3)
    # sample 0: max 10, ramp ends at 0.1 -> [0, 0, 0.5, 1, 1, 1]; sample 1: nothing active -> zeros
    expected = torch.tensor([[0.0, 0.0, 0.5, 1.0, 1.0, 1.0], [0.0] * 6], dtype=D).view(2, 1, 2, 3)
    torch.testing.assert_close(activity(a), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("rule", ["rsp", "ae"])
def test_a_unit_within_rounding_of_zero_moves_the_result_by_rounding_only(rule):
    """With the indicator 1[a > 0] a unit at a = 1e-12 took a whole share of the re-centring (and of AE's
    positive term) that it loses at a = 0; with the activity weights the two results agree."""
    g = torch.Generator().manual_seed(5)
    a = torch.rand(1, 4, 6, 6, generator=g, dtype=D) + 0.5
    a[0, 2, 3, 3] = 1e-12
    relevance = torch.randn(1, 3, 4, 4, generator=g, dtype=D)
    weight = torch.randn(3, 4, 3, 3, generator=g, dtype=D)
    geometry = ConvGeometry((1, 1), (0, 0), (1, 1), 1)
    zeroed = a.clone()
    zeroed[0, 2, 3, 3] = 0.0
    if rule == "rsp":
        run = lambda x: rsp_conv(x, relevance, geometry, tuple(weight.shape))  # noqa: E731
    else:
        run = lambda x: ae_conv(x, relevance, weight, geometry, 2.0)  # noqa: E731
    scale = run(a).abs().max()
    assert (run(a) - run(zeroed)).abs().max() / scale < 1e-9
