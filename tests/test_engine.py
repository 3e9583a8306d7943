"""The engine as data: rule tables, refusals that name what the user wrote, structural reads, TF32 flags."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
import torch.nn as nn

import relprop
from relprop.engine import CONV, STANDARD_TABLE, RuleTable
from relprop.engine.standard import PassThrough
from relprop.engine.walk import _carried_totals


class GRUInTheMiddle(nn.Module):
    """conv → a GRU over the flattened positions → conv → mean → fc, reading ``z.shape`` on the way."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.weird = nn.GRU(8, 8, batch_first=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv1(x)
        n, c, h, w = z.shape
        seq, _ = self.weird(z.flatten(2).transpose(1, 2))
        z = self.conv2(seq.transpose(1, 2).reshape(n, c, h, w))
        return self.fc(z.mean(dim=(2, 3)))


class KeepsSevenBySeven(nn.Module):
    """Branches on the input's size, as timm's VGG head (``ConvMlp``) does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < 7:
            x = nn.functional.adaptive_avg_pool2d(x, 7)
        return self.conv(x).mean(dim=(2, 3))


class ShapeBranchNet(nn.Module):
    def __init__(self, head: nn.Module | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.head = head or KeepsSevenBySeven()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ConvThenMean(nn.Module):
    """KeepsSevenBySeven without the ``if``: one of its branches, with its convolution."""

    def __init__(self, conv: nn.Conv2d, pool: bool) -> None:
        super().__init__()
        self.conv, self.pool = conv, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(x, 7) if self.pool else x
        return self.conv(x).mean(dim=(2, 3))


class FlipsPositiveInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = -x
        return self.conv(x).mean(dim=(2, 3))


@pytest.mark.parametrize("name", ["rsp", "ae", "rap", "lrp_composite", "gradcam"])
def test_a_branch_on_the_input_shape_is_traced_per_shape(name):
    """timm's VGG head pools inputs smaller than 7×7: relprop traces such a model once per input shape.
    Each branch gives the maps of the same model written without the ``if`` (float64), the model is
    not changed (train mode restored, no module added), and later shapes get their own graph."""
    model = ShapeBranchNet().double().train()
    modules = dict(model.named_modules())
    method = relprop.get_method(name)(model)
    assert all(module.training for module in model.modules()) and dict(model.named_modules()) == modules
    model.eval()
    for side, pool in ((8, True), (12, False)):  # feature maps of 6×6 (pooled to 7×7) and 10×10 (not)
        x = torch.randn(2, 3, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(side))
        branch = ShapeBranchNet(ConvThenMean(model.head.conv, pool)).double().eval()
        branch.features = model.features
        expected = relprop.get_method(name)(branch).attribute(x, target=[1, 3])
        torch.testing.assert_close(method.attribute(x, target=[1, 3]), expected, rtol=0, atol=1e-12)
    assert dict(model.named_modules()) == modules


class SineBeforeTheBranch(KeepsSevenBySeven):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.sin(x))


def test_a_model_that_branches_on_shapes_is_checked_at_construction():
    """Checked on a 224×224 example: an op without a rule is refused before any input is seen."""
    with pytest.raises(relprop.UnsupportedLayerError, match="sin"):
        relprop.RSP(ShapeBranchNet(SineBeforeTheBranch()).eval())


def test_a_branch_on_values_is_named_by_module_path_type_and_line():
    model = ShapeBranchNet(FlipsPositiveInputs()).train()
    with pytest.raises(relprop.RelpropError) as caught:
        relprop.RSP(model)
    message = str(caught.value)
    assert "in module 'head' (FlipsPositiveInputs)" in message, message
    assert "test_engine.py" in message and "`if x.sum() > 0:`" in message, message
    assert "'gradient'" in message  # what to do instead
    assert all(module.training for module in model.modules())  # the user's train mode is restored


class ChecksDevice(KeepsSevenBySeven):
    """Checks its input's device before the branch on the size, as timm's ``LiteMLA`` checks ``v.device.type``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "meta":
            x = 2.0 * x
        return super().forward(x)


class DoublesThenKeepsSevenBySeven(KeepsSevenBySeven):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(2.0 * x)


@pytest.mark.parametrize("name", ["rsp", "lrp_composite"])
def test_a_check_of_the_input_device_is_traced_as_the_device_it_is(name):
    """A graph traced per input shape is for one device too, so ``x.device.type`` is known while tracing:
    the model is explained as the one without the check (float64; before: "could not trace ... 'str' object
    has no attribute 'type'")."""
    checked = ShapeBranchNet(ChecksDevice()).double().eval()
    plain = ShapeBranchNet(DoublesThenKeepsSevenBySeven()).double().eval()
    plain.load_state_dict(checked.state_dict())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    expected = relprop.get_method(name)(plain).attribute(x, target=[0, 2])
    torch.testing.assert_close(relprop.get_method(name)(checked).attribute(x, target=[0, 2]), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["rsp", "ae", "lrp_composite"])
def test_unsupported_module_is_named_by_path_and_type_before_any_forward_work(name):
    model = GRUInTheMiddle().eval()
    calls = []
    model.conv1.register_forward_pre_hook(lambda module, args: calls.append(1))
    with pytest.raises(relprop.UnsupportedLayerError) as caught:
        relprop.get_method(name)(model)
    message = str(caught.value)
    assert "GRU at 'weird'" in message and "Supported on the explained path" in message
    assert "\n" not in message and calls == []


class ShapeReader(nn.Module):
    """Two convolutions with shape and size reads (and a shape-preserving view) between them."""

    def __init__(self, read_shapes: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)
        self.read_shapes = read_shapes
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.relu(self.conv1(x))
        if self.read_shapes:
            n, c, h, w = z.shape
            z = z.view(z.size(0), c, h, w)
        z = torch.relu(self.conv2(z))
        return self.fc(nn.functional.adaptive_avg_pool2d(z, 1).flatten(1))


@pytest.mark.parametrize("name", ["rsp", "ae", "rap", "lrp_epsilon"])
def test_shape_and_size_reads_between_layers_are_explained_normally(name):
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    plain = relprop.get_method(name)(ShapeReader(False).double()).attribute(x, target=[0, 3])
    reading = relprop.get_method(name)(ShapeReader(True).double()).attribute(x, target=[0, 3])
    assert plain.abs().max() > 0
    torch.testing.assert_close(reading, plain, rtol=0, atol=1e-12)


def test_a_table_override_replaces_only_the_named_entries():
    custom = PassThrough()
    table = STANDARD_TABLE.override({CONV: custom})
    assert table[CONV] is custom and table["maxpool"] is STANDARD_TABLE["maxpool"]
    with pytest.raises(KeyError):
        STANDARD_TABLE[CONV]  # the standard table itself is unchanged


def test_module_type_entries_win_over_kinds_along_the_class_hierarchy():
    special = PassThrough()
    table = RuleTable({nn.Hardtanh: special, "pointwise": PassThrough()})
    graph = relprop.engine.ModelGraph(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU6()))
    (op,) = [op for op in graph.ops if isinstance(op.module, nn.ReLU6)]
    assert op.kind == "pointwise" and table.rule_for(op, "test") is special  # ReLU6 subclasses Hardtanh


@pytest.mark.parametrize("activation", [nn.PReLU(3), nn.Hardtanh(-1.0, 2.0)])
def test_prelu_and_hardtanh_pass_relevance_unchanged(activation):
    """Closed form: conv (1×1, identity kernel, no bias) → activation → global average pool → Linear.

    With all inputs positive and inside the Hardtanh range, LRP-ε (ε = 0) gives input relevance
    ``x_c · w_t,c / (H·W)`` per pixel for class t: the activation is the identity on these inputs and
    passes relevance unchanged."""
    conv = nn.Conv2d(3, 3, 1, bias=False)
    fc = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        fc.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.25]]))
    model = nn.Sequential(conv, activation, nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc).double().eval()
    x = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64).view(1, 3, 1, 1).expand(1, 3, 2, 2).contiguous()
    r = relprop.LRPEpsilon(model, epsilon=0.0).attribute(x, target=0)
    expected = (x * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).view(1, 3, 1, 1)) / 4
    torch.testing.assert_close(r, expected, rtol=0, atol=1e-12)


def _precision_flags() -> tuple:
    if hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision"):
        return torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


def _tf32_on() -> None:
    if hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision"):
        torch.backends.cudnn.conv.fp32_precision = torch.backends.cuda.matmul.fp32_precision = "tf32"
    else:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True


@pytest.fixture
def user_enabled_tf32():
    saved = _precision_flags()
    _tf32_on()
    on = _precision_flags()
    yield on
    if isinstance(saved[0], str):
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = saved
    else:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _spy_on_rules(monkeypatch, fail: bool = False) -> list:
    """Record the precision flags each time the z^B rule runs (optionally raising there)."""
    import relprop.engine.standard as standard

    seen, original = [], standard.zbox_conv

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(_precision_flags())
        if fail:
            raise RuntimeError("boom")
        return original(*args, **kwargs)

    monkeypatch.setattr(standard, "zbox_conv", spy)
    return seen


FULL = ("ieee", "ieee") if isinstance(_precision_flags()[0], str) else (False, False)


@pytest.mark.parametrize("name", ["rsp", "ae", "rap", "lrp_composite"])
def test_rules_run_without_tf32_and_the_users_flags_come_back(name, monkeypatch, user_enabled_tf32):
    seen = _spy_on_rules(monkeypatch)
    relprop.get_method(name)(ShapeReader(False)).attribute(torch.randn(1, 3, 8, 8))
    assert seen == [FULL]
    assert _precision_flags() == user_enabled_tf32


def test_flags_come_back_when_a_rule_raises(monkeypatch, user_enabled_tf32):
    seen = _spy_on_rules(monkeypatch, fail=True)
    with pytest.raises(RuntimeError, match="boom"):
        relprop.RSP(ShapeReader(False)).attribute(torch.randn(1, 3, 8, 8))
    assert seen == [FULL] and _precision_flags() == user_enabled_tf32


def test_allow_tf32_leaves_the_flags_alone(monkeypatch, user_enabled_tf32):
    seen = _spy_on_rules(monkeypatch)
    relprop.AE(ShapeReader(False), allow_tf32=True).attribute(torch.randn(1, 3, 8, 8))
    assert seen == [user_enabled_tf32]


@pytest.mark.parametrize("name", ["rsp", "ae", "rap", "lrp_composite", "lrp_epsilon"])
def test_relevance_under_autocast_is_the_models_dtype_with_a_warning(name):
    """Under ``torch.autocast`` (bfloat16 on the CPU, which moves RSP's maps by ~1 % of max|R|) the rules
    still run in float32: the map equals the plain call's exactly, the caller is warned, and autocast is
    on again afterwards."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    method = relprop.get_method(name)(model)
    plain = method.attribute(x, target=[1, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.warns(UserWarning, match=r"torch.autocast is turned off inside attribute\(\)"):
            under = method.attribute(x, target=[1, 2])
        assert torch.is_autocast_enabled("cpu")
    assert under.dtype == torch.float32 and torch.equal(under, plain)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_relevance_in_sixteen_bit_floats_warns_at_the_callers_line(dtype):
    """A 16-bit model and input are explained as given, with a warning that the map is far from the
    float32 one (the rules' sums and ratios keep 2-3 digits); float32 and float64 give no warning."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for quiet in (torch.float32, torch.float64):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            relprop.AE(model.to(quiet)).attribute(x.to(quiet), target=[1, 2])
    method = relprop.AE(model.to(dtype))
    with pytest.warns(UserWarning, match=r"AE in torch\.(b?float16).*copy\.deepcopy\(model\)\.float\(\)") as caught:
        result = method.attribute(x.to(dtype), target=[1, 2])
    assert result.dtype == dtype and caught[0].filename == __file__
    with pytest.warns(UserWarning, match="16-bit"):
        method.seed_relevance(x.to(dtype), target=[1, 2])


@pytest.mark.parametrize("name", ["gradient", "gradcam", "integrated_gradients"])
def test_autograd_methods_under_autocast_return_the_inputs_dtype(name):
    """The gradient family runs under the caller's autocast, as Captum does, and returns x's dtype."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert relprop.get_method(name)(model).attribute(x, target=[1, 2]).dtype == torch.float32


def test_a_conserving_rule_passes_the_carried_total_on_by_hand():
    """Contributions (1, −3) and (2, 0) of a rule whose relevance totals 1: their sums (−2, 2) miss it by
    1, spread by mass (4 and 2 of 6): −2 + 4/6 = −4/3 and 2 + 2/6 = 7/3.  A rule that does not conserve
    hands on the sums; the single input of a conserving rule gets the total itself; inputs without
    relevance (None) stay None."""
    d = torch.float64
    parts = [torch.tensor([[1.0, -3.0]], dtype=d), None, torch.tensor([[2.0, 0.0]], dtype=d)]
    total = torch.tensor([1.0], dtype=d)
    carried = _carried_totals(parts, total, conserves=True)
    assert carried[1] is None
    torch.testing.assert_close(torch.cat([carried[0], carried[2]]), torch.tensor([-4 / 3, 7 / 3], dtype=d), rtol=0, atol=1e-15)
    plain = _carried_totals(parts, total, conserves=False)
    assert plain[0].tolist() == [-2.0] and plain[2].tolist() == [2.0]
    assert _carried_totals([None, torch.tensor([[0.5, 0.25]], dtype=d)], total, conserves=True)[1] is total
    assert _carried_totals([None, None], total, conserves=True) == [None, None]


def test_only_the_graph_package_reads_torch_fx():
    """The engine's contract: tracing internals stay in relprop.engine.graph, every other module sees Ops."""
    package = Path(relprop.__file__).parent
    readers = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "engine/graph/" not in path.as_posix() and re.search(r"torch\.fx|from torch import fx", path.read_text())
    ]
    assert readers == []
