"""Hostile inputs: every registered method (and RSP / AE in reference mode) rejects what it cannot
explain with a clear error — what was wrong, what was expected, what was given — before any work.

Extends tests/test_api.py (which checks AE / RSP on a few of these) to every method and to the
rest of issue 7's validation list.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torch.nn as nn

import relprop
from relprop.methods.propagation import PropagationMethod
from model_state import assert_unchanged, snapshot
from reliability import (  # noqa: F401  (single_thread: an autouse fixture)
    METHOD_FACTORIES, METHOD_NAMES, construct, single_thread, small_cnn, small_input,
)


@pytest.fixture(scope="module")
def net() -> nn.Module:
    return small_cnn()


@pytest.fixture(scope="module")
def methods(net) -> dict[str, object]:
    return {name: construct(name, net) for name in METHOD_NAMES}


@pytest.fixture
def x() -> torch.Tensor:
    return small_input(3)


def test_registry_holds_the_core_methods():
    """The parametrisations below cover whatever is registered; RSP and AE at least must be."""
    assert {"rsp", "ae"} <= set(relprop.list_methods())


# ------------------------------------------------------------------------------------- the input x

BAD_INPUTS = {
    # id: (make the bad input from a good (3, 3, 16, 16) batch, fragments the message must contain)
    "numpy array": (lambda x: x.numpy(), ["torch.Tensor", "ndarray"]),
    "nested list": (lambda x: x.tolist(), ["torch.Tensor", "list"]),
    "rank 3": (lambda x: x[0], ["4 dimensions", "(3, 16, 16)", "unsqueeze"]),
    "rank 5": (lambda x: x[None], ["4 dimensions", "(1, 3, 3, 16, 16)"]),
    "empty batch": (lambda x: x[:0], ["empty", "N = 0"]),
    "int64": (lambda x: x.long(), ["floating-point", "torch.int64"]),
    "uint8": (lambda x: (x.abs() * 10).to(torch.uint8), ["floating-point", "torch.uint8"]),
    "bool": (lambda x: x > 0, ["floating-point", "torch.bool"]),
    "complex": (lambda x: x.to(torch.complex64), ["floating-point", "torch.complex64"]),
    "nan": (lambda x: x.index_put((torch.tensor([1]), torch.tensor([0]), torch.tensor([4]), torch.tensor([5])),
                                  torch.tensor(float("nan"))), ["NaN"]),
    "+inf": (lambda x: x.index_fill(0, torch.tensor([2]), float("inf")), ["Inf"]),
    "-inf": (lambda x: x.index_fill(3, torch.tensor([0]), float("-inf")), ["Inf"]),
    "2 channels": (lambda x: x[:, :2], ["2 channels", "expects 3"]),
    "4 channels": (lambda x: torch.cat([x, x[:, :1]], 1), ["4 channels", "expects 3"]),
    "channels last": (lambda x: x.permute(0, 2, 3, 1).contiguous(), ["16 channels", "channels-last", "permute(0, 3, 1, 2)"]),
    "float64 vs float32 model": (lambda x: x.double(), ["torch.float64", "torch.float32"]),
    "meta device": (lambda x: x.to("meta"), ["meta"]),
    "sparse": (lambda x: x.to_sparse(), ["sparse", "to_dense"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_bad_input_is_rejected_with_a_clear_message(name, case, methods, x):
    make_bad, fragments = BAD_INPUTS[case]
    with pytest.raises(relprop.InputError) as info:
        methods[name].attribute(make_bad(x))
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{name}: {message!r} does not mention {fragment!r}"


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_inference_mode_is_rejected_with_a_clear_message(name, methods, x):
    """``torch.inference_mode()`` disables autograd, which every method needs (RSP / AE for the seed
    gradient, the LRP family for the pooling adjoints): say so instead of a bare autograd error."""
    with torch.inference_mode(), pytest.raises(relprop.InputError, match="inference_mode"):
        methods[name].attribute(x)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_inference_tensor_input_is_explained(name, methods, x):
    """A tensor created under inference mode, used outside it, is an ordinary input."""
    with torch.inference_mode():
        frozen = x.clone()
    torch.testing.assert_close(methods[name].attribute(frozen), methods[name].attribute(x), rtol=0, atol=0)


# ------------------------------------------------------------------------------------- the target

N = 3  # samples in the batch of the ``x`` fixture

BAD_TARGETS = {
    # id: (bad target for a batch of N, fragments the message must contain)
    "too large": (5, ["5", "out of range", "5 classes"]),
    "negative": (-1, ["-1", "out of range"]),
    "beyond int64": (2**70, ["out of range"]),
    "list, one in range, one not": ([0, 1, 7], ["7", "out of range"]),
    "list too short": ([0] * (N - 1), [f"{N - 1} entries", f"{N} samples"]),
    "list too long": ([0] * (N + 1), [f"{N + 1} entries", f"{N} samples"]),
    "tensor too short": (torch.zeros(N - 1, dtype=torch.long), ["one entry per sample", f"({N - 1},)"]),
    "2-d tensor": (torch.zeros(N, 2, dtype=torch.long), ["one entry per sample", f"({N}, 2)"]),
    "float tensor": (torch.zeros(N), ["integer", "torch.float32"]),
    "float": (1.0, ["int", "float"]),
    "string": ("cat", ["int", "str"]),
    "bool": (True, ["bool"]),
    "None inside a list": ([0] + [None] * (N - 1), ["NoneType"]),
    "set (unordered)": (set(range(N)), ["set", "order"]),
    "dict (unordered)": ({i: 0 for i in range(N)}, ["dict", "order"]),
    "on the meta device": (torch.zeros(N, dtype=torch.long, device="meta"), ["meta", "cpu", ".to("]),
}


@pytest.mark.parametrize("case", sorted(BAD_TARGETS))
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_bad_target_is_rejected_with_a_clear_message(name, case, methods, x):
    target, fragments = BAD_TARGETS[case]
    assert len(x) == N
    with pytest.raises(relprop.InputError) as info:
        methods[name].attribute(x, target=target)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{name}: {message!r} does not mention {fragment!r}"


@pytest.mark.parametrize("name", ["rsp", "ae"])
def test_numpy_integer_targets_are_ints(name, methods, x):
    """Labels read with numpy (``np.int64`` scalars, integer arrays) are class indices like Python ints."""
    method = methods[name]
    expected = method.attribute(x, target=2)
    assert torch.equal(method.attribute(x, target=np.int64(2)), expected)
    assert torch.equal(method.attribute(x, target=np.array([2] * len(x))), expected)
    assert torch.equal(method.attribute(x, target=[np.int32(2)] * len(x)), expected)


# ------------------------------------------------------------------------------------- the model


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_training_model_is_explained_in_eval_mode_with_a_warning(name, net, x):
    """Documented behaviour (README, model_state.evaluation_mode): a model in training mode — or with
    any submodule in training mode — is explained in eval mode (running BatchNorm statistics, no
    dropout) with a warning that names it and points at the caller's line; every module's flag is
    restored afterwards."""
    method = construct(name, net)
    expected = method.attribute(x)
    for make_training, message in [(net, "BlockCNN is in training mode"),
                                   (net.features[0][1], r"'features\.0\.1' of BlockCNN are in training mode")]:
        make_training.train()
        try:
            before = snapshot(net)
            with pytest.warns(UserWarning, match=message) as caught:
                attr = method.attribute(x)
            assert_unchanged(before, net)
        finally:
            net.eval()
        assert torch.equal(attr, expected)
        assert [w.filename for w in caught] == [__file__]


class Wave(nn.Module):
    """``sin(x)``: no relevance rule exists for it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


def _unsupported_op_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(3, 4, 3, padding=1))
    model.add_module("wave", Wave())
    model.add_module("conv2", nn.Conv2d(4, 4, 3, padding=1))
    model.add_module("relu", nn.ReLU())
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", nn.Flatten())
    model.add_module("fc", nn.Linear(4, 3))
    return model.eval()


def _count_real_forward_calls(model: nn.Module) -> list[int]:
    """Forward pre-hooks on every module counting calls with real tensors (fx tracing passes Proxies)."""
    calls = [0]

    def count(module: nn.Module, args: tuple) -> None:
        if any(isinstance(a, torch.Tensor) for a in args):
            calls[0] += 1

    for module in model.modules():
        module.register_forward_pre_hook(count)
    return calls


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_layer_without_a_rule_is_named_before_any_work(name):
    """Propagation methods raise UnsupportedLayerError naming the module path and type when they are
    constructed, without running the model; autograd methods need no rule and explain the model."""
    model = _unsupported_op_model()
    calls = _count_real_forward_calls(model)
    before = snapshot(model)
    if issubclass(_method_class(name), PropagationMethod):
        with pytest.raises(relprop.UnsupportedLayerError) as info:
            construct(name, model)
        assert info.value.path.startswith("wave"), info.value.path
        assert f"'{info.value.path}'" in str(info.value) and info.value.kind in str(info.value)
        assert calls[0] == 0, "the model was run before the unsupported layer was reported"
    else:
        attr = construct(name, model).attribute(small_input(2))
        assert attr.shape == (2, 3, 16, 16) and torch.isfinite(attr).all()
    assert_unchanged(before, model)


def _method_class(name: str) -> type:
    made = METHOD_FACTORIES[name]
    return made if isinstance(made, type) else type(made(small_cnn()))


def _layer_parameter(name: str) -> str | None:
    """The constructor argument naming a layer (``seed_layer`` for RSP/AE, ``layer`` for CAMs), if any."""
    parameters = inspect.signature(_method_class(name)).parameters
    return next((p for p in ("seed_layer", "layer") if p in parameters), None)


LAYER_METHODS = [name for name in METHOD_NAMES if _layer_parameter(name)]


def test_layer_choosing_methods_are_found():
    assert {"rsp", "ae", "rsp-reference", "ae-reference"} <= set(LAYER_METHODS)


@pytest.mark.parametrize("name", LAYER_METHODS)
def test_unknown_seed_layer_lists_close_names(name, net):
    parameter = _layer_parameter(name)
    kwargs = {parameter: "featurs.1"}
    cls = _method_class(name)
    if name.endswith("-reference"):
        kwargs["mode"] = "reference"
    with pytest.raises(ValueError, match=rf"^{parameter} 'featurs\.1' names no module.*Did you mean: features\.1"):
        cls(net, **kwargs)


@pytest.mark.parametrize("name", LAYER_METHODS)
def test_seed_layer_of_the_wrong_type_is_a_clear_error(name, net):
    cls = _method_class(name)
    parameter = _layer_parameter(name)
    with pytest.raises((TypeError, ValueError), match=rf"^{parameter} must be a module path .*str"):
        cls(net, **{parameter: 3})


BAD_ARGUMENTS = [
    # (method, constructor arguments, exception, message): nothing is converted or clamped silently
    ("ae", {"ratio": "2"}, TypeError, r"ratio must be a positive finite number \(the paper uses 1 <= r <= 2\); got str '2'"),
    ("ae", {"ratio": True}, TypeError, "ratio must be a positive finite number .*got bool"),
    ("ae", {"ratio": None}, TypeError, "ratio must be a positive finite number .*got NoneType"),
    ("ae", {"ratio": 0}, ValueError, "ratio must be a positive finite number .*got 0.0"),
    ("lrp_epsilon", {"epsilon": "1e-3"}, TypeError, "epsilon must be a finite number >= 0; got str '1e-3'"),
    ("lrp_gamma", {"gamma": "x"}, TypeError, "gamma must be a finite number >= 0; got str 'x'"),
    ("rsp", {"allow_tf32": "no"}, ValueError, "allow_tf32 must be True or False; got 'no'"),
    ("lrp_zplus", {"allow_tf32": 1}, ValueError, "allow_tf32 must be True or False; got 1"),
    ("gradient", {"absolute": "no"}, ValueError, "absolute must be True or False; got 'no'"),
    ("smoothgrad", {"absolute": 0}, ValueError, "absolute must be True or False; got 0"),
    ("smoothgrad", {"n_samples": 2.5}, TypeError, "n_samples must be an integer >= 1; got float 2.5"),
    ("smoothgrad", {"noise_level": -1}, ValueError, "noise_level must be a finite number >= 0; got -1.0"),
    ("smoothgrad", {"seed": -1}, ValueError, "seed must be an integer >= 0; got -1"),
    ("smoothgrad", {"samples_per_pass": 0}, ValueError, "samples_per_pass must be an integer >= 1; got 0"),
    ("integrated_gradients", {"n_steps": 0}, ValueError, "n_steps must be an integer >= 1; got 0"),
    ("integrated_gradients", {"steps_per_pass": "8"}, TypeError, "steps_per_pass must be an integer >= 1; got str"),
    ("integrated_gradients", {"method": "simpson"}, ValueError, "method must be one of 'gausslegendre', 'riemann_left'"),
    ("integrated_gradients", {"baseline": "black"}, TypeError, "baseline must be a float or a tensor broadcastable to x"),
    ("rsp", {"input_bounds": (1.0, -1.0)}, ValueError, r"input_bounds must be \(low, high\) with low <= high"),
    ("rap", {"input_bounds": 3.0}, TypeError, r"input_bounds must be None or \(low, high\), each a float or one value"),
    ("lrp_composite", {"input_bounds": ([0.0] * 3, [1.0] * 2)}, ValueError, "input_bounds: low has 3 channel values but high has 2"),
    ("ae", {"input_bounds": (float("nan"), 1.0)}, ValueError, "input_bounds must be finite"),
]


@pytest.mark.parametrize(("name", "kwargs", "error", "message"), BAD_ARGUMENTS,
                         ids=[f"{name}-{next(iter(kwargs))}={next(iter(kwargs.values()))!r}" for name, kwargs, *_ in BAD_ARGUMENTS])
def test_bad_constructor_arguments_are_refused_naming_them(name, kwargs, error, message, net):
    with pytest.raises(error, match=f"^{message}"):
        relprop.get_method(name)(net, **kwargs)


def test_integrated_gradients_baseline_broadcasts_to_the_batch_as_documented(net):
    x = small_input(2)
    expected = relprop.IntegratedGradients(net, baseline=0.5, n_steps=4).attribute(x, target=1)
    for shape in [(), (3, 1, 1), x.shape[1:], (1, *x.shape[1:]), x.shape]:
        baseline = torch.full(shape, 0.5, dtype=x.dtype)
        torch.testing.assert_close(relprop.IntegratedGradients(net, baseline=baseline, n_steps=4).attribute(x, target=1),
                                   expected, rtol=0, atol=0)
    with pytest.raises(relprop.InputError, match=r"baseline of shape \(4, 1, 1\) does not broadcast to x's shape"):
        relprop.IntegratedGradients(net, baseline=torch.zeros(4, 1, 1)).attribute(x, target=1)


def test_per_channel_input_bounds_must_match_the_channels(net):
    with pytest.raises(relprop.InputError, match="input_bounds has 4 values per bound but x has 3 channels"):
        relprop.LRPComposite(net, input_bounds=([0.0] * 4, [1.0] * 4)).attribute(small_input(1), target=1)


@pytest.mark.parametrize("name", ["rsp", "ae"])
def test_seed_layer_without_a_feature_map_is_rejected_before_any_work(name):
    """``flatten`` outputs (N, C): no (N, C, h, w) map to seed from — say so at construction."""
    model = small_cnn()
    calls = _count_real_forward_calls(model)
    with pytest.raises(ValueError, match="flatten"):
        _method_class(name)(model, seed_layer="flatten")
    assert calls[0] == 0


class _TupleOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = small_cnn()

    def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
        return self.inner(x), x.mean()


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_model_not_returning_logits_is_a_clear_error(name):
    """A model returning a tuple is not a classifier relprop can explain: a RelpropError saying what
    was expected, not an AttributeError from deep inside."""
    with pytest.raises(relprop.RelpropError, match=r"\(N, classes\)"):
        construct(name, _TupleOutput().eval()).attribute(small_input(2))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_hooks_on_the_model_itself_are_honoured_or_refused(name):
    """A forward hook on the model object changes what ``model(x)`` returns (here: the class order is
    reversed). A method must explain the model as it runs — top-1 targets from the hooked logits —
    or refuse it with a RelpropError; never explain a different function silently."""
    net = small_cnn()
    x = small_input(4)
    plain_top = net(x).argmax(1)
    net.register_forward_hook(lambda module, args, output: output.flip(1))
    with torch.no_grad():
        top = net(x).argmax(1)
    assert not torch.equal(top, plain_top), "the hook must change the top-1 class for this test to mean anything"
    try:  # refusing at construction or at the call are both fine (hooks can be added in between)
        method = construct(name, net)
        by_default = method.attribute(x)
    except relprop.RelpropError:
        return
    assert torch.equal(by_default, method.attribute(x, target=top))
