"""Models by name (``relprop.zoo``, the ``--model`` of every command): timm models and other label sets."""

from __future__ import annotations

import re

import pytest
import torch

import relprop
from relprop import zoo


def test_timm_models_are_named_with_their_own_preprocessing():
    pytest.importorskip("timm")
    model, preprocess = zoo.load_model("timm:resnet18")
    assert type(model).__module__.startswith("timm.") and not model.training
    # timm's resnet18 configuration: ImageNet mean and std, 224 px at crop fraction 0.95
    assert preprocess.mean == (0.485, 0.456, 0.406) and preprocess.std == (0.229, 0.224, 0.225)
    assert (preprocess.size, preprocess.resize) == (224, round(224 / 0.95))
    assert zoo.has_random_weights("timm:resnet18", None)
    _, inception = zoo.load_model("timm:inception_v3")
    assert inception.mean == (0.5, 0.5, 0.5) and inception.size == 299


def test_timm_default_weights_without_the_hub_fail_at_once_with_what_to_do(monkeypatch, tmp_path):
    pytest.importorskip("timm")
    import huggingface_hub.constants as hub

    monkeypatch.setattr(zoo, "_reachable", lambda host: False)  # no answer from huggingface.co
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))  # an empty local cache
    offline = hub.HF_HUB_OFFLINE
    with pytest.raises(relprop.RelpropError, match=r"pass --weights PATH \(huggingface.co gives no answer and "
                       r"timm:resnet18's weights are not in the local cache; no network\?\)"):
        zoo.load_model("timm:resnet18", "DEFAULT")
    assert hub.HF_HUB_OFFLINE == offline  # the hub's setting is restored


@pytest.mark.parametrize("name", ["resnet18", "inception_v3", "timm:resnet18"])
def test_num_classes_builds_the_architecture_with_that_many_outputs(name):
    if name.startswith("timm:"):
        pytest.importorskip("timm")
    model, _ = zoo.load_model(name, None, 20)
    size = 75 if name == "inception_v3" else 32
    assert model(torch.zeros(1, 3, size, size)).shape == (1, 20) and not model.training


@pytest.mark.parametrize(
    "name, weights, num_classes, message",
    [
        ("resnet18", None, 0, "--num-classes must be a positive number of outputs; got 0."),
        ("resnet18", "DEFAULT", 20, "--num-classes builds a new classifier: pass --weights FILE"),
        ("efficientnet_lite0", None, 20, "'efficientnet_lite0' has 1,000 fixed outputs"),
    ],
)
def test_num_classes_that_cannot_be_built_are_refused(name, weights, num_classes, message):
    with pytest.raises(relprop.RelpropError, match=re.escape(message)):
        zoo.load_model(name, weights, num_classes)


def test_bench_takes_timm_models_by_name(tmp_path, capsys):
    pytest.importorskip("timm")
    from relprop.cli import main

    code = main(["bench", "--models", "timm:resnet18", "--batch-sizes", "1", "--methods", "forward,gradient",
                 "--repeats", "1", "--no-memory", "--no-progress", "--out", str(tmp_path / "bench")])
    assert code == 0
    assert capsys.readouterr().out.count("| timm:resnet18 | 1 |") == 2
