"""``check_model_tensors`` / ``check_model_output``: models relprop cannot explain are refused before any
work (issue 16: inference-mode models, models returning a tuple or dict, NaN weights)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import relprop
from relprop.errors import ModelError
from relprop.model_state import check_model_output, check_model_tensors


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 5)).eval()


class TupleOutput(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.body, self.kind = _net(), kind

    def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
        logits = self.body(x)
        return (logits, logits.detach()) if self.kind == "tuple" else {"out": logits}


def test_a_plain_classifier_passes_and_its_class_count_is_returned() -> None:
    model = _net()
    check_model_tensors(model)
    assert check_model_output(model, torch.zeros(3, 3, 8, 8)) == 5


def test_a_model_built_under_inference_mode_is_refused() -> None:
    with torch.inference_mode():
        model = _net()
    with pytest.raises(ModelError, match=r"parameter '0.weight'.*torch.inference_mode\(\)"):
        check_model_tensors(model)


def test_an_inference_buffer_in_a_normal_model_is_refused() -> None:
    model = _net()
    with torch.inference_mode():
        model[1].running_mean = torch.zeros(4)  # e.g. statistics recomputed under inference_mode
    with pytest.raises(ModelError, match="buffer '1.running_mean'"):
        check_model_tensors(model)


OUTPUT_REFUSALS = {
    "tuple": r"TupleOutput returns a tuple of 2, not a tensor of logits \(N, classes\)\. Explain a module that "
             r"returns the logits: a wrapper whose forward\(x\) returns model\(x\)\[0\]\.",
    "dict": r"TupleOutput returns a dict \(keys 'out'\), not a tensor of logits .* returns model\(x\)\['out'\]\.",
}


@pytest.mark.parametrize("kind", sorted(OUTPUT_REFUSALS))
def test_a_model_returning_a_tuple_or_dict_is_refused(kind: str) -> None:
    with pytest.raises(ModelError, match=OUTPUT_REFUSALS[kind]):
        check_model_output(TupleOutput(kind), torch.zeros(2, 3, 8, 8))


@pytest.mark.parametrize("method", ["rsp", "lrp_epsilon", "gradcam", "gradient"])
@pytest.mark.parametrize("kind", sorted(OUTPUT_REFUSALS))
def test_every_method_refuses_a_tuple_or_dict_output_with_the_same_fix(kind: str, method: str) -> None:
    """The traced walk saw torch.fx's own containers ('immutable_dict'); the message names what the user wrote."""
    with pytest.raises(ModelError, match=OUTPUT_REFUSALS[kind]):
        relprop.get_method(method)(TupleOutput(kind).eval()).attribute(torch.randn(2, 3, 8, 8), target=1)


def test_a_model_with_nan_weights_is_refused_with_the_parameter_named() -> None:
    model = _net()
    with torch.no_grad():
        model[5].weight[0, 0] = float("nan")
    with pytest.raises(ModelError, match="parameter '5.weight'.*NaN or inf"):
        check_model_tensors(model)


def test_an_infinite_buffer_is_allowed_but_a_nan_buffer_is_not() -> None:
    model = _net()
    model.register_buffer("mask", torch.tensor([0.0, -float("inf")]))
    check_model_tensors(model)  # masks use -inf
    model.mask[0] = float("nan")
    with pytest.raises(ModelError, match="buffer 'mask'"):
        check_model_tensors(model)


def test_the_probe_leaves_training_flags_and_gradients_alone() -> None:
    model = _net().train()
    check_model_output(model, torch.zeros(1, 3, 8, 8))
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
