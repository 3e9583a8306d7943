"""Hygiene: a call — successful or raising mid-way — leaves no trace on the model, the input or
torch's global state, for every registered method (and RSP / AE in reference mode).

Extends tests/test_api.py (AE / RSP after one injected exception) with: every method, exceptions
in the forward pass, in autograd and in the relevance walk, user hooks / frozen parameters /
existing ``.grad`` / mixed training flags on the model, the input's values, version counter and
autograd flags, and the global state (grad mode, default dtype, deterministic algorithms, number
of threads, random state, anomaly mode, warning filters).
"""

from __future__ import annotations

import warnings
from typing import Iterator

import pytest
import torch
import torch.nn as nn

import relprop
from model_state import assert_unchanged, snapshot
from reliability import METHOD_NAMES, construct, single_thread, small_cnn, small_input  # noqa: F401


class Boom(RuntimeError):
    """The exception injected into a call."""


class Tripwires:
    """User hooks on a small CNN that raise :class:`Boom` when armed.

    ``forward``: a forward hook on the last convolution (after the first layers have run);
    ``gradient``: a tensor hook on the global pooling's output, hit by every backward pass from the
    logits (autograd methods, the RSP / AE seed gradient); ``walk``: the relevance walk's max-pooling
    rule (propagation methods).
    """

    def __init__(self, model: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed: set[str] = set()
        self._monkeypatch = monkeypatch
        model.features[4][0].register_forward_hook(self._forward)
        model.pool.register_forward_hook(self._pool)

    def _forward(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if "forward" in self.armed:
            raise Boom("boom in the forward pass")

    def _pool(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if "gradient" in self.armed and output.requires_grad:
            output.register_hook(self._raise_in_backward)

    @staticmethod
    def _raise_in_backward(grad: torch.Tensor) -> None:
        raise Boom("boom in the backward pass")

    def arm(self, where: str) -> None:
        self.armed = {where}
        if where == "walk":
            self.armed.add("gradient")  # methods without a walk fail in their backward pass

            def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
                raise Boom("boom in the relevance walk")

            self._monkeypatch.setattr("relprop.engine.standard.maxpool_rule", broken)

    def disarm(self) -> None:
        self.armed = set()
        self._monkeypatch.undo()


def user_model() -> nn.Module:
    """A small CNN as a user may hand it over: user hooks, a frozen layer, leftover ``.grad``,
    mixed training flags."""
    model = small_cnn()
    model.features[0][0].register_forward_pre_hook(lambda module, args: None)
    model.fc.register_full_backward_hook(lambda module, grad_in, grad_out: None)
    model.features[0][0].weight.requires_grad_(False)
    model.fc.weight.grad = torch.full_like(model.fc.weight, 0.5)
    model.features[2].train()  # one submodule in training mode: explained in eval mode, flag restored
    return model


def extended_snapshot(model: nn.Module) -> dict:
    """What tests/model_state.py does not cover: parameter objects and their ``.grad``, plain module attributes."""
    return {
        "parameter_ids": {k: id(p) for k, p in model.named_parameters()},
        "grads": {k: (id(p.grad), None if p.grad is None else p.grad.clone()) for k, p in model.named_parameters()},
        "attributes": {
            name: {k: v for k, v in vars(m).items() if isinstance(v, (bool, int, float, str, tuple, type(None)))}
            for name, m in model.named_modules()
        },
        "attribute_names": {name: sorted(vars(m)) for name, m in model.named_modules()},
    }


def assert_extended_unchanged(before: dict, model: nn.Module) -> None:
    after = extended_snapshot(model)
    assert before["parameter_ids"] == after["parameter_ids"], "parameter objects replaced"
    for k, (grad_id, grad) in before["grads"].items():
        assert after["grads"][k][0] == grad_id, f".grad of {k} replaced"
        if grad is not None:
            assert torch.equal(grad, after["grads"][k][1]), f".grad of {k} changed"
    assert before["attribute_names"] == after["attribute_names"], "module attributes added or removed"
    assert before["attributes"] == after["attributes"], "module attributes changed"


def global_state() -> dict:
    """Process-wide torch (and warnings) state a call must not change."""
    module = torch.nn.modules.module
    return {
        "grad_enabled": torch.is_grad_enabled(),
        "inference_mode": torch.is_inference_mode_enabled(),
        "default_dtype": torch.get_default_dtype(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "threads": torch.get_num_threads(),
        "rng": torch.get_rng_state(),
        "anomaly": torch.is_anomaly_enabled(),
        "warning_filters": list(warnings.filters),
        "global_module_hooks": [
            len(getattr(module, name)) for name in dir(module)
            if name.startswith("_global_") and name.endswith("hooks")
        ],
    }


def assert_global_state(before: dict) -> None:
    after = global_state()
    assert torch.equal(before.pop("rng"), after.pop("rng")), "global random state changed"
    assert before == after


@pytest.fixture
def model(monkeypatch) -> Iterator[tuple[nn.Module, Tripwires]]:
    net = user_model()
    yield net, Tripwires(net, monkeypatch)


def _call(method, x: torch.Tensor, **kwargs) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the training-mode warning (tested in test_validation.py)
        return method.attribute(x, **kwargs)


SCENARIOS = {
    # id: (arm which tripwire, target, expected exception or None)
    "success": (None, None, None),
    "raise in forward": ("forward", None, Boom),
    "raise after forward: bad target": (None, 99, relprop.InputError),
    "raise mid-way: backward / walk": ("walk", None, Boom),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_model_input_and_global_state_untouched(name, scenario, model):
    net, tripwires = model
    method = construct(name, net)
    arm, target, error = SCENARIOS[scenario]
    x = small_input(2)
    x_copy, x_version = x.clone(), x._version
    before, extended = snapshot(net), extended_snapshot(net)
    state = global_state()
    if arm:
        tripwires.arm(arm)
    if error is None:
        result = _call(method, x, target=target)
        assert result.shape == x.shape and not result.requires_grad and result.grad_fn is None
    else:
        with pytest.raises(error):
            _call(method, x, target=target)
    assert_global_state(state)
    assert_unchanged(before, net)
    assert_extended_unchanged(extended, net)
    assert torch.equal(x, x_copy) and x._version == x_version, "the input tensor was modified"
    assert not x.requires_grad and x.grad is None


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_input_that_requires_grad_gets_no_grad(name):
    """An input that is a leaf requiring grad (a user's optimisation variable) keeps ``.grad`` None
    and its values, and the result is detached from it."""
    net = small_cnn()
    x = small_input(2).requires_grad_(True)
    x_copy = x.detach().clone()
    result = construct(name, net).attribute(x)
    assert x.grad is None and x.requires_grad and torch.equal(x.detach(), x_copy)
    assert not result.requires_grad and result.grad_fn is None


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_no_grad_caller_and_global_flags_survive(name):
    """Called inside ``torch.no_grad()`` with deterministic algorithms on and float64 as the default
    dtype (a float32 model and input): the same float32 result as in a plain call, and every flag
    as the caller set it."""
    net = small_cnn()
    x = small_input(2)
    method = construct(name, net)
    expected = method.attribute(x)
    deterministic = torch.are_deterministic_algorithms_enabled()
    dtype = torch.get_default_dtype()
    try:
        torch.use_deterministic_algorithms(True)
        torch.set_default_dtype(torch.float64)
        with torch.no_grad():
            state = global_state()
            result = method.attribute(x)
            assert_global_state(state)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_default_dtype(dtype)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_repeated_calls_after_a_failure_give_the_same_result(name, model):
    """A call that raised leaves nothing behind that changes the next call's result."""
    net, tripwires = model
    method = construct(name, net)
    x = small_input(2)
    expected = _call(method, x)
    tripwires.arm("walk")
    with pytest.raises(Boom):
        _call(method, x)
    tripwires.disarm()
    assert torch.equal(_call(method, x), expected)
