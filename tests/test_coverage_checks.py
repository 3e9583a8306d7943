"""``relprop.coverage`` (the checks behind ``relprop coverage`` and docs/coverage.md) and its command.

Each check is shown to fail on an explainer built to break it, with the figure worked out by hand, and
to pass relprop's methods on a small network without changing it."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import relprop
from model_state import assert_unchanged, snapshot
from relprop.cli import main
from relprop.coverage import (
    RESOLUTION, Claim, MethodCheck, check_methods, check_model, claim_for, relprop_factory,
)


def _small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )


class _Fixed:
    """An explainer whose map is ``fn(x)``: a stand-in built to pass or break one check."""

    def __init__(self, fn):  # type: ignore[no-untyped-def]
        self.fn = fn

    def attribute(self, x, target=None):  # type: ignore[no-untyped-def]
        return self.fn(x)


def _one(fn, claim: Claim | None = None, model: nn.Module | None = None, x: torch.Tensor | None = None) -> MethodCheck:
    model = model if model is not None else _small_net().eval()
    x = x if x is not None else torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    return check_methods(model, {"m": lambda m, exact: _Fixed(fn)}, {"m": claim}, x)["m"]


def test_relprop_methods_pass_on_a_small_network_which_stays_unchanged():
    model = _small_net().train()  # a model in training mode is checked in eval mode and left in training mode
    before = snapshot(model)
    with pytest.warns(UserWarning, match="eval mode"):
        checks = check_model(model, ["rsp", "ae", "rap", "lrp_composite", "gradcam"], size=16)
    assert_unchanged(before, model)
    assert [c.mark for c in checks] == ["✔"] * 5, [c.note for c in checks]
    by_name = {c.method: c for c in checks}
    for name in ("rsp", "rap", "lrp_composite"):
        assert by_name[name].conservation is not None and by_name[name].conservation <= 1e-12
    assert by_name["ae"].conservation is None and by_name["gradcam"].conservation is None
    assert all(c.invariance is not None and c.invariance <= 1e-4 for c in checks)


def test_grayscale_model_is_checked_with_one_channel():
    """The batch has the input channels of the model's first convolution (it was always 3: a raw torch
    channel error for a grayscale model); ``channels`` overrides it."""
    torch.manual_seed(0)
    lenet = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 3),
    ).eval()
    assert [c.mark for c in check_model(lenet, ["rsp", "lrp_composite"], size=14)] == ["✔", "✔"]
    with pytest.raises(Exception, match="expected input.*to have 1 channels"):
        check_model(lenet, ["rsp"], size=14, channels=3)


def test_claims_follow_what_each_method_documents():
    assert claim_for("rsp") == Claim("seed")
    assert claim_for("rsp", {"hostile": 3}) == Claim("seed")
    assert claim_for("rsp", {"purge": True}) is None  # purging removes mass
    assert claim_for("rap") == Claim("zero")
    assert claim_for("lrp_epsilon") == claim_for("lrp_composite") == Claim("logit", bias_free=True)
    assert claim_for("ae") is None and claim_for("gradcam") is None and claim_for("lrp_zplus") is None


def test_lrp_is_checked_for_conservation_with_epsilon_zero():
    model = _small_net().eval()
    make = relprop_factory("lrp_composite", {"epsilon": 0.5})
    assert make(model, False).epsilon == 0.5
    assert make(model, True).epsilon == 0.0
    assert relprop_factory("ae", {"ratio": 1.0})(model, True).ratio == 1.0  # no epsilon to set


@pytest.mark.parametrize(
    "fn, note",
    [
        (lambda x: x[:, :1], "shape (3, 1, 8, 8) != (3, 3, 8, 8)"),
        (lambda x: x * float("inf"), "not finite"),
        (lambda x: torch.zeros_like(x), "constant map"),
        (lambda x: torch.cat([x[:2], torch.ones_like(x[2:])]), "constant map"),  # one constant sample suffices
    ],
)
def test_a_broken_map_fails_with_what_is_wrong(fn, note):
    check = _one(fn)
    assert not check.ok and check.note == note and check.mark == "✘ " + note


def test_a_map_normalised_over_the_batch_fails_batch_invariance():
    # the last sample alone is divided by its own max, in the batch by the batch's max: x[-1] * (1/m - 1/M)
    x = torch.ones(2, 3, 4, 4)
    x[0, 0, 0, 0] = 4.0
    x[1, 0, 0, 0] = 2.0  # max 2 alone, 4 in the batch: alone 1.0 at the max, in the batch 0.5
    check = _one(lambda t: t / t.abs().max(), x=x)
    assert not check.ok
    assert check.invariance == pytest.approx(1.0)  # |1.0 - 0.5| / 0.5
    assert check.note == "batch variance 1.0e+00"


def test_conservation_is_measured_in_float64_against_each_kind_of_total():
    model = _small_net().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    rsp = relprop_factory("rsp")

    class Doubled:  # RSP's map times 2: Σ R is twice the seed's sum, off by exactly 1 (relative)
        def __init__(self, model, exact):  # type: ignore[no-untyped-def]
            self.rsp = rsp(model, exact)

        def attribute(self, x, target=None):  # type: ignore[no-untyped-def]
            assert x.dtype in (torch.float32, torch.float64)
            return 2 * self.rsp.attribute(x, target)

        def seed_relevance(self, x, target=None):  # type: ignore[no-untyped-def]
            return self.rsp.seed_relevance(x, target)

    checks = check_methods(model, {"rsp": rsp, "doubled": Doubled}, {"rsp": Claim("seed"), "doubled": Claim("seed")}, x)
    assert checks["rsp"].ok and checks["rsp"].conservation <= 1e-12
    assert not checks["doubled"].ok and checks["doubled"].conservation == pytest.approx(1.0, abs=1e-12)
    assert checks["doubled"].note.startswith("Σ R off by 1.0e+00 (rel.)")

    zero = _one(lambda t: t - t.mean(dim=(1, 2, 3), keepdim=True), Claim("zero"))  # sums to 0 up to rounding
    assert zero.ok and zero.conservation <= 1e-14 and zero.conditioning is None
    offset = _one(lambda t: t.abs(), Claim("zero"))  # Σ|R| / Σ|R| = 1
    assert not offset.ok and offset.conservation == pytest.approx(1.0)


def test_the_logit_claim_uses_a_bias_free_copy_and_leaves_the_model_alone():
    # f(x) = w·x + b: gradient × input sums to w·x, the logit of the bias-free copy, not the logit itself
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).eval()
    with torch.no_grad():
        model[1].bias.fill_(0.5)
    before = snapshot(model)
    x = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(4)).abs() + 0.1

    def grad_x_input(m, exact):  # type: ignore[no-untyped-def]
        return relprop.get_method("gradient_x_input")(m)

    checks = check_methods(model, {"free": grad_x_input, "biased": grad_x_input},
                           {"free": Claim("logit", bias_free=True), "biased": Claim("logit")}, x)
    assert_unchanged(before, model)
    assert checks["free"].ok and checks["free"].conservation <= 1e-14
    with torch.no_grad():
        logits = copy.deepcopy(model).double()(x.double())
    top = logits.amax(dim=1)  # the target: each sample's top-1 class
    assert not checks["biased"].ok
    assert checks["biased"].conservation == pytest.approx((0.5 / top).abs().max().item(), rel=1e-9)


def test_a_miss_below_float64s_resolution_of_the_mass_is_marked_not_failed():
    # Σ R = logit·(1 + 1e-3) with a mass of 2M: a 1e-3 miss; resolved only when 1e-3 > RESOLUTION · 2M / logit
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2, bias=False)).eval()
    x = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(5))

    weight = model[1].weight.detach()

    def spread(mass: float):  # type: ignore[no-untyped-def]
        def fn(t: torch.Tensor) -> torch.Tensor:
            logit = (t.flatten(1) @ weight.to(t.dtype).T).amax(dim=1)  # the top-1 logit, the target's
            r = torch.zeros_like(t)
            r[:, 0, 0, 0] = mass * logit.abs()
            r[:, 0, 0, 1] = -mass * logit.abs() + logit * (1 + 1e-3)
            return r
        return fn

    # float64 rounds the sum of ±1e10·|logit| to about 2e-6 of the logit: the 1e-3 miss is measured to 1 %
    wide = _one(spread(1e10), Claim("logit"), model, x)
    assert wide.ok and wide.resolution_limited and wide.mark == "✔¹"
    assert wide.conservation == pytest.approx(1e-3, rel=1e-2) and wide.conditioning == pytest.approx(2e10, rel=1e-3)
    assert wide.conservation <= RESOLUTION * wide.conditioning
    narrow = _one(spread(1e6), Claim("logit"), model, x)
    assert not narrow.ok and narrow.note.startswith("Σ R off by 1.0e-03 (rel.); the map's mass is 2e+06× its sum")


class _BatchSizeDependent(nn.Module):
    """y = x·(1 + 1e-3·(N − 1)) in float32 only: a forward pass that, like a max-pool winner decided by
    float32 rounding, differs between a batch and a sample alone (and not in float64)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1 + 1e-3 * (x.shape[0] - 1)) if x.dtype == torch.float32 else x


def test_batch_variance_from_the_models_own_routing_is_judged_in_float64():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), _BatchSizeDependent(), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 36, 3))
    model.eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    check = check_methods(model, {"gradient": relprop_factory("gradient")}, {}, x)["gradient"]
    assert check.ok and check.mark == "✔²", check.note
    assert check.invariance > 1e-4 and check.gradient_invariance > 1e-4
    assert check.invariance64 <= 1e-12
    assert "the forward pass's own routing" in check.routing_limited

    x[0] *= 10  # the batch's max is in sample 0: the last sample's map alone is scaled differently
    coupled = check_methods(model, {"m": lambda m, exact: _Fixed(lambda t: t / t.abs().max())}, {}, x)["m"]
    assert not coupled.ok and coupled.note.startswith("batch variance")  # fails in float64 as well


def test_a_method_that_cannot_explain_the_model_is_a_result_not_a_crash():
    from test_engine import GRUInTheMiddle

    checks = check_model(GRUInTheMiddle().eval(), ["rsp", "gradient"], size=8)
    assert not checks[0].ok and checks[0].note == "no rule: GRU at 'weird'"
    assert checks[1].ok


def test_a_model_with_attention_is_reported_as_refused_not_as_a_missing_rule():
    from test_model_scope import MixerNet, tiny_vit

    (vit,) = check_model(tiny_vit(), ["rsp"], size=32)
    assert vit.note == "refused: attention (MultiheadAttention at 'encoder.layers.encoder_layer_0.self_attention')"
    (mixer,) = check_model(MixerNet("einsum").eval(), ["lrp_composite"], size=8)
    assert mixer.note == "refused: attention (PositionMixer at 'head.0')"


def test_a_token_model_is_reported_as_refused_token_mixing():
    from test_model_scope import TokenMLP

    (tokens,) = check_model(TokenMLP("channels").eval(), ["rsp"], size=8)
    assert tokens.note == "refused: token mixing (Linear at 'mix')"


def test_seed_relevance_is_the_channel_contribution_map_the_walk_conserves():
    model = _small_net().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    rsp = relprop.RSP(model, seed_layer="5")
    seed = rsp.seed_relevance(x, target=[1, 3])
    # by hand: S = A ⊙ mean_hw(∂y_t/∂A) at the seed layer's output A, divided by max|S| per sample
    a = model[:6](x).detach().requires_grad_(True)
    y = model[6:](a)
    (grad,) = torch.autograd.grad(y[0, 1] + y[1, 3], a)
    s = a.detach() * grad.mean(dim=(2, 3), keepdim=True)
    s = s / s.flatten(1).abs().amax(dim=1).view(-1, 1, 1, 1)
    assert seed.shape == (2, 8, 4, 4)
    assert torch.allclose(seed, s, rtol=0, atol=1e-14)
    total = rsp.attribute(x, target=[1, 3]).sum(dim=(1, 2, 3))
    assert torch.allclose(total, s.sum(dim=(1, 2, 3)), rtol=1e-12, atol=0)


def test_coverage_command_prints_each_check_and_writes_the_table(tmp_path, capsys):
    out = tmp_path / "table.md"
    code = main(["coverage", "--models", "squeezenet1_1", "--methods", "rsp,gradcam", "--size", "64",
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    assert "squeezenet1_1 has random weights" in captured.err
    lines = captured.out.splitlines()
    assert lines[0].startswith("squeezenet1_1 (64 px, ")
    assert lines[1].split()[:2] == ["rsp", "✔"] and "conservation" in lines[1]
    assert lines[2].split()[:2] == ["gradcam", "✔"] and "conservation" not in lines[2]
    assert lines[-1] == "2 of 2 checks passed"
    assert out.read_text().splitlines() == ["| model | px | rsp | gradcam |", "|---|---|---|---|",
                                            "| squeezenet1_1 | 64 | ✔ | ✔ |"]


def test_coverage_command_exits_1_when_a_check_fails(capsys):
    code = main(["coverage", "--models", "squeezenet1_1", "--methods", "ae:ratio=-1", "--size", "64"])
    out = capsys.readouterr().out
    assert code == 1
    line = out.splitlines()[1]
    assert line.split()[:3] == ["ae:ratio=-1", "✘", "ValueError:"] and "ratio must be a positive finite number" in line
    assert out.splitlines()[-1] == "0 of 1 checks passed"


def test_coverage_command_reports_a_model_that_cannot_run_and_goes_on(tmp_path, capsys):
    """AlexNet's max pools need more than 16 px: its checks fail with the model's reason in one line, and the
    next model is still checked."""
    out = tmp_path / "table.md"
    code = main(["coverage", "--models", "alexnet,resnet18", "--methods", "rsp", "--size", "16", "--out", str(out)])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    assert lines[:2] == ["alexnet", lines[1]] and lines[1].startswith("  ✘ AlexNet fails on a (3, 16, 16) input: ")
    assert lines[2].startswith("resnet18 (16 px, ") and lines[-1] == "1 of 2 checks passed"
    assert out.read_text().splitlines()[2].startswith("| alexnet | 16 | ✘ AlexNet fails on a (3, 16, 16) input: ")


def test_coverage_command_gives_a_model_the_same_random_weights_wherever_it_is_listed(capsys):
    """Before, a model's random weights came from whatever state the models listed before it left the random
    number generator in: a check failing in a long list did not fail when the model was checked alone."""
    def figures(models: str) -> str:
        assert main(["coverage", "--models", models, "--methods", "rsp,ae", "--size", "32"]) == 0
        lines = capsys.readouterr().out.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("squeezenet1_1 "))
        return "\n".join(lines[start + 1:start + 3])

    alone = figures("squeezenet1_1")
    assert "batch variance" in alone and figures("resnet18,squeezenet1_1") == alone


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models", "resnet18,vgg11", "--weights", "w.pth"], "--weights FILE holds the weights of one model"),
        (["--models", "resnet18", "--batch-size", "1"], "--batch-size must be at least 2"),
        (["--models", "resnet18", "--methods", "center"], "'center' does not depend on the model"),
        (["--models", "resnet18", "--methods", "nope"], "unknown method 'nope'"),
        (["--models", "nope"], "unknown model 'nope'"),
        (["--models", "timm:nope_net"], "unknown timm model 'nope_net'"),
    ],
)
def test_coverage_command_refuses_bad_arguments_in_one_line(argv, message, capsys):
    assert main(["coverage", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_coverage_is_an_attribute_of_the_package_as_the_readme_shows():
    code = "import relprop; print(callable(relprop.coverage.check_model), relprop.coverage.DEFAULT_METHODS[0])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "rsp"]
