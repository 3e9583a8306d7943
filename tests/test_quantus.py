"""relprop.explain as Quantus's explain_func: shapes, agreement with the method, one Quantus metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import relprop


class BlobDetector(nn.Module):
    """Class 0 responds to bright pixels (channel 0 of the conv), class 1 to dark ones (channel 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.stack([torch.full((3, 3, 3), 0.1), torch.full((3, 3, 3), -0.1)]))
            self.conv.bias.zero_()
            self.fc.weight.copy_(torch.tensor([[1.0, -0.2], [-0.2, 1.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four 16×16 images of faint noise with one bright 4×4 blob each, and the blobs as masks."""
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 0.05, size=(4, 3, 16, 16)).astype(np.float32)
    masks = np.zeros((4, 1, 16, 16), dtype=np.float32)
    for i, (top, left) in enumerate([(1, 1), (10, 3), (5, 11), (11, 11)]):
        x[i, :, top : top + 4, left : left + 4] += 1.0
        masks[i, 0, top : top + 4, left : left + 4] = 1.0
    return x, np.zeros(4, dtype=np.int64), masks


def test_explain_matches_the_method(data):
    x, y, _ = data
    model = BlobDetector().eval()
    out = relprop.explain(model=model, inputs=x, targets=y, method="rsp")
    assert isinstance(out, np.ndarray) and out.shape == (4, 1, 16, 16) and out.dtype == np.float32
    direct = relprop.RSP(model).attribute(torch.from_numpy(x), target=torch.from_numpy(y)).sum(dim=1, keepdim=True)
    np.testing.assert_allclose(out, direct.numpy(), rtol=1e-6, atol=0)
    full = relprop.explain(model, torch.from_numpy(x), y.tolist(), method="ae", ratio=1.0, reduce_axes=(), device="cpu")
    expected = relprop.AE(model, ratio=1.0).attribute(torch.from_numpy(x), target=[0, 0, 0, 0])
    np.testing.assert_allclose(full, expected.numpy(), rtol=1e-6, atol=0)
    squeezed = relprop.explain(model, x.astype(np.float64), None, method="gradcam", keepdims=False)
    assert squeezed.shape == (4, 16, 16) and squeezed.dtype == np.float32
    with pytest.raises(ValueError, match="unknown method"):
        relprop.explain(model, x, y, method="nope")


def test_quantus_pointing_game_with_rsp(data):
    import quantus  # the 'quantus' extra, part of 'dev'
    x, y, masks = data
    model = BlobDetector().eval()
    metric = quantus.PointingGame(disable_warnings=True, display_progressbar=False)
    kwargs = dict(model=model, x_batch=x, y_batch=y, a_batch=None, explain_func=relprop.explain,
                  explain_func_kwargs={"method": "rsp"}, device="cpu")
    assert list(metric(s_batch=masks, **kwargs)) == [True] * 4
    assert list(metric(s_batch=1.0 - masks, **kwargs)) == [False] * 4


def test_target_sensitivity_spearman_matches_quantus_random_logit(data):
    """With two classes Quantus's RandomLogit and relprop's random class are both "the other class";
    Quantus's Spearman similarity must then equal relprop's target-sensitivity Spearman per image."""
    import quantus

    from relprop.evaluation.contrast import random_class, target_similarity

    x, _, _ = data
    y = np.array([0, 1, 0, 1])
    model = BlobDetector().eval()
    maps = {t: relprop.explain(model, x, np.full(4, t), method="rsp")[:, 0] for t in (0, 1)}
    metric = quantus.RandomLogit(num_classes=2, similarity_func=quantus.similarity_func.correlation_spearman,
                                 disable_warnings=True, display_progressbar=False)
    a = np.stack([maps[t][i] for i, t in enumerate(y)])[:, None]
    theirs = metric(model=model, x_batch=x, y_batch=y, a_batch=a, explain_func=relprop.explain,
                    explain_func_kwargs={"method": "rsp"}, device="cpu")
    others = [random_class({int(t)}, 2, seed=0, index=i, label=int(t)) for i, t in enumerate(y)]
    assert others == [1, 0, 1, 0]
    ours = [target_similarity(maps[t][i], maps[o][i])["spearman"] for i, (t, o) in enumerate(zip(y, others))]
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)
