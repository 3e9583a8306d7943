"""What relprop accepts as a model: attention is refused up front, parallel wrappers and ``torch.compile``'d
models are explained through the module they wrap, torchvision's ``Normalize`` may sit in front of the model, and tensors made under ``torch.inference_mode()`` are refused with a fix."""

from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torchvision
import torchvision.transforms as T
import torchvision.transforms.v2 as v2

import relprop
import relprop.engine.graph.model_graph as model_graph_module
from relprop import UnsupportedLayerError
from relprop.errors import ModelError
from model_state import assert_unchanged, snapshot

RELEVANCE_METHODS = ["rsp", "ae", "rap", "lrp_composite", "lrp_epsilon"]


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=1, num_heads=1, hidden_dim=8, mlp_dim=8, num_classes=3
    ).eval()


class TokenAttention(nn.Module):
    """Self-attention over the positions of a feature map (the kind of block a hybrid CNN puts on top)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).flatten(2).chunk(3, dim=1)
        weights = torch.softmax(q.transpose(1, 2) @ k, dim=-1)
        return (v @ weights.transpose(1, 2)).reshape(x.shape)


class HybridNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(TokenAttention(4))
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.stem(x)).mean(dim=(2, 3)))


@pytest.fixture
def no_tracing(monkeypatch):
    """Fail if anything traces the model (the refusal must come before any work)."""

    def trace(model, example=None):
        raise AssertionError("the model was traced")

    monkeypatch.setattr(model_graph_module, "trace_model", trace)


@pytest.mark.parametrize("name", RELEVANCE_METHODS + ["gradcam", "gradcampp"])
def test_vision_transformer_is_refused_before_any_work(name, no_tracing):
    model = tiny_vit()
    calls = []
    model.conv_proj.register_forward_pre_hook(lambda m, i: calls.append(1))
    with pytest.raises(UnsupportedLayerError) as info:
        relprop.get_method(name)(model)
    message = str(info.value)
    assert "\n" not in message
    assert "MultiheadAttention at 'encoder.layers.encoder_layer_0.self_attention'" in message
    assert "convolutional networks" in message
    assert info.value.path == "encoder.layers.encoder_layer_0.self_attention"
    assert calls == []


def test_seed_below_the_attention_is_refused_too(no_tracing):
    """The patch embedding is a convolution; seeding there would leave the transformer to the seed's gradient."""
    with pytest.raises(UnsupportedLayerError, match="MultiheadAttention"):
        relprop.RSP(tiny_vit(), seed_layer="conv_proj")


@pytest.mark.parametrize("name", ["rsp", "lrp_composite", "gradcam"])
def test_attention_module_named_by_its_class(name, no_tracing):
    with pytest.raises(UnsupportedLayerError, match=r"TokenAttention at 'head\.0'\. relprop's rules cover convolutional"):
        relprop.get_method(name)(HybridNet().eval())


class PositionMixer(nn.Module):
    """Attention whose class name does not say so (timm's ``CrossCovarianceAttn``, ``LiteMLA``): the scores
    q·kᵀ of the positions, without a softmax (linear attention), weigh the values; written ``how``."""

    def __init__(self, channels: int, how: str) -> None:
        super().__init__()
        self.qkv, self.how = nn.Conv2d(channels, 3 * channels, 1), how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).flatten(2).chunk(3, dim=1)  # (N, C, HW) each
        if self.how == "matmul":
            mixed = v @ (q.transpose(1, 2) @ k)
        elif self.how == "bmm":
            mixed = torch.bmm(v, torch.bmm(q.transpose(1, 2), k))
        elif self.how == "einsum":
            mixed = torch.einsum("nci,nij->ncj", v, torch.einsum("nci,ncj->nij", q, k))
        else:
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            mixed = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        return mixed.reshape(x.shape)


class MixerNet(HybridNet):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.head = nn.Sequential(PositionMixer(4, how))


WRITTEN = {"matmul": "operator.matmul", "bmm": "torch.bmm", "einsum": "torch.einsum",
           "sdpa": "F.scaled_dot_product_attention"}


@pytest.mark.parametrize("how", list(WRITTEN))
@pytest.mark.parametrize("name", RELEVANCE_METHODS)
def test_a_product_of_two_feature_maps_is_refused_as_attention_at_construction(name, how):
    """Wherever it sits (here above every seed a method would choose): the error names the module and the op."""
    model = MixerNet(how).eval()
    calls = []
    model.stem[0].register_forward_pre_hook(lambda m, i: calls.append(1))
    with pytest.raises(UnsupportedLayerError) as info:
        relprop.get_method(name)(model)
    message = str(info.value)
    assert f"PositionMixer at 'head.0'. It multiplies two feature maps ({WRITTEN[how]}), as attention does." in message
    assert "relprop's rules cover convolutional networks" in message and "\n" not in message
    assert info.value.path == "head.0" and calls == []


class TokenMLP(nn.Module):
    """A patch embedding (4×4 conv, stride 4) to tokens (N, L, C), then one MLP-Mixer block: Linear over the
    tokens (on the transposed (N, C, L) tensor, ``mixing="tokens"``) or over the channels of the sequence
    (``"channels"``), then the mean over the tokens and a classifier."""

    def __init__(self, mixing: str) -> None:
        super().__init__()
        self.mixing = mixing
        self.stem = nn.Conv2d(3, 4, 4, stride=4)
        self.mix = nn.Linear(6, 6) if mixing == "tokens" else nn.Linear(4, 4)  # 8×12 input: 6 tokens of 4 channels
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).flatten(2).transpose(1, 2)  # (N, L, C)
        if self.mixing == "tokens":
            tokens = tokens + self.mix(tokens.transpose(1, 2)).transpose(1, 2)
        else:
            tokens = tokens + self.mix(torch.relu(tokens))
        return self.fc(tokens.mean(dim=1))


@pytest.mark.parametrize("mixing", ["tokens", "channels"])
@pytest.mark.parametrize("name", RELEVANCE_METHODS)
def test_a_linear_layer_over_a_token_sequence_is_refused(name, mixing):
    """Before: RSP and AE seeded at the patch embedding, the only convolution, and returned a map in which the
    token mixing entered only through the seed's gradient (timm's MLP-Mixer: a constant map); LRP crashed with
    a raw "size of tensor a (196) must match" error.  Now every relevance method names the Linear layer and
    the shape it is applied to, on the first batch (shapes are known only then), and the model is unchanged."""
    model = TokenMLP(mixing).eval()
    before = snapshot(model)
    method = relprop.get_method(name)(model)
    with pytest.raises(UnsupportedLayerError) as info:
        method.attribute(torch.randn(2, 3, 8, 12), target=[0, 1])
    message = str(info.value)
    shape = "(N, 4, 6)" if mixing == "tokens" else "(N, 6, 4)"
    assert f"Linear at 'mix'. It is applied to a {shape} tensor" in message and "mixes the tokens" in message
    assert info.value.path == "mix" and "\n" not in message
    assert_unchanged(before, model)


class PaddedTokenMLP(TokenMLP):
    """:class:`TokenMLP` that pads its input to a multiple of the patch size: ``forward()`` branches on the
    input's shape, so its graphs are traced for one input shape each."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 4:
            x = nn.functional.pad(x, (0, 4 - x.shape[-1] % 4))
        return super().forward(x)


@pytest.mark.parametrize("model_type, mixing, width, shape", [
    (TokenMLP, "tokens", 12, "(N, 4, 6)"), (PaddedTokenMLP, "channels", 10, "(N, 6, 4)"),
])
@pytest.mark.parametrize("name", ["gradcam", "gradcampp"])
def test_cam_refuses_a_default_layer_below_token_mixing(name, model_type, mixing, width, shape):
    """Before: the default CAM layer of a token model was its patch embedding, the only convolution, and
    Grad-CAM returned a constant map of timm's MLP-Mixer, ResMLP and gMLP without a word.  Now the first batch
    names the Linear layer that mixes the tokens (also when ``forward()`` branches on the input's shape); a
    layer the user names is taken as given, and the model is unchanged."""
    x = torch.randn(2, 3, 8, width, generator=torch.Generator().manual_seed(0))
    model = model_type(mixing).eval()
    before = snapshot(model)
    method = relprop.get_method(name)(model)
    for _ in range(2):  # refused on every call, not only the one that checks
        with pytest.raises(UnsupportedLayerError, match=re.escape(f"Linear at 'mix'. It is applied to a {shape} tensor")):
            method.attribute(x, target=[0, 1])
    assert_unchanged(before, model)
    assert torch.isfinite(relprop.get_method(name)(model, layer="stem").attribute(x, target=[0, 1])).all()


class ConvAboveMixer(MixerNet):
    """stem → PositionMixer → a 3×3 conv → mean → fc: the last convolution lies above the attention (as
    EfficientViT's and GC-ResNet's heads do)."""

    def __init__(self) -> None:
        super().__init__("matmul")
        self.last = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.last(self.head(self.stem(x))).mean(dim=(2, 3)))


@pytest.mark.parametrize("name", ["gradcam", "gradcampp"])
def test_cam_refuses_a_default_layer_below_attention_and_takes_one_above_it(name):
    """The CAM layer is a model's last convolution: below a product of two feature maps it would explain
    the attention by gradients only, as a ViT's patch embedding would; above it, it is the usual CAM layer."""
    with pytest.raises(UnsupportedLayerError, match=r"PositionMixer at 'head\.0'\. It multiplies two feature maps"):
        relprop.get_method(name)(MixerNet("matmul").eval())
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for model, layer in ((ConvAboveMixer().eval(), None), (MixerNet("matmul").eval(), "stem")):
        method = relprop.get_method(name)(model, layer=layer)
        assert method.layer == (layer or "last")
        assert torch.isfinite(method.attribute(x, target=1)).all()


class ConvAboveTokenMLP(TokenMLP):
    """:class:`TokenMLP` whose mixed tokens are laid out as a map again and convolved (as Sequencer's and
    CoaT's stages end in a convolution): the default CAM layer, that convolution, lies above the token mixing."""

    def __init__(self) -> None:
        super().__init__("tokens")
        self.last = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).flatten(2)  # (N, C, L)
        mixed = (tokens + self.mix(tokens)).reshape(x.shape[0], 4, 2, 3)
        return self.fc(self.last(mixed).mean(dim=(2, 3)))


class MixedThenFunctionalConv(nn.Module):
    """stem → :class:`PositionMixer` → ``F.conv2d`` of the sum of the stem's and the mixer's maps → mean → fc:
    the last convolution is a function call on a sum, so no module produces the default CAM layer's input
    (CoaT: its last convolution is a positional encoding inside the attention)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.mixer, self.fc = nn.Conv2d(3, 4, 3, padding=1), PositionMixer(4, "matmul"), nn.Linear(4, 3)
        self.weight = nn.Parameter(torch.randn(4, 4, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.fc(nn.functional.conv2d(h + self.mixer(h), self.weight, padding=1).mean(dim=(2, 3)))


@pytest.mark.parametrize("name", ["gradcam", "gradcampp"])
def test_cam_takes_a_default_layer_above_token_mixing_and_names_attention_it_cannot_place(name):
    """Token mixing below the default CAM layer does not concern the CAM (before: refused as token mixing, as
    timm's ECA-HaloNeXt was for a relative position embedding below its last convolution); a default layer no
    module produces, in a model with attention, is refused naming the attention (before: "not produced by a
    module", as for timm's CoaT)."""
    x = torch.randn(2, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    method = relprop.get_method(name)(ConvAboveTokenMLP().eval())
    assert method.layer == "last" and torch.isfinite(method.attribute(x, target=[0, 1])).all()
    with pytest.raises(UnsupportedLayerError, match=r"PositionMixer at 'mixer'\. It multiplies two feature maps"):
        relprop.get_method(name)(MixedThenFunctionalConv().eval())


class ProjectsFeatures(nn.Module):
    """conv → ReLU → mean → the pooled features times a parameter matrix (a dense layer), written ``x @ W`` or
    ``F.linear(x, W.T)`` → fc; ``over="positions"``: the matrix multiplies the conv map's positions instead
    (a dense layer over the tokens of (N, C, HW), as a token mixer does)."""

    def __init__(self, how: str, over: str = "features") -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv, self.fc, self.how, self.over = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 3), how, over
        size = 16 if over == "positions" else 4
        self.mix = nn.Parameter(torch.randn(size, size, generator=torch.Generator().manual_seed(2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).flatten(2)
        h = h if self.over == "positions" else h.mean(-1)
        mixed = h @ self.mix if self.how == "matmul" else nn.functional.linear(h, self.mix.t())
        return self.fc(mixed.mean(-1) if self.over == "positions" else mixed)


@pytest.mark.parametrize("name", RELEVANCE_METHODS)
def test_a_product_of_a_feature_map_and_a_parameter_is_a_dense_layer_not_attention(name):
    """``x @ W`` with W a parameter is ``F.linear(x, W.T)``: the same maps (float64; before: refused as
    attention).  Over the positions of a map it is token mixing, refused on the first batch, however written."""
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    written, linear = (ProjectsFeatures(how).double().eval() for how in ("matmul", "linear"))
    expected = relprop.get_method(name)(linear).attribute(x, target=[0, 2])
    assert expected.abs().max() > 0
    torch.testing.assert_close(relprop.get_method(name)(written).attribute(x, target=[0, 2]), expected, rtol=0, atol=1e-12)
    for how in ("matmul", "linear"):
        with pytest.raises(UnsupportedLayerError, match=r"It is applied to a \(N, 4, 16\) tensor"):
            relprop.get_method(name)(ProjectsFeatures(how, "positions").double().eval()).attribute(x, target=[0, 2])


def test_gradient_methods_and_chosen_cam_layer_still_run_on_a_transformer():
    """Gradients are model-agnostic; a Grad-CAM layer the user names is the user's choice."""
    model = tiny_vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for method in (relprop.get_method("gradient")(model), relprop.get_method("gradcam")(model, layer="conv_proj")):
        result = method.attribute(x, target=1)
        assert result.shape == x.shape and torch.isfinite(result).all()


# ------------------------------------------------------------------------------------------ parallel wrappers


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def _small() -> nn.Module:
    torch.manual_seed(0)
    return SmallNet().eval()


X = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("name", relprop.list_methods())
def test_data_parallel_is_explained_through_its_module(name):
    model = _small()
    wrapped = nn.DataParallel(model)
    torch.manual_seed(1)  # SmoothGrad draws noise
    through_wrapper = relprop.get_method(name)(wrapped).attribute(X, target=[1, 2])
    torch.manual_seed(1)
    direct = relprop.get_method(name)(model).attribute(X, target=[1, 2])
    assert torch.equal(through_wrapper, direct)


def test_distributed_data_parallel_is_explained_through_its_module(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = _small()
        wrapped = nn.parallel.DistributedDataParallel(model)
        for name in ("rsp", "gradcam"):
            method = relprop.get_method(name)(wrapped)
            assert method.model is model
            assert torch.equal(method.attribute(X, target=0), relprop.get_method(name)(model).attribute(X, target=0))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", relprop.list_methods())
def test_compiled_model_is_explained_through_its_original_module(name):
    model = _small()
    compiled = torch.compile(model)  # compiles lazily, at its first call: relprop never calls it
    before = snapshot(model)
    torch.manual_seed(1)
    through_compiled = relprop.get_method(name)(compiled).attribute(X, target=[1, 2])
    assert_unchanged(before, model)
    torch.manual_seed(1)
    direct = relprop.get_method(name)(model).attribute(X, target=[1, 2])
    assert torch.equal(through_compiled, direct)


@pytest.mark.parametrize("name", RELEVANCE_METHODS)
def test_sync_batchnorm_model_is_explained_as_the_plain_one(name):
    """``nn.SyncBatchNorm.convert_sync_batchnorm`` (the recipe for multi-GPU training) gives an eval-mode
    BatchNorm like the one it replaced: the same rule, the same maps."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(-1.5, 1.5), m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model)).eval()
    assert isinstance(synced.bn1, nn.SyncBatchNorm)
    before = snapshot(synced)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = relprop.get_method(name)(model).attribute(x, target=[1, 3])
    assert torch.equal(relprop.get_method(name)(synced).attribute(x, target=[1, 3]), expected)
    assert_unchanged(before, synced)


@pytest.mark.parametrize("name", RELEVANCE_METHODS)
def test_batchnorm_with_batch_statistics_is_refused_with_the_reason(name):
    """Without running statistics an eval-mode BatchNorm normalises with the batch's statistics, so no map
    could be a sample's own: refused, naming the layer and the setting."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2),
    ).eval()
    with pytest.raises(UnsupportedLayerError, match=r"BatchNorm2d at '1'.*track_running_stats=False.*running statistics"):
        relprop.get_method(name)(model)


def test_nested_wrappers_are_all_removed():
    model = _small()
    for wrapped in (torch.compile(nn.DataParallel(model)), nn.DataParallel(torch.compile(model))):
        assert relprop.RSP(wrapped, seed_layer="features.2").model is model
        assert relprop.get_method("gradcam")(wrapped).model is model


def test_layer_paths_of_a_wrapped_model_are_those_of_its_module():
    method = relprop.RSP(nn.DataParallel(_small()), seed_layer="features.2")
    assert method.seed_layer == "features.2"


# ------------------------------------------------------------------------------------------ forward() signatures


class WithOptions(SmallNet):
    """A research-code forward: flags and optional arguments after the image, each with a default."""

    def forward(self, x: torch.Tensor, return_features: bool = False, scale=None, *, pool: str = "avg"):
        features = self.features(x)
        if features.shape[-1] > 64:  # a branch on the shape: traced once per input shape
            features = features[..., :64]
        pooled = nn.functional.adaptive_avg_pool2d(features, 1) if pool == "avg" else features.amax((2, 3), True)
        if return_features:
            return pooled
        return self.fc(torch.flatten(pooled if scale is None else pooled * scale, 1))


class NeedsTwo(SmallNet):
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return super().forward(x * mask)


@pytest.mark.parametrize("name", relprop.list_methods())
def test_forward_parameters_with_defaults_take_them_as_model_x_does(name):
    plain = _small()
    model = WithOptions().eval()
    model.load_state_dict(plain.state_dict())
    state = snapshot(model)
    torch.manual_seed(1)  # SmoothGrad draws noise
    expected = relprop.get_method(name)(plain).attribute(X, target=[1, 2])
    torch.manual_seed(1)
    assert torch.equal(relprop.get_method(name)(model).attribute(X, target=[1, 2]), expected)
    assert_unchanged(state, model)


@pytest.mark.parametrize("name", relprop.list_methods())
def test_forward_that_needs_a_second_input_is_refused_when_the_method_is_made(name):
    with pytest.raises(ModelError, match=r"called as model\(x\) with one tensor input; NeedsTwo.forward also requires 'mask'"):
        relprop.get_method(name)(NeedsTwo().eval())


# ------------------------------------------------------------------------------------------ seeds with a bypass


class MirrorAveraged(nn.Module):
    """The average of a network's logits for the image and its mirror image (test-time augmentation)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.net(x) + self.net(x.flip(3))) / 2


class EarlyFeaturesHead(nn.Module):
    """A classifier that reads the pooled early feature map besides the last one."""

    def __init__(self) -> None:
        super().__init__()
        self.early = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.late = nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU())
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        early = self.early(x)
        return self.fc(torch.cat([early.mean((2, 3)), self.late(early).mean((2, 3))], 1))


@pytest.mark.parametrize("name", ["rsp", "ae"])
@pytest.mark.parametrize("model, seed, around", [
    (lambda: MirrorAveraged(_small()), "net.features", "net.features.0 (Conv2d)"),
    (lambda: EarlyFeaturesHead(), "late", "mean (Tensor.mean)"),
], ids=["test-time flip", "early features in the head"])
def test_a_seed_that_evidence_can_bypass_is_warned_about_naming_the_bypass(name, model, seed, around):
    """The map of a feature-map seed holds only the evidence that passes the seed (here: one of the two calls)."""
    with pytest.warns(UserWarning) as caught:
        method = relprop.get_method(name)(model().eval())
    bypass_path, bypass_type = around.split(" (")
    messages = [str(w.message) for w in caught]
    assert any(f"starts at '{seed}', but the logits also depend on the input through ops that do not pass through it "
               f"(from '{bypass_path}', {bypass_type[:-1]})" in m for m in messages), messages
    assert method.seed_layer == seed


@pytest.mark.parametrize("name", ["rsp", "ae", "lrp_epsilon"])
def test_a_seed_on_every_path_is_not_warned_about(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        relprop.get_method(name)(_small())
        relprop.get_method(name)(torchvision.models.resnet18().eval())
        relprop.get_method(name)(torchvision.models.densenet121().eval())


# ------------------------------------------------------------------------------------------ TorchScript

SCRIPTED = {
    "script": lambda model: torch.jit.script(model),
    "trace": lambda model: torch.jit.trace(model, X),
    "scripted part": lambda model: nn.Sequential(torch.jit.script(model.features), nn.AdaptiveAvgPool2d(1),
                                                 nn.Flatten(), model.fc),
}
LAYERWISE_METHODS = [name for name in relprop.list_methods() if name not in
                     ("gradient", "gradient_x_input", "integrated_gradients", "smoothgrad")]


@pytest.mark.parametrize("how", SCRIPTED)
@pytest.mark.parametrize("name", LAYERWISE_METHODS)
def test_torchscript_model_is_refused_by_layerwise_methods_with_the_fix(name, how):
    """Guided Backprop's ReLU hooks never run inside TorchScript: it returned the plain gradient, silently."""
    scripted = SCRIPTED[how](_small())
    with pytest.raises(ModelError) as info:
        relprop.get_method(name)(scripted)
    message = str(info.value)
    assert "TorchScript module" in message and "load_state_dict(scripted.state_dict())" in message
    assert ("'0' of Sequential is" if how == "scripted part" else "SmallNet is") in message


@pytest.mark.parametrize("name", ["gradient", "gradient_x_input", "integrated_gradients"])
def test_autograd_methods_explain_a_torchscript_model_as_the_module(name):
    model = _small()
    expected = relprop.get_method(name)(model).attribute(X, target=[1, 2])
    for how in ("script", "trace"):
        result = relprop.get_method(name)(SCRIPTED[how](model)).attribute(X, target=[1, 2])
        torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ normalisation in the model

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class HandNormalize(nn.Module):
    """``(x - mean) / std`` per channel, written out."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@pytest.mark.parametrize("normalize", [T.Normalize, v2.Normalize], ids=["transforms", "transforms.v2"])
@pytest.mark.parametrize("name", relprop.list_methods())
def test_torchvision_normalize_in_front_of_the_model_is_the_affine_map_it_computes(name, normalize):
    """``nn.Sequential(T.Normalize(mean, std), net)``: every method explains it as the same net behind the
    written-out map (torchvision's F.normalize refuses a traced value, so it is kept as one call)."""
    net = _small()
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(4))
    model = nn.Sequential(normalize(MEAN, STD), net).eval()
    before = snapshot(model)
    torch.manual_seed(1)
    got = relprop.get_method(name)(model).attribute(x, target=[1, 2])
    assert_unchanged(before, model)
    torch.manual_seed(1)
    expected = relprop.get_method(name)(nn.Sequential(HandNormalize(), net).eval()).attribute(x, target=[1, 2])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6 * float(expected.abs().max()))


def test_lrp_epsilon_behind_normalize_is_weight_times_normalised_input():
    """f(x) = Σ w ⊙ (x - m)/s (one full-size kernel): LRP-ε gives R = w ⊙ (x - m)/s · z/(z + ε sign z)."""
    conv = nn.Conv2d(3, 1, 4, bias=False).double()
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    model = nn.Sequential(T.Normalize(MEAN, STD), conv, nn.Flatten()).eval()
    a = (x - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    contributions = conv.weight * a
    z = contributions.sum()
    expected = contributions * z / (z + 1e-6 * z.sign())
    got = relprop.LRPEpsilon(model, epsilon=1e-6).attribute(x, target=0)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-14)


def test_normalize_in_front_of_a_model_traced_per_shape():
    """The per-shape tracer (a model whose forward() branches on the input's size) keeps it as one call too."""
    from test_engine import ShapeBranchNet

    model = ShapeBranchNet().eval()
    wrapped = nn.Sequential(T.Normalize(MEAN, STD), model).eval()
    hand = nn.Sequential(HandNormalize(), model).eval()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(relprop.RSP(wrapped).attribute(x, target=1), relprop.RSP(hand).attribute(x, target=1))


# ----------------------------------------------------------------------------- memory-efficient DenseNet


@pytest.mark.parametrize("name", ["rsp", "ae", "rap", "lrp_composite", "gradcam"])
def test_memory_efficient_densenet_is_explained_as_the_plain_one(name):
    """``DenseNet(memory_efficient=True)`` branches on ``requires_grad`` to checkpoint; traced as at inference
    it takes the plain branch, the same function: the maps equal those of the plain DenseNet."""
    torch.manual_seed(0)
    small = dict(growth_rate=4, block_config=(2, 2), num_init_features=8, num_classes=5)
    efficient = torchvision.models.DenseNet(memory_efficient=True, **small).eval()
    plain = torchvision.models.DenseNet(**small).eval()
    plain.load_state_dict(efficient.state_dict())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    before = snapshot(efficient)
    got = relprop.get_method(name)(efficient).attribute(x, target=[1, 3])
    assert_unchanged(before, efficient)
    assert torch.equal(got, relprop.get_method(name)(plain).attribute(x, target=[1, 3]))


# --------------------------------------------------------------------------------------- softmax at the output


class EndsInSoftmax(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.net, self.how, self.softmax = _small(), how, nn.Softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        if self.how == "module":
            return self.softmax(logits)
        if self.how == "function":
            return nn.functional.log_softmax(logits, dim=1)
        return logits.softmax(dim=1)


@pytest.mark.parametrize("how", ["module", "function", "method"])
@pytest.mark.parametrize("name", ["lrp_composite", "lrp_epsilon", "rap"])
def test_softmax_at_the_output_is_refused_with_the_fix(name, how):
    with pytest.raises(UnsupportedLayerError, match=r"softmax.*without its final softmax.*model\[:-1\]"):
        relprop.get_method(name)(EndsInSoftmax(how).eval())


class WeightedPoolNet(nn.Module):
    """A conv net whose global pooling is a softmax-weighted sum over positions (attention pooling)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.score, self.fc = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 1, 1), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.conv(x))
        weights = torch.softmax(self.score(a).flatten(2), dim=-1)  # (N, 1, HW)
        return self.fc((a.flatten(2) * weights).sum(-1))


def test_softmax_inside_the_network_is_refused_as_weighting_not_as_an_output_softmax():
    with pytest.raises(UnsupportedLayerError, match=r"softmax inside the network weighs features") as info:
        relprop.LRPEpsilon(WeightedPoolNet().eval())
    assert "model[:-1]" not in str(info.value)


class PositionalEncoding(nn.Module):
    """Adds a learned projection of a fixed grid: a module whose input holds no activation."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("grid", torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(8)))
        self.proj = nn.Conv2d(2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(self.grid)


def test_a_module_fed_by_constants_only_is_a_constant_of_the_graph():
    """x + proj(grid): the projection reads no activation, so it is a constant added to x, and relevance
    passes the addition unchanged: LRP-ε gives R = (x + p) ⊙ w · z/(z + ε sign z) (before: IndexError)."""
    torch.manual_seed(0)
    encode, conv = PositionalEncoding().double(), nn.Conv2d(3, 1, 4, bias=False).double()
    model = nn.Sequential(encode, conv, nn.Flatten()).eval()
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        contributions = (x + encode.proj(encode.grid)) * conv.weight
    z = contributions.sum()
    expected = contributions * z / (z + 1e-6 * z.sign())
    torch.testing.assert_close(relprop.LRPEpsilon(model).attribute(x, target=0), expected, rtol=0, atol=1e-14)


# ---------------------------------------------------------------------------------------------- inference mode


@pytest.mark.parametrize("name", ["rsp", "lrp_composite", "gradient", "gradcam", "integrated_gradients"])
def test_model_made_under_inference_mode_is_refused_with_the_fix(name):
    with torch.inference_mode():
        model = _small()
    with pytest.raises(ModelError, match=r"inference_mode\(\).*load_state_dict") as info:
        relprop.get_method(name)(model)
    assert "parameter 'features.0.weight'" in str(info.value)
    fixed = SmallNet().eval()
    fixed.load_state_dict(model.state_dict())  # the fix the message gives
    assert torch.isfinite(relprop.get_method(name)(fixed).attribute(X, target=0)).all()


class PlainKernel(nn.Module):
    """A convolution whose kernel is a plain tensor attribute (neither parameter nor buffer)."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel = torch.ones(2, 3, 3, 3) / 27
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(nn.functional.conv2d(x, self.kernel, padding=1)).mean(dim=(2, 3)))


@pytest.mark.parametrize("name", ["rsp", "gradient"])
def test_plain_tensor_attribute_made_under_inference_mode_is_named(name):
    with torch.inference_mode():
        model = PlainKernel().eval()
    with pytest.raises(ModelError, match=r"tensor attribute 'kernel'.*inference_mode"):
        relprop.get_method(name)(model)
